#include "methods/sparse_prefill/selection_stats.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

#include "kernels/tile_ops.h"

namespace qattn::sparse {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int kKeyChunk = 64;  // keys per QK tile call (16 KiB of bf16 keys at d = 128: L1-resident)

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Keys [c0, c0 + 64) of one KV head in the tile kernels' layout, zero past n:
//   bf16: [d / 2, 64, 2] pairs;  f32: [d, 64] transposed.
void PackKeyChunk(const TensorView& k, int head, int64_t c0, int64_t n, bool bf16, std::vector<uint16_t>& kp,
                  std::vector<float>& kt, std::vector<float>& row32) {
  const int d = int(k.dim(2));
  const int keys = int(std::min<int64_t>(kKeyChunk, n - c0));
  if (bf16) {
    kp.assign(size_t(d) * kKeyChunk, 0);
    for (int c = 0; c < keys; ++c) {
      const uint16_t* src = k.at<const uint16_t>(c0 + c, head);
      for (int i = 0; i < d; ++i) kp[size_t(i / 2) * kKeyChunk * 2 + c * 2 + i % 2] = src[i];
    }
  } else {
    kt.assign(size_t(d) * kKeyChunk, 0.0f);
    row32.resize(d);
    for (int c = 0; c < keys; ++c) {
      ConvertToF32(k.at(c0 + c, head), k.dtype, row32.data(), size_t(d));
      for (int i = 0; i < d; ++i) kt[size_t(i) * kKeyChunk + c] = row32[i];
    }
  }
}

}  // namespace

std::vector<float> MeanPoolRows(const TensorView& x, int head, int block) {
  const int64_t n = x.dim(0);
  const int d = int(x.dim(2));
  const int64_t nb = (n + block - 1) / block;
  std::vector<float> pooled(size_t(nb) * d, 0.0f);  // [nb, d]
  std::vector<float> row(d);                        // [d]
  std::vector<double> acc(d);                       // [d]
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t r0 = b * block, r1 = std::min(n, r0 + block);
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t r = r0; r < r1; ++r) {
      ConvertToF32(x.at(r, head), x.dtype, row.data(), size_t(d));
      for (int i = 0; i < d; ++i) acc[i] += row[i];
    }
    for (int i = 0; i < d; ++i) pooled[size_t(b) * d + i] = float(acc[i] / double(r1 - r0));  // true count
  }
  return pooled;
}

std::vector<float> SumPool(const float* x, int64_t n, int block) {
  std::vector<float> out((n + block - 1) / block, 0.0f);
  for (size_t b = 0; b < out.size(); ++b) {
    double s = 0.0;
    for (int64_t j = int64_t(b) * block; j < std::min(n, int64_t(b + 1) * block); ++j) s += x[j];
    out[b] = float(s);
  }
  return out;
}

