#include "model/runtime/kv_cache.h"

#include <stdexcept>
#include <string>

namespace qattn::model {

KvCache::KvCache(const ModelConfig& config, int64_t capacity, DType dtype)
    : n_head_kv_(config.n_head_kv), head_dim_(config.head_dim), capacity_(capacity), dtype_(dtype) {
  if (capacity < 1) throw std::invalid_argument("the context must hold at least one token");
  const uint64_t bytes = uint64_t(n_head_kv_) * capacity * head_dim_ * DTypeSize(dtype);
  for (int l = 0; l < config.n_layer; ++l) {
    keys_.emplace_back(bytes);
    values_.emplace_back(bytes);
  }
}

uint64_t KvCache::BytesPerToken() const {
  return 2ull * keys_.size() * n_head_kv_ * head_dim_ * DTypeSize(dtype_);
}

void KvCache::Store(int layer, int64_t pos0, int64_t n, const float* k, const float* v, int64_t row_stride) {
  if (pos0 < 0 || pos0 + n > capacity_) {
    throw std::invalid_argument("the context is full: positions up to " + std::to_string(pos0 + n) +
                                " do not fit in " + std::to_string(capacity_) + " (raise --ctx)");
  }
  const size_t elem = DTypeSize(dtype_);
  for (int64_t t = 0; t < n; ++t) {
    for (int h = 0; h < n_head_kv_; ++h) {
      const int64_t dst = (int64_t(h) * capacity_ + pos0 + t) * head_dim_ * int64_t(elem);  // bytes
      ConvertFromF32(k + t * row_stride + h * head_dim_, keys_[layer].as<uint8_t>() + dst, dtype_, head_dim_);
      ConvertFromF32(v + t * row_stride + h * head_dim_, values_[layer].as<uint8_t>() + dst, dtype_, head_dim_);
    }
  }
}

TensorView KvCache::View(const AlignedBuffer& buf, int64_t tokens) const {
  TensorView view;
  view.data = buf.data();
  view.dtype = dtype_;
  view.rank = 3;
  view.shape = {tokens, n_head_kv_, head_dim_, 0};
  view.stride = {head_dim_, capacity_ * head_dim_, 1, 0};
  return view;
}

TensorView KvCache::Keys(int layer, int64_t tokens) const { return View(keys_.at(layer), tokens); }
TensorView KvCache::Values(int layer, int64_t tokens) const { return View(values_.at(layer), tokens); }

}  // namespace qattn::model
