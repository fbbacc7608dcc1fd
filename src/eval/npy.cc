#include "eval/npy.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <optional>

namespace qattn {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;
constexpr size_t kPreambleV1 = 10;  // magic, 2 version bytes, uint16 header length
constexpr size_t kPreambleV2 = 12;  // magic, 2 version bytes, uint32 header length
// Far above any attention input; keeps products of dimensions away from int64 overflow.
constexpr int64_t kMaxElements = int64_t(1) << 40;

[[noreturn]] void Fail(const std::string& name, const std::string& problem) {
  throw NpyError("'" + name + "' " + problem);
}

uint32_t ReadLe(std::string_view bytes, size_t offset, size_t width) {
  uint32_t v = 0;
  for (size_t i = 0; i < width; ++i) v |= uint32_t(uint8_t(bytes[offset + i])) << (8 * i);
  return v;
}

// The parsed dictionary of a .npy header.
struct Header {
  std::optional<std::string> descr;
  std::optional<bool> fortran_order;
  std::optional<std::vector<int64_t>> shape;
};

// Parses the Python dict literal NumPy writes, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// It accepts exactly the three keys NumPy writes, in any order, with either quote style.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& name) : text_(text), name_(name) {}

  Header Parse() {
    Header h;
    Expect('{');
    for (;;) {
      SkipSpace();
      if (Peek() == '}') break;
      const std::string key = ParseString("a quoted key");
      Expect(':');
      SkipSpace();
      if (key == "descr") h.descr = ParseDescr();
      else if (key == "fortran_order") h.fortran_order = ParseBool();
      else if (key == "shape") h.shape = ParseShape();
      else Malformed("it has an unexpected key '" + key + "'");
      SkipSpace();
      if (Peek() == ',') { ++pos_; continue; }
      if (Peek() != '}') Fail("',' or '}' after the value of '" + key + "'");
    }
    ++pos_;  // '}'
    for (; pos_ < text_.size(); ++pos_) {
      if (!IsSpace(text_[pos_])) Fail("only padding after the closing '}'");
    }
    if (!h.descr || !h.fortran_order || !h.shape) {
      Malformed("the header lacks one of 'descr', 'fortran_order' and 'shape'");
    }
    return h;
  }

 private:
  static bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
  char Peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void SkipSpace() {
    while (pos_ < text_.size() && IsSpace(text_[pos_])) ++pos_;
  }
  [[noreturn]] void Malformed(const std::string& what) const { qattn::Fail(name_, "has a malformed .npy header: " + what + "."); }
  [[noreturn]] void Fail(const std::string& expected) const {
    Malformed("expected " + expected + " at character " + std::to_string(pos_));
  }
  void Expect(char c) {
    SkipSpace();
    if (Peek() != c) Fail(std::string("'") + c + "'");
    ++pos_;
  }

  std::string ParseString(const char* what) {
    SkipSpace();
    const char quote = Peek();
    if (quote != '\'' && quote != '"') Fail(what);
    const size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) Fail("a closing quote");
    std::string s(text_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return s;
  }

  std::string ParseDescr() {
    // Structured dtypes are written as a list of fields; name them rather than "expected a string".
    if (Peek() == '[') qattn::Fail(name_, "has a structured dtype; qattn reads plain float32 arrays only.");
    return ParseString("a dtype string for 'descr'");
  }

  bool ParseBool() {
    if (text_.substr(pos_, 4) == "True") { pos_ += 4; return true; }
    if (text_.substr(pos_, 5) == "False") { pos_ += 5; return false; }
    Fail("True or False for 'fortran_order'");
  }

  std::vector<int64_t> ParseShape() {
    Expect('(');
    std::vector<int64_t> shape;
    for (;;) {
      SkipSpace();
      if (Peek() == ')') break;
      shape.push_back(ParseDim());
      SkipSpace();
      if (Peek() == ',') { ++pos_; continue; }
      if (Peek() != ')') Fail("',' or ')' in 'shape'");
    }
    ++pos_;  // ')'
    return shape;
  }

