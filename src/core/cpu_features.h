// What this CPU can run, detected once at run time. Kernels pick their fast path from it;
// QATTN_ISA=scalar|avx2|avx512|avx512bf16 caps the choice (for tests of every path).
#pragma once
#include <string>

namespace qattn {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

struct CpuFeatures {
  bool avx2_fma = false;
  bool avx512 = false;       // F, BW, DQ, VL
  bool avx512_bf16 = false;  // vdpbf16ps
  bool avx512_vnni = false;  // vpdpbusd
};

const CpuFeatures& DetectCpu();
// The best ISA this CPU supports, capped by SetIsaCap or the QATTN_ISA environment variable.
Isa ActiveIsa();
void SetIsaCap(Isa cap);
std::string IsaName(Isa isa);
bool ParseIsa(const std::string& name, Isa* out);

}  // namespace qattn
