// Element types of attention inputs and their conversions to and from f32.
// bf16 and f16 are stored as raw 16-bit patterns; conversions round to nearest even.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace qattn {

enum class DType : uint8_t { kF32, kBF16, kF16 };

inline size_t DTypeSize(DType t) { return t == DType::kF32 ? 4 : 2; }
std::string_view DTypeName(DType t);
// Parses "f32" | "bf16" | "f16"; returns false on anything else.
bool ParseDType(std::string_view name, DType* out);

struct BF16 { uint16_t bits; };
struct F16 { uint16_t bits; };

inline float BF16ToF32(BF16 x) {
  uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline BF16 F32ToBF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BF16{uint16_t((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return BF16{uint16_t(u >> 16)};
}

float F16ToF32(F16 x);
F16 F32ToF16(float f);

// Rounds f through the given type and back (identity for f32).
float RoundTrip(float f, DType t);

// Vectorised widening of n bf16 or f16 values (exact; convert_hwy.cc).
void BF16ToF32Array(const uint16_t* src, float* dst, size_t n);
void F16ToF32Array(const uint16_t* src, float* dst, size_t n);

// Converts n elements between a typed buffer and f32.
void ConvertToF32(const void* src, DType t, float* dst, size_t n);
void ConvertFromF32(const float* src, void* dst, DType t, size_t n);

}  // namespace qattn
