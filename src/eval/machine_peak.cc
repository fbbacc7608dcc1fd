#include "eval/machine_peak.h"

#include <immintrin.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <new>
#include <thread>
#include <vector>

#include "core/cpu_features.h"
#include "eval/timing.h"

namespace qattn {
namespace {

// Horizontal sums through memory: GCC 12's _mm512_reduce_* trip -Wuninitialized false positives.
__attribute__((target("avx512f"))) float SumLanes(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0;
  for (float x : lanes) s += x;
  return s;
}

// ---- compute loops: each runs `iters` rounds over independent accumulator chains ----
// The result is returned (and summed by the caller) so the compiler cannot drop the work.

// 16 chains x 16 lanes: with 2 FMA pipes of latency 4, 8 chains would do; 16 covers longer
// latencies and leaves 14 of the 32 zmm registers free.
constexpr int kAvx512Chains = 16;
constexpr double kFmaAvx512FlopsPerIter = kAvx512Chains * 16 * 2;

__attribute__((target("avx512f"))) float FmaLoopAvx512(int64_t iters, float seed) {
  __m512 acc[kAvx512Chains];
  for (int c = 0; c < kAvx512Chains; ++c) acc[c] = _mm512_set1_ps(seed + float(c));
  // acc = acc * a + b converges instead of overflowing, however long it runs.
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kAvx512Chains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
  }
  __m512 sum = acc[0];
  for (int c = 1; c < kAvx512Chains; ++c) sum = _mm512_add_ps(sum, acc[c]);
  return SumLanes(sum);
}

// 12 chains: AVX2 has only 16 ymm registers; 12 + 2 constants fit, and cover latency 5 x 2 pipes.
constexpr int kAvx2Chains = 12;
constexpr double kFmaAvx2FlopsPerIter = kAvx2Chains * 8 * 2;

__attribute__((target("avx2,fma"))) float FmaLoopAvx2(int64_t iters, float seed) {
  __m256 acc[kAvx2Chains];
  for (int c = 0; c < kAvx2Chains; ++c) acc[c] = _mm256_set1_ps(seed + float(c));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-6f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kAvx2Chains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
  }
  __m256 sum = acc[0];
  for (int c = 1; c < kAvx2Chains; ++c) sum = _mm256_add_ps(sum, acc[c]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float s = 0;
  for (float x : lanes) s += x;
  return s;
}

// Fallback for CPUs without AVX2: a multiply and an add per chain step (2 flops, unfused).
constexpr int kScalarChains = 8;
constexpr double kScalarFlopsPerIter = kScalarChains * 2;

float MulAddLoopScalar(int64_t iters, float seed) {
  float acc[kScalarChains];
  for (int c = 0; c < kScalarChains; ++c) acc[c] = seed + float(c);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 8
    for (int c = 0; c < kScalarChains; ++c) acc[c] = acc[c] * 0.999999f + 1e-6f;
  }
  float s = 0;
  for (float x : acc) s += x;
  return s;
}

// vdpbf16ps: per lane, two bf16 products summed into an f32 accumulator (4 flops per lane).
constexpr int kBf16Chains = 16;
constexpr double kBf16FlopsPerIter = kBf16Chains * 16 * 4;

__attribute__((target("avx512f,avx512bf16"))) float DotLoopBf16(int64_t iters, float seed) {
  __m512 acc[kBf16Chains];
  for (int c = 0; c < kBf16Chains; ++c) acc[c] = _mm512_set1_ps(seed + float(c));
  // 2^-7 in bf16: products of 2^-14 grow the sums slowly enough to stay finite.
  const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3c00);
  const __m512bh y = (__m512bh)_mm512_set1_epi16(0x3c00);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kBf16Chains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], x, y);
  }
  __m512 sum = acc[0];
  for (int c = 1; c < kBf16Chains; ++c) sum = _mm512_add_ps(sum, acc[c]);
  return SumLanes(sum);
}

using ComputeLoop = float (*)(int64_t iters, float seed);

double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// One run of a compute loop on every thread: wall time from the common start to the last finish,
// and each thread's own CPU time.
struct ComputeTrial {
  double wall = 0;
  std::vector<double> cpu;  // [threads] seconds
};

