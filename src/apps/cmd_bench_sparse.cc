// `qattn bench sparse`: one sparse prefill method against the core's dense kernel on the same inputs:
// selection and attention time, speedup, density, kept attention mass and output error.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "apps/cli_support.h"
#include "methods/sparse_prefill/harness.h"
#include "methods/sparse_prefill/inputs.h"

namespace qattn {
namespace {

struct BenchSparseOptions {
  std::string method = "flexprefill";
  int64_t n = 8192;
  int hq = 8, hkv = 2, d = 128;
  std::string input = "structured";  // random | structured | DIR (from qattn run --dump-qkv)
  int layer = 0;
  std::string dtype = "bf16";
  int threads = 0;
  int repeats = 3;
  uint64_t seed = 1;
  bool json = false;
  bool describe = false;
};

sparse::OwnedProblem MakeInput(const BenchSparseOptions& o, DType dtype) {
  if (o.n < 1 || o.hq < 1 || o.hkv < 1 || o.d < 16 || o.hq % o.hkv != 0) {
    throw UsageError("need --n >= 1, --d >= 16, and --hq a multiple of --hkv");
  }
  if (o.input == "random") return sparse::RandomProblem(o.n, o.hq, o.hkv, o.d, dtype, o.seed);
  if (o.input == "structured") return sparse::StructuredProblem(o.n, o.hq, o.hkv, o.d, dtype, o.seed);
  return sparse::LoadDumpedProblem(o.input, o.layer, dtype);
}

nlohmann::json ToJson(const sparse::SparseReport& r, const sparse::OwnedProblem& in, const BenchSparseOptions& o,
                      int threads) {
  return {{"method", r.method}, {"granularity", r.granularity}, {"n", r.n},
          {"hq", in.problem.num_q_heads()}, {"hkv", in.problem.num_kv_heads()}, {"d", in.problem.head_dim()},
          {"dtype", o.dtype}, {"input", in.description}, {"threads", threads},
          {"select_seconds", r.select_seconds}, {"attend_seconds", r.attend_seconds},
          {"dense_seconds", r.dense_seconds}, {"speedup", r.speedup}, {"density", r.density},
          {"mean_kept_mass", r.mean_kept_mass}, {"min_kept_mass", r.min_kept_mass},
          {"output_rel_error", r.output_rel_error}, {"head_kept_mass", r.head_mass}};
}

int Run(const BenchSparseOptions& o) {
  DType dtype;
  if (!ParseDType(o.dtype, &dtype) || dtype == DType::kF16) throw UsageError("--dtype must be f32 or bf16");
  if (o.repeats < 1) throw UsageError("--repeats must be at least 1");
  std::unique_ptr<sparse::SparsePrefillMethod> method;
  try {
    method = sparse::MakeSparseMethod(o.method);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--method: ") + e.what());
  }
  ThreadPool::SetDefaultThreads(ResolveThreads(o.threads));
  ThreadPool& pool = ThreadPool::Default();
  std::fprintf(stderr, "preparing %s input ...\n", o.input.c_str());
  const sparse::OwnedProblem in = MakeInput(o, dtype);
  std::fprintf(stderr, "dense baseline (n %lld) ...\n", (long long)in.problem.n());
  // One untimed dense run for the fidelity metrics; Measure times dense runs paired with the method's.
  const sparse::DenseBaseline dense = sparse::RunDense(in.problem, &pool, 1);
  if (o.describe) {
    const sparse::InputStatistics st = sparse::DescribeInput(in.problem, dense, &pool);
    std::printf("%s, n %lld: mean dense attention mass per head\nhead   sink(block 0)  local(4 blocks)  far\n",
                in.description.c_str(), (long long)in.problem.n());
    for (size_t h = 0; h < st.sink.size(); ++h) {
      std::printf("%4zu   %12.3f  %15.3f  %6.3f\n", h, st.sink[h], st.local[h], st.far[h]);
    }
    return kExitOk;
  }
  std::fprintf(stderr, "%s ...\n", method->name().c_str());
  const sparse::SparseReport r = sparse::Measure(*method, in.problem, dense, &pool, o.repeats, /*paired_dense=*/true);
  if (o.json) {
    std::printf("%s\n", ToJson(r, in, o, pool.num_threads()).dump().c_str());
    return kExitOk;
  }
  std::printf("qattn bench sparse: %s (%s)\n", r.method.c_str(), r.granularity.c_str());
  std::printf("  input      %s; n %lld, heads %d/%d, d %d, %s, %d threads\n", in.description.c_str(),
              (long long)r.n, in.problem.num_q_heads(), in.problem.num_kv_heads(), in.problem.head_dim(),
              o.dtype.c_str(), pool.num_threads());
  std::printf("  time       select %.4f s + attend %.4f s vs dense %.4f s: speedup %.2fx\n", r.select_seconds,
              r.attend_seconds, r.dense_seconds, r.speedup);
  std::printf("  density    %.4f of causal pairs\n", r.density);
  std::printf("  kept mass  mean %.4f, min head %.4f\n", r.mean_kept_mass, r.min_kept_mass);
  std::printf("  error      %.3e relative (Frobenius) to dense\n", r.output_rel_error);
  return kExitOk;
}

}  // namespace

Command AddBenchSparseCommand(CLI::App& bench) {
  auto o = std::make_shared<BenchSparseOptions>();
  CLI::App* cmd = bench.add_subcommand("sparse", "a sparse prefill method against dense: speed and fidelity");
  std::string names;
  for (const sparse::MethodInfo& m : sparse::SparseMethods()) names += (names.empty() ? "" : ", ") + m.name;
  cmd->add_option("--method", o->method, "NAME[:k=v,...] (" + names + "; default flexprefill)")->type_name("SPEC");
  cmd->add_option("--n", o->n, "sequence length (default 8192)");
  cmd->add_option("--hq", o->hq, "query heads (default 8)");
  cmd->add_option("--hkv", o->hkv, "KV heads (default 2)");
  cmd->add_option("--d", o->d, "head dimension (default 128)");
  cmd->add_option("--input", o->input, "random, structured (default) or a directory from qattn run --dump-qkv")->type_name("KIND");
  cmd->add_option("--layer", o->layer, "layer to load from a dump directory (default 0)");
  cmd->add_option("--dtype", o->dtype, "f32 or bf16 (default bf16)");
  cmd->add_option("--threads", o->threads, "threads; 0 = every hardware thread (default)");
  cmd->add_option("--repeats", o->repeats,
                  "timed runs of the method, each right after a timed dense run; medians are reported, and the "
                  "speedup is the median of the per-pair ratios (default 3)");
  cmd->add_option("--seed", o->seed, "input seed (default 1)");
  cmd->add_flag("--json", o->json, "print one JSON object");
  cmd->add_flag("--describe-input", o->describe, "print where each head's dense attention mass lies, then stop");
  return {cmd, [o] { return Run(*o); }};
}

}  // namespace qattn
