// "streamingllm": the A-shape pattern (spec 9.1). Query i sees key j iff j <= i and (j < sink or
// i - j < local), token-exact: the core's variant (sink_tokens = sink, window_left = local - 1)
// masks the edge blocks element by element, and the block list holds only the blocks the mask
// touches. Defaults are FlexPrefill's prefill baseline (global 1024, local 8192 tokens) as absolute
// token counts: below n = 8192 the pattern is dense, above it the density falls like ~9216 / (n / 2).
// Coverage marks whole touched blocks, so the harness's kept mass is an upper bound at the edges.
#include <algorithm>

#include "methods/sparse_prefill/method_list.h"
#include "methods/sparse_prefill/selection_stats.h"

namespace qattn::sparse {
namespace {

class StreamingLlm final : public SparsePrefillMethod {
 public:
  StreamingLlm(int64_t sink, int64_t local, int block) : sink_(sink), local_(local), block_(block) {}
  std::string name() const override {
    return "streamingllm:sink=" + std::to_string(sink_) + ",local=" + std::to_string(local_) +
           ",block=" + std::to_string(block_);
  }
  std::string granularity() const override { return "all heads (position-only pattern), token-exact mask"; }

  MethodResult Run(const PrefillProblem& p, TensorView out, float* lse, ThreadPool* pool) override {
    MethodResult r;
    const int64_t t0 = NowNs();
    PrefillArgs args = CausalArgs(p, out, lse);
    // i - j < local  <=>  j >= i - (local - 1); clamp so huge windows stay in int range.
    args.variant.window_left = int(std::min<int64_t>(local_ - 1, p.n()));
    args.variant.sink_tokens = int(std::min<int64_t>(sink_, p.n()));
    const BlockList list = DenseBlockList(p.n(), p.n(), args.variant, block_, block_);  // touched blocks, shared
    args.blocks = &list;
    r.select_seconds = SecondsSince(t0);
    const int64_t t1 = NowNs();
    AttendPrefill(args, pool);
    r.attend_seconds = SecondsSince(t1);
    r.coverage.Init(p.n(), p.num_q_heads(), block_);
    r.coverage.MarkBlockList(list, p.heads());
    return r;
  }

 private:
  int64_t sink_, local_;
  int block_;
};

}  // namespace

MethodInfo StreamingLlmMethod() {
  return {"streamingllm", "A-shape: the first `sink` keys plus the last `local` keys of every query (token-exact)",
          [](MethodOptions& o) {
            const int64_t sink = o.Int("sink", 1024), local = o.Int("local", 8192);
            const int block = int(o.Int("block", 64));
            if (sink < 0 || local < 1) throw std::invalid_argument("streamingllm: need sink >= 0 and local >= 1");
            if (block < 16 || block % 16 != 0 || block > 1024)
              throw std::invalid_argument("streamingllm: block must be a multiple of 16 in [16, 1024]");
            return std::make_unique<StreamingLlm>(sink, local, block);
          }};
}

}  // namespace qattn::sparse
