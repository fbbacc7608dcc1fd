// The decode skeleton: one query token per sequence. A work item is (sequence, KV head group,
// split of the keys); it computes every query head of the group at once, so each K and V byte is
// read from memory once, and the splits are merged by log-sum-exp. The keys are K/V tensor rows,
// fed to the segment loop shared with paged decode (decode_skeleton.h) in pieces of kChunk rows.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/attention.h"
#include "kernels/checks.h"
#include "kernels/decode_skeleton.h"
#include "kernels/row_state.h"
#include "kernels/tile_ops.h"
#include "kernels/variant_mask.h"

namespace qattn {
namespace {

using decode::Item;
using decode::kChunk;
using decode::kSegment;

struct Geometry {
  HeadMap map;
  int group;  // query heads per work item
  int d, dv;
  bool bf16;
  float scale;
};

// An item (decode_skeleton.h) walks keys [k0, k1) of one sequence for units [u0, u1): one or two
// units when each head's keys are contiguous, all units when a token's heads are interleaved
// ([n_kv, H, d]), so memory is read front to back. Its state has rows = (u1 - u0) * group heads.

// Per-thread buffers for one work item.
struct Scratch {
  std::vector<float> q32;          // [rows, d]
  std::vector<uint16_t> q16;       // [rows, d]
  std::vector<float> kv32;         // [kChunk, max(d, dv)] f16/bf16 rows widened for the f32 path
  std::vector<float> o;            // [rows, dv]
  RowState rows;                   // softmax state of the item's rows
  decode::SegmentPlan plan;
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

// Rows [first, first + n) of a K or V head as a block of memory to prefetch.
decode::Block RowBlock(const TensorView& t, int64_t first, int n, int head) {
  const int64_t elem = int64_t(DTypeSize(t.dtype));
  return {t.at<const uint8_t>(first, head), t.shape[2] * elem, t.stride[0] * elem, n};
}

// K/V tensors as the segment loop's key source: a piece is rows [first, first + n) of the
// sequence (from kv_start) of one unit's K and V heads.
class TensorKeys : public decode::KeySource {
 public:
  TensorKeys(const DecodeArgs& a, const Geometry& g, int64_t kv_start, Scratch& sc)
      : a_(a), g_(g), kv_start_(kv_start), sc_(sc) {}

  void Dots(const decode::Piece& pc, int r0, float* s, int stride) override {
    const int kh = g_.map.k_head(pc.unit * g_.group);
    if (g_.bf16) {
      tile::DotRowsBf16(&sc_.q16[size_t(r0) * g_.d], g_.group, g_.d, a_.k.at<const uint16_t>(kv_start_ + pc.first, kh),
                        a_.k.stride[0], pc.n, s, stride);
      return;
    }
    int64_t row_stride;
    const float* k = RowsF32(a_.k, kv_start_ + pc.first, kh, pc.n, g_.d, sc_.kv32, &row_stride);
    tile::DotRowsF32(&sc_.q32[size_t(r0) * g_.d], g_.group, g_.d, k, row_stride, pc.n, s, stride);
  }

  void Accumulate(const decode::Piece& pc, int r0, const float* p, int stride, float* o, const float* alpha) override {
    (void)r0;
    const int vh = g_.map.v_head(pc.unit * g_.group);
    if (g_.bf16) {
      tile::AccumulateRowsBf16(p, g_.group, stride, pc.n, a_.v.at<const uint16_t>(kv_start_ + pc.first, vh),
                               a_.v.stride[0], g_.dv, o, alpha);
      return;
    }
    int64_t row_stride;
    const float* v = RowsF32(a_.v, kv_start_ + pc.first, vh, pc.n, g_.dv, sc_.kv32, &row_stride);
    tile::AccumulateRowsF32(p, g_.group, stride, pc.n, v, row_stride, g_.dv, o, alpha);
  }

  int64_t Position(const decode::Piece& pc, int i) const override { return pc.first + i; }

