// Decode-time KV policies: what each layer keeps after a prompt (eviction) and which cached tokens
// one decode step reads (selection). Every method is a scorer from kv_scores.h plus the shared
// keep step (KeepTopK -> PagedKvCache::Keep) or a choice of runs; the attention itself is always the
// core's paged decode kernel over the chosen runs.
//
// Positions: keys are cached after RoPE at their original positions (cache_post_rope), and every
// kept token keeps its position, so attention after eviction or selection is exactly attention over
// that subset. (StreamingLLM's and TokenSelect's re-indexing of positions inside the kept set, which
// serves length extrapolation beyond the trained context, is not implemented.)
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/kv_format.h"
#include "methods/kv_cache/kv_scores.h"
#include "methods/kv_cache/paged_cache.h"

namespace qattn::kv {

// One layer of one sequence, as a policy sees it.
struct LayerRef {
  PagedKvCache* cache = nullptr;
  int seq = 0;
  int layer = 0;
  Heads heads;
};

// Where a policy's tokens live beyond the paged cache (ReKV's offload store), for --stats.
struct KvPolicyStats {
  int64_t blocks_in_memory = 0;
  int64_t blocks_on_disk = 0;
  double bytes_on_disk = 0;
  int64_t disk_loads = 0;      // blocks read back from disk
  double load_seconds = 0;
  int64_t spill_failures = 0;  // writes that failed (blocks kept in memory)
};

class KvPolicy {
 public:
  virtual ~KvPolicy() = default;
  // The spec with every option spelt out, e.g. "snapkv:budget=256,window=32,kernel=7,pool=max".
  virtual std::string name() const = 0;
  // After a prompt's prefill of this layer, with the prompt's queries q [n, H_q, d] f32 (post-RoPE,
  // rows q_stride floats apart); the cache holds the prompt's n tokens. Eviction happens here.
  virtual void AfterPrompt(const LayerRef& at, const float* q, int64_t q_stride, int64_t n, ThreadPool* pool) {}
  // One decode step of this layer: the new token is in the cache; q [H_q, d] is its query. Appends
  // the runs to read per KV head (offsets [H_kv + 1] into runs) and may evict. Default: every
  // token the cache keeps (policies that only evict after the prompt).
  virtual void SelectForDecode(const LayerRef& at, const float* q, std::vector<int64_t>* offsets,
                               std::vector<KvRun>* runs, ThreadPool* pool);
  // Forgets per-sequence state (a new prompt starts).
  virtual void Reset() {}
  virtual KvPolicyStats stats() const { return {}; }
  // Prompt rows to carry past `layer` (PromptDistill), ascending; empty: all. Asked once per layer
  // after a prompt's prefill of that layer.
  virtual std::vector<int32_t> TakePromptSelection(int layer) { return {}; }
};

// "NAME[:k=v,...]" for NAME in KvPolicyNames(); throws std::invalid_argument naming the known ones.
std::unique_ptr<KvPolicy> MakeKvPolicy(const std::string& spec);
bool IsKvPolicyName(const std::string& name);
std::vector<std::string> KvPolicyNames();

// Every token of every KV head (dense decode): offsets [H_kv + 1] into runs.
void AllRuns(const PagedKvCache& cache, int seq, int layer, std::vector<int64_t>* offsets, std::vector<KvRun>* runs);
void AllRuns(const LayerRef& at, std::vector<int64_t>* offsets, std::vector<KvRun>* runs);
// The layer's keys as f32 [n, H_kv, d] (all heads must hold n tokens).
std::vector<float> ReadKeys(const LayerRef& at);
// Raw dot products of each query head with every token its KV head keeps, on the stored format:
// q [H_q, d] -> [H_q, n] (n = tokens per head, equal for all heads).
std::vector<float> QueryLogits(const LayerRef& at, const float* q, int64_t n);

}  // namespace qattn::kv
