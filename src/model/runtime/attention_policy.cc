#include "model/runtime/attention_policy.h"

#include <stdexcept>

namespace qattn::model {
namespace {

// The kernel arguments shared by prefill and decode.
template <typename Args>
Args KernelArgs(const LayerAttention& call) {
  Args args;
  args.q = call.q;
  args.k = call.k;
  args.v = call.v;
  args.out = call.out;
  args.variant = call.variant;
  return args;
}

// Exact attention on the core skeleton: split-KV decode for one new token, tiled prefill otherwise.
class DensePolicy final : public AttentionPolicy {
 public:
  std::string name() const override { return "dense"; }
  void Attend(const LayerAttention& call, ThreadPool* pool) override {
    if (call.q.dim(0) == 1) {
      AttendDecode(KernelArgs<DecodeArgs>(call), pool);
    } else {
      AttendPrefill(KernelArgs<PrefillArgs>(call), pool);
    }
  }
};

}  // namespace

std::unique_ptr<AttentionPolicy> MakeAttentionPolicy(const std::string& spec) {
  const std::string name = spec.substr(0, spec.find(':'));
  if (name == "dense") {
    if (name.size() != spec.size()) throw std::invalid_argument("the attention policy 'dense' takes no options");
    return std::make_unique<DensePolicy>();
  }
  throw std::invalid_argument("unknown attention policy '" + name + "' (known: dense)");
}

}  // namespace qattn::model
