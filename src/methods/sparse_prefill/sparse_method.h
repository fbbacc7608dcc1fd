// Sparse prefill methods: each is a small policy object that decides which (query, key) pairs of a
// causal prefill to compute and runs them on the core skeleton (block lists, LSE merges). One
// harness (sparse_harness.h) measures every method against dense attention on the same inputs.
//
// Conventions (docs/specs/sparse_prefill.md section 0): one sequence, n_q == n_kv == n, causal;
// query head h reads KV head h / (H_q / H_kv).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"

namespace qattn::sparse {

// The inputs every method sees: one causal prefill.
struct PrefillProblem {
  TensorView q;  // [n, H_q, d]    f32 | bf16 (K and V the same dtype)
  TensorView k;  // [n, H_kv, d]
  TensorView v;  // [n, H_kv, d_v]
  float scale = 0.0f;  // 0: 1 / sqrt(d)

  int64_t n() const { return q.dim(0); }
  int num_q_heads() const { return int(q.dim(1)); }
  int num_kv_heads() const { return int(k.dim(1)); }
  int head_dim() const { return int(q.dim(2)); }
  int value_dim() const { return int(v.dim(2)); }
  int group() const { return num_q_heads() / num_kv_heads(); }
  float EffectiveScale() const;
  HeadMap heads() const { return {num_q_heads(), num_kv_heads(), num_kv_heads()}; }
};

// Which (query block, key block) pairs a method computed at full resolution, per query head: the
// basis of density, kept mass and the heatmaps. Token-level methods mark every block they touched.
struct CoverageMap {
  int block = 64;      // rows and keys per block
  int num_blocks = 0;  // ceil(n / block)
  int heads = 0;       // H_q
  std::vector<uint8_t> computed;  // [heads, num_blocks, num_blocks], 1 = computed

  void Init(int64_t n, int heads, int block);
  uint8_t& at(int h, int r, int c) { return computed[(size_t(h) * num_blocks + r) * num_blocks + c]; }
  uint8_t at(int h, int r, int c) const { return computed[(size_t(h) * num_blocks + r) * num_blocks + c]; }
  // Marks every pair of a BlockList (its heads mapped to query heads).
  void MarkBlockList(const BlockList& list, const HeadMap& map);
  // The computed pairs as a per-query-head block list (partial where causal needs it).
  BlockList ToBlockList(int64_t n) const;
  // Fraction of causal (query, key) pairs inside computed blocks, over all heads.
  double Density(int64_t n) const;
};

struct MethodResult {
  double select_seconds = 0.0;  // deciding what to compute (estimates, sorting, list building)
  double attend_seconds = 0.0;  // the attention itself
  CoverageMap coverage;
  // Set by methods whose output is not "exact softmax over a key subset" (pooled levels, gates,
  // biases): kept mass is then reported over the coverage map, and the lemma-0.4 bound does not apply.
  bool approximates_outside_coverage = false;
};

// Options "k=v" parsed from "name:k=v,k=v"; every option a method reads is marked used, and
// CheckAllUsed() rejects the rest (a misspelt option is an error, not silently ignored).
class MethodOptions {
 public:
  // Throws std::invalid_argument for malformed text.
  static MethodOptions Parse(const std::string& text);
  double Float(const std::string& key, double fallback);
  int64_t Int(const std::string& key, int64_t fallback);
  std::string String(const std::string& key, const std::string& fallback);
  void CheckAllUsed(const std::string& method) const;
  const std::map<std::string, std::string>& values() const { return values_; }

 private:
  std::map<std::string, std::string> values_;
  mutable std::map<std::string, bool> used_;
};

class SparsePrefillMethod {
 public:
  virtual ~SparsePrefillMethod() = default;
  // The spec string with every option spelt out, e.g. "flexprefill:gamma=0.9,tau=0.1,block=128".
  virtual std::string name() const = 0;
  // How selections are shared across heads ("per query head", "per KV group", "all heads"), and why.
  virtual std::string granularity() const = 0;
  // Selects and attends. out: [n, H_q, d_v] f32; lse: [n, H_q] or null.
  virtual MethodResult Run(const PrefillProblem& problem, TensorView out, float* lse, ThreadPool* pool) = 0;
};

using MethodFactory = std::function<std::unique_ptr<SparsePrefillMethod>(MethodOptions&)>;
struct MethodInfo {
  std::string name;
  std::string summary;  // one line for --help and reports
  MethodFactory make;
  // Option strings of a budget sweep for reports, e.g. {"gamma=0.8", "gamma=0.9", "gamma=0.95"};
  // empty: the defaults only.
  std::vector<std::string> budgets = {};
};

// The registry: one list drives the CLI, the runtime policies, tests and benchmarks.
const std::vector<MethodInfo>& SparseMethods();
// "name[:k=v,...]" -> a method with its options applied. Throws std::invalid_argument naming an
// unknown method (and the known ones) or an unknown option.
std::unique_ptr<SparsePrefillMethod> MakeSparseMethod(const std::string& spec);

// The core kernel's arguments for a causal prefill of the problem (scale set, no window, no blocks):
// methods adjust the variant or attach a block list.
PrefillArgs CausalArgs(const PrefillProblem& problem, TensorView out, float* lse);
// Dense causal attention on the core skeleton: the baseline every method is measured against.
void DenseCausal(const PrefillProblem& problem, TensorView out, float* lse, ThreadPool* pool);
// Causal attention restricted to a block list (per query head, KV head or shared).
void AttendBlocks(const PrefillProblem& problem, const BlockList& blocks, TensorView out, float* lse, ThreadPool* pool);

}  // namespace qattn::sparse
