#include "kernels/decode_skeleton.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "core/prefetch.h"

namespace qattn::decode {

int ChooseSplits(int requested, int64_t n_kv, int64_t other_items, int threads) {
  if (requested > 0) return int(std::max<int64_t>(1, std::min<int64_t>(requested, (n_kv + kChunk - 1) / kChunk)));
  // Enough items to keep every thread busy with some slack for balance, but chunks of >= 512 keys.
  const int64_t want = (4 * threads + other_items - 1) / std::max<int64_t>(1, other_items);
  return int(std::max<int64_t>(1, std::min<int64_t>(want, n_kv / 512)));
}

void AddSplitItems(int seq, int u0, int u1, int64_t n, int splits, int64_t align, int rows, std::vector<Item>* items,
                   std::vector<size_t>* row_offset) {
  const int64_t per = (n + splits - 1) / splits;
  const int64_t chunk = (per + align - 1) / align * align;
  for (int sp = 0; sp < splits; ++sp) {
    items->push_back({seq, u0, u1, sp, std::min(n, sp * chunk), std::min(n, (sp + 1) * chunk)});
    row_offset->push_back(row_offset->back() + size_t(rows));
  }
}

void InitRows(RowState& st, const AttentionVariant& var, int h0, int rows, bool first_split, int64_t query_pos,
              const KeyInterval& bounds) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  st.m.resize(rows);
  st.l.resize(rows);
  st.slope.resize(rows);
  for (int h = 0; h < rows; ++h) {
    const bool sink = var.sink_logits && first_split;
    st.m[h] = sink ? var.sink_logits[h0 + h] : kNegInf;
    st.l[h] = sink ? 1.0f : 0.0f;
    st.slope[h] = var.alibi_slopes ? var.alibi_slopes[h0 + h] : 0.0f;
  }
  st.alpha.assign(rows, 1.0f);
  st.pos.assign(rows, query_pos);
  st.bounds.assign(rows, bounds);
}

void FinishRows(const RowState& st, const float* o, int rows, int dv, float* out, int64_t out_stride, float* lse) {
  for (int h = 0; h < rows; ++h) {
    const float inv = st.OutputScale(h);
    for (int j = 0; j < dv; ++j) out[h * out_stride + j] = o[size_t(h) * dv + j] * inv;
    lse[h] = st.Lse(h);
  }
}

void SegmentPlan::Clear() {
  pieces_.clear();
  segs_.clear();
  blocks_.clear();
  open_ = Segment{-1, 0, 0, 0, true, 0};
}

void SegmentPlan::Close() {
  if (open_.n > 0) segs_.push_back(open_);
  open_.n = 0;
}

void SegmentPlan::Add(const Piece& pc, bool interval, int64_t first_pos, bool free) {
  const bool same_kind = free ? open_.free : (!open_.free && interval == open_.interval &&
                                              (!interval || first_pos == open_.first_pos + open_.n));
  const bool joins = open_.unit == pc.unit && open_.n + pc.n <= kSegment && same_kind;
  if (!joins) {
    Close();
    open_ = Segment{pc.unit, pieces_.size(), pieces_.size(), 0, interval, first_pos, free};
  }
  pieces_.push_back(pc);
  open_.p1 = pieces_.size();
  open_.n += pc.n;
}

void SegmentPlan::Finish() {
  Close();
  // Round robin: segment i of every unit before segment i + 1 of any (stable: units keep their order).
  std::vector<std::pair<int, size_t>> seen;  // (unit, its segments so far); an item has 1 or 2 units, or a few
  std::vector<size_t> index(segs_.size());     // [segments] index of each among its unit's segments
  for (size_t i = 0; i < segs_.size(); ++i) {
    auto it = std::find_if(seen.begin(), seen.end(), [&](const auto& e) { return e.first == segs_[i].unit; });
    if (it == seen.end()) it = seen.insert(seen.end(), {segs_[i].unit, 0});
    index[i] = it->second++;
  }
  std::vector<size_t> order(segs_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return index[x] < index[y]; });
  std::vector<Segment> sorted;
  for (size_t i : order) sorted.push_back(segs_[i]);
  segs_.swap(sorted);
  for (const Segment& sg : segs_) {
    for (size_t i = sg.p0; i < sg.p1; ++i) blocks_.push_back(pieces_[i].k);
    for (size_t i = sg.p0; i < sg.p1; ++i) blocks_.push_back(pieces_[i].v);
  }
}

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void PrefetchBlock(const Block& b) {
  if (b.stride == b.row_bytes) return PrefetchBytes(b.p, b.row_bytes * b.rows);
  for (int r = 0; r < b.rows; ++r) PrefetchBytes(b.p + r * b.stride, b.row_bytes);
}

