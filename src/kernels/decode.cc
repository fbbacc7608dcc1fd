// The decode skeleton: one query token per sequence. A work item is (sequence, KV head group,
// split of the keys); it computes every query head of the group at once, so each K and V byte is
// read from memory once, and the splits are merged by log-sum-exp.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/attention.h"
#include "kernels/checks.h"
#include "kernels/row_state.h"
#include "kernels/tile_ops.h"
#include "kernels/variant_mask.h"

namespace qattn {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int kChunk = 64;      // keys per QK or PV call: 16 KiB of bf16 K or V at d = 128
constexpr int kSegment = 2048;  // keys per softmax step; logits [group, kSegment] stay in L2

struct Geometry {
  HeadMap map;
  int group;  // query heads per work item
  int d, dv;
  bool bf16;
  float scale;
};

// Units are groups of `group` query heads sharing one K head and one V head. An item walks
// keys [k0, k1) of one sequence for units [u0, u1): one or two units when each head's keys are
// contiguous, all units when a token's heads are interleaved ([n_kv, H, d]), so memory is read
// front to back. Its state has rows = (u1 - u0) * group query heads.
struct Item {
  int seq, u0, u1, split;
  int64_t k0, k1;
};

// Per-thread buffers for one work item.
struct Scratch {
  std::vector<float> q32;          // [rows, d]
  std::vector<uint16_t> q16;       // [rows, d]
  std::vector<float> kv32;         // [kChunk, max(d, dv)] f16/bf16 rows widened for the f32 path
  std::vector<float> s;            // [rows, kSegment]
  std::vector<float> ones;         // [group] rescale factors of 1
  std::vector<float> o;            // [rows, dv]
  RowState rows;                   // softmax state of the item's rows
};

Scratch& ThreadScratch() {
  static thread_local Scratch scratch;
  return scratch;
}

int Rows(const Geometry& g, const Item& it) { return (it.u1 - it.u0) * g.group; }

void LoadQueries(const DecodeArgs& a, const Geometry& g, const Item& it, Scratch& sc) {
  const int h0 = it.u0 * g.group, rows = Rows(g, it);
  if (g.bf16) {
    sc.q16.resize(size_t(rows) * g.d);
    for (int h = 0; h < rows; ++h) std::memcpy(&sc.q16[size_t(h) * g.d], a.q.at(it.seq, h0 + h), size_t(g.d) * 2);
  } else {
    sc.q32.resize(size_t(rows) * g.d);
    for (int h = 0; h < rows; ++h) ConvertToF32(a.q.at(it.seq, h0 + h), a.q.dtype, &sc.q32[size_t(h) * g.d], g.d);
  }
}

// Rows [first, first + n) of a K or V head as f32: in place when already f32, else widened into buf.
const float* RowsF32(const TensorView& t, int64_t first, int head, int n, int width, std::vector<float>& buf,
                     int64_t* stride) {
  if (t.dtype == DType::kF32) {
    *stride = t.stride[0];
    return t.at<const float>(first, head);
  }
  buf.resize(size_t(n) * width);
  for (int c = 0; c < n; ++c) ConvertToF32(t.at(first + c, head), t.dtype, &buf[size_t(c) * width], width);
  *stride = width;
  return buf.data();
}

// Asks for rows [first, first + count) of a K or V head to be loaded into L1 while the current
// 64 rows compute. The hardware prefetcher alone falls well behind a stream that is also computed
// on: K-only QK for 8 heads measured 12 GB/s from DRAM without this and 22 GB/s with it (one
// thread). Measured choices: a burst per 64-row step covering the next two steps (a line already
// on its way costs little) beats one step (-2..-12%), four steps (-20%) and prefetches spread
// evenly through the compute (-20%).
void PrefetchRows(const TensorView& t, int64_t first, int64_t count, int head) {
  const int64_t row_bytes = t.shape[2] * int64_t(DTypeSize(t.dtype));
  for (int64_t r = first; r < first + count; ++r) {
    const char* p = t.at<const char>(r, head);
    // An asm statement: GCC 12 drops __builtin_prefetch here as dead code.
    for (int64_t b = 0; b < row_bytes; b += 64) asm volatile("prefetcht0 %0" : : "m"(*(p + b)));
  }
}

// One segment of keys for one unit: rows [r0, r0 + group) of the item's state. QK runs over the
// whole segment before PV, so K and then V are each read front to back in long runs (the hardware
// prefetcher streams those at close to the plain read rate; alternating 64 KiB pieces of K and V
// measured about 20% slower), and the softmax rescales once per segment.
void Segment(const DecodeArgs& a, const Geometry& g, const Item& it, int unit, int64_t kv_start, int64_t n_kv,
             int64_t c0, Scratch& sc) {
  const int n = int(std::min<int64_t>(kSegment, it.k1 - c0));
  const int stride = (n + 15) / 16 * 16;
  const int r0 = (unit - it.u0) * g.group;
  const int kh = g.map.k_head(unit * g.group), vh = g.map.v_head(unit * g.group);
  float* s = &sc.s[size_t(r0) * kSegment];  // [group, stride] logits, then probabilities
  for (int sub = 0; sub < n; sub += kChunk) {
    const int m = std::min(kChunk, n - sub);
    // Next: the following K rows (two steps' worth), or after the last of them the first V rows.
    const int ahead = std::min(2 * kChunk, n - sub - kChunk);
    if (ahead > 0) PrefetchRows(a.k, kv_start + c0 + sub + kChunk, ahead, kh);
    else PrefetchRows(a.v, kv_start + c0, std::min(kChunk, n), vh);
    if (g.bf16) {
      tile::DotRowsBf16(&sc.q16[size_t(r0) * g.d], g.group, g.d, a.k.at<const uint16_t>(kv_start + c0 + sub, kh),
                        a.k.stride[0], m, s + sub, stride);
    } else {
      int64_t row_stride;
      const float* k = RowsF32(a.k, kv_start + c0 + sub, kh, m, g.d, sc.kv32, &row_stride);
      tile::DotRowsF32(&sc.q32[size_t(r0) * g.d], g.group, g.d, k, row_stride, m, s + sub, stride);
    }
  }
  const VariantMask mask(a.variant, 1, n_kv);
  const bool needs_mask = !mask.BlockFullyVisible(0, 1, c0, c0 + n);
  sc.rows.Step(s, r0, g.group, n, stride, c0, g.scale, a.variant, needs_mask);
  float* o = &sc.o[size_t(r0) * g.dv];  // [group, dv]
  for (int sub = 0; sub < n; sub += kChunk) {
    const int m = std::min(kChunk, n - sub);
    const float* alpha = sub == 0 ? &sc.rows.alpha[r0] : sc.ones.data();  // rescale once per segment
    // Next: the following V rows (two steps' worth), or after the last the next segment's first K rows.
    const int ahead = std::min(2 * kChunk, n - sub - kChunk);
    if (ahead > 0) PrefetchRows(a.v, kv_start + c0 + sub + kChunk, ahead, vh);
    else PrefetchRows(a.k, kv_start + c0 + n, std::min<int64_t>(kChunk, it.k1 - c0 - n), kh);
    if (g.bf16) {
      tile::AccumulateRowsBf16(s + sub, g.group, stride, m, a.v.at<const uint16_t>(kv_start + c0 + sub, vh),
                               a.v.stride[0], g.dv, o, alpha);
    } else {
      int64_t row_stride;
      const float* v = RowsF32(a.v, kv_start + c0 + sub, vh, m, g.dv, sc.kv32, &row_stride);
      tile::AccumulateRowsF32(s + sub, g.group, stride, m, v, row_stride, g.dv, o, alpha);
    }
  }
}

void InitRows(const DecodeArgs& a, const Geometry& g, const Item& it, int64_t n_kv, Scratch& sc) {
  const int h0 = it.u0 * g.group, rows = Rows(g, it);
  const AttentionVariant& var = a.variant;
  RowState& st = sc.rows;
  st.m.resize(rows);
  st.l.resize(rows);
  st.slope.resize(rows);
  for (int h = 0; h < rows; ++h) {
    // The sink logit joins the softmax once per sequence: in split 0.
    const bool sink = var.sink_logits && it.split == 0;
    st.m[h] = sink ? var.sink_logits[h0 + h] : kNegInf;
    st.l[h] = sink ? 1.0f : 0.0f;
    st.slope[h] = var.alibi_slopes ? var.alibi_slopes[h0 + h] : 0.0f;
  }
  st.alpha.assign(rows, 1.0f);
  st.pos.assign(rows, n_kv - 1);
  st.bounds.assign(rows, VariantMask(var, 1, n_kv).Row(0));
  sc.o.assign(size_t(rows) * g.dv, 0.0f);
  sc.s.resize(size_t(rows) * kSegment);
  sc.ones.assign(g.group, 1.0f);
}

// Runs one item and writes its normalised output [rows, dv] and lse [rows].
void RunItem(const DecodeArgs& a, const Geometry& g, const Item& it, int64_t kv_start, int64_t n_kv, float* out,
             int64_t out_row_stride, float* lse, int64_t lse_stride) {
  Scratch& sc = ThreadScratch();
  LoadQueries(a, g, it, sc);
  InitRows(a, g, it, n_kv, sc);
  const KeyInterval rows = sc.rows.bounds[0];
  for (int64_t c0 = it.k0; c0 < it.k1; c0 += kSegment) {
    // Skip chunks the variant hides entirely (sliding windows read only their window).
    const bool in_window = c0 + kSegment > rows.lo && c0 <= rows.hi;
    if (!in_window && c0 > rows.sink_hi) continue;
    for (int u = it.u0; u < it.u1; ++u) Segment(a, g, it, u, kv_start, n_kv, c0, sc);
  }
  for (int h = 0; h < Rows(g, it); ++h) {
    const float inv = sc.rows.OutputScale(h);
    float* o = out + h * out_row_stride;
    for (int j = 0; j < g.dv; ++j) o[j] = sc.o[size_t(h) * g.dv + j] * inv;
    if (lse) lse[h * lse_stride] = sc.rows.Lse(h);
  }
}

int ChooseSplits(int requested, int64_t n_kv, int64_t other_items, int threads) {
  if (requested > 0) return int(std::max<int64_t>(1, std::min<int64_t>(requested, (n_kv + kChunk - 1) / kChunk)));
  // Enough items to keep every thread busy with some slack for balance, but chunks of >= 512 keys.
  const int64_t want = (4 * threads + other_items - 1) / std::max<int64_t>(1, other_items);
  return int(std::max<int64_t>(1, std::min<int64_t>(want, n_kv / 512)));
}

}  // namespace

