// `qattn report sparse`: every sparse prefill method (and its budget sweep) on one input, written as a
// self-contained HTML page with a speed-versus-fidelity plot and heatmaps of the chosen blocks.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "apps/cli_support.h"
#include "methods/sparse_prefill/inputs.h"
#include "methods/sparse_prefill/report_html.h"

namespace qattn {
namespace {

struct ReportOptions {
  std::string out_dir;
  int64_t n = 8192;
  int hq = 8, hkv = 2, d = 128;
  std::string input = "structured";
  int layer = 0;
  int threads = 0;
  int repeats = 1;
  std::string methods;  // "spec;spec;..."; empty: every method with its budget sweep
};

std::vector<std::string> MethodSpecs(const ReportOptions& o) {
  std::vector<std::string> specs;
  if (!o.methods.empty()) {
    std::stringstream in(o.methods);
    for (std::string spec; std::getline(in, spec, ';');) {
      if (!spec.empty()) specs.push_back(spec);
    }
    return specs;
  }
  for (const sparse::MethodInfo& m : sparse::SparseMethods()) {
    if (m.name == "dense_blocks") continue;  // equals dense by construction
    if (m.budgets.empty()) specs.push_back(m.name);
    for (const std::string& b : m.budgets) specs.push_back(m.name + ":" + b);
  }
  return specs;
}

sparse::OwnedProblem ReportInputProblem(const ReportOptions& o) {
  if (o.input == "random") return sparse::RandomProblem(o.n, o.hq, o.hkv, o.d, DType::kBF16, 1);
  if (o.input == "structured") return sparse::StructuredProblem(o.n, o.hq, o.hkv, o.d, DType::kBF16, 1);
  return sparse::LoadDumpedProblem(o.input, o.layer, DType::kBF16);
}

int Run(const ReportOptions& o) {
  if (o.out_dir.empty()) throw UsageError("-o DIR is required");
  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  if (ec) throw UsageError("-o: cannot create '" + o.out_dir + "': " + ec.message());
  std::vector<std::unique_ptr<sparse::SparsePrefillMethod>> methods;
  for (const std::string& spec : MethodSpecs(o)) {
    try {
      methods.push_back(sparse::MakeSparseMethod(spec));
    } catch (const std::invalid_argument& e) {
      throw UsageError(std::string("--methods: ") + e.what());
    }
  }
  ThreadPool::SetDefaultThreads(ResolveThreads(o.threads));
  ThreadPool& pool = ThreadPool::Default();
  const sparse::OwnedProblem in = ReportInputProblem(o);
  std::fprintf(stderr, "dense baseline ...\n");
  const sparse::DenseBaseline dense = sparse::RunDense(in.problem, &pool, o.repeats);
  std::vector<sparse::SparseReport> reports;
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < methods.size(); ++i) {
    std::fprintf(stderr, "[%zu/%zu] %s\n", i + 1, methods.size(), methods[i]->name().c_str());
    reports.push_back(sparse::Measure(*methods[i], in.problem, dense, &pool, o.repeats));
    const sparse::SparseReport& r = reports.back();
    rows.push_back({{"method", r.method}, {"speedup", r.speedup}, {"density", r.density},
                    {"mean_kept_mass", r.mean_kept_mass}, {"min_kept_mass", r.min_kept_mass},
                    {"output_rel_error", r.output_rel_error}, {"select_seconds", r.select_seconds},
                    {"attend_seconds", r.attend_seconds}, {"dense_seconds", r.dense_seconds}});
  }
  sparse::ReportInput info;
  info.description = in.description;
  info.shape = "n " + std::to_string(in.problem.n()) + ", heads " + std::to_string(in.problem.num_q_heads()) + "/" +
               std::to_string(in.problem.num_kv_heads()) + ", d " + std::to_string(in.problem.head_dim()) +
               ", bf16, " + std::to_string(pool.num_threads()) + " threads";
  info.command = "qattn report sparse -o " + o.out_dir + " --n " + std::to_string(o.n) + " --input " + o.input;
  const std::string page = o.out_dir + "/index.html";
  std::ofstream(page) << sparse::SparseReportHtml(info, reports);
  std::ofstream(o.out_dir + "/results.json") << rows.dump(1) << "\n";
  std::printf("wrote %s and %s/results.json (%zu runs)\n", page.c_str(), o.out_dir.c_str(), reports.size());
  return kExitOk;
}

}  // namespace

std::vector<Command> AddReportCommands(CLI::App& parent) {
  CLI::App* report = parent.add_subcommand("report", "HTML reports comparing methods");
  report->require_subcommand(1);
  auto o = std::make_shared<ReportOptions>();
  CLI::App* cmd = report->add_subcommand("sparse", "every sparse prefill method and budget on one input");
  cmd->add_option("-o,--out", o->out_dir, "output directory (index.html, results.json)")->type_name("DIR");
  cmd->add_option("--n", o->n, "sequence length (default 8192)");
  cmd->add_option("--hq", o->hq, "query heads (default 8)");
  cmd->add_option("--hkv", o->hkv, "KV heads (default 2)");
  cmd->add_option("--d", o->d, "head dimension (default 128)");
  cmd->add_option("--input", o->input, "random, structured (default) or a --dump-qkv directory")->type_name("KIND");
  cmd->add_option("--layer", o->layer, "layer of a dump directory (default 0)");
  cmd->add_option("--methods", o->methods, "method specs separated by ';' (default: every method and budget)")->type_name("SPECS");
  cmd->add_option("--threads", o->threads, "threads; 0 = all (default)");
  cmd->add_option("--repeats", o->repeats, "timed runs per method (default 1)");
  return {{cmd, [o] { return Run(*o); }}};
}

}  // namespace qattn
