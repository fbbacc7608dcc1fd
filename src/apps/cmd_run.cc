// `qattn run`: generates text from a prompt, streaming each token as it is sampled.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>

#include "apps/cli_support.h"
#include "apps/loaded_model.h"
#include "model/runtime/generate.h"

namespace qattn {
namespace {

struct RunOptions {
  ModelOptions model;
  RuntimeOptions runtime;
  std::string prompt;
  std::string prompt_file;
  int n_predict = 256;
  model::SamplingParams sampling;
  int64_t seed = -1;
  bool no_stats = false;
  bool kv_stats = false;   // --stats: KV cache accounting
  bool print_ids = false;  // token ids instead of text (for comparisons with other implementations)
  std::string dump_qkv;    // directory for each layer's prefill Q/K/V
};

// Prints one token as text, or as its id when --print-ids is given.
struct TokenPrinter {
  const model::Tokenizer& tokenizer;
  bool ids;
  int32_t previous = -1;
  void Print(int32_t id) {
    if (ids) {
      std::printf(previous < 0 ? "%d" : " %d", id);
    } else {
      std::fputs(tokenizer.DecodeToken(id, previous).c_str(), stdout);
    }
    std::fflush(stdout);
    previous = id;
  }
};

std::string PromptText(const RunOptions& o) {
  if (!o.prompt.empty() && !o.prompt_file.empty()) throw UsageError("give either -p or -f, not both");
  if (!o.prompt_file.empty()) return ReadTextFile("-f", o.prompt_file);
  return o.prompt;
}

void CheckSampling(const RunOptions& o) {
  const model::SamplingParams& s = o.sampling;
  if (o.n_predict < 0) throw UsageError("-n must be at least 0; got " + std::to_string(o.n_predict));
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) throw UsageError("--top-p must be in (0, 1]");
  if (!(s.min_p >= 0.0f && s.min_p < 1.0f)) throw UsageError("--min-p must be in [0, 1)");
  if (!(s.repeat_penalty > 0.0f)) throw UsageError("--repeat-penalty must be positive");
}

// `--stats`: what the KV cache holds and where decode time went.
void PrintKvStats(model::KvCache& cache, int n_layer, int n_head_kv, const model::GenerateStats& stats,
                  const model::AttentionPolicy& attention) {
  int64_t kept = 0;  // tokens held, summed over layers and KV heads
  for (int l = 0; l < n_layer; ++l) {
    for (int h = 0; h < n_head_kv; ++h) kept += cache.kept(l, h);
  }
  const model::KvTimings& t = cache.timings();
  const std::string offload = attention.OffloadSummary();  // blocks in an offload store (ReKV)
  std::fprintf(stderr,
               "[kv %s | %.1f bytes per token per layer | positions %lld, tokens kept %.1f per layer and head | "
               "pages in memory %lld (%.2f MiB, %d tokens each)%s%s | selection %.3f s, attention %.3f s "
               "(prefill %.3f s, decode %.3f s)]\n",
               cache.storage().Name().c_str(), cache.BytesPerTokenPerLayer(), (long long)cache.length(),
               double(kept) / (n_layer * n_head_kv), (long long)cache.pages_in_use(),
               cache.page_memory_bytes() / 1048576.0, cache.page_tokens(),
               offload.empty() ? ", nothing on disk" : " | ", offload.c_str(), t.selection_seconds, t.attention_seconds, stats.prefill_seconds, stats.decode_seconds);
}

int Run(RunOptions& o) {
  CheckSampling(o);
  const std::string text = PromptText(o);
  ThreadPool* pool = o.runtime.StartThreads();
  LoadedModel m = LoadModel(o.model);
  const model::Transformer& transformer = *m.transformer;
  std::vector<int32_t> prompt = m.tokenizer->Encode(text, m.tokenizer->adds_bos());
  if (prompt.empty()) {
    if (m.tokenizer->bos_id() < 0) throw UsageError("the prompt is empty and the model has no BOS token to start from");
    prompt.push_back(m.tokenizer->bos_id());
  }
  const int64_t ctx = o.runtime.ContextFor(transformer.config());
  if (int64_t(prompt.size()) > ctx) {
    throw UsageError("the prompt has " + std::to_string(prompt.size()) + " tokens but the context holds " +
                     std::to_string(ctx) + " (raise --ctx)");
  }
  model::KvCache cache(transformer.config(), ctx, o.runtime.KvDtypeFor(transformer));
  std::unique_ptr<model::AttentionPolicy> attention = o.runtime.MakeAttention();
  if (!o.dump_qkv.empty()) {
    if (!std::filesystem::is_directory(o.dump_qkv)) throw UsageError("--dump-qkv: '" + o.dump_qkv + "' is not a directory");
    attention = model::WithQkvDump(std::move(attention), o.dump_qkv);
  }
  o.sampling.seed = o.seed >= 0 ? uint64_t(o.seed) : std::random_device{}();

  TokenPrinter printer{*m.tokenizer, o.print_ids};
  for (int32_t id : prompt) printer.Print(id);  // the prompt as the tokenizer saw it, then the continuation
  model::GenerateOptions g;
  g.max_new_tokens = o.n_predict;
  g.batch = o.runtime.batch;
  g.sampling = o.sampling;
  const model::GenerateStats stats = model::Generate(
      transformer, cache, *attention, prompt, g, [&](int32_t id) { return m.tokenizer->IsEndOfGeneration(id); },
      [&](int32_t id) {
        printer.Print(id);
        return true;
      },
      pool);
  std::fputs("\n", stdout);
  std::fflush(stdout);
  if (!o.no_stats) {
    std::fprintf(stderr, "[%s | prompt %lld tokens, %.1f tok/s | generated %lld tokens, %.1f tok/s | seed %llu]\n",
                 transformer.config().Describe().c_str(), (long long)stats.prompt_tokens,
                 stats.prompt_tokens / std::max(stats.prefill_seconds, 1e-9), (long long)stats.generated_tokens,
                 stats.generated_tokens / std::max(stats.decode_seconds, 1e-9), (unsigned long long)o.sampling.seed);
  }
  if (o.kv_stats) PrintKvStats(cache, transformer.config().n_layer, transformer.config().n_head_kv, stats, *attention);
  return kExitOk;
}

}  // namespace

