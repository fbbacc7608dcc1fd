// Internal to the model-file library: type tables and the GGUF parser behind GgufFile.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/gguf.h"

namespace qattn::model::internal {

constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxTensorDims = 4;  // GGML_MAX_DIMS

// True for the ggml type numbers GgmlType names (the ones this project reads and writes).
bool IsSupportedGgmlType(uint32_t type);
// ggml's name for any type number it has defined ("q4_K"), or nullptr if unknown.
const char* AnyGgmlTypeName(uint32_t type);

bool IsKnownValueType(uint32_t type);
bool IsIntegerValueType(GgufValueType type);  // u8..i64 (not bool)
bool IsFloatValueType(GgufValueType type);    // f32, f64
// Bytes of one scalar in a file (bool 1, u64 8, ...); 0 for string and array.
uint64_t ScalarBytes(GgufValueType type);
const char* ValueTypeName(GgufValueType type);  // "u32", "string", "array"
// Whether `value` fits the integer (or bool) type; for writing and for u64 checks.
bool IntFits(GgufValueType type, int64_t value);

// The result of parsing a GGUF file's header, metadata and tensor infos (tensor data stays in place).
struct ParsedGguf {
  uint32_t version = 0;
  uint64_t alignment = kDefaultAlignment;
  uint64_t data_offset = 0;  // start of the data section in the file
  std::vector<std::pair<std::string, GgufValue>> metadata;
  std::vector<GgufTensorInfo> tensors;
};

// Parses and validates everything but the tensor values; `name` prefixes every error.
ParsedGguf ParseGguf(const uint8_t* data, uint64_t size, const std::string& name);

}  // namespace qattn::model::internal
