// dtype conversions against known bit patterns, an independent decoder, and exhaustive
// round-to-nearest-even checks at every midpoint between neighbouring bf16 / f16 values.
#include "core/cpu_features.h"
#include "core/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace qattn {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Decoders written from the format definitions (not from dtype.cc), in double.
double DecodeF16(uint16_t bits) {
  const int exp = (bits >> 10) & 0x1f, mant = bits & 0x3ff;
  const double sign = (bits & 0x8000) ? -1.0 : 1.0;
  if (exp == 31) return mant ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  if (exp == 0) return sign * std::ldexp(double(mant), -24);
  return sign * std::ldexp(double(1024 + mant), exp - 25);
}

double DecodeBF16(uint16_t bits) {
  const int exp = (bits >> 7) & 0xff, mant = bits & 0x7f;
  const double sign = (bits & 0x8000) ? -1.0 : 1.0;
  if (exp == 255) return mant ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  if (exp == 0) return sign * std::ldexp(double(mant), -133);
  return sign * std::ldexp(double(128 + mant), exp - 134);
}

bool IsF16NaN(uint16_t b) { return (b & 0x7c00) == 0x7c00 && (b & 0x3ff); }
bool IsBF16NaN(uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f); }

// Rounds |x| to the nearest value with `mant_bits` stored mantissa bits (ties to even), in double.
// min_exp: exponent of the smallest normal; max_finite_tie: at or above this, the result is inf.
double RoundNearestEven(double x, int mant_bits, int min_exp, double overflow_tie) {
  const double a = std::fabs(x);
  if (a >= overflow_tie) return std::copysign(INFINITY, x);
  const int e = a < std::ldexp(1.0, min_exp) ? min_exp : std::ilogb(a);
  const double quantum = std::ldexp(1.0, e - mant_bits);
  return std::copysign(std::nearbyint(a / quantum) * quantum, x);  // a / quantum is exact
}

TEST(DType, NamesSizesAndParsing) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    DType parsed = DType::kF32;
    ASSERT_TRUE(ParseDType(DTypeName(t), &parsed)) << DTypeName(t);
    EXPECT_EQ(parsed, t);
  }
  DType parsed = DType::kF16;
  EXPECT_FALSE(ParseDType("int8", &parsed));
  EXPECT_FALSE(ParseDType("", &parsed));
}

TEST(BF16, KnownBitPatterns) {
  EXPECT_EQ(F32ToBF16(1.0f).bits, 0x3f80);
  EXPECT_EQ(F32ToBF16(-2.0f).bits, 0xc000);
  EXPECT_EQ(F32ToBF16(0.0f).bits, 0x0000);
  EXPECT_EQ(F32ToBF16(-0.0f).bits, 0x8000);
  EXPECT_EQ(F32ToBF16(65504.0f).bits, 0x4780);  // 0x477fe000: rounds up to 65536
  EXPECT_EQ(F32ToBF16(INFINITY).bits, 0x7f80);
  EXPECT_EQ(F32ToBF16(-INFINITY).bits, 0xff80);
  EXPECT_EQ(F32ToBF16(FromBits(0x7f7fffff)).bits, 0x7f80);  // FLT_MAX rounds to inf
  EXPECT_EQ(F32ToBF16(FromBits(0x00010000)).bits, 0x0001);  // f32 subnormal kept
  EXPECT_EQ(BF16ToF32(BF16{0x0001}), std::ldexp(1.0f, -133));
  EXPECT_EQ(BF16ToF32(BF16{0x3f80}), 1.0f);
  EXPECT_EQ(BF16ToF32(BF16{0xc049}), -3.140625f);
}

TEST(BF16, RoundToNearestEvenTies) {
  EXPECT_EQ(F32ToBF16(FromBits(0x3f808000)).bits, 0x3f80);  // tie, 0x3f80 even: down
  EXPECT_EQ(F32ToBF16(FromBits(0x3f818000)).bits, 0x3f82);  // tie, 0x3f81 odd: up
  EXPECT_EQ(F32ToBF16(FromBits(0x3f808001)).bits, 0x3f81);  // above the tie: up
  EXPECT_EQ(F32ToBF16(FromBits(0x3f807fff)).bits, 0x3f80);  // below the tie: down
  EXPECT_EQ(F32ToBF16(FromBits(0xbf818000)).bits, 0xbf82);  // negative tie, odd: away
  EXPECT_EQ(F32ToBF16(FromBits(0x3fffffff)).bits, 0x4000);  // carries into the exponent
}

