// Measures what this machine can do at best, so benchmarks can report a fraction of peak:
//   f32 FMA throughput   AVX-512 (else AVX2+FMA, else scalar), many independent accumulator chains
//                        so FMA latency is hidden and only issue width limits the rate;
//   bf16 dot throughput  vdpbf16ps (AVX512-BF16) where the CPU has it;
//   memory read rate     streaming reads of an array far larger than the last-level cache.
// Every measurement runs on all threads of the given pool at once; the result is the aggregate rate.
// The SIMD loops are compiled with __attribute__((target(...))) and chosen at run time with
// qattn::DetectCpu(), so the binary still runs on CPUs without those instructions.
#pragma once
#include <cstddef>
#include <string>

#include "core/thread_pool.h"

namespace qattn {

struct PeakOptions {
  // Short trials and a 64 MiB array: well under a second, and rough. For tests.
  bool quick = false;
  size_t memory_bytes = 0;  // 0: max(1 GiB, 2 x L3), at most a quarter of physical memory
};

struct MachinePeak {
  std::string cpu_model;      // CpuModelName()
  int threads = 1;
  std::string f32_isa;        // "avx512", "avx2" or "scalar": the FMA loop that ran
  double f32_gflops = 0.0;    // 1e9 f32 flops/s, an FMA counted as 2
  double bf16_gflops = 0.0;   // 1e9 flops/s of vdpbf16ps (2 flops per bf16 product pair); 0 if absent
  double memory_gbps = 0.0;   // 1e9 bytes/s read
  size_t memory_bytes = 0;    // size of the array read
  bool quick = false;
  double measure_seconds = 0.0;  // wall time the whole measurement took
  // Other runnable tasks seen around the measurement (OtherRunningTasks): when above 0, other work
  // shared the machine and the memory bandwidth may read low.
  int other_running_tasks = 0;
};

MachinePeak MeasureMachinePeak(ThreadPool& pool, const PeakOptions& options = {});

// The pieces. Compute: the best of `trials` trials of about `seconds`, each thread's rate taken over
// its own CPU time (so other processes on the machine do not lower it) unless the pool has more
// threads than the machine. Memory: the best of many ~2 ms trials over `passes` passes of an array
// of `bytes`.
double MeasureF32FmaGflops(ThreadPool& pool, double seconds, int trials, std::string* isa = nullptr);
double MeasureBf16DotGflops(ThreadPool& pool, double seconds, int trials);  // 0 without AVX512-BF16
double MeasureMemoryReadGbps(ThreadPool& pool, size_t bytes, int passes);

// Times plain streaming reads of a given size from an array far larger than the caches, so a
// benchmark can interleave them with its own runs and compare like with like: same moment, same
// bytes, same statistic. Successive reads walk through the array, so none is served from cache.
class MemoryReadProbe {
 public:
  MemoryReadProbe(ThreadPool& pool, size_t read_bytes);
  ~MemoryReadProbe();
  MemoryReadProbe(const MemoryReadProbe&) = delete;
  MemoryReadProbe& operator=(const MemoryReadProbe&) = delete;
  // Seconds to read the next read_bytes on every thread of the pool.
  double ReadSeconds();
  size_t read_bytes() const { return read_bytes_; }

 private:
  ThreadPool& pool_;
  size_t read_bytes_, array_bytes_, offset_ = 0;
  char* data_ = nullptr;
};

// A description of the CPU precise enough to key cached measurements, e.g.
// "AMD EPYC (family 26, model 2, stepping 1)".
std::string CpuModelName();
// Runnable tasks on the machine besides the caller, from /proc/stat (the least of a few samples, so a
// passing blip does not count); 0 if unknown.
int OtherRunningTasks();
// The memory array size used when PeakOptions::memory_bytes is 0.
size_t DefaultPeakMemoryBytes(bool quick);

}  // namespace qattn
