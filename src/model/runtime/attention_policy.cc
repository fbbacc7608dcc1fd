#include "model/runtime/attention_policy.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "eval/npy.h"
#include "kernels/attention_call.h"
#include "methods/kv_cache/kv_policy.h"
#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::model {

namespace {
double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

PrefillInputs GatherPrefillInputs(const LayerAttention& call) {
  const KvCache& cache = *call.cache;
  const int64_t hq = call.out.dim(1), d = call.out.dim(2);
  PrefillInputs in;
  cache.Gather(call.layer, &in.k, &in.v);
  in.q = Tensor(cache.compute_dtype(), {call.n_new, hq, d});
  for (int64_t t = 0; t < call.n_new; ++t) {
    ConvertFromF32(call.q + t * call.q_row_stride, in.q.view().at(t, 0), cache.compute_dtype(), size_t(hq * d));
  }
  return in;
}

namespace {

void DecodeRuns(const LayerAttention& call, KvDType dtype, const std::vector<int64_t>& run_offsets,
                const std::vector<KvRun>& runs, const TensorView& out, float* lse, ThreadPool* pool) {
  const int hq = int(call.out.dim(1)), d = int(call.out.dim(2));
  PagedDecodeArgs a;
  a.q = TensorView{const_cast<float*>(call.q), DType::kF32, 3, {1, hq, d, 0}, {call.q_row_stride, d, 1, 0}};
  a.map = HeadMap{hq, int(run_offsets.size()) - 1, int(run_offsets.size()) - 1};
  a.d_v = d;
  a.kv_dtype = dtype;
  a.run_offsets = run_offsets;
  a.runs = runs;
  a.query_positions = {call.positions[0]};
  a.out = out;
  a.lse = lse;
  a.variant = call.variant;
  AttendDecodePaged(a, pool);
}


// A staircase: the paged kernel per stair, merged by log-sum-exp.
void DecodeStaircase(const LayerAttention& call, ThreadPool* pool) {
  kv::StaircaseKvCache& st = call.cache->staircase();
  const int64_t hq = call.out.dim(1), d = call.out.dim(2);
  const int stairs = st.num_stairs();
  std::vector<float> outs(size_t(stairs * hq * d)), lses(size_t(stairs * hq));  // [stairs, H_q, d], [stairs, H_q]
  for (int i = 0; i < stairs; ++i) {
    std::vector<int64_t> offsets;
    std::vector<KvRun> runs;
    kv::AllRuns(st.stair(i), call.cache->sequence(), call.layer, &offsets, &runs);
    DecodeRuns(call, st.stair(i).config().dtype, offsets, runs, MakeView(&outs[i * hq * d], DType::kF32, {1, hq, d}),
               &lses[i * hq], pool);
  }
  std::vector<float> merged(size_t(hq * d));  // [H_q, d]
  MergeStates(outs.data(), lses.data(), stairs, hq, int(d), merged.data(), nullptr);
  for (int64_t h = 0; h < hq; ++h) std::memcpy(call.out.at<float>(0, h), &merged[h * d], size_t(d) * 4);
}

}  // namespace

void AttendDecodeRuns(const LayerAttention& call, const std::vector<int64_t>& run_offsets,
                      const std::vector<KvRun>& runs, ThreadPool* pool) {
  const double t0 = Now();
  DecodeRuns(call, call.cache->storage().dtype, run_offsets, runs, call.out, nullptr, pool);
  call.cache->timings().attention_seconds += Now() - t0;
}

void AttendDense(const LayerAttention& call, ThreadPool* pool) {
  KvCache& cache = *call.cache;
  if (call.n_new == 1 && cache.is_staircase()) {
    const double t0 = Now();
    DecodeStaircase(call, pool);
    cache.timings().attention_seconds += Now() - t0;
    return;
  }
  if (call.n_new == 1) {
    std::vector<int64_t> offsets;  // [H_kv + 1]
    std::vector<KvRun> runs;
    kv::AllRuns(cache.paged(), cache.sequence(), call.layer, &offsets, &runs);
    AttendDecodeRuns(call, offsets, runs, pool);
    return;
  }
  const PrefillInputs in = GatherPrefillInputs(call);
  const double t0 = Now();
  RunAttention({in.q.view(), in.k.view(), in.v.view(), call.out, nullptr, call.variant}, pool);
  cache.timings().attention_seconds += Now() - t0;
}

namespace {

// Exact attention on the core skeleton: paged split-KV decode for one new token, tiled prefill otherwise.
class DensePolicy final : public AttentionPolicy {
 public:
  std::string name() const override { return "dense"; }
  void Attend(const LayerAttention& call, ThreadPool* pool) override { AttendDense(call, pool); }
};

// A sparse prefill method for a whole prompt's prefill (queries == keys); dense everywhere else.
class SparsePrefillPolicy final : public AttentionPolicy {
 public:
  explicit SparsePrefillPolicy(std::unique_ptr<sparse::SparsePrefillMethod> method) : method_(std::move(method)) {}
  std::string name() const override { return method_->name(); }
  bool wants_whole_prompt() const override { return true; }
  void Attend(const LayerAttention& call, ThreadPool* pool) override {
    const bool whole_prompt = call.n_new > 1 && call.n_new == call.cache->kept(call.layer);
    if (!whole_prompt || call.variant.window_left >= 0) {  // a sliding window is part of the model's mask
      AttendDense(call, pool);
      return;
    }
    const PrefillInputs in = GatherPrefillInputs(call);
    method_->Run(sparse::PrefillProblem{in.q.view(), in.k.view(), in.v.view(), call.variant.scale}, call.out, nullptr,
                 pool);
  }

