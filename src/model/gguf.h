// GGUF (v2/v3), the llama.cpp model format: a memory-mapped, bounds-checked reader and a writer.
//
// File layout (little-endian):
//   "GGUF" u32 version, u64 n_tensors, u64 n_kv,
//   n_kv x { string key, u32 value_type, value }          string = u64 length + bytes (no NUL)
//   n_tensors x { string name, u32 n_dims, u64 dims[n_dims] (fastest first), u32 ggml_type, u64 offset }
//   padding to `general.alignment` (default 32), then the data section; each tensor's offset is
//   relative to the data section and aligned.
// A matrix stored as dims [in, out] is row-major [out][in] in memory: row r holds output r's weights.
//
// Every count, length and offset read from a file is checked against the file's size before use, so a
// truncated or corrupted file raises ModelFileError naming the file and what is wrong; never a crash.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace qattn::model {

// A malformed, truncated or unsupported model file, or a missing/wrong key or tensor. One sentence.
class ModelFileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class GgufValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// ggml tensor types this project reads and writes (the numbering is ggml's).
enum class GgmlType : uint32_t { kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ8_0 = 8, kBF16 = 30 };
const char* GgmlTypeName(GgmlType type);
// Elements per block and bytes per block (f32: 1 and 4; q8_0: 32 and 34; q4_0: 32 and 18).
int GgmlBlockSize(GgmlType type);
int GgmlBlockBytes(GgmlType type);
// Bytes of `elements` values; throws ModelFileError if elements is not a multiple of the block size.
uint64_t GgmlRowBytes(GgmlType type, uint64_t elements);

// One metadata value. Arrays hold scalars or strings of one element type (no nested arrays needed).
struct GgufValue {
  GgufValueType type = GgufValueType::kU32;
  GgufValueType array_type = GgufValueType::kU32;  // element type when type == kArray
  // Scalars widen into these: integers and bool -> int64 (u64 > INT64_MAX is rejected), floats -> double.
  std::variant<int64_t, double, std::string, std::vector<int64_t>, std::vector<double>, std::vector<std::string>> value;

  std::string TypeName() const;  // "u32", "string", "array of f32", ...
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // fastest first, as in the file
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;         // from the start of the data section
  uint64_t elements = 0;       // product of dims
  uint64_t bytes = 0;          // GgmlRowBytes(type, elements)
};

class GgufFile {
 public:
  // Maps `path` read-only and parses it. Throws ModelFileError.
  static GgufFile Open(const std::string& path);
  // Parses bytes held in memory (e.g. a converted llama2.c checkpoint); `name` is used in messages.
  static GgufFile FromBytes(std::vector<uint8_t> bytes, const std::string& name);

  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;
  ~GgufFile();

  const std::string& name() const;  // path or given name, for messages
  uint32_t version() const;
  uint64_t alignment() const;
  uint64_t file_bytes() const;

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const;
  const GgufValue* Find(std::string_view key) const;
  bool Has(std::string_view key) const { return Find(key) != nullptr; }
  // Typed access; a missing key or a value of another kind raises ModelFileError naming the key.
  // Integer getters accept any integer type; float getters accept f32/f64 and integers.
  int64_t GetInt(std::string_view key) const;
  double GetFloat(std::string_view key) const;
  bool GetBool(std::string_view key) const;
  const std::string& GetString(std::string_view key) const;
  const std::vector<std::string>& GetStringArray(std::string_view key) const;
  const std::vector<int64_t>& GetIntArray(std::string_view key) const;
  const std::vector<double>& GetFloatArray(std::string_view key) const;
  // The same, with a default when the key is absent (a present key of the wrong kind still throws).
  int64_t GetInt(std::string_view key, int64_t fallback) const;
  double GetFloat(std::string_view key, double fallback) const;
  bool GetBool(std::string_view key, bool fallback) const;
  std::string GetString(std::string_view key, const std::string& fallback) const;

  const std::vector<GgufTensorInfo>& tensors() const;
  const GgufTensorInfo* FindTensor(std::string_view name) const;
  // The tensor, required: throws ModelFileError naming it if absent, or if its dims differ from
  // `expected_dims` (fastest first) when those are given.
  const GgufTensorInfo& RequireTensor(std::string_view name, const std::vector<uint64_t>& expected_dims = {}) const;
  // Raw bytes of a tensor [info.bytes], inside the mapping (valid while this object lives).
  const uint8_t* TensorData(const GgufTensorInfo& info) const;
  // Says a tensor's bytes will not be read again: the mapped pages wholly inside it leave memory
  // (reading it again re-reads the file). Lets a loader that copies weights keep one copy resident.
  void ReleaseTensorData(const GgufTensorInfo& info) const;

 private:
  struct Impl;
  explicit GgufFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Widens `count` consecutive elements of a tensor's data (starting at element 0 of `data`) to f32.
// Supports every GgmlType above; `count` must be a multiple of the block size.
void DequantizeToF32(GgmlType type, const uint8_t* data, uint64_t count, float* out);
// Quantizes/narrows f32 values into `type` (q8_0 and q4_0 as ggml defines them: per 32 values an f16
// scale d = max|x| / 127 (q8_0) or d = x_at_max|x| / -8 (q4_0)). Returns GgmlRowBytes(type, count) bytes.
std::vector<uint8_t> QuantizeFromF32(GgmlType type, const float* values, uint64_t count);

// Builds a GGUF file: metadata and tensors in the order added, v3, alignment 32 (or general.alignment).
class GgufWriter {
 public:
  void SetInt(const std::string& key, GgufValueType type, int64_t value);   // u8..i64, bool
  void SetU32(const std::string& key, uint32_t value) { SetInt(key, GgufValueType::kU32, value); }
  void SetBool(const std::string& key, bool value) { SetInt(key, GgufValueType::kBool, value); }
  void SetF32(const std::string& key, float value);
  void SetString(const std::string& key, const std::string& value);
  void SetStringArray(const std::string& key, const std::vector<std::string>& values);
  void SetF32Array(const std::string& key, const std::vector<float>& values);
  void SetI32Array(const std::string& key, const std::vector<int32_t>& values);
  // Any value, as the reader returns it (any scalar type, arrays of any scalar or string type); checks
  // that the variant matches the type and integers fit it. Throws ModelFileError.
  void SetValue(const std::string& key, GgufValue value);
  // dims fastest first; `data` holds GgmlRowBytes(type, prod(dims)) bytes.
  void AddTensor(const std::string& name, GgmlType type, const std::vector<uint64_t>& dims, std::vector<uint8_t> data);
  void AddTensorF32(const std::string& name, const std::vector<uint64_t>& dims, const float* values, GgmlType store_as = GgmlType::kF32);

  std::vector<uint8_t> Serialize() const;
  // Writes to a temporary file next to `path`, then renames it over `path`: a failure never leaves a
  // half-written file under the final name. Throws ModelFileError.
  void WriteFile(const std::string& path) const;

 private:
  struct Entry {
    std::string key;
    GgufValue value;
  };
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<uint64_t> dims;
    std::vector<uint8_t> data;
  };
  std::vector<Entry> metadata_;
  std::vector<Tensor> tensors_;
};

}  // namespace qattn::model
