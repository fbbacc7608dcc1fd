// GgufFile: owns the file's bytes (a read-only mapping, or a buffer for converted files) and the parsed
// header, and answers typed metadata and tensor lookups with errors that name the file and the key.
#include <sys/mman.h>
#include <unistd.h>

#include <string>
#include <unordered_map>

#include "model/gguf.h"
#include "model/gguf_internal.h"
#include "model/mapped_file.h"

namespace qattn::model {

struct GgufFile::Impl {
  std::string name;
  internal::MappedFile mapped;  // when opened from a path
  std::vector<uint8_t> owned;   // when parsed from memory
  const uint8_t* bytes = nullptr;
  uint64_t size = 0;
  internal::ParsedGguf parsed;
  // Views into parsed's strings (stable: parsed is never modified after indexing).
  std::unordered_map<std::string_view, size_t> key_index, tensor_index;

  void Parse() {
    parsed = internal::ParseGguf(bytes, size, name);
    for (size_t i = 0; i < parsed.metadata.size(); ++i) key_index.emplace(parsed.metadata[i].first, i);
    for (size_t i = 0; i < parsed.tensors.size(); ++i) tensor_index.emplace(parsed.tensors[i].name, i);
  }

  [[noreturn]] void Fail(const std::string& problem) const { throw ModelFileError(name + ": " + problem); }

  const GgufValue& Require(std::string_view key) const {
    auto it = key_index.find(key);
    if (it == key_index.end()) Fail("metadata key '" + std::string(key) + "' is missing");
    return parsed.metadata[it->second].second;
  }

  [[noreturn]] void WrongKind(std::string_view key, const GgufValue& v, const char* expected) const {
    Fail("metadata key '" + std::string(key) + "' is a " + v.TypeName() + ", but " + expected + " was expected");
  }
};

GgufFile GgufFile::Open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->name = path;
  impl->mapped = internal::MappedFile::Open(path);
  impl->bytes = impl->mapped.data();
  impl->size = impl->mapped.size();
  impl->Parse();
  return GgufFile(std::move(impl));
}

GgufFile GgufFile::FromBytes(std::vector<uint8_t> bytes, const std::string& name) {
  auto impl = std::make_unique<Impl>();
  impl->name = name;
  impl->owned = std::move(bytes);
  impl->bytes = impl->owned.data();
  impl->size = impl->owned.size();
  impl->Parse();
  return GgufFile(std::move(impl));
}

GgufFile::GgufFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;
GgufFile::~GgufFile() = default;

const std::string& GgufFile::name() const { return impl_->name; }
uint32_t GgufFile::version() const { return impl_->parsed.version; }
uint64_t GgufFile::alignment() const { return impl_->parsed.alignment; }
uint64_t GgufFile::file_bytes() const { return impl_->size; }

const std::vector<std::pair<std::string, GgufValue>>& GgufFile::metadata() const { return impl_->parsed.metadata; }

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = impl_->key_index.find(key);
  return it == impl_->key_index.end() ? nullptr : &impl_->parsed.metadata[it->second].second;
}

int64_t GgufFile::GetInt(std::string_view key) const {
  const GgufValue& v = impl_->Require(key);
  if (!internal::IsIntegerValueType(v.type)) impl_->WrongKind(key, v, "an integer");
  return std::get<int64_t>(v.value);
}

double GgufFile::GetFloat(std::string_view key) const {
  const GgufValue& v = impl_->Require(key);
  if (internal::IsFloatValueType(v.type)) return std::get<double>(v.value);
  if (internal::IsIntegerValueType(v.type)) return double(std::get<int64_t>(v.value));
  impl_->WrongKind(key, v, "a number");
}

bool GgufFile::GetBool(std::string_view key) const {
  const GgufValue& v = impl_->Require(key);
  if (v.type != GgufValueType::kBool) impl_->WrongKind(key, v, "a bool");
  return std::get<int64_t>(v.value) != 0;
}

const std::string& GgufFile::GetString(std::string_view key) const {
  const GgufValue& v = impl_->Require(key);
  if (v.type != GgufValueType::kString) impl_->WrongKind(key, v, "a string");
  return std::get<std::string>(v.value);
}

const std::vector<std::string>& GgufFile::GetStringArray(std::string_view key) const {
  const GgufValue& v = impl_->Require(key);
  if (v.type != GgufValueType::kArray || v.array_type != GgufValueType::kString) impl_->WrongKind(key, v, "an array of strings");
  return std::get<std::vector<std::string>>(v.value);
}

const std::vector<int64_t>& GgufFile::GetIntArray(std::string_view key) const {
  const GgufValue& v = impl_->Require(key);
  if (v.type != GgufValueType::kArray || !internal::IsIntegerValueType(v.array_type)) impl_->WrongKind(key, v, "an array of integers");
  return std::get<std::vector<int64_t>>(v.value);
}

const std::vector<double>& GgufFile::GetFloatArray(std::string_view key) const {
  const GgufValue& v = impl_->Require(key);
  if (v.type != GgufValueType::kArray || !internal::IsFloatValueType(v.array_type)) impl_->WrongKind(key, v, "an array of floats");
  return std::get<std::vector<double>>(v.value);
}

int64_t GgufFile::GetInt(std::string_view key, int64_t fallback) const { return Has(key) ? GetInt(key) : fallback; }
double GgufFile::GetFloat(std::string_view key, double fallback) const { return Has(key) ? GetFloat(key) : fallback; }
bool GgufFile::GetBool(std::string_view key, bool fallback) const { return Has(key) ? GetBool(key) : fallback; }
std::string GgufFile::GetString(std::string_view key, const std::string& fallback) const {
  return Has(key) ? GetString(key) : fallback;
}

const std::vector<GgufTensorInfo>& GgufFile::tensors() const { return impl_->parsed.tensors; }

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = impl_->tensor_index.find(name);
  return it == impl_->tensor_index.end() ? nullptr : &impl_->parsed.tensors[it->second];
}

namespace {
std::string DimsText(const std::vector<uint64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}
}  // namespace

const GgufTensorInfo& GgufFile::RequireTensor(std::string_view name, const std::vector<uint64_t>& expected_dims) const {
  const GgufTensorInfo* t = FindTensor(name);
  if (!t) impl_->Fail("tensor '" + std::string(name) + "' is missing");
  if (!expected_dims.empty() && t->dims != expected_dims) {
    impl_->Fail("tensor '" + std::string(name) + "' has dims " + DimsText(t->dims) + " but " + DimsText(expected_dims) +
                " were expected");
  }
  return *t;
}

const uint8_t* GgufFile::TensorData(const GgufTensorInfo& info) const {
  return impl_->bytes + impl_->parsed.data_offset + info.offset;  // bounds checked when parsed
}

void GgufFile::ReleaseTensorData(const GgufTensorInfo& info) const {
  if (impl_->mapped.size() == 0) return;  // bytes held in memory (FromBytes): nothing to release
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = uintptr_t(TensorData(info));
  const uintptr_t first = (begin + page - 1) / page * page, last = (begin + info.bytes) / page * page;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);  // a hint
}

}  // namespace qattn::model
