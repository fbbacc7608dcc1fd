// "flexprefill": FlexPrefill (spec section 1), per query head. From the last block of queries it
// measures how attention spreads over key columns (vertical) and diagonals (slash), keeps the
// smallest vertical-slash skeleton that covers gamma of it, and for heads whose pooled block
// estimate matches the true block distribution (JSD distance < tau) adds the blocks that cover
// gamma of the pooled estimate. Deviations from the official code, all from the spec's pitfalls:
//   - block budgets use T // b + 1, not T // 128 + 1 (pitfall 1);
//   - the JSD uses 0 * log 0 = 0 (pitfall 3), so an underflowed probability does not force VS;
//   - blocks above the diagonal are dropped when the lists are built (pitfall 8);
//   - the scale multiplies f32 dot products instead of rounding q * scale to bf16 first;
//   - cumulative sums are compared with gamma * (1 + 1e-6): f32 round-off in the probabilities
//     must not drop the tail at gamma = 1 (spec 1.8 expects gamma = 1 to keep everything).
// Kept as in the code: the token-count budget with block-mass selection (pitfall 2), the missing
// "+1" of the query-aware cover (pitfall 4), min_budget only sizing the skeleton (pitfall 5).
// Optional [ours], off by default: slash_cover=1 widens each selected slash band to the block bands
// its pooled token diagonals cross. The code's band o holds distances [b o, b o + b - 1] (n a
// multiple of b), but a diagonal at distance D reaches block band o + 1 in the rows whose key
// falls there, most rows when D mod b is large, so band o alone misses most of the diagonal.
#include <algorithm>
#include <cmath>
#include <limits>

#include "methods/sparse_prefill/block_selectors.h"
#include "methods/sparse_prefill/method_list.h"

