// Attention over gathered keys: each (head, query block) reads its own sorted list of keys from a
// key source (the problem's K/V, or derived keys such as NSA's compressed tokens or PSA's pooled
// ones), with a causal rule on key positions and an optional additive logit bias per key. The
// methods that select tokens rather than blocks (Squeezed, DMA, NSA's compressed branch, PSA's
// pooled levels) run on it (spec section 10.1 item 2).
//
//   out[t, h] = sum_j softmax_j(scale * q[t, h] . k[j] + bias[g, j]) v[j]
//   over the keys j of t's block list with position[j] <= t; lse likewise; a row that sees no key
//   gets out = 0 and lse = -inf.
//
// How it runs on the core kernel, unchanged:
//  * Per list head and chunk of query blocks, the selected K/V rows are copied into one contiguous
//    buffer, one varlen sequence per query block, and one AttendPrefill call covers the chunk.
//  * Causality. Keys at positions <= R0 (the block's first row) are visible to every row of the
//    block. When the rest sit one per row at R0+1, R0+2, ... up to the block's last row (the usual
//    diagonal block), the kernel's bottom-right causal rule is exactly "position <= t", so one
//    causal call does everything ("fused"). Otherwise the always-visible keys go through a
//    non-causal call, the others through a second call whose sequences are the row segments between
//    consecutive key positions (each segment sees a prefix of those keys, copied per segment), and
//    the two states are merged by log-sum-exp (MergeStates).
//  * Bias. The kernel has no per-key bias hook, so the bias is folded into the keys: one extra
//    dimension pair, q' = [q, 1, 1] and k' = [k, hi, lo] with hi + lo = bias / scale (hi is
//    bias / scale rounded to the dtype and lo the rounding remainder, so bf16 keeps ~16 bits of the
//    bias), zero-padded to a multiple of 16. Then scale * q'.k' = scale * q.k + bias.
//  * Cost: each gathered key is copied once and packed once by the kernel for the one query block
//    (x its list's heads) that reads it, about as much again as its share of the attention FLOPs at
//    d = 128 and 64 rows; the buffers are a thread-local workspace kept between calls.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "core/thread_pool.h"
#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::sparse {

// Where gathered keys come from.
struct KeySource {
  TensorView k;  // [m, H_kv, d]    same dtype as the problem's queries
  TensorView v;  // [m, H_kv, d_v]
  const int64_t* position = nullptr;  // [m] the last raw token a key stands for; null: its index
  const float* bias = nullptr;        // [H_kv, m] added to the scaled logit; null: none

  int64_t size() const { return k.dim(0); }
  int64_t Position(int64_t key) const { return position ? position[key] : key; }
};

// The problem's own keys as a source (positions = indices, no bias).
KeySource ProblemKeys(const PrefillProblem& problem);

// Which source keys each (list head, query block) reads, as CSR lists ascending in key index and
// non-decreasing in key position.
// `heads` is H_q (one list per query head) or H_kv (one per KV group).
struct KeySelection {
  int q_block = 64;
  int num_q_blocks = 0;
  int heads = 1;
  std::vector<int64_t> offsets;  // [heads * num_q_blocks + 1]
  std::vector<int32_t> keys;     // [offsets.back()] source indices, strictly ascending per list

  void Init(int64_t n, int list_heads, int block);  // empty lists; append with Add / Close
  void Add(int32_t key) { keys.push_back(key); }
  void Close() { offsets.push_back(int64_t(keys.size())); }  // ends the current list
  int64_t list(int head, int q_block_index) const { return int64_t(head) * num_q_blocks + q_block_index; }
};

// Fraction of the causal (query, key) pairs a selection computes, over all query heads.
double TokenDensity(const PrefillProblem& problem, const KeySource& source, const KeySelection& selection);

// Runs the gathered attention described above. out: [n, H_q, d_v] f32; lse: [n, H_q] or null.
// Throws std::invalid_argument for a selection that does not fit the problem or source.
void AttendGathered(const PrefillProblem& problem, const KeySource& source, const KeySelection& selection,
                    TensorView out, float* lse, ThreadPool* pool);

// Dense causal attention with an additive per-key bias [H_kv, n]: the bias folded into the keys as
// above, one AttendPrefill over the whole sequence (no gathering).
void AttendDenseBiased(const PrefillProblem& problem, const float* bias, TensorView out, float* lse, ThreadPool* pool);

// The short-input fallback (as FlexPrefill's, spec 1.1 step 0): below a method's break-even length,
// selecting costs more than it saves, so it runs dense causal attention (bias-free) and reports full
// coverage on a grid of `coverage_block`.
MethodResult DenseFallback(const PrefillProblem& problem, int coverage_block, TensorView out, float* lse,
                           ThreadPool* pool);

// Merges states of the same rows computed over disjoint key sets (any count), by LSE, in place
// into outs[0] / lses[0]. Each out is [n, H_q, d_v] contiguous f32, each lse [n, H_q].
void MergeInto(std::vector<float*> outs, std::vector<float*> lses, int64_t rows, int d_v, ThreadPool* pool);

}  // namespace qattn::sparse
