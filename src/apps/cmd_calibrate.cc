// `qattn calibrate compresskv`: CompressKV's offline steps on a model (spec C2).
//  1. Semantic retrieval heads: copy runs over the text. The needle is the text's own span of
//     `needle` tokens at several depths; the prompt is the text followed by the needle's first two
//     tokens (the cue), and the model continues greedily. At every step whose generated token is one of the span's,
//     each (layer, query head) scores the attention mass its query puts on the span. Runs whose
//     continuation recalls over half of the span's remaining tokens (ROUGE-1 recall) count; a
//     head's score is its mean over them; each layer's heads are ranked by it.
//  2. Error-aware layer budgets: prompts of several lengths run with CompressKV at a tiny budget
//     and the ranked heads; each layer's attention-output error e_l over the observation window
//     (before the output projection) is summed and normalised to weights w_l.
// Prints the spec that uses both: compresskv:heads=...,layer_weights=...
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "apps/cli_support.h"
#include "apps/loaded_model.h"
#include "methods/kv_cache/calibration.h"
#include "model/runtime/generate.h"

namespace qattn {
namespace {

struct CalibrateOptions {
  ModelOptions model;
  RuntimeOptions runtime;
  std::string text_file;
  int self_generate = 512;
  int64_t seed = 1;
  int runs = 8;
  int needle = 8;
  int64_t budget = 32;
  int64_t window = 8;
  int first_k = 4;
  bool json = false;
};

std::vector<int32_t> CalibrationText(const CalibrateOptions& o, const LoadedModel& m, ThreadPool* pool) {
  if (!o.text_file.empty()) return m.tokenizer->Encode(ReadTextFile("-f", o.text_file), m.tokenizer->adds_bos());
  const model::Transformer& t = *m.transformer;
  model::KvCache cache(t.config(), o.self_generate + 1, model::KvStorage::Of(KvDType::kF32));
  auto dense = model::MakeAttentionPolicy("dense");
  model::GenerateOptions g;
  g.max_new_tokens = o.self_generate;
  g.sampling.seed = uint64_t(o.seed);
  g.stop_at_end = false;
  std::vector<int32_t> tokens = {m.tokenizer->bos_id() >= 0 ? m.tokenizer->bos_id() : 0};
  model::Generate(t, cache, *dense, tokens, g, {}, [&](int32_t id) { tokens.push_back(id); return true; }, pool);
  return tokens;
}

int Argmax(const std::vector<float>& logits) {
  return int(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// Step 1: summed head scores [layer][H_q] over successful runs; returns the number of them.
// all_runs gets the sums over every run (used when no run succeeds, as with very small models).
int ScoreRetrievalHeads(const CalibrateOptions& o, const model::Transformer& t, const std::vector<int32_t>& text,
                        std::vector<std::vector<double>>* scores, std::vector<std::vector<double>>* all_runs,
                        ThreadPool* pool) {
  const model::ModelConfig& c = t.config();
  auto owned = std::make_unique<kv::AttentionMassProbe>();
  kv::AttentionMassProbe* probe = owned.get();
  auto attention = model::WrapKvPolicy(std::move(owned));
  scores->assign(c.n_layer, std::vector<double>(c.n_head, 0.0));
  all_runs->assign(c.n_layer, std::vector<double>(c.n_head, 0.0));
  const int64_t n = int64_t(text.size()), len = o.needle;
  std::vector<float> logits(c.n_vocab);  // [n_vocab]
  int successes = 0;
  for (int r = 0; r < o.runs; ++r) {
    // The needle: the text's own span at depth (r + 0.5) / runs; the prompt is the text followed by
    // the needle's first two tokens (the cue), so copying it means retrieving from that depth.
    const int64_t begin = 1 + int64_t((r + 0.5) / o.runs * double(n - len - 2));
    const std::vector<int32_t> span(text.begin() + begin, text.begin() + begin + len);
    std::vector<int32_t> prompt = text;
    prompt.insert(prompt.end(), span.begin(), span.begin() + 2);
    probe->SetSpan(int32_t(begin), int32_t(begin + len));
    model::KvCache cache(c, int64_t(prompt.size()) + len, model::KvStorage::Of(KvDType::kF32));
    model::Prefill(t, cache, *attention, std::vector<int32_t>(prompt.begin(), prompt.end() - 1), int(prompt.size()),
                   nullptr, pool);
    std::vector<std::vector<double>> run(c.n_layer, std::vector<double>(c.n_head, 0.0));
    std::vector<int32_t> generated;
    int32_t next = prompt.back();
    for (int step = 0; step < len - 2; ++step) {  // each step is a decode step, so the probe sees it
      t.Forward(&next, 1, cache, *attention, model::LogitRows::kLast, logits.data(), pool);
      next = Argmax(logits);
      generated.push_back(next);
      if (std::find(span.begin(), span.end(), next) == span.end()) continue;
      for (int l = 0; l < c.n_layer; ++l) {
        for (int h = 0; h < c.n_head; ++h) run[l][h] += probe->last_step()[l][h];
      }
    }
    int recalled = 0;  // ROUGE-1 recall of the span's remaining tokens (multiset overlap)
    std::vector<int32_t> pool_left = generated;
    for (size_t i = 2; i < span.size(); ++i) {
      auto it = std::find(pool_left.begin(), pool_left.end(), span[i]);
      if (it != pool_left.end()) {
        ++recalled;
        pool_left.erase(it);
      }
    }
    const bool success = 2 * recalled > len - 2;
    successes += success;
    for (int l = 0; l < c.n_layer; ++l) {
      for (int h = 0; h < c.n_head; ++h) {
        (success ? (*scores)[l][h] : (*all_runs)[l][h]) += run[l][h];
        if (success) (*all_runs)[l][h] += run[l][h];
      }
    }
  }
  return successes;
}

// Step 2: per-layer errors of CompressKV at a tiny budget with the ranked heads, summed over prompts.
std::vector<double> LayerErrors(const CalibrateOptions& o, const model::Transformer& t,
                                const std::vector<int32_t>& text, const std::string& heads_spec, ThreadPool* pool) {
  const std::string spec = "compresskv:budget=" + std::to_string(o.budget) + ",window=" + std::to_string(o.window) +
                           ",first_k=" + std::to_string(o.first_k) + (heads_spec.empty() ? "" : ",heads=" + heads_spec);
  auto owned = std::make_unique<kv::LayerErrorMeter>(kv::MakeKvPolicy(spec), o.window);
  kv::LayerErrorMeter* meter = owned.get();
  auto attention = model::WrapKvPolicy(std::move(owned));
  for (int r = 0; r < o.runs; ++r) {  // prompts of several lengths, from half the text to all of it
    const int64_t n = int64_t(text.size()) / 2 + int64_t(text.size()) / 2 * (r + 1) / o.runs;
    model::KvCache cache(t.config(), n, model::KvStorage::Of(KvDType::kF32));
    model::Prefill(t, cache, *attention, std::vector<int32_t>(text.begin(), text.begin() + n), int(n), nullptr, pool);
  }
  std::vector<double> errors = meter->errors();
  errors.resize(t.config().n_layer, 0.0);
  return errors;
}

std::string Joined(const std::vector<int>& v, char sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? std::string(1, sep) : "") + std::to_string(v[i]);
  return s;
}

int Run(const CalibrateOptions& o) {
  if (o.runs < 1 || o.needle < 4 || o.budget < 1 || o.window < 1 || o.first_k < 1 || o.self_generate < 32) {
    throw UsageError("need --runs >= 1, --needle >= 4, --budget, --window, --first-k >= 1, --self-generate >= 32");
  }
  ThreadPool* pool = o.runtime.StartThreads();
  LoadedModel m = LoadModel(o.model);
  const model::Transformer& t = *m.transformer;
  const std::vector<int32_t> text = CalibrationText(o, m, pool);
  if (int64_t(text.size()) < 4 * o.needle) throw UsageError("the calibration text has too few tokens");
  if (int64_t(text.size()) + 2 * o.needle > o.runtime.ContextFor(t.config())) {
    throw UsageError("the calibration text does not fit the context (raise --ctx or shorten it)");
  }
  std::vector<std::vector<double>> scores, all_runs;
  const int successes = ScoreRetrievalHeads(o, t, text, &scores, &all_runs, pool);
  // The spec keeps only successful retrievals; a model too small to copy any span still gets a
  // ranking, from every run (said in the output).
  const int counted = successes > 0 ? successes : o.runs;
  if (successes == 0) scores = all_runs;
  std::string heads_spec;  // "h/h/...;h/h/..." per layer, best first
  std::vector<std::vector<int>> orders;
  for (auto& layer : scores) {
    for (double& s : layer) s /= counted;
    orders.push_back(kv::OrderHeadsByScore(layer));
    heads_spec += (heads_spec.empty() ? "" : ";") + Joined(orders.back(), '/');
  }
  const std::vector<double> errors = LayerErrors(o, t, text, heads_spec, pool);
  double total = 0;
  for (double e : errors) total += e;
  std::string weights_spec;
  std::vector<double> weights;
  for (double e : errors) {
    weights.push_back(total > 0 ? e / total : 1.0 / double(errors.size()));
    char w[32];
    std::snprintf(w, sizeof w, "%.4f", weights.back());
    weights_spec += (weights_spec.empty() ? "" : "/") + std::string(w);
  }
  std::string spec = "compresskv:layer_weights=" + weights_spec;
  if (!heads_spec.empty()) spec += ",heads=" + heads_spec;
  if (o.json) {
    nlohmann::json j = {{"runs", o.runs}, {"successful_runs", successes}, {"head_scores", scores},
                        {"head_order", orders}, {"layer_errors", errors}, {"layer_weights", weights},
                        {"spec", spec}};
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  std::printf("%d of %d copy runs recalled their span%s; per layer: heads best first (score), error weight\n",
              successes, o.runs, successes ? "" : " (heads ranked over all runs)");
  for (size_t l = 0; l < scores.size(); ++l) {
    std::printf("  layer %2zu  weight %.3f  heads", l, weights[l]);
    for (int h : orders[l]) std::printf(" %d (%.3f)", h, scores[l][h]);
    std::printf("\n");
  }
  std::printf("%s\n", spec.c_str());
  return kExitOk;
}

}  // namespace

Command AddCalibrateCommand(CLI::App& parent) {
  CLI::App* calibrate = parent.add_subcommand("calibrate", "offline calibration of attention methods");
  calibrate->require_subcommand(1);
  auto o = std::make_shared<CalibrateOptions>();
  CLI::App* cmd = calibrate->add_subcommand(
      "compresskv", "CompressKV's retrieval heads (copy runs) and error-aware layer budgets; prints the spec");
  o->model.AddTo(*cmd);
  cmd->add_option("-f,--file", o->text_file, "calibration text (default: the model's own sample)")->type_name("FILE");
  cmd->add_option("--self-generate", o->self_generate, "tokens of the model's own sample (default 512)");
  cmd->add_option("--seed", o->seed, "seed of the sample (default 1)");
  cmd->add_option("--runs", o->runs, "copy runs and error prompts (default 8)");
  cmd->add_option("--needle", o->needle, "tokens per copied span (default 8)");
  cmd->add_option("--budget", o->budget, "CompressKV budget of the error runs (default 32, as the paper)");
  cmd->add_option("--window", o->window, "observation window (default 8)");
  cmd->add_option("--first-k", o->first_k, "retrieval heads per layer (default 4)");
  cmd->add_flag("--json", o->json, "print one JSON object");
  o->runtime.AddTo(*cmd);
  return {cmd, [o] { return Run(*o); }};
}

}  // namespace qattn
