// Quality measurements every attention method reports through: perplexity of a text, and the
// divergence of next-token distributions under a policy from those under dense attention.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/runtime/transformer.h"

namespace qattn::model {

// Runs tokens through the model in windows of `ctx` tokens (each window starts with an empty cache)
// and chunks of `batch`; calls on_logits(first_row, rows, logits [rows, n_vocab]) for every chunk,
// where row i predicts token i + 1 of the sequence.
void ForEachLogitChunk(const Transformer& model, AttentionPolicy& attention, const KvStorage& kv_dtype,
                       const std::vector<int32_t>& tokens, int64_t ctx, int batch,
                       const std::function<void(int64_t, int64_t, const float*)>& on_logits, ThreadPool* pool);

struct PerplexityResult {
  int64_t tokens_scored = 0;
  double mean_nll = 0.0;   // nats per token
  double perplexity = 0.0; // exp(mean_nll)
};
// Scores every token after the first of each window.
PerplexityResult Perplexity(const Transformer& model, AttentionPolicy& attention, const KvStorage& kv_dtype,
                            const std::vector<int32_t>& tokens, int64_t ctx, int batch, ThreadPool* pool);

struct DivergenceResult {
  int64_t positions = 0;
  double mean_kl = 0.0;         // mean over positions of KL(dense || policy), nats
  double max_kl = 0.0;
  double top1_agreement = 0.0;  // fraction of positions with the same argmax
};
// Runs the first prompt_len tokens as one prompt, then the rest one decode step at a time
// (teacher forcing, one window of at most ctx tokens); on_logits(row, 1, logits [n_vocab]) for the
// prompt's last row and every step, where row i predicts token i + 1. Decode-time KV policies act
// on exactly these steps.
void ForEachDecodeLogit(const Transformer& model, AttentionPolicy& attention, const KvStorage& kv_dtype,
                        const std::vector<int32_t>& tokens, int64_t ctx, int64_t prompt_len,
                        const std::function<void(int64_t, int64_t, const float*)>& on_logits, ThreadPool* pool);

// Compares next-token distributions at every position of `tokens` (decode_from = 0: prefill
// windows as ForEachLogitChunk), or, with decode_from = P > 0, at the prompt's last position and
// every decode step after a P-token prompt (ForEachDecodeLogit; dense runs the same steps).
DivergenceResult CompareToDense(const Transformer& model, AttentionPolicy& policy, const KvStorage& kv_dtype,
                                const std::vector<int32_t>& tokens, int64_t ctx, int batch, ThreadPool* pool,
                                int64_t decode_from = 0);

// log softmax of one row [n] into out [n] (double accumulation).
void LogSoftmax(const float* logits, int n, std::vector<double>& out);

}  // namespace qattn::model
