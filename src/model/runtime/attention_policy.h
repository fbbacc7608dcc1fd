// The hook through which attention methods plug into the runtime: every layer hands its queries and
// the cache's keys and values to a policy. "dense" runs the core skeleton exactly; sparse prefill and
// KV-selection methods implement the same interface.
#pragma once
#include <memory>
#include <string>

#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"

namespace qattn::model {

// One layer's attention over the new tokens of one sequence.
struct LayerAttention {
  int layer = 0;
  TensorView q;    // [n_new, H_q, d]        same dtype as k and v
  TensorView k;    // [n_past + n_new, H_kv, d] the whole cache so far
  TensorView v;    // [n_past + n_new, H_kv, d]
  TensorView out;  // [n_new, H_q, d] f32
  AttentionVariant variant;  // causal, plus the model's sliding window
};

class AttentionPolicy {
 public:
  virtual ~AttentionPolicy() = default;
  virtual std::string name() const = 0;
  virtual void Attend(const LayerAttention& call, ThreadPool* pool) = 0;
};

// Parses a policy spec "NAME[:k=v,...]". Only "dense" exists so far; anything else is an error
// (std::invalid_argument naming the known policies).
std::unique_ptr<AttentionPolicy> MakeAttentionPolicy(const std::string& spec);

}  // namespace qattn::model