  int64_t ParseDim() {
    if (Peek() < '0' || Peek() > '9') Fail("a non-negative integer in 'shape'");
    int64_t v = 0;
    while (Peek() >= '0' && Peek() <= '9') {
      v = v * 10 + (Peek() - '0');
      if (v > kMaxElements) Malformed("a dimension in 'shape' is too large");
      ++pos_;
    }
    if (Peek() == 'L') ++pos_;  // Python 2 long literal, as old NumPy wrote it
    return v;
  }

  std::string_view text_;
  const std::string& name_;
  size_t pos_ = 0;
};

std::string DescribeDescr(const std::string& descr) {
  if (descr.size() < 2) return "'" + descr + "'";
  static const struct { const char* code; const char* name; } kNames[] = {
      {"f2", "float16"}, {"f4", "float32"}, {"f8", "float64"}, {"f16", "float128"},
      {"i1", "int8"},    {"i2", "int16"},   {"i4", "int32"},   {"i8", "int64"},
      {"u1", "uint8"},   {"u2", "uint16"},  {"u4", "uint32"},  {"u8", "uint64"},
      {"b1", "bool"},    {"c8", "complex64"}, {"c16", "complex128"}, {"V2", "bfloat16 or void"}};
  for (const auto& n : kNames) {
    if (descr.substr(1) == n.code) return std::string(n.name) + " ('" + descr + "')";
  }
  return "'" + descr + "'";
}

void CheckHeader(const Header& h, const std::string& name) {
  const std::string& d = *h.descr;
  if (d == ">f4") Fail(name, "holds big-endian float32 ('>f4'); qattn reads little-endian float32 ('<f4') only.");
  if (d != "<f4") Fail(name, "has dtype " + DescribeDescr(d) + "; qattn reads float32 ('<f4') only.");
  if (*h.fortran_order) {
    Fail(name, "is stored in Fortran order; save a C-ordered array (numpy.ascontiguousarray) instead.");
  }
}

int64_t CountElements(const std::vector<int64_t>& shape, const std::string& name) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d != 0 && n > kMaxElements / d) Fail(name, "declares more elements than qattn can hold.");
    n *= d;
  }
  return n;
}

std::string HeaderText(const std::vector<int64_t>& shape) {
  std::string dims;
  for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) dims += ",";  // "(n,)", as Python spells a 1-tuple
  return "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
}

}  // namespace

