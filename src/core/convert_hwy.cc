// Widening conversions bf16 -> f32 and f16 -> f32 over arrays, written once with Highway and
// dispatched to the best target (F16C / AVX-512 conversions where present). Both are exact, so
// every target gives bit-identical results (tested on all bit patterns); tails use the scalar
// conversions in dtype.h.
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/convert_hwy.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace qattn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void BF16ToF32ArrayImpl(const uint16_t* src, float* dst, size_t n) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::bfloat16_t, decltype(df)> db;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(hn::PromoteTo(df, hn::LoadU(db, reinterpret_cast<const hwy::bfloat16_t*>(src + i))), df, dst + i);
  for (; i < n; ++i) dst[i] = BF16ToF32(BF16{src[i]});
}

void F16ToF32ArrayImpl(const uint16_t* src, float* dst, size_t n) {
#if HWY_TARGET != HWY_AVX2 && HWY_TARGET != HWY_AVX3 && HWY_TARGET != HWY_AVX3_DL
  // Below AVX2 Highway 1.0.3 emulates the conversion and maps inf and NaN (exponent 31) to
  // finite values (found by the all-patterns test); use the exact scalar conversion there.
  for (size_t i = 0; i < n; ++i) dst[i] = F16ToF32(F16{src[i]});
  return;
#endif
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(src + i))), df, dst + i);
  for (; i < n; ++i) dst[i] = F16ToF32(F16{src[i]});
}

}  // namespace HWY_NAMESPACE
}  // namespace qattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qattn {
HWY_EXPORT(BF16ToF32ArrayImpl);
HWY_EXPORT(F16ToF32ArrayImpl);

void BF16ToF32Array(const uint16_t* src, float* dst, size_t n) { HWY_DYNAMIC_DISPATCH(BF16ToF32ArrayImpl)(src, dst, n); }
void F16ToF32Array(const uint16_t* src, float* dst, size_t n) { HWY_DYNAMIC_DISPATCH(F16ToF32ArrayImpl)(src, dst, n); }
}  // namespace qattn
#endif  // HWY_ONCE
