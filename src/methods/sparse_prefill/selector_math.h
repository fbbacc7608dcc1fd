// Small f32 building blocks the selectors share (spec section 10.1 item 4): head rows as f32,
// mean pooling over true counts, score matrices on the core's tile ops (so estimates run at
// kernel speed, not scalar loops), masked row softmax, and top-k with ties broken by index.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "methods/sparse_prefill/selection_stats.h"  // pooling and top-k, shared with the block selectors

namespace qattn::sparse {

// Rows [first, first + count) of one head as f32: [count, dim].
std::vector<float> HeadRowsF32(const TensorView& t, int head, int64_t first, int64_t count);


// Keys laid out for tile::QkF32: column tiles of kTile keys, each [d, kTile] (keys transposed,
// zero beyond the last key).
class KeyPanel {
 public:
  static constexpr int kTile = 256;
  KeyPanel() = default;
  KeyPanel(const float* keys, int64_t count, int d);  // keys: [count, d] row-major

  int64_t count() const { return count_; }
  // s[r, c] = <q[r], key c> for c < cols (cols rounded up to 16 on the right: extra columns are
  // dot products with zero keys). q: [rows, d]; s: [rows, s_stride], s_stride >= RoundUp16(cols).
  void Logits(const float* q, int rows, int64_t cols, float* s, int64_t s_stride) const;

 private:
  int d_ = 0;
  int64_t count_ = 0;
  std::vector<float> tiles_;  // [num_tiles, d, kTile]
};

int64_t RoundUp16(int64_t x);

// Softmax of each row of s over its first visible[r] columns after multiplying by `scale`, in place
// (every other column becomes 0); lse[r] = log sum exp (-inf for a row with nothing visible, whose
// probabilities are all 0). s: [rows, s_stride] with s_stride a multiple of 16.
void SoftmaxRows(float* s, int rows, int64_t s_stride, const int64_t* visible, float scale, float* lse);

}  // namespace qattn::sparse
