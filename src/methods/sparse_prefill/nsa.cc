// "nsa": Native Sparse Attention (spec 3) run on a model that was not trained with it: there is no
// learned compressor, so compressed tokens are mean-pooled windows of keys and values (the
// reference library's `avgpool` compressor), and no learned gates.
//
// Branches (spec 3.1): compressed tokens i cover raw keys [i*stride, i*stride + cmp_block);
// selection scores come from the exact compressed-attention probabilities, summed over the KV
// group's heads (Eq. 10) and mapped to selection blocks by overlap; the top-T blocks per group are
// kept, the init and local blocks forced; a sliding window sees keys [t - w, t].
//
// Deviation [ours]: NSA picks blocks per token. Here the selection is per KV group and per query
// block of `block` (= l') rows: the block's tokens share `cur`, their scores are summed, and the
// whole block reads the same selected blocks, so it runs on the block-sparse kernel. Each query row
// still gets exact softmax over its selected keys, with the causal mask in the current block.
// Not implemented: per-token selection and FSA's KV-block-outer loop order (spec 3.4).
//
// Merging the branches:
//  * merge=gates: o = g_cmp o_cmp + g_slc o_slc + g_win o_win with constant gates (what a trained
//    model does with its per-token sigmoid gates; no renormalisation, spec 3.8 pitfall 5).
//  * merge=lse (default; gate-free [ours]): one softmax over disjoint key sets, merged by LSE:
//    the window keys [t - w, t]; the selected keys before the window (j < t - w); and the compressed
//    tokens wholly before the window whose span touches no selected block, each entering with
//    +log(stride) since one token accounts for `stride` raw keys. With every block selected (or
//    w >= n) this is dense attention exactly; otherwise the compressed tokens estimate the rest.
//
// Short inputs (n <= min_n, default 4096) run dense: the window plus T * l' keys per row cover most
// of such a sequence, and measured on 2 cores NSA was 3-25% slower than dense up to n = 4096 and
// faster from 8192 on.
#include <chrono>
#include <cmath>
#include <stdexcept>

#include "methods/sparse_prefill/method_list.h"
#include "methods/sparse_prefill/selector_math.h"
#include "methods/sparse_prefill/selectors_s2.h"