 private:
  std::unique_ptr<sparse::SparsePrefillMethod> method_;
};

// A decode-time KV method: dense prefill, then eviction after the prompt and selection per decode
// step as the method says; attention always on the core's paged decode kernel.
class KvAttentionPolicy final : public AttentionPolicy {
 public:
  explicit KvAttentionPolicy(std::unique_ptr<kv::KvPolicy> policy) : policy_(std::move(policy)) {}
  std::string name() const override { return policy_->name(); }
  bool wants_whole_prompt() const override { return true; }
  void Attend(const LayerAttention& call, ThreadPool* pool) override {
    KvCache& cache = *call.cache;
    const kv::LayerRef at{&cache.paged(), cache.sequence(), call.layer, Heads(call)};
    if (call.n_new > 1) {
      if (call.layer == 0 && call.n_new == cache.kept(0)) policy_->Reset();  // a new prompt
      AttendDense(call, pool);
      if (call.prompt_end) {
        const double t0 = Now();
        policy_->AfterPrompt(at, call.q, call.q_row_stride, call.n_new, pool);
        cache.timings().selection_seconds += Now() - t0;
      }
      return;
    }
    const double t0 = Now();
    offsets_.clear();
    runs_.clear();
    policy_->SelectForDecode(at, call.q, &offsets_, &runs_, pool);
    cache.timings().selection_seconds += Now() - t0;
    AttendDecodeRuns(call, offsets_, runs_, pool);
  }
  std::vector<int32_t> TakePromptSelection(int layer) override { return policy_->TakePromptSelection(layer); }
  std::string OffloadSummary() const override {
    const kv::KvPolicyStats s = policy_->stats();
    if (s.blocks_in_memory + s.blocks_on_disk == 0) return "";
    char line[256];
    std::snprintf(line, sizeof line,
                  "offloaded blocks: %lld in memory, %lld on disk (%.2f MiB), %lld loaded from disk in %.3f s, "
                  "%lld failed writes",
                  (long long)s.blocks_in_memory, (long long)s.blocks_on_disk, s.bytes_on_disk / 1048576.0,
                  (long long)s.disk_loads, s.load_seconds, (long long)s.spill_failures);
    return line;
  }

 private:
  static kv::Heads Heads(const LayerAttention& call) {
    return kv::Heads{int(call.out.dim(1)), call.cache->paged().config().n_head_kv, int(call.out.dim(2))};
  }
  std::unique_ptr<kv::KvPolicy> policy_;
  std::vector<int64_t> offsets_;  // [H_kv + 1]
  std::vector<KvRun> runs_;
};

// Writes a view as a float32 .npy [n, H, d].
void DumpView(const TensorView& x, const std::string& path) {
  std::vector<float> values(size_t(x.numel()));  // [n, H, d]
  for (int64_t i = 0; i < x.dim(0); ++i) {
    for (int64_t h = 0; h < x.dim(1); ++h) {
      ConvertToF32(x.at(i, h), x.dtype, values.data() + (i * x.dim(1) + h) * x.dim(2), size_t(x.dim(2)));
    }
  }
  WriteNpyF32(path, {x.dim(0), x.dim(1), x.dim(2)}, values.data());
}

class QkvDumpPolicy final : public AttentionPolicy {
 public:
  QkvDumpPolicy(std::unique_ptr<AttentionPolicy> inner, std::string dir) : inner_(std::move(inner)), dir_(std::move(dir)) {}
  std::string name() const override { return inner_->name(); }
  bool wants_whole_prompt() const override { return true; }
  void Attend(const LayerAttention& call, ThreadPool* pool) override {
    if (call.n_new > 1 && call.n_new == call.cache->kept(call.layer)) {
      const PrefillInputs in = GatherPrefillInputs(call);
      const std::string stem = dir_ + "/layer" + std::to_string(call.layer) + "_";
      DumpView(in.q.view(), stem + "q.npy");
      DumpView(in.k.view(), stem + "k.npy");
      DumpView(in.v.view(), stem + "v.npy");
    }
    inner_->Attend(call, pool);
  }

 private:
  std::unique_ptr<AttentionPolicy> inner_;
  std::string dir_;
};

}  // namespace

std::unique_ptr<AttentionPolicy> WrapKvPolicy(std::unique_ptr<kv::KvPolicy> policy) {
  return std::make_unique<KvAttentionPolicy>(std::move(policy));
}

std::unique_ptr<AttentionPolicy> WithQkvDump(std::unique_ptr<AttentionPolicy> inner, const std::string& dir) {
  return std::make_unique<QkvDumpPolicy>(std::move(inner), dir);
}

std::unique_ptr<AttentionPolicy> MakeAttentionPolicy(const std::string& spec) {
  const std::string name = spec.substr(0, spec.find(':'));
  if (name == "dense") {
    if (name.size() != spec.size()) throw std::invalid_argument("the attention policy 'dense' takes no options");
    return std::make_unique<DensePolicy>();
  }
  if (kv::IsKvPolicyName(name)) return WrapKvPolicy(kv::MakeKvPolicy(spec));
  return std::make_unique<SparsePrefillPolicy>(sparse::MakeSparseMethod(spec));  // names the known ones
}

}  // namespace qattn::model
