#include "methods/kv_cache/calibration.h"

#include <algorithm>
#include <cmath>

namespace qattn::kv {

void AttentionMassProbe::SelectForDecode(const LayerRef& at, const float* q, std::vector<int64_t>* offsets,
                                         std::vector<KvRun>* runs, ThreadPool*) {
  const int64_t n = at.cache->length(at.seq, at.layer, 0);
  const std::vector<float> logits = QueryLogits(at, q, n);  // [H_q, n]
  const std::vector<int32_t>& pos = at.cache->positions(at.seq, at.layer, 0);
  const double scale = 1.0 / std::sqrt(double(at.heads.dim));
  if (int(masses_.size()) <= at.layer) masses_.resize(at.layer + 1);
  masses_[at.layer].assign(at.heads.q, 0.0);
  for (int h = 0; h < at.heads.q; ++h) {
    const float* s = &logits[size_t(h) * n];
    const double m = *std::max_element(s, s + n) * scale;
    double total = 0, span = 0;
    for (int64_t t = 0; t < n; ++t) {
      const double p = std::exp(s[t] * scale - m);
      total += p;
      if (pos[t] >= begin_ && pos[t] < end_) span += p;
    }
    masses_[at.layer][h] = span / total;
  }
  AllRuns(at, offsets, runs);
}

namespace {

// fp64 attention of window queries over the given token indices of each KV head:
// q [w, H_q, d] (row stride q_stride), keys/values [H_kv][n, d] -> out [w, H_q, d].
std::vector<double> WindowOutputs(const float* q, int64_t q_stride, int64_t w, const Heads& heads,
                                  const std::vector<std::vector<float>>& keys, const std::vector<std::vector<float>>& values,
                                  const std::vector<std::vector<int32_t>>& keep, int64_t n) {
  const int d = heads.dim;
  std::vector<double> out(size_t(w) * heads.q * d, 0.0);
  for (int64_t i = 0; i < w; ++i) {
    const int64_t query_index = n - w + i;  // causal: the window query sees keys <= its own index
    for (int h = 0; h < heads.q; ++h) {
      const int kh = heads.KvOf(h);
      const float* qh = q + query_index * q_stride + int64_t(h) * d;
      std::vector<double> s;
      std::vector<int32_t> used;
      for (int32_t t : keep[kh]) {
        if (t > query_index) continue;
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += double(qh[c]) * keys[kh][size_t(t) * d + c];
        s.push_back(dot / std::sqrt(double(d)));
        used.push_back(t);
      }
      if (s.empty()) continue;
      const double m = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - m));
      double* o = &out[(size_t(i) * heads.q + h) * d];
      for (size_t j = 0; j < used.size(); ++j) {
        for (int c = 0; c < d; ++c) o[c] += s[j] / sum * values[kh][size_t(used[j]) * d + c];
      }
    }
  }
  return out;
}

}  // namespace

void LayerErrorMeter::AfterPrompt(const LayerRef& at, const float* q, int64_t q_stride, int64_t n, ThreadPool* pool) {
  const int d = at.heads.dim;
  std::vector<std::vector<float>> keys(at.heads.kv), values(at.heads.kv);  // [H_kv][n, d] before the cut
  std::vector<std::vector<int32_t>> all(at.heads.kv), kept(at.heads.kv);   // token indices per KV head
  for (int h = 0; h < at.heads.kv; ++h) {
    keys[h].resize(size_t(n) * d);
    values[h].resize(size_t(n) * d);
    at.cache->Read(at.seq, at.layer, h, 0, n, keys[h].data(), values[h].data());
    for (int32_t t = 0; t < n; ++t) all[h].push_back(t);
  }
  const std::vector<int32_t> before = at.cache->positions(at.seq, at.layer, 0);  // [n]
  inner_->AfterPrompt(at, q, q_stride, n, pool);
  for (int h = 0; h < at.heads.kv; ++h) {
    // Positions are unique and ascending, so each kept position maps back to its old index.
    for (int32_t p : at.cache->positions(at.seq, at.layer, h)) {
      kept[h].push_back(int32_t(std::lower_bound(before.begin(), before.end(), p) - before.begin()));
    }
  }
  const int64_t w = std::min(window_, n);
  const std::vector<double> full = WindowOutputs(q, q_stride, w, at.heads, keys, values, all, n);
  const std::vector<double> cut = WindowOutputs(q, q_stride, w, at.heads, keys, values, kept, n);
  double diff = 0, norm = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    diff += (cut[i] - full[i]) * (cut[i] - full[i]);
    norm += full[i] * full[i];
  }
  if (int(errors_.size()) <= at.layer) errors_.resize(at.layer + 1, 0.0);
  errors_[at.layer] += std::sqrt(diff) / (std::sqrt(norm) + 1e-5);
}

}  // namespace qattn::kv
