// Argument checks shared by the prefill and decode entry points; each failure names the problem.
#pragma once
#include <string>

#include "kernels/attention.h"

namespace qattn::detail {

// Checks that t is a rank-3 tensor with a contiguous last dimension; `name` appears in errors.
void CheckRank3(const TensorView& t, const char* name);
// Checks q/k/v/out agree on dtypes, head counts and dims, and returns the head map they imply.
HeadMap CheckQkvOut(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out);
// Checks cumulative offsets: starts at 0, never decreases, ends at total. Empty means {0, total}.
std::vector<int64_t> CheckOffsets(const std::vector<int64_t>& cu, int64_t total, const char* name);
void CheckVariant(const AttentionVariant& v);

}  // namespace qattn::detail