namespace qattn::sparse {
namespace {

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Compressed tokens query row t may see: those with i * stride + l - 1 <= t.
int64_t VisibleTokens(const NsaConfig& c, int64_t count, int64_t t) {
  if (t < c.cmp_block - 1) return 0;
  return std::min<int64_t>(count, (t - c.cmp_block + 1) / c.stride + 1);
}

void CompressRow(const PrefillProblem& p, const TensorView& src, const NsaConfig& c, int64_t i, int g, void* dst) {
  const int dim = int(src.dim(2));
  std::vector<float> sum(dim, 0.0f), row(dim);  // [dim]
  for (int64_t j = i * c.stride; j < i * c.stride + c.cmp_block; ++j) {
    ConvertToF32(src.at(j, g), src.dtype, row.data(), dim);
    for (int x = 0; x < dim; ++x) sum[x] += row[x];
  }
  for (float& x : sum) x /= float(c.cmp_block);
  ConvertFromF32(sum.data(), dst, src.dtype, dim);
}

// Adds one query block's column sums of p_cmp to its selection-block scores by overlap.
void AddOverlaps(const NsaConfig& c, const std::vector<float>& colsum, float* scores) {
  for (size_t i = 0; i < colsum.size(); ++i) {
    const int64_t start = int64_t(i) * c.stride, end = start + c.cmp_block;
    for (int64_t j = start / c.block; j * c.block < end; ++j) {
      const int64_t overlap = std::min(end, (j + 1) * c.block) - std::max(start, j * c.block);
      scores[j] += float(overlap / c.stride) * colsum[i];
    }
  }
}

// Column sums over one query block's rows (its tokens x the group's heads) of p_cmp: [cols].
std::vector<float> BlockColumnSums(const PrefillProblem& p, const NsaConfig& c, const KeyPanel& panel, int g,
                                   int64_t r0, int64_t r1) {
  const int G = p.group(), d = p.head_dim();
  const int rows = int((r1 - r0) * G);
  const int64_t cols = VisibleTokens(c, panel.count(), r1 - 1), stride = RoundUp16(cols);
  std::vector<float> colsum(cols, 0.0f);
  if (cols == 0) return colsum;
  std::vector<float> q(size_t(rows) * d), s(size_t(rows) * stride), lse(rows);  // [rows, d], [rows, stride]
  std::vector<int64_t> visible(rows);
  for (int64_t t = r0; t < r1; ++t) {
    for (int h = 0; h < G; ++h) {
      const int row = int((t - r0) * G + h);
      ConvertToF32(p.q.at(t, g * G + h), p.q.dtype, &q[size_t(row) * d], d);
      visible[row] = VisibleTokens(c, panel.count(), t);
    }
  }
  panel.Logits(q.data(), rows, cols, s.data(), stride);
  SoftmaxRows(s.data(), rows, stride, visible.data(), p.EffectiveScale(), lse.data());
  for (int row = 0; row < rows; ++row)
    for (int64_t i = 0; i < cols; ++i) colsum[i] += s[size_t(row) * stride + i];
  return colsum;
}

Tensor NewState(const PrefillProblem& p) { return Tensor(DType::kF32, {p.n(), p.num_q_heads(), p.value_dim()}); }

// Causal sliding-window attention over keys [t - w, t] on the core kernel.
void WindowBranch(const PrefillProblem& p, int window, TensorView out, float* lse, ThreadPool* pool) {
  PrefillArgs a = CausalArgs(p, out, lse);
  a.variant.window_left = window;
  AttendPrefill(a, pool);
}

// Is any block overlapping raw keys [start, end) in this (group, query block) list?
bool TouchesSelected(const BlockList& list, int index, int64_t start, int64_t end) {
  for (int32_t e = list.offsets[index]; e < list.offsets[index + 1]; ++e) {
    const int64_t b0 = int64_t(list.kv_blocks[e]) * list.kv_block;
    if (b0 < end && b0 + list.kv_block > start) return true;
  }
  return false;
}

class Nsa final : public SparsePrefillMethod {
 public:
  explicit Nsa(const NsaConfig& c) : c_(c) {}

  std::string name() const override {
    std::string s = "nsa:cmp_block=" + std::to_string(c_.cmp_block) + ",stride=" + std::to_string(c_.stride) +
                    ",block=" + std::to_string(c_.block) + ",topk=" + std::to_string(c_.topk) +
                    ",init_blocks=" + std::to_string(c_.init_blocks) + ",local_blocks=" +
                    std::to_string(c_.local_blocks) + ",window=" + std::to_string(c_.window) +
                    ",min_n=" + std::to_string(c_.min_n);
    if (!c_.gated) return s + ",merge=lse";
    return s + ",merge=gates,g_cmp=" + Num(c_.g_cmp) + ",g_slc=" + Num(c_.g_slc) + ",g_win=" + Num(c_.g_win);
  }
  std::string granularity() const override {
    return "selection per KV group and " + std::to_string(c_.block) +
           "-row query block (NSA's group sum; blocks instead of tokens so it runs block-sparse)";
  }

  MethodResult Run(const PrefillProblem& p, TensorView out, float* lse, ThreadPool* pool) override {
    if (p.n() <= c_.min_n) return DenseFallback(p, c_.block, out, lse, pool);
    MethodResult r;
    auto t0 = std::chrono::steady_clock::now();
    const NsaCompressed cmp = NsaCompress(p, c_, pool);
    const BlockList list = NsaSelect(NsaBlockScores(p, c_, cmp, pool), p.n(), p.num_kv_heads(), c_);
    r.select_seconds = Since(t0);
    t0 = std::chrono::steady_clock::now();
    if (c_.gated) Gated(p, cmp, list, out, lse, pool);
    else GateFree(p, cmp, list, out, lse, pool);
    r.attend_seconds = Since(t0);
    r.coverage = Coverage(p, list);
    r.approximates_outside_coverage = true;
    return r;
  }

