// Statistics that block selectors share (spec section 0.3 and 10.1.4): pooling with true counts,
// the last-rows probability slab, diagonal sums, the Jensen-Shannon divergence with xlogy,
// cumulative cover counts and top-k without full sorts, and block lists from boolean block grids.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::sparse {

// Mean of rows x[:, head, :] over consecutive chunks of `block` rows; a final partial chunk is
// averaged over its true length. Returns [ceil(n / block), d] f32.
std::vector<float> MeanPoolRows(const TensorView& x, int head, int block);
// Sums of consecutive chunks of `block` entries of x[0, n): [ceil(n / block)].
std::vector<float> SumPool(const float* x, int64_t n, int block);

// Softmax probabilities of the last `rows` queries of one query head over all n keys, causal only
// inside the last rows x rows corner (spec 1.1 step 2, 9.2 step 1), in f32.
struct ProbabilitySlab {
  int rows = 0;
  int64_t n = 0;
  int64_t stride = 0;    // a multiple of 64, >= n
  std::vector<float> p;  // [rows, stride]; entries at and past n are 0
  const float* row(int i) const { return p.data() + int64_t(i) * stride; }
};
// Computes the slab with the core's tile steps (bf16 dot products where the CPU has them). The
// scale multiplies the f32 dot products (the official code rounds q * scale to bf16 first).
void LastRowsProbabilities(const PrefillProblem& problem, int q_head, int rows, ProbabilitySlab* slab);
// Column sums of the slab: [n].
std::vector<float> ColumnSums(const ProbabilitySlab& slab);
// Diagonal sums of the slab (spec 0.3): entry t holds the mass at query-key distance n-1-t; [n].
std::vector<float> DiagonalSums(const ProbabilitySlab& slab);

// Jensen-Shannon divergence (natural log) of two distributions with 0 * log 0 = 0 (xlogy), in fp64.
double JensenShannon(const float* p, const float* q, int64_t n);
// In-place softmax of x[0, n) in fp64 accumulation; -inf entries get 0.
void SoftmaxInPlace(float* x, int64_t n);

// How many of the largest values a running sum keeps at or below `limit` (sorted descending,
// count of prefix sums <= limit); expected O(n) with nth_element instead of a full sort.
int64_t CoverCount(const float* values, int64_t n, double limit);
// Indices of the k largest values (ties go to the lower index), ascending; k is clamped to [0, n].
std::vector<int32_t> TopK(const float* values, int64_t n, int64_t k);

// A boolean block grid per head: [heads, nb, nb], 1 = compute the (query block, key block) pair.
struct BlockGrid {
  int heads = 0, nb = 0, block = 0;
  std::vector<uint8_t> cells;
  void Init(int64_t n, int num_heads, int block_size);
  uint8_t& at(int h, int r, int c) { return cells[(size_t(h) * nb + r) * nb + c]; }
  uint8_t at(int h, int r, int c) const { return cells[(size_t(h) * nb + r) * nb + c]; }
};
// The grid as a block list (heads = grid.heads), keeping only c <= r; the diagonal is partial.
BlockList GridToBlockList(const BlockGrid& grid);
// The grid as a coverage map over query heads; a grid with H_kv heads is broadcast to its groups.
CoverageMap GridToCoverage(const BlockGrid& grid, int num_q_heads);
// ORs the grids of the G query heads of each KV group: [H_q, ...] -> [H_kv, ...].
BlockGrid UnionPerGroup(const BlockGrid& grid, int group);

// A number as an option value: "0.9", not "0.900000".
std::string OptionNumber(double x);

// Seconds since `start` (steady clock), for select/attend timings.
double SecondsSince(int64_t start_ns);
int64_t NowNs();

}  // namespace qattn::sparse
