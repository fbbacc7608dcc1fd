// Decode over paged KV tiles in any KvDType (kv_format.h): the decode skeleton of decode.cc (work
// items of (sequence, KV heads, split), the shared segment loop, LSE merge; decode_skeleton.h) over
// a different key source: a KV head's keys are runs of tiles with logical positions, read in
// place. bf16 tiles (pair layout) run prefill's register tiles; f32 / f16 rows and shapes the
// bf16 kernels do not take run the f32 tile ops; int8 / int4 use the quantized tile ops.
//
// An item cuts each run into pieces (one QK or PV call); the loop gathers pieces across runs into
// segments of up to kSegment keys that share one softmax step (as many keys per step as the
// contiguous path, however short the pages) and prefetches ahead across pages. Items take two KV
// heads where decode.cc does (and both heads hold as many tiles).
#include <algorithm>
#include <cstring>

#include "core/dtype.h"
#include "kernels/checks.h"
#include "kernels/decode_skeleton.h"
#include "kernels/kv_format.h"
#include "kernels/kv_tile_ops.h"
#include "kernels/row_state.h"
#include "kernels/tile_ops.h"
#include "kernels/variant_mask.h"

namespace qattn {
namespace {

using decode::Item;
using decode::kSegment;
constexpr int kTileT = kKvTileTokens;

struct Geometry {
  HeadMap map;
  int group, d, dv;
  KvDType type;
  size_t kb, vb;  // bytes of one K tile and one V tile
  bool bf16;      // bf16 tiles on the vdpbf16ps path
  float scale;
  // Keys per QK / PV call: 64 for plain rows (16 KiB of bf16 at d = 128, as decode.cc), 128 for
  // int8, 256 for int4 (its P.V weight set-up per call and head group costs more; 256 measured ~5%
  // faster than 128 at 32/8 heads, d 128).
  int ChunkTiles() const { return type == KvDType::kInt4 ? 16 : type == KvDType::kInt8 ? 8 : 4; }
};

// Per-thread buffers for one work item.
struct Scratch {
  std::vector<float> q32;      // [rows, d]
  std::vector<uint16_t> q16;   // [rows, d] bf16
  std::vector<int8_t> q8;      // [rows, d]
  std::vector<float> qs;       // [rows] query scales
  std::vector<int32_t> qsum;   // [rows, ceil(d / 32)]
  std::vector<float> kv32;     // [chunk keys, max(d, dv)] f16/bf16 rows widened for the f32 path
  std::vector<float> o;        // [rows, dv]
  RowState rows;
  decode::SegmentPlan plan;
};

Scratch& ThreadScratch() {
  static thread_local Scratch scratch;
  return scratch;
}

// bf16 tiles on the vdpbf16ps kernels (whole dim pairs, 16-dim value vectors); else widened to f32.
bool UseBf16Path(KvDType t, int d, int dv) {
  return t == KvDType::kBF16 && tile::HasBf16Path() && d % 2 == 0 && dv % 16 == 0;
}

// The `rows` query heads from q [rows, d] in the form the format's dot products take.
void LoadQueries(const float* q, int rows, const Geometry& g, Scratch& sc) {
  const size_t n = size_t(rows) * g.d;
  if (IsQuantized(g.type)) {
    sc.q8.resize(n);
    sc.qs.resize(rows);
    sc.qsum.resize(size_t(rows) * ((g.d + 31) / 32));
    kvtile::QuantizeQuery(q, rows, g.d, sc.q8.data(), sc.qs.data(), sc.qsum.data());
  } else if (g.bf16) {
    sc.q16.resize(n);
    ConvertFromF32(q, sc.q16.data(), DType::kBF16, n);
  } else {
    sc.q32.assign(q, q + n);
  }
}

// The first n tokens of a run of tiles (tile_bytes apart) as f32 rows [n, width]: in place for f32
// (plain rows), else converted tile by tile into buf.
const float* TileRowsF32(KvDType t, bool value, const uint8_t* tiles, size_t tile_bytes, int n, int width,
                         std::vector<float>& buf) {
  if (t == KvDType::kF32) return reinterpret_cast<const float*>(tiles);
  buf.resize(size_t(n) * width);
  for (int t0 = 0; t0 < n; t0 += kTileT)
    LoadKvTokens(t, value, tiles + size_t(t0 / kTileT) * tile_bytes, std::min(kTileT, n - t0), width,
                 &buf[size_t(t0) * width]);
  return buf.data();
}

// Logits s [group, stride] of query rows [r0, r0 + group) for `n` keys at tile memory k.
void Dots(const Geometry& g, Scratch& sc, int r0, const uint8_t* k, int n, float* s, int stride) {
  if (IsQuantized(g.type)) {
    const size_t groups = (g.d + 31) / 32;
    const kvtile::QuantQuery q{sc.q8.data() + size_t(r0) * g.d, sc.qs.data() + r0, sc.qsum.data() + r0 * groups};
    kvtile::DotTiles(g.type, q, g.group, g.d, k, (n + kTileT - 1) / kTileT, g.kb, s, stride);
  } else if (g.bf16) {
    tile::DotTilesBf16(sc.q16.data() + size_t(r0) * g.d, g.group, g.d, reinterpret_cast<const uint16_t*>(k),
                       (n + kTileT - 1) / kTileT, s, stride);
  } else {
    tile::DotRowsF32(sc.q32.data() + size_t(r0) * g.d, g.group, g.d,
                     TileRowsF32(g.type, false, k, g.kb, n, g.d, sc.kv32), g.d, n, s, stride);
  }
}

// o [rows, dv] *= alpha[row] (the quantized P.V kernels add into o unscaled).
void RescaleRows(float* o, int rows, int dv, const float* alpha) {
  for (int h = 0; h < rows; ++h) {
    const float a = alpha[h];
    if (a == 1.0f) continue;
    float* row = o + size_t(h) * dv;
    for (int j = 0; j < dv; ++j) row[j] *= a;
  }
}

// o [group, dv] = alpha * o + p @ v for `n` values at tile memory v.
void Accumulate(const Geometry& g, Scratch& sc, float* o, const float* p, int stride, const uint8_t* v, int n,
                const float* alpha) {
  if (IsQuantized(g.type)) {
    RescaleRows(o, g.group, g.dv, alpha);
    kvtile::AccumulateTiles(g.type, p, g.group, stride, n, v, g.vb, g.dv, o);
  } else if (g.bf16) {
    tile::AccumulateTilesBf16(p, g.group, stride, n, reinterpret_cast<const uint16_t*>(v), g.dv, o, alpha);
  } else {
    tile::AccumulateRowsF32(p, g.group, stride, n, TileRowsF32(g.type, true, v, g.vb, n, g.dv, sc.kv32), g.dv, g.dv,
                            o, alpha);
  }
}

// Runs of tiles as the segment loop's key source: a piece is keys [first, first + n) of run src,
// starting on a tile boundary, its K and V tiles one block each.
class RunKeys : public decode::KeySource {
 public:
  RunKeys(const Geometry& g, Scratch& sc) : g_(g), sc_(sc) {}
  void Dots(const decode::Piece& pc, int r0, float* s, int stride) override {
    qattn::Dots(g_, sc_, r0, pc.k.p, pc.n, s, stride);
  }
  void Accumulate(const decode::Piece& pc, int r0, const float* p, int stride, float* o, const float* alpha) override {
    qattn::Accumulate(g_, sc_, o, p, stride, pc.v.p, pc.n, alpha);
  }
  int64_t Position(const decode::Piece& pc, int i) const override { return Pos(*Run(pc), pc.first + i); }

