// "dma": Dynamic Mask Attention (spec 7) in a training-free inference form.
//
// What the paper learns (spec 7.1): a projection W_dt (H_kv * d -> H_kv) and a per-KV-head scalar A,
// giving each key a bias delta[g, j] = A_g * softplus((v_j W_dt)_g) that is both added to the logits
// and used to keep the top-w keys (the Doge models are trained with it).
// What is computed here instead, with no trained weights:
//  * the bias: delta[g, j] = a * softplus(<v_j, u_g>), u_g the unit mean value direction of KV head
//    g (a fixed, value-derived stand-in for W_dt); a is an option and 0 by default, as the paper
//    initialises A, so by default no bias is added;
//  * the kept keys: per KV group and query block of `block` rows (spec 7.4: shared by the group),
//    the top-w earlier keys by s * mean(q) . k_j + delta[g, j], the mean over the block's rows and the
//    group's heads (query_aware=1, the default: without a trained W_dt the bias alone carries no
//    information), or by delta alone (query_aware=0, the paper's rule). Ties go to the lower index;
//  * the block's own keys are always kept [ours]: a per-row causal top-k inside the block cannot be
//    shared by the block's rows, and every row then sees itself (spec 7.5's early-row case).
// With n <= w every earlier key is kept (spec 7.2 step 5: bias only). The kept keys run on the
// gathered-keys executor with the bias folded into the keys.
// Short inputs (n <= min_n, default 3 w) run dense, plus the bias when a != 0, in one kernel call:
// below about 3 w the mask keeps more than ~60% of the pairs and gathering them costs more than
// dense (measured 0.4-0.7x of dense at n = 1024-4096, w = 2048).
// Not implemented: the spec's block_smooth option and the ReLU mask variant (spec 7.3).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>

#include "methods/sparse_prefill/method_list.h"
#include "methods/sparse_prefill/selector_math.h"
#include "methods/sparse_prefill/selectors_s2.h"

namespace qattn::sparse {
namespace {

constexpr int kBatch = 8;  // query blocks scored together, so each key panel load serves 8 rows

// Mean query of each block over its rows and the group's heads: [nb, d].
std::vector<float> BlockMeanQueries(const PrefillProblem& p, int g, int block) {
  const int G = p.group(), d = p.head_dim();
  std::vector<float> mean(size_t((p.n() + block - 1) / block) * d, 0.0f), row(d);
  for (int64_t t = 0; t < p.n(); ++t) {
    const float w = 1.0f / float(G * std::min<int64_t>(block, p.n() - t / block * block));
    for (int h = 0; h < G; ++h) {
      ConvertToF32(p.q.at(t, g * G + h), p.q.dtype, row.data(), d);
      for (int x = 0; x < d; ++x) mean[size_t(t / block) * d + x] += w * row[x];
    }
  }
  return mean;
}

// Kept earlier keys of query blocks [b0, b1) of one group: top-w by score, ascending.
void SelectBatch(const PrefillProblem& p, const DmaConfig& c, const float* bias, const KeyPanel& panel,
                 const std::vector<float>& qmean, int b0, int b1, std::vector<std::vector<int32_t>>& kept) {
  const int64_t cols = int64_t(b1 - 1) * c.block, stride = RoundUp16(cols);
  std::vector<float> s(size_t(b1 - b0) * std::max<int64_t>(stride, 16));  // [blocks, stride] scores
  if (c.query_aware && cols > 0) panel.Logits(&qmean[size_t(b0) * p.head_dim()], b1 - b0, cols, s.data(), stride);
  const float scale = c.query_aware ? p.EffectiveScale() : 0.0f;
  for (int b = b0; b < b1; ++b) {
    const int64_t r0 = int64_t(b) * c.block;
    float* row = &s[size_t(b - b0) * stride];
    for (int64_t j = 0; j < r0; ++j) row[j] = row[j] * scale + bias[j];
    kept[b] = TopK(row, int32_t(r0), int32_t(std::min<int64_t>(r0, c.window)));
  }
}

class Dma final : public SparsePrefillMethod {
 public:
  explicit Dma(const DmaConfig& c) : c_(c) {}
  std::string name() const override {
    char buf[160];
    std::snprintf(buf, sizeof buf, "dma:window=%lld,a=%g,block=%d,query_aware=%d,min_n=%lld", (long long)c_.window,
                  c_.a, c_.block, int(c_.query_aware), (long long)c_.min_n);
    return buf;
  }
  std::string granularity() const override {
    char buf[48];
    std::snprintf(buf, sizeof buf, "; token-level density %.4f", token_density_);
    return "per KV group and " + std::to_string(c_.block) + "-row query block (the bias and mask are per KV head)" + buf;
  }

  MethodResult Run(const PrefillProblem& p, TensorView out, float* lse, ThreadPool* pool) override {
    if (p.n() <= c_.min_n) return ShortInput(p, out, lse, pool);
    MethodResult r;
    auto t0 = std::chrono::steady_clock::now();
    const std::vector<float> bias = DmaBias(p, c_.a);
    const KeySelection sel = DmaSelect(p, c_, bias, pool);
    r.coverage = Coverage(p, sel);
    token_density_ = TokenDensity(p, ProblemKeys(p), sel);
    auto t1 = std::chrono::steady_clock::now();
    AttendGathered(p, {p.k, p.v, nullptr, c_.a != 0 ? bias.data() : nullptr}, sel, out, lse, pool);
    r.select_seconds = std::chrono::duration<double>(t1 - t0).count();
    r.attend_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    r.approximates_outside_coverage = c_.a != 0;  // a bias reweights the kept keys
    return r;
  }

