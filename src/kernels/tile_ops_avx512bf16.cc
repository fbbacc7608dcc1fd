// bf16 tile steps on vdpbf16ps (AVX-512 BF16): each instruction multiplies 16 pairs of bf16 and
// adds them to 16 f32 lanes, twice the f32 FMA rate. Compiled with target attributes and used only
// when the CPU reports avx512bf16 (Highway 1.0.3 emulates this instruction, hence intrinsics).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/cpu_features.h"
#include "kernels/tile_ops.h"

#define QATTN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")))

namespace qattn::tile {

bool HasBf16Path() { return ActiveIsa() >= Isa::kAvx512Bf16 && DetectCpu().avx512_bf16; }

namespace {

inline int32_t LoadPair(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

QATTN_BF16_TARGET inline __m512bh BroadcastPair(const uint16_t* p) {
  return (__m512bh)_mm512_set1_epi32(LoadPair(p));
}

// R rows x NC vectors of 16 keys. Keys come as bf16 pairs along d: the 16 keys of vector c at
// pair i start at kp + i * pair_stride + c * vec_stride (prefill's packed K: pair_stride = 2 cols,
// vec_stride = 32, fixed at compile time as kVecStride so that prefill's addresses stay constant
// offsets; KV cache tiles: pair_stride = 32, vec_stride = one tile, kVecStride = 0).
template <int R, int NC, int kVecStride>
QATTN_BF16_TARGET void QkMicro(const uint16_t* q, int d, const uint16_t* kp, int64_t pair_stride, int64_t vec_stride,
                               float* s, int s_stride) {
  if constexpr (kVecStride != 0) vec_stride = kVecStride;
  __m512 acc[R][NC];
  _Pragma("GCC unroll 16")
  for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 16")
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int i = 0; i < d / 2; ++i) {
    const uint16_t* krow = kp + int64_t(i) * pair_stride;
    __m512bh k[NC];
    _Pragma("GCC unroll 16")
    for (int c = 0; c < NC; ++c) k[c] = (__m512bh)_mm512_loadu_si512(krow + c * vec_stride);
    _Pragma("GCC unroll 16")
    for (int r = 0; r < R; ++r) {
      const __m512bh qb = BroadcastPair(q + int64_t(r) * d + 2 * i);
      _Pragma("GCC unroll 16")
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], qb, k[c]);
    }
  }
  _Pragma("GCC unroll 16")
  for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 16")
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(s + int64_t(r) * s_stride + c * 16, acc[r][c]);
}

template <int NC, int kVecStride>
QATTN_BF16_TARGET void QkRows(const uint16_t* q, int rows, int d, const uint16_t* kp, int64_t pair_stride,
                              int64_t vec_stride, float* s, int s_stride) {
  switch (rows) {
    case 6: return QkMicro<6, NC, kVecStride>(q, d, kp, pair_stride, vec_stride, s, s_stride);
    case 5: return QkMicro<5, NC, kVecStride>(q, d, kp, pair_stride, vec_stride, s, s_stride);
    case 4: return QkMicro<4, NC, kVecStride>(q, d, kp, pair_stride, vec_stride, s, s_stride);
    case 3: return QkMicro<3, NC, kVecStride>(q, d, kp, pair_stride, vec_stride, s, s_stride);
    case 2: return QkMicro<2, NC, kVecStride>(q, d, kp, pair_stride, vec_stride, s, s_stride);
    default: return QkMicro<1, NC, kVecStride>(q, d, kp, pair_stride, vec_stride, s, s_stride);
  }
}

// Rows per register tile when `rows` are cut into tiles of at most 6 as evenly as possible: 8 decode
// heads as 4 + 4 (16 accumulators, each loaded key or value vector used 4 times) rather than 6 + 2
// (the 2-row pass loads as many vectors for a third of the work; 1.25x slower QK measured here).
inline int BalancedRows(int rows, int r0) {
  const int tiles = (rows + 5) / 6, per = (rows + tiles - 1) / tiles;
  return std::min(per, rows - r0);
}

