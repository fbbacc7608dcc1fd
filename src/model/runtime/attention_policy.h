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
  // Sparse prefill methods see the whole prompt at once: the runtime then prefills in one chunk.
  virtual bool wants_whole_prompt() const { return false; }
};

// Parses a policy spec "NAME[:k=v,...]": "dense", or any sparse prefill method of
// src/methods/sparse_prefill (used for a prompt's prefill; decode and later chunks stay dense).
// Anything else is an error (std::invalid_argument naming the known policies).
std::unique_ptr<AttentionPolicy> MakeAttentionPolicy(const std::string& spec);

// Wraps a policy so that each layer's prefill writes its post-RoPE inputs to
// DIR/layer{L}_{q,k,v}.npy ([n, H, d] float32) before attending: real-model inputs for
// `qattn bench sparse --input DIR`. The prompt is then prefilled in one chunk.
std::unique_ptr<AttentionPolicy> WithQkvDump(std::unique_ptr<AttentionPolicy> inner, const std::string& dir);

}  // namespace qattn::model
