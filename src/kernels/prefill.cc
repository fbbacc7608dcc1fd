// The prefill skeleton: for each (sequence, query head, query block), walk the block list's KV
// blocks through QK -> online softmax -> PV tiles, then normalise. K and V are repacked once per
// KV head into the tile kernels' layout, so every query head of a group reuses them.
#include <cmath>
#include <algorithm>
#include <cstring>
#include <limits>

#include "core/aligned_buffer.h"
#include "kernels/attention.h"
#include "kernels/checks.h"
#include "kernels/row_state.h"
#include "kernels/tile_ops.h"
#include "kernels/variant_mask.h"

namespace qattn {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int RoundUp(int x, int m) { return (x + m - 1) / m * m; }

// One sequence of a varlen batch.
struct Sequence {
  int64_t q_start, n_q, kv_start, n_kv;
  int block_offset;  // index of this sequence's first KV block in the packed buffers
  const BlockList* blocks;
};

// K and V of every sequence and head, repacked block by block:
//   bf16 path: K block [d_pad / 2, kv_block, 2], V block [kv_block / 2, dv_pad, 2] (bf16 pairs)
//   f32 path:  K block [d, kv_block] (transposed), V block [kv_block, dv_pad]
struct PackedKV {
  bool bf16 = false;
  int kv_block = 64, d = 0, d_pad = 0, dv = 0, dv_pad = 0, total_blocks = 0;
  AlignedBuffer k;  // [H_k, total_blocks, K block]
  AlignedBuffer v;  // [H_v, total_blocks, V block]