void LastRowsProbabilities(const PrefillProblem& p, int q_head, int rows, ProbabilitySlab* slab) {
  const int64_t n = p.n();
  const int d = p.head_dim(), kh = q_head / p.group();
  rows = int(std::min<int64_t>(rows, n));
  slab->rows = rows;
  slab->n = n;
  slab->stride = RoundUp(n, kKeyChunk);
  slab->p.resize(size_t(rows) * slab->stride);  // every entry is written below
  const int64_t first = n - rows;
  // bf16 dot products (vdpbf16ps) where the CPU has them; otherwise f32 tiles.
  const bool bf16 = p.q.dtype == DType::kBF16 && tile::HasBf16Path() && d % 2 == 0;
  std::vector<uint16_t> q16, kp;      // [rows, d], [d / 2, 64, 2]
  std::vector<float> q32, kt, row32;  // [rows, d], [d, 64], [d]
  if (bf16) {
    q16.resize(size_t(rows) * d);
    for (int i = 0; i < rows; ++i) std::memcpy(&q16[size_t(i) * d], p.q.at(first + i, q_head), size_t(d) * 2);
  } else {
    q32.resize(size_t(rows) * d);
    for (int i = 0; i < rows; ++i) ConvertToF32(p.q.at(first + i, q_head), p.q.dtype, &q32[size_t(i) * d], size_t(d));
  }
  for (int64_t c0 = 0; c0 < n; c0 += kKeyChunk) {
    PackKeyChunk(p.k, kh, c0, n, bf16, kp, kt, row32);
    float* s = slab->p.data() + c0;
    if (bf16)
      tile::QkBf16(q16.data(), rows, d, kp.data(), kKeyChunk, s, int(slab->stride));
    else
      tile::QkF32(q32.data(), rows, d, kt.data(), kKeyChunk, s, int(slab->stride));
  }
  // One softmax step over the whole row: scale, causal corner mask, exp, row sums.
  std::vector<float> m(rows, kNegInf), l(rows, 0.0f), alpha(rows);  // [rows] each
  std::vector<int64_t> pos(rows);
  std::vector<KeyInterval> bounds(rows);
  for (int i = 0; i < rows; ++i) {
    pos[i] = first + i;
    bounds[i] = {0, first + i, -1};
  }
  tile::SoftmaxStep step;
  step.s = slab->p.data();
  step.rows = rows;
  step.cols = int(n);
  step.s_stride = int(slab->stride);
  step.scale = p.EffectiveScale();
  step.pos = pos.data();
  step.bounds = bounds.data();
  step.m = m.data();
  step.l = l.data();
  step.alpha = alpha.data();
  tile::SoftmaxUpdate(step);
  for (int i = 0; i < rows; ++i) {
    float* row = slab->p.data() + int64_t(i) * slab->stride;
    const float inv = l[i] > 0 ? 1.0f / l[i] : 0.0f;
    for (int64_t j = 0; j < slab->stride; ++j) row[j] *= inv;
  }
}

std::vector<float> ColumnSums(const ProbabilitySlab& slab) {
  std::vector<float> col(slab.n, 0.0f);
  for (int i = 0; i < slab.rows; ++i) {
    const float* row = slab.row(i);
    for (int64_t j = 0; j < slab.n; ++j) col[j] += row[j];
  }
  return col;
}

std::vector<float> DiagonalSums(const ProbabilitySlab& slab) {
  // Row i sits at position P = n - rows + i; key j has distance P - j, stored at t = j + rows - 1 - i.
  std::vector<float> diag(slab.n, 0.0f);
  for (int i = 0; i < slab.rows; ++i) {
    const float* row = slab.row(i);
    const int64_t shift = slab.rows - 1 - i, last = slab.n - slab.rows + i;
    float* dst = diag.data() + shift;
    for (int64_t j = 0; j <= last; ++j) dst[j] += row[j];
  }
  return diag;
}

double JensenShannon(const float* p, const float* q, int64_t n) {
  // xlogy: a zero probability contributes 0 (the official code's p * log(p / m) gives NaN there).
  double kl_p = 0.0, kl_q = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = p[i], b = q[i], m = 0.5 * (a + b);
    if (a > 0) kl_p += a * std::log(a / m);
    if (b > 0) kl_q += b * std::log(b / m);
  }
  return std::max(0.0, 0.5 * kl_p + 0.5 * kl_q);
}

void SoftmaxInPlace(float* x, int64_t n) {
  float mx = kNegInf;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  if (mx == kNegInf) {
    std::fill(x, x + n, 0.0f);
    return;
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double(x[i]) - mx);
  for (int64_t i = 0; i < n; ++i) x[i] = float(std::exp(double(x[i]) - mx) / sum);
}

