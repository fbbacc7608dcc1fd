// "sale": SALE (spec section 2), two-pass mode. Per query head and 64-row query block:
//   1. an exact pass over the local window (the diagonal blocks and enough earlier blocks to cover
//      local_window tokens, rounded so the rest splits into whole segments) and key block 0 gives
//      each row's log-sum-exp lse_i (here: the core kernel on that block list);
//   2. every earlier key block is estimated with 4-bit Q' = Q - mean(Q) and K' = K - mean(K)
//      (plus the correction q_mean . K'), and is kept when any row has an element whose relative
//      attention score exp(s (ŝ_ij + q_i . k_mean) - lse_i) reaches tau, i.e.
//      ŝ_ij >= (lse_i + ln tau) / s - q_i . k_mean;
//   3. the local blocks, the sink and the kept blocks run through the core block-sparse kernel.
// CPU form [ours]: the 4-bit integers are stored as bf16 (or f32) values, whose products and sums
// are exact in the tile kernels' f32 accumulators, so the estimate equals the int4 GEMM's. The exact
// pass uses the original K (softmax is shift-invariant, so outputs match SALE's smoothed K' and the
// LSE needs no correction, pitfall 5). Thresholds are one tau for all heads, or calibrated per head
// through SaleParams::head_tau; the offline calibration itself is not implemented here.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/tile_ops.h"
#include "methods/sparse_prefill/block_selectors.h"
#include "methods/sparse_prefill/method_list.h"

namespace qattn::sparse {
namespace {

int CeilDiv(int64_t a, int64_t b) { return int((a + b - 1) / b); }

struct SaleContext {
  SaleContext(const PrefillProblem& problem, const SaleParams& params) : p(problem), prm(params) {}
  const PrefillProblem& p;
  const SaleParams& prm;
  int d = 0, nbq = 0, nbk = 0, bps = 0, nseg = 0, seg = 0;
  bool bf16 = false;                       // estimate on vdpbf16ps tiles
  std::vector<double> tau;                 // [H_q]
  std::vector<std::vector<float>> k_mean;  // [H_kv][d]
  std::vector<std::vector<float>> q_mean;  // [H_q][d]
  std::vector<std::vector<float>> sk;      // [H_kv][n] key scales (equal within a key block in mode 3)
  std::vector<std::vector<float>> qmk;     // [H_q][n] q_mean . K'_j
  std::vector<std::vector<uint16_t>> k16;  // [H_kv][nseg, d / 2, seg, 2] estimate keys, bf16 pairs
  std::vector<std::vector<float>> k32;     // [H_kv][nseg, d, seg] estimate keys, transposed
  std::vector<float> lse;                  // [n, H_q] of the local + sink pass

