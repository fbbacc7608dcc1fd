// `qattn bench attention` (times the kernels on random inputs against this machine's peak) and
// `qattn bench peak` (measures that peak).
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/attention_call.h"
#include "apps/cli_support.h"
#include "core/aligned_buffer.h"
#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "eval/machine_peak.h"
#include "eval/peak_cache.h"
#include "eval/timing.h"
#include "kernels/attention.h"
#include "kernels/kv_format.h"

namespace qattn {
namespace {

using nlohmann::json;

// ---------------------------------------------------------------- bench peak

struct PeakCommandOptions {
  int threads = 0;
  bool json = false;
  bool quick = false;
  int memory_mib = 0;  // 0: DefaultPeakMemoryBytes
};

json PeakJson(const MachinePeak& p) {
  return {{"cpu_model", p.cpu_model},     {"threads", p.threads},         {"f32_isa", p.f32_isa},
          {"f32_gflops", p.f32_gflops},   {"bf16_gflops", p.bf16_gflops}, {"memory_gbps", p.memory_gbps},
          {"memory_bytes", p.memory_bytes}, {"quick", p.quick},           {"measure_seconds", p.measure_seconds},
          {"other_running_tasks", p.other_running_tasks}};
}

// A memory bandwidth measured while other work ran reads low, and decode fractions then read high.
// (Compute peaks are taken over each thread's CPU time and hold up on a busy machine.)
void WarnIfMeasuredBusy(const MachinePeak& p) {
  if (p.other_running_tasks <= 0) return;
  std::fprintf(stderr,
               "qattn: warning: %d other task%s ran during the peak measurement, so the memory bandwidth may "
               "read low; rerun 'qattn bench peak' on an idle machine.\n",
               p.other_running_tasks, p.other_running_tasks == 1 ? "" : "s");
}

void PrintPeakTable(const MachinePeak& p, const std::string& cache_note) {
  std::printf("machine peak, %s, %d thread%s%s\n", p.cpu_model.c_str(), p.threads, p.threads == 1 ? "" : "s",
              p.quick ? " (quick, rough)" : "");
  std::printf("  %-22s %10.1f GFLOP/s  (%s FMA)\n", "f32 FMA", p.f32_gflops, p.f32_isa.c_str());
  if (p.bf16_gflops > 0) std::printf("  %-22s %10.1f GFLOP/s  (vdpbf16ps)\n", "bf16 dot", p.bf16_gflops);
  else std::printf("  %-22s %10s\n", "bf16 dot", "n/a (no AVX512-BF16)");
  std::printf("  %-22s %10.1f GB/s     (%.0f MiB array)\n", "memory read", p.memory_gbps, double(p.memory_bytes) / (1 << 20));
  std::printf("  measured in %.1f s; %s\n", p.measure_seconds, cache_note.c_str());
}

int RunPeak(const PeakCommandOptions& o) {
  if (o.threads < 0) throw UsageError("--threads must be >= 1 (or 0 for every hardware thread).");
  if (o.memory_mib < 0) throw UsageError("--memory-mib must be >= 1 (or 0 for the default size).");
  ThreadPool::SetDefaultThreads(ResolveThreads(o.threads));
  ThreadPool& pool = ThreadPool::Default();
  PeakOptions options;
  options.quick = o.quick;
  options.memory_bytes = size_t(o.memory_mib) << 20;
  const MachinePeak p = MeasureMachinePeak(pool, options);
  WarnIfMeasuredBusy(p);

  // Quick numbers are too rough to stand in for a real measurement later.
  const std::string path = PeakCachePath(), key = PeakCacheKey(p.cpu_model, p.threads);
  const bool stored = !o.quick && StoreCachedPeak(path, key, p);
  if (o.json) {
    json j = PeakJson(p);
    j["cache_path"] = path;
    j["cache_key"] = key;
    j["cached"] = stored;
    std::printf("%s\n", j.dump().c_str());
  } else {
    PrintPeakTable(p, stored ? "cached in " + path : o.quick ? "not cached (quick)" : "could not write " + path);
  }
  return kExitOk;
}

// ---------------------------------------------------------------- bench attention

struct BenchOptions {
  int hq = 32, hkv = 8, hk = 0, hv = 0;  // hk, hv: 0 = hkv
  int d = 128, dv = 0;                   // dv: 0 = d
  int64_t nq = 4096, nkv = 4096;
  bool causal = false;
  std::string dtype = "f32";
  int threads = 0;
  int repeats = 5, warmup = 1;
  bool json = false;
  bool remeasure_peak = false, quick_peak = false;
  uint64_t seed = 1;
  std::string kv_layout;  // "head" | "token"; empty: head for decode, token for prefill
  std::string kv;         // decode over paged KV tiles of this KvDType; empty: plain tensors
};

struct BenchShape {
  int64_t n_q, n_kv;
  int h_q, h_k, h_v, d_qk, d_v;
  DType dtype;
  bool causal;
  bool head_major;  // K/V stored [H, n_kv, d] (a KV cache's layout) rather than [n_kv, H, d]
};

void Require(bool ok, const std::string& sentence) {
  if (!ok) throw UsageError(sentence);
}

size_t PhysicalMemory() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? size_t(pages) * size_t(page) : SIZE_MAX;
}

// Bytes of Q, K, V, O and LSE for the shape.
double FootprintBytes(const BenchShape& s) {
  const double e = double(DTypeSize(s.dtype));
  return e * double(s.n_q) * s.h_q * s.d_qk + e * double(s.n_kv) * (double(s.h_k) * s.d_qk + double(s.h_v) * s.d_v) +
         4.0 * double(s.n_q) * s.h_q * (s.d_v + 1.0);
}

BenchShape ResolveShape(const BenchOptions& o) {
  BenchShape s{o.nq, o.nkv, o.hq, o.hk ? o.hk : o.hkv, o.hv ? o.hv : o.hkv, o.d, o.dv ? o.dv : o.d, DType::kF32, o.causal,
               false};
  Require(o.kv_layout.empty() || o.kv_layout == "head" || o.kv_layout == "token",
          "--kv-layout must be head or token; got '" + o.kv_layout + "'.");
  s.head_major = o.kv_layout.empty() ? UsesDecode(o.nq) : o.kv_layout == "head";
  Require(ParseDType(o.dtype, &s.dtype), "--dtype must be f32, bf16 or f16; got '" + o.dtype + "'.");
  Require(s.n_q >= 1 && s.n_kv >= 1, "--nq and --nkv must be at least 1.");
  Require(s.h_q >= 1 && s.h_k >= 1 && s.h_v >= 1, "--hq, --hkv, --hk and --hv must be at least 1.");
  Require(s.d_qk >= 1 && s.d_v >= 1, "--d and --dv must be at least 1.");
  Require(s.h_q % s.h_k == 0, "--hq " + std::to_string(s.h_q) + " is not a multiple of the " + std::to_string(s.h_k) + " K heads.");
  Require(s.h_q % s.h_v == 0, "--hq " + std::to_string(s.h_q) + " is not a multiple of the " + std::to_string(s.h_v) + " V heads.");
  Require(o.repeats >= 1 && o.warmup >= 0, "--repeats must be at least 1 and --warmup at least 0.");
  Require(o.threads >= 0, "--threads must be >= 1 (or 0 for every hardware thread).");
  const double need = FootprintBytes(s);
  Require(need < 0.8 * double(PhysicalMemory()),
          "the shape needs " + std::to_string(int64_t(need / double(1 << 20))) + " MiB of tensors, more than this machine's memory allows.");
  return s;
}

// xorshift64*: fast enough to fill hundreds of MiB of inputs without dominating the run.
struct FastRandom {
  uint64_t state;
  float Uniform() {  // [-1, 1)
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    const uint64_t r = state * 0x2545F4914F6CDD1Dull;
    return float(int32_t(r >> 32)) * (1.0f / 2147483648.0f);
  }
};

// Fills a tensor of any dtype through an f32 staging chunk, so no f32 copy of the whole tensor exists.
void FillRandom(const Tensor& t, uint64_t seed) {
  FastRandom rng{seed * 0x9E3779B97F4A7C15ull + 1};
  std::vector<float> chunk(1 << 16);  // [chunk] f32 staging
  const DType dtype = t.view().dtype;
  char* dst = static_cast<char*>(t.view().data);
  for (int64_t done = 0; done < t.numel();) {
    const size_t n = size_t(std::min<int64_t>(int64_t(chunk.size()), t.numel() - done));
    for (size_t i = 0; i < n; ++i) chunk[i] = rng.Uniform();
    ConvertFromF32(chunk.data(), dst + size_t(done) * DTypeSize(dtype), dtype, n);
    done += int64_t(n);
  }
}

struct PeakLookup {
  MachinePeak peak;
  std::string source;  // "cache", "measured" or "measured-quick"
};

// The cached peak for this CPU and thread count, measured (and cached) first if there is none.
PeakLookup LookupPeak(ThreadPool& pool, const BenchOptions& o) {
  const std::string path = PeakCachePath(), key = PeakCacheKey(CpuModelName(), pool.num_threads());
  if (!o.remeasure_peak) {
    if (auto cached = LoadCachedPeak(path, key)) return {*cached, "cache"};
  }
  if (!o.json && o.quick_peak) std::fprintf(stderr, "measuring this machine's peak roughly (--quick-peak; not cached)...\n");
  if (!o.json && !o.quick_peak) std::fprintf(stderr, "measuring this machine's peak (once; cached in %s)...\n", path.c_str());
  PeakOptions options;
  options.quick = o.quick_peak;
  MachinePeak p = MeasureMachinePeak(pool, options);
  WarnIfMeasuredBusy(p);
  if (!o.quick_peak) StoreCachedPeak(path, key, p);
  return {p, o.quick_peak ? "measured-quick" : "measured"};
}

struct BenchResult {
  TimingStats timing;
  double flops, kv_bytes, gflops, gbps, fraction, fraction_of_cached;
  double memory_gbps_now = 0;  // decode: bandwidth measured around the run
  const char* fraction_basis;
};

// A K or V tensor and its [n_kv, H, d] view: rows of one head adjacent ([H, n_kv, d] storage, as a
// KV cache keeps them) or a token's heads adjacent ([n_kv, H, d] storage, as attend's .npy files).
struct KvTensor {
  Tensor storage;
  TensorView view;
  KvTensor(DType dtype, int64_t n, int64_t heads, int64_t d, bool head_major)
      : storage(head_major ? Tensor(dtype, {heads, n, d}) : Tensor(dtype, {n, heads, d})) {
    view = MakeView(storage.view().data, dtype, {n, heads, d});
    if (head_major) view.stride = {d, n * d, 1, 0};
  }
};

// Decode timing interleaved with plain streaming reads of the same number of bytes: this VM's
// memory bandwidth drifts by a third within minutes, so decode's fraction compares the median of
// its runs with the median of reads taken between them (same moment, bytes and statistic).
struct InterleavedDecodeTiming {
  TimingStats decode;
  double read_gbps;  // median over the interleaved reads
};

InterleavedDecodeTiming TimeDecodeAgainstReads(const std::function<void()>& run, double kv_bytes, int warmup,
                                               int repeats, ThreadPool& pool) {
  MemoryReadProbe probe(pool, size_t(kv_bytes));
  for (int i = 0; i < warmup; ++i) {
    probe.ReadSeconds();
    run();
  }
  std::vector<double> run_seconds, read_gbps;  // [repeats] each
  for (int i = 0; i < repeats; ++i) {
    read_gbps.push_back(double(probe.read_bytes()) / probe.ReadSeconds() / 1e9);
    const double t0 = NowSeconds();
    run();
    run_seconds.push_back(NowSeconds() - t0);
  }
  return {Summarize(std::move(run_seconds)), Median(std::move(read_gbps))};
}

BenchResult Measure(const BenchShape& s, const BenchOptions& o, ThreadPool& pool, const MachinePeak& peak) {
  Tensor q(s.dtype, {s.n_q, s.h_q, s.d_qk});    // [n_q, H_q, d_qk]
  KvTensor kt(s.dtype, s.n_kv, s.h_k, s.d_qk, s.head_major);  // [n_kv, H_k, d_qk] view
  KvTensor vt(s.dtype, s.n_kv, s.h_v, s.d_v, s.head_major);   // [n_kv, H_v, d_v] view
  const Tensor& k = kt.storage;
  const Tensor& v = vt.storage;
  Tensor out(DType::kF32, {s.n_q, s.h_q, s.d_v});  // [n_q, H_q, d_v]
  std::vector<float> lse(size_t(s.n_q) * size_t(s.h_q));  // [n_q, H_q]
  FillRandom(q, o.seed);
  FillRandom(k, o.seed + 1);
  FillRandom(v, o.seed + 2);
  AttentionCall call{q.view(), kt.view, vt.view, out.view(), lse.data(), {}};
  call.variant.causal = s.causal;

  BenchResult r;
  const bool decode = UsesDecode(s.n_q);
  r.flops = AttentionFlops(s.n_q, s.n_kv, s.h_q, s.d_qk, s.d_v, s.causal);
  // K and V as stored: each byte must be read at least once, whatever the kernel does.
  r.kv_bytes = double(DTypeSize(s.dtype)) * double(s.n_kv) * (double(s.h_k) * s.d_qk + double(s.h_v) * s.d_v);
  if (decode) {
    const auto t = TimeDecodeAgainstReads([&] { RunAttention(call, &pool); }, r.kv_bytes, o.warmup, o.repeats, pool);
    r.timing = t.decode;
    r.memory_gbps_now = t.read_gbps;
  } else {
    r.timing = TimeRepeated([&] { RunAttention(call, &pool); }, o.warmup, o.repeats);
  }
  r.gflops = r.flops / r.timing.median / 1e9;
  r.gbps = r.kv_bytes / r.timing.median / 1e9;
  // Decode streams K/V once per token, so memory bounds it; prefill reuses K/V and is compute bound.
  r.fraction = decode ? r.gbps / r.memory_gbps_now : r.gflops / peak.f32_gflops;
  r.fraction_of_cached = decode ? r.gbps / peak.memory_gbps : r.fraction;
  r.fraction_basis = decode ? "memory_bandwidth" : "f32_fma";
  return r;
}

// Paged decode (--kv): each KV head's keys in pages of kPageTokens tokens, one KvRun per page, K and
// V tiles of random values quantized into the format; bytes read are the tiles' stored bytes.
constexpr int kPageTokens = 256;

struct PagedKv {
  // [H_kv, tiles per head] tiles of K and of V, on huge pages like a KV cache's pool (4 KiB pages
  // stop the hardware prefetchers at every page and misalign the tiles' vectors).
  AlignedBuffer k, v;
  PagedDecodeArgs args;
};

void FillPagedKv(const BenchShape& s, KvDType t, uint64_t seed, PagedKv* kv) {
  const int64_t tiles = (s.n_kv + kKvTileTokens - 1) / kKvTileTokens;  // per head
  const size_t kb = KvTileBytes(t, s.d_qk, false), vb = KvTileBytes(t, s.d_v, true);
  kv->k = AlignedBuffer(size_t(s.h_k) * tiles * kb);
  kv->v = AlignedBuffer(size_t(s.h_k) * tiles * vb);
  uint8_t* k = kv->k.as<uint8_t>();
  uint8_t* v = kv->v.as<uint8_t>();
  FastRandom rng{seed * 0x9E3779B97F4A7C15ull + 1};
  std::vector<float> x(size_t(std::max(s.d_qk, s.d_v)));  // [d] one token's values
  for (int h = 0; h < s.h_k; ++h)
    for (int64_t i = 0; i < s.n_kv; ++i) {
      const size_t tile = size_t(h) * tiles + size_t(i / kKvTileTokens);
      for (int j = 0; j < s.d_qk; ++j) x[j] = rng.Uniform();
      StoreKvToken(t, false, x.data(), s.d_qk, &k[tile * kb], int(i % kKvTileTokens));
      for (int j = 0; j < s.d_v; ++j) x[j] = rng.Uniform();
      StoreKvToken(t, true, x.data(), s.d_v, &v[tile * vb], int(i % kKvTileTokens));
    }
  PagedDecodeArgs& a = kv->args;
  a.map = HeadMap{s.h_q, s.h_k, s.h_v};
  a.d_v = s.d_v;
  a.kv_dtype = t;
  a.run_offsets = {0};
  for (int h = 0; h < s.h_k; ++h) {
    for (int64_t p0 = 0; p0 < s.n_kv; p0 += kPageTokens) {
      const size_t tile = size_t(h) * tiles + size_t(p0 / kKvTileTokens);
      KvRun run;
      run.k = &k[tile * kb], run.v = &v[tile * vb];
      run.tokens = int32_t(std::min<int64_t>(kPageTokens, s.n_kv - p0));
      run.position = p0;
      a.runs.push_back(run);
    }
    a.run_offsets.push_back(int64_t(a.runs.size()));
  }
  a.query_positions = {s.n_kv - 1};
}

BenchResult MeasurePaged(const BenchShape& s, const BenchOptions& o, ThreadPool& pool, const MachinePeak& peak) {
  Require(UsesDecode(s.n_q), "--kv is for decode (--nq 1).");
  Require(s.h_k == s.h_v, "--kv needs as many K heads as V heads.");
  const KvDType t = ParseKvDType(o.kv);
  Tensor q(DType::kF32, {1, s.h_q, s.d_qk});       // [1, H_q, d_qk]
  Tensor out(DType::kF32, {1, s.h_q, s.d_v});      // [1, H_q, d_v]
  std::vector<float> lse(size_t(s.h_q));           // [1, H_q]
  FillRandom(q, o.seed);
  PagedKv kv;
  FillPagedKv(s, t, o.seed + 1, &kv);
  kv.args.q = q.view(), kv.args.out = out.view(), kv.args.lse = lse.data();
  BenchResult r;
  r.flops = AttentionFlops(1, s.n_kv, s.h_q, s.d_qk, s.d_v, false);
  r.kv_bytes = double(kv.k.size() + kv.v.size());  // the tiles as stored, scales included
  const auto tm = TimeDecodeAgainstReads([&] { AttendDecodePaged(kv.args, &pool); }, r.kv_bytes, o.warmup, o.repeats, pool);
  r.timing = tm.decode;
  r.memory_gbps_now = tm.read_gbps;
  r.gflops = r.flops / r.timing.median / 1e9;
  r.gbps = r.kv_bytes / r.timing.median / 1e9;
  r.fraction = r.gbps / r.memory_gbps_now;
  r.fraction_of_cached = r.gbps / peak.memory_gbps;
  r.fraction_basis = "memory_bandwidth";
  return r;
}

json BenchJson(const BenchShape& s, const BenchOptions& o, int threads, const BenchResult& r, const PeakLookup& pk) {
  return {{"mode", UsesDecode(s.n_q) ? "decode" : "prefill"},
          {"n_q", s.n_q}, {"n_kv", s.n_kv}, {"h_q", s.h_q}, {"h_k", s.h_k}, {"h_v", s.h_v},
          {"d_qk", s.d_qk}, {"d_v", s.d_v}, {"causal", s.causal},
          {"dtype", o.kv.empty() ? std::string(DTypeName(s.dtype)) : o.kv}, {"kv", o.kv.empty() ? "tensor" : "paged"},
          {"threads", threads}, {"isa", IsaName(ActiveIsa())},
          {"repeats", o.repeats}, {"warmup", o.warmup},
          {"seconds", r.timing.median}, {"seconds_min", r.timing.min}, {"seconds_max", r.timing.max},
          {"flops", r.flops}, {"kv_bytes", r.kv_bytes}, {"gflops", r.gflops}, {"gbps", r.gbps},
          {"peak_gflops", pk.peak.f32_gflops}, {"peak_bf16_gflops", pk.peak.bf16_gflops},
          // Decode's denominator is the bandwidth measured around the run; the cached one is kept too.
          {"peak_gbps", r.memory_gbps_now > 0 ? r.memory_gbps_now : pk.peak.memory_gbps},
          {"peak_gbps_cached", pk.peak.memory_gbps}, {"peak_source", pk.source},
          {"peak_other_running_tasks", pk.peak.other_running_tasks},
          {"fraction_of_peak", r.fraction}, {"fraction_basis", r.fraction_basis},
          {"kv_layout", s.head_major ? "head" : "token"},
          {"fraction_of_cached_peak", r.fraction_of_cached}};
}

void PrintBenchTable(const BenchShape& s, const BenchOptions& o, int threads, const BenchResult& r, const PeakLookup& pk) {
  const bool decode = UsesDecode(s.n_q);
  std::printf("qattn bench attention: %s%s, %s, %d thread%s, isa %s\n", decode ? "decode" : "prefill",
              s.causal && !decode ? " causal" : "",
              o.kv.empty() ? std::string(DTypeName(s.dtype)).c_str() : ("paged KV tiles " + o.kv).c_str(), threads,
              threads == 1 ? "" : "s", IsaName(ActiveIsa()).c_str());
  std::printf("  %-10s n_q %lld, n_kv %lld, H_q/H_k/H_v %d/%d/%d, d_qk %d, d_v %d\n", "shape", (long long)s.n_q,
              (long long)s.n_kv, s.h_q, s.h_k, s.h_v, s.d_qk, s.d_v);
  std::printf("  %-10s %.6f s median of %d (min %.6f, max %.6f)\n", "time", r.timing.median, o.repeats, r.timing.min, r.timing.max);
  std::printf("  %-10s %10.1f GFLOP/s  peak f32 FMA %.1f\n", "compute", r.gflops, pk.peak.f32_gflops);
  std::printf("  %-10s %10.2f GB/s     peak memory read %.1f%s\n", "K/V read", r.gbps,
              decode ? r.memory_gbps_now : pk.peak.memory_gbps, decode ? " (plain reads of the same bytes, interleaved with the runs)" : "");
  std::printf("  %-10s %s, %s\n", "layout", s.head_major ? "K/V head-major [H, n_kv, d]" : "K/V token-major [n_kv, H, d]",
              "--kv-layout head|token");
  if (decode)
    std::printf("  %-10s %10.1f %%        of the memory bandwidth (%.1f %% of the cached peak %.1f)\n", "fraction",
                100.0 * r.fraction, 100.0 * r.fraction_of_cached, pk.peak.memory_gbps);
  else
    std::printf("  %-10s %10.1f %%        of the f32 FMA peak (peak %s)\n", "fraction", 100.0 * r.fraction,
                pk.source == "cache" ? "from the cache" : "measured now");
}

int RunBenchAttention(const BenchOptions& o) {
  const BenchShape s = ResolveShape(o);
  const int threads = ResolveThreads(o.threads);
  ThreadPool::SetDefaultThreads(threads);
  ThreadPool& pool = ThreadPool::Default();
  const PeakLookup peak = LookupPeak(pool, o);  // before the inputs exist: it allocates 1 GiB itself
  const BenchResult r = o.kv.empty() ? Measure(s, o, pool, peak.peak) : MeasurePaged(s, o, pool, peak.peak);
  if (o.json) std::printf("%s\n", BenchJson(s, o, threads, r, peak).dump().c_str());
  else PrintBenchTable(s, o, threads, r, peak);
  return kExitOk;
}

Command AddPeakCommand(CLI::App& bench) {
  auto o = std::make_shared<PeakCommandOptions>();
  CLI::App* cmd = bench.add_subcommand("peak", "Measure this machine's f32 FMA, bf16 dot and memory read peaks (and cache them).");
  cmd->add_option("--threads", o->threads, "threads measuring at once; 0 = every hardware thread (default)")->type_name("N");
  cmd->add_flag("--json", o->json, "print one JSON object instead of a table");
  cmd->add_flag("--quick", o->quick, "short trials and a 64 MiB array: rough, not cached (for tests)");
  cmd->add_option("--memory-mib", o->memory_mib, "size of the array read; default max(1 GiB, 2 x L3)")->type_name("MIB");
  cmd->footer("\nThe result is cached (see bench attention --help) unless --quick is given.\n");
  return {cmd, [o] { return RunPeak(*o); }};
}

Command AddAttentionBenchCommand(CLI::App& bench) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = bench.add_subcommand("attention", "Time the attention kernels on random inputs (--nq 1: decode) against this machine's peak.");
  cmd->add_option("--hq", o->hq, "query heads (default 32)");
  cmd->add_option("--hkv", o->hkv, "K and V heads (default 8)");
  cmd->add_option("--hk", o->hk, "K heads, if not --hkv");
  cmd->add_option("--hv", o->hv, "V heads, if not --hkv");
  cmd->add_option("--d", o->d, "head dimension of Q and K, and of V unless --dv (default 128)");
  cmd->add_option("--dv", o->dv, "head dimension of V, if not --d");
  cmd->add_option("--nq", o->nq, "query rows (default 4096; 1 = decode)");
  cmd->add_option("--nkv", o->nkv, "keys (default 4096)");
  cmd->add_flag("--causal", o->causal, "causal mask (halves the counted flops when n_q == n_kv)");
  cmd->add_option("--dtype", o->dtype, "element type of Q, K, V: f32, bf16 or f16 (default f32)")->type_name("TYPE");
  cmd->add_option("--threads", o->threads, "threads; 0 = every hardware thread (default)")->type_name("N");
  cmd->add_option("--repeats", o->repeats, "timed runs; the median is reported (default 5)");
  cmd->add_option("--warmup", o->warmup, "untimed runs first (default 1)");
  cmd->add_option("--seed", o->seed, "random input seed (default 1)");
  cmd->add_option("--kv-layout", o->kv_layout,
                  "K/V storage: head ([H, n_kv, d], a KV cache's layout; default for decode) or token "
                  "([n_kv, H, d]; default for prefill)")->type_name("LAYOUT");
  cmd->add_option("--kv", o->kv,
                  "decode over paged KV tiles (pages of 256 tokens) of this format: f32, bf16, f16, int8 or int4; "
                  "gbps counts the tiles' stored bytes, scales included")->type_name("FORMAT");
  cmd->add_flag("--json", o->json, "print one JSON object instead of a table");
  cmd->add_flag("--remeasure-peak", o->remeasure_peak, "measure the machine peak again and refresh the cache");
  cmd->add_flag("--quick-peak", o->quick_peak, "if the peak must be measured, measure it roughly and do not cache it");
  cmd->footer(
      "\ngflops = AttentionFlops / median seconds; gbps = bytes of K and V / median seconds.\n"
      "fraction_of_peak = gflops / f32 FMA peak for prefill, gbps / memory read peak for decode.\n"
      "The peak comes from a cache keyed by CPU model and threads: $QATTN_PEAK_CACHE, else\n"
      "$XDG_CACHE_HOME/qattn/peak.json, else ~/.cache/qattn/peak.json; it is measured on first use.\n");
  return {cmd, [o] { return RunBenchAttention(*o); }};
}

}  // namespace

std::vector<Command> AddBenchCommands(CLI::App& parent) {
  CLI::App* bench = parent.add_subcommand("bench", "Benchmarks: attention kernels, whole models, machine peak.");
  bench->require_subcommand(1);
  return {AddAttentionBenchCommand(*bench), AddPeakCommand(*bench), AddBenchModelCommand(*bench),
          AddBenchSparseCommand(*bench), AddBenchDecodeCommand(*bench)};
}

}  // namespace qattn