  size_t elem() const { return bf16 ? 2 : 4; }
  size_t k_block_elems() const { return size_t(d_pad) * kv_block; }
  size_t v_block_elems() const { return size_t(kv_block) * dv_pad; }
  const void* KBlock(int head, int block) const {
    return k.as<char>() + (size_t(head) * total_blocks + block) * k_block_elems() * elem();
  }
  const void* VBlock(int head, int block) const {
    return v.as<char>() + (size_t(head) * total_blocks + block) * v_block_elems() * elem();
  }
};

void PackKBlock(const TensorView& k, const Sequence& seq, int head, int b, const PackedKV& pk, void* dst) {
  const int64_t first = seq.kv_start + int64_t(b) * pk.kv_block;
  const int keys = int(std::min<int64_t>(pk.kv_block, seq.n_kv - int64_t(b) * pk.kv_block));
  std::vector<float> row32(pk.bf16 ? 0 : pk.d);  // [d] one key widened, f32 path
  for (int c = 0; c < keys; ++c) {
    const void* row = k.at(first + c, head);
    if (pk.bf16) {
      const uint16_t* src = static_cast<const uint16_t*>(row);
      uint16_t* out = static_cast<uint16_t*>(dst);
      for (int i = 0; i < pk.d; ++i) out[size_t(i / 2) * pk.kv_block * 2 + c * 2 + i % 2] = src[i];
    } else {
      ConvertToF32(row, k.dtype, row32.data(), size_t(pk.d));
      float* out = static_cast<float*>(dst);
      for (int i = 0; i < pk.d; ++i) out[size_t(i) * pk.kv_block + c] = row32[i];
    }
  }
}

void PackVBlock(const TensorView& v, const Sequence& seq, int head, int b, const PackedKV& pk, void* dst) {
  const int64_t first = seq.kv_start + int64_t(b) * pk.kv_block;
  const int keys = int(std::min<int64_t>(pk.kv_block, seq.n_kv - int64_t(b) * pk.kv_block));
  for (int c = 0; c < keys; ++c) {
    const void* row = v.at(first + c, head);
    if (pk.bf16) {
      const uint16_t* src = static_cast<const uint16_t*>(row);
      uint16_t* out = static_cast<uint16_t*>(dst);
      for (int j = 0; j < pk.dv; ++j) out[size_t(c / 2) * pk.dv_pad * 2 + j * 2 + c % 2] = src[j];
    } else {
      float* out = static_cast<float*>(dst) + size_t(c) * pk.dv_pad;
      ConvertToF32(row, v.dtype, out, size_t(pk.dv));
    }
  }
}

void PackAll(const PrefillArgs& a, const HeadMap& map, const std::vector<Sequence>& seqs, PackedKV& pk,
             ThreadPool& pool) {
  pk.k = AlignedBuffer(size_t(map.num_k_heads) * pk.total_blocks * pk.k_block_elems() * pk.elem());
  pk.v = AlignedBuffer(size_t(map.num_v_heads) * pk.total_blocks * pk.v_block_elems() * pk.elem());
  std::vector<std::pair<int, int>> block_owner;  // [total_blocks] (sequence, block within it)
  for (int s = 0; s < int(seqs.size()); ++s)
    for (int b = 0; b < seqs[s].blocks->num_kv_blocks; ++b) block_owner.emplace_back(s, b);
  const int heads = map.num_k_heads + map.num_v_heads;
  pool.ParallelFor(int64_t(heads) * pk.total_blocks, [&](int64_t item, int) {
    const int head = int(item / pk.total_blocks), global = int(item % pk.total_blocks);
    const auto [s, b] = block_owner[global];
    if (head < map.num_k_heads)
      PackKBlock(a.k, seqs[s], head, b, pk, const_cast<void*>(pk.KBlock(head, global)));
    else
      PackVBlock(a.v, seqs[s], head - map.num_k_heads, b, pk, const_cast<void*>(pk.VBlock(head - map.num_k_heads, global)));
  });
}

// Per-thread buffers for one query block.
struct Scratch {
  std::vector<float> q32;          // [rows, d]        f32 path
  std::vector<uint16_t> q16;       // [rows, d_pad]    bf16 path
  std::vector<float> s;            // [rows, kv_block] logits, then probabilities
  std::vector<float> o;            // [rows, dv_pad]   unnormalised output
  RowState rows;                   // softmax state of the block's rows
};

Scratch& ThreadScratch() {
  static thread_local Scratch scratch;
  return scratch;
}

struct Context {
  const PrefillArgs& args;
  const HeadMap& map;
  const PackedKV& pk;
  float scale;
};

void LoadQueries(const Context& cx, const Sequence& seq, int qh, int64_t r0, int rows, Scratch& sc) {
  const TensorView& q = cx.args.q;
  const PackedKV& pk = cx.pk;
  if (pk.bf16) {
    sc.q16.assign(size_t(rows) * pk.d_pad, 0);
    for (int r = 0; r < rows; ++r)
      std::memcpy(&sc.q16[size_t(r) * pk.d_pad], q.at(seq.q_start + r0 + r, qh), size_t(pk.d) * 2);
  } else {
    sc.q32.resize(size_t(rows) * pk.d);
    for (int r = 0; r < rows; ++r) ConvertToF32(q.at(seq.q_start + r0 + r, qh), q.dtype, &sc.q32[size_t(r) * pk.d], pk.d);
  }
}

void InitRows(const Context& cx, const Sequence& seq, int qh, int64_t r0, int rows, Scratch& sc) {
  const AttentionVariant& var = cx.args.variant;
  const float sink = var.sink_logits ? var.sink_logits[qh] : kNegInf;
  RowState& st = sc.rows;
  st.m.assign(rows, sink);
  st.l.assign(rows, var.sink_logits ? 1.0f : 0.0f);
  st.alpha.assign(rows, 1.0f);
  st.slope.assign(rows, var.alibi_slopes ? var.alibi_slopes[qh] : 0.0f);
  st.pos.resize(rows);
  for (int r = 0; r < rows; ++r) st.pos[r] = r0 + r + (seq.n_kv - seq.n_q);
  st.bounds.resize(rows);
  sc.o.assign(size_t(rows) * cx.pk.dv_pad, 0.0f);
  sc.s.resize(size_t(rows) * cx.pk.kv_block);
}

// One KV block of one query block: QK, masked online softmax, PV.
void AttendBlock(const Context& cx, const Sequence& seq, int qh, int64_t r0, int rows, int block, bool partial,
                 Scratch& sc) {
  const PackedKV& pk = cx.pk;
  const AttentionVariant& var = cx.args.variant;
  const int global = seq.block_offset + block;
  const int kh = cx.map.k_head(qh), vh = cx.map.v_head(qh);
  const int64_t c0 = int64_t(block) * pk.kv_block;
  const int cols = int(std::min<int64_t>(pk.kv_block, seq.n_kv - c0));
  if (pk.bf16)
    tile::QkBf16(sc.q16.data(), rows, pk.d_pad, static_cast<const uint16_t*>(pk.KBlock(kh, global)), pk.kv_block,
                 sc.s.data(), pk.kv_block);
  else
    tile::QkF32(sc.q32.data(), rows, pk.d, static_cast<const float*>(pk.KBlock(kh, global)), pk.kv_block, sc.s.data(),
                pk.kv_block);

  const VariantMask mask(var, seq.n_q, seq.n_kv);
  const bool needs_mask = partial || !mask.BlockFullyVisible(r0, r0 + rows, c0, c0 + cols);
  if (needs_mask)
    for (int r = 0; r < rows; ++r) sc.rows.bounds[r] = mask.Row(r0 + r);
  sc.rows.Step(sc.s.data(), 0, rows, cols, pk.kv_block, c0, cx.scale, var, needs_mask);

  if (pk.bf16)
    tile::PvBf16(sc.s.data(), rows, RoundUp(cols, 2), pk.kv_block, static_cast<const uint16_t*>(pk.VBlock(vh, global)),
                 pk.dv_pad, sc.o.data(), sc.rows.alpha.data());
  else
    tile::PvF32(sc.s.data(), rows, cols, pk.kv_block, static_cast<const float*>(pk.VBlock(vh, global)), pk.dv_pad,
                sc.o.data(), sc.rows.alpha.data());
}

void StoreRows(const Context& cx, const Sequence& seq, int qh, int64_t r0, int rows, const Scratch& sc) {
  const int dv = cx.pk.dv, h_q = cx.map.num_q_heads;
  for (int r = 0; r < rows; ++r) {
    const int64_t t = seq.q_start + r0 + r;
    float* out = cx.args.out.at<float>(t, qh);
    const float inv = sc.rows.OutputScale(r);
    for (int j = 0; j < dv; ++j) out[j] = sc.o[size_t(r) * cx.pk.dv_pad + j] * inv;
    if (cx.args.lse) cx.args.lse[t * h_q + qh] = sc.rows.Lse(r);
  }
}

void RunQueryBlock(const Context& cx, const Sequence& seq, int qh, int qb) {
  const BlockList& bl = *seq.blocks;
  const int64_t r0 = int64_t(qb) * bl.q_block;
  const int rows = int(std::min<int64_t>(bl.q_block, seq.n_q - r0));
  Scratch& sc = ThreadScratch();
  LoadQueries(cx, seq, qh, r0, rows, sc);
  InitRows(cx, seq, qh, r0, rows, sc);
  const int list = bl.list_index(qh, cx.map, qb);
  for (int32_t e = bl.offsets[list]; e < bl.offsets[list + 1]; ++e)
    AttendBlock(cx, seq, qh, r0, rows, bl.kv_blocks[e], bl.partial[e] != 0, sc);
  StoreRows(cx, seq, qh, r0, rows, sc);
}

}  // namespace

