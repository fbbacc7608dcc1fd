// "vertical_slash": MInference's vertical-slash pattern (spec 9.2), per query head. The last
// last_q queries' attention picks the top key columns (verticals, the first keep_global forced)
// and the top diagonals (slashes, the keep_local nearest forced), token-level as in the official
// code. The engine then runs them at block granularity: each slash becomes the key blocks it
// crosses in every query block (as MInference's kernel covers slashes with whole tiles), and each
// vertical becomes the key block that contains it (a superset of MInference's exact columns: the
// core kernel has no gather path for single columns yet).
#include <algorithm>
#include <limits>

#include "methods/sparse_prefill/block_selectors.h"
#include "methods/sparse_prefill/method_list.h"

namespace qattn::sparse {

void MarkVerticalSlash(int64_t n, const std::vector<int32_t>& verticals, const std::vector<int32_t>& slashes,
                       BlockGrid* grid, int h) {
  const int nb = grid->nb, b = grid->block;
  std::vector<uint8_t> column(nb, 0);  // [nb] key blocks holding a vertical
  for (int32_t j : verticals) column[j / b] = 1;
  for (int r = 0; r < nb; ++r) {
    for (int c = 0; c <= r; ++c)
      if (column[c]) grid->at(h, r, c) = 1;  // j <= i holds for some row of block r >= c
    const int64_t i0 = int64_t(r) * b, i1 = std::min<int64_t>(n, i0 + b) - 1;
    for (int32_t o : slashes) {  // ascending distances: keys [i0 - o, i1 - o]
      if (i1 - o < 0) break;
      for (int64_t c = std::max<int64_t>(0, i0 - o) / b; c <= (i1 - o) / b; ++c) grid->at(h, r, int(c)) = 1;
    }
  }
}

VerticalSlashSelection SelectVerticalSlash(const PrefillProblem& p, const VerticalSlashParams& prm,
                                           ThreadPool* pool_arg) {
  ThreadPool& pool = pool_arg ? *pool_arg : ThreadPool::Default();
  const int64_t n = p.n();
  const int hq = p.num_q_heads();
  VerticalSlashSelection sel;
  sel.grid.Init(n, hq, prm.block);
  sel.verticals.resize(hq);
  sel.slashes.resize(hq);
  std::vector<ProbabilitySlab> slabs(pool.num_threads());
  pool.ParallelFor(hq, [&](int64_t h, int thread) {
    constexpr float kInf = std::numeric_limits<float>::infinity();
    ProbabilitySlab& slab = slabs[thread];
    LastRowsProbabilities(p, int(h), prm.last_q, &slab);
    std::vector<float> vert = ColumnSums(slab);  // [n] summed over the last_q rows
    std::fill(vert.begin(), vert.begin() + std::min<int64_t>(prm.keep_global, n), kInf);
    sel.verticals[h] = TopK(vert.data(), n, std::max<int64_t>(prm.vertical_size, prm.keep_global));
    std::vector<float> slash = DiagonalSums(slab);  // [n], index n - 1 = distance 0
    std::fill(slash.end() - std::min<int64_t>(prm.keep_local, n), slash.end(), kInf);
    std::vector<int32_t> index = TopK(slash.data(), n, std::max<int64_t>(prm.slash_size, prm.keep_local));
    for (int32_t& t : index) t = int32_t(n - 1 - t);
    std::reverse(index.begin(), index.end());  // ascending distances
    sel.slashes[h] = std::move(index);
    MarkVerticalSlash(n, sel.verticals[h], sel.slashes[h], &sel.grid, int(h));
  });
  return sel;
}

namespace {

class VerticalSlash final : public SparsePrefillMethod {
 public:
  explicit VerticalSlash(const VerticalSlashParams& prm) : prm_(prm) {}
  std::string name() const override {
    return "vertical_slash:vertical_size=" + std::to_string(prm_.vertical_size) +
           ",slash_size=" + std::to_string(prm_.slash_size) + ",last_q=" + std::to_string(prm_.last_q) +
           ",keep_global=" + std::to_string(prm_.keep_global) + ",keep_local=" + std::to_string(prm_.keep_local) +
           ",block=" + std::to_string(prm_.block);
  }
  std::string granularity() const override {
    return "per query head; token-level verticals and slashes run as " + std::to_string(prm_.block) + "x" +
           std::to_string(prm_.block) + " blocks (slashes as crossed blocks, verticals as their blocks)";
  }
  MethodResult Run(const PrefillProblem& p, TensorView out, float* lse, ThreadPool* pool) override {
    MethodResult r;
    const int64_t t0 = NowNs();
    const VerticalSlashSelection sel = SelectVerticalSlash(p, prm_, pool);
    const BlockList list = GridToBlockList(sel.grid);
    r.select_seconds = SecondsSince(t0);
    const int64_t t1 = NowNs();
    AttendBlocks(p, list, out, lse, pool);
    r.attend_seconds = SecondsSince(t1);
    r.coverage = GridToCoverage(sel.grid, p.num_q_heads());
    return r;
  }

 private:
  VerticalSlashParams prm_;
};

}  // namespace

MethodInfo VerticalSlashMethod() {
  return {
      "vertical_slash", "MInference vertical-slash: top columns and diagonals from the last 64 queries",
      [](MethodOptions& o) {
        VerticalSlashParams prm;
        prm.vertical_size = o.Int("vertical_size", prm.vertical_size);
        prm.slash_size = o.Int("slash_size", prm.slash_size);
        prm.last_q = int(o.Int("last_q", prm.last_q));
        prm.keep_global = int(o.Int("keep_global", prm.keep_global));
        prm.keep_local = int(o.Int("keep_local", prm.keep_local));
        prm.block = int(o.Int("block", prm.block));
        if (prm.block < 16 || prm.block % 16 != 0 || prm.block > 1024)
          throw std::invalid_argument("vertical_slash: block must be a multiple of 16 in [16, 1024]");
        if (prm.last_q < 1 || prm.vertical_size < 0 || prm.slash_size < 0 || prm.keep_global < 0 || prm.keep_local < 1)
          throw std::invalid_argument("vertical_slash: need last_q >= 1, keep_local >= 1 and sizes >= 0");
        return std::make_unique<VerticalSlash>(prm);
      }};
}

}  // namespace qattn::sparse
