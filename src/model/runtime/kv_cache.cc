#include "model/runtime/kv_cache.h"

#include <stdexcept>
#include <string>
#include <vector>

namespace qattn::model {

KvStorage KvStorage::Parse(const std::string& spec) {
  if (spec.rfind("staircase", 0) == 0) return KvStorage{KvDType::kBF16, true, kv::StaircaseConfig::Parse(spec)};
  try {
    return Of(ParseKvDType(spec));
  } catch (const std::invalid_argument&) {
    throw std::invalid_argument("unknown KV storage '" + spec +
                                "' (known: f32, bf16, f16, int8, int4, staircase[:segment=S,stairs=bf16/int8/int4])");
  }
}

std::string KvStorage::Name() const { return staircase ? stairs.Spec() : KvDTypeName(dtype); }

KvCache::KvCache(const ModelConfig& config, int64_t capacity, const KvStorage& storage, int page_tokens)
    : n_layer_(config.n_layer), n_head_kv_(config.n_head_kv), head_dim_(config.head_dim), page_tokens_(page_tokens),
      capacity_(capacity), storage_(storage) {
  if (capacity < 1) throw std::invalid_argument("the context must hold at least one token");
  kv::PagedCacheConfig pc{config.n_layer, config.n_head_kv, config.head_dim, storage.dtype, page_tokens};
  if (storage.staircase) {
    staircase_ = std::make_unique<kv::StaircaseKvCache>(pc, storage.stairs);
    storage_.dtype = storage.stairs.stairs[0];
    seq_ = staircase_->NewSequence();
  } else {
    paged_ = std::make_unique<kv::PagedKvCache>(pc);
    seq_ = paged_->NewSequence();
  }
}

kv::PagedKvCache& KvCache::paged() {
  if (!paged_) throw std::invalid_argument("KV selection and eviction policies need a single-format cache, not " + storage_.Name());
  return *paged_;
}

const kv::PagedKvCache& KvCache::paged() const { return const_cast<KvCache*>(this)->paged(); }

DType KvCache::compute_dtype() const {
  if (staircase_) return DType::kF32;
  switch (storage_.dtype) {
    case KvDType::kBF16: return DType::kBF16;
    case KvDType::kF16: return DType::kF16;
    default: return DType::kF32;
  }
}

double KvCache::BytesPerTokenPerLayer() const {
  return staircase_ ? staircase_->bytes_per_token_per_layer(seq_) : paged_->bytes_per_token_per_layer();
}

uint64_t KvCache::BytesPerToken() const { return uint64_t(BytesPerTokenPerLayer() * n_layer_ + 0.5); }

int64_t KvCache::pages_in_use() const { return staircase_ ? staircase_->pages_in_use() : paged_->pages_in_use(); }

size_t KvCache::page_bytes() const { return staircase_ ? staircase_->stair(0).page_bytes() : paged_->page_bytes(); }

double KvCache::page_memory_bytes() const {
  if (!staircase_) return double(paged_->pages_in_use()) * double(paged_->page_bytes());
  double bytes = 0;
  for (int i = 0; i < staircase_->num_stairs(); ++i) {
    bytes += double(staircase_->stair(i).pages_in_use()) * double(staircase_->stair(i).page_bytes());
  }
  return bytes;
}

int64_t KvCache::kept(int layer, int head) const {
  return staircase_ ? staircase_->length(seq_, layer, head) : paged_->length(seq_, layer, head);
}

void KvCache::Append(int layer, int64_t n, const float* k, const float* v, int64_t row_stride,
                     const int32_t* positions) {
  if (staircase_) staircase_->Append(seq_, layer, k, v, row_stride, n, positions);
  else paged_->Append(seq_, layer, k, v, row_stride, n, positions);
}

void KvCache::Gather(int layer, Tensor* k, Tensor* v) const {
  const int64_t n = kept(layer);
  for (int h = 1; h < n_head_kv_; ++h) {
    if (kept(layer, h) != n) throw std::invalid_argument("the KV heads of a layer keep different token counts");
  }
  const DType t = compute_dtype();
  *k = Tensor(t, {n, n_head_kv_, head_dim_});
  *v = Tensor(t, {n, n_head_kv_, head_dim_});
  std::vector<float> fk(size_t(n) * n_head_kv_ * head_dim_), fv(fk.size());  // [n, H_kv, d] f32
  if (staircase_) staircase_->ReadLayer(seq_, layer, fk.data(), fv.data());
  else paged_->ReadLayer(seq_, layer, 0, n, fk.data(), fv.data());
  ConvertFromF32(fk.data(), k->data<void>(), t, fk.size());
  ConvertFromF32(fv.data(), v->data<void>(), t, fv.size());
}

void KvCache::Clear() {
  if (staircase_) {
    staircase_->FreeSequence(seq_);
    seq_ = staircase_->NewSequence();
  } else {
    paged_->FreeSequence(seq_);
    seq_ = paged_->NewSequence();
  }
  length_ = 0;
}

}  // namespace qattn::model
