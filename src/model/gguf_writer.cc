// GgufWriter: serializes metadata, tensor infos and aligned tensor data as GGUF v3, and writes files
// atomically (temporary file in the same directory, then rename).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "model/gguf.h"
#include "model/gguf_internal.h"

namespace qattn::model {
namespace {

[[noreturn]] void WriterFail(const std::string& problem) { throw ModelFileError("GGUF writer: " + problem); }

// Appends little-endian fields to a byte vector.
class ByteSink {
 public:
  template <typename T>
  void Put(T value) {
    const size_t at = bytes_.size();
    bytes_.resize(at + sizeof(T));
    std::memcpy(bytes_.data() + at, &value, sizeof(T));
  }
  void PutBytes(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    bytes_.insert(bytes_.end(), p, p + n);
  }
  void PutString(const std::string& s) {
    Put<uint64_t>(s.size());
    PutBytes(s.data(), s.size());
  }
  void PadTo(uint64_t alignment) { bytes_.resize(bytes_.size() + (alignment - bytes_.size() % alignment) % alignment, 0); }
  std::vector<uint8_t> Take() { return std::move(bytes_); }

 private:
  std::vector<uint8_t> bytes_;
};

void PutInt(ByteSink& out, GgufValueType type, int64_t v) {
  switch (type) {
    case GgufValueType::kU8:
    case GgufValueType::kBool: out.Put<uint8_t>(uint8_t(v)); break;
    case GgufValueType::kI8: out.Put<int8_t>(int8_t(v)); break;
    case GgufValueType::kU16: out.Put<uint16_t>(uint16_t(v)); break;
    case GgufValueType::kI16: out.Put<int16_t>(int16_t(v)); break;
    case GgufValueType::kU32: out.Put<uint32_t>(uint32_t(v)); break;
    case GgufValueType::kI32: out.Put<int32_t>(int32_t(v)); break;
    case GgufValueType::kU64: out.Put<uint64_t>(uint64_t(v)); break;
    case GgufValueType::kI64: out.Put<int64_t>(v); break;
    default: break;
  }
}

void PutFloat(ByteSink& out, GgufValueType type, double v) {
  if (type == GgufValueType::kF32) out.Put<float>(float(v));
  else out.Put<double>(v);
}

void PutValue(ByteSink& out, const GgufValue& v) {
  out.Put<uint32_t>(uint32_t(v.type));
  if (v.type == GgufValueType::kString) {
    out.PutString(std::get<std::string>(v.value));
  } else if (internal::IsFloatValueType(v.type)) {
    PutFloat(out, v.type, std::get<double>(v.value));
  } else if (v.type != GgufValueType::kArray) {
    PutInt(out, v.type, std::get<int64_t>(v.value));
  } else if (v.array_type == GgufValueType::kString) {
    const auto& xs = std::get<std::vector<std::string>>(v.value);
    out.Put<uint32_t>(uint32_t(v.array_type));
    out.Put<uint64_t>(xs.size());
    for (const std::string& x : xs) out.PutString(x);
  } else if (internal::IsFloatValueType(v.array_type)) {
    const auto& xs = std::get<std::vector<double>>(v.value);
    out.Put<uint32_t>(uint32_t(v.array_type));
    out.Put<uint64_t>(xs.size());
    for (double x : xs) PutFloat(out, v.array_type, x);
  } else {
    const auto& xs = std::get<std::vector<int64_t>>(v.value);
    out.Put<uint32_t>(uint32_t(v.array_type));
    out.Put<uint64_t>(xs.size());
    for (int64_t x : xs) PutInt(out, v.array_type, x);
  }
}

// Throws unless the variant holds what `type` needs and every integer fits it.
void CheckValue(const std::string& key, const GgufValue& v) {
  const auto bad = [&](const std::string& why) { WriterFail("value of key '" + key + "' " + why); };
  const bool is_array = v.type == GgufValueType::kArray;
  const GgufValueType t = is_array ? v.array_type : v.type;
  if (!internal::IsKnownValueType(uint32_t(v.type)) || !internal::IsKnownValueType(uint32_t(t)) || t == GgufValueType::kArray) {
    bad("has an unsupported type");
  }
  if (t == GgufValueType::kString) {
    if (is_array ? !std::holds_alternative<std::vector<std::string>>(v.value) : !std::holds_alternative<std::string>(v.value)) bad("does not hold a string");
  } else if (internal::IsFloatValueType(t)) {
    if (is_array ? !std::holds_alternative<std::vector<double>>(v.value) : !std::holds_alternative<double>(v.value)) bad("does not hold a float");
  } else if (is_array) {
    if (!std::holds_alternative<std::vector<int64_t>>(v.value)) bad("does not hold integers");
    for (int64_t x : std::get<std::vector<int64_t>>(v.value)) {
      if (!internal::IntFits(t, x)) bad("holds " + std::to_string(x) + ", which does not fit " + internal::ValueTypeName(t));
    }
  } else {
    if (!std::holds_alternative<int64_t>(v.value)) bad("does not hold an integer");
    const int64_t x = std::get<int64_t>(v.value);
    if (!internal::IntFits(t, x)) bad("holds " + std::to_string(x) + ", which does not fit " + internal::ValueTypeName(t));
  }
}

uint64_t ProductOf(const std::vector<uint64_t>& dims) {
  uint64_t n = 1;
  for (uint64_t d : dims) {
    if (__builtin_mul_overflow(n, d, &n)) WriterFail("tensor dims overflow");
  }
  return n;
}

// write() until done; false with errno set on failure.
bool WriteAll(int fd, const uint8_t* data, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      if (w == 0) errno = EIO;
      return false;
    }
    data += w;
    n -= size_t(w);
  }
  return true;
}

