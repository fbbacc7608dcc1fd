// Quantized tile steps on AVX-512: vpdpbusd (VNNI) dot products for int8 / int4 keys, f32 FMA
// accumulation of dequantized int8 / int4 values. Compiled with target attributes; called only
// when UseVnni() (kv_tile_ops.cc).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/kv_tile_layout.h"
#include "kernels/kv_tile_ops.h"

#define QATTN_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma")))

namespace qattn::kvtile {
namespace {

using namespace kvlayout;

inline int32_t Load4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// 16 bf16 scales widened to f32.
QATTN_VNNI_TARGET inline __m512 LoadBf16x16(const uint8_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

// H heads x T int8 tiles: H * T independent vpdpbusd chains, each K vector feeding H of them.
template <int H, int T>
QATTN_VNNI_TARGET void DotInt8(const QuantQuery& q, int h0, int d, const uint8_t* tile, size_t tb, float* s,
                               int s_stride) {
  __m512i acc[H][T];
  _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h)
    _Pragma("GCC unroll 16") for (int t = 0; t < T; ++t) acc[h][t] = _mm512_setzero_si512();
  const int8_t* qh = q.q + int64_t(h0) * d;
  for (int i = 0; i < d / 4; ++i) {
    __m512i k[T];
    _Pragma("GCC unroll 16") for (int t = 0; t < T; ++t) k[t] = _mm512_loadu_si512(tile + t * tb + i * 64);
    _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h) {
      const __m512i qb = _mm512_set1_epi32(Load4(qh + h * d + 4 * i));
      _Pragma("GCC unroll 16") for (int t = 0; t < T; ++t) acc[h][t] = _mm512_dpbusd_epi32(acc[h][t], k[t], qb);
    }
  }
  const int groups = (d + kGroup - 1) / kGroup;
  _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h) {
    int32_t total = 0;
    for (int g = 0; g < groups; ++g) total += q.sums[int64_t(h0 + h) * groups + g];
    const __m512i bias = _mm512_set1_epi32(128 * total);
    const __m512 qs = _mm512_set1_ps(q.scale[h0 + h]);
    _Pragma("GCC unroll 16") for (int t = 0; t < T; ++t) {
      const __m512 ks = _mm512_loadu_ps(reinterpret_cast<const float*>(tile + t * tb + K8Scales(d)));
      const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[h][t], bias));
      _mm512_storeu_ps(s + int64_t(h) * s_stride + t * kTokens, _mm512_mul_ps(f, _mm512_mul_ps(ks, qs)));
    }
  }
}

// H heads x T int4 tiles; per 32-dim group an integer sum, then one FMA with the group's scales.
template <int H, int T>
QATTN_VNNI_TARGET void DotInt4(const QuantQuery& q, int h0, int d, const uint8_t* tile, size_t tb, float* s,
                               int s_stride) {
  const int groups = Q4Groups(d);
  const __m512i low = _mm512_set1_epi8(0x0f);
  __m512 res[H][T];
  _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h)
    _Pragma("GCC unroll 16") for (int t = 0; t < T; ++t) res[h][t] = _mm512_setzero_ps();
  const int8_t* qh = q.q + int64_t(h0) * d;
  for (int g = 0; g < groups; ++g) {
    __m512i acc[H][T];
    _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h)
      _Pragma("GCC unroll 16") for (int t = 0; t < T; ++t) acc[h][t] = _mm512_setzero_si512();
    const int blocks = Q4GroupDims(d, g) / 8;  // 4, or fewer in a short last group
    _Pragma("GCC unroll 4") for (int b = 0; b < blocks; ++b) {
      const int i = 4 * g + b;  // block of 8 dims
      __m512i lo[T], hi[T];
      _Pragma("GCC unroll 16") for (int t = 0; t < T; ++t) {
        const __m512i x = _mm512_loadu_si512(tile + t * tb + i * 64);
        lo[t] = _mm512_and_si512(x, low);
        hi[t] = _mm512_and_si512(_mm512_srli_epi16(x, 4), low);
      }
      _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h) {
        const __m512i qlo = _mm512_set1_epi32(Load4(qh + h * d + 8 * i));
        const __m512i qhi = _mm512_set1_epi32(Load4(qh + h * d + 8 * i + 4));
        _Pragma("GCC unroll 16") for (int t = 0; t < T; ++t) {
          acc[h][t] = _mm512_dpbusd_epi32(acc[h][t], lo[t], qlo);
          acc[h][t] = _mm512_dpbusd_epi32(acc[h][t], hi[t], qhi);
        }
      }
    }
    _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h) {
      const __m512i bias = _mm512_set1_epi32(8 * q.sums[int64_t(h0 + h) * groups + g]);
      _Pragma("GCC unroll 16") for (int t = 0; t < T; ++t) {
        const __m512 ks = LoadBf16x16(tile + t * tb + K4Scales(d) + Q4ScaleIndex(0, g) * 2);
        res[h][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[h][t], bias)), ks, res[h][t]);
      }
    }
  }
  _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h) {
    const __m512 qs = _mm512_set1_ps(q.scale[h0 + h]);
    _Pragma("GCC unroll 16") for (int t = 0; t < T; ++t)
      _mm512_storeu_ps(s + int64_t(h) * s_stride + t * kTokens, _mm512_mul_ps(res[h][t], qs));
  }
}

