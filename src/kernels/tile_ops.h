// The skeleton's inner steps on one tile, each with an f32 path (Highway, dispatched to the best
// of scalar/SSE4/AVX2/AVX-512) and, where the CPU has vdpbf16ps, a bf16 path (intrinsics).
// The prefill and decode loops (prefill.cc, decode.cc) call only these.
#pragma once
#include <cstdint>

#include "kernels/variant_mask.h"

namespace qattn::tile {

// One online-softmax step over a tile of logits.
struct SoftmaxStep {
  float* s = nullptr;     // [rows, s_stride]: raw Q.K dot products in, probabilities out
  int rows = 0;
  int cols = 0;           // valid key columns; columns in [cols, s_stride) come out as 0
  int s_stride = 0;       // a multiple of 16
  int64_t key_start = 0;  // position of column 0
  float scale = 1.0f;
  float softcap = 0.0f;
  const float* alibi = nullptr;        // [rows] slope per row, or null
  const int64_t* pos = nullptr;        // [rows] query positions (read with alibi or bounds)
  const KeyInterval* bounds = nullptr; // [rows] visible keys per row, or null: all visible
  float* m = nullptr;      // [rows] running max of logits (-inf before any visible key)
  float* l = nullptr;      // [rows] running sum of exp(logit - m)
  float* alpha = nullptr;  // [rows] out: factor that rescales the rows' output accumulators
};
void SoftmaxUpdate(const SoftmaxStep& step);

// ---- f32 path ----
// s[r, c] = <q[r, :], kt[:, c]> for r < rows, c < cols (cols a multiple of 16).
void QkF32(const float* q,   // [rows, d]
           int rows, int d,
           const float* kt,  // [d, cols] keys transposed
           int cols,
           float* s, int s_stride);  // [rows, s_stride]
// o[r, :] = alpha[r] * o[r, :] + sum_c p[r, c] * v[c, :]   (dv a multiple of 16)
void PvF32(const float* p, int rows, int cols, int p_stride,  // [rows, p_stride]
           const float* v,                                    // [cols, dv]
           int dv, float* o,                                  // [rows, dv]
           const float* alpha);                               // [rows]
// Decode form, reading keys and values in place: s[g, c] = <q[g, :], k[c * k_stride + :]>.
void DotRowsF32(const float* q, int g, int d,            // q: [g, d]
                const float* k, int64_t k_stride, int n,  // k: n rows of d
                float* s, int s_stride);                  // [g, s_stride]
// o[g, :] = alpha[g] * o[g, :] + sum_c p[g, c] * v[c * v_stride + :]
void AccumulateRowsF32(const float* p, int g, int p_stride, int n,  // p: [g, p_stride]
                       const float* v, int64_t v_stride, int dv,    // v: n rows of dv
                       float* o, const float* alpha);               // o: [g, dv]

// ---- bf16 path (AVX-512 BF16); call only when HasBf16Path() ----
bool HasBf16Path();
// kp holds keys as bf16 pairs along d: kp[(i / 2) * cols * 2 + c * 2 + i % 2] = k[c, i]; d even.
void QkBf16(const uint16_t* q, int rows, int d,  // q: [rows, d]
            const uint16_t* kp, int cols,         // kp: [d / 2, cols, 2]
            float* s, int s_stride);
// vp holds values as bf16 pairs along keys: vp[(c / 2) * dv * 2 + j * 2 + c % 2] = v[c, j]; cols even.
void PvBf16(const float* p, int rows, int cols, int p_stride,  // p: [rows, p_stride] f32
            const uint16_t* vp, int dv,                         // vp: [cols / 2, dv, 2]
            float* o, const float* alpha);                      // o: [rows, dv]
// Decode forms on bf16 rows in place (d and dv multiples of 32 and 16).
void DotRowsBf16(const uint16_t* q, int g, int d, const uint16_t* k, int64_t k_stride, int n, float* s,
                 int s_stride);
void AccumulateRowsBf16(const float* p, int g, int p_stride, int n, const uint16_t* v, int64_t v_stride, int dv,
                        float* o, const float* alpha);
// KV cache tiles of 16 tokens in pair layout (kv_tile_layout.h): K tile [d / 2, 16, 2], V tile
// [8, dv, 2], so a run of tiles feeds the same register tiles as prefill's packed K and V.
// s[h, 16 t + i] = <q[h, :], key i of tile t> for every slot of num_tiles consecutive K tiles (d even).
void DotTilesBf16(const uint16_t* q, int g, int d, const uint16_t* tiles, int num_tiles, float* s, int s_stride);
// o[h, :] = alpha[h] * o[h, :] + sum_{c < n} p[h, c] v_c over consecutive V tiles (dv a multiple of 16).
void AccumulateTilesBf16(const float* p, int g, int p_stride, int n, const uint16_t* tiles, int dv, float* o,
                         const float* alpha);

}  // namespace qattn::tile
