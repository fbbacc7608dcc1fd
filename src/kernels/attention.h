// The attention skeleton's public API: dense and block-sparse prefill over varlen batches,
// split-KV decode, and the merge of partial results by log-sum-exp.
//
// Semantics shared by every entry point (the fp64 reference in src/reference implements the same):
//   query row i of a sequence with n_q queries and n_kv keys sits at position pos(i) = i + (n_kv - n_q)
//   (bottom-right alignment, as FlashAttention), key j at position j.
//   logit  s(h,i,j) = scale * <q[i,h,:], k[j,k_head(h),:]>
//          if softcap > 0:        s = softcap * tanh(s / softcap)
//          if alibi_slopes:       s -= alibi_slopes[h] * |pos(i) - j|
//   visible(i,j) = (!causal || j <= pos(i))
//                  && (j < sink_tokens || ((window_left < 0 || j >= pos(i) - window_left) &&
//                                          (window_right < 0 || j <= pos(i) + window_right)))
//                  && the block (i / q_block, j / kv_block) is in the block list (if one is given)
//   out[i,h,:] = sum_j softmax_j(s)[j] * v[j,v_head(h),:] over visible j
//   lse[i,h]   = log(sum_j exp(s) over visible j  (+ exp(sink_logits[h]) if given))
//   A row with no visible key has out = 0 and lse = -inf (or sink_logits[h]): never NaN.
//   A sink logit takes part in the softmax denominator with a zero value vector.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/thread_pool.h"

namespace qattn {

// Raised for inputs that break an API contract (shapes, head counts, dtypes); the message names it.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Which K head and which V head each query head reads (contiguous grouping, as HF repeat_kv).
// MHA: all equal. MQA: H_k = H_v = 1. GQA: H_k = H_v < H_q. SQA: H_q < H_k = H_v is not allowed here
// (SQA reduces query heads in the projection; the kernel then sees H_q a multiple of H_kv).
// DiffQKV: H_k != H_v, both dividing H_q.
struct HeadMap {
  int num_q_heads = 1;
  int num_k_heads = 1;
  int num_v_heads = 1;

  int k_head(int q_head) const { return q_head / (num_q_heads / num_k_heads); }
  int v_head(int q_head) const { return q_head / (num_q_heads / num_v_heads); }
  // Query heads in a row that read the same K head and the same V head.
  int shared_group() const;
  // Throws InvalidArgument unless every count is >= 1 and H_q is a multiple of H_k and of H_v.
  void Validate() const;
};

// How logits are transformed and masked (see the semantics above). Pointers are borrowed.
struct AttentionVariant {
  float scale = 0.0f;  // 0: 1/sqrt(d_qk)
  bool causal = false;
  int window_left = -1;   // -1: unbounded
  int window_right = -1;  // -1: unbounded
  int sink_tokens = 0;    // the first keys, exempt from the window
  float softcap = 0.0f;   // 0: off
  const float* alibi_slopes = nullptr;  // [H_q] or null
  const float* sink_logits = nullptr;   // [H_q] or null

  float EffectiveScale(int d_qk) const;
};

// Which KV blocks each query block reads: a CSR list per (head, query block), ascending.
// `heads` is 1 (one list shared by all query heads), H_k (one per KV group) or H_q (one per query
// head). A block marked partial is masked element by element with the variant; a full block skips
// that work when the kernel can prove the variant leaves it whole (the flag is never trusted blindly).
struct BlockList {
  int q_block = 64;   // queries per block
  int kv_block = 64;  // keys per block; a multiple of 16
  int num_q_blocks = 0;
  int num_kv_blocks = 0;
  int heads = 1;
  std::vector<int32_t> offsets;    // [heads * num_q_blocks + 1]
  std::vector<int32_t> kv_blocks;  // [offsets.back()]
  std::vector<uint8_t> partial;    // [offsets.back()]

  int list_index(int q_head, const HeadMap& map, int q_block_index) const;
  // Throws InvalidArgument if the list does not fit a problem of this size and head map.
  void Validate(int64_t n_q, int64_t n_kv, const HeadMap& map) const;
};

// The dense list for a variant: every block with at least one visible element, marked partial
// where the variant masks some of its elements.
BlockList DenseBlockList(int64_t n_q, int64_t n_kv, const AttentionVariant& variant, int q_block = 64,
                         int kv_block = 64);

// Prefill (and any n_q) over a batch of sequences packed along the token axis.
struct PrefillArgs {
  TensorView q;    // [total_q, H_q, d_qk]   f32 | bf16 | f16
  TensorView k;    // [total_kv, H_k, d_qk]  same dtype as q
  TensorView v;    // [total_kv, H_v, d_v]   same dtype as q
  TensorView out;  // [total_q, H_q, d_v]    f32
  float* lse = nullptr;                // [total_q, H_q] or null
  std::vector<int64_t> cu_seqlens_q;   // [batch + 1] row offsets; empty: one sequence
  std::vector<int64_t> cu_seqlens_kv;  // [batch + 1] key offsets; empty: one sequence
  AttentionVariant variant;
  const BlockList* blocks = nullptr;   // [batch] lists, one per sequence; null: dense
};
void AttendPrefill(const PrefillArgs& args, ThreadPool* pool = nullptr);

// Decode: one new query token per sequence against that sequence's keys. The query sits at the
// last position, so causal masking is implied; windows, sinks and the logit hooks apply.
// All query heads that share a KV head are computed together, so each K/V byte is read once.
struct DecodeArgs {
  TensorView q;    // [batch, H_q, d_qk]
  TensorView k;    // [total_kv, H_k, d_qk]
  TensorView v;    // [total_kv, H_v, d_v]
  TensorView out;  // [batch, H_q, d_v] f32
  float* lse = nullptr;                // [batch, H_q] or null
  std::vector<int64_t> cu_seqlens_kv;  // [batch + 1]; empty: one sequence of all keys
  AttentionVariant variant;
  int num_splits = 0;  // KV chunks per sequence merged by LSE; 0: chosen from threads and lengths
};
void AttendDecode(const DecodeArgs& args, ThreadPool* pool = nullptr);

// Merges attention states computed over disjoint key sets of the same rows:
//   out = sum_s exp(lse_s - lse) * out_s,  lse = log(sum_s exp(lse_s)).
// States with lse = -inf contribute nothing; if all are -inf, out = 0 and lse = -inf.
void MergeStates(const float* outs,  // [num_states, rows, d_v]
                 const float* lses,  // [num_states, rows]
                 int num_states, int64_t rows, int d_v,
                 float* out,   // [rows, d_v]
                 float* lse);  // [rows] or null

// Floating-point operations of a dense attention call as counted by benchmarks:
// 2 * n_q * n_kv * H_q * (d_qk + d_v), halved for causal when n_q == n_kv.
double AttentionFlops(int64_t n_q, int64_t n_kv, int h_q, int d_qk, int d_v, bool causal);

}  // namespace qattn
