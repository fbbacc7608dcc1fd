// Tensor element conversions: every supported ggml type to f32, and f32 to each of them with ggml's
// reference rounding (quantize_row_q8_0_ref / quantize_row_q4_0_ref).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "model/gguf.h"

namespace qattn::model {
namespace {

constexpr int kQBlock = 32;  // values per q8_0 / q4_0 block

float ReadScale(const uint8_t* block) {
  uint16_t bits;
  std::memcpy(&bits, block, 2);
  return F16ToF32(F16{bits});
}

void WriteScale(float d, uint8_t* block) {
  const uint16_t bits = F32ToF16(d).bits;
  std::memcpy(block, &bits, 2);
}

// q8_0 block: f16 d, int8 q[32]; value j = d * q[j].
void DequantizeQ8_0(const uint8_t* data, uint64_t blocks, float* out) {
  for (uint64_t b = 0; b < blocks; ++b, data += 34, out += kQBlock) {
    const float d = ReadScale(data);
    const int8_t* q = reinterpret_cast<const int8_t*>(data + 2);
    for (int j = 0; j < kQBlock; ++j) out[j] = d * float(q[j]);
  }
}

// q4_0 block: f16 d, u8 qs[16]; value j < 16 = d * (low nibble of qs[j] - 8), value j + 16 from the high nibble.
void DequantizeQ4_0(const uint8_t* data, uint64_t blocks, float* out) {
  for (uint64_t b = 0; b < blocks; ++b, data += 18, out += kQBlock) {
    const float d = ReadScale(data);
    const uint8_t* qs = data + 2;
    for (int j = 0; j < kQBlock / 2; ++j) {
      out[j] = d * float(int(qs[j] & 0x0f) - 8);
      out[j + kQBlock / 2] = d * float(int(qs[j] >> 4) - 8);
    }
  }
}

// ggml: d = max|x| / 127, q = round(x / d) (the reciprocal of the unrounded d).
void QuantizeQ8_0(const float* x, uint64_t blocks, uint8_t* out) {
  for (uint64_t b = 0; b < blocks; ++b, x += kQBlock, out += 34) {
    float amax = 0.0f;
    for (int j = 0; j < kQBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    WriteScale(d, out);
    for (int j = 0; j < kQBlock; ++j) {
      // Clamped so non-finite input cannot reach an out-of-range float->int conversion; a no-op otherwise.
      const float r = std::roundf(x[j] * id);
      out[2 + j] = uint8_t(int8_t(r >= 127.0f ? 127 : r <= -127.0f ? -127 : r == r ? int(r) : 0));
    }
  }
}

// ggml's 4-bit nibble: min(15, (int8)(v * id + 8.5)), written without the undefined conversion of NaN.
uint8_t Q4Nibble(float scaled) {
  const float v = scaled + 8.5f;
  if (v >= 15.0f) return 15;
  return v > 0.0f ? uint8_t(int(v)) : 0;
}

// ggml: the value of largest magnitude (with its sign) is `max`, d = max / -8, q = x / d + 8.
void QuantizeQ4_0(const float* x, uint64_t blocks, uint8_t* out) {
  for (uint64_t b = 0; b < blocks; ++b, x += kQBlock, out += 18) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQBlock; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    WriteScale(d, out);
    for (int j = 0; j < kQBlock / 2; ++j) {
      out[2 + j] = uint8_t(Q4Nibble(x[j] * id) | (Q4Nibble(x[j + kQBlock / 2] * id) << 4));
    }
  }
}

}  // namespace

void DequantizeToF32(GgmlType type, const uint8_t* data, uint64_t count, float* out) {
  const uint64_t blocks = GgmlRowBytes(type, count) / uint64_t(GgmlBlockBytes(type));  // validates count
  if (count == 0) return;
  switch (type) {
    case GgmlType::kF32: std::memcpy(out, data, count * 4); break;
    case GgmlType::kF16: F16ToF32Array(reinterpret_cast<const uint16_t*>(data), out, count); break;
    case GgmlType::kBF16: BF16ToF32Array(reinterpret_cast<const uint16_t*>(data), out, count); break;
    case GgmlType::kQ8_0: DequantizeQ8_0(data, blocks, out); break;
    case GgmlType::kQ4_0: DequantizeQ4_0(data, blocks, out); break;
  }
}

std::vector<uint8_t> QuantizeFromF32(GgmlType type, const float* values, uint64_t count) {
  std::vector<uint8_t> out(GgmlRowBytes(type, count));  // [count / block][block bytes]
  const uint64_t blocks = out.size() / uint64_t(GgmlBlockBytes(type));
  if (count == 0) return out;
  switch (type) {
    case GgmlType::kF32: std::memcpy(out.data(), values, count * 4); break;
    case GgmlType::kF16: ConvertFromF32(values, out.data(), DType::kF16, count); break;
    case GgmlType::kBF16: ConvertFromF32(values, out.data(), DType::kBF16, count); break;
    case GgmlType::kQ8_0: QuantizeQ8_0(values, blocks, out.data()); break;
    case GgmlType::kQ4_0: QuantizeQ4_0(values, blocks, out.data()); break;
  }
  return out;
}

}  // namespace qattn::model
