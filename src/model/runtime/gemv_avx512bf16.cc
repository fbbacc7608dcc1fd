// One-row products on vdpbf16ps (AVX-512 BF16) for bf16 weights: the input row is rounded to bf16
// once (as prefill's oneDNN matmul rounds it), so each 64-byte line of weights costs one
// instruction instead of a widening and two f32 FMAs. Decode streams every weight once per token;
// the lighter compute lets the loads keep more of the memory bandwidth (1.17-1.41x the widening
// kernel on Qwen2.5-0.5B's shapes here, bench/gemv_bench.cc). Compiled with target attributes and
// called only when the CPU reports avx512bf16 (Highway 1.0.3 emulates this instruction, hence
// intrinsics).
#include <immintrin.h>

#include "model/runtime/linear.h"

#define QATTN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

namespace qattn::model {
namespace {

// 32 bf16 of a row from element i: all of them, or the `tail` first ones (the rest zero).
QATTN_BF16_TARGET inline __m512bh Load32(const uint16_t* row, int i, __mmask32 tail) {
  return (__m512bh)_mm512_maskz_loadu_epi16(tail, row + i);
}

// R rows from w0 (rows `in` apart) times x: one x vector feeds R dot products.
template <int R>
QATTN_BF16_TARGET void DotRows(const uint16_t* w0, int in, const uint16_t* x, float* y) {
  const int full = in / 32 * 32;
  const __mmask32 tail = __mmask32((1ull << (in - full)) - 1);
  __m512 acc[R];
  _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int i = 0; i < full; i += 32) {
    const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + i);
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)
      acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(w0 + int64_t(r) * in + i), xv);
  }
  if (tail) {
    const __m512bh xv = Load32(x, full, tail);
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)
      acc[r] = _mm512_dpbf16_ps(acc[r], Load32(w0 + int64_t(r) * in, full, tail), xv);
  }
  _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) y[r] = _mm512_reduce_add_ps(acc[r]);
}

}  // namespace

QATTN_BF16_TARGET void GemvRowsBf16Dot(const uint16_t* w, int in, const uint16_t* x, int row_begin, int row_end,
                                       float* y) {
  ForGemvRowBlocks(
      w, int64_t(in) * 2, row_begin, row_end,
      [&](int r) QATTN_BF16_TARGET { DotRows<4>(w + int64_t(r) * in, in, x, y + r); },
      [&](int r) QATTN_BF16_TARGET { DotRows<1>(w + int64_t(r) * in, in, x, y + r); });
}

}  // namespace qattn::model
