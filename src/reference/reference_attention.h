// The fp64 reference for every attention op, and the "naive same-precision" yardstick.
//
// ReferenceAttention is deliberately plain: per sequence it gathers every K and V head out of the
// packed layout; per query head it takes the K head and V head the head map names, builds the dense
// score matrix in double, applies the logit transforms, builds a dense boolean mask from the rules in
// kernels/attention.h (written out here again, not shared with the kernels), and runs a textbook
// softmax. Slow and obvious on purpose. (Checked once against an independent numpy version of the
// header's formulas on 40 random problems with every feature: max difference 2e-15.)
//
// NaiveAttention is the same algorithm run the way PyTorch runs it on tensors of one dtype: every
// intermediate tensor (S, the transformed S, P, O) is materialised in that dtype, while each
// reduction (dot products, softmax) accumulates in f32. For f32 it is plain f32 throughout.
//
// Error budget (DESIGN.md, FlashAttention's rule): with ref = ReferenceAttention on the inputs already
// rounded to the dtype, a fast kernel passes when
//   max|kernel - ref| <= 2 * max|naive - ref| + eps,   eps = kBudgetEps * max(1, max|ref|)
// for the output and likewise for the finite log-sum-exp values. See ErrorBudget below.
#pragma once
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "kernels/attention.h"  // HeadMap and BlockList only (plain structs); no kernel code is used

namespace qattn::ref {

// The variant with owned values (AttentionVariant borrows its pointers). Same meaning field by field.
struct RefVariant {
  double scale = 0.0;  // 0: 1/sqrt(d_qk)
  bool causal = false;
  int window_left = -1;   // -1: unbounded
  int window_right = -1;  // -1: unbounded
  int sink_tokens = 0;    // the first keys, exempt from the window (not from causality)
  double softcap = 0.0;   // 0: off
  std::vector<double> alibi_slopes;  // [H_q] or empty
  std::vector<double> sink_logits;   // [H_q] or empty
};

// A batch of sequences packed along the token axis, as PrefillArgs describes it.
struct RefProblem {
  HeadMap heads;
  int d_qk = 0;
  int d_v = 0;
  std::vector<int64_t> cu_seqlens_q;   // [batch + 1]; empty: one sequence of all rows
  std::vector<int64_t> cu_seqlens_kv;  // [batch + 1]; empty: one sequence of all keys
  std::vector<double> q;  // [total_q, H_q, d_qk]
  std::vector<double> k;  // [total_kv, H_k, d_qk]
  std::vector<double> v;  // [total_kv, H_v, d_v]
  RefVariant variant;
  std::vector<BlockList> blocks;  // [batch] lists, one per sequence; empty: dense

  int64_t total_q() const;
  int64_t total_kv() const;
  int batch() const;
  // Row and key offsets of sequence b (handles the empty cu_seqlens case).
  int64_t q_begin(int b) const;
  int64_t q_end(int b) const;
  int64_t kv_begin(int b) const;
  int64_t kv_end(int b) const;
  // Throws std::invalid_argument if the vectors do not match the stated shapes.
  void CheckShapes() const;
};

struct RefResult {
  std::vector<double> out;  // [total_q, H_q, d_v]
  std::vector<double> lse;  // [total_q, H_q]; -inf where a row sees no key and has no sink logit
};

// fp64 reference of AttendPrefill (and of AttendDecode via DecodeProblem).
RefResult ReferenceAttention(const RefProblem& p);

// The same attention computed as PyTorch would on `dtype` tensors (see the top of this file).
// Inputs are rounded to `dtype` first (a no-op when they already are).
RefResult NaiveAttention(const RefProblem& p, DType dtype);

// Decode as a prefill: one query row per sequence, at the last position (so causal is implied).
// q: [batch, H_q, d_qk]; cu_seqlens_kv: [batch + 1] (empty: one sequence of all keys).
RefProblem DecodeProblem(RefProblem p);

// Dense visibility of one sequence for query head h: [n_q * n_kv], row-major, 1 = visible.
// `list` is that sequence's block list or null (dense).
std::vector<uint8_t> VisibleMask(const RefVariant& variant, const HeadMap& heads, int h, int64_t n_q,
                                 int64_t n_kv, const BlockList* list);

// The block list index that query head h reads (heads = 1, H_q or H_k; see BlockList).
int ListHead(const BlockList& list, const HeadMap& heads, int h);

// fp64 merge of attention states: out = sum_s exp(lse_s - lse) * out_s, lse = log(sum_s exp(lse_s)).
// outs: [num_states, rows, d_v]; lses: [num_states, rows]; out: [rows, d_v]; lse: [rows].
void ReferenceMerge(const std::vector<double>& outs, const std::vector<double>& lses, int num_states,
                    int64_t rows, int d_v, std::vector<double>* out, std::vector<double>* lse);

// The error budget of one output tensor against the fp64 reference.
constexpr double kBudgetEps = 1e-5;  // relative to max(1, max|ref|): room for f32 rounding only
struct Budget {
  double naive_err = 0;  // max|naive - ref| over finite reference entries
  double eps = 0;        // kBudgetEps * max(1, max|ref|)
  double limit() const { return 2 * naive_err + eps; }
};
// Entries where ref is -inf are skipped (their exact match is checked separately by callers).
Budget ErrorBudget(const std::vector<double>& ref, const std::vector<double>& naive);

}  // namespace qattn::ref