// Tiles per block for H heads: enough independent chains to cover vpdpbusd's latency, few enough
// accumulators to stay in registers.
template <int H>
QATTN_VNNI_TARGET void DotHeads(KvDType type, const QuantQuery& q, int h0, int d, const uint8_t* tiles, int n,
                                size_t tb, float* s, int s_stride) {
  constexpr int T = H >= 8 ? 2 : H >= 2 ? 4 : 8;
  constexpr int T4 = H >= 4 ? 2 : 4;  // int4 keeps unpacked nibbles and float sums live too
  int i = 0;
  if (type == KvDType::kInt8) {
    for (; i + T <= n; i += T) DotInt8<H, T>(q, h0, d, tiles + i * tb, tb, s + i * kTokens, s_stride);
    for (; i < n; ++i) DotInt8<H, 1>(q, h0, d, tiles + i * tb, tb, s + i * kTokens, s_stride);
  } else {
    for (; i + T4 <= n; i += T4) DotInt4<H, T4>(q, h0, d, tiles + i * tb, tb, s + i * kTokens, s_stride);
    for (; i < n; ++i) DotInt4<H, 1>(q, h0, d, tiles + i * tb, tb, s + i * kTokens, s_stride);
  }
}

// ---- P.V ----
// The weights w = p * value scale (per token, or per token and 32-dim group for int4) are rounded
// to u8 against their row's max over the call's keys (scale max / 255), so vpdpbusd multiplies 4
// tokens' weights (u8) by 4 tokens' values (s8) per lane: 16 dims x 4 tokens per instruction, in
// place of converting every value to f32. The integer sums are exact; each weight carries an
// error of at most max / 510, below the values' own int8 / int4 rounding.