namespace qattn::sparse {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kCoverSlack = 1.0 + 1e-6;  // relative room for f32 round-off in cumulative sums

// What every head's selection reads.
struct FlexContext {
  FlexContext(const PrefillProblem& problem, const FlexPrefillParams& params) : p(problem), prm(params) {}
  const PrefillProblem& p;
  const FlexPrefillParams& prm;
  int nb = 0, min_blocks = 0, max_blocks = 0;
  int band_below = 0, band_above = 0;      // neighbouring bands added per slash band (slash_cover=1)
  std::vector<std::vector<float>> kpool;   // [H_kv][nb, d] mean-pooled keys
  std::vector<std::vector<float>> kpoolT;  // [H_kv][d, nb] the same, transposed
};

// Mean of the last `rows` queries of head h, times the scale (step 6's q̄): [d].
std::vector<float> ScaledLastQueryMean(const PrefillProblem& p, int h, int rows) {
  const int d = p.head_dim();
  std::vector<double> acc(d, 0.0);
  std::vector<float> row(d), mean(d);
  for (int64_t i = p.n() - rows; i < p.n(); ++i) {
    ConvertToF32(p.q.at(i, h), p.q.dtype, row.data(), size_t(d));
    for (int c = 0; c < d; ++c) acc[c] += row[c];
  }
  for (int c = 0; c < d; ++c) mean[c] = float(acc[c] / rows) * p.EffectiveScale();
  return mean;
}

// Step 6: sqrt(JSD(softmax(q̄ . k̄_c), vertB)).
double PatternDistance(const FlexContext& cx, int h, const std::vector<float>& vert_blocks) {
  const int d = cx.p.head_dim();
  const std::vector<float> qbar = ScaledLastQueryMean(cx.p, h, cx.prm.block);
  const std::vector<float>& kp = cx.kpool[h / cx.p.group()];
  std::vector<float> est(cx.nb);  // [nb]
  for (int c = 0; c < cx.nb; ++c) {
    double s = 0.0;
    for (int i = 0; i < d; ++i) s += double(qbar[i]) * kp[size_t(c) * d + i];
    est[c] = float(s);
  }
  SoftmaxInPlace(est.data(), cx.nb);
  return std::sqrt(JensenShannon(est.data(), vert_blocks.data(), cx.nb));
}

// Step 8: the top-nv block columns and top-ns block diagonals (bands, with their neighbours under
// slash_cover), marked in every row and clipped to c <= r.
void MarkSkeleton(const FlexContext& cx, std::vector<float>& vert_blocks, std::vector<float>& slash_blocks, int nv,
                  int ns, const std::vector<int32_t>& extra_columns, BlockGrid& grid, int h) {
  vert_blocks[0] = kInf;                                                     // always the first key block (sinks)
  slash_blocks[cx.nb - 1] = kInf;                                            // always the diagonal band
  std::vector<int32_t> columns = TopK(vert_blocks.data(), cx.nb, nv);        // ascending
  columns.insert(columns.end(), extra_columns.begin(), extra_columns.end());
  std::sort(columns.begin(), columns.end());
  columns.erase(std::unique(columns.begin(), columns.end()), columns.end());
  std::vector<uint8_t> band(cx.nb, 0);                                       // [nb] by offset
  for (int32_t idx : TopK(slash_blocks.data(), cx.nb, ns)) {
    const int offset = cx.nb - 1 - idx;
    for (int o = std::max(0, offset - cx.band_below); o <= std::min(cx.nb - 1, offset + cx.band_above); ++o)
      band[o] = 1;
  }
  std::vector<int> offsets;  // ascending
  for (int o = 0; o < cx.nb; ++o)
    if (band[o]) offsets.push_back(o);
  for (int r = 0; r < cx.nb; ++r) {
    for (int32_t c : columns) {
      if (c > r) break;
      grid.at(h, r, c) = 1;
    }
    for (int o : offsets) {
      if (o > r) break;
      grid.at(h, r, r - o) = 1;
    }
  }
  grid.at(h, 0, 0) = 1;
}

// Step 9: blocks of the pooled estimate E = softmax_c(s q̄_r . k̄_c), c <= r, covering gamma * nb of
// its total mass in one global cover (no "+1"), restricted to c <= r.
void MarkQueryAware(const FlexContext& cx, BlockGrid& grid, int h) {
  const int nb = cx.nb, d = cx.p.head_dim(), b = cx.prm.block;
  const std::vector<float> qp = MeanPoolRows(cx.p.q, h, b);    // [nb, d]
  const std::vector<float>& kt = cx.kpoolT[h / cx.p.group()];  // [d, nb]
  const float scale = cx.p.EffectiveScale();
  std::vector<float> e(size_t(nb) * nb, 0.0f);  // [nb, nb]
  for (int r = 0; r < nb; ++r) {
    float* row = &e[size_t(r) * nb];
    for (int i = 0; i < d; ++i) {
      const float a = qp[size_t(r) * d + i] * scale;
      const float* k = &kt[size_t(i) * nb];
      for (int c = 0; c <= r; ++c) row[c] += a * k[c];
    }
    std::fill(row + r + 1, row + nb, -kInf);
    SoftmaxInPlace(row, nb);
  }
  const int64_t keep = CoverCount(e.data(), int64_t(nb) * nb, cx.prm.gamma * nb * kCoverSlack);
  for (int32_t flat : TopK(e.data(), int64_t(nb) * nb, keep)) {
    const int r = flat / nb, c = flat % nb;
    if (c <= r) grid.at(h, r, c) = 1;
  }
}

// Steps 1-9 for one query head.
void SelectHead(const FlexContext& cx, int h, ProbabilitySlab& slab, BlockGrid& grid, FlexPrefillHead& out) {
  const int b = cx.prm.block;
  const int64_t n = cx.p.n();
  LastRowsProbabilities(cx.p, h, b, &slab);
  std::vector<float> vert = ColumnSums(slab), slash = DiagonalSums(slab);  // [n] each
  for (int64_t j = 0; j < n; ++j) {
    vert[j] /= float(b);
    slash[j] /= float(b);
  }
  out.vertical_tokens = CoverCount(vert.data(), n, cx.prm.gamma * kCoverSlack) + 1;
  out.slash_tokens = CoverCount(slash.data(), n, cx.prm.gamma * kCoverSlack) + 1;
  auto clamp = [&](int64_t blocks) {
    return int(std::min<int64_t>(std::max<int64_t>(blocks, cx.min_blocks), cx.max_blocks));
  };
  out.nv = clamp(out.vertical_tokens / b + 1);
  out.ns = clamp(out.slash_tokens / b + 1);
  std::vector<float> vert_blocks = SumPool(vert.data(), n, b), slash_blocks = SumPool(slash.data(), n, b);
  out.distance = PatternDistance(cx, h, vert_blocks);
  out.query_aware = out.distance < cx.prm.tau;
  if (out.query_aware) out.nv = out.ns = std::min(cx.min_blocks, cx.max_blocks);
  // token_cover [ours]: the official budget turns T_v cover tokens into T_v / b + 1 blocks, chosen by
  // block mass; scattered vertical tokens then fall outside them (spec pitfall 2). Keep the block
  // columns of the heaviest cover tokens as well, at most 2 x min_budget blocks of them, so a head
  // whose cover is spread thin does not turn dense.
  std::vector<int32_t> cover_columns;
  if (cx.prm.token_cover && !out.query_aware) {
    const int64_t tokens = std::min<int64_t>({out.vertical_tokens, n, int64_t(8) * cx.min_blocks});
    for (int32_t j : TopK(vert.data(), n, tokens)) {
      if (std::find(cover_columns.begin(), cover_columns.end(), j / b) == cover_columns.end()) cover_columns.push_back(j / b);
      if (int(cover_columns.size()) == 2 * cx.min_blocks) break;
    }
  }
  MarkSkeleton(cx, vert_blocks, slash_blocks, out.nv, out.ns, cover_columns, grid, h);
  if (out.query_aware) MarkQueryAware(cx, grid, h);
}

}  // namespace