 private:
  static std::string Num(float x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", x);
    return buf;
  }

  // Selected blocks plus every block the window reaches.
  CoverageMap Coverage(const PrefillProblem& p, const BlockList& list) const {
    CoverageMap cov;
    cov.Init(p.n(), p.num_q_heads(), c_.block);
    cov.MarkBlockList(list, p.heads());
    for (int h = 0; h < cov.heads; ++h)
      for (int row = 0; row < cov.num_blocks; ++row)
        for (int64_t col = std::max<int64_t>(0, (int64_t(row) * c_.block - c_.window) / c_.block); col <= row; ++col)
          cov.at(h, row, int(col)) = 1;
    return cov;
  }

  void Gated(const PrefillProblem& p, const NsaCompressed& cmp, const BlockList& list, TensorView out, float* lse,
             ThreadPool* pool) {
    const size_t rows = size_t(p.n()) * p.num_q_heads();
    const int dv = p.value_dim();
    float* o[3] = {State(1, p), State(2, p), State(3, p)};  // cmp, slc, win
    float* l[3] = {Lse(1, rows), Lse(2, rows), Lse(3, rows)};
    auto view = [&](float* x) { return MakeView(x, DType::kF32, {p.n(), p.num_q_heads(), dv}); };
    KeySelection sel;  // every compressed token whose window ends before the block does
    sel.Init(p.n(), p.num_kv_heads(), c_.block);
    for (int g = 0; g < p.num_kv_heads(); ++g) {
      for (int b = 0; b < sel.num_q_blocks; ++b) {
        const int64_t r1 = std::min<int64_t>(p.n(), int64_t(b + 1) * c_.block);
        for (int64_t i = 0; i < cmp.count && cmp.last[i] < r1; ++i) sel.Add(int32_t(i));
        sel.Close();
      }
    }
    AttendGathered(p, {cmp.k.view(), cmp.v.view(), cmp.last.data(), nullptr}, sel, view(o[0]), l[0], pool);
    AttendBlocks(p, list, view(o[1]), l[1], pool);
    WindowBranch(p, c_.window, view(o[2]), l[2], pool);
    for (size_t i = 0; i < rows; ++i) {
      float* dst = out.at<float>(int64_t(i) / p.num_q_heads(), int(i % p.num_q_heads()));
      for (int x = 0; x < dv; ++x)
        dst[x] = c_.g_cmp * o[0][i * dv + x] + c_.g_slc * o[1][i * dv + x] + c_.g_win * o[2][i * dv + x];
    }
    // The gated sum is not a softmax: report the LSE of the three key sets together, for reference.
    if (lse) {
      MergeInto({o[0], o[1], o[2]}, {l[0], l[1], l[2]}, int64_t(rows), dv, pool);
      std::copy_n(l[0], rows, lse);
    }
  }

