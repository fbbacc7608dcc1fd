// Type tables: ggml tensor types (block sizes, names) and GGUF metadata value types.
#include <cstdint>
#include <iterator>
#include <string>

#include "model/gguf.h"
#include "model/gguf_internal.h"

namespace qattn::model {

const char* GgmlTypeName(GgmlType type) {
  const char* name = internal::AnyGgmlTypeName(uint32_t(type));
  return name ? name : "unknown";
}

int GgmlBlockSize(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16: return 1;
    case GgmlType::kQ4_0:
    case GgmlType::kQ8_0: return 32;
  }
  return 0;
}

int GgmlBlockBytes(GgmlType type) {
  switch (type) {
    case GgmlType::kF32: return 4;
    case GgmlType::kF16:
    case GgmlType::kBF16: return 2;
    case GgmlType::kQ4_0: return 2 + 16;  // f16 scale + 32 nibbles
    case GgmlType::kQ8_0: return 2 + 32;  // f16 scale + 32 int8
  }
  return 0;
}

uint64_t GgmlRowBytes(GgmlType type, uint64_t elements) {
  const int block = GgmlBlockSize(type);
  if (block == 0) throw ModelFileError("ggml type " + std::to_string(uint32_t(type)) + " is not supported");
  if (elements % uint64_t(block) != 0) {
    throw ModelFileError(std::to_string(elements) + " elements of type " + GgmlTypeName(type) +
                         " are not a whole number of blocks of " + std::to_string(block));
  }
  // elements / block * bytes cannot overflow for any count below 2^64 / 34 * 32; callers bound counts by
  // file sizes, but check anyway.
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(elements / uint64_t(block), uint64_t(GgmlBlockBytes(type)), &bytes)) {
    throw ModelFileError(std::to_string(elements) + " elements of type " + GgmlTypeName(type) + " overflow a 64-bit size");
  }
  return bytes;
}

std::string GgufValue::TypeName() const {
  if (type != GgufValueType::kArray) return internal::ValueTypeName(type);
  return std::string("array of ") + internal::ValueTypeName(array_type);
}

namespace internal {

bool IsSupportedGgmlType(uint32_t type) {
  switch (GgmlType(type)) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kQ4_0:
    case GgmlType::kQ8_0:
    case GgmlType::kBF16: return true;
  }
  return false;
}

const char* AnyGgmlTypeName(uint32_t type) {
  // ggml's numbering; the gaps are types ggml has removed.
  static const char* const kNames[] = {
      "f32",     "f16",    "q4_0",   "q4_1",   nullptr,  nullptr, "q5_0",  "q5_1",   "q8_0",   "q8_1",
      "q2_K",    "q3_K",   "q4_K",   "q5_K",   "q6_K",   "q8_K",  "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s",
      "iq4_nl",  "iq3_s",  "iq2_s",  "iq4_xs", "i8",     "i16",   "i32",   "i64",    "f64",    "iq1_m",
      "bf16",    nullptr,  nullptr,  nullptr,  "tq1_0",  "tq2_0",
  };
  return type < std::size(kNames) ? kNames[type] : nullptr;
}

bool IsKnownValueType(uint32_t type) { return type <= uint32_t(GgufValueType::kF64); }

bool IsIntegerValueType(GgufValueType type) {
  switch (type) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kU16:
    case GgufValueType::kI16:
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kU64:
    case GgufValueType::kI64: return true;
    default: return false;
  }
}

bool IsFloatValueType(GgufValueType type) { return type == GgufValueType::kF32 || type == GgufValueType::kF64; }

uint64_t ScalarBytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kBool: return 1;
    case GgufValueType::kU16:
    case GgufValueType::kI16: return 2;
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kF32: return 4;
    case GgufValueType::kU64:
    case GgufValueType::kI64:
    case GgufValueType::kF64: return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray: return 0;
  }
  return 0;
}

const char* ValueTypeName(GgufValueType type) {
  static const char* const kNames[] = {"u8",  "i8",     "u16",   "i16", "u32", "i32", "f32",
                                       "bool", "string", "array", "u64", "i64", "f64"};
  return IsKnownValueType(uint32_t(type)) ? kNames[uint32_t(type)] : "unknown";
}

bool IntFits(GgufValueType type, int64_t v) {
  switch (type) {
    case GgufValueType::kU8: return v >= 0 && v <= 0xff;
    case GgufValueType::kI8: return v >= -128 && v <= 127;
    case GgufValueType::kU16: return v >= 0 && v <= 0xffff;
    case GgufValueType::kI16: return v >= -32768 && v <= 32767;
    case GgufValueType::kU32: return v >= 0 && v <= int64_t(0xffffffffu);
    case GgufValueType::kI32: return v >= INT32_MIN && v <= INT32_MAX;
    case GgufValueType::kBool: return v == 0 || v == 1;
    case GgufValueType::kU64: return v >= 0;  // u64 above INT64_MAX is not representable here
    case GgufValueType::kI64: return true;
    default: return false;
  }
}

}  // namespace internal
}  // namespace qattn::model
