// KV tile formats: sizes, quantizing stores, dequantizing loads and bit-exact copies of one token.
// The byte layouts are in kv_tile_layout.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "kernels/kv_format.h"
#include "kernels/kv_tile_layout.h"

namespace qattn {
namespace {

using namespace kvlayout;

// Plain rows take any d; int8 K packs 4 dims per 32-bit lane, int4 K 8 dims per lane.
void CheckDim(KvDType t, int d) {
  if (d < 1) throw InvalidArgument("KV tiles need a positive head dim, got " + std::to_string(d));
  if (t == KvDType::kInt8 && d % 4 != 0)
    throw InvalidArgument("int8 KV tiles need a head dim that is a multiple of 4, got " + std::to_string(d));
  if (t == KvDType::kInt4 && d % 8 != 0)
    throw InvalidArgument("int4 KV tiles need a head dim that is a multiple of 8, got " + std::to_string(d));
}

void CheckSlot(int slot) {
  if (slot < 0 || slot >= kKvTileTokens) throw InvalidArgument("tile slot " + std::to_string(slot) + " is not in [0, 16)");
}

float LoadF32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}
void StoreF32(uint8_t* p, float f) { std::memcpy(p, &f, 4); }
float LoadBf16(const uint8_t* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  return BF16ToF32(BF16{b});
}
void StoreBf16(uint8_t* p, uint16_t b) { std::memcpy(p, &b, 2); }

// int8: scale max|x| / 127, q = round(x / scale) clamped to +-127 (all zero when x is).
void StoreInt8(bool value, const float* x, int d, uint8_t* tile, int slot) {
  float amax = 0;
  for (int i = 0; i < d; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float scale = amax / 127.0f;
  for (int i = 0; i < d; ++i) {
    const float q = scale > 0 ? std::clamp(std::nearbyint(x[i] / scale), -127.0f, 127.0f) : 0.0f;
    if (value) tile[V8Byte(d, slot, i)] = uint8_t(int8_t(q));
    else tile[K8Byte(d, slot, i)] = uint8_t(int(q) + 128);
  }
  StoreF32(tile + (value ? V8Scales(d) : K8Scales(d)) + size_t(slot) * 4, scale);
}

// int4 (q4_0-like), per group of 32 dims (the last group shorter, kv_tile_layout.h): scale = x_m / -8 with x_m the value of largest magnitude,
// rounded to bf16 first so that q is computed with the scale that is stored.
void StoreInt4(bool value, const float* x, int d, uint8_t* tile, int slot) {
  uint8_t* scales = tile + (value ? V4Scales(d) : K4Scales(d));
  for (int g = 0; g < Q4Groups(d); ++g) {
    const float* xg = x + g * kGroup;
    const int width = Q4GroupDims(d, g);
    float xm = 0;
    for (int i = 0; i < width; ++i)
      if (std::fabs(xg[i]) > std::fabs(xm)) xm = xg[i];
    const uint16_t sbits = F32ToBF16(xm / -8.0f).bits;
    const float scale = BF16ToF32(BF16{sbits});
    StoreBf16(scales + Q4ScaleIndex(slot, g) * 2, sbits);
    for (int i = 0; i < width; ++i) {
      const int dim = g * kGroup + i;
      const int q = scale != 0 ? int(std::clamp(std::nearbyint(xg[i] / scale) + 8.0f, 0.0f, 15.0f)) : 8;
      const size_t byte = value ? V4Byte(d, slot, dim) : K4Byte(d, slot, dim);
      const int shift = 4 * (value ? V4Nibble(d, dim) : K4Nibble(dim));
      tile[byte] = uint8_t((tile[byte] & ~(0x0f << shift)) | (q << shift));
    }
  }
}

// bf16 in pair layout (kv_tile_layout.h); an odd d's K pad element is written as 0 so that the
// padded pair's product with the query's zero pad is 0, whatever the memory held before.
void StoreBf16Token(bool value, const float* x, int d, uint8_t* tile, int slot) {
  uint16_t* p = reinterpret_cast<uint16_t*>(tile);
  for (int i = 0; i < d; ++i) p[value ? VB16Index(d, slot, i) : KB16Index(slot, i)] = F32ToBF16(x[i]).bits;
  if (!value && d % 2) p[KB16Index(slot, d)] = 0;
}

// Walks each token's elements with a fixed stride (2 within a value pair row, 32 between key dim
// pairs): the runtime's prefill gathers every cached token through here.
void LoadBf16Tokens(bool value, const uint8_t* tile, int count, int d, float* out) {
  const uint16_t* p = reinterpret_cast<const uint16_t*>(tile);
  for (int t = 0; t < count; ++t) {
    float* row = out + size_t(t) * d;
    if (value) {
      const uint16_t* src = p + VB16Index(d, t, 0);  // dims 2 apart
      for (int j = 0; j < d; ++j) row[j] = BF16ToF32(BF16{src[2 * j]});
    } else {
      const uint16_t* src = p + KB16Index(t, 0);  // dim pairs 2 x kTokens apart
      for (int i = 0; i + 1 < d; i += 2) {
        row[i] = BF16ToF32(BF16{src[size_t(i) * kTokens]});
        row[i + 1] = BF16ToF32(BF16{src[size_t(i) * kTokens + 1]});
      }
      if (d % 2) row[d - 1] = BF16ToF32(BF16{src[size_t(d - 1) * kTokens]});
    }
  }
}

void LoadInt8(bool value, const uint8_t* tile, int count, int d, float* out) {
  for (int t = 0; t < count; ++t) {
    const float scale = LoadF32(tile + (value ? V8Scales(d) : K8Scales(d)) + size_t(t) * 4);
    for (int i = 0; i < d; ++i) {
      const int q = value ? int(int8_t(tile[V8Byte(d, t, i)])) : int(tile[K8Byte(d, t, i)]) - 128;
      out[size_t(t) * d + i] = float(q) * scale;
    }
  }
}

void LoadInt4(bool value, const uint8_t* tile, int count, int d, float* out) {
  const uint8_t* scales = tile + (value ? V4Scales(d) : K4Scales(d));
  for (int t = 0; t < count; ++t)
    for (int i = 0; i < d; ++i) {
      const float scale = LoadBf16(scales + Q4ScaleIndex(t, i / kGroup) * 2);
      const size_t byte = value ? V4Byte(d, t, i) : K4Byte(d, t, i);
      const int q = (tile[byte] >> (4 * (value ? V4Nibble(d, i) : K4Nibble(i)))) & 0x0f;
      out[size_t(t) * d + i] = float(q - 8) * scale;
    }
}

// Every (byte, bit mask) of token `slot` in a quantized tile, handed to f(offset, mask).
template <typename F>
void ForEachTokenByte(KvDType t, bool value, int d, int slot, F f) {
  if (t == KvDType::kInt8) {
    for (int i = 0; i < d; ++i) f(value ? V8Byte(d, slot, i) : K8Byte(d, slot, i), 0xff);
    for (int b = 0; b < 4; ++b) f((value ? V8Scales(d) : K8Scales(d)) + size_t(slot) * 4 + b, 0xff);
    return;
  }
  for (int i = 0; i < d; ++i)
    f(value ? V4Byte(d, slot, i) : K4Byte(d, slot, i), 0x0f << (4 * (value ? V4Nibble(d, i) : K4Nibble(i))));
  for (int g = 0; g < Q4Groups(d); ++g)
    for (int b = 0; b < 2; ++b) f((value ? V4Scales(d) : K4Scales(d)) + Q4ScaleIndex(slot, g) * 2 + b, 0xff);
}

}  // namespace

const char* KvDTypeName(KvDType t) {
  switch (t) {
    case KvDType::kF32: return "f32";
    case KvDType::kBF16: return "bf16";
    case KvDType::kF16: return "f16";
    case KvDType::kInt8: return "int8";
    case KvDType::kInt4: return "int4";
  }
  return "?";
}

KvDType ParseKvDType(const std::string& s) {
  for (KvDType t : {KvDType::kF32, KvDType::kBF16, KvDType::kF16, KvDType::kInt8, KvDType::kInt4})
    if (s == KvDTypeName(t)) return t;
  throw InvalidArgument("unknown KV dtype '" + s + "' (known: f32, bf16, f16, int8, int4)");
}

bool IsQuantized(KvDType t) { return t == KvDType::kInt8 || t == KvDType::kInt4; }

size_t KvTileBytes(KvDType t, int d, bool value) {
  CheckDim(t, d);
  switch (t) {
    case KvDType::kF32: return size_t(kTokens) * d * 4;
    case KvDType::kBF16: return value ? size_t(kTokens) * d * 2 : KB16Elements(d) * 2;  // K pads odd d
    case KvDType::kF16: return size_t(kTokens) * d * 2;
    case KvDType::kInt8: return size_t(kTokens) * d + kTokens * 4;
    case KvDType::kInt4: return size_t(kTokens) * d / 2 + size_t(Q4Groups(d)) * kTokens * 2;
  }
  return 0;
}

void StoreKvToken(KvDType t, bool value, const float* x, int d, void* tile, int slot) {
  CheckDim(t, d);
  CheckSlot(slot);
  uint8_t* p = static_cast<uint8_t*>(tile);
  switch (t) {
    case KvDType::kF32: std::memcpy(p + size_t(slot) * d * 4, x, size_t(d) * 4); return;
    case KvDType::kBF16: return StoreBf16Token(value, x, d, p, slot);
    case KvDType::kF16: ConvertFromF32(x, p + size_t(slot) * d * 2, DType::kF16, size_t(d)); return;
    case KvDType::kInt8: return StoreInt8(value, x, d, p, slot);
    case KvDType::kInt4: return StoreInt4(value, x, d, p, slot);
  }
}

void LoadKvTokens(KvDType t, bool value, const void* tile, int count, int d, float* out) {
  CheckDim(t, d);
  if (count < 0 || count > kKvTileTokens) throw InvalidArgument("a tile holds 0..16 tokens, not " + std::to_string(count));
  const uint8_t* p = static_cast<const uint8_t*>(tile);
  switch (t) {
    case KvDType::kF32: std::memcpy(out, p, size_t(count) * d * 4); return;
    case KvDType::kBF16: return LoadBf16Tokens(value, p, count, d, out);
    case KvDType::kF16: ConvertToF32(p, DType::kF16, out, size_t(count) * d); return;
    case KvDType::kInt8: return LoadInt8(value, p, count, d, out);
    case KvDType::kInt4: return LoadInt4(value, p, count, d, out);
  }
}

void CopyKvToken(KvDType t, bool value, int d, const void* src_tile, int src_slot, void* dst_tile, int dst_slot) {
  CheckDim(t, d);
  CheckSlot(src_slot);
  CheckSlot(dst_slot);
  const uint8_t* src = static_cast<const uint8_t*>(src_tile);
  uint8_t* dst = static_cast<uint8_t*>(dst_tile);
  if (t == KvDType::kBF16) {  // pair layout: element by element (the K pad of an odd d stays 0)
    uint16_t* dst16 = reinterpret_cast<uint16_t*>(dst);
    const uint16_t* src16 = reinterpret_cast<const uint16_t*>(src);
    for (int i = 0; i < d; ++i) {
      dst16[value ? VB16Index(d, dst_slot, i) : KB16Index(dst_slot, i)] =
          src16[value ? VB16Index(d, src_slot, i) : KB16Index(src_slot, i)];
    }
    if (!value && d % 2) dst16[KB16Index(dst_slot, d)] = 0;
    return;
  }
  if (!IsQuantized(t)) {  // plain rows
    const size_t row = KvTileBytes(t, d, value) / kTokens;
    std::memmove(dst + dst_slot * row, src + src_slot * row, row);
    return;
  }
  // Same positions in both tiles differ only by slot: walk the source's bytes and map each to the
  // destination by the slot's offset pattern (both walks visit the same fields in the same order).
  std::vector<std::pair<size_t, int>> from, to;  // [bytes of one token] (offset, bit mask)
  ForEachTokenByte(t, value, d, src_slot, [&](size_t o, int m) { from.push_back({o, m}); });
  ForEachTokenByte(t, value, d, dst_slot, [&](size_t o, int m) { to.push_back({o, m}); });
  for (size_t i = 0; i < from.size(); ++i) {
    const int src_shift = __builtin_ctz(unsigned(from[i].second)), dst_shift = __builtin_ctz(unsigned(to[i].second));
    const int bits = (src[from[i].first] & from[i].second) >> src_shift;
    dst[to[i].first] = uint8_t((dst[to[i].first] & ~to[i].second) | (bits << dst_shift));
  }
}

}  // namespace qattn
