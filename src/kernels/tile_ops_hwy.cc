// f32 tile steps written once with Highway and compiled for every x86 target it offers
// (EMU128/SSE4/AVX2/AVX-512); HWY_DYNAMIC_DISPATCH picks the best one the CPU runs.
#include <cmath>
#include <limits>

#include "kernels/tile_ops.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/tile_ops_hwy.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qattn::tile {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using DI = hn::RebindToSigned<DF>;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Clamps a key position relative to the tile start into int32 range for vector compares.
inline int32_t RelativeKey(int64_t key, int64_t key_start) {
  const int64_t rel = key - key_start;
  return int32_t(rel < -1 ? -1 : rel > (1 << 30) ? (1 << 30) : rel);
}

// Applies scale, softcap, ALiBi and the mask to one row in place; returns the row's max logit.
float TransformRow(const SoftmaxStep& st, int r, float* row) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const bool has_bounds = st.bounds != nullptr;
  const KeyInterval b = has_bounds ? st.bounds[r] : KeyInterval{0, 0, -1};
  // Highway 1.0.3 offers only strict compares on integers: j >= lo is j > lo - 1.
  const auto lo_minus1 = hn::Set(di, RelativeKey(b.lo, st.key_start) - 1);
  const auto hi_plus1 = hn::Set(di, RelativeKey(b.hi, st.key_start) + 1);
  const auto sink_hi_plus1 = hn::Set(di, RelativeKey(b.sink_hi, st.key_start) + 1);
  const auto valid_cols = hn::Set(di, st.cols);
  const auto scale = hn::Set(df, st.scale);
  const auto cap = hn::Set(df, st.softcap);
  const auto inv_cap = hn::Set(df, st.softcap > 0 ? 1.0f / st.softcap : 0.0f);
  const float slope = st.alibi ? st.alibi[r] : 0.0f;
  const auto vslope = hn::Set(df, slope);
  const int64_t pos = st.pos ? st.pos[r] : 0;
  const auto pos_rel = hn::Set(df, float(pos - st.key_start));
  const auto neg_inf = hn::Set(df, kNegInf);
  auto vmax = neg_inf;
  for (int c = 0; c < st.s_stride; c += int(N)) {
    const auto j = hn::Add(hn::Iota(di, 0), hn::Set(di, c));  // key index relative to key_start
    auto x = hn::Mul(hn::LoadU(df, row + c), scale);
    if (st.softcap > 0) x = hn::Mul(cap, hn::Tanh(df, hn::Mul(x, inv_cap)));
    if (st.alibi) x = hn::NegMulAdd(vslope, hn::Abs(hn::Sub(pos_rel, hn::ConvertTo(df, j))), x);
    auto visible = hn::Lt(j, valid_cols);
    if (has_bounds) {
      const auto in_window = hn::And(hn::Gt(j, lo_minus1), hn::Lt(j, hi_plus1));
      visible = hn::And(visible, hn::Or(in_window, hn::Lt(j, sink_hi_plus1)));
    }
    x = hn::IfThenElse(hn::RebindMask(df, visible), x, neg_inf);
    hn::StoreU(x, df, row + c);
    vmax = hn::Max(vmax, x);
  }
  return hn::GetLane(hn::MaxOfLanes(df, vmax));
}

// exp(x) for the softmax's arguments x <= 0: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, a
// degree-6 polynomial for exp(r) (relative error ~1.2e-7), and 2^n put straight into the exponent.
// Anything below -87 (and -inf, a masked logit) gives exactly 0. About half the instructions of
// Highway's general Exp, which also handles overflow and large positive inputs softmax never has.
template <class D, class V>
HWY_INLINE V ExpNonPositive(D d, V x) {
  const hn::RebindToSigned<D> di;
  const auto floor_x = hn::Set(d, -87.0f);
  const auto xc = hn::Max(x, floor_x);
  const auto n = hn::Round(hn::Mul(xc, hn::Set(d, 1.44269504088896341f)));
  auto r = hn::NegMulAdd(n, hn::Set(d, 0.693359375f), xc);  // ln2 split in two for an exact reduction
  r = hn::NegMulAdd(n, hn::Set(d, -2.12194440e-4f), r);
  auto p = hn::Set(d, 1.0f / 720);
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 120));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 24));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 6));
  p = hn::MulAdd(p, r, hn::Set(d, 0.5f));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f));
  const auto two_n = hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, n), hn::Set(di, 127))));
  return hn::IfThenZeroElse(hn::Lt(x, floor_x), hn::Mul(p, two_n));
}

