// Speed and fidelity of a sparse prefill method against dense attention on the same inputs.
//
// Kept mass without materialising P: if a method keeps key set M_i for row i, then
//   mass_i = sum_{j in M_i} P_ij = exp(lse_M(i) - lse_dense(i)),
// where lse_M is the log-sum-exp over M_i, which the core kernel returns when run on the method's
// coverage map. So every metric costs one extra sparse pass, at any n.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::sparse {

// Dense causal attention of a problem, computed once and shared by every method measured on it.
struct DenseBaseline {
  Tensor out;               // [n, H_q, d_v] f32
  std::vector<float> lse;   // [n, H_q]
  double seconds = 0.0;     // median over repeats
};
DenseBaseline RunDense(const PrefillProblem& problem, ThreadPool* pool, int repeats);

struct SparseReport {
  std::string method;
  std::string granularity;
  int64_t n = 0;
  double select_seconds = 0.0;   // medians over repeats
  double attend_seconds = 0.0;
  double dense_seconds = 0.0;
  double speedup = 0.0;          // dense / (select + attend)
  double density = 0.0;          // fraction of causal pairs computed
  double mean_kept_mass = 0.0;   // mean over heads of each head's mean over all query rows
  double min_kept_mass = 0.0;    // the smallest head's mean over all query rows
  double output_rel_error = 0.0; // ||O - O_dense||_F / ||O_dense||_F
  double max_row_bound_ratio = 0.0;  // max over rows of error / (2 (1 - mass) max|v|): <= 1 for exact keep/drop methods
  std::vector<double> head_mass;     // [H_q] mean kept mass per head
  CoverageMap coverage;              // of the last run
};

// Runs the method `repeats` times (timing the medians) and measures it against `dense`.
// paired_dense: also time one dense run right before each of the method's runs; dense_seconds is
// then those runs' median and speedup the median of the per-pair ratios, so a machine whose speed
// drifts (other tenants, clocks) moves both sides of each ratio alike. Otherwise dense.seconds.
SparseReport Measure(SparsePrefillMethod& method, const PrefillProblem& problem, const DenseBaseline& dense,
                     ThreadPool* pool, int repeats, bool paired_dense = false);

// Per (row, head) kept mass exp(lse_M - lse_dense) for a coverage map: [n, H_q].
std::vector<float> KeptMass(const PrefillProblem& problem, const CoverageMap& coverage,
                            const std::vector<float>& dense_lse, ThreadPool* pool);

// Where each head's dense attention mass lies, for documenting inputs: mean over rows of the mass in
// the first key block (sinks), in the diagonal block and the 3 before it (local), and in every other
// block (far). block = 64.
struct InputStatistics {
  std::vector<double> sink, local, far;  // [H_q]
};
InputStatistics DescribeInput(const PrefillProblem& problem, const DenseBaseline& dense, ThreadPool* pool);

}  // namespace qattn::sparse
