// The small per-token operations of a transformer block (everything but GEMMs and attention).
// Rows are contiguous unless a stride is given.
#pragma once
#include <cstdint>
#include <vector>

#include "model/runtime/model_config.h"

namespace qattn::model {

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight   (x, out: [n, dim]; may alias)
void RmsNorm(const float* x, const float* weight, int64_t n, int dim, float eps, float* out);

// Rotation angles for RoPE: inv_freq[i] = freq_scale * base^(-2i / n_rot) / factor[i], i < n_rot / 2.
std::vector<double> RopeInverseFrequencies(const ModelConfig& config);

// Rotates the first n_rot dims of each head of each row in place (pairs per `style`).
// x: [n, heads, head_dim] with row stride `row_stride` floats; row r is at position positions[r].
void ApplyRope(float* x, int64_t n, int64_t row_stride, int heads, int head_dim, int n_rot, RopeStyle style,
               const std::vector<double>& inv_freq, const int32_t* positions);

// out[r, j] = silu(gu[r, j]) * gu[r, ff + j]   (gu: [n, 2 * ff] gate then up; out: [n, ff])
void SwiGlu(const float* gate_up, int64_t n, int ff, float* out);

// x[i] += y[i]   (n values)
void AddInPlace(float* x, const float* y, int64_t n);

}  // namespace qattn::model