// int8 acc[h, jj] (16 dims each) += sum over the call's tokens of wq[h, c] * v[c, dims] (u8
// weights x s8 values, as stored): NJ vectors of dims at byte offset `col` of each token quad.
// last_dims: the dims of the last vector that exist (a head's tail when dv % 16 != 0); the others
// are neither read nor written, so no read runs past the tile and no write into the next row.
template <int H, int NJ>
QATTN_VNNI_TARGET void AccDims(const uint8_t* wq, int wq_stride, int tiles, const uint8_t* tile, size_t tb,
                               size_t quad_bytes, size_t col, const float* ws, float* o, int o_stride,
                               __mmask16 last_dims = 0xffff) {
  __m512i acc[H][NJ];
  _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h)
    _Pragma("GCC unroll 16") for (int jj = 0; jj < NJ; ++jj) acc[h][jj] = _mm512_setzero_si512();
  for (int c0 = 0; c0 < tiles * kTokens; c0 += 4) {
    const uint8_t* quad = tile + (c0 / kTokens) * tb + size_t(c0 % kTokens / 4) * quad_bytes + col;
    __m512i x[NJ];
    _Pragma("GCC unroll 16") for (int jj = 0; jj < NJ; ++jj)
      x[jj] = _mm512_maskz_loadu_epi32(jj == NJ - 1 ? last_dims : 0xffff, quad + jj * 64);
    _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h) {
      const __m512i wb = _mm512_set1_epi32(Load4(reinterpret_cast<const int8_t*>(wq + h * wq_stride + c0)));
      _Pragma("GCC unroll 16") for (int jj = 0; jj < NJ; ++jj) acc[h][jj] = _mm512_dpbusd_epi32(acc[h][jj], wb, x[jj]);
    }
  }
  _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h) {
    const __m512 scale = _mm512_set1_ps(ws[h]);
    _Pragma("GCC unroll 16") for (int jj = 0; jj < NJ; ++jj) {
      float* dst = o + h * o_stride + 16 * jj;
      const __mmask16 m = jj == NJ - 1 ? last_dims : 0xffff;
      _mm512_mask_storeu_ps(dst, m, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[h][jj]), scale, _mm512_maskz_loadu_ps(m, dst)));
    }
  }
}

// int4 acc[h] += sum over the call's tokens of wq[h, c] * v[c, group dims]: one group of 2 * half
// dims at byte offset `col` of each token quad, low nibbles dims [0, half), high [half, 2 half).
// Both nibbles of one load share each weight broadcast (half the loads and broadcasts of running
// the nibbles separately).
template <int H>
QATTN_VNNI_TARGET void AccGroupInt4(const uint8_t* wq, int wq_stride, int tiles, const uint8_t* tile, size_t tb,
                                    size_t quad_bytes, size_t col, int half, const float* ws, const int32_t* wsum,
                                    float* o, int o_stride) {
  const __mmask16 lanes = half >= 16 ? __mmask16(0xffff) : __mmask16((1u << half) - 1);
  const __m512i low = _mm512_set1_epi8(0x0f);
  __m512i lo[H], hi[H];
  _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h) lo[h] = hi[h] = _mm512_setzero_si512();
  for (int c0 = 0; c0 < tiles * kTokens; c0 += 4) {
    const uint8_t* quad = tile + (c0 / kTokens) * tb + size_t(c0 % kTokens / 4) * quad_bytes + col;
    const __m512i x = _mm512_maskz_loadu_epi32(lanes, quad);
    const __m512i xl = _mm512_and_si512(x, low), xh = _mm512_and_si512(_mm512_srli_epi16(x, 4), low);
    _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h) {
      const __m512i wb = _mm512_set1_epi32(Load4(reinterpret_cast<const int8_t*>(wq + h * wq_stride + c0)));
      lo[h] = _mm512_dpbusd_epi32(lo[h], xl, wb);  // u8 nibbles x s8 weights
      hi[h] = _mm512_dpbusd_epi32(hi[h], xh, wb);
    }
  }
  _Pragma("GCC unroll 16") for (int h = 0; h < H; ++h) {
    const __m512 scale = _mm512_set1_ps(ws[h]);
    const __m512i bias = _mm512_set1_epi32(8 * wsum[h]);  // sum w (q - 8) = sum w q - 8 sum w
    float* dst = o + h * o_stride;
    _mm512_mask_storeu_ps(dst, lanes, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(lo[h], bias)), scale,
                                                      _mm512_maskz_loadu_ps(lanes, dst)));
    _mm512_mask_storeu_ps(dst + half, lanes, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(hi[h], bias)), scale,
                                                             _mm512_maskz_loadu_ps(lanes, dst + half)));
  }
}

