// Helpers shared by the model-file tests: files on disk, a scratch directory, and error checks.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "model/gguf.h"

namespace qattn::model::testing {

std::string ModelsDir();  // the repository's models/ directory
std::vector<uint8_t> ReadBytes(const std::string& path);
void WriteBytes(const std::string& path, const std::vector<uint8_t>& bytes);

// A fresh directory under $TMPDIR, removed with its contents at the end of the test.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  std::vector<std::string> List() const;  // names in the directory, sorted

 private:
  std::string path_;
};

// Runs `fn`; passes if it throws ModelFileError whose message holds every string of `parts` and is one
// line; fails on success or any other exception. Returns the message.
std::string ExpectModelFileError(const std::function<void()>& fn, const std::vector<std::string>& parts);

// Runs `fn`; true if it succeeded, false if it threw ModelFileError; fails the test on any other
// exception (bad_alloc, length_error, ...), which would mean a check is missing.
bool SucceedsOrModelFileError(const std::function<void()>& fn, std::string* message = nullptr);

// Little-endian field patching of a byte buffer.
template <typename T>
void Poke(std::vector<uint8_t>& bytes, size_t offset, T value) {
  ASSERT_LE(offset + sizeof(T), bytes.size());
  std::memcpy(bytes.data() + offset, &value, sizeof(T));
}
template <typename T>
T Peek(const std::vector<uint8_t>& bytes, size_t offset) {
  T value{};
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}
template <typename T>
void Append(std::vector<uint8_t>& bytes, T value) {
  const size_t at = bytes.size();
  bytes.resize(at + sizeof(T));
  std::memcpy(bytes.data() + at, &value, sizeof(T));
}
// Offset of the first occurrence of `text` in `bytes` (fails the test if absent).
size_t Find(const std::vector<uint8_t>& bytes, const std::string& text);

}  // namespace qattn::model::testing
