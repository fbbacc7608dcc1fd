// The KV policy registry and the helpers every policy file shares; the policies themselves are in
// eviction_policies.cc, selection_policies.cc, rekv_policy.cc and prompt_distill_policy.cc.
#include "methods/kv_cache/kv_policy.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "methods/kv_cache/kv_policy_internal.h"
#include "methods/sparse_prefill/selector_math.h"

namespace qattn::kv {

using sparse::MethodOptions;

void AllRuns(const PagedKvCache& cache, int seq, int layer, std::vector<int64_t>* offsets, std::vector<KvRun>* runs) {
  offsets->assign(1, int64_t(runs->size()));
  for (int h = 0; h < cache.config().n_head_kv; ++h) {
    cache.AppendRuns(seq, layer, h, runs);
    offsets->push_back(int64_t(runs->size()));
  }
}

void AllRuns(const LayerRef& at, std::vector<int64_t>* offsets, std::vector<KvRun>* runs) {
  AllRuns(*at.cache, at.seq, at.layer, offsets, runs);
}

void KvPolicy::SelectForDecode(const LayerRef& at, const float*, std::vector<int64_t>* offsets,
                               std::vector<KvRun>* runs, ThreadPool*) {
  AllRuns(at, offsets, runs);
}

std::vector<float> ReadKeys(const LayerRef& at) {
  const int64_t n = at.cache->length(at.seq, at.layer, 0);
  const int d = at.heads.dim;
  for (int h = 1; h < at.heads.kv; ++h) {
    if (at.cache->length(at.seq, at.layer, h) != n) throw std::logic_error("KV heads of a layer differ in length");
  }
  std::vector<float> keys(size_t(n) * at.heads.kv * d);  // [n, H_kv, d]
  at.cache->ReadLayer(at.seq, at.layer, 0, n, keys.data(), nullptr);
  return keys;
}

void QueryLogitsInto(const LayerRef& at, const float* q, int64_t n, std::vector<float>* out, ThreadPool* pool) {
  out->resize(size_t(at.heads.q) * n);  // [H_q, n]
  const int g = at.heads.Group();
  auto head = [&](int64_t kh, int) {
    std::vector<KvRun> runs;
    at.cache->AppendRuns(at.seq, at.layer, int(kh), &runs);
    KvDotRuns(at.cache->config().dtype, q + kh * g * at.heads.dim, g, at.heads.dim, runs.data(), runs.size(),
              out->data() + size_t(kh) * g * n, n);
  };
  if (pool) pool->ParallelFor(at.heads.kv, head);  // each KV head's keys are one stream
  else for (int kh = 0; kh < at.heads.kv; ++kh) head(kh, 0);
}

std::vector<float> QueryLogits(const LayerRef& at, const float* q, int64_t n) {
  std::vector<float> logits;
  QueryLogitsInto(at, q, n, &logits, nullptr);
  return logits;
}

void SoftmaxRowsInPlace(float* x, int rows, int64_t m, int64_t stride, float scale) {
  const std::vector<int64_t> visible(rows, m);  // [rows] every row's first m columns
  std::vector<float> lse(rows);                 // [rows] (not needed here)
  sparse::SoftmaxRows(x, rows, stride, visible.data(), scale, lse.data());
}

namespace {

struct PolicyInfo {
  const char* name;
  std::unique_ptr<KvPolicy> (*make)(MethodOptions&);
};

const PolicyInfo kPolicies[] = {
    {"streamingllm", MakeStreamingLlmPolicy}, {"snapkv", MakeSnapKvPolicy},
    {"compresskv", MakeCompressKvPolicy},     {"h2o", MakeH2oPolicy},
    {"quest", MakeQuestPolicy},               {"tokenselect", MakeTokenSelectPolicy},
    {"rekv", MakeRekvPolicy},                 {"promptdistill", MakePromptDistillPolicy},
};

}  // namespace

std::vector<std::string> KvPolicyNames() {
  std::vector<std::string> names;
  for (const PolicyInfo& p : kPolicies) names.push_back(p.name);
  return names;
}

bool IsKvPolicyName(const std::string& name) {
  for (const PolicyInfo& p : kPolicies) {
    if (name == p.name) return true;
  }
  return false;
}

std::unique_ptr<KvPolicy> MakeKvPolicy(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  for (const PolicyInfo& p : kPolicies) {
    if (name != p.name) continue;
    MethodOptions o = MethodOptions::Parse(colon == std::string::npos ? "" : spec.substr(colon + 1));
    std::unique_ptr<KvPolicy> policy = p.make(o);
    o.CheckAllUsed(name);
    return policy;
  }
  std::string known;
  for (const PolicyInfo& p : kPolicies) known += std::string(known.empty() ? "" : ", ") + p.name;
  throw std::invalid_argument("unknown KV policy '" + name + "' (known: " + known + ")");
}

}  // namespace qattn::kv