  bool dense_head(int h) const { return tau[h] < 1e-5; }
};

// Stores value v of key `key` (>= block_k), dimension i, in the segment layout.
void PutKey(SaleContext& cx, int g, int64_t key, int i, float v) {
  const int64_t rel = key - cx.prm.block_k, s = rel / cx.seg, kk = rel % cx.seg;
  if (cx.bf16)
    cx.k16[g][(size_t(s) * (cx.d / 2) + i / 2) * cx.seg * 2 + kk * 2 + i % 2] = F32ToBF16(v).bits;
  else
    cx.k32[g][(size_t(s) * cx.d + i) * cx.seg + kk] = v;
}

std::vector<float> RowF32(const TensorView& x, int64_t row, int head) {
  std::vector<float> out(x.dim(2));
  ConvertToF32(x.at(row, head), x.dtype, out.data(), out.size());
  return out;
}

// Mean of x[:, head, :] over all rows: [d].
std::vector<float> MeanRow(const TensorView& x, int head) {
  std::vector<double> acc(x.dim(2), 0.0);
  for (int64_t j = 0; j < x.dim(0); ++j) {
    const std::vector<float> row = RowF32(x, j, head);
    for (size_t i = 0; i < acc.size(); ++i) acc[i] += row[i];
  }
  std::vector<float> mean(acc.size());
  for (size_t i = 0; i < acc.size(); ++i) mean[i] = float(acc[i] / double(x.dim(0)));
  return mean;
}

// Pre-pass for KV head g: K' = K - k_mean, its 4-bit integers and scales, and qmk for the group's
// query heads. In the exact-estimate mode the segment buffers hold the original keys instead.
void PrepareKeys(SaleContext& cx, int g) {
  const int64_t n = cx.p.n();
  const int d = cx.d, bk = cx.prm.block_k;
  cx.k_mean[g] = MeanRow(cx.p.k, g);
  std::vector<float> kc(size_t(n) * d);  // [n, d] K'
  for (int64_t j = 0; j < n; ++j) {
    const std::vector<float> row = RowF32(cx.p.k, j, g);
    for (int i = 0; i < d; ++i) kc[size_t(j) * d + i] = row[i] - cx.k_mean[g][i];
  }
  for (int h = g * cx.p.group(); h < (g + 1) * cx.p.group(); ++h) {
    cx.qmk[h].resize(n);
    for (int64_t j = 0; j < n; ++j) {
      float s = 0.0f;
      for (int i = 0; i < d; ++i) s += cx.q_mean[h][i] * kc[size_t(j) * d + i];
      cx.qmk[h][j] = s;
    }
  }
  cx.sk[g].assign(n, 0.0f);
  // Scale max|K'| / 7 per key (mode 2) or per key block (mode 3).
  const int group_keys = cx.prm.quant_mode == 3 ? bk : 1;
  for (int64_t j0 = 0; j0 < n; j0 += group_keys) {
    const int64_t j1 = std::min<int64_t>(n, j0 + group_keys);
    float mx = 0.0f;
    for (size_t e = size_t(j0) * d; e < size_t(j1) * d; ++e) mx = std::max(mx, std::fabs(kc[e]));
    std::fill(cx.sk[g].begin() + j0, cx.sk[g].begin() + j1, mx / 7.0f);
  }
  for (int64_t j = bk; j < n; ++j) {
    const std::vector<float> raw = cx.prm.exact_estimate ? RowF32(cx.p.k, j, g) : std::vector<float>();
    for (int i = 0; i < d; ++i) {
      const float x = kc[size_t(j) * d + i], scale = cx.sk[g][j];
      PutKey(cx, g, j, i, cx.prm.exact_estimate ? raw[i] : (scale > 0 ? std::nearbyint(x / scale) : 0.0f));
    }
  }
}

// Step 1: lse of every row over its local blocks and the sink: [n, H_q].
void LocalPass(SaleContext& cx, ThreadPool* pool) {
  const int64_t n = cx.p.n();
  BlockList list;
  list.q_block = cx.prm.block_q;
  list.kv_block = cx.prm.block_k;
  list.num_q_blocks = cx.nbq;
  list.num_kv_blocks = cx.nbk;
  list.offsets.push_back(0);
  for (int r = 0; r < cx.nbq; ++r) {
    const SaleLocalRange lr = SaleLocalBlocks(n, r, cx.prm, false);
    if (lr.sink) {
      list.kv_blocks.push_back(0);
      list.partial.push_back((int64_t(1) * cx.prm.block_k - 1) > int64_t(r) * cx.prm.block_q);
    }
    for (int c = lr.first; c <= lr.last; ++c) {
      list.kv_blocks.push_back(c);
      list.partial.push_back(int64_t(c + 1) * cx.prm.block_k - 1 > int64_t(r) * cx.prm.block_q);
    }
    list.offsets.push_back(int32_t(list.kv_blocks.size()));
  }
  Tensor scratch(DType::kF32, {n, cx.p.num_q_heads(), cx.p.value_dim()});
  cx.lse.resize(size_t(n) * cx.p.num_q_heads());
  AttendBlocks(cx.p, list, scratch.view(), cx.lse.data(), pool);
}

// Steps before the scan: means, 4-bit keys and their scales, qmk, and the local + sink pass.
void PrepareScan(SaleContext& cx, ThreadPool& pool) {
  const int hq = cx.p.num_q_heads(), hkv = cx.p.num_kv_heads();
  cx.bf16 = tile::HasBf16Path() && cx.d % 2 == 0 && (!cx.prm.exact_estimate || cx.p.q.dtype == DType::kBF16);
  cx.nseg = CeilDiv(cx.p.n() - cx.prm.block_k, cx.seg);
  cx.k_mean.resize(hkv);
  cx.sk.resize(hkv);
  cx.qmk.resize(hq);
  cx.q_mean.resize(hq);
  cx.k16.assign(cx.bf16 ? hkv : 0, std::vector<uint16_t>(size_t(cx.nseg) * cx.seg * cx.d, 0));
  cx.k32.assign(cx.bf16 ? 0 : hkv, std::vector<float>(size_t(cx.nseg) * cx.seg * cx.d, 0.0f));
  pool.ParallelFor(hq, [&](int64_t h, int) { cx.q_mean[h] = MeanRow(cx.p.q, int(h)); });
  pool.ParallelFor(hkv, [&](int64_t g, int) { PrepareKeys(cx, int(g)); });
  LocalPass(cx, &pool);
}

// Per-thread buffers of one query block's scan.
struct ScanScratch {
  std::vector<uint16_t> q16;       // [rows, d]
  std::vector<float> q32;          // [rows, d]
  std::vector<float> sq;           // [rows] query scales (1 in the exact mode)
  std::vector<float> theta;        // [rows] thresholds on the estimate
  std::vector<float> s;            // [rows, seg] estimates of one segment
  std::vector<float> bias;         // [tiles, seg] mode 3's rounded qmk / scale
  std::vector<float> ones, zeros;  // [block_k]
};

// Loads the query block's estimate rows (4-bit Q' or the raw queries) and each row's threshold.
void LoadQueries(const SaleContext& cx, int h, int64_t r0, int rows, ScanScratch& sc) {
  const int d = cx.d, g = h / cx.p.group();
  const float scale = cx.p.EffectiveScale(), log_tau = float(std::log(cx.tau[h]));
  std::vector<float> q(size_t(rows) * d);  // [rows, d]
  sc.sq.assign(rows, 1.0f);
  sc.theta.resize(rows);
  for (int i = 0; i < rows; ++i) {
    ConvertToF32(cx.p.q.at(r0 + i, h), cx.p.q.dtype, &q[size_t(i) * d], size_t(d));
    float qk_mean = 0.0f;  // q_i . k_mean, the part of q . k that K' removed
    for (int c = 0; c < d; ++c) qk_mean += q[size_t(i) * d + c] * cx.k_mean[g][c];
    const float bound = (cx.lse[size_t(r0 + i) * cx.p.num_q_heads() + h] + log_tau) / scale;
    sc.theta[i] = cx.prm.exact_estimate ? bound : bound - qk_mean;
  }
  if (!cx.prm.exact_estimate) {
    for (int i = 0; i < rows; ++i)
      for (int c = 0; c < d; ++c) q[size_t(i) * d + c] -= cx.q_mean[h][c];
    const int tile = cx.prm.quant_mode == 3 ? 16 : 1;  // rows sharing one scale
    for (int t0 = 0; t0 < rows; t0 += tile) {
      const int t1 = std::min(rows, t0 + tile);
      float mx = 0.0f;
      for (size_t e = size_t(t0) * d; e < size_t(t1) * d; ++e) mx = std::max(mx, std::fabs(q[e]));
      for (int i = t0; i < t1; ++i) sc.sq[i] = mx / 7.0f;
      for (size_t e = size_t(t0) * d; e < size_t(t1) * d; ++e) q[e] = mx > 0 ? std::nearbyint(q[e] * 7.0f / mx) : 0.0f;
    }
  }
  if (cx.bf16) {
    sc.q16.resize(q.size());
    for (size_t e = 0; e < q.size(); ++e) sc.q16[e] = F32ToBF16(q[e]).bits;
  } else {
    sc.q32 = std::move(q);
  }
}

// Whether a * w[j] * s[j] + bias[j] >= theta for any j < count. An OR instead of a max so the
// compiler vectorises it; cloned for AVX-512 and AVX2 (the build's baseline is plain x86-64).
__attribute__((target_clones("avx512f", "avx2", "default"))) bool AnyAtLeast(const float* s, const float* w,
                                                                             const float* bias, float a, float theta,
                                                                             int count) {
  int hit = 0;
  for (int j = 0; j < count; ++j) hit |= int(a * w[j] * s[j] + bias[j] >= theta);
  return hit != 0;
}

// out[j] = round(x[j] * a) (to nearest even), vectorised like AnyAtLeast.
__attribute__((target_clones("avx512f", "avx2", "default"))) void RoundedProducts(const float* x, float a, int count,
                                                                                  float* out) {
  for (int j = 0; j < count; ++j) out[j] = std::nearbyint(x[j] * a);
}

// Mode 3's integer-domain correction per 16-row tile: round(qmk_j / (sq_t sk_c)) for the segment's
// keys: [tiles, seg] (0 where the scale is 0).
void TileBiases(const SaleContext& cx, int h, int seg, int first, int rows, ScanScratch& sc) {
  const int g = h / cx.p.group(), bk = cx.prm.block_k, tiles = (rows + 15) / 16;
  sc.bias.assign(size_t(tiles) * cx.seg, 0.0f);
  for (int t = 0; t < tiles; ++t)
    for (int b = 0; b < cx.bps && 1 + seg * cx.bps + b < first; ++b) {
      const int64_t k0 = int64_t(1 + seg * cx.bps + b) * bk;
      const float scale = sc.sq[t * 16] * cx.sk[g][k0];
      if (scale <= 0) continue;
      RoundedProducts(&cx.qmk[h][k0], 1.0f / scale, bk, &sc.bias[size_t(t) * cx.seg + b * bk]);
    }
}

// Whether any row's estimate inside key block c (columns [col0, col0 + bk) of the segment tile)
// reaches its threshold.
bool BlockIsBig(const SaleContext& cx, int h, int rows, int c, int col0, const ScanScratch& sc) {
  const int bk = cx.prm.block_k, g = h / cx.p.group();
  const int64_t k0 = int64_t(c) * bk;
  const float* qmk = &cx.qmk[h][k0];  // [bk]
  for (int i = 0; i < rows; ++i) {
    const float* s = &sc.s[size_t(i) * cx.seg + col0];
    bool big;
    if (cx.prm.exact_estimate) {
      big = AnyAtLeast(s, sc.ones.data(), sc.zeros.data(), 1.0f, sc.theta[i], bk);
    } else if (cx.prm.quant_mode == 2) {
      big = AnyAtLeast(s, &cx.sk[g][k0], qmk, sc.sq[i], sc.theta[i], bk);
    } else {  // mode 3: the row max in the integer domain, times the one scale of (tile, key block)
      const float scale = sc.sq[i] * cx.sk[g][k0];
      big = scale > 0
                ? AnyAtLeast(s, sc.ones.data(), &sc.bias[size_t(i / 16) * cx.seg + col0], 1.0f, sc.theta[i] / scale, bk)
                : AnyAtLeast(s, sc.zeros.data(), qmk, 0.0f, sc.theta[i], bk);
    }
    if (big) return true;
  }
  return false;
}

// Step 2 for one (query head, query block): the scanned key blocks that are kept, ascending.
std::vector<int32_t> ScanQueryBlock(const SaleContext& cx, int h, int r, ScanScratch& sc) {
  std::vector<int32_t> kept;
  const int64_t n = cx.p.n(), r0 = int64_t(r) * cx.prm.block_q;
  const SaleLocalRange lr = SaleLocalBlocks(n, r, cx.prm, cx.dense_head(h));
  if (lr.first <= 1) return kept;
  const int rows = int(std::min<int64_t>(cx.prm.block_q, n - r0)), g = h / cx.p.group();
  LoadQueries(cx, h, r0, rows, sc);
  sc.s.resize(size_t(rows) * cx.seg);
  sc.ones.assign(cx.prm.block_k, 1.0f);
  sc.zeros.assign(cx.prm.block_k, 0.0f);
  for (int seg = 0; (seg * cx.bps) + 1 < lr.first; ++seg) {  // segments start at key block 1
    if (!cx.prm.exact_estimate && cx.prm.quant_mode == 3) TileBiases(cx, h, seg, lr.first, rows, sc);
    if (cx.bf16)
      tile::QkBf16(sc.q16.data(), rows, cx.d, &cx.k16[g][size_t(seg) * cx.d * cx.seg], cx.seg, sc.s.data(), cx.seg);
    else
      tile::QkF32(sc.q32.data(), rows, cx.d, &cx.k32[g][size_t(seg) * cx.d * cx.seg], cx.seg, sc.s.data(), cx.seg);
    for (int b = 0; b < cx.bps; ++b) {
      const int c = 1 + seg * cx.bps + b;
      if (c >= lr.first) break;
      if (BlockIsBig(cx, h, rows, c, b * cx.prm.block_k, sc)) kept.push_back(c);
    }
  }
  return kept;
}

// Step 3's list: sink, kept blocks and local blocks per (query head, query block).
BlockList AssembleList(const SaleContext& cx, const std::vector<std::vector<int32_t>>& kept) {
  BlockList list;
  list.q_block = cx.prm.block_q;
  list.kv_block = cx.prm.block_k;
  list.num_q_blocks = cx.nbq;
  list.num_kv_blocks = cx.nbk;
  list.heads = cx.p.num_q_heads();
  list.offsets.push_back(0);
  auto add = [&](int r, int c) {
    list.kv_blocks.push_back(c);
    list.partial.push_back(int64_t(c + 1) * cx.prm.block_k - 1 > int64_t(r) * cx.prm.block_q);
  };
  for (int h = 0; h < list.heads; ++h) {
    for (int r = 0; r < cx.nbq; ++r) {
      const SaleLocalRange lr = SaleLocalBlocks(cx.p.n(), r, cx.prm, cx.dense_head(h));
      if (lr.sink) add(r, 0);
      for (int32_t c : kept[size_t(h) * cx.nbq + r]) add(r, c);
      for (int c = lr.first; c <= lr.last; ++c) add(r, c);
      list.offsets.push_back(int32_t(list.kv_blocks.size()));
    }
  }
  return list;
}

}  // namespace

SaleLocalRange SaleLocalBlocks(int64_t n, int r, const SaleParams& prm, bool dense_head) {
  // As the official kernel: n_block_max key blocks are visible, block 0 is the sink, and the local
  // count is the smallest >= local_window / block_k that leaves whole segments for the scan.
  const int n_block_max = CeilDiv(std::min<int64_t>(n, int64_t(r + 1) * prm.block_q), prm.block_k);
  const int without_sink = n_block_max - 1, bps = prm.segment / prm.block_k;
  int local = without_sink;
  if (!dense_head) {
    const int segs = CeilDiv(without_sink, bps), remain = without_sink - segs * bps;  // remain <= 0
    const int min_local = prm.local_window / prm.block_k;
    local = remain >= min_local ? remain : bps * CeilDiv(min_local - remain, bps) + remain;
  }
  SaleLocalRange out;
  out.last = n_block_max - 1;
  out.first = std::max(0, n_block_max - local);
  out.sink = out.first > 0;
  return out;
}

SaleSelection SelectSale(const PrefillProblem& p, const SaleParams& prm, ThreadPool* pool_arg) {
  ThreadPool& pool = pool_arg ? *pool_arg : ThreadPool::Default();
  const int64_t n = p.n();
  const int hq = p.num_q_heads();
  SaleSelection sel;
  SaleContext cx(p, prm);
  cx.d = p.head_dim();
  cx.nbq = CeilDiv(n, prm.block_q);
  cx.nbk = CeilDiv(n, prm.block_k);
  cx.seg = prm.segment;
  cx.bps = prm.segment / prm.block_k;
  cx.tau = prm.head_tau.empty() ? std::vector<double>(hq, prm.tau) : prm.head_tau;
  if (int(cx.tau.size()) != hq) throw std::invalid_argument("sale: head_tau needs one threshold per query head");
  sel.dense_fallback = n <= prm.dense_below;
  const bool any_scan = std::any_of(cx.tau.begin(), cx.tau.end(), [](double t) { return t >= 1e-5; });
  std::vector<std::vector<int32_t>> kept(size_t(hq) * cx.nbq);  // [H_q, nbq] kept scanned blocks
  sel.scanned.assign(hq, 0);
  sel.selected.assign(hq, 0);
  if (!sel.dense_fallback && any_scan && n > prm.block_k) {
    PrepareScan(cx, pool);
    std::vector<ScanScratch> scratch(pool.num_threads());
    // Later query blocks scan more key blocks: hand them out first.
    pool.ParallelFor(int64_t(hq) * cx.nbq, [&](int64_t item, int thread) {
      const int h = int(item % hq), r = cx.nbq - 1 - int(item / hq);
      kept[size_t(h) * cx.nbq + r] = ScanQueryBlock(cx, h, r, scratch[thread]);
    });
    for (int h = 0; h < hq; ++h)
      for (int r = 0; r < cx.nbq; ++r) {
        sel.scanned[h] += std::max(0, SaleLocalBlocks(n, r, prm, cx.dense_head(h)).first - 1);
        sel.selected[h] += int64_t(kept[size_t(h) * cx.nbq + r].size());
      }
  }
  if (sel.dense_fallback) std::fill(cx.tau.begin(), cx.tau.end(), 0.0);  // every block local
  sel.list = AssembleList(cx, kept);
  return sel;
}

namespace {

class Sale final : public SparsePrefillMethod {
 public:
  explicit Sale(const SaleParams& prm) : prm_(prm) {}
  std::string name() const override {
    return "sale:tau=" + OptionNumber(prm_.tau) + ",block_k=" + std::to_string(prm_.block_k) +
           ",local=" + std::to_string(prm_.local_window) + ",segment=" + std::to_string(prm_.segment) +
           ",quant=" + std::to_string(prm_.quant_mode) + ",estimate=" + (prm_.exact_estimate ? "exact" : "int4");
  }
  std::string granularity() const override {
    return "per query head: 64-row query blocks x " + std::to_string(prm_.block_k) +
           "-key blocks, thresholds per query head; int4 K' shared per KV head";
  }
  MethodResult Run(const PrefillProblem& p, TensorView out, float* lse, ThreadPool* pool) override {
    MethodResult r;
    const int64_t t0 = NowNs();
    const SaleSelection sel = SelectSale(p, prm_, pool);
    r.select_seconds = SecondsSince(t0);
    const int64_t t1 = NowNs();
    if (sel.dense_fallback)
      DenseCausal(p, out, lse, pool);
    else
      AttendBlocks(p, sel.list, out, lse, pool);
    r.attend_seconds = SecondsSince(t1);
    r.coverage.Init(p.n(), p.num_q_heads(), prm_.block_k);
    r.coverage.MarkBlockList(sel.list, p.heads());
    return r;
  }

