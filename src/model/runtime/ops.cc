#include "model/runtime/ops.h"

#include <cmath>

namespace qattn::model {

void RmsNorm(const float* x, const float* weight, int64_t n, int dim, float eps, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * dim;
    float* outr = out + r * dim;
    double sum_sq = 0.0;  // double: a 4096-wide sum of squares loses digits in f32
    for (int j = 0; j < dim; ++j) sum_sq += double(xr[j]) * xr[j];
    const float inv_rms = float(1.0 / std::sqrt(sum_sq / dim + eps));
    for (int j = 0; j < dim; ++j) outr[j] = xr[j] * inv_rms * weight[j];
  }
}

std::vector<double> RopeInverseFrequencies(const ModelConfig& c) {
  std::vector<double> inv_freq(c.n_rot / 2);  // [n_rot / 2]
  for (int i = 0; i < c.n_rot / 2; ++i) {
    double f = c.rope_freq_scale * std::pow(double(c.rope_base), -2.0 * i / c.n_rot);
    if (!c.rope_freq_factors.empty()) f /= c.rope_freq_factors[i];
    inv_freq[i] = f;
  }
  return inv_freq;
}

void ApplyRope(float* x, int64_t n, int64_t row_stride, int heads, int head_dim, int n_rot, RopeStyle style,
               const std::vector<double>& inv_freq, const int32_t* positions) {
  const int half = n_rot / 2;
  std::vector<float> cos_t(half), sin_t(half);  // [n_rot / 2] for the current row's position
  for (int64_t r = 0; r < n; ++r) {
    for (int i = 0; i < half; ++i) {
      const double theta = double(positions[r]) * inv_freq[i];
      cos_t[i] = float(std::cos(theta));
      sin_t[i] = float(std::sin(theta));
    }
    for (int h = 0; h < heads; ++h) {
      float* v = x + r * row_stride + int64_t(h) * head_dim;
      for (int i = 0; i < half; ++i) {
        // Normal mode pairs neighbours; neox pairs the two halves of the rotated part.
        const int a = style == RopeStyle::kNormal ? 2 * i : i;
        const int b = style == RopeStyle::kNormal ? 2 * i + 1 : i + half;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * cos_t[i] - x1 * sin_t[i];
        v[b] = x0 * sin_t[i] + x1 * cos_t[i];
      }
    }
  }
}

void SwiGlu(const float* gate_up, int64_t n, int ff, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    const float* g = gate_up + r * 2 * int64_t(ff);
    const float* u = g + ff;
    float* o = out + r * int64_t(ff);
    for (int j = 0; j < ff; ++j) o[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
  }
}

void AddInPlace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace qattn::model
