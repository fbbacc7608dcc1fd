// The decode kernel's steps on quantized KV tiles (kv_tile_layout.h): integer dot products of the
// query heads of a KV group with whole tiles of keys, and the P.V accumulation over value tiles.
// Two implementations: AVX-512 VNNI intrinsics (kv_tile_ops_vnni.cc) where the CPU has them and the
// ISA cap allows AVX-512, and portable scalar code elsewhere (kv_tile_ops.cc).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/kv_format.h"

namespace qattn::kvtile {

// The g query heads of a KV group rounded to int8 for vpdpbusd: per head one symmetric scale
// max|q| / 127 (as the int8 keys); sums of the rounded values per 32-dim group undo the bias of
// the keys' unsigned storage.
struct QuantQuery {
  const int8_t* q = nullptr;       // [g, d]
  const float* scale = nullptr;    // [g]
  const int32_t* sums = nullptr;   // [g, ceil(d / 32)] sums of q over each 32-dim group
};
// Fills q8 [g, d], scale [g], sums [g, ceil(d / 32)] (any d; the last group is d % 32 dims when
// that is not 0, as the int4 scale groups are).
void QuantizeQuery(const float* q, int g, int d, int8_t* q8, float* scale, int32_t* sums);

bool UseVnni();

// s[h * s_stride + c] = <q_h, k_c> for the 16 * num_tiles keys of consecutive tiles, tile_bytes
// apart (t is kInt8 or kInt4). Columns of unwritten slots hold garbage the caller masks.
void DotTiles(KvDType t, const QuantQuery& q, int g, int d, const uint8_t* tiles, int num_tiles, size_t tile_bytes,
              float* s, int s_stride);

// o[h, :] += sum_{c < n} p[h * p_stride + c] * v_c over consecutive value tiles (kInt8 or kInt4).
void AccumulateTiles(KvDType t, const float* p, int g, int p_stride, int n, const uint8_t* tiles, size_t tile_bytes,
                     int dv, float* o);

// The VNNI / AVX-512 implementations (call only when UseVnni()).
void DotTilesVnni(KvDType t, const QuantQuery& q, int g, int d, const uint8_t* tiles, int num_tiles,
                  size_t tile_bytes, float* s, int s_stride);
void AccumulateTilesAvx512(KvDType t, const float* p, int g, int p_stride, int n, const uint8_t* tiles,
                           size_t tile_bytes, int dv, float* o);

}  // namespace qattn::kvtile
