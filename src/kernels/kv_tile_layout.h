// The private byte layouts of bf16 and quantized KV tiles (16 tokens of one head). Only
// kv_format.cc and the tile kernels include this; everyone else goes through kv_format.h.
//
// bf16 K  [ceil(d/2) dim pairs][16 tokens][2] (an odd d's last pair ends in a stored 0): one
//         64-byte row holds one dim pair of all 16 tokens, so vdpbf16ps against a broadcast query
//         pair gives 16 partial dot products with no reduction across lanes (prefill's packed K).
// bf16 V  [8 token pairs][d][2]: one 64-byte row holds 16 dims of two tokens, and a run of tiles
//         is one [tokens / 2, d, 2] array (prefill's packed V).
// f32 / f16: plain rows [16][d].
//
// int8 K  [d/4][16 tokens][4 dims] u8 (k + 128), then scales [16] f32
//         one 64-byte row holds 4 dims of all 16 tokens: one vpdpbusd (u8 x s8) against a
//         broadcast of 4 query bytes gives 16 partial dot products.
// int8 V  [4 token quads][d][4 tokens] s8, then scales [16] f32
//         one 64-byte row holds 16 dims of 4 tokens: the P.V step reads 4 tokens per vector.
// int4 K  [d/8][16 tokens][4 bytes], byte b of token t in block i: low nibble dim 8i+b, high
//         nibble dim 8i+4+b (values q in 0..15, x = (q - 8) * scale); then scales [groups][16]
//         bf16 (a 32-dim group is 4 blocks; one scale vector per group serves all 16 tokens).
// int4 V  [4 token quads][groups][w/2 dims][4 tokens] bytes for a group of w dims: low nibble
//         dim 32c+j, high nibble dim 32c+w/2+j (w = 32: one 64-byte row); then scales [groups][16].
// int4 groups are 32 dims each, the last one shorter when d % 32 != 0 (so the whole head when
// d < 32); d % 8 == 0 keeps every group a whole number of 8-dim K blocks. int8 needs d % 4 == 0.
// bf16 scales keep f32's range (no overflow or flush for any finite input) at half the bytes.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace qattn::kvlayout {

constexpr int kTokens = 16;

// bf16 K / V: element index (not byte) of (token t, dim i), and a K tile's elements.
inline size_t KB16Index(int t, int i) { return size_t(i / 2) * 2 * kTokens + size_t(t) * 2 + size_t(i % 2); }
inline size_t KB16Elements(int d) { return size_t((d + 1) / 2) * 2 * kTokens; }
inline size_t VB16Index(int d, int t, int j) { return size_t(t / 2) * 2 * size_t(d) + size_t(j) * 2 + size_t(t % 2); }
constexpr int kGroup = 32;  // int4 dims per scale (fewer in a head's last group)

// int4 scale groups of a head of d dims, and the dims of group g.
inline int Q4Groups(int d) { return (d + kGroup - 1) / kGroup; }
inline int Q4GroupDims(int d, int g) { return std::min(kGroup, d - g * kGroup); }

// int8 K: byte of (token t, dim i), and where the 16 f32 scales start.
inline size_t K8Byte(int d, int t, int i) {
  (void)d;
  return size_t(i / 4) * 64 + size_t(t) * 4 + size_t(i % 4);
}
inline size_t K8Scales(int d) { return size_t(d) * kTokens; }

// int8 V: byte of (token t, dim j).
inline size_t V8Byte(int d, int t, int j) { return size_t(t / 4) * 4 * size_t(d) + size_t(j) * 4 + size_t(t % 4); }
inline size_t V8Scales(int d) { return size_t(d) * kTokens; }

// int4 K: byte and nibble (0 low, 1 high) of (token t, dim i).
inline size_t K4Byte(int d, int t, int i) {
  (void)d;
  return size_t(i / 8) * 64 + size_t(t) * 4 + size_t(i % 4);
}
inline int K4Nibble(int i) { return (i % 8) / 4; }
inline size_t K4Scales(int d) { return size_t(d) * kTokens / 2; }

// int4 V: byte and nibble of (token t, dim j).
// A token quad's bytes are 2d: a full group takes 64, a group of w dims 2w.
inline size_t V4Byte(int d, int t, int j) {
  const int half = Q4GroupDims(d, j / kGroup) / 2;
  return size_t(t / 4) * 2 * size_t(d) + size_t(j / kGroup) * 64 + size_t(j % kGroup % half) * 4 + size_t(t % 4);
}
inline int V4Nibble(int d, int j) { return (j % kGroup) / (Q4GroupDims(d, j / kGroup) / 2); }
inline size_t V4Scales(int d) { return size_t(d) * kTokens / 2; }

// int4 scale of (token t, group g): index into the bf16 scale array [groups][16].
inline size_t Q4ScaleIndex(int t, int g) { return size_t(g) * kTokens + size_t(t); }

}  // namespace qattn::kvlayout