// A mask of the first n (capped at 16) lanes.
inline __mmask16 FirstLanes(int n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

struct WeightScratch {
  std::vector<uint8_t> wq;  // [rows, w_stride] weights rounded to u8
  std::vector<float> ws;    // [rows] scale of each row of wq
  std::vector<int32_t> wsum;  // [rows] sum of each row of wq (int4)
  std::vector<float> wf;      // [w_stride] one row's weights in f32
  std::vector<float> sf;      // [groups, w_stride] value scales in f32
};

WeightScratch& ThreadWeights() {
  static thread_local WeightScratch w;
  return w;
}

// The keys of tile i that exist (n keys in all).
inline __mmask16 ValidKeys(int n, int i) { return FirstLanes(std::min(kTokens, n - i * kTokens)); }

// The value scales of the call's tiles as f32, sf [groups, w_stride] (one group for int8): loaded
// and widened once per call instead of once per query head.
QATTN_VNNI_TARGET void ValueScales(KvDType type, const uint8_t* tiles, size_t tb, int dv, int groups, int tiles_n,
                                   int w_stride, float* sf) {
  for (int i = 0; i < tiles_n; ++i) {
    const uint8_t* tile = tiles + i * tb;
    for (int gi = 0; gi < groups; ++gi) {
      const __m512 vs = type == KvDType::kInt8 ? _mm512_loadu_ps(reinterpret_cast<const float*>(tile + V8Scales(dv)))
                                               : LoadBf16x16(tile + V4Scales(dv) + Q4ScaleIndex(0, gi) * 2);
      _mm512_storeu_ps(sf + size_t(gi) * w_stride + i * kTokens, vs);
    }
  }
}

// Rows (h, gi): weights p[h, c] * value scale of token c (of group gi for int4), rounded to u8
// against the row's max for int8 (probabilities and scales >= 0), to s8 against max|w| for int4
// (its scales carry the sign of the group's extreme value).
QATTN_VNNI_TARGET void ValueWeights(KvDType type, const float* p, int g, int p_stride, int n, const uint8_t* tiles,
                                    size_t tb, int dv, int w_stride, WeightScratch& ws) {
  const int groups = type == KvDType::kInt8 ? 1 : Q4Groups(dv);
  const int tiles_n = w_stride / kTokens;
  ws.wq.resize(size_t(g) * groups * w_stride);
  ws.ws.resize(size_t(g) * groups);
  ws.wsum.assign(size_t(g) * groups, 0);
  ws.wf.resize(w_stride);
  ws.sf.resize(size_t(groups) * w_stride);
  ValueScales(type, tiles, tb, dv, groups, tiles_n, w_stride, ws.sf.data());
  const bool int4 = type == KvDType::kInt4;
  const float levels = int4 ? 127.0f : 255.0f;
  for (int h = 0; h < g; ++h)
    for (int gi = 0; gi < groups; ++gi) {
      const float* ph = p + int64_t(h) * p_stride;
      float* w = ws.wf.data();  // [tiles_n * 16] this row's weights, kept for the rounding pass
      const float* sf = &ws.sf[size_t(gi) * w_stride];
      __m512 vmax = _mm512_setzero_ps();
      for (int i = 0; i < tiles_n; ++i) {
        // p * value scale, 0 past n
        const __mmask16 m = ValidKeys(n, i);
        const __m512 x = _mm512_maskz_mul_ps(m, _mm512_maskz_loadu_ps(m, ph + i * kTokens), _mm512_loadu_ps(sf + i * kTokens));
        _mm512_storeu_ps(w + i * kTokens, x);
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(x));
      }
      // Weights below 1e-30 are dropped: the row's running max contributes 1 to its sum, so they
      // cannot matter, and levels / wmax would overflow to inf for denormal wmax (NaN weights).
      const float wmax = _mm512_reduce_max_ps(vmax);
      const bool usable = wmax > 1e-30f;
      const int row = h * groups + gi;
      ws.ws[row] = usable ? wmax / levels : 0.0f;
      const __m512 inv = _mm512_set1_ps(usable ? levels / wmax : 0.0f);
      uint8_t* wq = &ws.wq[size_t(row) * w_stride];
      __m512i sum = _mm512_setzero_si512();
      for (int i = 0; i < tiles_n; ++i) {
        const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(w + i * kTokens), inv));
        sum = _mm512_add_epi32(sum, q);  // nearest even above
        // Narrowed in a register, then stored: the memory forms of vpmov[u]sdb are slow on Zen 4
        // (they were the hottest instruction of this function).
        const __m128i b = int4 ? _mm512_cvtsepi32_epi8(q) : _mm512_cvtusepi32_epi8(q);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(wq + i * kTokens), b);
      }
      ws.wsum[row] = _mm512_reduce_add_epi32(sum);
    }
}

