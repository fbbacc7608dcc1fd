// A small, strict reader and writer for NumPy's .npy format, limited to what the CLI exchanges:
// little-endian float32 ('<f4'), C order, format versions 1.0, 2.0 and 3.0.
// Anything else (other dtypes, Fortran order, truncated or malformed files) is rejected with an
// NpyError whose message is one sentence naming the file and the problem. Every length and offset
// read from a file is checked against the file's size before it is used.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace qattn {

class NpyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct NpyArray {
  std::vector<int64_t> shape;  // empty for a 0-d array
  std::vector<float> data;     // [prod(shape)] in C order

  int rank() const { return int(shape.size()); }
  std::string ShapeString() const;  // e.g. "(4, 2, 8)"
};

// Reads a float32 array; `path` is used in messages.
NpyArray ReadNpyF32(const std::string& path);
// Parses the bytes of a whole .npy file; `name` is used in messages.
NpyArray ParseNpyF32(std::string_view bytes, const std::string& name);

// Writes `data` [prod(shape)] as a version 1.0 '<f4' file (2.0 if the header would not fit).
void WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape, const float* data);
// The bytes WriteNpyF32 would write.
std::string SerializeNpyF32(const std::vector<int64_t>& shape, const float* data);

}  // namespace qattn
