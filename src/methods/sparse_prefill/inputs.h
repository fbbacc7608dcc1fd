// Inputs for sparse prefill measurements: random (worst case: attention is nearly uniform), structured
// synthetic long contexts with planted patterns, and Q/K/V captured from a real model
// (`qattn run --dump-qkv DIR` writes DIR/layerL_{q,k,v}.npy).
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::sparse {

struct OwnedProblem {
  Tensor q, k, v;          // [n, H_q, d], [n, H_kv, d], [n, H_kv, d]
  PrefillProblem problem;  // views of the above
  std::string description;
};

// Gaussian Q, K, V (unit variance).
OwnedProblem RandomProblem(int64_t n, int hq, int hkv, int d, DType dtype, uint64_t seed);

// Structured synthetic context. Per head, logits are noise (std about 1 after scaling) plus planted
// components of 10-14 logits (real long-context heads put most mass on a few keys: at n = 32768 a
// component must beat the sum over 32768 noise keys, e^10 > 32768 / 2):
//   sink      key 0 matches every query (logit 10-14)
//   local     24 rotary planes (1/4 .. 1/128 rad per token) make q_i.k_j peak at i = j (logit 4-12)
//             and fade over ~100 tokens, the window RoPE gives real models
//   slash     the same planes with the query phase shifted by D = n / 13: a diagonal at i - j = D
//   vertical  16 random key positions matched by every query of the head (logit 12-16)
//   needle    key n / 7 matched by the last 5% of queries (logit 14)
// Head h cycles through: local-heavy, sink + vertical, slash, mixed (all of them). Where the mass
// lies per head: `qattn bench sparse --describe-input` (README lists it for n = 32768).
OwnedProblem StructuredProblem(int64_t n, int hq, int hkv, int d, DType dtype, uint64_t seed);

// Loads DIR/layer{layer}_{q,k,v}.npy ([n, H, d] float32) and converts to dtype.
OwnedProblem LoadDumpedProblem(const std::string& dir, int layer, DType dtype);

}  // namespace qattn::sparse
