#include "core/dtype.h"

#include <cmath>

namespace qattn {

std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "f16";
  }
  return "?";
}

bool ParseDType(std::string_view name, DType* out) {
  if (name == "f32" || name == "float32") *out = DType::kF32;
  else if (name == "bf16" || name == "bfloat16") *out = DType::kBF16;
  else if (name == "f16" || name == "float16") *out = DType::kF16;
  else return false;
  return true;
}

float F16ToF32(F16 x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t exp = (x.bits >> 10) & 0x1f;
  const uint32_t mant = x.bits & 0x3ffu;
  float mag;
  if (exp == 0) {
    mag = std::ldexp(float(mant), -24);  // subnormal
  } else if (exp == 31) {
    mag = mant ? NAN : INFINITY;
  } else {
    uint32_t u = ((exp + 112) << 23) | (mant << 13);
    std::memcpy(&mag, &u, 4);
  }
  uint32_t u;
  std::memcpy(&u, &mag, 4);
  u |= sign;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

F16 F32ToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return F16{uint16_t(sign | 0x7e00u)};  // NaN
  if (u >= 0x477ff000u) return F16{uint16_t(sign | 0x7c00u)};  // overflow (rounds past 65504) -> inf
  if (u < 0x38800000u) {
    // Result is subnormal or zero: scale so the integer part is the f16 mantissa.
    float mag;
    std::memcpy(&mag, &u, 4);
    const float scaled = mag * 16777216.0f;  // 2^24
    return F16{uint16_t(sign | uint16_t(std::nearbyint(scaled)))};
  }
  // Normal: rebias exponent, round mantissa to 10 bits (nearest even).
  uint32_t rounded = u + 0xfffu + ((u >> 13) & 1u);
  uint32_t exp = (rounded >> 23) - 112;
  uint32_t mant = (rounded >> 13) & 0x3ffu;
  return F16{uint16_t(sign | (exp << 10) | mant)};
}

float RoundTrip(float f, DType t) {
  switch (t) {
    case DType::kF32: return f;
    case DType::kBF16: return BF16ToF32(F32ToBF16(f));
    case DType::kF16: return F16ToF32(F32ToF16(f));
  }
  return f;
}

void ConvertToF32(const void* src, DType t, float* dst, size_t n) {
  switch (t) {
    case DType::kF32: std::memcpy(dst, src, n * 4); break;
    case DType::kBF16: BF16ToF32Array(static_cast<const uint16_t*>(src), dst, n); break;
    case DType::kF16: F16ToF32Array(static_cast<const uint16_t*>(src), dst, n); break;
  }
}

void ConvertFromF32(const float* src, void* dst, DType t, size_t n) {
  switch (t) {
    case DType::kF32: std::memcpy(dst, src, n * 4); break;
    case DType::kBF16: {
      BF16* d = static_cast<BF16*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = F32ToBF16(src[i]);
      break;
    }
    case DType::kF16: {
      F16* d = static_cast<F16*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = F32ToF16(src[i]);
      break;
    }
  }
}

}  // namespace qattn
