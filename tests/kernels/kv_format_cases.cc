// KV tile formats (kv_format.h): quantizer round trips against their exact formulas and bounds,
// bit-exact token copies, KvDotRun against fp64 dot products, and AttendDecodePaged against an fp64
// reference on the dequantized K/V (runs of tiles with partial last tiles, gapped positions, every
// head map, hook and split count), under every ISA cap this CPU supports.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <random>

#include "core/thread_pool.h"
#include "kernels/kv_format.h"
#include "reference/reference_attention.h"
#include "test_problem.h"

namespace qattn::test {
namespace {

constexpr KvDType kAllKv[] = {KvDType::kF32, KvDType::kBF16, KvDType::kF16, KvDType::kInt8, KvDType::kInt4};
constexpr double kInf = std::numeric_limits<double>::infinity();

// Head dims the formats take: plain rows any, int8 multiples of 4, int4 multiples of 8.
bool Supports(KvDType t, int d) { return t == KvDType::kInt8 ? d % 4 == 0 : t == KvDType::kInt4 ? d % 8 == 0 : true; }
// Small and odd head dims (the shipped models use 8) next to the usual ones.
constexpr int kOddDims[] = {1, 5, 8, 12, 16, 24, 40, 48, 80};

std::vector<float> Normal(std::mt19937_64& rng, size_t n, float sd = 1.0f) {
  std::normal_distribution<float> dist(0.0f, sd);
  std::vector<float> x(n);
  for (float& f : x) f = dist(rng);
  return x;
}

// A tile buffer poisoned with 0xff (NaN for float formats and scales) so reads of unwritten slots show.
std::vector<uint8_t> Tiles(KvDType t, int d, bool value, int64_t tiles) {
  return std::vector<uint8_t>(KvTileBytes(t, d, value) * size_t(std::max<int64_t>(1, tiles)), 0xff);
}

// ---- round trips ----

// The int8 formula: scale = max|x| / 127, q = clamp(round(x / scale), +-127).
float Int8Expected(const float* x, int d, int i, float* scale) {
  float amax = 0;
  for (int j = 0; j < d; ++j) amax = std::max(amax, std::fabs(x[j]));
  *scale = amax / 127.0f;
  if (*scale == 0) return 0.0f;
  return std::clamp(std::nearbyint(x[i] / *scale), -127.0f, 127.0f) * *scale;
}

// The int4 formula per 32 dims (the last group d % 32 dims, so the whole head when d < 32):
// scale = bf16(x_m / -8), q = clamp(round(x / scale) + 8, 0, 15).
float Int4Expected(const float* x, int d, int i, float* scale, bool* clamped) {
  const float* g = x + i / 32 * 32;
  const int width = std::min(32, d - i / 32 * 32);
  float xm = 0;
  for (int j = 0; j < width; ++j)
    if (std::fabs(g[j]) > std::fabs(xm)) xm = g[j];
  *scale = RoundTrip(xm / -8.0f, DType::kBF16);
  if (*scale == 0) return (*clamped = false, 0.0f);
  const float r = std::nearbyint(x[i] / *scale) + 8.0f;
  *clamped = r > 15.0f || r < 0.0f;
  return (std::clamp(r, 0.0f, 15.0f) - 8.0f) * *scale;
}

void CheckRoundTrip(KvDType t, bool value, int d, std::mt19937_64& rng) {
  const std::string where = std::string(KvDTypeName(t)) + (value ? " V" : " K") + " d=" + std::to_string(d);
  std::vector<float> x = Normal(rng, size_t(16) * d, 2.0f);  // [16, d]
  std::fill(x.begin() + 3 * d, x.begin() + 4 * d, 0.0f);      // an all-zero token
  x[size_t(5) * d + std::min(7, d - 1)] = 1e-30f;              // a tiny one next to normal values
  for (int i = 0; i < d; ++i) x[size_t(6) * d + i] = i % 2 ? 3.0f : -3.0f;  // +-x_m: int4 clamps the +side
  std::vector<uint8_t> tile = Tiles(t, d, value, 1);
  for (int slot = 15; slot >= 0; --slot) StoreKvToken(t, value, &x[size_t(slot) * d], d, tile.data(), slot);
  std::vector<float> y(size_t(16) * d);  // [16, d]
  LoadKvTokens(t, value, tile.data(), 16, d, y.data());
  for (int tok = 0; tok < 16; ++tok)
    for (int i = 0; i < d; ++i) {
      const float* xt = &x[size_t(tok) * d];
      const float got = y[size_t(tok) * d + i];
      float want = 0, bound = 0, scale = 0;
      bool clamped = false;
      switch (t) {
        case KvDType::kF32: want = xt[i]; break;
        case KvDType::kBF16: want = RoundTrip(xt[i], DType::kBF16), bound = std::fabs(xt[i]) / 256; break;
        case KvDType::kF16: want = RoundTrip(xt[i], DType::kF16), bound = std::fabs(xt[i]) / 2048 + 6e-8f; break;
        case KvDType::kInt8: want = Int8Expected(xt, d, i, &scale), bound = scale / 2; break;
        case KvDType::kInt4:
          want = Int4Expected(xt, d, i, &scale, &clamped);
          bound = std::fabs(scale) * (clamped ? 1.0f : 0.5f);  // only +x_m's mirror can clamp (q = 16)
          break;
      }
      ASSERT_EQ(got, want) << where << " token " << tok << " dim " << i << " x " << xt[i];
      ASSERT_LE(std::fabs(got - xt[i]), bound * (1 + 1e-6f)) << where << " token " << tok << " dim " << i;
    }
}

TEST(KvFormat, RoundTripMatchesFormulaAndBound) {
  std::mt19937_64 rng(7);
  for (KvDType t : kAllKv)
    for (bool value : {false, true})
      for (int d : {32, 64, 96, 128, 256}) CheckRoundTrip(t, value, d, rng);
}

TEST(KvFormat, RoundTripAnyHeadDim) {
  std::mt19937_64 rng(8);
  for (KvDType t : kAllKv)
    for (bool value : {false, true})
      for (int d : kOddDims)
        if (Supports(t, d)) CheckRoundTrip(t, value, d, rng);
}

TEST(KvFormat, SizesAndErrors) {
  EXPECT_EQ(KvTileBytes(KvDType::kBF16, 128, false), 4096u);
  EXPECT_EQ(KvTileBytes(KvDType::kInt8, 128, false), 2048u + 64u);
  EXPECT_EQ(KvTileBytes(KvDType::kInt4, 128, true), 1024u + 128u);
  EXPECT_EQ(KvTileBytes(KvDType::kInt4, 48, false), 384u + 2 * 32u);  // groups of 32 and 16 dims
  EXPECT_EQ(KvTileBytes(KvDType::kInt4, 8, true), 64u + 32u);         // one group: the whole head
  EXPECT_EQ(KvTileBytes(KvDType::kInt8, 12, false), 192u + 64u);
  EXPECT_EQ(KvTileBytes(KvDType::kF32, 5, false), 320u);
  EXPECT_EQ(KvTileBytes(KvDType::kBF16, 1, true), 32u);
  for (KvDType t : kAllKv) EXPECT_THROW(KvTileBytes(t, 0, false), InvalidArgument);
  EXPECT_THROW(KvTileBytes(KvDType::kInt8, 6, false), InvalidArgument);
  EXPECT_THROW(KvTileBytes(KvDType::kInt4, 12, true), InvalidArgument);
  EXPECT_THROW(KvTileBytes(KvDType::kInt4, 36, false), InvalidArgument);
  EXPECT_THROW(ParseKvDType("int2"), InvalidArgument);
  for (KvDType t : kAllKv) EXPECT_EQ(ParseKvDType(KvDTypeName(t)), t);
  EXPECT_TRUE(IsQuantized(KvDType::kInt4) && IsQuantized(KvDType::kInt8) && !IsQuantized(KvDType::kBF16));
}

// A copied token reads back bit for bit, and the destination tile's bytes equal those of storing
// the same vector there (other slots untouched).
TEST(KvFormat, CopyTokenIsBitExact) {
  std::mt19937_64 rng(11);
  for (KvDType t : kAllKv)
    for (bool value : {false, true})
      for (int d : {8, 24, 48, 64, 80, 128}) {
        const size_t tb = KvTileBytes(t, d, value);
        std::vector<float> a = Normal(rng, size_t(16) * d), b = Normal(rng, size_t(16) * d);  // [16, d] each
        std::vector<uint8_t> ta = Tiles(t, d, value, 1), tb_tile = Tiles(t, d, value, 1);
        for (int s = 0; s < 16; ++s) {
          StoreKvToken(t, value, &a[size_t(s) * d], d, ta.data(), s);
          StoreKvToken(t, value, &b[size_t(s) * d], d, tb_tile.data(), s);
        }
        for (int src : {0, 5, 15})
          for (int dst : {0, 3, 15}) {
            std::vector<uint8_t> copy = tb_tile, stored = tb_tile;
            CopyKvToken(t, value, d, ta.data(), src, copy.data(), dst);
            StoreKvToken(t, value, &a[size_t(src) * d], d, stored.data(), dst);
            ASSERT_EQ(0, std::memcmp(copy.data(), stored.data(), tb))
                << KvDTypeName(t) << (value ? " V" : " K") << " d=" << d << " " << src << "->" << dst;
            std::vector<float> x(d), y(size_t(16) * d);
            LoadKvTokens(t, value, ta.data(), 16, d, y.data());
            std::memcpy(x.data(), &y[size_t(src) * d], size_t(d) * 4);
            LoadKvTokens(t, value, copy.data(), 16, d, y.data());
            ASSERT_EQ(0, std::memcmp(x.data(), &y[size_t(dst) * d], size_t(d) * 4));
          }
        // In place, within one tile.
        std::vector<uint8_t> self = ta, stored = ta;
        CopyKvToken(t, value, d, self.data(), 2, self.data(), 9);
        StoreKvToken(t, value, &a[size_t(2) * d], d, stored.data(), 9);
        ASSERT_EQ(0, std::memcmp(self.data(), stored.data(), tb)) << KvDTypeName(t);
      }
}

// ---- KvDotRun ----

// q rounded to what the format's dot product computes exactly: bf16 for bf16 keys (vdpbf16ps),
// the per-head int8 grid (max|q| / 127) for quantized keys.
void RoundQuery(KvDType t, float* q, int d) {
  if (t == KvDType::kBF16)
    for (int i = 0; i < d; ++i) q[i] = RoundTrip(q[i], DType::kBF16);
  if (!IsQuantized(t)) return;
  float amax = 0;
  for (int i = 0; i < d; ++i) amax = std::max(amax, std::fabs(q[i]));
  const float s = amax / 127.0f;
  for (int i = 0; s > 0 && i < d; ++i) q[i] = std::nearbyint(q[i] / s) * s;
}

struct StoredRun {
  std::vector<uint8_t> k, v;   // tiles
  std::vector<float> kf, vf;   // [tokens, d] dequantized
};

StoredRun StoreRun(KvDType t, int d, int dv, int tokens, std::mt19937_64& rng, float k_sd = 1.0f) {
  StoredRun r;
  const int tiles = (tokens + 15) / 16;
  r.k = Tiles(t, d, false, tiles);
  r.v = Tiles(t, dv, true, tiles);
  const std::vector<float> k = Normal(rng, size_t(tokens) * d, k_sd), v = Normal(rng, size_t(tokens) * dv);
  r.kf.resize(size_t(tokens) * d);
  r.vf.resize(size_t(tokens) * dv);
  const size_t kb = KvTileBytes(t, d, false), vb = KvTileBytes(t, dv, true);
  for (int i = 0; i < tokens; ++i) {
    StoreKvToken(t, false, &k[size_t(i) * d], d, &r.k[(i / 16) * kb], i % 16);
    StoreKvToken(t, true, &v[size_t(i) * dv], dv, &r.v[(i / 16) * vb], i % 16);
  }
  for (int i = 0; i < tiles; ++i) {
    const int n = std::min(16, tokens - i * 16);
    LoadKvTokens(t, false, &r.k[i * kb], n, d, &r.kf[size_t(i) * 16 * d]);
    LoadKvTokens(t, true, &r.v[i * vb], n, dv, &r.vf[size_t(i) * 16 * dv]);
  }
  return r;
}

TEST(KvFormat, DotRunMatchesFp64) {
  std::mt19937_64 rng(13);
  IsaCapGuard guard;
  for (Isa isa : SupportedIsas()) {
    SetIsaCap(isa);
    for (KvDType t : kAllKv)
      for (int d : {5, 8, 16, 24, 48, 64, 80, 128})
        for (bool on_grid : {true, false}) {
          if (!Supports(t, d)) continue;
          const int g = 5, tokens = 16 * 9 + 7;
          const StoredRun r = StoreRun(t, d, d, tokens, rng);
          std::vector<float> q = Normal(rng, size_t(g) * d);  // [g, d]
          if (on_grid)
            for (int h = 0; h < g; ++h) RoundQuery(t, &q[size_t(h) * d], d);
          const int64_t stride = tokens + 3;
          std::vector<float> s(size_t(g) * stride, -1.0f);  // [g, stride]
          KvRun run;
          run.k = r.k.data(), run.tokens = tokens;
          KvDotRun(t, q.data(), g, d, run, s.data(), stride);
          for (int h = 0; h < g; ++h) {
            float qmax = 0;
            for (int i = 0; i < d; ++i) qmax = std::max(qmax, std::fabs(q[size_t(h) * d + i]));
            for (int c = 0; c < tokens; ++c) {
              double want = 0, mag = 0, kabs = 0;
              for (int i = 0; i < d; ++i) {
                const double qi = q[size_t(h) * d + i], ki = r.kf[size_t(c) * d + i];
                want += qi * ki, mag += std::fabs(qi * ki), kabs += std::fabs(ki);
              }
              // Off the grid, quantized keys see q rounded to int8: at most (max|q| / 127) / 2 per dim;
              // bf16 keys on the vdpbf16ps path see q rounded to bf16.
              double bound = 2e-6 * mag + 1e-30;
              if (!on_grid && IsQuantized(t)) bound += kabs * qmax / 254.0;
              if (!on_grid && t == KvDType::kBF16) bound += mag / 256;
              ASSERT_LE(std::fabs(s[size_t(h) * stride + c] - want), bound)
                  << IsaName(isa) << " " << KvDTypeName(t) << " d=" << d << " grid=" << on_grid << " head " << h
                  << " key " << c;
            }
            ASSERT_EQ(s[size_t(h) * stride + tokens], -1.0f) << "wrote past the run";
          }
        }
  }
}

// ---- AttendDecodePaged ----

struct PagedCase {
  std::string name;
  KvDType t = KvDType::kInt8;
  int hq = 8, hkv = 2, d = 64, dv = 64;
  std::vector<int> lens;  // [batch] tokens of KV head 0; head h has lens - h * head_skew (>= 0)
  int head_skew = 0;
  int max_run = 100;      // runs of 1..max_run tokens
  bool gaps = false;      // positions arrays with gaps of 1..3
  int64_t first_pos = 0;
  int query_after = 0;    // query position = last key position + query_after (may be < 0: causal hides keys)
  int window_left = -1, sink_tokens = 0;
  float softcap = 0, scale = 0;
  bool alibi = false, sink_logits = false;
  int splits = 0, threads = 2;
};

struct PagedProblem {
  PagedDecodeArgs args;
  std::vector<StoredRun> stored;                     // [runs]
  std::vector<std::vector<int32_t>> positions;       // [runs][tokens]
  std::vector<float> q, out, lse, alibi, sinks;      // q [batch, hq, d]; out [batch, hq, dv]; lse [batch, hq]
};

std::unique_ptr<PagedProblem> MakePaged(const PagedCase& c, uint64_t seed) {
  auto p = std::make_unique<PagedProblem>();
  std::mt19937_64 rng(seed);
  const int batch = int(c.lens.size());
  p->q = Normal(rng, size_t(batch) * c.hq * c.d);
  for (size_t h = 0; h < size_t(batch) * c.hq; ++h) RoundQuery(c.t, &p->q[h * c.d], c.d);
  PagedDecodeArgs& a = p->args;
  a.map = HeadMap{c.hq, c.hkv, c.hkv};
  a.d_v = c.dv;
  a.kv_dtype = c.t;
  a.run_offsets = {0};
  for (int s = 0; s < batch; ++s) {
    int64_t last = c.first_pos - 1;
    for (int h = 0; h < c.hkv; ++h) {
      int left = std::max(0, c.lens[s] - h * c.head_skew);
      int64_t pos = c.first_pos;
      while (left > 0) {
        const int n = std::min(left, 1 + int(rng() % uint64_t(c.max_run)));
        p->stored.push_back(StoreRun(c.t, c.d, c.dv, n, rng));
        std::vector<int32_t> ps(n);
        for (int i = 0; i < n; ++i) ps[i] = int32_t(pos), pos += c.gaps ? 1 + int(rng() % 3) : 1;
        p->positions.push_back(ps);
        last = std::max<int64_t>(last, ps.back());
        left -= n;
      }
      a.run_offsets.push_back(int64_t(p->stored.size()));
    }
    a.query_positions.push_back(last + c.query_after);
  }
  for (size_t r = 0; r < p->stored.size(); ++r) {
    KvRun run;
    run.k = p->stored[r].k.data(), run.v = p->stored[r].v.data();
    run.tokens = int32_t(p->positions[r].size());
    run.position = p->positions[r][0];
    run.positions = c.gaps ? p->positions[r].data() : nullptr;
    a.runs.push_back(run);
  }
  for (int h = 0; c.alibi && h < c.hq; ++h) p->alibi.push_back(std::exp2(-8.0f * float(h + 1) / float(c.hq)));
  std::uniform_real_distribution<float> sink_dist(-2.0f, 4.0f);
  for (int h = 0; c.sink_logits && h < c.hq; ++h) p->sinks.push_back(sink_dist(rng));
  a.variant.scale = c.scale;
  a.variant.window_left = c.window_left;
  a.variant.sink_tokens = c.sink_tokens;
  a.variant.softcap = c.softcap;
  a.variant.alibi_slopes = p->alibi.empty() ? nullptr : p->alibi.data();
  a.variant.sink_logits = p->sinks.empty() ? nullptr : p->sinks.data();
  a.num_splits = c.splits;
  a.q = MakeView(p->q.data(), DType::kF32, {batch, c.hq, c.d});
  return p;
}

// Plain attention of one query head over its KV head's runs in T arithmetic; `round` models the
// naive same-precision rounding of the logits, probabilities and output (identity for fp64).
// u8_weights: the probabilities rounded to 8 bits (int8; 7 bits and a sign for int4) against the
// row's largest (the quantized formats' P.V runs on vpdpbusd with 8-bit weights, per 128 keys
// against their own max).
template <typename T, typename Round>
void ReferenceHead(const PagedProblem& p, const PagedCase& c, int s, int qh, Round round, bool u8_weights, T* out,
                   T* lse) {
  const auto& a = p.args;
  const int kvh = qh / (c.hq / c.hkv);
  const int64_t qpos = a.query_positions[s];
  const T scale = c.scale > 0 ? T(c.scale) : T(1) / std::sqrt(T(c.d));
  std::vector<T> logits;
  std::vector<const float*> vrows;
  for (int64_t r = a.run_offsets[size_t(s) * c.hkv + kvh]; r < a.run_offsets[size_t(s) * c.hkv + kvh + 1]; ++r)
    for (size_t i = 0; i < p.positions[r].size(); ++i) {
      const int64_t pos = p.positions[r][i];
      const bool vis = pos <= qpos && (c.window_left < 0 || pos >= qpos - c.window_left || pos < c.sink_tokens);
      if (!vis) continue;
      T x = 0;
      for (int j = 0; j < c.d; ++j) x += T(p.q[(size_t(s) * c.hq + qh) * c.d + j]) * T(p.stored[r].kf[i * c.d + j]);
      x = round(x * scale);
      if (c.softcap > 0) x = round(T(c.softcap) * std::tanh(x / T(c.softcap)));
      if (c.alibi) x = round(x - T(p.alibi[qh]) * T(std::llabs(qpos - pos)));
      logits.push_back(x);
      vrows.push_back(&p.stored[r].vf[i * c.dv]);
    }
  T m = c.sink_logits ? T(p.sinks[qh]) : -T(kInf);
  for (T x : logits) m = std::max(m, x);
  T l = c.sink_logits ? std::exp(T(p.sinks[qh]) - m) : T(0);
  std::fill(out, out + c.dv, T(0));
  T pmax = 0;
  for (T x : logits) pmax = std::max(pmax, T(std::exp(x - m)));
  for (size_t i = 0; i < logits.size(); ++i) {
    const T w = round(std::exp(logits[i] - m));
    l += w;
    const T levels = c.t == KvDType::kInt4 ? 127 : 255;
    const T wv = u8_weights && pmax > 0 ? std::nearbyint(w / pmax * levels) * pmax / levels : w;
    for (int j = 0; j < c.dv; ++j) out[j] += wv * T(vrows[i][j]);
  }
  for (int j = 0; l > 0 && j < c.dv; ++j) out[j] = round(out[j] / l);
  *lse = l > 0 ? m + std::log(l) : -T(kInf);
}

void RunPagedCase(const PagedCase& c) {
  const auto p = MakePaged(c, std::hash<std::string>{}(c.name));
  const int batch = int(c.lens.size()), rows = batch * c.hq;
  std::vector<double> ref_out(size_t(rows) * c.dv), ref_lse(rows), naive_out(ref_out.size()), naive_lse(rows);
  std::vector<float> nf(c.dv);
  auto rnd = [&](float x) { return c.t == KvDType::kBF16 ? RoundTrip(x, DType::kBF16) : x; };
  for (int s = 0; s < batch; ++s)
    for (int h = 0; h < c.hq; ++h) {
      const size_t row = size_t(s) * c.hq + h;
      ReferenceHead<double>(*p, c, s, h, [](double x) { return x; }, false, &ref_out[row * c.dv], &ref_lse[row]);
      float nl;
      ReferenceHead<float>(*p, c, s, h, rnd, IsQuantized(c.t), nf.data(), &nl);
      std::copy(nf.begin(), nf.end(), &naive_out[row * c.dv]);
      naive_lse[row] = nl;
    }
  const ref::Budget ob = ref::ErrorBudget(ref_out, naive_out), lb = ref::ErrorBudget(ref_lse, naive_lse);
  IsaCapGuard guard;
  for (Isa isa : SupportedIsas()) {
    SetIsaCap(isa);
    const std::string where = "[isa " + IsaName(isa) + "] " + c.name;
    std::vector<float> out(size_t(rows) * c.dv, NAN), lse(rows, NAN);
    PagedDecodeArgs a = p->args;
    a.out = MakeView(out.data(), DType::kF32, {batch, c.hq, c.dv});
    a.lse = lse.data();
    std::unique_ptr<ThreadPool> pool = c.threads > 0 ? std::make_unique<ThreadPool>(c.threads) : nullptr;
    AttendDecodePaged(a, pool.get());
    double out_err = 0, lse_err = 0;
    for (int r = 0; r < rows; ++r) {
      const bool none = std::isinf(ref_lse[r]);
      ASSERT_EQ(std::isinf(lse[r]) && lse[r] < 0, none) << where << " row " << r << " lse " << lse[r];
      if (!none) lse_err = std::max(lse_err, std::fabs(lse[r] - ref_lse[r]));
      for (int j = 0; j < c.dv; ++j) {
        const float o = out[size_t(r) * c.dv + j];
        ASSERT_TRUE(std::isfinite(o)) << where << " row " << r;
        if (none && !c.sink_logits) {
          ASSERT_EQ(o, 0.0f) << where << " row " << r << " sees no key";
        }
        out_err = std::max(out_err, std::fabs(o - ref_out[size_t(r) * c.dv + j]));
      }
    }
    if (std::getenv("QATTN_TEST_VERBOSE")) std::cout << where << ": out err " << out_err << " / " << ob.limit() << "\n";
    EXPECT_LE(out_err, ob.limit()) << where << ": output error over budget 2*" << ob.naive_err << "+" << ob.eps;
    EXPECT_LE(lse_err, lb.limit()) << where << ": lse error over budget 2*" << lb.naive_err << "+" << lb.eps;
  }
}

std::vector<PagedCase> PagedCases() {
  std::vector<PagedCase> cases;
  auto add = [&](std::string tag, PagedCase c) {
    c.name = tag + "_" + KvDTypeName(c.t);
    cases.push_back(c);
  };
  for (KvDType t : kAllKv) {
    PagedCase base;
    base.t = t;
    base.lens = {300, 17, 0, 1100};
    for (int splits : {1, 3, 0}) {
      PagedCase c = base;
      c.splits = splits;
      add("splits" + std::to_string(splits), c);
    }
    for (int ratio : {1, 4, 8}) {
      PagedCase c = base;
      c.hq = 2 * ratio, c.hkv = 2, c.d = c.dv = 128, c.lens = {200, 513};
      add("gqa" + std::to_string(ratio), c);
    }
    PagedCase mqa = base;
    mqa.hq = 8, mqa.hkv = 1, mqa.lens = {700};
    add("mqa", mqa);
    PagedCase pair_skew = base;  // tiles per head 38 38 37 37 and 132 131 131 131: pairs where equal
    pair_skew.head_skew = 5, pair_skew.hq = 16, pair_skew.hkv = 4, pair_skew.lens = {600, 2100};
    add("paired_heads_lengths_differ", pair_skew);
    PagedCase skew = base;
    skew.head_skew = 37, skew.hq = 12, skew.hkv = 3, skew.lens = {90, 400};
    add("head_lengths_differ", skew);
    PagedCase gaps = base;
    gaps.gaps = true, gaps.first_pos = 5, gaps.query_after = 2;
    add("gapped_positions", gaps);
    PagedCase window = base;
    window.window_left = 100, window.sink_tokens = 4, window.lens = {1100, 30};
    add("window_sinks", window);
    PagedCase wgaps = window;
    wgaps.gaps = true;
    add("window_sinks_gapped", wgaps);
    PagedCase hooks = base;
    hooks.alibi = true, hooks.softcap = 5.0f, hooks.sink_logits = true, hooks.scale = 0.3f, hooks.lens = {400, 0, 33};
    add("alibi_softcap_sinklogits", hooks);
    PagedCase hgaps = hooks;
    hgaps.gaps = true, hgaps.first_pos = 40;
    add("alibi_softcap_sinklogits_gapped", hgaps);
    PagedCase offset = base;
    offset.first_pos = 1000, offset.alibi = true, offset.window_left = 50;
    add("positions_from_1000", offset);
    PagedCase future = base;
    future.query_after = -20, future.lens = {100, 5};  // keys after the query are hidden (causal)
    add("keys_after_query", future);
    PagedCase runs16 = base;
    runs16.max_run = 16, runs16.threads = 0, runs16.lens = {257};
    add("short_runs_null_pool", runs16);
    PagedCase empty = base;
    empty.lens = {0, 0};
    add("all_empty", empty);
    // Head dims that are not multiples of 16 or 32 (the vector kernels' masked tails, short int4
    // groups), and d != d_v.
    for (int d : {8, 24, 48, 80}) {
      PagedCase c = base;
      c.hq = 8, c.hkv = 2, c.d = c.dv = d, c.lens = {300, 17, 1100};
      add("hd" + std::to_string(d), c);
    }
    PagedCase hd8 = base;
    hd8.d = hd8.dv = 8, hd8.hq = 16, hd8.hkv = 4, hd8.gaps = true, hd8.window_left = 60, hd8.sink_tokens = 2;
    hd8.lens = {700, 40};
    add("hd8_gqa4_window_gapped", hd8);
    PagedCase mixed = base;
    mixed.d = 80, mixed.dv = 24, mixed.hq = 6, mixed.hkv = 3, mixed.alibi = true, mixed.lens = {500};
    add("hd80_dv24", mixed);
    PagedCase odd = base;  // plain rows of any d
    odd.d = 5, odd.dv = 3, odd.hq = 4, odd.hkv = 2, odd.lens = {260, 9};
    if (!IsQuantized(t)) add("hd5_dv3", odd);
  }
  return cases;
}

class Paged : public testing::TestWithParam<PagedCase> {};
TEST_P(Paged, MatchesReference) { RunPagedCase(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Cases, Paged, testing::ValuesIn(PagedCases()),
                         [](const testing::TestParamInfo<PagedCase>& info) { return info.param.name; });

}  // namespace
}  // namespace qattn::test