void AttendDecode(const DecodeArgs& a, ThreadPool* pool_arg) {
  const HeadMap map = detail::CheckQkvOut(a.q, a.k, a.v, a.out);
  detail::CheckVariant(a.variant);
  const int batch = int(a.q.shape[0]);
  const auto cu = detail::CheckOffsets(a.cu_seqlens_kv, a.k.shape[0], "cu_seqlens_kv");
  if (int(cu.size()) - 1 != batch)
    throw InvalidArgument("decode has " + std::to_string(batch) + " query tokens but cu_seqlens_kv describes " +
                          std::to_string(cu.size() - 1) + " sequences");
  ThreadPool& pool = pool_arg ? *pool_arg : ThreadPool::Default();
  Geometry g{map, map.shared_group(), int(a.q.shape[2]), int(a.v.shape[2]),
             a.q.dtype == DType::kBF16 && tile::HasBf16Path(), a.variant.EffectiveScale(int(a.q.shape[2]))};
  const int units = map.num_q_heads / g.group;
  // Per-head contiguous keys: one unit per item, or two for grouped heads (two K and two V streams
  // in flight while the heavier compute runs measured ~5% faster). Interleaved heads: all units.
  const bool head_major = a.k.stride[0] == g.d && a.v.stride[0] == g.dv;
  const int units_per_item = head_major ? (units % 2 == 0 && g.group >= 4 ? 2 : 1) : units;

  std::vector<Item> items;
  std::vector<size_t> row_offset;  // [items + 1] first row of each item's partial state
  row_offset.push_back(0);
  for (int s = 0; s < batch; ++s) {
    const int64_t n_kv = cu[s + 1] - cu[s];
    const int splits =
        ChooseSplits(a.num_splits, n_kv, int64_t(batch) * (units / units_per_item), pool.num_threads());
    const int64_t per = (n_kv + splits - 1) / splits;
    const int64_t chunk = (per + kChunk - 1) / kChunk * kChunk;
    for (int u = 0; u < units; u += units_per_item)
      for (int sp = 0; sp < splits; ++sp) {
        items.push_back({s, u, u + units_per_item, sp, std::min(n_kv, sp * chunk), std::min(n_kv, (sp + 1) * chunk)});
        row_offset.push_back(row_offset.back() + size_t(units_per_item) * g.group);
      }
  }
  // Partial states: outputs [total rows, dv] and lse [total rows], merged per (sequence, units).
  std::vector<float> part_o(row_offset.back() * g.dv), part_lse(row_offset.back());
  pool.ParallelFor(int64_t(items.size()), [&](int64_t i, int) {
    const Item& it = items[i];
    RunItem(a, g, it, cu[it.seq], cu[it.seq + 1] - cu[it.seq], &part_o[row_offset[i] * g.dv], g.dv,
            &part_lse[row_offset[i]], 1);
  });
  // The splits of one (sequence, units) are adjacent items with equal row counts: exactly the
  // [state, row, ...] layout MergeStates reads.
  std::vector<float> merged_o, merged_lse;
  for (size_t i = 0; i < items.size();) {
    size_t j = i;
    while (j < items.size() && items[j].seq == items[i].seq && items[j].u0 == items[i].u0) ++j;
    const int rows = Rows(g, items[i]);
    merged_o.resize(size_t(rows) * g.dv);
    merged_lse.resize(rows);
    MergeStates(&part_o[row_offset[i] * g.dv], &part_lse[row_offset[i]], int(j - i), rows, g.dv, merged_o.data(),
                merged_lse.data());
    for (int h = 0; h < rows; ++h) {
      const int qh = items[i].u0 * g.group + h;
      std::memcpy(a.out.at<float>(items[i].seq, qh), &merged_o[size_t(h) * g.dv], size_t(g.dv) * 4);
      if (a.lse) a.lse[int64_t(items[i].seq) * map.num_q_heads + qh] = merged_lse[h];
    }
    i = j;
  }
}

}  // namespace qattn
