// One entry point over the two kernels, shared by `qattn attend`, `bench attention` and the model
// runtime's dense attention policy:
// a single query row goes to AttendDecode (which reads each K/V byte once for all query heads of a
// KV group), anything else to AttendPrefill. With one query at the last position the two compute
// the same thing (causal masking is implied for that row either way).
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"

namespace qattn {

struct AttentionCall {
  TensorView q;    // [n_q, H_q, d_qk]   f32 | bf16 | f16
  TensorView k;    // [n_kv, H_k, d_qk]  dtype of q
  TensorView v;    // [n_kv, H_v, d_v]   dtype of q
  TensorView out;  // [n_q, H_q, d_v]    f32
  float* lse = nullptr;  // [n_q, H_q] or null
  AttentionVariant variant;
};

inline bool UsesDecode(int64_t n_q) { return n_q == 1; }

void RunAttention(const AttentionCall& call, ThreadPool* pool);

}  // namespace qattn