TEST(BF16, NaNStaysNaN) {
  EXPECT_TRUE(IsBF16NaN(F32ToBF16(NAN).bits));
  EXPECT_TRUE(IsBF16NaN(F32ToBF16(FromBits(0x7f800001)).bits));  // signalling, low bits only
  EXPECT_TRUE(IsBF16NaN(F32ToBF16(FromBits(0xffffffff)).bits));  // rounding must not wrap to 0
  EXPECT_TRUE(std::isnan(BF16ToF32(BF16{0x7fc0})));
}

TEST(F16, KnownBitPatterns) {
  EXPECT_EQ(F32ToF16(1.0f).bits, 0x3c00);
  EXPECT_EQ(F32ToF16(-2.0f).bits, 0xc000);
  EXPECT_EQ(F32ToF16(0.5f).bits, 0x3800);
  EXPECT_EQ(F32ToF16(0.0f).bits, 0x0000);
  EXPECT_EQ(F32ToF16(-0.0f).bits, 0x8000);
  EXPECT_EQ(F32ToF16(65504.0f).bits, 0x7bff);  // largest finite
  EXPECT_EQ(F32ToF16(65519.0f).bits, 0x7bff);  // below the tie with 65536
  EXPECT_EQ(F32ToF16(65520.0f).bits, 0x7c00);  // the tie rounds to even: inf
  EXPECT_EQ(F32ToF16(1e9f).bits, 0x7c00);
  EXPECT_EQ(F32ToF16(-1e9f).bits, 0xfc00);
  EXPECT_EQ(F32ToF16(INFINITY).bits, 0x7c00);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)).bits, 0x0001);           // smallest subnormal
  EXPECT_EQ(F32ToF16(std::ldexp(1023.0f, -24)).bits, 0x03ff);        // largest subnormal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -14)).bits, 0x0400);           // smallest normal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -30)).bits, 0x0000);           // underflows to zero
  EXPECT_EQ(F32ToF16(-std::ldexp(3.0f, -24)).bits, 0x8003);
  EXPECT_EQ(F16ToF32(F16{0x0001}), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToF32(F16{0x7bff}), 65504.0f);
  EXPECT_EQ(F16ToF32(F16{0x3555}), 0.333251953125f);
  EXPECT_EQ(F16ToF32(F16{0xfc00}), -INFINITY);
  EXPECT_TRUE(std::signbit(F16ToF32(F16{0x8000})));
  EXPECT_TRUE(std::isnan(F16ToF32(F16{0x7e00})));
}

TEST(F16, RoundToNearestEvenTies) {
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)).bits, 0x3c00);      // tie, even: down
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(3.0f, -11)).bits, 0x3c02);      // tie, odd: up
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)).bits, 0x3c01);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)).bits, 0x0000);             // subnormal tie 0 | 1: 0
  EXPECT_EQ(F32ToF16(std::ldexp(3.0f, -25)).bits, 0x0002);             // subnormal tie 1 | 2: 2
  EXPECT_EQ(F32ToF16(std::ldexp(2047.0f, -25)).bits, 0x0400);          // tie 0x3ff | 0x400: even
  EXPECT_EQ(F32ToF16(FromBits(0x3fffffff)).bits, 0x4000);              // carries into the exponent
}

TEST(F16, NaNStaysNaN) {
  EXPECT_TRUE(IsF16NaN(F32ToF16(NAN).bits));
  EXPECT_TRUE(IsF16NaN(F32ToF16(FromBits(0x7f800001)).bits));
  EXPECT_TRUE(IsF16NaN(F32ToF16(FromBits(0xffc00000)).bits));
}

// Every one of the 65536 patterns decodes as the format definition says.
TEST(F16, DecodeAllPatterns) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const double want = DecodeF16(uint16_t(b));
    const float got = F16ToF32(F16{uint16_t(b)});
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << b;
    } else {
      ASSERT_EQ(double(got), want) << std::hex << b;
      ASSERT_EQ(std::signbit(got), std::signbit(want)) << std::hex << b;
    }
  }
}

TEST(BF16, DecodeAllPatterns) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const double want = DecodeBF16(uint16_t(b));
    const float got = BF16ToF32(BF16{uint16_t(b)});
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << b;
    } else {
      ASSERT_EQ(double(got), want) << std::hex << b;
    }
  }
}

