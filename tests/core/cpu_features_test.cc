// ISA names, parsing and caps: the cap lowers the active ISA but never raises it above the CPU.
#include "core/cpu_features.h"

#include <gtest/gtest.h>

namespace qattn {
namespace {

constexpr Isa kAll[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16};

Isa BestOfCpu() {
  const CpuFeatures& f = DetectCpu();
  return f.avx512_bf16 ? Isa::kAvx512Bf16 : f.avx512 ? Isa::kAvx512 : f.avx2_fma ? Isa::kAvx2 : Isa::kScalar;
}

TEST(CpuFeatures, NamesRoundTrip) {
  for (Isa isa : kAll) {
    Isa parsed = Isa::kScalar;
    ASSERT_TRUE(ParseIsa(IsaName(isa), &parsed)) << IsaName(isa);
    EXPECT_EQ(parsed, isa);
  }
  Isa parsed = Isa::kAvx2;
  EXPECT_FALSE(ParseIsa("sse9", &parsed));
  EXPECT_EQ(parsed, Isa::kAvx2);  // untouched on failure
}

TEST(CpuFeatures, FeaturesAreConsistent) {
  const CpuFeatures& f = DetectCpu();
  if (f.avx512_bf16) {
    EXPECT_TRUE(f.avx512);
  }
  if (f.avx512_vnni) {
    EXPECT_TRUE(f.avx512);
  }
}

TEST(CpuFeatures, CapLimitsActiveIsa) {
  for (Isa cap : kAll) {
    SetIsaCap(cap);
    const Isa want = cap < BestOfCpu() ? cap : BestOfCpu();
    EXPECT_EQ(ActiveIsa(), want) << "cap " << IsaName(cap);
  }
  SetIsaCap(Isa::kAvx512Bf16);
  EXPECT_EQ(ActiveIsa(), BestOfCpu());
}

}  // namespace
}  // namespace qattn