// Max of a row's raw dot products (the plain case: no mask, no logit transform, scale > 0).
float RawRowMax(const float* row, int n) {
  const DF df;
  const int N = int(hn::Lanes(df));
  auto vmax = hn::Set(df, kNegInf);
  for (int c = 0; c < n; c += N) vmax = hn::Max(vmax, hn::LoadU(df, row + c));
  return hn::GetLane(hn::MaxOfLanes(df, vmax));
}

// p = exp(x * x_scale - m) in place; returns the sum of p.
float ExpRow(float* row, int n, float x_scale, float m) {
  const DF df;
  const int N = int(hn::Lanes(df));
  const auto vm = hn::Set(df, m), vscale = hn::Set(df, x_scale);
  auto vsum = hn::Zero(df);
  for (int c = 0; c < n; c += N) {
    const auto p = ExpNonPositive(df, hn::MulSub(hn::LoadU(df, row + c), vscale, vm));
    hn::StoreU(p, df, row + c);
    vsum = hn::Add(vsum, p);
  }
  return hn::GetLane(hn::SumOfLanes(df, vsum));
}

void SoftmaxUpdateImpl(const SoftmaxStep& st) {
  const DF df;
  const size_t N = hn::Lanes(df);
  // Plain tiles skip the transform pass: the scale folds into the exponent.
  const bool plain = st.bounds == nullptr && st.softcap == 0 && st.alibi == nullptr && st.cols == st.s_stride &&
                     st.scale > 0;
  for (int r = 0; r < st.rows; ++r) {
    float* row = st.s + int64_t(r) * st.s_stride;
    const float row_max = plain ? RawRowMax(row, st.s_stride) * st.scale : TransformRow(st, r, row);
    const float m_old = st.m[r];
    const float m_new = std::max(m_old, row_max);
    if (m_new == kNegInf) {  // nothing visible so far: keep the accumulators at zero
      st.alpha[r] = 1.0f;
      for (int c = 0; c < st.s_stride; c += int(N)) hn::StoreU(hn::Zero(df), df, row + c);
      continue;
    }
    const float sum = ExpRow(row, st.s_stride, plain ? st.scale : 1.0f, m_new);
    const float alpha = m_old == kNegInf ? 0.0f : std::exp(m_old - m_new);
    st.alpha[r] = alpha;
    st.l[r] = st.l[r] * alpha + sum;
    st.m[r] = m_new;
  }
}

// Rows per register tile: 6 x 4 accumulators where the target has 32 vector registers (AVX-512),
// 4 x 4 where it has 16 (AVX2 and below).
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
constexpr int kTileRows = 6;
#else
constexpr int kTileRows = 4;
#endif

// R rows x NV vectors of keys: s[r, c..] = sum_i q[r, i] * kt[i, c..]
template <int R, int NV>
void QkMicro(const float* q, int d, const float* kt, int kt_stride, float* s, int s_stride) {
  const DF df;
  const size_t N = hn::Lanes(df);
  hn::Vec<DF> acc[R][NV];
  _Pragma("GCC unroll 16")
  for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 16")
    for (int v = 0; v < NV; ++v) acc[r][v] = hn::Zero(df);
  for (int i = 0; i < d; ++i) {
    hn::Vec<DF> k[NV];
    _Pragma("GCC unroll 16")
    for (int v = 0; v < NV; ++v) k[v] = hn::LoadU(df, kt + int64_t(i) * kt_stride + v * N);
    _Pragma("GCC unroll 16")
    for (int r = 0; r < R; ++r) {
      const auto qv = hn::Set(df, q[int64_t(r) * d + i]);
      _Pragma("GCC unroll 16")
      for (int v = 0; v < NV; ++v) acc[r][v] = hn::MulAdd(qv, k[v], acc[r][v]);
    }
  }
  _Pragma("GCC unroll 16")
  for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 16")
    for (int v = 0; v < NV; ++v) hn::StoreU(acc[r][v], df, s + int64_t(r) * s_stride + v * N);
}

