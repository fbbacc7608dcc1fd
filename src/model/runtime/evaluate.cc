#include "model/runtime/evaluate.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace qattn::model {

void LogSoftmax(const float* logits, int n, std::vector<double>& out) {
  out.resize(n);
  const double max = *std::max_element(logits, logits + n);
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - max);
  const double log_z = max + std::log(sum);
  for (int i = 0; i < n; ++i) out[i] = double(logits[i]) - log_z;
}

void ForEachLogitChunk(const Transformer& model, AttentionPolicy& attention, const KvStorage& kv_dtype,
                       const std::vector<int32_t>& tokens, int64_t ctx, int batch,
                       const std::function<void(int64_t, int64_t, const float*)>& on_logits, ThreadPool* pool) {
  if (ctx < 2 || batch < 1) throw std::invalid_argument("the context must hold at least 2 tokens and the batch 1");
  KvCache cache(model.config(), ctx, kv_dtype);
  if (attention.wants_whole_prompt()) batch = int(ctx);  // each window is one prefill
  const int n_vocab = model.config().n_vocab;
  std::vector<float> logits;  // [chunk, n_vocab]
  for (int64_t window = 0; window < int64_t(tokens.size()); window += ctx) {
    cache.Clear();
    const int64_t window_end = std::min<int64_t>(window + ctx, tokens.size());
    for (int64_t start = window; start < window_end; start += batch) {
      const int64_t n = std::min<int64_t>(batch, window_end - start);
      logits.resize(size_t(n) * n_vocab);
      model.Forward(tokens.data() + start, n, cache, attention, LogitRows::kAll, logits.data(), pool);
      // The window's last row predicts a token the next window starts afresh with: not scored.
      const int64_t rows = start + n == window_end ? n - 1 : n;
      if (rows > 0) on_logits(start, rows, logits.data());
    }
  }
}

PerplexityResult Perplexity(const Transformer& model, AttentionPolicy& attention, const KvStorage& kv_dtype,
                            const std::vector<int32_t>& tokens, int64_t ctx, int batch, ThreadPool* pool) {
  if (tokens.size() < 2) throw std::invalid_argument("perplexity needs at least 2 tokens");
  const int n_vocab = model.config().n_vocab;
  PerplexityResult r;
  double nll = 0.0;
  std::vector<double> logp;  // [n_vocab]
  ForEachLogitChunk(model, attention, kv_dtype, tokens, ctx, batch,
                    [&](int64_t first, int64_t rows, const float* logits) {
                      for (int64_t i = 0; i < rows; ++i) {
                        LogSoftmax(logits + i * n_vocab, n_vocab, logp);
                        nll -= logp[tokens[first + i + 1]];
                        ++r.tokens_scored;
                      }
                    },
                    pool);
  r.mean_nll = nll / std::max<int64_t>(r.tokens_scored, 1);
  r.perplexity = std::exp(r.mean_nll);
  return r;
}

void ForEachDecodeLogit(const Transformer& model, AttentionPolicy& attention, const KvStorage& kv_dtype,
                        const std::vector<int32_t>& tokens, int64_t ctx, int64_t prompt_len,
                        const std::function<void(int64_t, int64_t, const float*)>& on_logits, ThreadPool* pool) {
  const int64_t n = int64_t(tokens.size());
  if (prompt_len < 1 || prompt_len >= n) {
    throw std::invalid_argument("the prompt length must be in [1, " + std::to_string(n - 1) + "] for " +
                                std::to_string(n) + " tokens");
  }
  if (n > ctx) throw std::invalid_argument(std::to_string(n) + " tokens do not fit in the context of " + std::to_string(ctx));
  KvCache cache(model.config(), ctx, kv_dtype);
  std::vector<float> logits(model.config().n_vocab);  // [n_vocab] of the newest token
  model.Forward(tokens.data(), prompt_len, cache, attention, LogitRows::kLast, logits.data(), pool);
  on_logits(prompt_len - 1, 1, logits.data());
  for (int64_t t = prompt_len; t + 1 < n; ++t) {
    model.Forward(&tokens[t], 1, cache, attention, LogitRows::kLast, logits.data(), pool);
    on_logits(t, 1, logits.data());
  }
}

DivergenceResult CompareToDense(const Transformer& model, AttentionPolicy& policy, const KvStorage& kv_dtype,
                                const std::vector<int32_t>& tokens, int64_t ctx, int batch, ThreadPool* pool,
                                int64_t decode_from) {
  // The logits of a policy at every scored position: prefill windows, or a prompt then decode steps.
  const auto for_each = [&](AttentionPolicy& p, const std::function<void(int64_t, int64_t, const float*)>& f) {
    if (decode_from > 0) ForEachDecodeLogit(model, p, kv_dtype, tokens, ctx, decode_from, f, pool);
    else ForEachLogitChunk(model, p, kv_dtype, tokens, ctx, batch, f, pool);
  };
  const int n_vocab = model.config().n_vocab;
  // Dense log-probabilities first, kept per scored position as argmax and the full row.
  std::unique_ptr<AttentionPolicy> dense = MakeAttentionPolicy("dense");
  std::vector<std::vector<double>> dense_logp;  // [positions][n_vocab]
  for_each(*dense, [&](int64_t, int64_t rows, const float* logits) {
    for (int64_t i = 0; i < rows; ++i) {
      dense_logp.emplace_back();
      LogSoftmax(logits + i * n_vocab, n_vocab, dense_logp.back());
    }
  });
  DivergenceResult r;
  std::vector<double> logq;  // [n_vocab]
  int64_t agree = 0;
  double kl_sum = 0.0;
  for_each(policy, [&](int64_t, int64_t rows, const float* logits) {
                      for (int64_t i = 0; i < rows; ++i, ++r.positions) {
                        const std::vector<double>& logp = dense_logp.at(r.positions);
                        LogSoftmax(logits + i * n_vocab, n_vocab, logq);
                        double kl = 0.0;
                        for (int v = 0; v < n_vocab; ++v) kl += std::exp(logp[v]) * (logp[v] - logq[v]);
                        kl = std::max(kl, 0.0);  // rounding can make an exact match slightly negative
                        kl_sum += kl;
                        r.max_kl = std::max(r.max_kl, kl);
                        agree += std::max_element(logp.begin(), logp.end()) == logp.begin() + (std::max_element(logq.begin(), logq.end()) - logq.begin());
                      }
                    });
  r.mean_kl = kl_sum / std::max<int64_t>(r.positions, 1);
  r.top1_agreement = double(agree) / std::max<int64_t>(r.positions, 1);
  return r;
}

}  // namespace qattn::model
