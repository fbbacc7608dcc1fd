#include "model/runtime/generate.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace qattn::model {
namespace {
double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

void Prefill(const Transformer& model, KvCache& cache, AttentionPolicy& attention, const std::vector<int32_t>& tokens,
             int batch, float* last_logits, ThreadPool* pool) {
  if (batch < 1) throw std::invalid_argument("the batch size must be at least 1");
  if (attention.wants_whole_prompt()) batch = int(std::max<size_t>(tokens.size(), 1));
  for (size_t start = 0; start < tokens.size(); start += batch) {
    const int64_t n = std::min<int64_t>(batch, int64_t(tokens.size() - start));
    const bool last = start + n == tokens.size();
    model.Forward(tokens.data() + start, n, cache, attention, last && last_logits ? LogitRows::kLast : LogitRows::kNone,
                  last_logits, pool);
  }
}

GenerateStats Generate(const Transformer& model, KvCache& cache, AttentionPolicy& attention,
                       const std::vector<int32_t>& prompt, const GenerateOptions& options,
                       const std::function<bool(int32_t)>& is_end, const std::function<bool(int32_t)>& on_token,
                       ThreadPool* pool) {
  if (prompt.empty()) throw std::invalid_argument("the prompt has no tokens");
  GenerateStats stats;
  stats.prompt_tokens = int64_t(prompt.size());
  const int n_vocab = model.config().n_vocab;
  std::vector<float> logits(n_vocab);  // [n_vocab] of the newest token
  double t0 = Now();
  Prefill(model, cache, attention, prompt, options.batch, logits.data(), pool);
  stats.prefill_seconds = Now() - t0;

  Sampler sampler(options.sampling);
  std::vector<int32_t> history = prompt;
  t0 = Now();
  for (int i = 0; i < options.max_new_tokens; ++i) {
    const int32_t token = sampler.Sample(logits.data(), n_vocab, history);
    if (options.stop_at_end && is_end && is_end(token)) break;
    ++stats.generated_tokens;
    history.push_back(token);
    if (!on_token(token)) break;
    if (i + 1 == options.max_new_tokens || cache.length() >= cache.capacity()) break;
    model.Forward(&token, 1, cache, attention, LogitRows::kLast, logits.data(), pool);
  }
  stats.decode_seconds = Now() - t0;
  return stats;
}

}  // namespace qattn::model