FlexPrefillSelection SelectFlexPrefill(const PrefillProblem& p, const FlexPrefillParams& prm, ThreadPool* pool_arg) {
  ThreadPool& pool = pool_arg ? *pool_arg : ThreadPool::Default();
  const int b = prm.block, hq = p.num_q_heads();
  const int64_t n = p.n();
  FlexPrefillSelection sel;
  sel.grid.Init(n, hq, b);
  sel.heads.assign(hq, {});
  const int64_t min_blocks = std::max<int64_t>(1, (prm.min_budget + b - 1) / b);
  if (n <= std::max<int64_t>(2 * b, min_blocks * b)) {  // step 0: short input runs dense
    sel.dense_fallback = true;
    for (int h = 0; h < hq; ++h)
      for (int r = 0; r < sel.grid.nb; ++r)
        for (int c = 0; c <= r; ++c) sel.grid.at(h, r, c) = 1;
    return sel;
  }
  FlexContext cx(p, prm);
  cx.nb = sel.grid.nb;
  cx.max_blocks = prm.max_budget > 0 ? int(std::min<int64_t>((prm.max_budget + b - 1) / b, cx.nb)) : cx.nb;
  cx.min_blocks = int(std::min<int64_t>(min_blocks, cx.nb));
  if (prm.slash_cover) {
    // Pooled band o holds distances D in [b (o - 1) + m + 1, b o + m], m = (n - 1) mod b; a token
    // diagonal at D crosses block bands floor(D / b) and ceil(D / b), so o needs o - 1 when some
    // D < b o (m < b - 1) and o + 1 when some D > b o (m > 0).
    const int m = int((n - 1) % b);
    cx.band_below = m < b - 1 ? 1 : 0;
    cx.band_above = m > 0 ? 1 : 0;
  }
  const int d = p.head_dim();
  for (int g = 0; g < p.num_kv_heads(); ++g) {
    cx.kpool.push_back(MeanPoolRows(p.k, g, b));
    std::vector<float> t(size_t(d) * cx.nb);
    for (int c = 0; c < cx.nb; ++c)
      for (int i = 0; i < d; ++i) t[size_t(i) * cx.nb + c] = cx.kpool.back()[size_t(c) * d + i];
    cx.kpoolT.push_back(std::move(t));
  }
  // One head per item: each reads b x n logits of its own (16 MiB at n = 32768, per thread).
  std::vector<ProbabilitySlab> slabs(pool.num_threads());
  pool.ParallelFor(hq, [&](int64_t h, int thread) { SelectHead(cx, int(h), slabs[thread], sel.grid, sel.heads[h]); });
  if (prm.union_groups) sel.grid = UnionPerGroup(sel.grid, p.group());
  return sel;
}

