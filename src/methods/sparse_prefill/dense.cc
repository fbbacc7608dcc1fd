// "dense_blocks": every causal block through the block-list path. Equals dense attention exactly; the
// harness's check that block-list execution and the metrics agree with the dense kernel.
#include <chrono>

#include "methods/sparse_prefill/method_list.h"

namespace qattn::sparse {
namespace {

class DenseBlocks final : public SparsePrefillMethod {
 public:
  explicit DenseBlocks(int block) : block_(block) {}
  std::string name() const override { return "dense_blocks:block=" + std::to_string(block_); }
  std::string granularity() const override { return "all heads (every causal block)"; }
  MethodResult Run(const PrefillProblem& p, TensorView out, float* lse, ThreadPool* pool) override {
    MethodResult r;
    auto t0 = std::chrono::steady_clock::now();
    r.coverage.Init(p.n(), p.num_q_heads(), block_);
    for (int h = 0; h < r.coverage.heads; ++h) {
      for (int row = 0; row < r.coverage.num_blocks; ++row) {
        for (int c = 0; c <= row; ++c) r.coverage.at(h, row, c) = 1;
      }
    }
    const BlockList list = r.coverage.ToBlockList(p.n());
    auto t1 = std::chrono::steady_clock::now();
    AttendBlocks(p, list, out, lse, pool);
    auto t2 = std::chrono::steady_clock::now();
    r.select_seconds = std::chrono::duration<double>(t1 - t0).count();
    r.attend_seconds = std::chrono::duration<double>(t2 - t1).count();
    return r;
  }

 private:
  int block_;
};

}  // namespace

MethodInfo DenseMethod() {
  return {"dense_blocks", "every causal block through the block-list path (equals dense attention)", [](MethodOptions& o) {
            return std::make_unique<DenseBlocks>(int(o.Int("block", 64)));
          }};
}

}  // namespace qattn::sparse