// s [rows, s_stride] for `vecs` vectors of 16 keys in pair layout (strides as QkMicro's): up to 6
// rows x 4 vectors per register tile.
template <int kVecStride>
QATTN_BF16_TARGET void QkPairs(const uint16_t* q, int rows, int d, const uint16_t* kp, int64_t pair_stride,
                               int64_t vec_stride, int vecs, float* s, int s_stride) {
  for (int r0 = 0, r = 0; r0 < rows; r0 += r) {
    r = BalancedRows(rows, r0);
    const uint16_t* qr = q + int64_t(r0) * d;
    float* sr = s + int64_t(r0) * s_stride;
    int c = 0;
    for (; c + 4 <= vecs; c += 4)
      QkRows<4, kVecStride>(qr, r, d, kp + c * vec_stride, pair_stride, vec_stride, sr + c * 16, s_stride);
    for (; c < vecs; ++c)
      QkRows<1, kVecStride>(qr, r, d, kp + c * vec_stride, pair_stride, vec_stride, sr + c * 16, s_stride);
  }
}

// Converts rows of f32 probabilities to bf16: out[r, c] for c < cols (cols even, padded to 32).
QATTN_BF16_TARGET void ToBf16Rows(const float* p, int rows, int cols, int p_stride, uint16_t* out, int out_stride) {
  for (int r = 0; r < rows; ++r) {
    const float* src = p + int64_t(r) * p_stride;
    uint16_t* dst = out + int64_t(r) * out_stride;
    int c = 0;
    for (; c + 32 <= cols; c += 32) {
      const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + c + 16), _mm512_loadu_ps(src + c));
      _mm512_storeu_si512(dst + c, (__m512i)b);
    }
    for (; c + 16 <= cols; c += 16) {
      const __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + c));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), (__m256i)b);
    }
    for (; c < cols; ++c) {
      const __m256bh b = _mm512_cvtneps_pbh(_mm512_set1_ps(src[c]));
      dst[c] = uint16_t(_mm256_extract_epi16((__m256i)b, 0));
    }
  }
}

// R rows x NC vectors of 16 value dims; o = alpha * o + pb @ v over key pairs.
template <int R, int NC>
QATTN_BF16_TARGET void PvMicro(const uint16_t* pb, int pb_stride, int cols, const uint16_t* vp, int dv, float* o,
                               const float* alpha) {
  __m512 acc[R][NC];
  _Pragma("GCC unroll 16")
  for (int r = 0; r < R; ++r) {
    const __m512 a = _mm512_set1_ps(alpha[r]);
    _Pragma("GCC unroll 16")
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_mul_ps(a, _mm512_loadu_ps(o + int64_t(r) * dv + c * 16));
  }
  for (int i = 0; i < cols / 2; ++i) {
    const uint16_t* vrow = vp + int64_t(i) * dv * 2;
    __m512bh v[NC];
    _Pragma("GCC unroll 16")
    for (int c = 0; c < NC; ++c) v[c] = (__m512bh)_mm512_loadu_si512(vrow + c * 32);
    _Pragma("GCC unroll 16")
    for (int r = 0; r < R; ++r) {
      const __m512bh pr = BroadcastPair(pb + int64_t(r) * pb_stride + 2 * i);
      _Pragma("GCC unroll 16")
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], pr, v[c]);
    }
  }
  _Pragma("GCC unroll 16")
  for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 16")
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(o + int64_t(r) * dv + c * 16, acc[r][c]);
}

