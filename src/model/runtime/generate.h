// Prompt processing and token-by-token generation over a Transformer and its KV cache.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/runtime/sampler.h"
#include "model/runtime/transformer.h"

namespace qattn::model {

// Runs `tokens` through the model in chunks of at most `batch` tokens (bounding activation memory),
// appending to the cache. Writes the last token's logits [n_vocab] to `last_logits` if non-null.
void Prefill(const Transformer& model, KvCache& cache, AttentionPolicy& attention, const std::vector<int32_t>& tokens,
             int batch, float* last_logits, ThreadPool* pool);

struct GenerateOptions {
  int max_new_tokens = 256;
  int batch = 512;           // prompt tokens per forward pass
  SamplingParams sampling;
  bool stop_at_end = true;   // stop at end-of-generation tokens (EOS, end of turn)
};

struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // all decode steps, sampling included
};

// Prefills the prompt, then samples up to max_new_tokens tokens, calling on_token for each (before
// it is fed back). on_token returns false to stop; is_end tells which tokens end generation.
GenerateStats Generate(const Transformer& model, KvCache& cache, AttentionPolicy& attention,
                       const std::vector<int32_t>& prompt, const GenerateOptions& options,
                       const std::function<bool(int32_t)>& is_end, const std::function<bool(int32_t)>& on_token,
                       ThreadPool* pool);

}  // namespace qattn::model
