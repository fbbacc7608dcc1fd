// The variant's mask as per-row key intervals: row i (position p) sees keys in [lo(p), hi(p)]
// plus the sink prefix [0, sink_hi(p)]. lo, hi and sink_hi never decrease with p, which makes
// block-level tests (any visible? all visible?) exact at the block's first and last rows.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>

#include "kernels/attention.h"

namespace qattn {

struct KeyInterval {
  int64_t lo, hi;       // window part, inclusive; empty if lo > hi
  int64_t sink_hi;      // sink part [0, sink_hi]; empty if < 0
};

class VariantMask {
 public:
  VariantMask(const AttentionVariant& v, int64_t n_q, int64_t n_kv)
      : v_(v), offset_(n_kv - n_q), n_kv_(n_kv) {}

  int64_t Position(int64_t row) const { return row + offset_; }

  KeyInterval Row(int64_t row) const {
    const int64_t p = Position(row);
    int64_t hi = n_kv_ - 1;
    if (v_.causal) hi = std::min(hi, p);
    if (v_.window_right >= 0) hi = std::min(hi, p + v_.window_right);
    const int64_t lo = v_.window_left >= 0 ? std::max<int64_t>(0, p - v_.window_left) : 0;
    int64_t sink_hi = std::min<int64_t>(v_.sink_tokens, n_kv_) - 1;
    if (v_.causal) sink_hi = std::min(sink_hi, p);
    return {lo, hi, sink_hi};
  }

  // True when the variant may show some key in [c0, c1) to some row in [r0, r1).
  bool BlockMayBeVisible(int64_t r0, int64_t r1, int64_t c0, int64_t c1) const {
    const KeyInterval first = Row(r0), last = Row(r1 - 1);
    // Necessary condition for the window part: lo and hi only grow with the row.
    const bool window_any = first.lo <= c1 - 1 && last.hi >= c0;
    return window_any || c0 <= last.sink_hi;
  }

  // True when every key in [c0, c1) is visible to every row in [r0, r1) (no per-element mask needed).
  bool BlockFullyVisible(int64_t r0, int64_t r1, int64_t c0, int64_t c1) const {
    const KeyInterval first = Row(r0), last = Row(r1 - 1);
    const bool in_window = last.lo <= c0 && first.hi >= c1 - 1;
    return in_window || c1 - 1 <= first.sink_hi;
  }


 private:
  const AttentionVariant& v_;
  int64_t offset_, n_kv_;
};

}  // namespace qattn
