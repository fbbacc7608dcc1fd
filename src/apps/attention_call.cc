#include "apps/attention_call.h"

namespace qattn {

void RunAttention(const AttentionCall& call, ThreadPool* pool) {
  if (UsesDecode(call.q.dim(0))) {
    DecodeArgs args;
    args.q = call.q;
    args.k = call.k;
    args.v = call.v;
    args.out = call.out;
    args.lse = call.lse;
    args.variant = call.variant;
    AttendDecode(args, pool);
    return;
  }
  PrefillArgs args;
  args.q = call.q;
  args.k = call.k;
  args.v = call.v;
  args.out = call.out;
  args.lse = call.lse;
  args.variant = call.variant;
  AttendPrefill(args, pool);
}

}  // namespace qattn