void WriteFileAtomically(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::string tmp = path + ".tmp-XXXXXX";  // same directory, so rename() is atomic
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) throw ModelFileError("cannot write '" + path + "': " + std::strerror(errno));
  bool ok = ::fchmod(fd, 0644) == 0 && WriteAll(fd, bytes.data(), bytes.size()) && ::fsync(fd) == 0;
  int err = ok ? 0 : errno;
  if (::close(fd) != 0 && ok) ok = false, err = errno;
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) ok = false, err = errno;
  if (ok) return;
  ::unlink(tmp.c_str());  // never leave the partial file behind
  throw ModelFileError("cannot write '" + path + "': " + std::strerror(err));
}

}  // namespace

void GgufWriter::SetValue(const std::string& key, GgufValue value) {
  CheckValue(key, value);
  for (Entry& e : metadata_) {
    if (e.key == key) {
      e.value = std::move(value);
      return;
    }
  }
  metadata_.push_back({key, std::move(value)});
}

void GgufWriter::SetInt(const std::string& key, GgufValueType type, int64_t value) {
  if (!internal::IsIntegerValueType(type) && type != GgufValueType::kBool) WriterFail("SetInt of key '" + key + "' with a non-integer type");
  GgufValue v;
  v.type = type;
  v.value = value;
  SetValue(key, std::move(v));
}

void GgufWriter::SetF32(const std::string& key, float value) {
  GgufValue v;
  v.type = GgufValueType::kF32;
  v.value = double(value);
  SetValue(key, std::move(v));
}

void GgufWriter::SetString(const std::string& key, const std::string& value) {
  GgufValue v;
  v.type = GgufValueType::kString;
  v.value = value;
  SetValue(key, std::move(v));
}

void GgufWriter::SetStringArray(const std::string& key, const std::vector<std::string>& values) {
  GgufValue v;
  v.type = GgufValueType::kArray;
  v.array_type = GgufValueType::kString;
  v.value = values;
  SetValue(key, std::move(v));
}

void GgufWriter::SetF32Array(const std::string& key, const std::vector<float>& values) {
  GgufValue v;
  v.type = GgufValueType::kArray;
  v.array_type = GgufValueType::kF32;
  v.value = std::vector<double>(values.begin(), values.end());
  SetValue(key, std::move(v));
}

void GgufWriter::SetI32Array(const std::string& key, const std::vector<int32_t>& values) {
  GgufValue v;
  v.type = GgufValueType::kArray;
  v.array_type = GgufValueType::kI32;
  v.value = std::vector<int64_t>(values.begin(), values.end());
  SetValue(key, std::move(v));
}

void GgufWriter::AddTensor(const std::string& name, GgmlType type, const std::vector<uint64_t>& dims, std::vector<uint8_t> data) {
  if (!internal::IsSupportedGgmlType(uint32_t(type))) WriterFail("tensor '" + name + "' has unsupported ggml type " + std::to_string(uint32_t(type)));
  if (dims.size() > internal::kMaxTensorDims) WriterFail("tensor '" + name + "' has more than 4 dimensions");
  for (const Tensor& t : tensors_) {
    if (t.name == name) WriterFail("duplicate tensor name '" + name + "'");
  }
  const uint64_t row = dims.empty() ? 1 : dims[0];
  if (row % uint64_t(GgmlBlockSize(type)) != 0) WriterFail("tensor '" + name + "': first dimension is not a multiple of the block size");
  const uint64_t bytes = GgmlRowBytes(type, ProductOf(dims));
  if (data.size() != bytes) {
    WriterFail("tensor '" + name + "' has " + std::to_string(data.size()) + " bytes of data but its type and dims need " + std::to_string(bytes));
  }
  tensors_.push_back({name, type, dims, std::move(data)});
}

void GgufWriter::AddTensorF32(const std::string& name, const std::vector<uint64_t>& dims, const float* values, GgmlType store_as) {
  AddTensor(name, store_as, dims, QuantizeFromF32(store_as, values, ProductOf(dims)));
}

std::vector<uint8_t> GgufWriter::Serialize() const {
  uint64_t alignment = internal::kDefaultAlignment;
  for (const Entry& e : metadata_) {
    if (e.key != "general.alignment") continue;
    const int64_t a = std::holds_alternative<int64_t>(e.value.value) ? std::get<int64_t>(e.value.value) : 0;
    if (e.value.type == GgufValueType::kBool || a <= 0 || (a & (a - 1)) != 0) WriterFail("general.alignment must be a power of two");
    alignment = uint64_t(a);
  }
  ByteSink out;
  out.PutBytes("GGUF", 4);
  out.Put<uint32_t>(3);
  out.Put<uint64_t>(tensors_.size());
  out.Put<uint64_t>(metadata_.size());
  for (const Entry& e : metadata_) {
    out.PutString(e.key);
    PutValue(out, e.value);
  }
  uint64_t offset = 0;  // running, aligned offset in the data section
  for (const Tensor& t : tensors_) {
    out.PutString(t.name);
    out.Put<uint32_t>(uint32_t(t.dims.size()));
    for (uint64_t d : t.dims) out.Put<uint64_t>(d);
    out.Put<uint32_t>(uint32_t(t.type));
    out.Put<uint64_t>(offset);
    offset += t.data.size();
    offset += (alignment - offset % alignment) % alignment;
  }
  out.PadTo(alignment);
  for (const Tensor& t : tensors_) {
    out.PutBytes(t.data.data(), t.data.size());
    out.PadTo(alignment);
  }
  return out.Take();
}

void GgufWriter::WriteFile(const std::string& path) const { WriteFileAtomically(path, Serialize()); }

}  // namespace qattn::model