  static const KvRun* Run(const decode::Piece& pc) { return static_cast<const KvRun*>(pc.src); }
  static int64_t Pos(const KvRun& run, int64_t i) { return run.positions ? run.positions[i] : run.position + i; }

 private:
  const Geometry& g_;
  Scratch& sc_;
};

// Whether keys [first, first + n) of a run without a positions array lie wholly outside the
// query's visible keys.
bool Hidden(const KvRun& run, int64_t first, int n, const KeyInterval& b) {
  if (run.positions) return false;  // tested key by key
  const int64_t p0 = run.position + first, p1 = p0 + n - 1;
  return std::max(p0, b.lo) > std::min(p1, b.hi) && p0 > b.sink_hi;
}

// Whether keys [first, first + n) of a run need no positions: the variant has no window and no
// ALiBi, and every key is at or before the query (causal masks nothing).
bool PositionFree(const AttentionVariant& var, const KvRun& run, int64_t first, int n, int64_t qpos) {
  if (var.window_left >= 0 || var.window_right >= 0 || var.alibi_slopes) return false;
  if (!run.positions) return run.position + first + n - 1 <= qpos;
  for (int i = 0; i < n; ++i) {
    if (run.positions[first + i] > qpos) return false;
  }
  return true;
}

// Adds unit u's pieces over its tiles [k0, k1) (numbered across the head's runs), cut at run ends
// and every chunk of keys, to the plan; pieces the query cannot see are left out.
void PlanUnit(const PagedDecodeArgs& a, const Geometry& g, int seq, int u, int64_t k0, int64_t k1,
              const KeyInterval& b, decode::SegmentPlan& plan) {
  const int h_kv = g.map.num_k_heads, chunk = g.ChunkTiles() * kTileT;
  const int64_t r0 = a.run_offsets[size_t(seq) * h_kv + u], r1 = a.run_offsets[size_t(seq) * h_kv + u + 1];
  int64_t first_tile = 0;  // of run r, in the item's numbering
  for (int64_t r = r0; r < r1 && first_tile < k1; ++r) {
    const KvRun& run = a.runs[r];
    const int64_t tiles = (run.tokens + kTileT - 1) / kTileT;
    const int64_t t_end = std::min(tiles, k1 - first_tile);
    for (int64_t t = std::max<int64_t>(0, k0 - first_tile); t < t_end; t += chunk / kTileT) {
      const int n = int(std::min<int64_t>({chunk, (t_end - t) * kTileT, run.tokens - t * kTileT}));
      if (Hidden(run, t * kTileT, n, b)) continue;
      const int ntiles = (n + kTileT - 1) / kTileT;
      const decode::Block kb{static_cast<const uint8_t*>(run.k) + t * g.kb, int64_t(ntiles * g.kb), int64_t(ntiles * g.kb), 1};
      const decode::Block vb{static_cast<const uint8_t*>(run.v) + t * g.vb, int64_t(ntiles * g.vb), int64_t(ntiles * g.vb), 1};
      plan.Add({u, n, t * kTileT, &run, kb, vb}, !run.positions, RunKeys::Pos(run, t * kTileT),
               PositionFree(a.variant, run, t * kTileT, n, a.query_positions[seq]));
    }
    first_tile += tiles;
  }
}

// Runs tiles [it.k0, it.k1) of the runs of KV heads [it.u0, it.u1) in segments.
void RunItem(const PagedDecodeArgs& a, const Geometry& g, const Item& it, float* out, float* lse) {
  Scratch& sc = ThreadScratch();
  const int rows = (it.u1 - it.u0) * g.group;
  const int64_t qpos = a.query_positions[it.seq];
  LoadQueries(a.q.at<const float>(it.seq, it.u0 * g.group), rows, g, sc);
  decode::InitRows(sc.rows, a.variant, it.u0 * g.group, rows, it.split == 0, qpos,
                   VariantMask(a.variant, 1, qpos + 1).Row(0));
  sc.o.assign(size_t(rows) * g.dv, 0.0f);
  sc.plan.Clear();
  for (int u = it.u0; u < it.u1; ++u) PlanUnit(a, g, it.seq, u, it.k0, it.k1, sc.rows.bounds[0], sc.plan);
  sc.plan.Finish();
  RunKeys keys(g, sc);
  decode::RunSegments(sc.plan, keys, {g.group, g.dv, it.u0, g.scale, &a.variant, qpos}, sc.rows, sc.o.data());
  decode::FinishRows(sc.rows, sc.o.data(), rows, g.dv, out, g.dv, lse);
}

std::string S(int64_t x) { return std::to_string(x); }

// Checks the arguments and returns the head map.
HeadMap CheckArgs(const PagedDecodeArgs& a) {
  detail::CheckRank3(a.q, "Q");
  detail::CheckRank3(a.out, "output");
  detail::CheckVariant(a.variant);
  if (a.q.dtype != DType::kF32 || a.out.dtype != DType::kF32) throw InvalidArgument("paged decode takes f32 Q and output");
  HeadMap map = a.map;
  map.Validate();
  if (map.num_k_heads != map.num_v_heads) throw InvalidArgument("paged decode needs H_k == H_v");
  const int64_t batch = a.q.shape[0];
  if (a.q.shape[1] != map.num_q_heads)
    throw InvalidArgument("Q has " + S(a.q.shape[1]) + " heads but the head map " + S(map.num_q_heads));
  KvTileBytes(a.kv_dtype, int(a.q.shape[2]), false);  // throws for unsupported head dims
  KvTileBytes(a.kv_dtype, a.d_v, true);
  if (a.out.shape[0] != batch || a.out.shape[1] != map.num_q_heads || a.out.shape[2] != a.d_v)
    throw InvalidArgument("output shape " + a.out.ShapeString() + " must be [" + S(batch) + ", " +
                          S(map.num_q_heads) + ", " + S(a.d_v) + "]");
  if (int64_t(a.query_positions.size()) != batch)
    throw InvalidArgument("query_positions has " + S(int64_t(a.query_positions.size())) + " entries for " + S(batch) + " sequences");
  if (int64_t(a.run_offsets.size()) != batch * map.num_k_heads + 1 || a.run_offsets.front() != 0 ||
      a.run_offsets.back() != int64_t(a.runs.size()))
    throw InvalidArgument("run_offsets must have batch * H_kv + 1 entries from 0 to the number of runs");
  for (size_t i = 1; i < a.run_offsets.size(); ++i)
    if (a.run_offsets[i] < a.run_offsets[i - 1]) throw InvalidArgument("run_offsets must not decrease");
  for (const KvRun& r : a.runs)
    if (r.tokens < 0 || (r.tokens > 0 && (!r.k || !r.v))) throw InvalidArgument("a KV run has a negative length or no tiles");
  return map;
}

}  // namespace

void AttendDecodePaged(const PagedDecodeArgs& a, ThreadPool* pool_arg) {
  const HeadMap map = CheckArgs(a);
  ThreadPool& pool = pool_arg ? *pool_arg : ThreadPool::Default();
  const int d = int(a.q.shape[2]);
  const Geometry g{map,
                   map.num_q_heads / map.num_k_heads,
                   d,
                   a.d_v,
                   a.kv_dtype,
                   KvTileBytes(a.kv_dtype, d, false),
                   KvTileBytes(a.kv_dtype, a.d_v, true),
                   UseBf16Path(a.kv_dtype, d, a.d_v),
                   a.variant.EffectiveScale(d)};
  const int batch = int(a.q.shape[0]), h_kv = map.num_k_heads;
  // Two KV heads per item where the plain path pairs them (grouped heads; two K and two V streams
  // in flight measured faster) and both heads hold as many tiles; else one.
  const bool pairs = h_kv % 2 == 0 && g.group >= 4;
  std::vector<Item> items;
  std::vector<size_t> row_offset = {0};  // [items + 1] first row of each item's partial state
  for (int s = 0; s < batch; ++s) {
    std::vector<int64_t> tokens(h_kv, 0), tiles(h_kv, 0);  // [h_kv] per head
    for (int h = 0; h < h_kv; ++h)
      for (int64_t r = a.run_offsets[size_t(s) * h_kv + h]; r < a.run_offsets[size_t(s) * h_kv + h + 1]; ++r) {
        tokens[h] += a.runs[r].tokens;
        tiles[h] += (a.runs[r].tokens + kTileT - 1) / kTileT;
      }
    for (int h = 0; h < h_kv;) {
      const int units = pairs && h + 1 < h_kv && tiles[h] == tiles[h + 1] ? 2 : 1;
      const int splits =
          decode::ChooseSplits(a.num_splits, tokens[h], int64_t(batch) * h_kv / (pairs ? 2 : 1), pool.num_threads());
      decode::AddSplitItems(s, h, h + units, tiles[h], splits, g.ChunkTiles(), units * g.group, &items, &row_offset);
      h += units;
    }
  }
  decode::RunAndMerge(
      items, row_offset, g.dv, pool, [&](const Item& it, float* o, float* lse) { RunItem(a, g, it, o, lse); },
      [&](const Item& it, int h, const float* o, float lse) {
        const int qh = it.u0 * g.group + h;
        std::memcpy(a.out.at<float>(it.seq, qh), o, size_t(g.dv) * 4);
        if (a.lse) a.lse[int64_t(it.seq) * map.num_q_heads + qh] = lse;
      });
}

void KvDotRuns(KvDType t, const float* q, int g, int d, const KvRun* runs, size_t num_runs, float* s,
               int64_t s_stride) {
  const size_t kb = KvTileBytes(t, d, false);
  std::vector<float> buf(size_t(g) * kSegment);  // [g, kSegment] logits of one block of keys
  Geometry geo{HeadMap{g, 1, 1}, g, d, d, t, kb, KvTileBytes(t, d, true), UseBf16Path(t, d, d), 1.0f};
  Scratch sc;
  LoadQueries(q, g, geo, sc);
  int64_t t0 = 0;  // first column of the current run
  for (size_t r = 0; r < num_runs; ++r) {
    const uint8_t* k = static_cast<const uint8_t*>(runs[r].k);
    for (int64_t c0 = 0; c0 < runs[r].tokens; c0 += kSegment) {
      const int n = int(std::min<int64_t>(kSegment, runs[r].tokens - c0));
      Dots(geo, sc, 0, k + c0 / kTileT * kb, n, buf.data(), kSegment);
      for (int h = 0; h < g; ++h) std::memcpy(s + h * s_stride + t0 + c0, &buf[size_t(h) * kSegment], size_t(n) * 4);
    }
    t0 += runs[r].tokens;
  }
}

void KvDotRun(KvDType t, const float* q, int g, int d, const KvRun& run, float* s, int64_t s_stride) {
  KvDotRuns(t, q, g, d, &run, 1, s, s_stride);
}

}  // namespace qattn
