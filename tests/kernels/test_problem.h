// The test driver's vocabulary: a Case (shapes, dtype, variant, block lists, layout), the random
// Problem built from it (typed kernel inputs + the same values for the reference), and the check
// of a kernel run against the fp64 reference under the error budget of reference_attention.h.
#pragma once
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "kernels/attention.h"
#include "reference/reference_attention.h"

namespace qattn::test {

// How a case builds its caller-supplied block lists (prefill only).
struct BlockSpec {
  enum class Heads { kOne, kPerK, kPerQ };          // list heads = 1, H_k or H_q
  enum class Flags { kRandom, kAllFull, kAllPartial, kTruthful };  // kTruthful: partial iff masked
  bool enabled = false;
  Heads heads = Heads::kOne;
  Flags flags = Flags::kRandom;
  int q_block = 64;
  int kv_block = 64;
  double keep = 0.6;         // probability that a kv block is listed
  int skip_every_q_block = 0;  // > 0: every n-th query block (from the first) lists nothing
};

struct Case {
  std::string name;  // unique gtest name: [A-Za-z0-9_]
  bool decode = false;
  DType dtype = DType::kF32;
  int h_q = 1, h_k = 1, h_v = 1;
  int d_qk = 64, d_v = 64;
  std::vector<int64_t> len_q;   // [batch] rows per sequence (decode: ignored, one each)
  std::vector<int64_t> len_kv;  // [batch] keys per sequence
  bool pass_cu_seqlens = true;  // false: leave cu_seqlens empty (one sequence; batch must be 1)
  // The variant (AttentionVariant's fields; alibi and sink logits are generated when set).
  float scale = 0.0f;
  bool causal = false;
  int window_left = -1, window_right = -1, sink_tokens = 0;
  float softcap = 0.0f;
  bool alibi = false;
  bool sink_logits = false;
  BlockSpec blocks;
  int num_splits = 0;         // decode only; 0: auto
  bool strided = false;       // q, k, v and out as padded, non-contiguous views
  int threads = 2;            // 0: pass a null pool
  bool lse = true;            // false: pass lse = null
  float input_std = 1.0f;     // standard deviation of q and k (v is always 1)
  float key_ramp = 0.0f;      // key t of T is scaled by 1 + key_ramp * t / T: the row max keeps rising
  uint64_t seed = 1;

  std::string Describe() const;  // every field, for failure messages
};

// gtest prints a parameter by this (instead of its bytes).
inline void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// A tensor as the kernel sees it: raw typed storage (maybe padded) and a view into it.
// Move-only: the view points into the storage, so a copy would alias the original's bytes.
struct TypedBuffer {
  std::vector<uint8_t> storage;  // raw bytes, padding included
  TensorView view;               // [tokens, heads, dim], stride[2] == 1

  TypedBuffer() = default;
  TypedBuffer(TypedBuffer&&) = default;
  TypedBuffer& operator=(TypedBuffer&&) = default;
  TypedBuffer(const TypedBuffer&) = delete;
  TypedBuffer& operator=(const TypedBuffer&) = delete;
};

// A generated problem: kernel inputs and the reference's view of the very same values.
struct Problem {
  Case c;
  ref::RefProblem ref;          // q, k, v already rounded to c.dtype
  TypedBuffer q, k, v;          // [total_q | batch, H_q, d_qk], [total_kv, H_k, d_qk], [total_kv, H_v, d_v]
  std::vector<float> alibi;     // [H_q] or empty
  std::vector<float> sinks;     // [H_q] or empty
  std::vector<BlockList> lists; // [batch] or empty
  AttentionVariant Variant() const;
};

Problem MakeProblem(const Case& c);

// [tokens, heads, dim] in dtype t, padded (non-contiguous) when strided; everything outside the
// view is poisoned with NaN so that reading past the view shows up in the output.
TypedBuffer AllocTyped(int64_t tokens, int heads, int dim, DType t, bool strided);

// What a kernel returned, read back through its (maybe padded) output view.
struct KernelResult {
  std::vector<double> out;  // [rows, H_q, d_v]
  std::vector<double> lse;  // [rows, H_q]; empty when not requested
  std::string layout_error; // non-empty if the kernel wrote outside its view
};

KernelResult RunKernel(const Problem& p);  // AttendPrefill or AttendDecode, by c.decode

// The reference result of a problem (decode problems go through ref::DecodeProblem).
struct Expected {
  ref::RefResult ref;    // fp64
  ref::Budget out_budget;
  ref::Budget lse_budget;
  std::vector<int64_t> visible;  // [rows, H_q] visible keys per row (0: out must be exactly 0)
};
Expected ComputeExpected(const Problem& p);

// Checks one kernel result: finiteness, masked rows exactly 0, lse -inf exactly where the reference
// has it, output and lse errors within budget. Adds gtest failures naming `where`.
void CheckResult(const Problem& p, const Expected& e, const KernelResult& r, const std::string& where);

// Every ISA cap this CPU can run (scalar first); caps above the hardware are not listed.
std::vector<Isa> SupportedIsas();

// Restores the widest ISA cap when a test ends, however it ends.
struct IsaCapGuard {
  ~IsaCapGuard() { SetIsaCap(Isa::kAvx512Bf16); }
};

// Runs the case under every supported ISA against one reference computation.
void RunCaseAllIsas(const Case& c);

// A case list with unique names: Add appends the dtype to the tag and a counter if needed.
class CaseList {
 public:
  void Add(std::string tag, Case c);
  const std::vector<Case>& cases() const { return cases_; }

 private:
  std::vector<Case> cases_;
};

}  // namespace qattn::test
