// "draft": DraftAttention-1D (spec 5), the causal LLM form of DraftAttention [ours, as the spec
// describes it; the paper is bidirectional video attention]. Q and K are mean-pooled over blocks
// of `block` tokens (each pooled token stands for one block, so no reordering is needed), the draft
// map softmax(s * q_pool k_pool^T) is taken over block-causal entries (c <= r), and each query head
// keeps its global top (1 - rho) of those entries (one threshold over the head's whole map, as the
// code: entries >= the largest of the floor(rho * count) smallest are kept, which keeps one more
// than (1 - rho) * count, plus ties). The diagonal blocks are always kept (causality inside them and
// no empty rows). The kept blocks run exactly on the block-sparse kernel.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>

#include "methods/sparse_prefill/method_list.h"
#include "methods/sparse_prefill/selector_math.h"
#include "methods/sparse_prefill/selectors_s2.h"

namespace qattn::sparse {
namespace {

class Draft final : public SparsePrefillMethod {
 public:
  Draft(int block, double rho) : block_(block), rho_(rho) {}
  std::string name() const override {
    char buf[64];
    std::snprintf(buf, sizeof buf, "draft:block=%d,rho=%g", block_, rho_);
    return buf;
  }
  std::string granularity() const override { return "per query head (the draft map is per head)"; }

  MethodResult Run(const PrefillProblem& p, TensorView out, float* lse, ThreadPool* pool) override {
    MethodResult r;
    auto t0 = std::chrono::steady_clock::now();
    r.coverage.Init(p.n(), p.num_q_heads(), block_);
    const int nb = r.coverage.num_blocks;
    ThreadPool& tp = pool ? *pool : ThreadPool::Default();
    tp.ParallelFor(p.num_q_heads(), [&](int64_t h, int) {
      const std::vector<uint8_t> keep = DraftKeep(DraftMap(p, int(h), block_), nb, rho_);
      for (int row = 0; row < nb; ++row)
        for (int c = 0; c <= row; ++c) r.coverage.at(int(h), row, c) = keep[size_t(row) * nb + c];
    });
    const BlockList list = r.coverage.ToBlockList(p.n());
    auto t1 = std::chrono::steady_clock::now();
    AttendBlocks(p, list, out, lse, pool);
    r.select_seconds = std::chrono::duration<double>(t1 - t0).count();
    r.attend_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    return r;
  }

 private:
  int block_;
  double rho_;
};

}  // namespace

std::vector<float> DraftMap(const PrefillProblem& p, int h, int block) {
  const std::vector<float> q = MeanPoolRows(p.q, h, block), k = MeanPoolRows(p.k, h / p.group(), block);
  const int nb = int((p.n() + block - 1) / block), d = p.head_dim();
  const KeyPanel panel(k.data(), nb, d);
  const int64_t stride = RoundUp16(nb);
  std::vector<float> s(size_t(nb) * stride), lse(nb), map(size_t(nb) * nb);  // [nb, stride], [nb], [nb, nb]
  std::vector<int64_t> visible(nb);
  for (int r = 0; r < nb; ++r) visible[r] = r + 1;  // block-causal: c <= r
  panel.Logits(q.data(), nb, nb, s.data(), stride);
  SoftmaxRows(s.data(), nb, stride, visible.data(), p.EffectiveScale(), lse.data());
  for (int r = 0; r < nb; ++r) std::copy_n(&s[size_t(r) * stride], nb, &map[size_t(r) * nb]);
  return map;
}

std::vector<uint8_t> DraftKeep(const std::vector<float>& map, int nb, double rho) {
  std::vector<float> causal;  // the head's block-causal entries
  for (int r = 0; r < nb; ++r) causal.insert(causal.end(), &map[size_t(r) * nb], &map[size_t(r) * nb] + r + 1);
  const size_t cut = size_t(std::floor(rho * double(causal.size())));
  float threshold = -1.0f;  // keeps everything when nothing is cut
  if (cut > 0) {
    std::nth_element(causal.begin(), causal.begin() + (cut - 1), causal.end());
    threshold = causal[cut - 1];  // the largest of the `cut` smallest
  }
  std::vector<uint8_t> keep(size_t(nb) * nb, 0);
  for (int r = 0; r < nb; ++r)
    for (int c = 0; c <= r; ++c) keep[size_t(r) * nb + c] = c == r || map[size_t(r) * nb + c] >= threshold;
  return keep;
}

MethodInfo DraftMethod() {
  return {"draft", "DraftAttention-1D: per-head global top (1 - rho) of a block-causal pooled draft map",
          [](MethodOptions& o) {
            const int block = int(o.Int("block", 128));
            const double rho = o.Float("rho", 0.9);
            if (block < 16 || block % 16 || rho < 0 || rho > 1)
              throw std::invalid_argument("draft: block must be a multiple of 16 and rho in [0, 1]");
            return std::make_unique<Draft>(block, rho);
          }};
}

}  // namespace qattn::sparse