Command AddRunCommand(CLI::App& parent) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd = parent.add_subcommand("run", "generate text from a prompt (streams tokens as they are sampled)");
  o->model.AddTo(*cmd);
  cmd->add_option("-p,--prompt", o->prompt, "prompt text")->type_name("TEXT");
  cmd->add_option("-f,--file", o->prompt_file, "read the prompt from a file (bytes taken exactly)")->type_name("FILE");
  cmd->add_option("-n,--n-predict", o->n_predict, "tokens to generate (default 256)")->type_name("N");
  cmd->add_option("--temp", o->sampling.temperature, "temperature; 0 = greedy (default 0.8)")->type_name("T");
  cmd->add_option("--top-k", o->sampling.top_k, "keep the k most likely tokens; 0 = all (default 40)")->type_name("K");
  cmd->add_option("--top-p", o->sampling.top_p, "keep the smallest set with this much mass (default 0.95)")->type_name("P");
  cmd->add_option("--min-p", o->sampling.min_p, "drop tokens below min_p x the top probability (default 0.05)")->type_name("P");
  cmd->add_option("--repeat-penalty", o->sampling.repeat_penalty, "penalty for recent tokens; 1 = off (default)")->type_name("R");
  cmd->add_option("--repeat-last-n", o->sampling.repeat_last_n, "how many recent tokens are penalised (default 64)")->type_name("N");
  cmd->add_option("--seed,-s", o->seed, "random seed; -1 = random (default)")->type_name("S");
  cmd->add_flag("--no-stats", o->no_stats, "do not print the speed line on stderr");
  cmd->add_flag("--stats", o->kv_stats,
                "print KV cache accounting on stderr: bytes per token per layer, pages in memory and on disk, "
                "time in selection versus attention");
  cmd->add_option("--dump-qkv", o->dump_qkv, "write each layer's prefill Q/K/V (post-RoPE) to DIR/layerL_{q,k,v}.npy")
      ->type_name("DIR");
  cmd->add_flag("--print-ids", o->print_ids, "print the token ids (prompt and generated) instead of text");
  o->runtime.AddTo(*cmd);
  return {cmd, [o] { return Run(*o); }};
}

}  // namespace qattn