  // Gate-free: window keys, selected keys before the window (whole blocks through the block-sparse
  // kernel, the block the window edge cuts through by gathering with positions j + w + 1), and the
  // compressed tokens for the rest (positions last + w + 1), merged by LSE.
  void GateFree(const PrefillProblem& p, const NsaCompressed& cmp, const BlockList& list, TensorView out, float* lse,
                ThreadPool* pool) {
    const int64_t n = p.n(), shift = int64_t(c_.window) + 1;  // key j is outside row t's window iff j + shift <= t
    const size_t rows = size_t(n) * p.num_q_heads();
    const bool direct = out.contiguous();  // the window branch writes straight into `out`
    float* o[4] = {direct ? out.at<float>(0) : State(0, p), State(1, p), State(2, p), State(3, p)};
    float* l[4] = {Lse(0, rows), Lse(1, rows), Lse(2, rows), Lse(3, rows)};
    auto view = [&](float* x) { return MakeView(x, DType::kF32, {n, p.num_q_heads(), p.value_dim()}); };
    WindowBranch(p, c_.window, view(o[0]), l[0], pool);

    BlockList before;  // selected blocks wholly before every row's window: [H_kv lists]
    before.q_block = before.kv_block = c_.block;
    before.num_q_blocks = before.num_kv_blocks = list.num_q_blocks;
    before.heads = list.heads;
    before.offsets.push_back(0);
    std::vector<int64_t> raw_pos(n), cmp_pos(cmp.count);
    for (int64_t j = 0; j < n; ++j) raw_pos[j] = j + shift;
    for (int64_t i = 0; i < cmp.count; ++i) cmp_pos[i] = cmp.last[i] + shift;
    KeySelection edge, far;
    edge.Init(n, p.num_kv_heads(), c_.block);
    far.Init(n, p.num_kv_heads(), c_.block);
    for (int g = 0; g < p.num_kv_heads(); ++g) {
      for (int b = 0; b < edge.num_q_blocks; ++b) {
        const int64_t r0 = int64_t(b) * c_.block, r1 = std::min<int64_t>(n, r0 + c_.block);
        const int index = g * list.num_q_blocks + b;
        for (int32_t e = list.offsets[index]; e < list.offsets[index + 1]; ++e) {
          const int64_t k0 = int64_t(list.kv_blocks[e]) * c_.block, k1 = std::min(n, k0 + c_.block);
          if (k1 - 1 + shift <= r0) {
            before.kv_blocks.push_back(list.kv_blocks[e]);
            before.partial.push_back(0);
            continue;
          }
          for (int64_t j = k0; j < k1 && j + shift < r1; ++j) edge.Add(int32_t(j));
        }
        before.offsets.push_back(int32_t(before.kv_blocks.size()));
        edge.Close();
        for (int64_t i = 0; i < cmp.count && cmp_pos[i] < r1; ++i)
          if (!TouchesSelected(list, index, i * c_.stride, i * c_.stride + c_.cmp_block)) far.Add(int32_t(i));
        far.Close();
      }
    }
    AttendBlocks(p, before, view(o[1]), l[1], pool);
    AttendGathered(p, {p.k, p.v, raw_pos.data(), nullptr}, edge, view(o[2]), l[2], pool);
    AttendGathered(p, {cmp.k.view(), cmp.v.view(), cmp_pos.data(), nullptr}, far, view(o[3]), l[3], pool);
    // Every compressed token carries the same +log(stride): it shifts that state's LSE only.
    for (size_t i = 0; i < rows; ++i) l[3][i] += std::log(float(c_.stride));
    MergeInto({o[0], o[1], o[2], o[3]}, {l[0], l[1], l[2], l[3]}, int64_t(rows), p.value_dim(), pool);
    if (!direct)
      for (size_t i = 0; i < rows; ++i)
        std::copy_n(o[0] + i * p.value_dim(), p.value_dim(), out.at<float>(int64_t(i) / p.num_q_heads(), int(i % p.num_q_heads())));
    if (lse) std::copy_n(l[0], rows, lse);
  }

  // Branch states reused across calls, as an engine's workspace would be: [n, H_q, d_v] each.
  float* State(int i, const PrefillProblem& p) {
    if (states_[i].numel() != p.n() * p.num_q_heads() * p.value_dim()) states_[i] = NewState(p);
    return states_[i].data<float>();
  }
  float* Lse(int i, size_t rows) {
    lses_[i].resize(rows);
    return lses_[i].data();
  }

