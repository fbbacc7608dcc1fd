#include "core/cpu_features.h"

#include <cstdlib>

#include "hwy/highway.h"

namespace qattn {

const CpuFeatures& DetectCpu() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
    __builtin_cpu_init();
    f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    f.avx512_bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
    f.avx512_vnni = f.avx512 && __builtin_cpu_supports("avx512vnni");
    return f;
  }();
  return features;
}

namespace {
Isa& CapSlot() {
  static Isa cap = [] {
    Isa isa = Isa::kAvx512Bf16;
    if (const char* env = std::getenv("QATTN_ISA")) ParseIsa(env, &isa);
    return isa;
  }();
  return cap;
}

// Restricts Highway's dynamic dispatch to targets at or below the cap.
void ApplyHighwayCap(Isa cap) {
  int64_t disabled = 0;
  if (cap < Isa::kAvx512) disabled |= HWY_AVX3 | HWY_AVX3_DL;
  if (cap < Isa::kAvx2) disabled |= HWY_AVX2 | HWY_SSE4 | HWY_SSSE3;
  hwy::SetSupportedTargetsForTest(0);
  if (disabled) {
    const int64_t supported = hwy::SupportedTargets() & ~disabled;
    hwy::SetSupportedTargetsForTest(supported ? supported : HWY_STATIC_TARGET);
  }
}
}  // namespace

Isa ActiveIsa() {
  static bool applied = (ApplyHighwayCap(CapSlot()), true);
  (void)applied;
  const CpuFeatures& f = DetectCpu();
  Isa best = f.avx512_bf16 ? Isa::kAvx512Bf16 : f.avx512 ? Isa::kAvx512 : f.avx2_fma ? Isa::kAvx2 : Isa::kScalar;
  return CapSlot() < best ? CapSlot() : best;
}

void SetIsaCap(Isa cap) {
  CapSlot() = cap;
  ApplyHighwayCap(cap);
}

std::string IsaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Bf16: return "avx512bf16";
  }
  return "?";
}

bool ParseIsa(const std::string& name, Isa* out) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16}) {
    if (IsaName(isa) == name) {
      *out = isa;
      return true;
    }
  }
  return false;
}

}  // namespace qattn
