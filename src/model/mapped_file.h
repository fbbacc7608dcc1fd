// Internal: a whole file mapped read-only (MAP_PRIVATE), or an empty view for an empty file.
#pragma once
#include <cstdint>
#include <string>

namespace qattn::model::internal {

class MappedFile {
 public:
  // Throws ModelFileError "cannot open 'PATH': REASON" (missing, a directory, unreadable).
  static MappedFile Open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return static_cast<const uint8_t*>(addr_); }
  uint64_t size() const { return size_; }

 private:
  void* addr_ = nullptr;  // nullptr when size_ == 0
  uint64_t size_ = 0;
};

// "cannot open 'PATH': REASON" for errno value `err`.
std::string CannotOpenMessage(const std::string& path, int err);

}  // namespace qattn::model::internal
