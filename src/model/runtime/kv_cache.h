// The keys and values of every layer for one sequence, stored head-major ([H_kv, capacity, d] per
// layer) so decode streams each head's keys contiguously; attention reads them through strided views
// of the token-major shape the kernels take.
#pragma once
#include <cstdint>
#include <vector>

#include "core/aligned_buffer.h"
#include "core/tensor.h"
#include "model/runtime/model_config.h"

namespace qattn::model {

class KvCache {
 public:
  // Throws std::invalid_argument if capacity < 1 or dtype is not f32/bf16/f16.
  KvCache(const ModelConfig& config, int64_t capacity, DType dtype);

  int64_t length() const { return length_; }      // tokens stored (positions 0 .. length-1)
  int64_t capacity() const { return capacity_; }
  DType dtype() const { return dtype_; }
  // Bytes one token occupies across all layers (keys and values).
  uint64_t BytesPerToken() const;

  // Writes n tokens' keys and values for `layer` at positions [pos0, pos0 + n).
  // k: [n, H_kv * d] and v: [n, H_kv * d] f32 with row stride `row_stride` floats.
  void Store(int layer, int64_t pos0, int64_t n, const float* k, const float* v, int64_t row_stride);
  // Views of the first `tokens` positions: [tokens, H_kv, d] (strides [d, capacity * d, 1]).
  TensorView Keys(int layer, int64_t tokens) const;
  TensorView Values(int layer, int64_t tokens) const;

  void set_length(int64_t length) { length_ = length; }  // after every layer has stored its tokens
  void Clear() { length_ = 0; }

 private:
  TensorView View(const AlignedBuffer& buf, int64_t tokens) const;

  int n_head_kv_, head_dim_;
  int64_t capacity_, length_ = 0;
  DType dtype_;
  std::vector<AlignedBuffer> keys_;    // per layer [H_kv, capacity, d]
  std::vector<AlignedBuffer> values_;  // per layer [H_kv, capacity, d]
};

}  // namespace qattn::model