 private:
  // Every block holding a kept key, for each query head of the group.
  CoverageMap Coverage(const PrefillProblem& p, const KeySelection& sel) const {
    CoverageMap cov;
    cov.Init(p.n(), p.num_q_heads(), c_.block);
    for (int g = 0; g < p.num_kv_heads(); ++g) {
      for (int b = 0; b < sel.num_q_blocks; ++b) {
        const int64_t l = sel.list(g, b);
        for (int64_t e = sel.offsets[l]; e < sel.offsets[l + 1]; ++e)
          for (int h = g * p.group(); h < (g + 1) * p.group(); ++h) cov.at(h, b, sel.keys[e] / c_.block) = 1;
      }
    }
    return cov;
  }

  // Dense attention, with the bias when there is one (spec 7.2 step 5 does this for n <= w).
  MethodResult ShortInput(const PrefillProblem& p, TensorView out, float* lse, ThreadPool* pool) {
    token_density_ = 1.0;
    if (c_.a == 0) return DenseFallback(p, c_.block, out, lse, pool);
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<float> bias = DmaBias(p, c_.a);
    const auto t1 = std::chrono::steady_clock::now();
    AttendDenseBiased(p, bias.data(), out, lse, pool);
    MethodResult r;
    r.coverage.Init(p.n(), p.num_q_heads(), c_.block);
    for (int h = 0; h < r.coverage.heads; ++h)
      for (int row = 0; row < r.coverage.num_blocks; ++row)
        for (int c = 0; c <= row; ++c) r.coverage.at(h, row, c) = 1;
    r.select_seconds = std::chrono::duration<double>(t1 - t0).count();
    r.attend_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    r.approximates_outside_coverage = true;
    return r;
  }

  DmaConfig c_;
  double token_density_ = 0;  // of the last run: the coverage map counts whole blocks
};

}  // namespace

std::vector<float> DmaBias(const PrefillProblem& p, double a) {
  const int hkv = p.num_kv_heads(), dv = p.value_dim();
  std::vector<float> bias(size_t(hkv) * p.n(), 0.0f);  // [H_kv, n]
  if (a == 0) return bias;
  for (int g = 0; g < hkv; ++g) {
    const std::vector<float> v = HeadRowsF32(p.v, g, 0, p.n());
    std::vector<double> u(dv, 0.0);
    for (int64_t j = 0; j < p.n(); ++j)
      for (int x = 0; x < dv; ++x) u[x] += v[size_t(j) * dv + x];
    double norm = 0;
    for (double x : u) norm += x * x;
    norm = norm > 0 ? 1.0 / std::sqrt(norm) : 0.0;
    for (int64_t j = 0; j < p.n(); ++j) {
      double dt = 0;
      for (int x = 0; x < dv; ++x) dt += v[size_t(j) * dv + x] * u[x] * norm;
      bias[size_t(g) * p.n() + j] = float(a * (dt > 20 ? dt : std::log1p(std::exp(dt))));  // a * softplus
    }
  }
  return bias;
}

KeySelection DmaSelect(const PrefillProblem& p, const DmaConfig& c, const std::vector<float>& bias, ThreadPool* pool) {
  KeySelection sel;
  sel.Init(p.n(), p.num_kv_heads(), c.block);
  const int nb = sel.num_q_blocks;
  ThreadPool& tp = pool ? *pool : ThreadPool::Default();
  for (int g = 0; g < p.num_kv_heads(); ++g) {
    std::vector<std::vector<int32_t>> kept(nb);
    const float* b = &bias[size_t(g) * p.n()];
    if (int64_t(nb - 1) * c.block <= c.window) {  // every block keeps all earlier keys
      for (int r = 0; r < nb; ++r)
        for (int32_t j = 0; j < r * c.block; ++j) kept[r].push_back(j);
    } else {
      const KeyPanel panel = c.query_aware ? KeyPanel(HeadRowsF32(p.k, g, 0, p.n()).data(), p.n(), p.head_dim()) : KeyPanel();
      const std::vector<float> qmean = c.query_aware ? BlockMeanQueries(p, g, c.block) : std::vector<float>();
      tp.ParallelFor((nb + kBatch - 1) / kBatch, [&](int64_t i, int) {
        SelectBatch(p, c, b, panel, qmean, int(i * kBatch), std::min(nb, int(i + 1) * kBatch), kept);
      });
    }
    for (int r = 0; r < nb; ++r) {
      for (int32_t j : kept[r]) sel.Add(j);
      for (int64_t j = int64_t(r) * c.block; j < std::min<int64_t>(p.n(), int64_t(r + 1) * c.block); ++j) sel.Add(int32_t(j));
      sel.Close();
    }
  }
  return sel;
}

MethodInfo DmaMethod() {
  return {"dma", "Dynamic Mask Attention, training-free: top-w keys per KV group and query block plus a value-derived bias",
          [](MethodOptions& o) {
            DmaConfig c;  // block: a multiple of 16 so the coverage map converts to a block list
            c.window = o.Int("window", c.window);
            c.a = o.Float("a", c.a);
            c.block = int(o.Int("block", c.block));
            c.query_aware = o.Int("query_aware", 1) != 0;
            c.min_n = o.Int("min_n", 3 * c.window);
            if (c.window < 0 || c.block < 16 || c.block % 16)
              throw std::invalid_argument("dma: need window >= 0 and block a multiple of 16");
            return std::make_unique<Dma>(c);
          }};
}

}  // namespace qattn::sparse
