// The parts of the split-KV decode skeleton that do not depend on how keys are stored, shared by
// AttendDecode (tensors, decode.cc) and AttendDecodePaged (tiles, kv_decode.cc): work items and
// their split choice, the softmax rows' set-up and finish, prefetching, and the parallel run of
// the items with the log-sum-exp merge of their splits.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/row_state.h"
#include "kernels/variant_mask.h"

namespace qattn::decode {

constexpr int kChunk = 64;      // keys per QK or PV call: 16 KiB of bf16 K or V at d = 128
constexpr int kSegment = 2048;  // keys per softmax step; logits [group, kSegment] stay in L2

// Units are groups of query heads sharing one K head and one V head. An item walks keys [k0, k1)
// of one sequence (in the caller's unit of keys) for units [u0, u1), split `split` of its group.
struct Item {
  int seq, u0, u1, split;
  int64_t k0, k1;
};

// Splits of one sequence's keys: enough items for every thread with some slack, >= 512 keys each.
int ChooseSplits(int requested, int64_t n_kv, int64_t other_items, int threads);

// Appends the `splits` items of (seq, units [u0, u1)) over keys [0, n), cut at multiples of `align`,
// and their first partial-state rows (`rows` per item) to row_offset.
void AddSplitItems(int seq, int u0, int u1, int64_t n, int splits, int64_t align, int rows, std::vector<Item>* items,
                   std::vector<size_t>* row_offset);

// Sets up `rows` softmax rows for query heads [h0, h0 + rows) at position query_pos; the sink
// logit joins only the first split (once per sequence). bounds: the visible key interval.
void InitRows(RowState& st, const AttentionVariant& var, int h0, int rows, bool first_split, int64_t query_pos,
              const KeyInterval& bounds);

// Normalises the accumulated rows o [rows, dv] into out (row stride out_stride) and lse.
void FinishRows(const RowState& st, const float* o, int rows, int dv, float* out, int64_t out_stride, float* lse);

// ---- The segment loop, shared by both key sources ----
// An item's keys come as pieces (one QK or PV call each) gathered into segments of up to kSegment
// keys that share one softmax step; QK runs over a whole segment before PV, so K and then V are
// each read front to back in long runs (the hardware prefetcher streams those at close to the
// plain read rate; alternating 64 KiB pieces of K and V measured about 20% slower). Every piece's
// K and V memory is listed in read order, and software prefetching runs ahead along that list
// across pages and heads (the hardware prefetcher alone falls well behind a stream that is also
// computed on: K-only QK for 8 heads measured 12 GB/s from DRAM without it, 22 GB/s with it).

// Memory one call reads: `rows` rows of `row_bytes`, `stride` bytes apart.
struct Block {
  const uint8_t* p;
  int64_t row_bytes, stride;
  int rows;
};

// A piece: n keys of one unit. `first` and `src` are the key source's (a row index; a run).
struct Piece {
  int unit;
  int n;
  int64_t first;
  const void* src;
  Block k, v;
};

// Pieces [p0, p1) of one unit that share a softmax step, n keys in all. `interval`: consecutive
// positions from first_pos (the step masks by interval); else each key's own position. `free`:
// no key needs its position (every key is visible and no logit hook reads positions), so pieces
// from anywhere join one step: scattered pages (Quest, retrieval) keep 2048-key steps.
struct Segment {
  int unit;
  size_t p0, p1;
  int n;
  bool interval;
  int64_t first_pos;
  bool free = false;
};

// An item's pieces and segments, and the blocks in the order the loop reads them.
class SegmentPlan {
 public:
  void Clear();
  // Appends the next piece of `unit` (units in any order, each unit's pieces in key order); it
  // joins the unit's open segment if that has room and, for intervals, continues its positions.
  void Add(const Piece& pc, bool interval, int64_t first_pos, bool free = false);
  // Closes the open segments and orders them round robin over units (two units' K and V streams
  // in flight while the heavier compute runs measured ~5% faster), then lists the blocks.
  void Finish();
  const std::vector<Piece>& pieces() const { return pieces_; }
  const std::vector<Segment>& segments() const { return segs_; }
  const std::vector<Block>& blocks() const { return blocks_; }

 private:
  void Close();
  std::vector<Piece> pieces_;
  std::vector<Segment> segs_;
  std::vector<Block> blocks_;  // [2 * pieces] K blocks then V blocks of each segment, run order
  Segment open_{-1, 0, 0, 0, true, 0};
};

// Where the loop's keys come from: contiguous rows of K/V tensors (decode.cc) or runs of tiles
// (kv_decode.cc). Rows [r0, r0 + group) of the item's state belong to the piece's unit.
class KeySource {
 public:
  virtual ~KeySource() = default;
  // s [group, s_stride] = raw dot products of the rows' queries with the piece's keys.
  virtual void Dots(const Piece& pc, int r0, float* s, int s_stride) = 0;
  // o [group, dv] = alpha[row] * o + p [group, p_stride] @ the piece's values.
  virtual void Accumulate(const Piece& pc, int r0, const float* p, int p_stride, float* o, const float* alpha) = 0;
  // Logical position of key i of a piece (asked only for segments that are not intervals).
  virtual int64_t Position(const Piece& pc, int i) const = 0;
};

// What the loop needs besides the keys.
struct SegmentParams {
  int group, dv, u0;  // rows per unit, value width, the item's first unit
  float scale;
  const AttentionVariant* variant;
  int64_t query_pos;
};

// Logit columns of a segment of n keys, with room for 15 more (whole-tile dot products may write
// up to 15 columns past a piece's keys; the next piece overwrites them).
inline int SegmentStride(int n) { return (n + 31) / 16 * 16; }

// Runs the plan's segments into rows (softmax state) and o [rows, dv].
void RunSegments(const SegmentPlan& plan, KeySource& keys, const SegmentParams& prm, RowState& rows, float* o);

// Runs every item on the pool into partial states [row_offset[i], ...) of dv floats plus an lse,
// merges the adjacent splits of each (seq, u0) and hands each merged row to write(item, row, o, lse).
using RunItemFn = std::function<void(const Item& it, float* o, float* lse)>;
using WriteRowFn = std::function<void(const Item& it, int row, const float* o, float lse)>;
void RunAndMerge(const std::vector<Item>& items, const std::vector<size_t>& row_offset, int dv, ThreadPool& pool,
                 const RunItemFn& run, const WriteRowFn& write);

}  // namespace qattn::decode
