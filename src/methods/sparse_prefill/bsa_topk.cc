// "bsa_topk": block-sparse top-k by pooled scores (spec 9.3). Queries and keys are mean-pooled per
// block (true counts for a final partial block), E = softmax_c(s q̄_r . k̄_c) over c <= r, and every
// query block keeps its top-k key blocks by E (or, with p > 0, the fewest whose E mass reaches p),
// always its diagonal block, and with sink=1 also key block 0. Per query head by default; union=1
// ORs the G heads of each KV group (a superset).
#include <algorithm>
#include <limits>

#include "methods/sparse_prefill/block_selectors.h"
#include "methods/sparse_prefill/method_list.h"

namespace qattn::sparse {
namespace {

// E for one head from pooled queries [nb, d] and keys [nb, d]: [nb, nb], rows sum to 1 over c <= r.
std::vector<float> BlockScores(const std::vector<float>& qp, const std::vector<float>& kp, int nb, int d, float scale) {
  std::vector<float> e(size_t(nb) * nb, -std::numeric_limits<float>::infinity());
  for (int r = 0; r < nb; ++r) {
    float* row = &e[size_t(r) * nb];
    for (int c = 0; c <= r; ++c) {
      double s = 0.0;
      for (int i = 0; i < d; ++i) s += double(qp[size_t(r) * d + i]) * kp[size_t(c) * d + i];
      row[c] = float(s) * scale;
    }
    SoftmaxInPlace(row, nb);
  }
  return e;
}

void SelectRows(const std::vector<float>& e, const BsaTopkParams& prm, BlockGrid& grid, int h) {
  const int nb = grid.nb;
  for (int r = 0; r < nb; ++r) {
    const float* row = &e[size_t(r) * nb];
    const int64_t visible = r + 1;
    const int64_t keep =
        prm.top_p > 0 ? std::min(visible, CoverCount(row, visible, prm.top_p) + 1) : std::min(visible, prm.topk);
    for (int32_t c : TopK(row, visible, keep)) grid.at(h, r, c) = 1;
    grid.at(h, r, r) = 1;
    if (prm.sink) grid.at(h, r, 0) = 1;
  }
}

}  // namespace

std::vector<float> PooledBlockScores(const PrefillProblem& p, int h, int block) {
  const int nb = int((p.n() + block - 1) / block);
  return BlockScores(MeanPoolRows(p.q, h, block), MeanPoolRows(p.k, h / p.group(), block), nb, p.head_dim(),
                     p.EffectiveScale());
}

BlockGrid SelectBsaTopk(const PrefillProblem& p, const BsaTopkParams& prm, ThreadPool* pool_arg) {
  ThreadPool& pool = pool_arg ? *pool_arg : ThreadPool::Default();
  BlockGrid grid;
  grid.Init(p.n(), p.num_q_heads(), prm.block);
  std::vector<std::vector<float>> kpool(p.num_kv_heads());  // [H_kv][nb, d]
  pool.ParallelFor(p.num_kv_heads(), [&](int64_t g, int) { kpool[g] = MeanPoolRows(p.k, int(g), prm.block); });
  pool.ParallelFor(p.num_q_heads(), [&](int64_t h, int) {
    const std::vector<float> e = BlockScores(MeanPoolRows(p.q, int(h), prm.block), kpool[h / p.group()], grid.nb,
                                             p.head_dim(), p.EffectiveScale());
    SelectRows(e, prm, grid, int(h));
  });
  return grid;
}

namespace {

class BsaTopk final : public SparsePrefillMethod {
 public:
  BsaTopk(const BsaTopkParams& prm, bool union_groups) : prm_(prm), union_(union_groups) {}
  std::string name() const override {
    return "bsa_topk:block=" + std::to_string(prm_.block) + ",topk=" + std::to_string(prm_.topk) +
           ",p=" + OptionNumber(prm_.top_p) + ",sink=" + std::to_string(int(prm_.sink)) +
           ",union=" + std::to_string(int(union_));
  }
  std::string granularity() const override {
    return union_ ? "per KV group: union of the group's per-query-head top-k blocks"
                  : "per query head: pooled scores and top-k per query head";
  }
  MethodResult Run(const PrefillProblem& p, TensorView out, float* lse, ThreadPool* pool) override {
    MethodResult r;
    const int64_t t0 = NowNs();
    BlockGrid grid = SelectBsaTopk(p, prm_, pool);
    if (union_) grid = UnionPerGroup(grid, p.group());
    const BlockList list = GridToBlockList(grid);
    r.select_seconds = SecondsSince(t0);
    const int64_t t1 = NowNs();
    AttendBlocks(p, list, out, lse, pool);
    r.attend_seconds = SecondsSince(t1);
    r.coverage = GridToCoverage(grid, p.num_q_heads());
    return r;
  }

 private:
  BsaTopkParams prm_;
  bool union_;
};

}  // namespace

MethodInfo BsaTopkMethod() {
  return {"bsa_topk", "block-sparse top-k (or top-p) key blocks per query block by mean-pooled scores",
          [](MethodOptions& o) {
            BsaTopkParams prm;
            prm.block = int(o.Int("block", prm.block));
            prm.topk = o.Int("topk", prm.topk);
            prm.top_p = o.Float("p", 0.0);
            prm.sink = o.Int("sink", 0) != 0;
            const bool union_groups = o.Int("union", 0) != 0;
            if (prm.block < 16 || prm.block % 16 != 0 || prm.block > 1024)
              throw std::invalid_argument("bsa_topk: block must be a multiple of 16 in [16, 1024]");
            if (prm.topk < 1 || prm.top_p < 0 || prm.top_p > 1)
              throw std::invalid_argument("bsa_topk: need topk >= 1 and p in [0, 1]");
            return std::make_unique<BsaTopk>(prm, union_groups);
          }};
}

}  // namespace qattn::sparse