template <int NC>
QATTN_BF16_TARGET void PvRows(const uint16_t* pb, int pb_stride, int rows, int cols, const uint16_t* vp, int dv,
                              float* o, const float* alpha) {
  switch (rows) {
    case 6: return PvMicro<6, NC>(pb, pb_stride, cols, vp, dv, o, alpha);
    case 5: return PvMicro<5, NC>(pb, pb_stride, cols, vp, dv, o, alpha);
    case 4: return PvMicro<4, NC>(pb, pb_stride, cols, vp, dv, o, alpha);
    case 3: return PvMicro<3, NC>(pb, pb_stride, cols, vp, dv, o, alpha);
    case 2: return PvMicro<2, NC>(pb, pb_stride, cols, vp, dv, o, alpha);
    default: return PvMicro<1, NC>(pb, pb_stride, cols, vp, dv, o, alpha);
  }
}

// Sums each of 16 vectors: lane i of the result is the sum of a[i]'s lanes (a transposing tree).
QATTN_BF16_TARGET inline __m512 Reduce16(__m512 a[16]) {
  __m512 t[8];
  _Pragma("GCC unroll 16")
  for (int k = 0; k < 8; ++k)
    t[k] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * k], a[2 * k + 1]), _mm512_unpackhi_ps(a[2 * k], a[2 * k + 1]));
  __m512 u[4];
  _Pragma("GCC unroll 16")
  for (int k = 0; k < 4; ++k) {
    const __m512d x = _mm512_castps_pd(t[2 * k]), y = _mm512_castps_pd(t[2 * k + 1]);
    u[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  // Each 128-bit block of u[k] now holds 4 partial sums of a[4k..4k+3]; add the blocks together.
  __m512 v[2];
  _Pragma("GCC unroll 16")
  for (int k = 0; k < 2; ++k)
    v[k] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0x88),
                         _mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], 0x88), _mm512_shuffle_f32x4(v[0], v[1], 0xdd));
}

// Loads a row's 32-element chunk ch of a length-d bf16 vector (zero beyond d).
QATTN_BF16_TARGET inline __m512bh LoadChunk(const uint16_t* row, int ch, int d) {
  const int remaining = d - ch * 32;
  if (remaining >= 32) return (__m512bh)_mm512_loadu_si512(row + ch * 32);
  return (__m512bh)_mm512_maskz_loadu_epi16(__mmask32((1ull << remaining) - 1), row + ch * 32);
}

constexpr int kMaxChunks = 16;  // d <= 512

// The 32-dim interleaving of two value rows leaves dims in this lane order; these indices move an
// f32 accumulator between natural order (two vectors of 16 dims) and that order.
alignas(64) const int32_t kToLo[16] = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
alignas(64) const int32_t kToHi[16] = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
alignas(64) const int32_t kFromLoHi0[16] = {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23};
alignas(64) const int32_t kFromLoHi1[16] = {8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};

// Loads 32 bf16 of a value row starting at dim j0: all of them (kFull) or the first `width`.
template <bool kFull>
QATTN_BF16_TARGET inline __m512i LoadValues(const uint16_t* p, __mmask32 mask) {
  return kFull ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(mask, p);
}