void AttendPrefill(const PrefillArgs& a, ThreadPool* pool_arg) {
  const HeadMap map = detail::CheckQkvOut(a.q, a.k, a.v, a.out);
  detail::CheckVariant(a.variant);
  const auto cu_q = detail::CheckOffsets(a.cu_seqlens_q, a.q.shape[0], "cu_seqlens_q");
  const auto cu_kv = detail::CheckOffsets(a.cu_seqlens_kv, a.k.shape[0], "cu_seqlens_kv");
  if (cu_q.size() != cu_kv.size()) throw InvalidArgument("cu_seqlens_q and cu_seqlens_kv describe different batch sizes");
  ThreadPool& pool = pool_arg ? *pool_arg : ThreadPool::Default();
  const int batch = int(cu_q.size()) - 1;

  // Dense lists for sequences without a caller-supplied one.
  std::vector<BlockList> dense(a.blocks ? 0 : batch);
  std::vector<Sequence> seqs(batch);
  PackedKV pk;
  pk.bf16 = a.q.dtype == DType::kBF16 && tile::HasBf16Path();
  pk.d = int(a.q.shape[2]);
  pk.d_pad = pk.bf16 ? RoundUp(pk.d, 2) : pk.d;
  pk.dv = int(a.v.shape[2]);
  pk.dv_pad = RoundUp(pk.dv, 16);
  for (int s = 0; s < batch; ++s) {
    Sequence& seq = seqs[s];
    seq = {cu_q[s], cu_q[s + 1] - cu_q[s], cu_kv[s], cu_kv[s + 1] - cu_kv[s], pk.total_blocks, nullptr};
    if (a.blocks) {
      a.blocks[s].Validate(seq.n_q, seq.n_kv, map);
      seq.blocks = &a.blocks[s];
    } else {
      dense[s] = DenseBlockList(seq.n_q, seq.n_kv, a.variant);
      seq.blocks = &dense[s];
    }
    if (s > 0 && seq.blocks->kv_block != seqs[0].blocks->kv_block)
      throw InvalidArgument("block lists of one batch must share one kv_block size");
    pk.total_blocks += seq.blocks->num_kv_blocks;
  }
  if (batch == 0) return;
  pk.kv_block = seqs[0].blocks->kv_block;
  PackAll(a, map, seqs, pk, pool);

  // Work items (sequence, query block, head); later query blocks first: under causal masks they
  // read the most blocks, and starting them early balances the threads.
  std::vector<std::pair<int, int>> q_blocks;  // (sequence, query block)
  for (int s = 0; s < batch; ++s)
    for (int qb = seqs[s].blocks->num_q_blocks - 1; qb >= 0; --qb) q_blocks.emplace_back(s, qb);
  std::stable_sort(q_blocks.begin(), q_blocks.end(), [](auto x, auto y) { return x.second > y.second; });
  const Context cx{a, map, pk, a.variant.EffectiveScale(pk.d)};
  const int h_q = map.num_q_heads;
  pool.ParallelFor(int64_t(q_blocks.size()) * h_q, [&](int64_t item, int) {
    const auto [s, qb] = q_blocks[item / h_q];
    RunQueryBlock(cx, seqs[s], int(item % h_q), qb);
  });
}

}  // namespace qattn