// The vectorised array conversions (Highway, one build per target) against the same decoders,
// for every bit pattern, under every instruction set this CPU runs.
TEST(DType, ArrayWideningDecodesAllPatternsOnEveryIsa) {
  std::vector<uint16_t> bits(0x10000 + 5);  // [65541]: all patterns plus a tail for the scalar loop
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = uint16_t(i);
  std::vector<float> out(bits.size());  // [65541]
  const Isa best = ActiveIsa();
  for (Isa cap : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16}) {
    if (cap > best) continue;
    SetIsaCap(cap);
    for (DType t : {DType::kF16, DType::kBF16}) {
      ConvertToF32(bits.data(), t, out.data(), bits.size());
      for (size_t i = 0; i < bits.size(); ++i) {
        const double want = t == DType::kF16 ? DecodeF16(bits[i]) : DecodeBF16(bits[i]);
        if (std::isnan(want)) {
          ASSERT_TRUE(std::isnan(out[i])) << IsaName(cap) << " " << DTypeName(t) << std::hex << " " << bits[i];
        } else {
          ASSERT_EQ(double(out[i]), want) << IsaName(cap) << " " << DTypeName(t) << std::hex << " " << bits[i];
          ASSERT_EQ(std::signbit(out[i]), std::signbit(want)) << IsaName(cap) << std::hex << " " << bits[i];
        }
      }
    }
  }
  SetIsaCap(best);
}

// For every pair of neighbours (a, a+1) of both signs: the midpoint goes to the even one, the
// floats just below and just above it go to the nearer one, and each value converts to itself.
template <class Encode>
void CheckAllMidpoints(Encode encode, double (*decode)(uint16_t), uint16_t last_finite) {
  for (uint32_t a = 0; a <= last_finite; ++a) {
    for (uint16_t sign : {uint16_t(0), uint16_t(0x8000)}) {
      const uint16_t lo = uint16_t(a | sign), hi = uint16_t((a + 1) | sign);  // hi may be inf
      const double vlo = decode(lo), vhi = a + 1 > last_finite ? 2 * decode(lo) - decode(uint16_t(lo - 1))
                                                                : decode(hi);
      const float mid = float((vlo + vhi) / 2);  // exact: one more bit than the format has
      ASSERT_EQ(double(mid), (vlo + vhi) / 2);
      const uint16_t even = (lo & 1) ? hi : lo;
      ASSERT_EQ(encode(float(vlo)), lo) << std::hex << "value " << lo;
      ASSERT_EQ(encode(mid), even) << std::hex << "midpoint above " << lo;
      ASSERT_EQ(encode(std::nextafter(mid, 0.0f)), lo) << std::hex << "just below midpoint above " << lo;
      ASSERT_EQ(encode(std::nextafter(mid, std::copysign(INFINITY, mid))), hi)
          << std::hex << "just above midpoint above " << lo;
    }
  }
}

TEST(F16, RoundsEveryMidpointToEven) {
  CheckAllMidpoints([](float f) { return F32ToF16(f).bits; }, DecodeF16, 0x7bff);
}

TEST(BF16, RoundsEveryMidpointToEven) {
  CheckAllMidpoints([](float f) { return F32ToBF16(f).bits; }, DecodeBF16, 0x7f7f);
}

// Random f32 values over the whole exponent range round to the nearest representable value.
TEST(DType, RandomValuesRoundToNearest) {
  std::mt19937 rng(7);
  for (int n = 0; n < 200000; ++n) {
    const float f = FromBits(rng());
    if (std::isnan(f)) continue;
    const double want16 = RoundNearestEven(f, 10, -14, 65520.0);
    const double wantbf = RoundNearestEven(f, 7, -126, std::ldexp(511.0, 119));
    ASSERT_EQ(double(RoundTrip(f, DType::kF16)), want16) << std::hexfloat << f;
    ASSERT_EQ(double(RoundTrip(f, DType::kBF16)), wantbf) << std::hexfloat << f;
    ASSERT_EQ(Bits(RoundTrip(f, DType::kF32)), Bits(f));
  }
}

TEST(DType, ConvertArraysBothWays) {
  const std::vector<float> src = {1.0f, -2.5f, 3.140625f, 65504.0f, 0.0f, -0.0f, 1e-6f};  // [7]
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    std::vector<uint8_t> typed(src.size() * DTypeSize(t));  // [7 * size] raw
    std::vector<float> back(src.size());                     // [7]
    ConvertFromF32(src.data(), typed.data(), t, src.size());
    ConvertToF32(typed.data(), t, back.data(), src.size());
    for (size_t i = 0; i < src.size(); ++i)
      EXPECT_EQ(Bits(back[i]), Bits(RoundTrip(src[i], t))) << DTypeName(t) << " element " << i;
  }
}

}  // namespace
}  // namespace qattn
