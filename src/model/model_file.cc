// Opening a model file of either format: GGUF as is, anything else as a llama2.c checkpoint.
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "model/llama2c.h"
#include "model/llama2c_internal.h"
#include "model/mapped_file.h"

namespace qattn::model {
namespace {

bool IsFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// tok512.bin, else tokenizer.bin, next to the checkpoint.
std::string FindTokenizer(const std::string& checkpoint_path) {
  std::filesystem::path dir = std::filesystem::path(checkpoint_path).parent_path();
  if (dir.empty()) dir = ".";
  const std::string first = (dir / "tok512.bin").string(), second = (dir / "tokenizer.bin").string();
  if (IsFile(first)) return first;
  if (IsFile(second)) return second;
  internal::CheckLlama2cCheckpoint(checkpoint_path);  // a file that is no checkpoint at all gets that error instead
  throw ModelFileError("'" + checkpoint_path + "' is a llama2.c checkpoint, which needs a tokenizer, but neither '" + first +
                       "' nor '" + second + "' exists; give the tokenizer's path");
}

}  // namespace

bool LooksLikeGguf(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

GgufFile OpenModelFile(const std::string& path, const std::string& tokenizer_path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw ModelFileError(internal::CannotOpenMessage(path, errno));
  if (S_ISDIR(st.st_mode)) throw ModelFileError(internal::CannotOpenMessage(path, EISDIR));
  if (LooksLikeGguf(path)) return GgufFile::Open(path);
  return ConvertLlama2c(path, tokenizer_path.empty() ? FindTokenizer(path) : tokenizer_path);
}

}  // namespace qattn::model