// Runs loop(iters) on every thread of the pool at the same moment. A spin barrier holds each item
// until all have started, so no thread can take two items and serialise them.
ComputeTrial RunComputeTrial(ThreadPool& pool, ComputeLoop loop, int64_t iters) {
  const int n = pool.num_threads();
  std::atomic<int> arrived{0};
  std::vector<double> start(n), end(n);  // [threads] wall seconds
  ComputeTrial trial;
  trial.cpu.resize(n);
  std::atomic<float> sink{0};
  pool.ParallelFor(n, [&](int64_t item, int) {
    arrived.fetch_add(1);
    while (arrived.load() < n) _mm_pause();
    start[item] = NowSeconds();
    const double cpu0 = ThreadCpuSeconds();
    const float r = loop(iters, float(item));
    trial.cpu[item] = ThreadCpuSeconds() - cpu0;
    end[item] = NowSeconds();
    sink.store(r);
  });
  trial.wall = *std::max_element(end.begin(), end.end()) - *std::min_element(start.begin(), start.end());
  return trial;
}

// Aggregate flops per second of a trial. With no more threads than hardware threads, each thread's
// rate is taken over its own CPU time: time other processes held its core is left out, so a busy
// machine still yields its peak. Oversubscribed, CPU time would overstate it; wall time is used.
double TrialRate(const ComputeTrial& t, int64_t iters, double flops_per_iter) {
  const double work = double(iters) * flops_per_iter;  // per thread
  if (t.cpu.size() > std::max(1u, std::thread::hardware_concurrency())) return double(t.cpu.size()) * work / t.wall;
  double rate = 0;
  for (double c : t.cpu) rate += work / std::max(c, 1e-9);
  return rate;
}

// Best rate over `trials` trials of about `seconds` each, after calibrating the iteration count.
double MeasureComputeGflops(ThreadPool& pool, ComputeLoop loop, double flops_per_iter, double seconds,
                            int trials) {
  int64_t iters = 1 << 14;
  double t = RunComputeTrial(pool, loop, iters).wall;
  // Grow until a trial is long enough to time well, then scale to the target length.
  while (t < 0.01) {
    iters *= 4;
    t = RunComputeTrial(pool, loop, iters).wall;
  }
  iters = std::max<int64_t>(1, int64_t(double(iters) * seconds / t));
  double best = 0;
  for (int i = 0; i < std::max(trials, 1); ++i) {
    best = std::max(best, TrialRate(RunComputeTrial(pool, loop, iters), iters, flops_per_iter) / 1e9);
  }
  return best;
}

// ---- memory read loops: xor every 64-bit word into a few accumulators ----
// xor is a 1-cycle op, so the loops are limited by loads, i.e. by memory.

__attribute__((target("avx512f"))) uint64_t ReadAvx512(const char* p, size_t bytes) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 256 <= bytes; i += 256) {
    a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + i));
    a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + i + 64));
    a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + i + 128));
    a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + i + 192));
  }
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)));
  uint64_t r = 0;
  for (uint64_t x : lanes) r ^= x;
  return r;
}

__attribute__((target("avx2"))) uint64_t ReadAvx2(const char* p, size_t bytes) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 128 <= bytes; i += 128) {
    a0 = _mm256_xor_si256(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_xor_si256(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    a2 = _mm256_xor_si256(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    a3 = _mm256_xor_si256(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3)));
  return lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
}

uint64_t ReadScalar(const char* p, size_t bytes) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  for (size_t i = 0; i + 4 <= bytes / 8; i += 4) {
    a0 ^= w[i];
    a1 ^= w[i + 1];
    a2 ^= w[i + 2];
    a3 ^= w[i + 3];
  }
  return a0 ^ a1 ^ a2 ^ a3;
}

using ReadLoop = uint64_t (*)(const char* p, size_t bytes);

ReadLoop PickReadLoop() {
  const CpuFeatures& f = DetectCpu();
  return f.avx512 ? ReadAvx512 : f.avx2_fma ? ReadAvx2 : ReadScalar;
}