int64_t BlockBytes(const Block& b) { return b.row_bytes * b.rows; }

// Asks for the blocks from step + 2 to the first one at least kAheadBytes past the block being
// read and no earlier than step + 3, each block at most twice (the newest one again on the next
// step: a repeated request for a line already on its way costs little, and a dropped one is
// caught). With blocks of 64 bf16 rows (16 KiB) that is blocks step + 2 and step + 3, which on
// paged bf16 decode (32/8 heads, d 128, 2 threads) measured ~10% faster than step + 1..2 and ~2x
// faster than no prefetching (a single request per block at the same distance measured ~30%
// slower); scattered 16-token pages (Quest) get as many small blocks as make the same distance.
class Prefetcher {
 public:
  explicit Prefetcher(const std::vector<Block>& blocks) : blocks_(blocks) {
    for (size_t i = 0; i < std::min<size_t>(2, blocks.size()); ++i) PrefetchBlock(blocks[i]);
    issued_ = std::min<size_t>(2, blocks.size());
  }
  // Called as block `step` is about to be read.
  void Advance(size_t step) {
    int64_t bytes = 0;
    for (size_t i = step + 1; i < blocks_.size(); ++i) {
      if (i >= step + 2 && i + 1 >= issued_) PrefetchBlock(blocks_[i]);
      bytes += BlockBytes(blocks_[i]);
      issued_ = std::max(issued_, i + 1);
      if (i >= step + 3 && bytes >= kAheadBytes) break;
    }
  }

 private:
  static constexpr int64_t kAheadBytes = 48 << 10;
  const std::vector<Block>& blocks_;
  size_t issued_ = 0;  // blocks [0, issued_) have been asked for
};

bool Visible(const AttentionVariant& var, int64_t qpos, int64_t p) {
  if (p > qpos) return false;  // causal is implied
  if (var.window_right >= 0 && p > qpos + var.window_right) return false;
  return var.window_left < 0 || p >= qpos - var.window_left || p < var.sink_tokens;
}

// Scale, softcap, ALiBi and the mask applied by each key's own position pos[n] (keys not
// consecutive) to s [group, stride]; returns false if the query sees none of them.
bool TransformByPositions(const SegmentParams& prm, const int64_t* pos, int n, const float* slopes, float* s,
                          int stride) {
  const AttentionVariant& var = *prm.variant;
  bool any = false;
  for (int i = 0; i < n; ++i) {
    const int64_t p = pos[i];
    const bool vis = Visible(var, prm.query_pos, p);
    any = any || vis;
    for (int h = 0; h < prm.group; ++h) {
      float& x = s[int64_t(h) * stride + i];
      if (!vis) {
        x = kNegInf;
        continue;
      }
      x *= prm.scale;
      if (var.softcap > 0) x = var.softcap * std::tanh(x / var.softcap);
      if (slopes) x -= slopes[h] * float(std::llabs(prm.query_pos - p));
    }
  }
  return any;
}

struct LoopScratch {
  std::vector<float> s;      // [group, SegmentStride(kSegment)] logits, then probabilities
  std::vector<float> ones;   // [group] rescale factors of 1
  std::vector<int64_t> pos;  // [kSegment] key positions of a segment that is not an interval
};

LoopScratch& ThreadLoopScratch() {
  static thread_local LoopScratch scratch;
  return scratch;
}

