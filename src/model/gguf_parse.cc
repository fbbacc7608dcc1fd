// The GGUF parser: header, metadata, tensor infos and data placement, every field checked against the
// bytes that remain before it is used (so corrupted counts and lengths cannot cause huge allocations).
#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>
#include <unordered_set>

#include "model/byte_reader.h"
#include "model/gguf_internal.h"

namespace qattn::model::internal {
namespace {

constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // empty key, value type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // empty name, n_dims = 0, type, offset
constexpr size_t kMaxQuotedChars = 80;

// 'name' for messages: control bytes escaped, long names cut, so a message stays one readable line.
std::string Quote(std::string_view s) {
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < kMaxQuotedChars; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += char(c);
    }
  }
  if (s.size() > kMaxQuotedChars) out += "...";
  return out + "'";
}

std::string DimsString(const std::vector<uint64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

class Parser {
 public:
  Parser(const uint8_t* data, uint64_t size, const std::string& name) : in_(data, size, name) {}

  ParsedGguf Run() {
    ReadHeader();
    ReadMetadata();
    ReadAlignment();
    ReadTensorInfos();
    PlaceData();
    return std::move(out_);
  }

 private:
  [[noreturn]] void Fail(const std::string& problem) const { in_.Fail(problem); }

  void ReadHeader() {
    const uint8_t* magic = in_.Take(4, "magic");
    if (std::memcmp(magic, "GGUF", 4) != 0) Fail("not a GGUF file (it does not start with \"GGUF\")");
    const uint32_t version = in_.Read<uint32_t>("version");
    if (version == 1) Fail("GGUF version 1 is not supported (only versions 2 and 3)");
    if (version != 2 && version != 3) {
      const uint32_t swapped = __builtin_bswap32(version);
      if (swapped == 2 || swapped == 3) Fail("big-endian GGUF files are not supported");
      Fail("unsupported GGUF version " + std::to_string(version) + " (only versions 2 and 3)");
    }
    out_.version = version;
    n_tensors_ = in_.Read<uint64_t>("tensor count");
    n_kv_ = in_.Read<uint64_t>("metadata count");
    if (n_kv_ > in_.remaining() / kMinKvBytes) {
      Fail("the header claims " + std::to_string(n_kv_) + " metadata entries, more than the remaining " +
           std::to_string(in_.remaining()) + " bytes of the file can hold");
    }
  }

  std::string ReadString(std::string_view what) {
    const uint64_t length = in_.Read<uint64_t>(std::string(what) + " length");
    if (length > in_.remaining()) {
      Fail("a " + std::string(what) + " length of " + std::to_string(length) + " bytes at offset " +
           std::to_string(in_.pos() - 8) + " exceeds the remaining " + std::to_string(in_.remaining()) + " bytes of the file");
    }
    return in_.ReadBytes(length, what);
  }

  void ReadMetadata() {
    out_.metadata.reserve(n_kv_);  // bounded by the file size above
    std::unordered_set<std::string> seen;
    for (uint64_t i = 0; i < n_kv_; ++i) {
      in_.SetContext("metadata entry " + std::to_string(i));
      std::string key = ReadString("key");
      if (!seen.insert(key).second) Fail("duplicate metadata key " + Quote(key));
      in_.SetContext("the value of key " + Quote(key));
      const uint32_t type = in_.Read<uint32_t>("value type");
      if (!IsKnownValueType(type)) Fail("key " + Quote(key) + " has unknown value type " + std::to_string(type));
      GgufValue value = ReadValue(GgufValueType(type), key);
      out_.metadata.emplace_back(std::move(key), std::move(value));
    }
  }

  int64_t ReadInt(GgufValueType type, const std::string& key) {
    switch (type) {
      case GgufValueType::kU8: return in_.Read<uint8_t>("u8");
      case GgufValueType::kI8: return in_.Read<int8_t>("i8");
      case GgufValueType::kU16: return in_.Read<uint16_t>("u16");
      case GgufValueType::kI16: return in_.Read<int16_t>("i16");
      case GgufValueType::kU32: return in_.Read<uint32_t>("u32");
      case GgufValueType::kI32: return in_.Read<int32_t>("i32");
      case GgufValueType::kI64: return in_.Read<int64_t>("i64");
      case GgufValueType::kU64: {
        const uint64_t v = in_.Read<uint64_t>("u64");
        if (v > uint64_t(INT64_MAX)) Fail("key " + Quote(key) + " holds the u64 value " + std::to_string(v) + ", above the supported maximum 2^63-1");
        return int64_t(v);
      }
      case GgufValueType::kBool: {
        const uint8_t v = in_.Read<uint8_t>("bool");
        if (v > 1) Fail("key " + Quote(key) + " holds the bool byte " + std::to_string(v) + " (not 0 or 1)");
        return v;
      }
      default: Fail("key " + Quote(key) + " is not an integer");  // unreachable: callers pass integer types
    }
  }

  double ReadFloat(GgufValueType type) {
    if (type == GgufValueType::kF32) return in_.Read<float>("f32");
    return in_.Read<double>("f64");
  }

  GgufValue ReadValue(GgufValueType type, const std::string& key) {
    if (type == GgufValueType::kArray) return ReadArray(key);
    GgufValue v;
    v.type = type;
    if (type == GgufValueType::kString) v.value = ReadString("string");
    else if (IsFloatValueType(type)) v.value = ReadFloat(type);
    else v.value = ReadInt(type, key);
    return v;
  }

  GgufValue ReadArray(const std::string& key) {
    const uint32_t element_type = in_.Read<uint32_t>("array element type");
    if (!IsKnownValueType(element_type)) Fail("key " + Quote(key) + " has unknown array element type " + std::to_string(element_type));
    const auto type = GgufValueType(element_type);
    if (type == GgufValueType::kArray) Fail("key " + Quote(key) + " is an array of arrays, which is not supported");
    const uint64_t count = in_.Read<uint64_t>("array length");
    const uint64_t min_bytes = type == GgufValueType::kString ? 8 : ScalarBytes(type);
    if (count > in_.remaining() / min_bytes) {
      Fail("key " + Quote(key) + " claims an array of " + std::to_string(count) + " " + ValueTypeName(type) +
           " values, more than the remaining " + std::to_string(in_.remaining()) + " bytes of the file can hold");
    }
    GgufValue v;
    v.type = GgufValueType::kArray;
    v.array_type = type;
    if (type == GgufValueType::kString) v.value = ReadElements<std::string>(count, [&] { return ReadString("string"); });
    else if (IsFloatValueType(type)) v.value = ReadElements<double>(count, [&] { return ReadFloat(type); });
    else v.value = ReadElements<int64_t>(count, [&] { return ReadInt(type, key); });
    return v;
  }

  template <typename T, typename ReadOne>
  std::vector<T> ReadElements(uint64_t count, ReadOne read_one) {
    std::vector<T> values;
    values.reserve(count);  // count * min_bytes <= remaining bytes, checked by the caller
    for (uint64_t i = 0; i < count; ++i) values.push_back(read_one());
    return values;
  }

  void ReadAlignment() {
    for (const auto& [key, value] : out_.metadata) {
      if (key != "general.alignment") continue;
      if (!IsIntegerValueType(value.type)) Fail("general.alignment is a " + value.TypeName() + ", not an integer");
      const int64_t a = std::get<int64_t>(value.value);
      if (a <= 0 || (a & (a - 1)) != 0) Fail("general.alignment is " + std::to_string(a) + ", not a power of two");
      out_.alignment = uint64_t(a);
    }
  }

  void ReadTensorInfos() {
    if (n_tensors_ > in_.remaining() / kMinTensorInfoBytes) {
      Fail("the header claims " + std::to_string(n_tensors_) + " tensors, more than the remaining " +
           std::to_string(in_.remaining()) + " bytes of the file can hold");
    }
    out_.tensors.reserve(n_tensors_);
    std::unordered_set<std::string> seen;
    for (uint64_t i = 0; i < n_tensors_; ++i) {
      in_.SetContext("tensor info " + std::to_string(i));
      GgufTensorInfo info;
      info.name = ReadString("tensor name");
      if (!seen.insert(info.name).second) Fail("duplicate tensor name " + Quote(info.name));
      in_.SetContext("the info of tensor " + Quote(info.name));
      ReadShape(info);
      ReadTypeAndOffset(info);
      out_.tensors.push_back(std::move(info));
    }
  }

  void ReadShape(GgufTensorInfo& info) {
    const uint32_t n_dims = in_.Read<uint32_t>("dimension count");
    if (n_dims > kMaxTensorDims) {
      Fail("tensor " + Quote(info.name) + " has " + std::to_string(n_dims) + " dimensions (at most " +
           std::to_string(kMaxTensorDims) + " are supported)");
    }
    info.dims.resize(n_dims);
    for (uint64_t& d : info.dims) d = in_.Read<uint64_t>("dimension");
    uint64_t elements = 1;
    for (uint64_t d : info.dims) {
      if (d > uint64_t(INT64_MAX) || __builtin_mul_overflow(elements, d, &elements) || elements > uint64_t(INT64_MAX)) {
        Fail("tensor " + Quote(info.name) + " has dims " + DimsString(info.dims) + " whose element count overflows");
      }
    }
    info.elements = elements;
  }

  void ReadTypeAndOffset(GgufTensorInfo& info) {
    const uint32_t type = in_.Read<uint32_t>("ggml type");
    if (!IsSupportedGgmlType(type)) {
      const char* known = AnyGgmlTypeName(type);
      Fail("tensor " + Quote(info.name) + " has " + (known ? "ggml type " + std::to_string(type) + " (" + known + "), which is not supported"
                                                          : "unknown ggml type " + std::to_string(type)));
    }
    info.type = GgmlType(type);
    const uint64_t block = uint64_t(GgmlBlockSize(info.type));
    const uint64_t row = info.dims.empty() ? 1 : info.dims[0];
    if (row % block != 0) {
      Fail("tensor " + Quote(info.name) + " of type " + GgmlTypeName(info.type) + " has a first dimension of " +
           std::to_string(row) + ", not a multiple of its block size " + std::to_string(block));
    }
    try {
      info.bytes = GgmlRowBytes(info.type, info.elements);
    } catch (const ModelFileError& e) {
      Fail("tensor " + Quote(info.name) + ": " + e.what());
    }
    info.offset = in_.Read<uint64_t>("data offset");
    if (info.offset % out_.alignment != 0) {
      Fail("tensor " + Quote(info.name) + " has data offset " + std::to_string(info.offset) + ", not a multiple of the alignment " +
           std::to_string(out_.alignment));
    }
  }

  // The data section starts at the first aligned offset after the tensor infos; every tensor must lie
  // inside the file and no two may overlap.
  void PlaceData() {
    const uint64_t a = out_.alignment;
    const uint64_t pos = in_.pos();
    if (__builtin_add_overflow(pos, (a - pos % a) % a, &out_.data_offset)) Fail("the data section offset overflows");
    for (const GgufTensorInfo& t : out_.tensors) {
      uint64_t start = 0, end = 0;
      if (__builtin_add_overflow(out_.data_offset, t.offset, &start) || __builtin_add_overflow(start, t.bytes, &end) ||
          end > in_.size()) {
        const std::string at = start >= out_.data_offset ? std::to_string(start)
                                                         : std::to_string(out_.data_offset) + " + " + std::to_string(t.offset);
        Fail("tensor " + Quote(t.name) + " data [offset " + at + ", " + std::to_string(t.bytes) +
             " bytes] extends past the end of the file (" + std::to_string(in_.size()) + " bytes)");
      }
    }
    CheckNoOverlap();
  }

  void CheckNoOverlap() const {
    std::vector<size_t> order(out_.tensors.size());
    std::iota(order.begin(), order.end(), size_t{0});
    const auto& ts = out_.tensors;
    std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return ts[x].offset < ts[y].offset; });
    const GgufTensorInfo* prev = nullptr;  // the last non-empty tensor so far
    for (size_t i : order) {
      if (ts[i].bytes == 0) continue;
      if (prev && prev->offset + prev->bytes > ts[i].offset) Fail("the data of tensors " + Quote(prev->name) + " and " + Quote(ts[i].name) + " overlap");
      prev = &ts[i];
    }
  }

  ByteReader in_;
  ParsedGguf out_;
  uint64_t n_tensors_ = 0;
  uint64_t n_kv_ = 0;
};

}  // namespace

ParsedGguf ParseGguf(const uint8_t* data, uint64_t size, const std::string& name) { return Parser(data, size, name).Run(); }

}  // namespace qattn::model::internal