// Up to H heads x one 32-dim slice: o[h, j0..j0+32) = alpha * o + sum_c pb[h, c] v[c, j0..].
// Two value rows are interleaved into bf16 pairs (unpacklo/hi), which permutes the dims within
// each 128-bit lane; the accumulators live in that order and are permuted back once at the end.
template <int H, bool kFull>
QATTN_BF16_TARGET void AccumulateSlice(const uint16_t* pb, int pb_stride, int n, const uint16_t* v, int64_t v_stride,
                                       int j0, int dv, float* o, const float* alpha) {
  const __m512i to_lo = _mm512_load_si512(kToLo), to_hi = _mm512_load_si512(kToHi);
  __m512 lo[H], hi[H];
  const int width = std::min(32, dv - j0);
  const __mmask16 m0 = width >= 16 ? 0xffff : __mmask16((1u << width) - 1);
  const __mmask16 m1 = width >= 32 ? 0xffff : width <= 16 ? 0 : __mmask16((1u << (width - 16)) - 1);
  _Pragma("GCC unroll 16")
  for (int h = 0; h < H; ++h) {
    const __m512 a = _mm512_set1_ps(alpha[h]);
    const __m512 n0 = _mm512_mul_ps(a, _mm512_maskz_loadu_ps(m0, o + int64_t(h) * dv + j0));
    const __m512 n1 = _mm512_mul_ps(a, _mm512_maskz_loadu_ps(m1, o + int64_t(h) * dv + j0 + 16));
    lo[h] = _mm512_permutex2var_ps(n0, to_lo, n1);
    hi[h] = _mm512_permutex2var_ps(n0, to_hi, n1);
  }
  const __mmask32 vmask = width >= 32 ? ~__mmask32(0) : __mmask32((1u << width) - 1);
  const uint16_t* row = v + j0;
  const int pairs = n / 2;
  for (int c = 0; c < 2 * pairs; c += 2, row += 2 * v_stride) {
    const __m512i r0 = LoadValues<kFull>(row, vmask), r1 = LoadValues<kFull>(row + v_stride, vmask);
    const __m512bh vlo = (__m512bh)_mm512_unpacklo_epi16(r0, r1);
    const __m512bh vhi = (__m512bh)_mm512_unpackhi_epi16(r0, r1);
    _Pragma("GCC unroll 16")
    for (int h = 0; h < H; ++h) {
      const __m512bh pr = BroadcastPair(pb + int64_t(h) * pb_stride + c);
      lo[h] = _mm512_dpbf16_ps(lo[h], pr, vlo);
      hi[h] = _mm512_dpbf16_ps(hi[h], pr, vhi);
    }
  }
  if (n % 2) {  // the last key pairs with a zero row (its partner's probability is 0 too)
    const __m512i r0 = LoadValues<kFull>(row, vmask), r1 = _mm512_setzero_si512();
    const __m512bh vlo = (__m512bh)_mm512_unpacklo_epi16(r0, r1);
    const __m512bh vhi = (__m512bh)_mm512_unpackhi_epi16(r0, r1);
    for (int h = 0; h < H; ++h) {
      const __m512bh pr = BroadcastPair(pb + int64_t(h) * pb_stride + n - 1);
      lo[h] = _mm512_dpbf16_ps(lo[h], pr, vlo);
      hi[h] = _mm512_dpbf16_ps(hi[h], pr, vhi);
    }
  }
  const __m512i from0 = _mm512_load_si512(kFromLoHi0), from1 = _mm512_load_si512(kFromLoHi1);
  _Pragma("GCC unroll 16")
  for (int h = 0; h < H; ++h) {
    _mm512_mask_storeu_ps(o + int64_t(h) * dv + j0, m0, _mm512_permutex2var_ps(lo[h], from0, hi[h]));
    _mm512_mask_storeu_ps(o + int64_t(h) * dv + j0 + 16, m1, _mm512_permutex2var_ps(lo[h], from1, hi[h]));
  }
}

template <int H>
QATTN_BF16_TARGET void AccumulateSlices(const uint16_t* pb, int pb_stride, int n, const uint16_t* v,
                                        int64_t v_stride, int dv, float* o, const float* alpha) {
  for (int j0 = 0; j0 < dv; j0 += 32) {
    if (j0 + 32 <= dv) AccumulateSlice<H, true>(pb, pb_stride, n, v, v_stride, j0, dv, o, alpha);
    else AccumulateSlice<H, false>(pb, pb_stride, n, v, v_stride, j0, dv, o, alpha);
  }
}

std::vector<uint16_t>& ThreadScratch() {
  static thread_local std::vector<uint16_t> scratch;
  return scratch;
}

}  // namespace

QATTN_BF16_TARGET void QkBf16(const uint16_t* q, int rows, int d, const uint16_t* kp, int cols, float* s,
                              int s_stride) {
  QkPairs<32>(q, rows, d, kp, int64_t(cols) * 2, 32, cols / 16, s, s_stride);
}

