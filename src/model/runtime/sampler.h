// Next-token sampling, applied in llama.cpp's order: repetition penalty over the recent tokens,
// then (unless greedy) top-k, temperature, top-p, min-p, and a draw from the renormalised rest.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace qattn::model {

struct SamplingParams {
  float temperature = 0.8f;   // <= 0: greedy (argmax after the penalty)
  int top_k = 40;             // <= 0: all tokens
  float top_p = 0.95f;        // >= 1: off
  float min_p = 0.05f;        // <= 0: off; keeps tokens with p >= min_p * p_max
  float repeat_penalty = 1.0f;  // 1: off; logits of recent tokens: > 0 divided, < 0 multiplied
  int repeat_last_n = 64;     // how many recent tokens the penalty looks at
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Picks a token from logits [n_vocab] (modified in place by the penalty). `history` is every
  // token so far (prompt and generated).
  int32_t Sample(float* logits, int n_vocab, const std::vector<int32_t>& history);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace qattn::model