namespace {

class FlexPrefill final : public SparsePrefillMethod {
 public:
  explicit FlexPrefill(const FlexPrefillParams& prm) : prm_(prm) {}
  std::string name() const override {
    return "flexprefill:block=" + std::to_string(prm_.block) + ",gamma=" + OptionNumber(prm_.gamma) +
           ",tau=" + OptionNumber(prm_.tau) + ",min_budget=" + std::to_string(prm_.min_budget) +
           ",max_budget=" + std::to_string(prm_.max_budget) + ",union=" + std::to_string(int(prm_.union_groups)) +
           ",slash_cover=" + std::to_string(int(prm_.slash_cover)) + ",token_cover=" + std::to_string(int(prm_.token_cover));
  }
  std::string granularity() const override {
    return prm_.union_groups ? "per KV group: union of the group's per-query-head block sets (a superset)"
                             : "per query head: statistics, pattern decision and block set per query head";
  }
  MethodResult Run(const PrefillProblem& p, TensorView out, float* lse, ThreadPool* pool) override {
    MethodResult r;
    const int64_t t0 = NowNs();
    FlexPrefillSelection sel = SelectFlexPrefill(p, prm_, pool);
    const BlockList list = sel.dense_fallback ? BlockList{} : GridToBlockList(sel.grid);
    r.select_seconds = SecondsSince(t0);
    const int64_t t1 = NowNs();
    if (sel.dense_fallback)
      DenseCausal(p, out, lse, pool);
    else
      AttendBlocks(p, list, out, lse, pool);
    r.attend_seconds = SecondsSince(t1);
    r.coverage = GridToCoverage(sel.grid, p.num_q_heads());
    return r;
  }

 private:
  FlexPrefillParams prm_;
};

}  // namespace

MethodInfo FlexPrefillMethod() {
  return {"flexprefill", "FlexPrefill: per-head vertical-slash or query-aware blocks covering gamma of the attention",
          [](MethodOptions& o) {
            FlexPrefillParams prm;
            prm.block = int(o.Int("block", prm.block));
            prm.gamma = o.Float("gamma", prm.gamma);
            prm.tau = o.Float("tau", prm.tau);
            prm.min_budget = o.Int("min_budget", prm.min_budget);
            prm.max_budget = o.Int("max_budget", prm.max_budget);
            prm.union_groups = o.Int("union", 0) != 0;
            prm.slash_cover = o.Int("slash_cover", 0) != 0;
            prm.token_cover = o.Int("token_cover", 0) != 0;
            if (prm.block < 16 || prm.block % 16 != 0 || prm.block > 1024)
              throw std::invalid_argument("flexprefill: block must be a multiple of 16 in [16, 1024]");
            if (prm.gamma < 0 || prm.gamma > 1) throw std::invalid_argument("flexprefill: gamma must be in [0, 1]");
            if (prm.min_budget < 0 || prm.max_budget < 0)
              throw std::invalid_argument("flexprefill: budgets must be >= 0");
            return std::make_unique<FlexPrefill>(prm);
          }};
}

}  // namespace qattn::sparse