QATTN_BF16_TARGET void PvBf16(const float* p, int rows, int cols, int p_stride, const uint16_t* vp, int dv, float* o,
                              const float* alpha) {
  const int pb_stride = (cols + 31) / 32 * 32;
  auto& pb = ThreadScratch();  // [rows, pb_stride] probabilities as bf16
  pb.resize(size_t(rows) * pb_stride);
  ToBf16Rows(p, rows, cols, p_stride, pb.data(), pb_stride);
  for (int r0 = 0, r = 0; r0 < rows; r0 += r) {
    r = BalancedRows(rows, r0);
    const uint16_t* pr = pb.data() + int64_t(r0) * pb_stride;
    float* orow = o + int64_t(r0) * dv;
    int j0 = 0;
    for (; j0 + 64 <= dv; j0 += 64) PvRows<4>(pr, pb_stride, r, cols, vp + j0 * 2, dv, orow + j0, alpha + r0);
    for (; j0 < dv; j0 += 16) PvRows<1>(pr, pb_stride, r, cols, vp + j0 * 2, dv, orow + j0, alpha + r0);
  }
}

// 16 keys x one head with CH full 32-dim chunks: 16 independent dot-product chains; the out-of-order
// core overlaps them, and each key's row is walked with one pointer bump (no spilled addresses).
template <int CH>
QATTN_BF16_TARGET void Dot16Keys(const uint16_t* q, const uint16_t* k, int64_t k_stride, float* s) {
  __m512bh qv[CH];
  _Pragma("GCC unroll 16")
  for (int ch = 0; ch < CH; ++ch) qv[ch] = (__m512bh)_mm512_loadu_si512(q + ch * 32);
  __m512 a[16];
  const uint16_t* row = k;
  _Pragma("GCC unroll 16")
  for (int kk = 0; kk < 16; ++kk) {
    __m512 acc = _mm512_dpbf16_ps(_mm512_setzero_ps(), qv[0], (__m512bh)_mm512_loadu_si512(row));
    _Pragma("GCC unroll 16")
    for (int ch = 1; ch < CH; ++ch) acc = _mm512_dpbf16_ps(acc, qv[ch], (__m512bh)_mm512_loadu_si512(row + ch * 32));
    a[kk] = acc;
    row += k_stride;
  }
  _mm512_storeu_ps(s, Reduce16(a));
}

// 8 keys x two heads: each loaded K chunk feeds two dot products (1.6x faster than one head at a
// time here); lanes 0-7 of the reduction are head a's keys, lanes 8-15 head b's.
template <int CH>
QATTN_BF16_TARGET void Dot8KeysTwoHeads(const uint16_t* qa, const uint16_t* qb, const uint16_t* k, int64_t k_stride,
                                        float* sa, float* sb) {
  __m512bh va[CH], vb[CH];
  _Pragma("GCC unroll 16")
  for (int ch = 0; ch < CH; ++ch) {
    va[ch] = (__m512bh)_mm512_loadu_si512(qa + ch * 32);
    vb[ch] = (__m512bh)_mm512_loadu_si512(qb + ch * 32);
  }
  __m512 a[16];
  const uint16_t* row = k;
  _Pragma("GCC unroll 8")
  for (int kk = 0; kk < 8; ++kk) {
    const __m512bh k0 = (__m512bh)_mm512_loadu_si512(row);
    __m512 x = _mm512_dpbf16_ps(_mm512_setzero_ps(), va[0], k0);
    __m512 y = _mm512_dpbf16_ps(_mm512_setzero_ps(), vb[0], k0);
    _Pragma("GCC unroll 16")
    for (int ch = 1; ch < CH; ++ch) {
      const __m512bh kc = (__m512bh)_mm512_loadu_si512(row + ch * 32);
      x = _mm512_dpbf16_ps(x, va[ch], kc);
      y = _mm512_dpbf16_ps(y, vb[ch], kc);
    }
    a[kk] = x;
    a[8 + kk] = y;
    row += k_stride;
  }
  const __m512 r = Reduce16(a);
  _mm256_storeu_ps(sa, _mm512_castps512_ps256(r));
  _mm256_storeu_ps(sb, _mm512_extractf32x8_ps(r, 1));
}

