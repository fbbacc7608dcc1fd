// The runtime's KV cache for one sequence: the paged cache of src/methods/kv_cache (pages per
// (layer, KV head), any KvDType incl. int8/int4), or a staircase of them (SAQ: newest tokens in
// full precision, older segments stepped down to int8 and int4), plus the count of positions the
// sequence has consumed. Selection and eviction policies may keep fewer tokens than positions.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "kernels/kv_format.h"
#include "methods/kv_cache/paged_cache.h"
#include "methods/kv_cache/staircase.h"
#include "model/runtime/model_config.h"

namespace qattn::model {

// How the cache stores K and V: one format, or a staircase of formats.
struct KvStorage {
  KvDType dtype = KvDType::kBF16;  // the single format (the newest stair's with a staircase)
  bool staircase = false;
  kv::StaircaseConfig stairs;
  // "f32", "bf16", "f16", "int8", "int4" or "staircase[:segment=S,stairs=a/b/c]";
  // throws std::invalid_argument naming the choices.
  static KvStorage Parse(const std::string& spec);
  static KvStorage Of(KvDType t) { return KvStorage{t, false, {}}; }
  std::string Name() const;
};

// Time spent per forward pass phase, for `qattn run --stats`.
struct KvTimings {
  double selection_seconds = 0.0;  // scorers, keep-top-k, eviction, retrieval
  double attention_seconds = 0.0;  // the attention kernels
};

class KvCache {
 public:
  // Throws std::invalid_argument if capacity < 1 or the head dim does not suit the format.
  KvCache(const ModelConfig& config, int64_t capacity, const KvStorage& storage, int page_tokens = 256);
  KvCache(const ModelConfig& config, int64_t capacity, KvDType dtype) : KvCache(config, capacity, KvStorage::Of(dtype)) {}

  int64_t length() const { return length_; }      // positions consumed (the next token's position)
  int64_t capacity() const { return capacity_; }  // the largest position + 1 the model may reach
  const KvStorage& storage() const { return storage_; }
  // The element type prefill runs Q, K and V in: the cache's own for f32/bf16/f16 (bit-exact
  // copies), f32 (dequantized) for int8/int4 and staircases.
  DType compute_dtype() const;
  // Bytes one token occupies across all layers (keys and values, scales included; a staircase
  // averages over the tokens it holds now).
  uint64_t BytesPerToken() const;
  double BytesPerTokenPerLayer() const;
  int64_t pages_in_use() const;
  int page_tokens() const { return page_tokens_; }
  size_t page_bytes() const;  // of the first (newest) stair
  double page_memory_bytes() const;  // pages in use x their bytes, over every stair

  // Appends n tokens of `layer`: k, v [n, H_kv * d] f32, rows row_stride floats apart.
  void Append(int layer, int64_t n, const float* k, const float* v, int64_t row_stride, const int32_t* positions);
  // Contiguous [kept, H_kv, d] copies of every token the layer keeps (oldest first), in
  // compute_dtype(). Throws if the layer's heads keep different numbers of tokens.
  void Gather(int layer, Tensor* k, Tensor* v) const;
  int64_t kept(int layer, int head = 0) const;

  // The single-format paged cache (selection/eviction policies work on it); throws for a staircase.
  kv::PagedKvCache& paged();
  const kv::PagedKvCache& paged() const;
  bool is_staircase() const { return staircase_ != nullptr; }
  kv::StaircaseKvCache& staircase() { return *staircase_; }
  int sequence() const { return seq_; }
  KvTimings& timings() { return timings_; }

  void set_length(int64_t length) { length_ = length; }  // after every layer has stored its tokens
  void Clear();

 private:
  int n_layer_, n_head_kv_, head_dim_, page_tokens_;
  int64_t capacity_, length_ = 0;
  KvStorage storage_;
  std::unique_ptr<kv::PagedKvCache> paged_;         // single format
  std::unique_ptr<kv::StaircaseKvCache> staircase_;  // or a staircase
  int seq_ = 0;
  KvTimings timings_;
};

}  // namespace qattn::model
