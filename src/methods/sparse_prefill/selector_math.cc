#include "methods/sparse_prefill/selector_math.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/tile_ops.h"

namespace qattn::sparse {

int64_t RoundUp16(int64_t x) { return (x + 15) / 16 * 16; }

std::vector<float> HeadRowsF32(const TensorView& t, int head, int64_t first, int64_t count) {
  const int dim = int(t.dim(2));
  std::vector<float> rows(size_t(count) * dim);  // [count, dim]
  for (int64_t i = 0; i < count; ++i) ConvertToF32(t.at(first + i, head), t.dtype, &rows[size_t(i) * dim], dim);
  return rows;
}

KeyPanel::KeyPanel(const float* keys, int64_t count, int d) : d_(d), count_(count) {
  const int64_t tiles = (count + kTile - 1) / kTile;
  tiles_.assign(size_t(tiles) * d * kTile, 0.0f);
  for (int64_t j = 0; j < count; ++j) {
    float* tile = &tiles_[size_t(j / kTile) * d * kTile];
    for (int i = 0; i < d; ++i) tile[size_t(i) * kTile + j % kTile] = keys[size_t(j) * d + i];
  }
}

void KeyPanel::Logits(const float* q, int rows, int64_t cols, float* s, int64_t s_stride) const {
  cols = std::min(RoundUp16(cols), RoundUp16(count_));
  for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
    const int width = int(std::min<int64_t>(kTile, cols - c0));
    // QkF32 reads the panel with its own width as the row stride, so each tile is a [d, kTile] matrix.
    std::vector<float> tmp;
    const float* kt = &tiles_[size_t(c0 / kTile) * d_ * kTile];
    if (width == kTile) {
      tile::QkF32(q, rows, d_, kt, kTile, s + c0, int(s_stride));
      continue;
    }
    tmp.resize(size_t(d_) * width);  // [d, width] the leading columns of a partial tile
    for (int i = 0; i < d_; ++i) std::copy_n(kt + size_t(i) * kTile, width, &tmp[size_t(i) * width]);
    tile::QkF32(q, rows, d_, tmp.data(), width, s + c0, int(s_stride));
  }
}

void SoftmaxRows(float* s, int rows, int64_t s_stride, const int64_t* visible, float scale, float* lse) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  std::vector<float> m(rows, kNegInf), l(rows, 0.0f), alpha(rows);
  std::vector<KeyInterval> bounds(rows);
  for (int r = 0; r < rows; ++r) bounds[r] = {0, visible[r] - 1, -1};
  tile::SoftmaxStep step;
  step.s = s;
  step.rows = rows;
  step.cols = int(s_stride);
  step.s_stride = int(s_stride);
  step.scale = scale;
  step.bounds = bounds.data();
  step.m = m.data();
  step.l = l.data();
  step.alpha = alpha.data();
  tile::SoftmaxUpdate(step);
  for (int r = 0; r < rows; ++r) {
    lse[r] = l[r] > 0 ? m[r] + std::log(l[r]) : kNegInf;
    const float inv = l[r] > 0 ? 1.0f / l[r] : 0.0f;
    float* row = s + int64_t(r) * s_stride;
    for (int64_t c = 0; c < s_stride; ++c) row[c] *= inv;
  }
}

}  // namespace qattn::sparse