int64_t CoverCount(const float* values, int64_t n, double limit) {
  // Bisect on the count: a[lo, mid) are the next largest values after nth_element, so the running
  // sum of the sorted prefix is known at mid without sorting (expected O(n) in all).
  std::vector<float> a(values, values + n);
  int64_t lo = 0, hi = n;
  double base = 0.0;  // sum of a[0, lo): the lo largest values
  while (hi - lo > 64) {
    const int64_t mid = lo + (hi - lo) / 2;
    std::nth_element(a.begin() + lo, a.begin() + mid, a.begin() + hi, std::greater<float>());
    double s = base;
    for (int64_t i = lo; i < mid; ++i) s += a[i];
    if (s <= limit) {
      base = s;
      lo = mid;
    } else {
      hi = mid;
    }
  }
  std::sort(a.begin() + lo, a.begin() + hi, std::greater<float>());
  int64_t count = lo;
  for (int64_t i = lo; i < hi; ++i) {
    base += a[i];
    if (base > limit) break;
    count = i + 1;
  }
  return count;
}

std::vector<int32_t> TopK(const float* values, int64_t n, int64_t k) {
  k = std::clamp<int64_t>(k, 0, n);
  std::vector<int32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  auto before = [values](int32_t a, int32_t b) { return values[a] > values[b] || (values[a] == values[b] && a < b); };
  if (k < n) std::nth_element(idx.begin(), idx.begin() + k, idx.end(), before);
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

void BlockGrid::Init(int64_t n, int num_heads, int block_size) {
  heads = num_heads;
  block = block_size;
  nb = int((n + block - 1) / block);
  cells.assign(size_t(heads) * nb * nb, 0);
}

BlockList GridToBlockList(const BlockGrid& g) {
  BlockList list;
  list.q_block = list.kv_block = g.block;
  list.num_q_blocks = list.num_kv_blocks = g.nb;
  list.heads = g.heads;
  list.offsets.reserve(size_t(g.heads) * g.nb + 1);
  list.offsets.push_back(0);
  for (int h = 0; h < g.heads; ++h) {
    for (int r = 0; r < g.nb; ++r) {
      const uint8_t* row = &g.cells[(size_t(h) * g.nb + r) * g.nb];
      for (int c = 0; c <= r; ++c) {  // blocks above the diagonal are dropped (spec 1.7 pitfall 8)
        if (!row[c]) continue;
        list.kv_blocks.push_back(c);
        list.partial.push_back(c == r);
      }
      list.offsets.push_back(int32_t(list.kv_blocks.size()));
    }
  }
  return list;
}

CoverageMap GridToCoverage(const BlockGrid& g, int num_q_heads) {
  CoverageMap map;
  map.block = g.block;
  map.num_blocks = g.nb;
  map.heads = num_q_heads;
  map.computed.assign(size_t(num_q_heads) * g.nb * g.nb, 0);
  const int per_grid_head = num_q_heads / g.heads;
  const size_t cells = size_t(g.nb) * g.nb;
  for (int h = 0; h < num_q_heads; ++h) {
    const uint8_t* src = &g.cells[size_t(h / per_grid_head) * cells];
    uint8_t* dst = &map.computed[size_t(h) * cells];
    for (int r = 0; r < g.nb; ++r)
      for (int c = 0; c <= r; ++c) dst[size_t(r) * g.nb + c] = src[size_t(r) * g.nb + c];
  }
  return map;
}

BlockGrid UnionPerGroup(const BlockGrid& g, int group) {
  BlockGrid out;
  out.heads = g.heads / group;
  out.nb = g.nb;
  out.block = g.block;
  const size_t cells = size_t(g.nb) * g.nb;
  out.cells.assign(size_t(out.heads) * cells, 0);
  for (int h = 0; h < g.heads; ++h)
    for (size_t i = 0; i < cells; ++i) out.cells[size_t(h / group) * cells + i] |= g.cells[size_t(h) * cells + i];
  return out;
}

std::string OptionNumber(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double SecondsSince(int64_t start_ns) { return double(NowNs() - start_ns) * 1e-9; }

}  // namespace qattn::sparse