 private:
  const DecodeArgs& a_;
  const Geometry& g_;
  int64_t kv_start_;
  Scratch& sc_;
};

// Adds the item's pieces: kChunk keys of each unit at a time, leaving out those the variant hides
// entirely (sliding windows read only their window).
void PlanItem(const DecodeArgs& a, const Geometry& g, const Item& it, int64_t kv_start, const KeyInterval& b,
              decode::SegmentPlan& plan) {
  plan.Clear();
  for (int u = it.u0; u < it.u1; ++u) {
    const int kh = g.map.k_head(u * g.group), vh = g.map.v_head(u * g.group);
    for (int64_t c = it.k0; c < it.k1; c += kChunk) {
      const int n = int(std::min<int64_t>(kChunk, it.k1 - c));
      const bool in_window = std::max(c, b.lo) <= std::min(c + n - 1, b.hi);
      if (!in_window && c > b.sink_hi) continue;
      plan.Add({u, n, c, nullptr, RowBlock(a.k, kv_start + c, n, kh), RowBlock(a.v, kv_start + c, n, vh)}, true, c);
    }
  }
  plan.Finish();
}

// Runs one item and writes its normalised output [rows, dv] and lse [rows].
void RunItem(const DecodeArgs& a, const Geometry& g, const Item& it, int64_t kv_start, int64_t n_kv, float* out,
             float* lse) {
  Scratch& sc = ThreadScratch();
  LoadQueries(a, g, it, sc);
  decode::InitRows(sc.rows, a.variant, it.u0 * g.group, Rows(g, it), it.split == 0, n_kv - 1,
                   VariantMask(a.variant, 1, n_kv).Row(0));
  sc.o.assign(size_t(Rows(g, it)) * g.dv, 0.0f);
  PlanItem(a, g, it, kv_start, sc.rows.bounds[0], sc.plan);
  TensorKeys keys(a, g, kv_start, sc);
  decode::RunSegments(sc.plan, keys, {g.group, g.dv, it.u0, g.scale, &a.variant, n_kv - 1}, sc.rows, sc.o.data());
  decode::FinishRows(sc.rows, sc.o.data(), Rows(g, it), g.dv, out, g.dv, lse);
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
             // the vdpbf16ps kernels hold a query in registers (d <= 512); longer rows widen to f32
             a.q.dtype == DType::kBF16 && tile::HasBf16Path() && a.q.shape[2] <= 512,
             a.variant.EffectiveScale(int(a.q.shape[2]))};
  const int units = map.num_q_heads / g.group;
  // Per-head contiguous keys: one unit per item, or two for grouped heads (two K and two V streams
  // in flight while the heavier compute runs measured ~5% faster). Interleaved heads: all units.
  const bool head_major = a.k.stride[0] == g.d && a.v.stride[0] == g.dv;
  const int units_per_item = head_major ? (units % 2 == 0 && g.group >= 4 ? 2 : 1) : units;

  std::vector<Item> items;
  std::vector<size_t> row_offset = {0};  // [items + 1] first row of each item's partial state
  for (int s = 0; s < batch; ++s) {
    const int64_t n_kv = cu[s + 1] - cu[s];
    const int splits =
        decode::ChooseSplits(a.num_splits, n_kv, int64_t(batch) * (units / units_per_item), pool.num_threads());
    for (int u = 0; u < units; u += units_per_item)
      decode::AddSplitItems(s, u, u + units_per_item, n_kv, splits, kChunk, units_per_item * g.group, &items,
                            &row_offset);
  }
  decode::RunAndMerge(
      items, row_offset, g.dv, pool,
      [&](const Item& it, float* o, float* lse) {
        RunItem(a, g, it, cu[it.seq], cu[it.seq + 1] - cu[it.seq], o, lse);
      },
      [&](const Item& it, int h, const float* o, float lse) {
        const int qh = it.u0 * g.group + h;
        std::memcpy(a.out.at<float>(it.seq, qh), o, size_t(g.dv) * 4);
        if (a.lse) a.lse[int64_t(it.seq) * map.num_q_heads + qh] = lse;
      });
}

}  // namespace qattn