// Chunks small enough to balance across threads, large enough that hand-out costs nothing.
constexpr size_t kReadChunk = size_t(1) << 20;
// One timed trial reads one slice: about 2 ms at this class of bandwidth, short enough that on a
// shared machine some trials run with every thread on a core, long enough to dwarf the start-up of
// a ParallelFor. Successive trials read successive slices, so no trial finds its data in cache.
constexpr size_t kReadSlice = size_t(128) << 20;

double RunReadTrial(ThreadPool& pool, ReadLoop loop, const char* data, size_t bytes) {
  const int64_t chunks = int64_t(bytes / kReadChunk);
  std::atomic<uint64_t> sink{0};
  const double t0 = NowSeconds();
  pool.ParallelFor(chunks, [&](int64_t c, int) {
    sink.fetch_xor(loop(data + size_t(c) * kReadChunk, kReadChunk), std::memory_order_relaxed);
  });
  return NowSeconds() - t0;
}

// The array read by the bandwidth test: anonymous memory asking for transparent huge pages (fewer
// page faults and TLB misses), first touched by every thread in parallel because page faults, not
// bandwidth, dominate set-up time (about 1 s per 256 MiB single-threaded in some VMs).
class ReadArray {
 public:
  ReadArray(ThreadPool& pool, size_t bytes) : bytes_(bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    data_ = static_cast<char*>(p);
    madvise(data_, bytes, MADV_HUGEPAGE);  // advice only; fine if THP is off
    pool.ParallelFor(int64_t(bytes / kReadChunk), [&](int64_t c, int) {
      std::memset(data_ + size_t(c) * kReadChunk, int(c & 0xff), kReadChunk);
    });
  }
  ~ReadArray() { munmap(data_, bytes_); }
  ReadArray(const ReadArray&) = delete;
  ReadArray& operator=(const ReadArray&) = delete;
  const char* data() const { return data_; }

 private:
  char* data_ = nullptr;
  size_t bytes_;
};

size_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? size_t(pages) * size_t(page) : size_t(0);
}

std::map<std::string, std::string> CpuInfoFields() {
  std::map<std::string, std::string> fields;
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line) && !line.empty()) {  // the first processor's block only
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    key.erase(key.find_last_not_of(" \t") + 1);
    const size_t v = line.find_first_not_of(" \t", colon + 1);
    fields[key] = v == std::string::npos ? "" : line.substr(v);
  }
  return fields;
}

int ProcsRunning() {
  std::ifstream in("/proc/stat");
  std::string key;
  long value;
  while (in >> key) {
    if (key == "procs_running" && in >> value) return int(value);
    in.ignore(1 << 20, '\n');
  }
  return -1;
}

}  // namespace

