// The selection step of the block selectors (FlexPrefill, MInference vertical-slash, BSA top-k,
// SALE) as plain functions, so tests can check decisions and masks against straightforward ports
// of the specs (docs/specs/sparse_prefill.md). The methods in the registry call these and
// then run the core block-sparse kernel.
#pragma once
#include <cstdint>
#include <vector>

#include "methods/sparse_prefill/selection_stats.h"
#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::sparse {

// ---- FlexPrefill (spec section 1) ----
struct FlexPrefillParams {
  int block = 128;
  double gamma = 0.9;         // coverage
  double tau = 0.1;           // JSD-distance threshold: D < tau makes a head query-aware
  int64_t min_budget = 1024;  // tokens
  int64_t max_budget = 0;     // tokens; 0: unbounded
  bool union_groups = false;  // OR the G heads of a KV group (a superset; shares KV loads)
  bool slash_cover = false;   // [ours] add the neighbouring bands a pooled slash band's diagonals cross
  bool token_cover = false;   // [ours] also keep the block column of every vertical cover token
};
struct FlexPrefillHead {
  double distance = 0.0;  // sqrt(JSD(pooled estimate, true block distribution))
  bool query_aware = false;
  int64_t vertical_tokens = 0;  // T_v, T_s: token cover counts (step 4, including the +1)
  int64_t slash_tokens = 0;
  int nv = 0, ns = 0;  // vertical and slash block budgets after clamping
};
struct FlexPrefillSelection {
  bool dense_fallback = false;         // short input (step 0): every causal block
  BlockGrid grid;                      // heads = H_q, or H_kv with union_groups
  std::vector<FlexPrefillHead> heads;  // [H_q]
};
FlexPrefillSelection SelectFlexPrefill(const PrefillProblem& problem, const FlexPrefillParams& params,
                                       ThreadPool* pool);

// ---- MInference vertical-slash (spec 9.2), at block granularity ----
struct VerticalSlashParams {
  int block = 64;
  int last_q = 64;
  int keep_global = 30;
  int keep_local = 100;
  int64_t vertical_size = 1000;
  int64_t slash_size = 6096;
};
struct VerticalSlashSelection {
  BlockGrid grid;                               // heads = H_q
  std::vector<std::vector<int32_t>> verticals;  // [H_q][V] key positions, ascending
  std::vector<std::vector<int32_t>> slashes;    // [H_q][S] distances i - j, ascending
};
VerticalSlashSelection SelectVerticalSlash(const PrefillProblem& problem, const VerticalSlashParams& params,
                                           ThreadPool* pool);
// Marks, for every query block, the key blocks that contain a token of the VS mask
// {j <= i : j in verticals or i - j in slashes}.
void MarkVerticalSlash(int64_t n, const std::vector<int32_t>& verticals, const std::vector<int32_t>& slashes,
                       BlockGrid* grid, int head);

// ---- Block-sparse top-k by pooled scores (spec 9.3) ----
struct BsaTopkParams {
  int block = 64;
  int64_t topk = 100;  // key blocks per query block
  double top_p = 0.0;  // > 0: per-row cumulative pooled mass instead of a count
  bool sink = false;   // always keep key block 0
};
BlockGrid SelectBsaTopk(const PrefillProblem& problem, const BsaTopkParams& params, ThreadPool* pool);
// The pooled block distribution of one query head: softmax_c(s q̄_r . k̄_c), c <= r; [nb, nb].
std::vector<float> PooledBlockScores(const PrefillProblem& problem, int q_head, int block);

// ---- SALE (spec section 2) ----
struct SaleParams {
  int block_q = 64;  // asserted by the official kernel
  int block_k = 32;
  int local_window = 128;        // tokens, including the diagonal blocks
  int segment = 128;             // tokens per scan segment
  double tau = 0.004;            // relative-attention-score threshold (all heads); < 1e-5: dense
  std::vector<double> head_tau;  // [H_q] calibrated thresholds; overrides tau when set
  int quant_mode = 3;            // 3: per 16-row tile of Q' and per key block of K'; 2: per token
  bool exact_estimate = false;   // estimate with exact f32 logits (the recall oracle, spec 2.8)
  int64_t dense_below = 1024;    // n <= this: dense (the official SDPA fallback; the method's default is 4096)
};
struct SaleSelection {
  bool dense_fallback = false;
  BlockList list;                 // q_block = block_q, kv_block = block_k, heads = H_q
  std::vector<int64_t> scanned;   // [H_q] key blocks estimated
  std::vector<int64_t> selected;  // [H_q] of those, selected
};
SaleSelection SelectSale(const PrefillProblem& problem, const SaleParams& params, ThreadPool* pool);
// Key blocks [first, last] of query block r that the exact local + sink pass always computes,
// and whether block 0 (the sink) is computed besides them; scanned blocks are [1, first).
struct SaleLocalRange {
  int first = 0, last = 0;
  bool sink = false;
};
SaleLocalRange SaleLocalBlocks(int64_t n, int r, const SaleParams& params, bool dense_head);

}  // namespace qattn::sparse
