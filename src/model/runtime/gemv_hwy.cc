// One-row products y = W x for decode, written once with Highway for every x86 target and chosen at
// run time. Memory-bound: each weight byte is read once, four rows share each load of x.
#include "model/runtime/linear.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "model/runtime/gemv_hwy.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace qattn::model {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;

// Loads lanes [i, i + N) of a row as f32; bf16 rows are widened.
HWY_INLINE hn::Vec<DF> LoadRow(DF df, const float* row, size_t i) { return hn::LoadU(df, row + i); }
HWY_INLINE hn::Vec<DF> LoadRow(DF df, const uint16_t* row, size_t i) {
  const hn::Rebind<hwy::bfloat16_t, DF> db;
  return hn::PromoteTo(df, hn::LoadU(db, reinterpret_cast<const hwy::bfloat16_t*>(row + i)));
}
HWY_INLINE float ToF32(float v) { return v; }
HWY_INLINE float ToF32(uint16_t v) { return BF16ToF32(BF16{v}); }

template <typename W>
float DotTail(const W* row, const float* x, size_t from, size_t in) {
  float sum = 0.0f;
  for (size_t i = from; i < in; ++i) sum += ToF32(row[i]) * x[i];
  return sum;
}

// y[r] for rows [row_begin, row_end): four rows share each load of x (ForGemvRowBlocks).
template <typename W>
void GemvRows(const W* w, int in, const float* x, int row_begin, int row_end, float* y) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const size_t vec_end = size_t(in) / N * N;
  auto four_rows = [&](int r) {
    const W* w0 = w + int64_t(r) * in;
    const W* w1 = w0 + in;
    const W* w2 = w1 + in;
    const W* w3 = w2 + in;
    auto s0 = hn::Zero(df), s1 = hn::Zero(df), s2 = hn::Zero(df), s3 = hn::Zero(df);
    for (size_t i = 0; i < vec_end; i += N) {
      const auto xv = hn::LoadU(df, x + i);
      s0 = hn::MulAdd(LoadRow(df, w0, i), xv, s0);
      s1 = hn::MulAdd(LoadRow(df, w1, i), xv, s1);
      s2 = hn::MulAdd(LoadRow(df, w2, i), xv, s2);
      s3 = hn::MulAdd(LoadRow(df, w3, i), xv, s3);
    }
    y[r] = hn::GetLane(hn::SumOfLanes(df, s0)) + DotTail(w0, x, vec_end, in);
    y[r + 1] = hn::GetLane(hn::SumOfLanes(df, s1)) + DotTail(w1, x, vec_end, in);
    y[r + 2] = hn::GetLane(hn::SumOfLanes(df, s2)) + DotTail(w2, x, vec_end, in);
    y[r + 3] = hn::GetLane(hn::SumOfLanes(df, s3)) + DotTail(w3, x, vec_end, in);
  };
  auto one_row = [&](int r) {
    const W* w0 = w + int64_t(r) * in;
    auto s0 = hn::Zero(df);
    for (size_t i = 0; i < vec_end; i += N) s0 = hn::MulAdd(LoadRow(df, w0, i), hn::LoadU(df, x + i), s0);
    y[r] = hn::GetLane(hn::SumOfLanes(df, s0)) + DotTail(w0, x, vec_end, in);
  };
  ForGemvRowBlocks(w, int64_t(in) * sizeof(W), row_begin, row_end, four_rows, one_row);
}

void GemvRowsF32Impl(const float* w, int in, const float* x, int row_begin, int row_end, float* y) {
  GemvRows(w, in, x, row_begin, row_end, y);
}
void GemvRowsBf16Impl(const uint16_t* w, int in, const float* x, int row_begin, int row_end, float* y) {
  GemvRows(w, in, x, row_begin, row_end, y);
}

}  // namespace HWY_NAMESPACE
}  // namespace qattn::model
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qattn::model {
HWY_EXPORT(GemvRowsF32Impl);
HWY_EXPORT(GemvRowsBf16Impl);

void GemvRowsF32(const float* w, int in, const float* x, int row_begin, int row_end, float* y) {
  HWY_DYNAMIC_DISPATCH(GemvRowsF32Impl)(w, in, x, row_begin, row_end, y);
}
void GemvRowsBf16(const uint16_t* w, int in, const float* x, int row_begin, int row_end, float* y) {
  HWY_DYNAMIC_DISPATCH(GemvRowsBf16Impl)(w, in, x, row_begin, row_end, y);
}
}  // namespace qattn::model
#endif
