// Portable (scalar) quantized tile steps, the query quantizer, and the dispatch to the VNNI code.
// The scalar code does the same integer sums and the same float steps in the same order as the
// vector code, so both give the same dot products.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "kernels/kv_tile_layout.h"
#include "kernels/kv_tile_ops.h"

namespace qattn::kvtile {
namespace {

using namespace kvlayout;

float LoadF32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}
float LoadBf16(const uint8_t* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  return BF16ToF32(BF16{b});
}

// One head against one int8 tile: the biased sum minus 128 * sum(q), times both scales.
void DotTileInt8(const QuantQuery& q, int h, int d, const uint8_t* tile, float* s) {
  const int8_t* qh = q.q + int64_t(h) * d;
  int32_t total = 0;
  for (int g = 0; g < Q4Groups(d); ++g) total += q.sums[int64_t(h) * Q4Groups(d) + g];
  for (int t = 0; t < kTokens; ++t) {
    int32_t acc = 0;
    for (int i = 0; i < d; ++i) acc += int32_t(tile[K8Byte(d, t, i)]) * qh[i];
    const float ks = LoadF32(tile + K8Scales(d) + size_t(t) * 4);
    s[t] = float(acc - 128 * total) * (ks * q.scale[h]);
  }
}

// One head against one int4 tile: per 32-dim group the nibble sum minus 8 * sum(q), times the group scale.
void DotTileInt4(const QuantQuery& q, int h, int d, const uint8_t* tile, float* s) {
  const int8_t* qh = q.q + int64_t(h) * d;
  const int groups = Q4Groups(d);
  for (int t = 0; t < kTokens; ++t) {
    float res = 0;
    for (int g = 0; g < groups; ++g) {
      int32_t acc = 0;
      for (int i = g * kGroup; i < g * kGroup + Q4GroupDims(d, g); ++i)
        acc += int32_t((tile[K4Byte(d, t, i)] >> (4 * K4Nibble(i))) & 0x0f) * qh[i];
      const float ks = LoadBf16(tile + K4Scales(d) + Q4ScaleIndex(t, g) * 2);
      res = std::fma(float(acc - 8 * q.sums[int64_t(h) * groups + g]), ks, res);
    }
    s[t] = res * q.scale[h];
  }
}

// Value j of token t of a value tile, dequantized.
float ValueAt(KvDType type, const uint8_t* tile, int dv, int t, int j) {
  if (type == KvDType::kInt8)
    return float(int8_t(tile[V8Byte(dv, t, j)])) * LoadF32(tile + V8Scales(dv) + size_t(t) * 4);
  const int q = (tile[V4Byte(dv, t, j)] >> (4 * V4Nibble(dv, j))) & 0x0f;
  return float(q - 8) * LoadBf16(tile + V4Scales(dv) + Q4ScaleIndex(t, j / kGroup) * 2);
}

}  // namespace

void QuantizeQuery(const float* q, int g, int d, int8_t* q8, float* scale, int32_t* sums) {
  const int groups = Q4Groups(d);
  for (int h = 0; h < g; ++h) {
    const float* qh = q + int64_t(h) * d;
    float amax = 0;
    for (int i = 0; i < d; ++i) amax = std::max(amax, std::fabs(qh[i]));
    scale[h] = amax / 127.0f;
    for (int i = 0; i < d; ++i)
      q8[int64_t(h) * d + i] =
          int8_t(scale[h] > 0 ? std::clamp(std::nearbyint(qh[i] / scale[h]), -127.0f, 127.0f) : 0.0f);
    for (int gi = 0; gi < groups; ++gi) {
      int32_t sum = 0;
      for (int i = gi * kGroup; i < std::min(d, (gi + 1) * kGroup); ++i) sum += q8[int64_t(h) * d + i];
      sums[int64_t(h) * groups + gi] = sum;
    }
  }
}

bool UseVnni() { return ActiveIsa() >= Isa::kAvx512 && DetectCpu().avx512_vnni; }

void DotTiles(KvDType t, const QuantQuery& q, int g, int d, const uint8_t* tiles, int num_tiles, size_t tile_bytes,
              float* s, int s_stride) {
  if (UseVnni()) return DotTilesVnni(t, q, g, d, tiles, num_tiles, tile_bytes, s, s_stride);
  for (int i = 0; i < num_tiles; ++i)
    for (int h = 0; h < g; ++h) {
      float* out = s + int64_t(h) * s_stride + i * kTokens;
      if (t == KvDType::kInt8) DotTileInt8(q, h, d, tiles + i * tile_bytes, out);
      else DotTileInt4(q, h, d, tiles + i * tile_bytes, out);
    }
}

void AccumulateTiles(KvDType t, const float* p, int g, int p_stride, int n, const uint8_t* tiles, size_t tile_bytes,
                     int dv, float* o) {
  if (UseVnni()) return AccumulateTilesAvx512(t, p, g, p_stride, n, tiles, tile_bytes, dv, o);
  for (int c = 0; c < n; ++c) {
    const uint8_t* tile = tiles + (c / kTokens) * tile_bytes;
    for (int j = 0; j < dv; ++j) {
      const float v = ValueAt(t, tile, dv, c % kTokens, j);
      for (int h = 0; h < g; ++h) o[int64_t(h) * dv + j] += p[int64_t(h) * p_stride + c] * v;
    }
  }
}

}  // namespace qattn::kvtile
