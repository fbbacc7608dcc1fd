#include "kernels/attention_call.h"

namespace qattn {

namespace {
// The fields PrefillArgs and DecodeArgs share, filled from the call.
template <typename Args>
Args ArgsFor(const AttentionCall& call) {
  Args args;
  args.q = call.q;
  args.k = call.k;
  args.v = call.v;
  args.out = call.out;
  args.lse = call.lse;
  args.variant = call.variant;
  return args;
}
}  // namespace

void RunAttention(const AttentionCall& call, ThreadPool* pool) {
  if (UsesDecode(call.q.dim(0))) AttendDecode(ArgsFor<DecodeArgs>(call), pool);
  else AttendPrefill(ArgsFor<PrefillArgs>(call), pool);
}

}  // namespace qattn
