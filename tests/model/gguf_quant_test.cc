// Element conversions: dequantization of hand-built f16 / bf16 / q8_0 / q4_0 data checked against the
// ggml layouts written out here (not against this project's quantizer), the quantizer's exact output on
// blocks worked out by hand, and quantize -> dequantize error bounds on random data.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "model/gguf.h"
#include "model_test_util.h"

namespace qattn::model {
namespace {

// f16 bit patterns of scales used below and their exact values.
struct Scale {
  uint16_t bits;
  double value;
};
const Scale kScales[] = {{0x3800, 0.5}, {0x2C00, 0.0625}, {0xC000, -2.0}, {0x0001, std::ldexp(1.0, -24)},
                         {0x7BFF, 65504.0}, {0x0000, 0.0}, {0x3555, 0.333251953125}};

void PutScale(std::vector<uint8_t>& block, uint16_t bits) {
  block[0] = uint8_t(bits & 0xff);
  block[1] = uint8_t(bits >> 8);
}

TEST(GgmlTypes, BlockSizesAndNames) {
  EXPECT_EQ(GgmlBlockSize(GgmlType::kF32), 1);
  EXPECT_EQ(GgmlBlockBytes(GgmlType::kF32), 4);
  EXPECT_EQ(GgmlBlockBytes(GgmlType::kF16), 2);
  EXPECT_EQ(GgmlBlockBytes(GgmlType::kBF16), 2);
  EXPECT_EQ(GgmlBlockSize(GgmlType::kQ8_0), 32);
  EXPECT_EQ(GgmlBlockBytes(GgmlType::kQ8_0), 34);
  EXPECT_EQ(GgmlBlockSize(GgmlType::kQ4_0), 32);
  EXPECT_EQ(GgmlBlockBytes(GgmlType::kQ4_0), 18);
  EXPECT_EQ(GgmlRowBytes(GgmlType::kQ4_0, 96), 54u);
  EXPECT_EQ(GgmlRowBytes(GgmlType::kBF16, 3), 6u);
  EXPECT_STREQ(GgmlTypeName(GgmlType::kQ8_0), "q8_0");
  EXPECT_STREQ(GgmlTypeName(GgmlType::kBF16), "bf16");
  testing::ExpectModelFileError([] { GgmlRowBytes(GgmlType::kQ8_0, 33); }, {"33", "q8_0", "32"});
  std::vector<float> out(33);
  testing::ExpectModelFileError([&] { DequantizeToF32(GgmlType::kQ4_0, nullptr, 33, out.data()); }, {"33"});
}

TEST(Dequantize, F16AndBF16FromKnownBitPatterns) {
  const uint16_t f16[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x8000, 0x7C00, 0x3555};
  const double f16_want[] = {1.0, -2.0, 65504.0, std::ldexp(1.0, -24), -0.0, INFINITY, 0.333251953125};
  std::vector<float> out(7);
  DequantizeToF32(GgmlType::kF16, reinterpret_cast<const uint8_t*>(f16), 7, out.data());
  for (int i = 0; i < 7; ++i) EXPECT_EQ(double(out[i]), f16_want[i]) << i;
  EXPECT_TRUE(std::signbit(out[4]));

  const uint16_t bf16[] = {0x3F80, 0xC040, 0x4049, 0x0001, 0xFF80};
  const double bf16_want[] = {1.0, -3.0, 3.140625, std::ldexp(1.0, -133), -INFINITY};
  DequantizeToF32(GgmlType::kBF16, reinterpret_cast<const uint8_t*>(bf16), 5, out.data());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(double(out[i]), bf16_want[i]) << i;
}

TEST(Dequantize, Q8_0BlocksAreScaleTimesSignedBytes) {
  std::mt19937 rng(7);
  for (const Scale& s : kScales) {
    std::vector<uint8_t> blocks(2 * 34);  // two blocks; the second has the negated scale's bits
    PutScale(blocks, s.bits);
    std::vector<uint8_t> second(34);
    PutScale(second, uint16_t(s.bits ^ 0x8000));
    std::copy(second.begin(), second.begin() + 2, blocks.begin() + 34);
    for (int j = 0; j < 32; ++j) {
      blocks[2 + j] = uint8_t(j == 0 ? 0x80 : j == 1 ? 0x7f : rng() & 0xff);  // include -128 and 127
      blocks[36 + j] = uint8_t(rng() & 0xff);
    }
    std::vector<float> out(64);
    DequantizeToF32(GgmlType::kQ8_0, blocks.data(), 64, out.data());
    for (int b = 0; b < 2; ++b) {
      const double d = b == 0 ? s.value : -s.value;
      for (int j = 0; j < 32; ++j) {
        const int q = int(int8_t(blocks[34 * b + 2 + j]));
        EXPECT_EQ(double(out[32 * b + j]), double(float(d) * float(q))) << "scale " << s.value << " block " << b << " j " << j;
      }
    }
  }
}

TEST(Dequantize, Q4_0LowNibblesFirstThenHighNibbles) {
  std::mt19937 rng(11);
  for (const Scale& s : kScales) {
    std::vector<uint8_t> block(18);
    PutScale(block, s.bits);
    for (int j = 0; j < 16; ++j) block[2 + j] = uint8_t(j == 0 ? 0x0f : j == 1 ? 0xf0 : rng() & 0xff);
    std::vector<float> out(32);
    DequantizeToF32(GgmlType::kQ4_0, block.data(), 32, out.data());
    for (int j = 0; j < 16; ++j) {
      const int low = block[2 + j] & 0x0f, high = block[2 + j] >> 4;
      EXPECT_EQ(double(out[j]), double(float(s.value) * float(low - 8))) << "j " << j;
      EXPECT_EQ(double(out[j + 16]), double(float(s.value) * float(high - 8))) << "j " << j + 16;
    }
  }
  // A worked example: d = 0.5, byte 0x2B -> element 0 = (0xB - 8) * 0.5 = 1.5, element 16 = (2 - 8) * 0.5 = -3.
  std::vector<uint8_t> block(18, 0x88);
  PutScale(block, 0x3800);
  block[2] = 0x2B;
  std::vector<float> out(32);
  DequantizeToF32(GgmlType::kQ4_0, block.data(), 32, out.data());
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[16], -3.0f);
  EXPECT_EQ(out[1], 0.0f);
}

uint16_t ScaleBits(const std::vector<uint8_t>& bytes, size_t at) { return uint16_t(bytes[at] | (bytes[at + 1] << 8)); }

TEST(Quantize, Q8_0MatchesGgmlOnAWorkedBlock) {
  // x_j = j - 15.5 * (j odd ? 1 : -1)...: amax = 127 * 0.25, so d = 0.25 exactly and q_j = round(x_j / 0.25).
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = 0.25f * float(j % 2 ? 127 - 3 * j : -(4 * j)) + (j == 5 ? 0.125f : 0.0f);
  x[31] = -31.75f;  // amax 31.75 = 127 * 0.25
  const std::vector<uint8_t> q = QuantizeFromF32(GgmlType::kQ8_0, x.data(), 32);
  ASSERT_EQ(q.size(), 34u);
  EXPECT_EQ(ScaleBits(q, 0), 0x3400) << "d = 0.25";
  for (int j = 0; j < 32; ++j) {
    const int want = int(std::round(double(x[j]) / 0.25));  // halfway (j = 5) rounds away from zero, as roundf
    EXPECT_EQ(int(int8_t(q[2 + j])), want) << "j " << j;
  }
}

TEST(Quantize, Q4_0MatchesGgmlOnAWorkedBlock) {
  // The value of largest magnitude is -16 (signed), so d = -16 / -8 = 2, id = 0.5 and
  // nibble_j = min(15, trunc(x_j / 2 + 8.5)).
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = float(j) - 16.0f;  // -16 .. 15
  const std::vector<uint8_t> q = QuantizeFromF32(GgmlType::kQ4_0, x.data(), 32);
  ASSERT_EQ(q.size(), 18u);
  EXPECT_EQ(ScaleBits(q, 0), 0x4000) << "d = 2";
  for (int j = 0; j < 16; ++j) {
    const int want_low = std::min(15, int(std::trunc(x[j] / 2.0 + 8.5)));
    const int want_high = std::min(15, int(std::trunc(x[j + 16] / 2.0 + 8.5)));
    EXPECT_EQ(q[2 + j] & 0x0f, want_low) << "j " << j;
    EXPECT_EQ(q[2 + j] >> 4, want_high) << "j " << j + 16;
  }
  // Positive max: 8 maps to nibble 0 (d = -1), -8 would need 16 and is clamped to 15.
  std::vector<float> y(32, 0.0f);
  y[3] = 8.0f;
  y[20] = -7.9f;
  const std::vector<uint8_t> r = QuantizeFromF32(GgmlType::kQ4_0, y.data(), 32);
  EXPECT_EQ(ScaleBits(r, 0), 0xBC00) << "d = -1";
  EXPECT_EQ(r[2 + 3] & 0x0f, 0);
  EXPECT_EQ(r[2 + 4] >> 4, 15) << "-7.9 / -1 + 8.5 = 16.4 -> clamped to 15";
  EXPECT_EQ(r[2 + 0] & 0x0f, 8) << "zero sits at nibble 8";
}

TEST(Quantize, AllZeroBlocksHaveZeroScale) {
  const std::vector<float> zeros(64, 0.0f);
  const std::vector<uint8_t> q8 = QuantizeFromF32(GgmlType::kQ8_0, zeros.data(), 64);
  for (uint8_t b : q8) EXPECT_EQ(b, 0);
  const std::vector<uint8_t> q4 = QuantizeFromF32(GgmlType::kQ4_0, zeros.data(), 64);
  EXPECT_EQ(ScaleBits(q4, 0), 0x8000) << "d = 0 / -8 = -0, as ggml writes it";
  for (int j = 0; j < 16; ++j) EXPECT_EQ(q4[2 + j], 0x88);
}

double F16ScaleError(double d) { return std::max(d / 2048.0, std::ldexp(1.0, -25)); }

// Quantize -> dequantize on random blocks (various magnitudes): per-element error within the bound of
// each format, relative to the block's max |x|.
TEST(Quantize, RoundTripErrorBounds) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t n = 32 * 200;
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = normal(rng) * std::pow(10.0f, float(int(i / 32) % 7 - 3));
  std::vector<float> back(n);
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kF16, GgmlType::kBF16, GgmlType::kF32}) {
    const std::vector<uint8_t> q = QuantizeFromF32(type, x.data(), n);
    ASSERT_EQ(q.size(), GgmlRowBytes(type, n));
    DequantizeToF32(type, q.data(), n, back.data());
    for (size_t b = 0; b < n / 32; ++b) {
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * b + j]));
      for (int j = 0; j < 32; ++j) {
        const size_t i = 32 * b + j;
        const double err = std::fabs(double(back[i]) - double(x[i]));
        double bound = 0.0;
        switch (type) {
          // Half a step (q8_0) or one step at the clamped end (q4_0), plus |q| times the f16 rounding of the
          // scale (relative 2^-11, or absolute 2^-25 where the scale is an f16 subnormal).
          case GgmlType::kQ8_0: bound = (amax / 127.0 * 0.5 + 127.0 * F16ScaleError(amax / 127.0)) * 1.001; break;
          case GgmlType::kQ4_0: bound = (amax / 8.0 + 8.0 * F16ScaleError(amax / 8.0)) * 1.001; break;
          case GgmlType::kF16: bound = std::fabs(x[i]) / 2048.0 + 1e-7; break;
          case GgmlType::kBF16: bound = std::fabs(x[i]) / 256.0; break;
          case GgmlType::kF32: bound = 0.0; break;
        }
        ASSERT_LE(err, bound) << GgmlTypeName(type) << " element " << i << " x " << x[i] << " back " << back[i];
      }
    }
  }
}

TEST(Quantize, Q4_0KeepsTheLargestMagnitudeExactlyUpToTheScaleRounding) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  std::vector<float> x(32 * 50);
  for (float& v : x) v = u(rng);
  const std::vector<uint8_t> q = QuantizeFromF32(GgmlType::kQ4_0, x.data(), x.size());
  std::vector<float> back(x.size());
  DequantizeToF32(GgmlType::kQ4_0, q.data(), x.size(), back.data());
  for (size_t b = 0; b < x.size() / 32; ++b) {
    size_t arg = 32 * b;
    for (size_t i = 32 * b; i < 32 * b + 32; ++i) arg = std::fabs(x[i]) > std::fabs(x[arg]) ? i : arg;
    EXPECT_NEAR(back[arg], x[arg], std::fabs(x[arg]) / 2048.0 * 1.001) << "block " << b;
  }
}

}  // namespace
}  // namespace qattn::model
