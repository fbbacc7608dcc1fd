#include "methods/sparse_prefill/inputs.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "eval/npy.h"

namespace qattn::sparse {
namespace {

OwnedProblem Allocate(int64_t n, int hq, int hkv, int d, DType dtype) {
  OwnedProblem o;
  o.q = Tensor(dtype, {n, hq, d});
  o.k = Tensor(dtype, {n, hkv, d});
  o.v = Tensor(dtype, {n, hkv, d});
  o.problem.q = o.q.view();
  o.problem.k = o.k.view();
  o.problem.v = o.v.view();
  return o;
}

void Store(const std::vector<float>& values, Tensor& t) {
  ConvertFromF32(values.data(), t.view().data, t.view().dtype, values.size());
}

// The head's pattern strengths, cycling through four kinds of heads.
struct Pattern {
  float sink, local, slash, vertical, needle;
};
Pattern PatternOf(int h) {
  switch (h % 4) {
    case 0: return {2.5f, 3.0f, 0.0f, 0.0f, 0.0f};   // local-heavy
    case 1: return {3.5f, 1.0f, 0.0f, 4.0f, 0.0f};   // sink + vertical
    case 2: return {2.5f, 1.0f, 3.0f, 0.0f, 0.0f};   // slash
    default: return {3.0f, 2.0f, 2.0f, 3.0f, 3.5f};  // mixed, with a needle
  }
}

}  // namespace

OwnedProblem RandomProblem(int64_t n, int hq, int hkv, int d, DType dtype, uint64_t seed) {
  OwnedProblem o = Allocate(n, hq, hkv, d, dtype);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (Tensor* t : {&o.q, &o.k, &o.v}) {
    std::vector<float> values(t->numel());
    for (float& x : values) x = normal(rng);
    Store(values, *t);
  }
  o.description = "random Gaussian Q, K, V";
  return o;
}

// Layout of the planted components inside a head's d dims (d >= 64):
//   dim 0: sink direction; dim 1: vertical direction; dim 2: needle direction;
//   dims [8, 8 + 2F): F rotary planes for local and slash; the rest: noise only.
OwnedProblem StructuredProblem(int64_t n, int hq, int hkv, int d, DType dtype, uint64_t seed) {
  if (d < 64) throw std::invalid_argument("structured inputs need a head dimension of at least 64");
  OwnedProblem o = Allocate(n, hq, hkv, d, dtype);
  const float scale = 1.0f / std::sqrt(float(d));
  const int planes = 24;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(o.q.numel()), k(o.k.numel()), v(o.v.numel());
  for (float& x : v) x = normal(rng);
  // Noise with logit std about 1: q.k of two N(0, s^2) vectors of d dims has std s^2 sqrt(d) * scale.
  const float noise = 1.0f;
  for (float& x : q) x = noise * normal(rng);
  for (float& x : k) x = noise * normal(rng);
  std::vector<int64_t> verticals;
  for (int i = 0; i < 16; ++i) verticals.push_back(int64_t(std::uniform_int_distribution<int64_t>(1, n - 1)(rng)));
  const int64_t needle_key = n / 7, slash_offset = std::max<int64_t>(1, n / 13);
  // Angular frequencies from 1/4 down to 1/128 rad per token: their cosines agree at distance 0 and
  // drift apart with distance, so the summed logit peaks at the diagonal and fades over ~100 tokens.
  std::vector<double> freq(planes);
  for (int f = 0; f < planes; ++f) freq[f] = 0.25 * std::pow(32.0, -double(f) / (planes - 1));
  const float unit = 1.0f / std::sqrt(scale);  // q_dim * k_dim * scale = strength product
  for (int64_t i = 0; i < n; ++i) {
    for (int h = 0; h < hq; ++h) {
      const Pattern pt = PatternOf(h);
      float* row = &q[(i * hq + h) * d];
      row[0] += unit * pt.sink;
      row[1] += unit * pt.vertical;
      if (i >= n - n / 20) row[2] += unit * pt.needle;
      // Local: the query's phase is its position; slash: its position minus D. Keys carry phase j.
      const float local_amp = pt.local, slash_amp = pt.slash;
      for (int f = 0; f < planes; ++f) {
        const float a = unit / std::sqrt(float(planes));
        row[8 + 2 * f] += a * (local_amp * float(std::cos(freq[f] * i)) + slash_amp * float(std::cos(freq[f] * (i - slash_offset))));
        row[8 + 2 * f + 1] += a * (local_amp * float(std::sin(freq[f] * i)) + slash_amp * float(std::sin(freq[f] * (i - slash_offset))));
      }
    }
    for (int g = 0; g < hkv; ++g) {
      float* row = &k[(i * hkv + g) * d];
      if (i == 0) row[0] += unit * 4.0f;
      if (std::find(verticals.begin(), verticals.end(), i) != verticals.end()) row[1] += unit * 3.0f;  // x q 4: logit 12
      if (i == needle_key) row[2] += unit * 4.0f;
      const float a = unit * 4.0f / std::sqrt(float(planes));
      for (int f = 0; f < planes; ++f) {
        row[8 + 2 * f] += a * float(std::cos(freq[f] * i));
        row[8 + 2 * f + 1] += a * float(std::sin(freq[f] * i));
      }
    }
  }
  Store(q, o.q);
  Store(k, o.k);
  Store(v, o.v);
  o.description = "structured: sinks, local windows, slash lines, vertical lines and a needle per head kind";
  return o;
}

OwnedProblem LoadDumpedProblem(const std::string& dir, int layer, DType dtype) {
  auto load = [&](const char* which) {
    return ReadNpyF32(dir + "/layer" + std::to_string(layer) + "_" + which + ".npy");
  };
  const NpyArray q = load("q"), k = load("k"), v = load("v");
  if (q.rank() != 3 || k.rank() != 3 || v.rank() != 3 || q.shape[0] != k.shape[0] || k.shape != v.shape ||
      q.shape[2] != k.shape[2] || q.shape[1] % k.shape[1] != 0) {
    throw std::invalid_argument("dumped Q/K/V in " + dir + " have inconsistent shapes " + q.ShapeString() + ", " +
                                k.ShapeString() + ", " + v.ShapeString());
  }
  OwnedProblem o = Allocate(q.shape[0], int(q.shape[1]), int(k.shape[1]), int(q.shape[2]), dtype);
  Store(q.data, o.q);
  Store(k.data, o.k);
  Store(v.data, o.v);
  o.description = "captured from a model: " + dir + " layer " + std::to_string(layer);
  return o;
}

}  // namespace qattn::sparse
