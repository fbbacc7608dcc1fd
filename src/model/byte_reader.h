// Internal: a bounds-checked little-endian reader over bytes in memory, shared by the GGUF parser and
// the llama2.c reader. Every read checks the remaining length first, so a truncated or corrupted file
// raises ModelFileError (naming the file and what was being read), never a read past the end.
#pragma once
#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>

#include "model/gguf.h"

namespace qattn::model::internal {

static_assert(std::endian::native == std::endian::little, "model files are little-endian; this reader copies bytes as-is");

class ByteReader {
 public:
  ByteReader(const uint8_t* data, uint64_t size, const std::string& name) : data_(data), size_(size), name_(name) {}

  uint64_t pos() const { return pos_; }
  uint64_t size() const { return size_; }
  uint64_t remaining() const { return size_ - pos_; }
  const std::string& name() const { return name_; }
  // What is being read ("the value of key 'general.name'"), for truncation messages.
  void SetContext(std::string context) { context_ = std::move(context); }

  [[noreturn]] void Fail(const std::string& problem) const { throw ModelFileError(name_ + ": " + problem); }

  // Throws unless `n` more bytes exist; `what` names the field ("string length").
  void Need(uint64_t n, std::string_view what) const {
    if (n <= remaining()) return;
    Fail("the file is truncated: " + context_ + " (" + std::string(what) + ", " + std::to_string(n) + " bytes at offset " +
         std::to_string(pos_) + ") extends past the end of the file (" + std::to_string(size_) + " bytes)");
  }

  template <typename T>
  T Read(std::string_view what) {
    static_assert(std::is_trivially_copyable_v<T>);
    Need(sizeof(T), what);
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  void Seek(uint64_t pos) {
    if (pos > size_) Fail("offset " + std::to_string(pos) + " is past the end of the file (" + std::to_string(size_) + " bytes)");
    pos_ = pos;
  }

  // `n` raw bytes, checked; returns a pointer into the buffer.
  const uint8_t* Take(uint64_t n, std::string_view what) {
    Need(n, what);
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }

  std::string ReadBytes(uint64_t n, std::string_view what) {
    const uint8_t* p = Take(n, what);
    return std::string(reinterpret_cast<const char*>(p), n);
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& name_;
  std::string context_ = "the header";
};

}  // namespace qattn::model::internal