 private:
  SaleParams prm_;
};

}  // namespace

MethodInfo SaleMethod() {
  return {"sale", "SALE: 4-bit Q'K' estimates keep key blocks whose relative score passes tau after sink + local",
          [](MethodOptions& o) {
            SaleParams prm;
            prm.tau = o.Float("tau", prm.tau);
            prm.block_k = int(o.Int("block_k", prm.block_k));
            prm.local_window = int(o.Int("local", prm.local_window));
            prm.segment = int(o.Int("segment", prm.segment));
            prm.quant_mode = int(o.Int("quant", prm.quant_mode));
            // The 4-bit estimate costs about half a dense pass on this CPU: below 4096 tokens it
            // cannot pay for itself, so the method stays dense there (the official fallback is 1024).
            prm.dense_below = o.Int("dense_below", 4096);
            const std::string estimate = o.String("estimate", "int4");
            if (estimate != "int4" && estimate != "exact")
              throw std::invalid_argument("sale: estimate must be int4 or exact");
            prm.exact_estimate = estimate == "exact";
            if (prm.block_k < 16 || prm.block_k % 16 != 0 || prm.block_q % prm.block_k != 0)
              throw std::invalid_argument("sale: block_k must be a multiple of 16 dividing 64");
            if (prm.segment < prm.block_k || prm.segment % prm.block_k != 0 || prm.segment % 16 != 0 ||
                prm.segment / prm.block_k > 32)
              throw std::invalid_argument("sale: segment must be a multiple of block_k (at most 32 blocks)");
            if (prm.local_window < prm.block_q || prm.local_window % prm.block_k != 0)
              throw std::invalid_argument("sale: local must be a multiple of block_k and at least 64");
            if (prm.quant_mode != 2 && prm.quant_mode != 3) throw std::invalid_argument("sale: quant must be 2 or 3");
            if (prm.tau < 0) throw std::invalid_argument("sale: tau must be >= 0");
            return std::make_unique<Sale>(prm);
          }};
}

}  // namespace qattn::sparse