// The softmax step of one segment on s [group, stride]; false if the query sees none of its keys.
bool SegmentSoftmax(const SegmentPlan& plan, const Segment& sg, KeySource& keys, const SegmentParams& prm, int r0,
                    RowState& rows, float* s, int stride, LoopScratch& sc) {
  if (sg.free) {  // every key visible, no positional hook: scale and softcap only
    rows.Step(s, r0, prm.group, sg.n, stride, 0, prm.scale, *prm.variant, false);
    return true;
  }
  if (sg.interval) {
    const KeyInterval b = rows.bounds[r0];
    const int64_t p0 = sg.first_pos, p1 = sg.first_pos + sg.n - 1;
    const bool full = (b.lo <= p0 && p1 <= b.hi) || p1 <= b.sink_hi;
    rows.Step(s, r0, prm.group, sg.n, stride, p0, prm.scale, *prm.variant, !full);
    return true;
  }
  int c = 0;
  for (size_t i = sg.p0; i < sg.p1; ++i)
    for (int k = 0; k < plan.pieces()[i].n; ++k) sc.pos[c++] = keys.Position(plan.pieces()[i], k);
  const float* slopes = prm.variant->alibi_slopes ? &rows.slope[r0] : nullptr;
  if (!TransformByPositions(prm, sc.pos.data(), sg.n, slopes, s, stride)) return false;
  rows.Step(s, r0, prm.group, sg.n, stride, sg.first_pos, 1.0f, AttentionVariant{}, false);
  return true;
}

}  // namespace

void RunSegments(const SegmentPlan& plan, KeySource& keys, const SegmentParams& prm, RowState& rows, float* o) {
  LoopScratch& sc = ThreadLoopScratch();
  sc.s.resize(size_t(prm.group) * SegmentStride(kSegment));
  sc.ones.assign(prm.group, 1.0f);
  sc.pos.resize(kSegment);
  Prefetcher prefetch(plan.blocks());
  size_t step = 0;  // the prefetch list's cursor: blocks read so far
  for (const Segment& sg : plan.segments()) {
    const int r0 = (sg.unit - prm.u0) * prm.group;
    const int stride = SegmentStride(sg.n);
    float* s = sc.s.data();  // [group, stride]
    int col = 0;
    for (size_t i = sg.p0; i < sg.p1; ++i, ++step) {
      prefetch.Advance(step);
      keys.Dots(plan.pieces()[i], r0, s + col, stride);
      col += plan.pieces()[i].n;
    }
    if (!SegmentSoftmax(plan, sg, keys, prm, r0, rows, s, stride, sc)) {
      step += sg.p1 - sg.p0;  // nothing visible: skip the values
      continue;
    }
    col = 0;
    for (size_t i = sg.p0; i < sg.p1; ++i, ++step) {
      prefetch.Advance(step);
      const float* alpha = i == sg.p0 ? &rows.alpha[r0] : sc.ones.data();  // rescale once per segment
      keys.Accumulate(plan.pieces()[i], r0, s + col, stride, o + size_t(r0) * prm.dv, alpha);
      col += plan.pieces()[i].n;
    }
  }
}

void RunAndMerge(const std::vector<Item>& items, const std::vector<size_t>& row_offset, int dv, ThreadPool& pool,
                 const RunItemFn& run, const WriteRowFn& write) {
  // Partial states: outputs [total rows, dv] and lse [total rows].
  std::vector<float> part_o(row_offset.back() * dv), part_lse(row_offset.back());
  pool.ParallelFor(int64_t(items.size()), [&](int64_t i, int) {
    run(items[i], &part_o[row_offset[i] * dv], &part_lse[row_offset[i]]);
  });
  // The splits of one (sequence, units) are adjacent items with equal row counts: exactly the
  // [state, row, ...] layout MergeStates reads.
  std::vector<float> merged_o, merged_lse;  // [rows, dv], [rows]
  for (size_t i = 0; i < items.size();) {
    size_t j = i;
    while (j < items.size() && items[j].seq == items[i].seq && items[j].u0 == items[i].u0) ++j;
    const int rows = int(row_offset[i + 1] - row_offset[i]);
    merged_o.resize(size_t(rows) * dv);
    merged_lse.resize(rows);
    MergeStates(&part_o[row_offset[i] * dv], &part_lse[row_offset[i]], int(j - i), rows, dv, merged_o.data(),
                merged_lse.data());
    for (int h = 0; h < rows; ++h) write(items[i], h, &merged_o[size_t(h) * dv], merged_lse[h]);
    i = j;
  }
}

}  // namespace qattn::decode