template <int CH>
QATTN_BF16_TARGET void DotRowsFull(const uint16_t* q, int g, int d, const uint16_t* k, int64_t k_stride, int n,
                                   float* s, int s_stride) {
  // Blocks of 64 keys (16 KiB at d = 128) stay in L1 while every head pair reads them.
  for (int b0 = 0; b0 < n; b0 += 64) {
    const int b1 = std::min(n, b0 + 64);
    int h = 0;
    for (; h + 2 <= g; h += 2)
      for (int c0 = b0; c0 < b1; c0 += 8)
        Dot8KeysTwoHeads<CH>(q + int64_t(h) * d, q + int64_t(h + 1) * d, k + c0 * k_stride, k_stride,
                             s + int64_t(h) * s_stride + c0, s + int64_t(h + 1) * s_stride + c0);
    for (; h < g; ++h)
      for (int c0 = b0; c0 < b1; c0 += 16)
        Dot16Keys<CH>(q + int64_t(h) * d, k + c0 * k_stride, k_stride, s + int64_t(h) * s_stride + c0);
  }
}

// Any number of keys (< 16 here) and any d: masked loads, one key at a time.
QATTN_BF16_TARGET void DotKeysGeneric(const __m512bh* qv, int chunks, int d, const uint16_t* k, int64_t k_stride,
                                      int keys, float* s) {
  __m512 a[16];
  for (int kk = 0; kk < 16; ++kk) {
    a[kk] = _mm512_setzero_ps();
    if (kk >= keys) continue;
    for (int ch = 0; ch < chunks; ++ch) a[kk] = _mm512_dpbf16_ps(a[kk], qv[ch], LoadChunk(k + kk * k_stride, ch, d));
  }
  _mm512_storeu_ps(s, Reduce16(a));
}

QATTN_BF16_TARGET void DotRowsBf16(const uint16_t* q, int g, int d, const uint16_t* k, int64_t k_stride, int n,
                                   float* s, int s_stride) {
  // Whole 16-key groups with d a multiple of 32 take the unrolled kernels; the rest is generic.
  const int full_keys = d % 32 == 0 ? n / 16 * 16 : 0;
  switch (full_keys ? d / 32 : 0) {
    case 1: DotRowsFull<1>(q, g, d, k, k_stride, full_keys, s, s_stride); break;
    case 2: DotRowsFull<2>(q, g, d, k, k_stride, full_keys, s, s_stride); break;
    case 3: DotRowsFull<3>(q, g, d, k, k_stride, full_keys, s, s_stride); break;
    case 4: DotRowsFull<4>(q, g, d, k, k_stride, full_keys, s, s_stride); break;
    case 6: DotRowsFull<6>(q, g, d, k, k_stride, full_keys, s, s_stride); break;
    case 8: DotRowsFull<8>(q, g, d, k, k_stride, full_keys, s, s_stride); break;
    default: {
      const int chunks = (d + 31) / 32;
      for (int h = 0; h < g; ++h) {
        __m512bh qv[kMaxChunks];
        for (int ch = 0; ch < chunks; ++ch) qv[ch] = LoadChunk(q + int64_t(h) * d, ch, d);
        for (int c0 = 0; c0 < n; c0 += 16)
          DotKeysGeneric(qv, chunks, d, k + c0 * k_stride, k_stride, std::min(16, n - c0), s + int64_t(h) * s_stride + c0);
      }
      return;
    }
  }
  if (full_keys == n) return;
  const int chunks = d / 32;
  for (int h = 0; h < g; ++h) {
    __m512bh qv[kMaxChunks];
    for (int ch = 0; ch < chunks; ++ch) qv[ch] = LoadChunk(q + int64_t(h) * d, ch, d);
    DotKeysGeneric(qv, chunks, d, k + full_keys * k_stride, k_stride, n - full_keys, s + int64_t(h) * s_stride + full_keys);
  }
}

