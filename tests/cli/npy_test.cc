// Unit tests of the .npy reader/writer: round trips, the header NumPy writes, and that no prefix or
// single-byte corruption of a valid file can do anything but parse or throw NpyError.
#include "eval/npy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace qattn {
namespace {

std::vector<float> Iota(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = 0.5f * float(i) - 3.0f;
  return v;
}

TEST(Npy, RoundTripsShapes) {
  for (const std::vector<int64_t>& shape : std::vector<std::vector<int64_t>>{{}, {0}, {3}, {2, 3}, {4, 1, 5}}) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const std::vector<float> data = Iota(size_t(n));
    const NpyArray a = ParseNpyF32(SerializeNpyF32(shape, data.data()), "mem");
    EXPECT_EQ(a.shape, shape);
    EXPECT_EQ(a.data, data);
  }
}

TEST(Npy, WritesNumpysHeader) {
  const std::vector<float> data = Iota(3);
  const std::string bytes = SerializeNpyF32({3}, data.data());
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const size_t header_len = uint8_t(bytes[8]) | (size_t(uint8_t(bytes[9])) << 8);
  EXPECT_EQ((10 + header_len) % 64, 0u);  // data aligned as NumPy aligns it
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
  EXPECT_EQ(bytes.substr(10, dict.size()), dict);
  EXPECT_EQ(bytes[10 + header_len - 1], '\n');
  EXPECT_EQ(bytes.size(), 10 + header_len + 12);
}

TEST(Npy, AcceptsVersionTwoAndOddSpacing) {
  std::string header = "{\"shape\":(2,2),\"fortran_order\":False,\"descr\":\"<f4\"}";
  header += std::string(64 - (12 + header.size() + 1) % 64, ' ') + "\n";
  std::string bytes("\x93NUMPY\x02\x00", 8);
  const uint32_t len = uint32_t(header.size());
  bytes.append(reinterpret_cast<const char*>(&len), 4);
  bytes += header;
  const std::vector<float> data = Iota(4);
  bytes.append(reinterpret_cast<const char*>(data.data()), 16);
  const NpyArray a = ParseNpyF32(bytes, "v2");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(a.data, data);
}

TEST(Npy, EveryTruncationIsRejected) {
  const std::vector<float> data = Iota(6);
  const std::string bytes = SerializeNpyF32({2, 3}, data.data());
  for (size_t len = 0; len < bytes.size(); ++len) {
    EXPECT_THROW(ParseNpyF32(bytes.substr(0, len), "cut"), NpyError) << "length " << len;
  }
}

TEST(Npy, CorruptedBytesParseOrThrowNpyError) {
  const std::vector<float> data = Iota(6);
  const std::string bytes = SerializeNpyF32({2, 3}, data.data());
  for (size_t i = 0; i < 128; ++i) {
    for (int value : {0, int(' '), int('('), int(')'), int(','), int('\''), int('9'), 0x7f, 0xff}) {
      std::string bad = bytes;
      bad[i] = char(value);
      try {
        const NpyArray a = ParseNpyF32(bad, "bad");
        int64_t n = 1;
        for (int64_t d : a.shape) n *= d;
        EXPECT_EQ(size_t(n), a.data.size());
      } catch (const NpyError&) {
      }
    }
  }
}

TEST(Npy, MessagesNameFileAndProblem) {
  try {
    ReadNpyF32("/nonexistent/dir/x.npy");
    FAIL() << "no exception";
  } catch (const NpyError& e) {
    EXPECT_NE(std::string(e.what()).find("'/nonexistent/dir/x.npy' cannot be opened"), std::string::npos) << e.what();
  }
  const std::vector<float> data = Iota(2);
  std::string bytes = SerializeNpyF32({2}, data.data());
  bytes.replace(bytes.find("<f4"), 3, "<f8");
  try {
    ParseNpyF32(bytes, "d.npy");
    FAIL() << "no exception";
  } catch (const NpyError& e) {
    EXPECT_NE(std::string(e.what()).find("float64"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qattn
