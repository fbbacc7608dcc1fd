// The hook through which attention methods plug into the runtime: every layer hands its new
// queries and the layer's KV cache to a policy. "dense" runs the core skeleton exactly; sparse
// prefill methods and KV selection/eviction methods implement the same interface.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"
#include "model/runtime/kv_cache.h"

namespace qattn::model {

// One layer's attention over the new tokens of one sequence. The new tokens' keys and values are
// already in the cache.
struct LayerAttention {
  int layer = 0;
  int64_t n_new = 0;             // tokens of this forward pass
  const float* q = nullptr;      // [n_new, H_q, d] f32 after RoPE, rows q_row_stride floats apart
  int64_t q_row_stride = 0;
  const int32_t* positions = nullptr;  // [n_new] the new tokens' positions
  KvCache* cache = nullptr;
  TensorView out;                // [n_new, H_q, d] f32
  AttentionVariant variant;      // causal, plus the model's sliding window
  bool prompt_end = false;       // the last forward pass of a prompt's prefill (eviction happens here)
};

// The contiguous inputs the prefill kernels take, gathered from the cache.
struct PrefillInputs {
  Tensor q;  // [n_new, H_q, d] in the cache's compute dtype
  Tensor k;  // [kept, H_kv, d]
  Tensor v;  // [kept, H_kv, d]
};
PrefillInputs GatherPrefillInputs(const LayerAttention& call);

// Exact attention over every token the layer's cache keeps: paged split-KV decode for one new
// token (reading the cache's pages in place, in any KvDType), the tiled prefill kernel otherwise.
void AttendDense(const LayerAttention& call, ThreadPool* pool);
// Decode of the one new query over chosen runs of each KV head: runs_per_head [H_kv + 1] offsets
// into runs. Times the kernel into the cache's attention timing.
void AttendDecodeRuns(const LayerAttention& call, const std::vector<int64_t>& run_offsets,
                      const std::vector<KvRun>& runs, ThreadPool* pool);

class AttentionPolicy {
 public:
  virtual ~AttentionPolicy() = default;
  virtual std::string name() const = 0;
  virtual void Attend(const LayerAttention& call, ThreadPool* pool) = 0;
  // Sparse prefill and KV eviction methods see the whole prompt at once: the runtime then
  // prefills in one chunk.
  virtual bool wants_whole_prompt() const { return false; }
  // Prompt rows to carry past `layer` (PromptDistill), ascending; empty: all rows. The runtime asks
  // after each layer of a prompt's prefill and then cuts the rows and the earlier layers' caches.
  virtual std::vector<int32_t> TakePromptSelection(int layer) { return {}; }
  // One line about tokens held outside the paged cache (e.g. ReKV's offload store); empty if none.
  virtual std::string OffloadSummary() const { return ""; }
};

// Parses a policy spec "NAME[:k=v,...]": "dense", a KV selection/eviction method (see
// kv_policies.h: used at decode, and after the prompt for eviction), or any sparse prefill method
// of src/methods/sparse_prefill (used for a prompt's prefill; decode stays dense).
// Anything else is an error (std::invalid_argument naming the known policies).
std::unique_ptr<AttentionPolicy> MakeAttentionPolicy(const std::string& spec);

}  // namespace qattn::model
namespace qattn::kv {
class KvPolicy;
}
namespace qattn::model {

// A decode-time KV policy object as the runtime's attention (dense prefill, the policy's eviction
// after the prompt and its choice of runs at each decode step). MakeAttentionPolicy uses it for
// KV policy specs; calibration code passes its own probes.
std::unique_ptr<AttentionPolicy> WrapKvPolicy(std::unique_ptr<kv::KvPolicy> policy);

// Wraps a policy so that each layer's prefill writes its post-RoPE inputs to
// DIR/layer{L}_{q,k,v}.npy ([n, H, d] float32) before attending: real-model inputs for
// `qattn bench sparse --input DIR`. The prompt is then prefilled in one chunk.
std::unique_ptr<AttentionPolicy> WithQkvDump(std::unique_ptr<AttentionPolicy> inner, const std::string& dir);

}  // namespace qattn::model
