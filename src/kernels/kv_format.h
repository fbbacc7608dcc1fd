// How one KV head's cached tokens are stored, and the decode kernel that reads them in place.
//
// The decode-time KV cache (src/kv) keeps each (sequence, layer, KV head) as a list of pages; a
// page holds whole *tiles* of kKvTileTokens consecutive tokens of one head, K tiles and V tiles
// each contiguous. The tile is the unit every format is laid out in:
//   f32 / f16: plain rows, [16, d] elements (so a run of tiles is [tokens, d] rows, stride d)
//   bf16: pairs for vdpbf16ps: K [ceil(d/2) dim pairs, 16 tokens, 2], V [8 token pairs, d, 2]
//   int8: per token and head one symmetric scale (max|x| / 127); the bytes are laid out for VNNI
//   int4: one symmetric scale (q4_0-like) per token, head and group of 32 dims, or per head when
//         d < 32 (when d % 32 != 0 the last group is d % 32 dims); laid out for VNNI
// Head dims: f32 / bf16 / f16 take any d >= 1, int8 any multiple of 4, int4 any multiple of 8
// (d = 8, 24, 80, ... all work; shapes the vector kernels do not cover run masked or scalar code).
// The exact bf16 / int8 / int4 layouts are private to kv_format.cc and the tile kernels
// (kv_tile_layout.h); everyone else goes through these functions.
// Dot products run on the quantized bytes (no page is dequantized before attention).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"

namespace qattn {

enum class KvDType : uint8_t { kF32, kBF16, kF16, kInt8, kInt4 };
constexpr int kKvTileTokens = 16;

const char* KvDTypeName(KvDType t);        // "f32", "bf16", "f16", "int8", "int4"
KvDType ParseKvDType(const std::string& s);  // throws InvalidArgument naming the known types
bool IsQuantized(KvDType t);                 // int8 / int4

// Bytes of one tile (16 tokens of one head) of keys (value = false) or values (value = true) with
// head dim d, scales included. Throws InvalidArgument for d < 1, int8 with d % 4 != 0 and int4
// with d % 8 != 0.
size_t KvTileBytes(KvDType t, int d, bool value);
// Writes token `slot` (0..15) of a tile from f32 x[d] (quantizing it); the other slots are untouched.
void StoreKvToken(KvDType t, bool value, const float* x, int d, void* tile, int slot);
// Reads tokens [0, count) of a tile back as f32 out[count, d] (dequantized).
void LoadKvTokens(KvDType t, bool value, const void* tile, int count, int d, float* out);
// Copies token `src_slot` of one tile into `dst_slot` of another tile of the same format, bit-exact
// (eviction compacts kept tokens this way, without requantizing).
void CopyKvToken(KvDType t, bool value, int d, const void* src_tile, int src_slot, void* dst_tile, int dst_slot);

// A run of consecutive tiles of one KV head: `tokens` valid tokens (all tiles full but the last),
// K tiles at k and V tiles at v, each contiguous (tile i at k + i * KvTileBytes(...)).
struct KvRun {
  const void* k = nullptr;
  const void* v = nullptr;
  int32_t tokens = 0;
  // Logical positions of the tokens (masks and ALiBi read them): position + i for token i, or,
  // if `positions` is given, positions[i] (kept tokens after eviction need not be consecutive).
  int64_t position = 0;
  const int32_t* positions = nullptr;  // [tokens] or null
};

// Raw dot products of g query vectors with every token of a run, on the stored format in place
// (selection scorers use them: Quest-free token scoring, H2O, TokenSelect):
//   s[h * s_stride + i] = <q[h, :], k_i>  for h < g, i < run.tokens  (no scale).
void KvDotRun(KvDType t, const float* q, int g, int d, const KvRun& run, float* s, int64_t s_stride);
// The same over consecutive runs (the query is prepared once): run r's tokens follow run r - 1's
// in s, s [g, s_stride] with s_stride >= the runs' total tokens.
void KvDotRuns(KvDType t, const float* q, int g, int d, const KvRun* runs, size_t num_runs, float* s,
               int64_t s_stride);

// Decode over paged, possibly quantized KV: one query token per sequence against that sequence's
// runs. Same semantics as AttendDecode (attention.h) with key j at its logical position and the
// query at query_positions[s]; H_k must equal H_v (the cache stores K and V heads in pairs).
struct PagedDecodeArgs {
  TensorView q;                         // [batch, H_q, d_qk] f32
  HeadMap map;                          // num_k_heads == num_v_heads
  int d_v = 0;
  KvDType kv_dtype = KvDType::kBF16;
  std::vector<int64_t> run_offsets;     // [batch * H_kv + 1]: runs of (s, h) are [s * H_kv + h, +1)
  std::vector<KvRun> runs;
  std::vector<int64_t> query_positions; // [batch]
  TensorView out;                       // [batch, H_q, d_v] f32
  float* lse = nullptr;                 // [batch, H_q] or null
  AttentionVariant variant;             // causal is implied; windows, sinks, logit hooks apply
  int num_splits = 0;                   // 0: chosen from threads and lengths
};
void AttendDecodePaged(const PagedDecodeArgs& args, ThreadPool* pool = nullptr);

}  // namespace qattn