  Tensor states_[4];
  std::vector<float> lses_[4];
  NsaConfig c_;
};

NsaConfig ParseConfig(MethodOptions& o) {
  NsaConfig c;
  c.cmp_block = int(o.Int("cmp_block", c.cmp_block));
  c.stride = int(o.Int("stride", c.stride));
  c.block = int(o.Int("block", c.block));
  c.topk = int(o.Int("topk", c.topk));
  c.init_blocks = int(o.Int("init_blocks", c.init_blocks));
  c.local_blocks = int(o.Int("local_blocks", c.local_blocks));
  c.window = int(o.Int("window", c.window));
  c.min_n = o.Int("min_n", c.min_n);
  const std::string merge = o.String("merge", "lse");
  c.g_cmp = float(o.Float("g_cmp", c.g_cmp));
  c.g_slc = float(o.Float("g_slc", c.g_slc));
  c.g_win = float(o.Float("g_win", c.g_win));
  if (merge != "lse" && merge != "gates") throw std::invalid_argument("nsa: merge must be lse or gates");
  c.gated = merge == "gates";
  if (c.stride < 1 || c.cmp_block < c.stride || c.cmp_block % c.stride || c.block % c.stride || c.block % 16 ||
      c.block < 16 || c.topk < 1 || c.init_blocks < 0 || c.local_blocks < 1 || c.window < 0)
    throw std::invalid_argument(
        "nsa: need stride >= 1 dividing cmp_block and block, block a multiple of 16, topk >= 1, local_blocks >= 1, "
        "window >= 0");
  return c;
}

}  // namespace

NsaCompressed NsaCompress(const PrefillProblem& p, const NsaConfig& c, ThreadPool* pool) {
  NsaCompressed out;
  out.count = p.n() < c.cmp_block ? 0 : (p.n() - c.cmp_block) / c.stride + 1;
  const int hkv = p.num_kv_heads();
  out.k = Tensor(p.k.dtype, {out.count, hkv, p.head_dim()});
  out.v = Tensor(p.v.dtype, {out.count, hkv, p.value_dim()});
  out.last.resize(out.count);
  for (int64_t i = 0; i < out.count; ++i) out.last[i] = i * c.stride + c.cmp_block - 1;
  ThreadPool& tp = pool ? *pool : ThreadPool::Default();
  tp.ParallelFor(out.count * hkv, [&](int64_t item, int) {
    const int64_t i = item / hkv;
    const int g = int(item % hkv);
    CompressRow(p, p.k, c, i, g, out.k.view().at(i, g));
    CompressRow(p, p.v, c, i, g, out.v.view().at(i, g));
  });
  return out;
}

std::vector<float> NsaBlockScores(const PrefillProblem& p, const NsaConfig& c, const NsaCompressed& cmp,
                                  ThreadPool* pool) {
  const int nb = int((p.n() + c.block - 1) / c.block), hkv = p.num_kv_heads();
  std::vector<float> scores(size_t(hkv) * nb * nb, 0.0f);  // [H_kv, nb, nb]
  ThreadPool& tp = pool ? *pool : ThreadPool::Default();
  for (int g = 0; g < hkv && cmp.count > 0; ++g) {
    const KeyPanel panel(HeadRowsF32(cmp.k.view(), g, 0, cmp.count).data(), cmp.count, p.head_dim());
    tp.ParallelFor(nb, [&](int64_t b, int) {
      const int64_t r0 = b * c.block, r1 = std::min<int64_t>(p.n(), r0 + c.block);
      AddOverlaps(c, BlockColumnSums(p, c, panel, g, r0, r1), &scores[(size_t(g) * nb + b) * nb]);
    });
  }
  return scores;
}

BlockList NsaSelect(const std::vector<float>& scores, int64_t n, int num_kv_heads, const NsaConfig& c) {
  BlockList list;
  list.q_block = list.kv_block = c.block;
  list.num_q_blocks = list.num_kv_blocks = int((n + c.block - 1) / c.block);
  list.heads = num_kv_heads;
  list.offsets.push_back(0);
  const int nb = list.num_q_blocks;
  std::vector<float> row(nb);
  for (int g = 0; g < num_kv_heads; ++g) {
    for (int r = 0; r < nb; ++r) {
      for (int j = 0; j <= r; ++j) {
        const bool forced = j < c.init_blocks || j > r - c.local_blocks;
        row[j] = forced ? INFINITY : scores[(size_t(g) * nb + r) * nb + j];
      }
      for (int32_t j : TopK(row.data(), r + 1, c.topk)) {
        list.kv_blocks.push_back(j);
        list.partial.push_back(j == r);
      }
      list.offsets.push_back(int32_t(list.kv_blocks.size()));
    }
  }
  return list;
}

MethodInfo NsaMethod() {
  return {"nsa", "Native Sparse Attention without trained weights: mean-pooled compressed tokens, top-n blocks per KV group, window",
          [](MethodOptions& o) { return std::make_unique<Nsa>(ParseConfig(o)); }};
}

}  // namespace qattn::sparse
