// `qattn bench model`: prefill and decode speed of a whole model at a given prompt length.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "apps/cli_support.h"
#include "apps/loaded_model.h"
#include "model/runtime/generate.h"

namespace qattn {
namespace {

struct BenchModelOptions {
  ModelOptions model;
  RuntimeOptions runtime;
  int prompt_len = 512;
  int gen = 64;
  int64_t seed = 1;
  bool json = false;
};

// Peak resident memory of this process (VmHWM), in bytes; 0 if unknown.
uint64_t PeakResidentBytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  uint64_t kib = 0;
  while (status >> key) {
    if (key == "VmHWM:") {
      status >> kib;
      return kib * 1024;
    }
    status.ignore(1 << 20, '\n');
  }
  return 0;
}

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int Run(BenchModelOptions& o) {
  if (o.prompt_len < 1 || o.gen < 1) throw UsageError("--prompt-len and --gen must be at least 1");
  ThreadPool* pool = o.runtime.StartThreads();
  std::fprintf(stderr, "loading %s\n", o.model.ResolvedPath().c_str());
  LoadedModel m = LoadModel(o.model);
  const model::Transformer& t = *m.transformer;
  const model::ModelConfig& c = t.config();
  if (o.runtime.ctx == 0) o.runtime.ctx = o.prompt_len + o.gen;
  model::KvCache cache(c, o.runtime.ContextFor(c), o.runtime.KvDtypeFor(t));
  if (cache.capacity() < o.prompt_len + o.gen) throw UsageError("--ctx is smaller than --prompt-len + --gen");
  auto attention = o.runtime.MakeAttention();

  std::mt19937_64 rng(uint64_t(o.seed));  // random prompt tokens: speed does not depend on the text
  std::vector<int32_t> prompt(o.prompt_len);
  for (int32_t& id : prompt) id = int32_t(rng() % uint64_t(c.n_vocab));
  std::vector<float> logits(c.n_vocab);  // [n_vocab]
  std::fprintf(stderr, "prefill %d tokens ...\n", o.prompt_len);
  double t0 = Now();
  model::Prefill(t, cache, *attention, prompt, o.runtime.batch, logits.data(), pool);
  const double prefill_s = Now() - t0;
  std::fprintf(stderr, "decode %d tokens ...\n", o.gen);
  t0 = Now();
  for (int i = 0; i < o.gen; ++i) {
    const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    t.Forward(&next, 1, cache, *attention, model::LogitRows::kLast, logits.data(), pool);
  }
  const double decode_s = Now() - t0;
  const nlohmann::json j = {
      {"model", o.model.ResolvedPath()}, {"config", c.Describe()}, {"threads", pool->num_threads()},
      {"weight_dtype", std::string(DTypeName(t.weight_dtype()))}, {"kv_dtype", cache.storage().Name()},
      {"prompt_len", o.prompt_len}, {"gen", o.gen},
      {"prefill_seconds", prefill_s}, {"prefill_tokens_per_second", o.prompt_len / prefill_s},
      {"decode_seconds", decode_s}, {"decode_tokens_per_second", o.gen / decode_s},
      {"weight_bytes", t.weight_bytes()}, {"kv_bytes_per_token", cache.BytesPerToken()},
      {"peak_memory_bytes", PeakResidentBytes()}, {"attention", attention->name()}};
  if (o.json) {
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  std::printf("%s\n", c.Describe().c_str());
  std::printf("weights %s, %.1f MiB; KV cache %s, %llu bytes per token\n", DTypeName(t.weight_dtype()).data(),
              t.weight_bytes() / 1048576.0, cache.storage().Name().c_str(), (unsigned long long)cache.BytesPerToken());
  std::printf("prefill %6d tokens  %8.3f s  %9.1f tokens/s\n", o.prompt_len, prefill_s, o.prompt_len / prefill_s);
  std::printf("decode  %6d tokens  %8.3f s  %9.1f tokens/s\n", o.gen, decode_s, o.gen / decode_s);
  std::printf("peak memory %.1f MiB (%d threads)\n", PeakResidentBytes() / 1048576.0, pool->num_threads());
  return kExitOk;
}

}  // namespace

Command AddBenchModelCommand(CLI::App& bench) {
  auto o = std::make_shared<BenchModelOptions>();
  CLI::App* cmd = bench.add_subcommand("model", "prefill and decode speed of a whole model");
  o->model.AddTo(*cmd);
  cmd->add_option("--prompt-len", o->prompt_len, "prompt tokens (random ids; default 512)")->type_name("N");
  cmd->add_option("--gen", o->gen, "tokens to decode greedily (default 64)")->type_name("N");
  cmd->add_option("--seed", o->seed, "seed of the random prompt (default 1)");
  cmd->add_flag("--json", o->json, "print one JSON object");
  o->runtime.AddTo(*cmd);
  return {cmd, [o] { return Run(*o); }};
}

}  // namespace qattn
