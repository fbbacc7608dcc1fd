// What the KV policy files share (the registry is in kv_policy.cc): the budget option, small
// helpers, and one factory per policy.
#pragma once
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "methods/kv_cache/kv_policy.h"
#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::kv {

using sparse::MethodOptions;

// A token budget: `budget` tokens, or `frac` of the tokens present when it is applied.
struct Budget {
  int64_t tokens = 0;
  double frac = 0.0;
  static Budget Read(MethodOptions& o, int64_t fallback) {
    Budget b;
    b.frac = o.Float("frac", 0.0);
    b.tokens = o.Int("budget", fallback);
    if (b.frac < 0 || b.frac > 1) throw std::invalid_argument("frac must be in (0, 1]");
    if (b.tokens < 1) throw std::invalid_argument("budget must be at least 1 token");
    return b;
  }
  int64_t For(int64_t n) const { return frac > 0 ? std::max<int64_t>(1, int64_t(std::ceil(frac * n))) : tokens; }
  std::string Spec() const {
    return frac > 0 ? "frac=" + std::to_string(frac).substr(0, 6) : "budget=" + std::to_string(tokens);
  }
};

inline PoolKind ParsePool(const std::string& s) {
  if (s == "max") return PoolKind::kMax;
  if (s == "avg") return PoolKind::kAvg;
  if (s == "none") return PoolKind::kNone;
  throw std::invalid_argument("pool must be max, avg or none; got '" + s + "'");
}

inline void KeepSame(const LayerRef& at, const std::vector<int32_t>& keep) {
  for (int h = 0; h < at.heads.kv; ++h) at.cache->Keep(at.seq, at.layer, h, keep);
}

// The last w rows of q [n, H_q, d] (row stride q_stride) as a dense [w, H_q, d] copy.
inline std::vector<float> LastRows(const float* q, int64_t q_stride, int64_t n, int64_t w, const Heads& heads) {
  const int64_t width = int64_t(heads.q) * heads.dim;
  std::vector<float> out(size_t(w * width));  // [w, H_q, d]
  for (int64_t i = 0; i < w; ++i) std::memcpy(&out[i * width], q + (n - w + i) * q_stride, size_t(width) * 4);
  return out;
}


// Raw dot products into a reused buffer, one KV head per pool thread: out [H_q, n].
void QueryLogitsInto(const LayerRef& at, const float* q, int64_t n, std::vector<float>* out, ThreadPool* pool);
// Row softmax on the core's vectorised exp (sparse::SoftmaxRows), in place: row h of x
// [rows, stride] holds m logits then padding up to stride (a multiple of 16); on return its first
// m columns hold softmax_i(scale * x[h, i]) and the padding is 0.
void SoftmaxRowsInPlace(float* x, int rows, int64_t m, int64_t stride, float scale);

// Eviction after the prompt (eviction_policies.cc).
std::unique_ptr<KvPolicy> MakeStreamingLlmPolicy(MethodOptions& options);
std::unique_ptr<KvPolicy> MakeSnapKvPolicy(MethodOptions& options);
std::unique_ptr<KvPolicy> MakeCompressKvPolicy(MethodOptions& options);
std::unique_ptr<KvPolicy> MakeH2oPolicy(MethodOptions& options);
// Selection at read time (selection_policies.cc).
std::unique_ptr<KvPolicy> MakeQuestPolicy(MethodOptions& options);
std::unique_ptr<KvPolicy> MakeTokenSelectPolicy(MethodOptions& options);
// Own files.
std::unique_ptr<KvPolicy> MakeRekvPolicy(MethodOptions& options);
std::unique_ptr<KvPolicy> MakePromptDistillPolicy(MethodOptions& options);

}  // namespace qattn::kv
