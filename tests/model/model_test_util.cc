#include "model_test_util.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <unistd.h>

namespace qattn::model::testing {

std::string ModelsDir() { return QATTN_MODELS_DIR; }

std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot read " << path;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteBytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

// $TMPDIR, else /dev/shm (the truncation tests write thousands of small files; on a disk each costs
// milliseconds), else /tmp.
std::string ScratchRoot() {
  const char* tmp = std::getenv("TMPDIR");
  if (tmp && *tmp) return tmp;
  if (::access("/dev/shm", W_OK | X_OK) == 0) return "/dev/shm";
  return "/tmp";
}

ScratchDir::ScratchDir() {
  std::string pattern = ScratchRoot() + "/qattn_model_test_XXXXXX";
  if (!::mkdtemp(pattern.data())) ADD_FAILURE() << "mkdtemp failed";
  path_ = pattern;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::vector<std::string> ScratchDir::List() const {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(path_)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string ExpectModelFileError(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const ModelFileError& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "': " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
    return msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected ModelFileError, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected ModelFileError, but the call succeeded";
  return "";
}

bool SucceedsOrModelFileError(const std::function<void()>& fn, std::string* message) {
  try {
    fn();
    return true;
  } catch (const ModelFileError& e) {
    if (message) *message = e.what();
    return false;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected success or ModelFileError, got: " << e.what();
    return false;
  }
}

size_t Find(const std::vector<uint8_t>& bytes, const std::string& text) {
  auto it = std::search(bytes.begin(), bytes.end(), text.begin(), text.end());
  EXPECT_NE(it, bytes.end()) << "'" << text << "' not found";
  return size_t(it - bytes.begin());
}

}  // namespace qattn::model::testing
