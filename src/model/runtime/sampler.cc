#include "model/runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace qattn::model {
namespace {

struct Candidate {
  int32_t id;
  float logit;
  float p = 0.0f;
};

void ApplyRepeatPenalty(float* logits, const std::vector<int32_t>& history, const SamplingParams& params, int n_vocab) {
  if (params.repeat_penalty == 1.0f || params.repeat_last_n <= 0) return;
  const size_t from = history.size() > size_t(params.repeat_last_n) ? history.size() - params.repeat_last_n : 0;
  std::unordered_set<int32_t> seen(history.begin() + from, history.end());  // each token penalised once
  for (int32_t id : seen) {
    if (id < 0 || id >= n_vocab) continue;
    float& l = logits[id];
    l = l > 0 ? l / params.repeat_penalty : l * params.repeat_penalty;
  }
}

// Softmax over the candidates' logits (already sorted by logit, descending).
void Normalise(std::vector<Candidate>& c) {
  double sum = 0.0;
  for (Candidate& x : c) sum += (x.p = std::exp(x.logit - c.front().logit));
  for (Candidate& x : c) x.p = float(x.p / sum);
}

}  // namespace

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::Sample(float* logits, int n_vocab, const std::vector<int32_t>& history) {
  ApplyRepeatPenalty(logits, history, params_, n_vocab);
  if (params_.temperature <= 0.0f) return int32_t(std::max_element(logits, logits + n_vocab) - logits);

  std::vector<Candidate> c(n_vocab);
  for (int i = 0; i < n_vocab; ++i) c[i] = {i, logits[i]};
  const int k = params_.top_k > 0 ? std::min(params_.top_k, n_vocab) : n_vocab;
  auto by_logit = [](const Candidate& a, const Candidate& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); };
  std::partial_sort(c.begin(), c.begin() + k, c.end(), by_logit);
  c.resize(k);
  for (Candidate& x : c) x.logit /= params_.temperature;
  Normalise(c);
  if (params_.top_p < 1.0f) {  // smallest prefix whose mass reaches top_p
    double mass = 0.0;
    size_t keep = 0;
    while (keep < c.size() && mass < params_.top_p) mass += c[keep++].p;
    c.resize(std::max<size_t>(keep, 1));
  }
  if (params_.min_p > 0.0f) {
    const float floor = params_.min_p * c.front().p;
    size_t keep = 1;
    while (keep < c.size() && c[keep].p >= floor) ++keep;
    c.resize(keep);
  }
  Normalise(c);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  double u = uniform(rng_);
  for (const Candidate& x : c) {
    if ((u -= x.p) <= 0.0) return x.id;
  }
  return c.back().id;
}

}  // namespace qattn::model
