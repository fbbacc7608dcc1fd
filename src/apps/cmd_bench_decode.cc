// `qattn bench decode`: one decode step of a KV selection/eviction policy against dense decode over
// the same paged cache: seconds per step (selection included), speedup, bytes of KV read.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <random>

#include "apps/cli_support.h"
#include "eval/machine_peak.h"
#include "eval/peak_cache.h"
#include "methods/kv_cache/kv_policy.h"

namespace qattn {
namespace {

struct BenchDecodeOptions {
  std::string policy = "quest";
  int64_t budget = 4096;
  int64_t nkv = 32768;
  int hq = 32, hkv = 8, d = 128;
  std::string kv = "bf16";
  int page_tokens = 256;
  int threads = 0;
  int steps = 10;
  uint64_t seed = 1;
  bool json = false;
};

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The policy spec with --budget added when the spec names none (and Quest scoring every layer: the
// bench has one).
std::string PolicySpec(const BenchDecodeOptions& o) {
  std::string spec = o.policy;
  const std::string name = spec.substr(0, spec.find(':'));
  auto add = [&](const std::string& kv) { spec += (spec.find(':') == std::string::npos ? ":" : ",") + kv; };
  // (ReKV's budget is its options: topk blocks of `block` tokens plus n_init and n_local.)
  if (spec.find("budget=") == std::string::npos && spec.find("frac=") == std::string::npos && name != "tokenselect" &&
      name != "rekv") {
    add("budget=" + std::to_string(o.budget));
  }
  if (name == "tokenselect" && spec.find("top_k=") == std::string::npos) add("budget=" + std::to_string(o.budget));
  if (name == "quest" && spec.find("skip_layers=") == std::string::npos) add("skip_layers=0");
  return spec;
}

// Bytes of K and V the runs hold (what one step reads from the cache).
double RunBytes(const std::vector<KvRun>& runs, const kv::PagedKvCache& c) {
  double tokens = 0;
  for (const KvRun& r : runs) tokens += r.tokens;
  return tokens * double(c.tile_k_bytes() + c.tile_v_bytes()) / kKvTileTokens;
}

struct StepTimes {
  std::vector<double> select, attend, total;
  double bytes = 0;
};

int Run(const BenchDecodeOptions& o) {
  if (o.nkv < 1 || o.hq < 1 || o.hkv < 1 || o.hq % o.hkv != 0 || o.d % 16 != 0 || o.steps < 1 || o.budget < 1) {
    throw UsageError("need --nkv, --budget, --steps >= 1, --d a multiple of 16, and --hq a multiple of --hkv");
  }
  KvDType kv_dtype;
  std::unique_ptr<kv::KvPolicy> policy;
  try {
    kv_dtype = ParseKvDType(o.kv);
    policy = kv::MakeKvPolicy(PolicySpec(o));
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  const int threads = ResolveThreads(o.threads);
  ThreadPool::SetDefaultThreads(threads);
  ThreadPool* pool = &ThreadPool::Default();

  kv::PagedCacheConfig pc{1, o.hkv, o.d, kv_dtype, o.page_tokens};
  kv::PagedKvCache cache(pc);
  const int seq = cache.NewSequence();
  std::mt19937 rng(uint32_t(o.seed));
  std::normal_distribution<float> normal;
  {  // fill in chunks: [chunk, H_kv * d] keys and values
    const int64_t chunk = 4096;
    std::vector<float> k(size_t(chunk) * o.hkv * o.d), v(k.size());
    std::vector<int32_t> pos(chunk);
    for (int64_t t0 = 0; t0 < o.nkv; t0 += chunk) {
      const int64_t n = std::min(chunk, o.nkv - t0);
      for (float& x : k) x = normal(rng);
      for (float& x : v) x = normal(rng);
      for (int64_t i = 0; i < n; ++i) pos[i] = int32_t(t0 + i);
      cache.Append(seq, 0, k.data(), v.data(), int64_t(o.hkv) * o.d, n, pos.data());
    }
  }
  const kv::LayerRef at{&cache, seq, 0, kv::Heads{o.hq, o.hkv, o.d}};
  std::vector<float> q(size_t(o.hq) * o.d), out(q.size());  // [H_q, d] each

  // One step: choose runs (timed as selection), then the paged decode kernel over them.
  auto step = [&](bool dense, StepTimes* times) {
    for (float& x : q) x = normal(rng);
    std::vector<int64_t> offsets;
    std::vector<KvRun> runs;
    const double t0 = Now();
    if (dense) kv::AllRuns(at, &offsets, &runs);
    else policy->SelectForDecode(at, q.data(), &offsets, &runs, pool);
    const double t1 = Now();
    PagedDecodeArgs a;
    a.q = MakeView(q.data(), DType::kF32, {1, o.hq, o.d});
    a.map = HeadMap{o.hq, o.hkv, o.hkv};
    a.d_v = o.d;
    a.kv_dtype = kv_dtype;
    a.run_offsets = offsets;
    a.runs = runs;
    a.query_positions = {o.nkv - 1};
    a.out = MakeView(out.data(), DType::kF32, {1, o.hq, o.d});
    AttendDecodePaged(a, pool);
    const double t2 = Now();
    if (times) {
      times->select.push_back(t1 - t0);
      times->attend.push_back(t2 - t1);
      times->total.push_back(t2 - t0);
      times->bytes = RunBytes(runs, cache);
    }
  };
  StepTimes dense, sparse;
  step(true, nullptr);  // warm-up: page faults, thread start
  for (int i = 0; i < o.steps; ++i) step(true, &dense);
  step(false, nullptr);  // warm-up: builds per-layer state (Quest bounds), evicts to the budget
  for (int i = 0; i < o.steps; ++i) step(false, &sparse);

  // The cached memory bandwidth (`qattn bench peak`), or a quick measurement.
  const std::optional<MachinePeak> cached = LoadCachedPeak(PeakCachePath(), PeakCacheKey(CpuModelName(), threads));
  PeakOptions quick;
  quick.quick = true;
  const MachinePeak peak = cached ? *cached : MeasureMachinePeak(*pool, quick);
  const double seconds = Median(sparse.total), dense_seconds = Median(dense.total);
  nlohmann::json j = {{"policy", policy->name()}, {"kv", KvDTypeName(kv_dtype)}, {"nkv", o.nkv},
                      {"hq", o.hq}, {"hkv", o.hkv}, {"d", o.d}, {"threads", threads}, {"steps", o.steps},
                      {"seconds", seconds}, {"select_seconds", Median(sparse.select)},
                      {"attend_seconds", Median(sparse.attend)}, {"dense_seconds", dense_seconds},
                      {"speedup", dense_seconds / seconds}, {"bytes_read", sparse.bytes},
                      {"dense_bytes_read", dense.bytes}, {"gbps", sparse.bytes / seconds / 1e9},
                      {"dense_gbps", dense.bytes / dense_seconds / 1e9}, {"peak_gbps", peak.memory_gbps}};
  if (o.json) {
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  std::printf("decode step, %lld cached tokens, %d/%d heads, d %d, kv %s, %d threads\n", (long long)o.nkv, o.hq,
              o.hkv, o.d, KvDTypeName(kv_dtype), threads);
  std::printf("  %-60s %9.3f ms  (selection %.3f ms, attention %.3f ms)  %8.1f MB read\n", policy->name().c_str(),
              seconds * 1e3, Median(sparse.select) * 1e3, Median(sparse.attend) * 1e3, sparse.bytes / 1e6);
  std::printf("  %-60s %9.3f ms  %8.1f MB read, %.1f GB/s of %.1f\n", "dense", dense_seconds * 1e3, dense.bytes / 1e6,
              dense.bytes / dense_seconds / 1e9, peak.memory_gbps);
  std::printf("  speedup %.2fx\n", dense_seconds / seconds);
  return kExitOk;
}

}  // namespace

Command AddBenchDecodeCommand(CLI::App& bench) {
  auto o = std::make_shared<BenchDecodeOptions>();
  CLI::App* cmd = bench.add_subcommand("decode", "one decode step of a KV selection/eviction policy against dense");
  cmd->add_option("--policy", o->policy, "KV policy spec NAME[:k=v,...] (default quest)")->type_name("SPEC");
  cmd->add_option("--budget", o->budget, "tokens the policy may read or keep (default 4096)")->type_name("B");
  cmd->add_option("--nkv", o->nkv, "cached tokens (default 32768)")->type_name("N");
  cmd->add_option("--hq", o->hq, "query heads (default 32)");
  cmd->add_option("--hkv", o->hkv, "KV heads (default 8)");
  cmd->add_option("--d", o->d, "head dim (default 128)");
  cmd->add_option("--kv", o->kv, "KV storage: f32, bf16, f16, int8, int4 (default bf16)")->type_name("TYPE");
  cmd->add_option("--page-tokens", o->page_tokens, "tokens per cache page (default 256)");
  cmd->add_option("--threads", o->threads, "threads; 0 = all (default)");
  cmd->add_option("--steps", o->steps, "timed decode steps, median reported (default 10)");
  cmd->add_option("--seed", o->seed, "random seed (default 1)");
  cmd->add_flag("--json", o->json, "print one JSON object");
  return {cmd, [o] { return Run(*o); }};
}

}  // namespace qattn