QATTN_BF16_TARGET void AccumulateRowsBf16(const float* p, int g, int p_stride, int n, const uint16_t* v,
                                          int64_t v_stride, int dv, float* o, const float* alpha) {
  const int pb_stride = (n + 1 + 31) / 32 * 32;
  auto& pb = ThreadScratch();  // [g, pb_stride] probabilities as bf16, a zero after column n
  pb.assign(size_t(g) * pb_stride, 0);
  ToBf16Rows(p, g, n, p_stride, pb.data(), pb_stride);
  // Up to 8 heads per pass: 16 accumulators, and each interleaved value vector feeds 16 dot products.
  for (int h0 = 0; h0 < g; h0 += 8) {
    const int heads = std::min(8, g - h0);
    const uint16_t* ph = pb.data() + int64_t(h0) * pb_stride;
    float* oh = o + int64_t(h0) * dv;
    switch (heads) {
      case 8: AccumulateSlices<8>(ph, pb_stride, n, v, v_stride, dv, oh, alpha + h0); break;
      case 7: AccumulateSlices<7>(ph, pb_stride, n, v, v_stride, dv, oh, alpha + h0); break;
      case 6: AccumulateSlices<6>(ph, pb_stride, n, v, v_stride, dv, oh, alpha + h0); break;
      case 5: AccumulateSlices<5>(ph, pb_stride, n, v, v_stride, dv, oh, alpha + h0); break;
      case 4: AccumulateSlices<4>(ph, pb_stride, n, v, v_stride, dv, oh, alpha + h0); break;
      case 3: AccumulateSlices<3>(ph, pb_stride, n, v, v_stride, dv, oh, alpha + h0); break;
      case 2: AccumulateSlices<2>(ph, pb_stride, n, v, v_stride, dv, oh, alpha + h0); break;
      default: AccumulateSlices<1>(ph, pb_stride, n, v, v_stride, dv, oh, alpha + h0); break;
    }
  }
}

QATTN_BF16_TARGET void DotTilesBf16(const uint16_t* q, int g, int d, const uint16_t* tiles, int num_tiles, float* s,
                                    int s_stride) {
  QkPairs<0>(q, g, d, tiles, 32, int64_t(d) * 16, num_tiles, s, s_stride);
}

QATTN_BF16_TARGET void AccumulateTilesBf16(const float* p, int g, int p_stride, int n, const uint16_t* tiles, int dv,
                                           float* o, const float* alpha) {
  // A run of value tiles is one [n / 2, dv, 2] pair array (each tile holds 8 whole key pairs).
  PvBf16(p, g, n / 2 * 2, p_stride, tiles, dv, o, alpha);
  if (n % 2 == 0) return;
  // The odd last key: its pair partner is an unwritten slot (never read), so it is added alone.
  const uint16_t* v = tiles + int64_t(n - 1) * dv;  // pair (n - 1) / 2, first of the two
  for (int h = 0; h < g; ++h) {
    const float w = p[int64_t(h) * p_stride + n - 1];
    float* oh = o + int64_t(h) * dv;
    for (int j = 0; j < dv; j += 16) {
      const __m512i pairs = _mm512_loadu_si512(v + 2 * j);  // 16 dims x (this key, the unwritten slot)
      const __m512 x = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));  // low halves: this key's bf16
      _mm512_storeu_ps(oh + j, _mm512_fmadd_ps(_mm512_set1_ps(w), x, _mm512_loadu_ps(oh + j)));
    }
  }
}

}  // namespace qattn::tile
