// A decoder-only transformer assembled from shared blocks, for every supported architecture:
//   x = embed(token)
//   per layer: h = RMSNorm(x); q,k,v = h W_qkv (+ b); RoPE(q, k); x += attention(q, cache) W_o
//              h = RMSNorm(x); x += (silu(h W_gate) * (h W_up)) W_down
//   logits = RMSNorm(x) W_out   (W_out = the embedding table when tied)
// The architectures differ only in ArchitectureTraits (see model_config.h).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "model/gguf.h"
#include "model/runtime/attention_policy.h"
#include "model/runtime/kv_cache.h"
#include "model/runtime/linear.h"
#include "model/runtime/model_config.h"

namespace qattn::model {

// Which rows of a forward pass need logits.
enum class LogitRows { kNone, kLast, kAll };

class Transformer {
 public:
  // Reads and validates every tensor (names, dims, types) and copies the weights out of the file.
  explicit Transformer(const GgufFile& file);

  const ModelConfig& config() const { return config_; }
  uint64_t weight_bytes() const;
  // f32 when every matrix is f32 (an f32 file), else bf16.
  DType weight_dtype() const { return embeddings_.weight_dtype(); }

  // Runs `n` tokens at positions cache.length() .. +n-1, appends their keys and values to the cache
  // and, per `rows`, writes logits [1 or n, n_vocab] to `logits`. Token ids must be < n_vocab.
  void Forward(const int32_t* tokens, int64_t n, KvCache& cache, AttentionPolicy& attention, LogitRows rows,
               float* logits, ThreadPool* pool) const;

 private:
  struct Layer {
    std::vector<float> attn_norm;  // [n_embd]
    std::vector<float> ffn_norm;   // [n_embd]
    Linear qkv;                    // [q_dim + 2 kv_dim, n_embd]
    Linear attn_out;               // [n_embd, q_dim]
    Linear gate_up;                // [2 n_ff, n_embd]
    Linear down;                   // [n_embd, n_ff]
  };
  struct Scratch;

  void LoadLayer(const GgufFile& file, int index);
  void AttentionBlock(int index, Scratch& s, int64_t n, KvCache& cache, AttentionPolicy& attention,
                      ThreadPool* pool) const;
  void MlpBlock(int index, Scratch& s, int64_t n, ThreadPool* pool) const;
  int64_t KeepPromptRows(int layer, Scratch& s, int64_t n, KvCache& cache, const std::vector<int32_t>& keep,
                         LogitRows rows) const;
  void Embed(const int32_t* tokens, int64_t n, float* x) const;

  ModelConfig config_;
  std::vector<double> rope_inv_freq_;  // [n_rot / 2]
  Linear embeddings_;                  // [n_vocab, n_embd]: lookup rows, and the output when tied
  Linear output_;                      // [n_vocab, n_embd] when not tied
  std::vector<float> output_norm_;     // [n_embd]
  std::vector<Layer> layers_;
};

}  // namespace qattn::model
