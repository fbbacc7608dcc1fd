// `qattn eval ppl | kl | logits`: the quality tools every attention method reports through.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "apps/cli_support.h"
#include "apps/loaded_model.h"
#include "eval/npy.h"
#include "model/runtime/evaluate.h"
#include "model/runtime/generate.h"

namespace qattn {
namespace {

struct EvalOptions {
  ModelOptions model;
  RuntimeOptions runtime;
  std::string text_file;
  std::string prompt;
  std::string ids;
  int self_generate = 0;
  int64_t decode_from = 0;  // kl: prompt length after which tokens are decoded one by one
  int64_t seed = 1;
  bool no_bos = false;
  bool json = false;
  std::string out_path;
};

// The tokens to evaluate: --ids, a text (-f or -p), or text the model writes itself.
std::vector<int32_t> EvalTokens(const EvalOptions& o, const LoadedModel& m, ThreadPool* pool) {
  const int given = !o.text_file.empty() + !o.prompt.empty() + !o.ids.empty() + (o.self_generate > 0);
  if (given != 1) throw UsageError("give exactly one of -f FILE, -p TEXT, --ids IDS or --self-generate N");
  std::vector<int32_t> tokens;
  if (!o.ids.empty()) {
    std::istringstream in(o.ids);
    long long id;
    while (in >> id) tokens.push_back(int32_t(id));
    if (!in.eof()) throw UsageError("--ids must be whitespace-separated integers");
    return tokens;
  }
  if (o.self_generate > 0) {  // sample from the model itself, dense attention, from BOS
    const model::Transformer& t = *m.transformer;
    // The text must not depend on the --kv being evaluated: it is written with the default storage.
    RuntimeOptions defaults = o.runtime;
    defaults.kv_dtype = "auto";
    model::KvCache cache(t.config(), std::min<int64_t>(o.self_generate + 1, o.runtime.ContextFor(t.config())),
                         defaults.KvDtypeFor(t));
    auto dense = model::MakeAttentionPolicy("dense");
    model::GenerateOptions g;
    g.max_new_tokens = int(cache.capacity()) - 1;
    g.sampling.seed = uint64_t(o.seed);
    g.stop_at_end = false;
    tokens = {m.tokenizer->bos_id() >= 0 ? m.tokenizer->bos_id() : 0};
    std::vector<int32_t> prompt = tokens;
    model::Generate(t, cache, *dense, prompt, g, {}, [&](int32_t id) { tokens.push_back(id); return true; }, pool);
    return tokens;
  }
  const std::string text = o.text_file.empty() ? o.prompt : ReadTextFile("-f", o.text_file);
  return m.tokenizer->Encode(text, !o.no_bos && m.tokenizer->adds_bos());
}

void AddTextOptions(CLI::App* cmd, EvalOptions& o) {
  o.model.AddTo(*cmd);
  cmd->add_option("-f,--file", o.text_file, "text to evaluate (bytes taken exactly)")->type_name("FILE");
  cmd->add_option("-p,--prompt", o.prompt, "text to evaluate, given inline")->type_name("TEXT");
  cmd->add_option("--ids", o.ids, "token ids to evaluate, whitespace separated")->type_name("IDS");
  cmd->add_flag("--no-bos", o.no_bos, "do not prepend BOS to the text");
  cmd->add_flag("--json", o.json, "print one JSON object");
  o.runtime.AddTo(*cmd);
}

int RunPerplexity(const EvalOptions& o) {
  ThreadPool* pool = o.runtime.StartThreads();
  LoadedModel m = LoadModel(o.model);
  const model::Transformer& t = *m.transformer;
  const std::vector<int32_t> tokens = EvalTokens(o, m, pool);
  if (tokens.size() < 2) throw UsageError("the text has " + std::to_string(tokens.size()) + " tokens; perplexity needs 2");
  auto attention = o.runtime.MakeAttention();
  const model::PerplexityResult r = model::Perplexity(t, *attention, o.runtime.KvDtypeFor(t), tokens,
                                                      o.runtime.ContextFor(t.config()), o.runtime.batch, pool);
  if (o.json) {
    nlohmann::json j = {{"tokens", tokens.size()}, {"tokens_scored", r.tokens_scored}, {"mean_nll", r.mean_nll},
                        {"perplexity", r.perplexity}, {"attention", attention->name()},
                        {"kv", o.runtime.KvDtypeFor(t).Name()}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("perplexity %.4f over %lld tokens (mean NLL %.4f nats, attention %s, kv %s)\n", r.perplexity,
                (long long)r.tokens_scored, r.mean_nll, attention->name().c_str(), o.runtime.KvDtypeFor(t).Name().c_str());
  }
  return kExitOk;
}

int RunDivergence(const EvalOptions& o) {
  ThreadPool* pool = o.runtime.StartThreads();
  LoadedModel m = LoadModel(o.model);
  const model::Transformer& t = *m.transformer;
  const std::vector<int32_t> tokens = EvalTokens(o, m, pool);
  if (tokens.size() < 2) throw UsageError("the text has " + std::to_string(tokens.size()) + " tokens; kl needs 2");
  auto attention = o.runtime.MakeAttention();
  const model::DivergenceResult r =
      model::CompareToDense(t, *attention, o.runtime.KvDtypeFor(t), tokens, o.runtime.ContextFor(t.config()),
                            o.runtime.batch, pool, o.decode_from);
  if (o.json) {
    nlohmann::json j = {{"positions", r.positions}, {"mean_kl", r.mean_kl}, {"max_kl", r.max_kl},
                        {"top1_agreement", r.top1_agreement}, {"attention", attention->name()},
                        {"decode_from", o.decode_from}, {"kv", o.runtime.KvDtypeFor(t).Name()}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("attention %s vs dense over %lld positions: mean KL %.6g nats (max %.6g), top-1 agreement %.4f\n",
                attention->name().c_str(), (long long)r.positions, r.mean_kl, r.max_kl, r.top1_agreement);
  }
  return kExitOk;
}

// Logits at every position, for comparing against other implementations.
int RunLogits(const EvalOptions& o) {
  if (o.out_path.empty()) throw UsageError("-o OUT.npy is required");
  ThreadPool* pool = o.runtime.StartThreads();
  LoadedModel m = LoadModel(o.model);
  const model::Transformer& t = *m.transformer;
  const std::vector<int32_t> tokens = EvalTokens(o, m, pool);
  const int64_t ctx = o.runtime.ContextFor(t.config());
  if (tokens.empty() || int64_t(tokens.size()) > ctx) {
    throw UsageError("the input has " + std::to_string(tokens.size()) + " tokens; it must have 1 to " + std::to_string(ctx));
  }
  auto attention = o.runtime.MakeAttention();
  const int n_vocab = t.config().n_vocab;
  if (o.decode_from > 0) {  // the prompt's last row, then one row per decode step
    std::vector<float> rows;  // [n - P, n_vocab]
    model::ForEachDecodeLogit(t, *attention, o.runtime.KvDtypeFor(t), tokens, ctx, o.decode_from,
                              [&](int64_t, int64_t, const float* l) { rows.insert(rows.end(), l, l + n_vocab); }, pool);
    WriteNpyF32(o.out_path, {int64_t(rows.size() / n_vocab), n_vocab}, rows.data());
    return kExitOk;
  }
  model::KvCache cache(t.config(), ctx, o.runtime.KvDtypeFor(t));
  std::vector<float> logits(tokens.size() * n_vocab);  // [n, n_vocab]
  for (size_t start = 0; start < tokens.size(); start += o.runtime.batch) {
    const int64_t n = std::min<int64_t>(o.runtime.batch, tokens.size() - start);
    t.Forward(tokens.data() + start, n, cache, *attention, model::LogitRows::kAll, logits.data() + start * n_vocab, pool);
  }
  WriteNpyF32(o.out_path, {int64_t(tokens.size()), n_vocab}, logits.data());
  return kExitOk;
}

}  // namespace

std::vector<Command> AddEvalCommands(CLI::App& parent) {
  CLI::App* eval = parent.add_subcommand("eval", "quality of a model and of attention policies");
  eval->require_subcommand(1);
  auto ppl = std::make_shared<EvalOptions>();
  CLI::App* ppl_cmd = eval->add_subcommand("ppl", "perplexity of a text");
  AddTextOptions(ppl_cmd, *ppl);
  ppl_cmd->add_option("--self-generate", ppl->self_generate, "sample N tokens from the model and evaluate those")
      ->type_name("N");
  ppl_cmd->add_option("--seed", ppl->seed, "seed for --self-generate (default 1)");
  auto kl = std::make_shared<EvalOptions>();
  CLI::App* kl_cmd = eval->add_subcommand("kl", "KL divergence and top-1 agreement of --attention against dense");
  AddTextOptions(kl_cmd, *kl);
  kl_cmd->add_option("--self-generate", kl->self_generate, "sample N tokens from the model and evaluate those")->type_name("N");
  kl_cmd->add_option("--seed", kl->seed, "seed for --self-generate (default 1)");
  kl_cmd->add_option("--decode-from", kl->decode_from,
                     "prefill the first P tokens as a prompt, then decode the rest one token at a time and compare "
                     "every step (how decode-time KV policies are measured); 0 = prefill windows (default)")
      ->type_name("P");
  auto logits = std::make_shared<EvalOptions>();
  CLI::App* logits_cmd = eval->add_subcommand("logits", "write the logits at every position to a .npy file [n, n_vocab]");
  AddTextOptions(logits_cmd, *logits);
  logits_cmd->add_option("-o,--out", logits->out_path, "output .npy")->type_name("OUT.npy");
  logits_cmd->add_option("--decode-from", logits->decode_from,
                         "prefill the first P tokens, then decode one token at a time: writes the rows P-1 .. n-2 "
                         "[n - P, n_vocab] (0 = every row of a prefill, default)")
      ->type_name("P");
  return {{ppl_cmd, [ppl] { return RunPerplexity(*ppl); }},
          {kl_cmd, [kl] { return RunDivergence(*kl); }},
          {logits_cmd, [logits] { return RunLogits(*logits); }}};
}

}  // namespace qattn
