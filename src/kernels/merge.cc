// Merging attention states computed over disjoint key sets, by their log-sum-exp.
#include <cmath>
#include <limits>

#include "kernels/attention.h"

namespace qattn {

void MergeStates(const float* outs, const float* lses, int num_states, int64_t rows, int d_v, float* out, float* lse) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    float max_lse = kNegInf;
    for (int s = 0; s < num_states; ++s) max_lse = std::max(max_lse, lses[s * rows + r]);
    float* o = out + r * d_v;
    std::fill(o, o + d_v, 0.0f);
    if (max_lse == kNegInf) {
      if (lse) lse[r] = kNegInf;
      continue;
    }
    float total = 0;
    for (int s = 0; s < num_states; ++s) total += std::exp(lses[s * rows + r] - max_lse);
    for (int s = 0; s < num_states; ++s) {
      const float w = std::exp(lses[s * rows + r] - max_lse) / total;
      if (w == 0) continue;
      const float* src = outs + (s * rows + r) * d_v;
      for (int j = 0; j < d_v; ++j) o[j] += w * src[j];
    }
    if (lse) lse[r] = max_lse + std::log(total);
  }
}

}  // namespace qattn