template <int NV>
void QkRows(const float* q, int rows, int d, const float* kt, int cols, float* s, int s_stride) {
  switch (rows) {
    case 6: return QkMicro<6, NV>(q, d, kt, cols, s, s_stride);
    case 5: return QkMicro<5, NV>(q, d, kt, cols, s, s_stride);
    case 4: return QkMicro<4, NV>(q, d, kt, cols, s, s_stride);
    case 3: return QkMicro<3, NV>(q, d, kt, cols, s, s_stride);
    case 2: return QkMicro<2, NV>(q, d, kt, cols, s, s_stride);
    default: return QkMicro<1, NV>(q, d, kt, cols, s, s_stride);
  }
}

void QkF32Impl(const float* q, int rows, int d, const float* kt, int cols, float* s, int s_stride) {
  const int N = int(hn::Lanes(DF()));
  for (int r0 = 0; r0 < rows; r0 += kTileRows) {
    const int r = std::min(kTileRows, rows - r0);
    const float* qr = q + int64_t(r0) * d;
    float* sr = s + int64_t(r0) * s_stride;
    int c0 = 0;
    for (; c0 + 4 * N <= cols; c0 += 4 * N) QkRows<4>(qr, r, d, kt + c0, cols, sr + c0, s_stride);
    for (; c0 < cols; c0 += N) QkRows<1>(qr, r, d, kt + c0, cols, sr + c0, s_stride);
  }
}

// R rows x NV vectors of value dims: o = alpha * o + p @ v, on a slice of v's and o's columns.
template <int R, int NV>
void PvMicro(const float* p, int cols, int p_stride, const float* v, int v_stride, float* o, int o_stride,
             const float* alpha) {
  const DF df;
  const size_t N = hn::Lanes(df);
  hn::Vec<DF> acc[R][NV];
  _Pragma("GCC unroll 16")
  for (int r = 0; r < R; ++r) {
    const auto a = hn::Set(df, alpha[r]);
    _Pragma("GCC unroll 16")
    for (int j = 0; j < NV; ++j) acc[r][j] = hn::Mul(a, hn::LoadU(df, o + int64_t(r) * o_stride + j * N));
  }
  for (int c = 0; c < cols; ++c) {
    hn::Vec<DF> vv[NV];
    _Pragma("GCC unroll 16")
    for (int j = 0; j < NV; ++j) vv[j] = hn::LoadU(df, v + int64_t(c) * v_stride + j * N);
    _Pragma("GCC unroll 16")
    for (int r = 0; r < R; ++r) {
      const auto pv = hn::Set(df, p[int64_t(r) * p_stride + c]);
      _Pragma("GCC unroll 16")
      for (int j = 0; j < NV; ++j) acc[r][j] = hn::MulAdd(pv, vv[j], acc[r][j]);
    }
  }
  _Pragma("GCC unroll 16")
  for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 16")
    for (int j = 0; j < NV; ++j) hn::StoreU(acc[r][j], df, o + int64_t(r) * o_stride + j * N);
}

template <int NV>
void PvRows(const float* p, int rows, int cols, int p_stride, const float* v, int dv, float* o, const float* alpha) {
  switch (rows) {
    case 6: return PvMicro<6, NV>(p, cols, p_stride, v, dv, o, dv, alpha);
    case 5: return PvMicro<5, NV>(p, cols, p_stride, v, dv, o, dv, alpha);
    case 4: return PvMicro<4, NV>(p, cols, p_stride, v, dv, o, dv, alpha);
    case 3: return PvMicro<3, NV>(p, cols, p_stride, v, dv, o, dv, alpha);
    case 2: return PvMicro<2, NV>(p, cols, p_stride, v, dv, o, dv, alpha);
    default: return PvMicro<1, NV>(p, cols, p_stride, v, dv, o, dv, alpha);
  }
}