std::string NpyArray::ShapeString() const {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

namespace {

// Where the data of a checked .npy file lies.
struct Layout {
  std::vector<int64_t> shape;
  size_t data_offset = 0;
  size_t data_bytes = 0;
};

// Reads `n` bytes at `offset` of the file being parsed; the caller has checked they exist.
using ReadAt = std::function<std::string(size_t offset, size_t n)>;

// Checks the preamble and header of a file of `size` bytes and that its size matches the data the
// header promises. Reads only the preamble and header, so a large file is not loaded twice.
Layout ParseLayout(const ReadAt& read, size_t size, const std::string& name) {
  const std::string pre = read(0, std::min(size, kPreambleV2));
  if (pre.size() < kMagicSize || pre.compare(0, kMagicSize, kMagic, kMagicSize) != 0) {
    Fail(name, "is not a .npy file (it does not start with the \\x93NUMPY magic string).");
  }
  if (pre.size() < kPreambleV1) Fail(name, "is truncated inside its .npy preamble.");
  const int major = uint8_t(pre[6]), minor = uint8_t(pre[7]);
  if (major < 1 || major > 3 || minor != 0) {
    Fail(name, "uses .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                   "; qattn reads versions 1.0, 2.0 and 3.0.");
  }
  const size_t preamble = major == 1 ? kPreambleV1 : kPreambleV2;
  if (pre.size() < preamble) Fail(name, "is truncated inside its .npy preamble.");
  const size_t header_len = ReadLe(pre, 8, major == 1 ? 2 : 4);
  if (header_len > size - preamble) {
    Fail(name, "is truncated: its header claims " + std::to_string(header_len) + " bytes but only " +
                   std::to_string(size - preamble) + " follow.");
  }
  const Header h = HeaderParser(read(preamble, header_len), name).Parse();
  CheckHeader(h, name);

  Layout layout;
  layout.shape = *h.shape;
  layout.data_offset = preamble + header_len;
  layout.data_bytes = size_t(CountElements(layout.shape, name)) * sizeof(float);
  const size_t present = size - layout.data_offset;
  NpyArray shape_only;
  shape_only.shape = layout.shape;
  if (present < layout.data_bytes) {
    Fail(name, "is truncated: shape " + shape_only.ShapeString() + " needs " + std::to_string(layout.data_bytes) +
                   " data bytes but the file holds " + std::to_string(present) + ".");
  }
  if (present > layout.data_bytes) {
    Fail(name, "has " + std::to_string(present - layout.data_bytes) + " unexpected bytes after the data of shape " +
                   shape_only.ShapeString() + ".");
  }
  return layout;
}

}  // namespace

NpyArray ParseNpyF32(std::string_view bytes, const std::string& name) {
  const ReadAt read = [&](size_t offset, size_t n) { return std::string(bytes.substr(offset, n)); };
  const Layout layout = ParseLayout(read, bytes.size(), name);
  NpyArray a;
  a.shape = layout.shape;
  a.data.resize(layout.data_bytes / sizeof(float));
  // The format is little-endian, as is every CPU qattn targets (x86-64).
  if (layout.data_bytes) std::memcpy(a.data.data(), bytes.data() + layout.data_offset, layout.data_bytes);
  return a;
}

NpyArray ReadNpyF32(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) Fail(path, std::string("cannot be opened: ") + std::strerror(errno) + ".");
  struct stat st;
  if (fstat(fileno(f.get()), &st) != 0) Fail(path, std::string("cannot be read: ") + std::strerror(errno) + ".");
  if (S_ISDIR(st.st_mode)) Fail(path, "cannot be read: Is a directory.");
  if (!S_ISREG(st.st_mode)) Fail(path, "is not a regular file.");
  const size_t size = size_t(st.st_size);

  // Reads exactly n bytes at offset into dst; the file may have shrunk since fstat.
  auto read_into = [&](size_t offset, size_t n, char* dst) {
    if (std::fseek(f.get(), long(offset), SEEK_SET) != 0 || std::fread(dst, 1, n, f.get()) != n) {
      Fail(path, std::ferror(f.get()) ? std::string("cannot be read: ") + std::strerror(errno) + "."
                                       : std::string("is truncated (it shrank while being read)."));
    }
  };
  const ReadAt read = [&](size_t offset, size_t n) {
    std::string s(n, '\0');
    read_into(offset, n, s.data());
    return s;
  };
  const Layout layout = ParseLayout(read, size, path);
  NpyArray a;
  a.shape = layout.shape;
  a.data.resize(layout.data_bytes / sizeof(float));
  if (layout.data_bytes) read_into(layout.data_offset, layout.data_bytes, reinterpret_cast<char*>(a.data.data()));
  return a;
}

std::string SerializeNpyF32(const std::vector<int64_t>& shape, const float* data) {
  std::string header = HeaderText(shape);
  // Pad with spaces so the data starts on a 64-byte boundary, newline last, as NumPy does.
  auto padded_total = [&](size_t preamble) { return (preamble + header.size() + 1 + 63) / 64 * 64; };
  const bool v1 = padded_total(kPreambleV1) - kPreambleV1 <= 65535;  // the v1 length field is 16 bits
  const size_t preamble = v1 ? kPreambleV1 : kPreambleV2;
  const size_t total = padded_total(preamble);
  header.append(total - preamble - header.size() - 1, ' ');
  header += '\n';

  std::string out(kMagic, kMagicSize);
  out += char(v1 ? 1 : 2);
  out += char(0);
  const uint32_t len = uint32_t(header.size());
  for (size_t i = 0; i < (v1 ? 2u : 4u); ++i) out += char((len >> (8 * i)) & 0xff);
  out += header;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  out.append(reinterpret_cast<const char*>(data), size_t(n) * sizeof(float));
  return out;
}

void WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
  const std::string bytes = SerializeNpyF32(shape, data);
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) Fail(path, std::string("cannot be written: ") + std::strerror(errno) + ".");
  if (std::fwrite(bytes.data(), 1, bytes.size(), f.get()) != bytes.size()) {
    Fail(path, std::string("could not be written completely: ") + std::strerror(errno) + ".");
  }
  if (std::fclose(f.release()) != 0) Fail(path, std::string("could not be written completely: ") + std::strerror(errno) + ".");
}

}  // namespace qattn