template <int H>
QATTN_VNNI_TARGET void AccHeads(KvDType type, const WeightScratch& ws, int h0, int w_stride, int tiles,
                                const uint8_t* v, size_t tb, int dv, float* o) {
  if (type == KvDType::kInt8) {
    constexpr int NJ = H >= 4 ? 2 : 4;
    const uint8_t* wq = ws.wq.data() + size_t(h0) * w_stride;
    int j0 = 0;
    for (; j0 + 16 * NJ <= dv; j0 += 16 * NJ)
      AccDims<H, NJ>(wq, w_stride, tiles, v, tb, size_t(4) * dv, size_t(j0) * 4, &ws.ws[h0], o + j0, dv);
    for (; j0 < dv; j0 += 16)
      AccDims<H, 1>(wq, w_stride, tiles, v, tb, size_t(4) * dv, size_t(j0) * 4, &ws.ws[h0], o + j0, dv,
                    FirstLanes(dv - j0));
    return;
  }
  // int4: rows (h, group); a group's w dims are the low and high nibbles of w/2 lanes of one vector.
  const int groups = Q4Groups(dv);
  float scales[H];
  int32_t sums[H];
  for (int gi = 0; gi < groups; ++gi) {
    for (int h = 0; h < H; ++h) scales[h] = ws.ws[(h0 + h) * groups + gi], sums[h] = ws.wsum[(h0 + h) * groups + gi];
    const uint8_t* wq = ws.wq.data() + (size_t(h0) * groups + gi) * w_stride;
    const int half = Q4GroupDims(dv, gi) / 2;
    AccGroupInt4<H>(wq, groups * w_stride, tiles, v, tb, size_t(2) * dv, size_t(gi) * 64, half, scales, sums,
                    o + gi * kGroup, dv);
  }
}

// Calls f(std::integral_constant<int, H>, h0) over g heads in blocks of H = 8, 4, 2 or 1.
template <typename F>
inline void ForHeadBlocks(int g, F&& f) {
  for (int h0 = 0; h0 < g;) {
    const int left = g - h0;
    if (left >= 8) f(std::integral_constant<int, 8>{}, h0), h0 += 8;
    else if (left >= 4) f(std::integral_constant<int, 4>{}, h0), h0 += 4;
    else if (left >= 2) f(std::integral_constant<int, 2>{}, h0), h0 += 2;
    else f(std::integral_constant<int, 1>{}, h0), h0 += 1;
  }
}

}  // namespace

QATTN_VNNI_TARGET void DotTilesVnni(KvDType t, const QuantQuery& q, int g, int d, const uint8_t* tiles, int num_tiles,
                                    size_t tile_bytes, float* s, int s_stride) {
  ForHeadBlocks(g, [&](auto heads, int h0) QATTN_VNNI_TARGET {
    DotHeads<decltype(heads)::value>(t, q, h0, d, tiles, num_tiles, tile_bytes, s + int64_t(h0) * s_stride, s_stride);
  });
}

QATTN_VNNI_TARGET void AccumulateTilesAvx512(KvDType t, const float* p, int g, int p_stride, int n,
                                             const uint8_t* tiles, size_t tile_bytes, int dv, float* o) {
  const int num_tiles = (n + kTokens - 1) / kTokens;
  const int w_stride = num_tiles * kTokens;
  WeightScratch& ws = ThreadWeights();
  ValueWeights(t, p, g, p_stride, n, tiles, tile_bytes, dv, w_stride, ws);
  ForHeadBlocks(g, [&](auto heads, int h0) QATTN_VNNI_TARGET {
    AccHeads<decltype(heads)::value>(t, ws, h0, w_stride, num_tiles, tiles, tile_bytes, dv, o + int64_t(h0) * dv);
  });
}

}  // namespace qattn::kvtile