void PvF32Impl(const float* p, int rows, int cols, int p_stride, const float* v, int dv, float* o,
               const float* alpha) {
  const int N = int(hn::Lanes(DF()));
  for (int r0 = 0; r0 < rows; r0 += kTileRows) {
    const int r = std::min(kTileRows, rows - r0);
    const float* pr = p + int64_t(r0) * p_stride;
    float* orow = o + int64_t(r0) * dv;
    int j0 = 0;
    for (; j0 + 4 * N <= dv; j0 += 4 * N) PvRows<4>(pr, r, cols, p_stride, v + j0, dv, orow + j0, alpha + r0);
    for (; j0 < dv; j0 += N) PvRows<1>(pr, r, cols, p_stride, v + j0, dv, orow + j0, alpha + r0);
  }
}

float Dot(const float* a, const float* b, int d) {
  const DF df;
  const int N = int(hn::Lanes(df));
  auto acc = hn::Zero(df);
  int i = 0;
  for (; i + N <= d; i += N) acc = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), acc);
  float sum = hn::GetLane(hn::SumOfLanes(df, acc));
  for (; i < d; ++i) sum += a[i] * b[i];
  return sum;
}

void DotRowsF32Impl(const float* q, int g, int d, const float* k, int64_t k_stride, int n, float* s, int s_stride) {
  for (int c = 0; c < n; ++c)
    for (int h = 0; h < g; ++h) s[int64_t(h) * s_stride + c] = Dot(q + int64_t(h) * d, k + c * k_stride, d);
}

void AccumulateRowsF32Impl(const float* p, int g, int p_stride, int n, const float* v, int64_t v_stride, int dv,
                           float* o, const float* alpha) {
  const DF df;
  const int N = int(hn::Lanes(df));
  for (int h = 0; h < g; ++h) {
    float* orow = o + int64_t(h) * dv;
    const auto a = hn::Set(df, alpha[h]);
    int j = 0;
    for (; j + N <= dv; j += N) hn::StoreU(hn::Mul(a, hn::LoadU(df, orow + j)), df, orow + j);
    for (; j < dv; ++j) orow[j] *= alpha[h];
  }
  for (int c = 0; c < n; ++c) {
    const float* vrow = v + c * v_stride;
    for (int h = 0; h < g; ++h) {
      float* orow = o + int64_t(h) * dv;
      const float pc = p[int64_t(h) * p_stride + c];
      const auto pv = hn::Set(df, pc);
      int j = 0;
      for (; j + N <= dv; j += N) hn::StoreU(hn::MulAdd(pv, hn::LoadU(df, vrow + j), hn::LoadU(df, orow + j)), df, orow + j);
      for (; j < dv; ++j) orow[j] += pc * vrow[j];
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace qattn::tile
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qattn::tile {
HWY_EXPORT(SoftmaxUpdateImpl);
HWY_EXPORT(QkF32Impl);
HWY_EXPORT(PvF32Impl);
HWY_EXPORT(DotRowsF32Impl);
HWY_EXPORT(AccumulateRowsF32Impl);

void SoftmaxUpdate(const SoftmaxStep& step) { HWY_DYNAMIC_DISPATCH(SoftmaxUpdateImpl)(step); }
void QkF32(const float* q, int rows, int d, const float* kt, int cols, float* s, int s_stride) {
  HWY_DYNAMIC_DISPATCH(QkF32Impl)(q, rows, d, kt, cols, s, s_stride);
}
void PvF32(const float* p, int rows, int cols, int p_stride, const float* v, int dv, float* o, const float* alpha) {
  HWY_DYNAMIC_DISPATCH(PvF32Impl)(p, rows, cols, p_stride, v, dv, o, alpha);
}
void DotRowsF32(const float* q, int g, int d, const float* k, int64_t k_stride, int n, float* s, int s_stride) {
  HWY_DYNAMIC_DISPATCH(DotRowsF32Impl)(q, g, d, k, k_stride, n, s, s_stride);
}
void AccumulateRowsF32(const float* p, int g, int p_stride, int n, const float* v, int64_t v_stride, int dv,
                       float* o, const float* alpha) {
  HWY_DYNAMIC_DISPATCH(AccumulateRowsF32Impl)(p, g, p_stride, n, v, v_stride, dv, o, alpha);
}
}  // namespace qattn::tile
#endif  // HWY_ONCE
