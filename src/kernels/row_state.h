// The online-softmax state of the rows one work item computes (query rows in prefill, the query
// heads of a KV group in decode), and the step that folds a tile of logits into it. Prefill and
// decode set the rows up differently; stepping and finishing them is the same.
#pragma once
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention.h"
#include "kernels/tile_ops.h"
#include "kernels/variant_mask.h"

namespace qattn {

struct RowState {
  std::vector<float> m;              // [rows] running max logit (-inf before any visible key)
  std::vector<float> l;              // [rows] running sum of exp(logit - m)
  std::vector<float> alpha;          // [rows] last step's rescale factor for the output rows
  std::vector<float> slope;          // [rows] ALiBi slope
  std::vector<int64_t> pos;          // [rows] query position
  std::vector<KeyInterval> bounds;   // [rows] visible keys

  // Folds logits s [n, s_stride] (keys key_start + [0, cols)) into rows [r0, r0 + n); they come
  // out as probabilities. `masked`: apply `bounds`; otherwise every column below cols is visible.
  void Step(float* s, int r0, int n, int cols, int s_stride, int64_t key_start, float scale,
            const AttentionVariant& var, bool masked) {
    tile::SoftmaxStep step;
    step.s = s;
    step.rows = n;
    step.cols = cols;
    step.s_stride = s_stride;
    step.key_start = key_start;
    step.scale = scale;
    step.softcap = var.softcap;
    step.alibi = var.alibi_slopes ? &slope[r0] : nullptr;
    step.pos = &pos[r0];
    step.bounds = masked ? &bounds[r0] : nullptr;
    step.m = &m[r0];
    step.l = &l[r0];
    step.alpha = &alpha[r0];
    tile::SoftmaxUpdate(step);
  }

  // 1 / l, the factor that normalises row r's output (0 for a row that saw nothing).
  float OutputScale(int r) const { return l[r] > 0 ? 1.0f / l[r] : 0.0f; }
  // The row's log-sum-exp (-inf for a row that saw nothing).
  float Lse(int r) const { return l[r] > 0 ? m[r] + std::log(l[r]) : -std::numeric_limits<float>::infinity(); }
};

}  // namespace qattn
