// Google Benchmark microbenchmarks of the attention kernels: prefill and decode at a few standard
// shapes and dtypes, on every hardware thread (the kernels' default pool).
//
// Reported per benchmark: bytes_per_second (K and V bytes, the data a decode step must stream),
// items_per_second (query rows) and GFLOP/s (qattn::AttentionFlops per second).
//   build/bench/attention_bench --benchmark_filter=decode
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"

namespace qattn {
namespace {

struct Shape {
  int64_t n_q, n_kv;
  int h_q, h_kv, d;
  bool causal;
  DType dtype;

  bool decode() const { return n_q == 1; }
  std::string Name() const {
    return std::string(decode() ? "decode" : causal ? "prefill_causal" : "prefill") + "/" +
           std::string(DTypeName(dtype)) + "/hq" + std::to_string(h_q) + "_hkv" + std::to_string(h_kv) + "_d" +
           std::to_string(d) + "/nq" + std::to_string(n_q) + "_nkv" + std::to_string(n_kv);
  }
};

const Shape kShapes[] = {
    {1024, 1024, 32, 8, 128, true, DType::kF32},
    {1024, 1024, 32, 8, 128, true, DType::kBF16},
    {2048, 2048, 32, 8, 128, true, DType::kBF16},
    {512, 2048, 32, 8, 128, false, DType::kBF16},
    {1024, 1024, 16, 16, 64, true, DType::kF16},
    {1, 4096, 32, 8, 128, true, DType::kF32},
    {1, 4096, 32, 8, 128, true, DType::kBF16},
    {1, 32768, 32, 8, 128, true, DType::kBF16},
    {1, 32768, 32, 32, 128, true, DType::kBF16},
    {1, 32768, 32, 4, 128, true, DType::kBF16},
};

void FillRandom(const Tensor& t, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> f(size_t(t.numel()));  // [numel] f32 staging
  for (float& x : f) x = dist(rng);
  ConvertFromF32(f.data(), t.view().data, t.view().dtype, f.size());
}

void BM_Attention(benchmark::State& state, Shape s) {
  Tensor q(s.dtype, {s.n_q, s.h_q, s.d});         // [n_q, H_q, d]
  Tensor k(s.dtype, {s.n_kv, s.h_kv, s.d});       // [n_kv, H_kv, d]
  Tensor v(s.dtype, {s.n_kv, s.h_kv, s.d});       // [n_kv, H_kv, d]
  Tensor out(DType::kF32, {s.n_q, s.h_q, s.d});   // [n_q, H_q, d]
  std::vector<float> lse(size_t(s.n_q * s.h_q));  // [n_q, H_q]
  FillRandom(q, 1);
  FillRandom(k, 2);
  FillRandom(v, 3);
  ThreadPool* pool = &ThreadPool::Default();
  AttentionVariant variant;
  variant.causal = s.causal;

  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    if (s.decode()) {
      DecodeArgs a;
      a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view(), a.lse = lse.data(), a.variant = variant;
      AttendDecode(a, pool);
    } else {
      PrefillArgs a;
      a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view(), a.lse = lse.data(), a.variant = variant;
      AttendPrefill(a, pool);
    }
    benchmark::DoNotOptimize(out.data<float>());
    benchmark::ClobberMemory();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double kv_bytes = 2.0 * double(s.n_kv) * s.h_kv * s.d * double(DTypeSize(s.dtype));
  const double flops = AttentionFlops(s.n_q, s.n_kv, s.h_q, s.d, s.d, s.causal);
  state.SetBytesProcessed(int64_t(kv_bytes) * state.iterations());
  state.SetItemsProcessed(s.n_q * state.iterations());
  // A plain value rather than a kIsRate counter, which would print as "GFLOP/s=.../s".
  state.counters["GFLOP/s"] = flops * double(state.iterations()) / seconds / 1e9;
  state.counters["threads"] = pool->num_threads();
}

}  // namespace
}  // namespace qattn

int main(int argc, char** argv) {
  for (const qattn::Shape& s : qattn::kShapes) {
    // Real time: the kernels run on a thread pool, so the main thread's CPU time would mislead.
    benchmark::RegisterBenchmark(s.Name().c_str(), qattn::BM_Attention, s)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