int OtherRunningTasks() {
  int least = -1;
  for (int i = 0; i < 5; ++i) {
    const int n = ProcsRunning();
    if (n >= 0 && (least < 0 || n < least)) least = n;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return least > 1 ? least - 1 : 0;  // procs_running counts the calling thread
}

std::string CpuModelName() {
  auto f = CpuInfoFields();
  std::string name = f.count("model name") ? f["model name"] : "unknown CPU";
  // Virtual machines often hide the full brand string; family/model/stepping still tell CPUs apart.
  if (f.count("cpu family") && f.count("model") && f.count("stepping")) {
    name += " (family " + f["cpu family"] + ", model " + f["model"] + ", stepping " + f["stepping"] + ")";
  }
  return name;
}

size_t DefaultPeakMemoryBytes(bool quick) {
  // Quick: 64 MiB still dwarfs per-core caches; the result is rough, as documented.
  if (quick) return size_t(64) << 20;
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  size_t bytes = std::max(size_t(1) << 30, l3 > 0 ? 2 * size_t(l3) : size_t(0));
  const size_t phys = PhysicalMemoryBytes();
  if (phys) bytes = std::min(bytes, phys / 4);
  return std::max(bytes, kReadChunk);
}

double MeasureF32FmaGflops(ThreadPool& pool, double seconds, int trials, std::string* isa) {
  const CpuFeatures& f = DetectCpu();
  if (f.avx512) {
    if (isa) *isa = "avx512";
    return MeasureComputeGflops(pool, FmaLoopAvx512, kFmaAvx512FlopsPerIter, seconds, trials);
  }
  if (f.avx2_fma) {
    if (isa) *isa = "avx2";
    return MeasureComputeGflops(pool, FmaLoopAvx2, kFmaAvx2FlopsPerIter, seconds, trials);
  }
  if (isa) *isa = "scalar";
  return MeasureComputeGflops(pool, MulAddLoopScalar, kScalarFlopsPerIter, seconds, trials);
}

double MeasureBf16DotGflops(ThreadPool& pool, double seconds, int trials) {
  if (!DetectCpu().avx512_bf16) return 0.0;
  return MeasureComputeGflops(pool, DotLoopBf16, kBf16FlopsPerIter, seconds, trials);
}

double MeasureMemoryReadGbps(ThreadPool& pool, size_t bytes, int passes) {
  bytes = std::max(bytes / kReadChunk, size_t(1)) * kReadChunk;
  const ReadArray array(pool, bytes);
  const ReadLoop loop = PickReadLoop();
  RunReadTrial(pool, loop, array.data(), bytes);  // warm-up: TLB, prefetchers, thread wake-up
  const size_t slice = std::min(bytes, kReadSlice);
  const size_t slices = bytes / slice;
  double best = 0;
  for (size_t i = 0; i < size_t(std::max(passes, 1)) * slices; ++i) {
    const char* data = array.data() + (i % slices) * slice;
    best = std::max(best, double(slice) / RunReadTrial(pool, loop, data, slice) / 1e9);
  }
  return best;
}

MemoryReadProbe::MemoryReadProbe(ThreadPool& pool, size_t read_bytes) : pool_(pool) {
  read_bytes_ = std::max(read_bytes / kReadChunk, size_t(1)) * kReadChunk;
  // At least 4 reads' worth and 512 MiB, so the next read is never still in the last-level cache.
  array_bytes_ = std::max(4 * read_bytes_, size_t(512) << 20) / read_bytes_ * read_bytes_;
  void* p = mmap(nullptr, array_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  data_ = static_cast<char*>(p);
  madvise(data_, array_bytes_, MADV_HUGEPAGE);
  pool.ParallelFor(int64_t(array_bytes_ / kReadChunk), [&](int64_t c, int) {
    std::memset(data_ + size_t(c) * kReadChunk, int(c & 0xff), kReadChunk);
  });
}

MemoryReadProbe::~MemoryReadProbe() { munmap(data_, array_bytes_); }

double MemoryReadProbe::ReadSeconds() {
  const double seconds = RunReadTrial(pool_, PickReadLoop(), data_ + offset_, read_bytes_);
  offset_ = (offset_ + read_bytes_) % array_bytes_;
  return seconds;
}

MachinePeak MeasureMachinePeak(ThreadPool& pool, const PeakOptions& options) {
  const int busy_before = OtherRunningTasks();
  const double t0 = NowSeconds();
  MachinePeak p;
  p.cpu_model = CpuModelName();
  p.threads = pool.num_threads();
  p.quick = options.quick;
  const double trial_seconds = options.quick ? 0.01 : 0.02;
  const int trials = options.quick ? 3 : 20;
  p.f32_gflops = MeasureF32FmaGflops(pool, trial_seconds, trials, &p.f32_isa);
  p.bf16_gflops = MeasureBf16DotGflops(pool, trial_seconds, trials);
  const size_t bytes = options.memory_bytes ? options.memory_bytes : DefaultPeakMemoryBytes(options.quick);
  p.memory_bytes = std::max(bytes / kReadChunk, size_t(1)) * kReadChunk;  // as MeasureMemoryReadGbps reads it
  p.memory_gbps = MeasureMemoryReadGbps(pool, p.memory_bytes, options.quick ? 3 : 4);
  p.measure_seconds = NowSeconds() - t0;
  p.other_running_tasks = std::max(busy_before, OtherRunningTasks());
  return p;
}

}  // namespace qattn
