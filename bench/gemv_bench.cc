// Google Benchmark of decode's one-row projections (Linear::Forward with one row) at
// Qwen2.5-0.5B's shapes, bf16 weights, on every hardware thread. Runs cycle through copies of the
// matrix so that the weights come from memory, as in decode, where a token streams every layer's
// weights once.
//
// Reported: bytes_per_second (weight bytes streamed per second).
//   build/bench/gemv_bench                      # vdpbf16ps where the CPU has it
//   QATTN_ISA=avx512 build/bench/gemv_bench     # the widening Highway kernel, for comparison
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "model/gguf.h"
#include "model/runtime/linear.h"

namespace qattn::model {
namespace {

struct GemvShape {
  const char* name;
  int out, in;
};

// One layer's projections (q, k and v stacked; gate and up stacked) and the output layer.
const GemvShape kShapes[] = {
    {"qkv", 1152, 896}, {"o", 896, 896}, {"gate_up", 9728, 896}, {"down", 896, 4864}, {"lm_head", 151936, 896},
};

Linear MakeLinear(int out, int in) {
  std::vector<float> w(size_t(out) * in);  // [out, in]
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  for (float& v : w) v = normal(rng);
  GgufWriter writer;
  writer.SetString("general.architecture", "bench");
  writer.AddTensorF32("w", {uint64_t(in), uint64_t(out)}, w.data(), GgmlType::kBF16);
  const GgufFile file = GgufFile::FromBytes(writer.Serialize(), "gemv_bench");
  return Linear::FromTensors(file, {&file.RequireTensor("w")});
}

void BM_Gemv(benchmark::State& state, GemvShape shape) {
  // Enough copies of the matrix to cycle through 64 MiB, so that no run finds its weights in cache
  // (L3 here is 32 MiB) and the pool's threads stay as busy as in a decode step.
  const uint64_t bytes = uint64_t(shape.out) * shape.in * 2;
  const int copies = int(std::max<uint64_t>(1, ((64ull << 20) + bytes - 1) / bytes));
  std::vector<Linear> linears;
  for (int c = 0; c < copies; ++c) linears.push_back(MakeLinear(shape.out, shape.in));
  std::vector<float> x(shape.in, 0.25f), y(shape.out);  // [in], [out]
  ThreadPool& pool = ThreadPool::Default();
  size_t next = 0;
  for (auto _ : state) {
    linears[next++ % linears.size()].Forward(x.data(), 1, y.data(), &pool);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(bytes));
}

void RegisterAll() {
  for (const GemvShape& s : kShapes)
    benchmark::RegisterBenchmark((std::string("gemv_bf16/") + s.name + "/" + std::to_string(s.out) + "x" +
                                  std::to_string(s.in)).c_str(),
                                 BM_Gemv, s)
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
}

}  // namespace
}  // namespace qattn::model

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  qattn::model::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
