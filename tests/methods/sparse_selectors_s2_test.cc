// The gathered-keys executor and the nsa, squeezed, draft, psa and dma selectors against fp64
// computations written here: budget-everything equals dense within the dense error budget, each
// spec oracle (docs/specs/sparse_prefill.md sections 3-7), and lemma 0.4 where it applies. Speed and
// fidelity at real sizes: `qattn bench sparse` / `report sparse`.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <set>

#include "methods/sparse_prefill/gather_attention.h"
#include "methods/sparse_prefill/harness.h"
#include "methods/sparse_prefill/inputs.h"
#include "methods/sparse_prefill/selector_math.h"
#include "methods/sparse_prefill/selectors_s2.h"
#include "reference/reference_attention.h"

namespace qattn::sparse {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

std::vector<double> ToF64(const TensorView& t) {
  std::vector<float> f(t.numel());
  for (int64_t i = 0; i < t.dim(0); ++i)
    for (int64_t h = 0; h < t.dim(1); ++h) ConvertToF32(t.at(i, h), t.dtype, &f[(i * t.dim(1) + h) * t.dim(2)], t.dim(2));
  return {f.begin(), f.end()};
}

// fp64 attention with an explicit rule: visible(h, t, j) and an additive logit bias(h, j).
struct Fp64Result {
  std::vector<double> out, lse;  // [n, H_q, d_v], [n, H_q]
};
using Visible = std::function<bool(int h, int64_t t, int64_t j)>;
using Bias = std::function<double(int h, int64_t j)>;
Fp64Result Fp64Attention(const PrefillProblem& p, const std::vector<double>& k, const std::vector<double>& v,
                         int64_t m, const Visible& visible, const Bias& bias) {
  const int64_t n = p.n();
  const int hq = p.num_q_heads(), hkv = p.num_kv_heads(), d = p.head_dim(), dv = p.value_dim();
  const std::vector<double> q = ToF64(p.q);
  Fp64Result r{std::vector<double>(size_t(n) * hq * dv, 0.0), std::vector<double>(size_t(n) * hq, kNegInf)};
  std::vector<double> s(m);
  for (int64_t t = 0; t < n; ++t) {
    for (int h = 0; h < hq; ++h) {
      const int g = h / p.group();
      double mx = kNegInf;
      for (int64_t j = 0; j < m; ++j) {
        s[j] = kNegInf;
        if (!visible(h, t, j)) continue;
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += q[(t * hq + h) * d + c] * k[(j * hkv + g) * d + c];
        s[j] = dot * double(p.EffectiveScale()) + bias(h, j);
        mx = std::max(mx, s[j]);
      }
      if (mx == kNegInf) continue;
      double z = 0;
      for (int64_t j = 0; j < m; ++j) z += s[j] == kNegInf ? 0.0 : std::exp(s[j] - mx);
      for (int64_t j = 0; j < m; ++j) {
        if (s[j] == kNegInf) continue;
        const double w = std::exp(s[j] - mx) / z;
        for (int c = 0; c < dv; ++c) r.out[(t * hq + h) * dv + c] += w * v[(j * hkv + g) * dv + c];
      }
      r.lse[t * hq + h] = mx + std::log(z);
    }
  }
  return r;
}

Fp64Result Fp64Attention(const PrefillProblem& p, const Visible& visible, const Bias& bias) {
  return Fp64Attention(p, ToF64(p.k), ToF64(p.v), p.n(), visible, bias);
}

double MaxAbsDiff(const std::vector<double>& ref, const float* out) {
  double e = 0;
  for (size_t i = 0; i < ref.size(); ++i) e = std::max(e, std::fabs(ref[i] - double(out[i])));
  return e;
}

Tensor Output(const PrefillProblem& p) { return Tensor(DType::kF32, {p.n(), p.num_q_heads(), p.value_dim()}); }

// The dense error budget (README: 2x the naive same-precision error against fp64, plus eps).
struct DenseCheck {
  std::vector<double> ref;  // fp64 dense causal output
  double limit = 0;
};
DenseCheck DenseBudget(const PrefillProblem& p) {
  ref::RefProblem rp;
  rp.heads = p.heads();
  rp.d_qk = p.head_dim();
  rp.d_v = p.value_dim();
  rp.q = ToF64(p.q);
  rp.k = ToF64(p.k);
  rp.v = ToF64(p.v);
  rp.variant.scale = p.EffectiveScale();
  rp.variant.causal = true;
  const ref::RefResult fp64 = ref::ReferenceAttention(rp);
  const ref::RefResult naive = ref::NaiveAttention(rp, p.q.dtype);
  return {fp64.out, ref::ErrorBudget(fp64.out, naive.out).limit()};
}

// Runs a method by spec and checks it equals dense attention within the dense error budget.
void ExpectDense(const std::string& spec, const PrefillProblem& p, ThreadPool& pool) {
  const DenseCheck dense = DenseBudget(p);
  Tensor out = Output(p), kernel = Output(p);
  MakeSparseMethod(spec)->Run(p, out.view(), nullptr, &pool);
  DenseCausal(p, kernel.view(), nullptr, &pool);
  EXPECT_LE(MaxAbsDiff(dense.ref, out.data<float>()), dense.limit) << spec;
  const Fp64Result mine = Fp64Attention(p, [](int, int64_t t, int64_t j) { return j <= t; }, [](int, int64_t) { return 0.0; });
  EXPECT_LE(MaxAbsDiff(mine.out, out.data<float>()), dense.limit) << spec << " against this file's fp64";
  double vs_kernel = 0;
  for (int64_t i = 0; i < out.numel(); ++i)
    vs_kernel = std::max(vs_kernel, double(std::fabs(out.data<float>()[i] - kernel.data<float>()[i])));
  EXPECT_LE(vs_kernel, 2 * dense.limit) << spec << " against DenseCausal";
}

// ---- the gathered-keys executor ------------------------------------------------------------------

// A random selection: each list keeps earlier keys with probability `keep`, and the keys inside its
// own block per `diag` (0: none, 1: all, 2: a random subset).
KeySelection RandomSelection(const PrefillProblem& p, int heads, int block, double keep, int diag, int64_t m,
                             const std::vector<int64_t>& pos, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  KeySelection sel;
  sel.Init(p.n(), heads, block);
  for (int h = 0; h < heads; ++h) {
    for (int b = 0; b < sel.num_q_blocks; ++b) {
      const int64_t r0 = int64_t(b) * block, r1 = std::min<int64_t>(p.n(), r0 + block);
      for (int64_t j = 0; j < m; ++j) {
        const bool inside = pos[j] > r0 && pos[j] < r1;
        const bool take = pos[j] <= r0 ? u(rng) < keep : inside && (diag == 1 || (diag == 2 && u(rng) < 0.5));
        if (take || (pos[j] >= r1 && u(rng) < 0.05)) sel.Add(int32_t(j));  // beyond the block: must be ignored
      }
      sel.Close();
    }
  }
  return sel;
}

struct GatherCase {
  DType dtype;
  bool per_query_head;
  int block;
  int diag;
  bool bias;
  int64_t shift;  // key positions j + shift (0: the problem's own positions)
};

class GatherTest : public ::testing::TestWithParam<GatherCase> {};

TEST_P(GatherTest, MatchesFp64) {
  const GatherCase c = GetParam();
  const OwnedProblem in = RandomProblem(203, 4, 2, 40, c.dtype, 11);
  const PrefillProblem& p = in.problem;
  ThreadPool pool(2);
  std::vector<int64_t> pos(p.n());
  for (int64_t j = 0; j < p.n(); ++j) pos[j] = j + c.shift;
  std::vector<float> bias(size_t(p.num_kv_heads()) * p.n());
  std::mt19937 rng(5);
  for (float& b : bias) b = std::uniform_real_distribution<float>(-3, 3)(rng);
  const int heads = c.per_query_head ? p.num_q_heads() : p.num_kv_heads();
  const KeySelection sel = RandomSelection(p, heads, c.block, 0.4, c.diag, p.n(), pos, 7);
  const KeySource src{p.k, p.v, pos.data(), c.bias ? bias.data() : nullptr};
  Tensor out = Output(p);
  std::vector<float> lse(size_t(p.n()) * p.num_q_heads());
  AttendGathered(p, src, sel, out.view(), lse.data(), &pool);

  auto selected = [&](int h, int64_t t, int64_t j) {
    const int list = c.per_query_head ? h : h / p.group();
    const int64_t l = sel.list(list, int(t / c.block));
    return std::binary_search(sel.keys.begin() + sel.offsets[l], sel.keys.begin() + sel.offsets[l + 1], int32_t(j));
  };
  const Fp64Result ref = Fp64Attention(
      p, [&](int h, int64_t t, int64_t j) { return pos[j] <= t && selected(h, t, j); },
      [&](int h, int64_t j) { return c.bias ? double(bias[(h / p.group()) * p.n() + j]) : 0.0; });
  const double tol = c.dtype == DType::kF32 ? 2e-5 : 1.5e-2;
  EXPECT_LE(MaxAbsDiff(ref.out, out.data<float>()), tol);
  for (size_t i = 0; i < ref.lse.size(); ++i) {
    if (ref.lse[i] == kNegInf) {
      EXPECT_EQ(lse[i], -INFINITY) << "row " << i / p.num_q_heads() << " sees nothing";
    } else {
      EXPECT_NEAR(lse[i], ref.lse[i], c.dtype == DType::kF32 ? 1e-4 : 3e-2) << "row " << i / p.num_q_heads();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Paths, GatherTest,
    ::testing::Values(GatherCase{DType::kF32, false, 64, 1, false, 0},   // fused: full diagonal
                      GatherCase{DType::kF32, true, 48, 1, true, 0},     // fused, biased, odd block
                      GatherCase{DType::kF32, false, 64, 2, false, 0},   // diagonal subsets: segments
                      GatherCase{DType::kF32, true, 32, 2, true, 0},     // segments, biased
                      GatherCase{DType::kF32, false, 64, 1, false, 37},  // shifted positions: fused diagonal part
                      GatherCase{DType::kF32, false, 64, 0, true, 0},    // past keys only
                      GatherCase{DType::kBF16, false, 64, 1, true, 0},
                      GatherCase{DType::kBF16, true, 64, 2, true, 5}),
    [](const ::testing::TestParamInfo<GatherCase>& i) {
      const GatherCase& c = i.param;
      return std::string(c.dtype == DType::kF32 ? "f32" : "bf16") + (c.per_query_head ? "_perhead" : "_pergroup") +
             "_block" + std::to_string(c.block) + "_diag" + std::to_string(c.diag) + (c.bias ? "_bias" : "") +
             "_shift" + std::to_string(c.shift);
    });

// The bias trick on its own: a bias of log 2 on a key equals that key counted twice.
TEST(GatherBias, LogTwoEqualsADuplicatedKey) {
  const OwnedProblem in = RandomProblem(96, 2, 1, 32, DType::kF32, 3);
  const PrefillProblem& p = in.problem;
  ThreadPool pool(2);
  std::vector<float> bias(p.n(), 0.0f);
  bias[10] = std::log(2.0f);
  KeySelection sel;
  sel.Init(p.n(), 1, 32);
  for (int b = 0; b < sel.num_q_blocks; ++b) {
    for (int64_t j = 0; j < std::min<int64_t>(p.n(), (b + 1) * 32); ++j) sel.Add(int32_t(j));
    sel.Close();
  }
  Tensor out = Output(p);
  AttendGathered(p, {p.k, p.v, nullptr, bias.data()}, sel, out.view(), nullptr, &pool);
  // Source with key 10 duplicated: positions keep the causal rule.
  Tensor k2(DType::kF32, {p.n() + 1, 1, 32}), v2(DType::kF32, {p.n() + 1, 1, 32});
  std::vector<int64_t> pos2;
  for (int64_t j = 0, r = 0; j < p.n(); ++j) {
    for (int rep = 0; rep < (j == 10 ? 2 : 1); ++rep, ++r) {
      std::copy_n(p.k.at<float>(j, 0), 32, k2.view().at<float>(r, 0));
      std::copy_n(p.v.at<float>(j, 0), 32, v2.view().at<float>(r, 0));
      pos2.push_back(j);
    }
  }
  KeySelection sel2;
  sel2.Init(p.n(), 1, 32);
  for (int b = 0; b < sel2.num_q_blocks; ++b) {
    for (int64_t j = 0; j < std::min<int64_t>(p.n() + 1, (b + 1) * 32 + 1); ++j) sel2.Add(int32_t(j));
    sel2.Close();
  }
  Tensor out2 = Output(p);
  AttendGathered(p, {k2.view(), v2.view(), pos2.data(), nullptr}, sel2, out2.view(), nullptr, &pool);
  for (int64_t i = 0; i < out.numel(); ++i) ASSERT_NEAR(out.data<float>()[i], out2.data<float>()[i], 2e-6) << i;
}

// ---- NSA ------------------------------------------------------------------------------------------

TEST(Nsa, BudgetEverythingEqualsDense) {
  const OwnedProblem in = StructuredProblem(520, 4, 2, 64, DType::kBF16, 2);
  ThreadPool pool(2);
  ExpectDense("nsa:topk=100,min_n=0", in.problem, pool);                                   // gate-free, every block
  ExpectDense("nsa:window=600,topk=2,min_n=0", in.problem, pool);                          // gate-free, window covers all
  ExpectDense("nsa:merge=gates,g_cmp=0,g_slc=1,g_win=0,topk=100,min_n=0", in.problem, pool);  // selection branch alone
  ExpectDense("nsa:merge=gates,g_cmp=0,g_slc=0,g_win=1,window=520,min_n=0", in.problem, pool);  // window branch alone
}

TEST(Nsa, CompressedBranchMatchesFp64) {
  const OwnedProblem in = RandomProblem(300, 4, 2, 32, DType::kF32, 4);
  const PrefillProblem& p = in.problem;
  ThreadPool pool(2);
  const int l = 32, stride = 16;
  const int64_t count = (p.n() - l) / stride + 1;
  // Explicit mean-pooled tokens.
  const std::vector<double> k = ToF64(p.k), v = ToF64(p.v);
  std::vector<double> kc(size_t(count) * 2 * 32, 0.0), vc(kc.size(), 0.0);
  for (int64_t i = 0; i < count; ++i)
    for (int g = 0; g < 2; ++g)
      for (int64_t j = i * stride; j < i * stride + l; ++j)
        for (int c = 0; c < 32; ++c) {
          kc[(i * 2 + g) * 32 + c] += k[(j * 2 + g) * 32 + c] / l;
          vc[(i * 2 + g) * 32 + c] += v[(j * 2 + g) * 32 + c] / l;
        }
  const Fp64Result ref = Fp64Attention(
      p, kc, vc, count, [&](int, int64_t t, int64_t i) { return t >= i * stride + l - 1; },
      [](int, int64_t) { return 0.0; });
  Tensor out = Output(p);
  MakeSparseMethod("nsa:merge=gates,g_cmp=1,g_slc=0,g_win=0,min_n=0")->Run(p, out.view(), nullptr, &pool);
  EXPECT_LE(MaxAbsDiff(ref.out, out.data<float>()), 2e-5);
  for (int64_t t = 0; t < l - 1; ++t)
    for (int64_t x = 0; x < 4 * 32; ++x) ASSERT_EQ(out.data<float>()[t * 4 * 32 + x], 0.0f) << "row " << t;
}

TEST(Nsa, SelectionMatchesFp64Scores) {
  const OwnedProblem in = StructuredProblem(700, 4, 2, 64, DType::kF32, 6);
  const PrefillProblem& p = in.problem;
  ThreadPool pool(2);
  NsaConfig c;
  c.topk = 4;
  const NsaCompressed cmp = NsaCompress(p, c, &pool);
  const std::vector<float> scores = NsaBlockScores(p, c, cmp, &pool);
  const int nb = (700 + 63) / 64, G = p.group();
  // fp64: explicit p_cmp per (t, h), group sum, overlaps from interval intersection.
  const std::vector<double> q = ToF64(p.q), kc = ToF64(cmp.k.view());
  std::vector<double> expect(size_t(2) * nb * nb, 0.0);
  for (int64_t t = 0; t < p.n(); ++t) {
    for (int h = 0; h < 4; ++h) {
      const int g = h / G;
      std::vector<double> s;
      for (int64_t i = 0; i < cmp.count && t >= i * 16 + 31; ++i) {
        double dot = 0;
        for (int x = 0; x < 64; ++x) dot += q[(t * 4 + h) * 64 + x] * kc[(i * 2 + g) * 64 + x];
        s.push_back(dot * p.EffectiveScale());
      }
      if (s.empty()) continue;
      const double mx = *std::max_element(s.begin(), s.end());
      double z = 0;
      for (double x : s) z += std::exp(x - mx);
      for (size_t i = 0; i < s.size(); ++i) {
        const int64_t a0 = int64_t(i) * 16, a1 = a0 + 32;
        for (int j = 0; j < nb; ++j) {
          const int64_t shared = std::max<int64_t>(0, std::min<int64_t>(a1, (j + 1) * 64) - std::max<int64_t>(a0, j * 64));
          expect[(size_t(g) * nb + t / 64) * nb + j] += double(shared / 16) * std::exp(s[i] - mx) / z;
        }
      }
    }
  }
  for (size_t i = 0; i < expect.size(); ++i) ASSERT_NEAR(scores[i], expect[i], 1e-4 * (1 + expect[i])) << i;
  // Top-T sets (ties toward the lower index), forced blocks, nothing above the diagonal.
  const BlockList list = NsaSelect(scores, p.n(), 2, c);
  for (int g = 0; g < 2; ++g) {
    for (int r = 0; r < nb; ++r) {
      std::vector<int> order;
      for (int j = 0; j <= r; ++j) order.push_back(j);
      auto key = [&](int j) { return (j < 1 || j > r - 2) ? 1e300 : expect[(size_t(g) * nb + r) * nb + j]; };
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key(a) > key(b); });
      order.resize(std::min<size_t>(order.size(), 4));
      const std::set<int> want(order.begin(), order.end());
      const int idx = g * nb + r;
      const std::set<int> got(list.kv_blocks.begin() + list.offsets[idx], list.kv_blocks.begin() + list.offsets[idx + 1]);
      EXPECT_EQ(got, want) << "group " << g << " block " << r;
      EXPECT_TRUE(got.count(0) && got.count(r)) << "init and current blocks are forced";
      EXPECT_LE(*got.rbegin(), r);
    }
  }
}

TEST(Nsa, GateFreeKeepsMostOfTheMassOnStructuredInput) {
  const OwnedProblem in = StructuredProblem(2048, 4, 2, 64, DType::kBF16, 8);
  ThreadPool pool(2);
  const DenseBaseline dense = RunDense(in.problem, &pool, 1);
  auto method = MakeSparseMethod("nsa:topk=6,window=128,min_n=0");
  const SparseReport r = Measure(*method, in.problem, dense, &pool, 1);
  EXPECT_LT(r.density, 0.5);
  EXPECT_GT(r.mean_kept_mass, 0.8);
  // The compressed tokens estimate the unselected keys: the error stays below dropping them.
  auto gated = MakeSparseMethod("nsa:topk=6,window=128,merge=gates,g_cmp=0,g_slc=1,g_win=0,min_n=0");
  const SparseReport s = Measure(*gated, in.problem, dense, &pool, 1);
  EXPECT_LT(r.output_rel_error, s.output_rel_error);
}


// ---- short inputs -----------------------------------------------------------------------------------

TEST(ShortInputs, FallBackToDenseAtOrBelowMinN) {
  const OwnedProblem in = StructuredProblem(1000, 4, 2, 64, DType::kBF16, 20);
  const PrefillProblem& p = in.problem;
  ThreadPool pool(2);
  Tensor dense = Output(p);
  DenseCausal(p, dense.view(), nullptr, &pool);
  for (const char* spec : {"nsa", "squeezed", "psa", "dma", "nsa:min_n=1000", "dma:window=334"}) {
    Tensor out = Output(p);
    const MethodResult r = MakeSparseMethod(spec)->Run(p, out.view(), nullptr, &pool);
    EXPECT_EQ(r.coverage.Density(p.n()), 1.0) << spec;
    for (int64_t i = 0; i < out.numel(); ++i) ASSERT_EQ(out.data<float>()[i], dense.data<float>()[i]) << spec;
  }
  Tensor out = Output(p);
  const MethodResult r = MakeSparseMethod("nsa:min_n=999,topk=4,window=128")->Run(p, out.view(), nullptr, &pool);
  EXPECT_LT(r.coverage.Density(p.n()), 1.0) << "above min_n the method selects";
}

// ---- lemma 0.4 in fp64 ------------------------------------------------------------------------------

// Worst row of ||o - o_dense|| / (2 (1 - mass) max ||v|| + tol) over rows and heads, where mass is the
// dense fp64 probability of the keys `visible` keeps: <= 1 when the lemma holds.
double LemmaWorstRatio(const PrefillProblem& p, const float* out, const Visible& visible, double tol) {
  const Fp64Result dense = Fp64Attention(p, [](int, int64_t t, int64_t j) { return j <= t; }, [](int, int64_t) { return 0.0; });
  const std::vector<double> q = ToF64(p.q), k = ToF64(p.k), v = ToF64(p.v);
  const int hq = p.num_q_heads(), hkv = p.num_kv_heads(), d = p.head_dim(), dv = p.value_dim();
  std::vector<double> vmax(hkv, 0.0);
  for (int64_t j = 0; j < p.n(); ++j)
    for (int g = 0; g < hkv; ++g) {
      double s = 0;
      for (int c = 0; c < dv; ++c) s += v[(j * hkv + g) * dv + c] * v[(j * hkv + g) * dv + c];
      vmax[g] = std::max(vmax[g], std::sqrt(s));
    }
  double worst = 0;
  for (int64_t t = 0; t < p.n(); ++t) {
    for (int h = 0; h < hq; ++h) {
      const int g = h / p.group();
      double mass = 0;
      for (int64_t j = 0; j <= t; ++j) {
        if (!visible(h, t, j)) continue;
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += q[(t * hq + h) * d + c] * k[(j * hkv + g) * d + c];
        mass += std::exp(dot * p.EffectiveScale() - dense.lse[t * hq + h]);
      }
      double err = 0;
      for (int c = 0; c < dv; ++c) {
        const double e = out[(t * hq + h) * dv + c] - dense.out[(t * hq + h) * dv + c];
        err += e * e;
      }
      worst = std::max(worst, std::sqrt(err) / (2 * std::max(0.0, 1 - mass) * vmax[g] + tol * vmax[g]));
    }
  }
  return worst;
}

bool InSelection(const KeySelection& sel, int list, int64_t t, int64_t j) {
  const int64_t l = sel.list(list, int(t / sel.q_block));
  return std::binary_search(sel.keys.begin() + sel.offsets[l], sel.keys.begin() + sel.offsets[l + 1], int32_t(j));
}

// ---- DraftAttention-1D ----------------------------------------------------------------------------

TEST(Draft, RhoZeroEqualsDense) {
  const OwnedProblem in = StructuredProblem(700, 4, 2, 64, DType::kBF16, 3);
  ThreadPool pool(2);
  ExpectDense("draft:rho=0", in.problem, pool);
  ExpectDense("draft:rho=0,block=64", in.problem, pool);
}

TEST(Draft, PoolSizeOneIsTheExactAttentionMap) {
  const OwnedProblem in = RandomProblem(150, 2, 1, 32, DType::kF32, 9);
  const PrefillProblem& p = in.problem;
  const Fp64Result dense = Fp64Attention(p, [](int, int64_t t, int64_t j) { return j <= t; }, [](int, int64_t) { return 0.0; });
  const std::vector<double> q = ToF64(p.q), k = ToF64(p.k);
  for (int h = 0; h < 2; ++h) {
    const std::vector<float> map = DraftMap(p, h, 1);
    for (int64_t t = 0; t < 150; ++t) {
      for (int64_t j = 0; j < 150; ++j) {
        double expect = 0;
        if (j <= t) {
          double dot = 0;
          for (int c = 0; c < 32; ++c) dot += q[(t * 2 + h) * 32 + c] * k[j * 32 + c];
          expect = std::exp(dot * p.EffectiveScale() - dense.lse[t * 2 + h]);
        }
        ASSERT_NEAR(map[t * 150 + j], expect, 1e-6) << "head " << h << " (" << t << ", " << j << ")";
      }
    }
  }
}

TEST(Draft, KeepsTheGlobalTopOfEachHeadAndTheDiagonal) {
  const OwnedProblem in = StructuredProblem(2000, 4, 2, 64, DType::kBF16, 4);
  for (double rho : {0.5, 0.9}) {
    for (int h = 0; h < 4; ++h) {
      const int nb = (2000 + 127) / 128;
      const std::vector<float> map = DraftMap(in.problem, h, 128);
      const std::vector<uint8_t> keep = DraftKeep(map, nb, rho);
      std::vector<float> causal;
      for (int r = 0; r < nb; ++r)
        for (int c = 0; c <= r; ++c) causal.push_back(map[r * nb + c]);
      std::sort(causal.begin(), causal.end());
      const size_t cut = size_t(std::floor(rho * causal.size()));
      const float threshold = causal[cut - 1];
      size_t kept = 0;
      for (int r = 0; r < nb; ++r) {
        EXPECT_TRUE(keep[r * nb + r]) << "diagonal block " << r;
        for (int c = 0; c <= r; ++c) {
          EXPECT_EQ(keep[r * nb + c], c == r || map[r * nb + c] >= threshold) << r << ", " << c;
          kept += keep[r * nb + c];
        }
        for (int c = r + 1; c < nb; ++c) EXPECT_FALSE(keep[r * nb + c]);
      }
      EXPECT_GE(kept, causal.size() - cut + 1);  // (1 - rho) of the entries, plus the code's off-by-one
      EXPECT_LE(kept, causal.size() - cut + 1 + size_t(nb));
    }
  }
}

TEST(Draft, LemmaHoldsAndMassIsReported) {
  const OwnedProblem in = StructuredProblem(1024, 4, 2, 64, DType::kF32, 5);
  ThreadPool pool(2);
  const DenseBaseline dense = RunDense(in.problem, &pool, 1);
  auto method = MakeSparseMethod("draft:block=64,rho=0.8");
  const SparseReport r = Measure(*method, in.problem, dense, &pool, 1);
  EXPECT_LE(r.max_row_bound_ratio, 1.0);
  EXPECT_GT(r.output_rel_error, 1e-4) << "rho = 0.8 drops keys";
  EXPECT_NEAR(r.density, 0.2, 0.08);
}

// ---- Pyramid Sparse Attention -----------------------------------------------------------------------

TEST(Psa, AllLevelOneEqualsDense) {
  const OwnedProblem in = StructuredProblem(600, 4, 2, 64, DType::kBF16, 6);
  ThreadPool pool(2);
  ExpectDense("psa:r1=1,r2=1,r4=1,r8=1,min_n=0", in.problem, pool);
  ExpectDense("psa:mode=energy,r1=1.01,r2=1.01,r4=1.01,r8=1.01,block=64,stride=8,min_n=0", in.problem, pool);
}

// K and V constant inside every group of 8 tokens: any pooling level with +log(count) is exact.
TEST(Psa, PooledLevelsAreExactOnRepeatedKeys) {
  OwnedProblem in = RandomProblem(500, 4, 2, 32, DType::kF32, 7);
  PrefillProblem& p = in.problem;
  for (int64_t j = 0; j < p.n(); ++j)
    for (int g = 0; g < 2; ++g) {
      std::copy_n(p.k.at<float>(j - j % 8, g), 32, p.k.at<float>(j, g));
      std::copy_n(p.v.at<float>(j - j % 8, g), 32, p.v.at<float>(j, g));
    }
  ThreadPool pool(2);
  const Fp64Result dense = Fp64Attention(p, [](int, int64_t t, int64_t j) { return j <= t; }, [](int, int64_t) { return 0.0; });
  for (const char* spec : {"psa:block=64,r1=0,r2=1,r4=1,r8=1,min_n=0", "psa:block=64,r1=0,r2=0,r4=1,r8=1,min_n=0",
                           "psa:block=64,r1=0,r2=0,r4=0,r8=1,min_n=0"}) {
    Tensor out = Output(p);
    MakeSparseMethod(spec)->Run(p, out.view(), nullptr, &pool);
    EXPECT_LE(MaxAbsDiff(dense.out, out.data<float>()), 2e-5) << spec;
  }
}

// A pooled key is visible to query i only when the last raw key it covers is <= i, checked with
// pooled keys in the diagonal blocks too (the method itself keeps diagonals at level 1).
TEST(Psa, CausalRuleForPooledKeys) {
  const OwnedProblem in = RandomProblem(300, 2, 1, 32, DType::kF32, 8);
  const PrefillProblem& p = in.problem;
  ThreadPool pool(2);
  const PsaPyramid pyr = PsaBuildPyramid(p, 64, &pool);
  const int nb = 5;
  std::vector<uint8_t> levels(2 * nb * nb, 0);
  for (int h = 0; h < 2; ++h)
    for (int r = 0; r < nb; ++r)
      for (int c = 0; c <= r; ++c) levels[(h * nb + r) * nb + c] = uint8_t(2 << ((r + c + h) % 3));
  const KeySelection sel = PsaPooledSelection(pyr, levels, p.n(), 2);
  Tensor out = Output(p);
  AttendGathered(p, {pyr.k.view(), pyr.v.view(), pyr.last.data(), pyr.bias.data()}, sel, out.view(), nullptr, &pool);
  const int64_t m = pyr.k.view().dim(0);
  const Fp64Result ref = Fp64Attention(
      p, ToF64(pyr.k.view()), ToF64(pyr.v.view()), m,
      [&](int h, int64_t t, int64_t i) { return pyr.last[i] <= t && InSelection(sel, h, t, i); },
      [&](int, int64_t i) { return double(pyr.bias[i]); });
  EXPECT_LE(MaxAbsDiff(ref.out, out.data<float>()), 2e-5);
  // Pooled keys of a diagonal block that straddle a row are invisible to it: row 64 (block 1) sees
  // nothing of block 1 at level 2 except its first pair's key, which ends at 65 > 64.
  EXPECT_GT(pyr.last[pyr.start[3]], 64);
}

TEST(Psa, AntidiagonalEstimatorMatchesFp64) {
  const OwnedProblem in = RandomProblem(500, 2, 1, 32, DType::kF32, 10);
  const PrefillProblem& p = in.problem;
  const int sigma = 8, block = 64, nb = 8;
  const int64_t ns = (500 + sigma - 1) / sigma;
  const std::vector<double> q = ToF64(p.q), k = ToF64(p.k);
  for (int h = 0; h < 2; ++h) {
    const std::vector<float> S = PsaImportance(p, h, sigma, block);
    std::vector<double> expect(nb * nb, 0.0);
    for (int64_t r = 0; r < ns; ++r) {
      std::vector<double> s(r + 1);
      for (int64_t c = 0; c <= r; ++c) {
        double dot = 0;
        for (int u = 0; u < sigma; ++u) {
          const int64_t i = r * sigma + sigma - 1 - u, j = c * sigma + u;
          if (i >= 500 || j >= 500) continue;  // zero padding
          for (int x = 0; x < 32; ++x) dot += q[(i * 2 + h) * 32 + x] * k[j * 32 + x];
        }
        s[c] = dot / (std::sqrt(32.0) * sigma);
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double z = 0;
      for (double x : s) z += std::exp(x - mx);
      for (int64_t c = 0; c <= r; ++c) expect[(r * sigma / block) * nb + c * sigma / block] += std::exp(s[c] - mx) / z;
    }
    for (int i = 0; i < nb * nb; ++i) ASSERT_NEAR(S[i], expect[i], 1e-5 * (1 + expect[i])) << "head " << h << " entry " << i;
  }
}

TEST(Psa, LevelsComputeAccountingAndQuality) {
  const OwnedProblem in = StructuredProblem(2048, 4, 2, 64, DType::kBF16, 11);
  const PrefillProblem& p = in.problem;
  ThreadPool pool(2);
  PsaConfig c;
  const std::vector<uint8_t> levels = PsaLevels(p, c, &pool);
  const int nb = 16;
  double fraction = 0, pairs = 0;
  int64_t pooled_keys = 0;
  for (int h = 0; h < 4; ++h)
    for (int r = 0; r < nb; ++r) {
      EXPECT_EQ(levels[(h * nb + r) * nb + r], 1) << "diagonal";
      EXPECT_EQ(levels[(h * nb + r) * nb], 1) << "sink block";
      int per_level[9] = {};
      for (int col = 0; col <= r; ++col) {
        const int lv = levels[(h * nb + r) * nb + col];
        ++per_level[lv];
        pairs += 1;
        fraction += lv ? 1.0 / lv : 0.0;
        if (lv > 1) pooled_keys += 128 / lv;
      }
      for (int col = r + 1; col < nb; ++col) EXPECT_EQ(levels[(h * nb + r) * nb + col], 0);
      if (r >= 15) {
        EXPECT_GE(per_level[0], 5) << "top-k ranks above 0.5 are skipped";
      }
    }
  const PsaPyramid pyr = PsaBuildPyramid(p, 128, &pool);
  EXPECT_EQ(int64_t(PsaPooledSelection(pyr, levels, p.n(), 4).keys.size()), pooled_keys) << "keys = sum of 128 / level";
  EXPECT_LT(fraction / pairs, 0.6);
  // Pooled levels improve on dropping the same pairs (the level-1 set kept, nothing pooled).
  const DenseBaseline dense = RunDense(p, &pool, 1);
  auto psa = MakeSparseMethod("psa:min_n=0");
  auto dropped = MakeSparseMethod("psa:r2=0.05,r4=0.05,r8=0.05,min_n=0");
  const SparseReport a = Measure(*psa, p, dense, &pool, 1), b = Measure(*dropped, p, dense, &pool, 1);
  EXPECT_NEAR(a.density, b.density, 1e-12);
  EXPECT_LT(a.output_rel_error, b.output_rel_error);
}

// ---- DMA --------------------------------------------------------------------------------------------

// The bias from its definition, in fp64: a * softplus(<v_j, mean v / |mean v|>), per KV head.
std::vector<double> Fp64DmaBias(const PrefillProblem& p, double a) {
  const std::vector<double> v = ToF64(p.v);
  const int hkv = p.num_kv_heads(), dv = p.value_dim();
  std::vector<double> bias(hkv * p.n());
  for (int g = 0; g < hkv; ++g) {
    std::vector<double> u(dv, 0.0);
    for (int64_t j = 0; j < p.n(); ++j)
      for (int x = 0; x < dv; ++x) u[x] += v[(j * hkv + g) * dv + x];
    double norm = 0;
    for (double x : u) norm += x * x;
    for (int64_t j = 0; j < p.n(); ++j) {
      double dt = 0;
      for (int x = 0; x < dv; ++x) dt += v[(j * hkv + g) * dv + x] * u[x] / std::sqrt(norm);
      bias[g * p.n() + j] = a * std::log(1 + std::exp(dt));
    }
  }
  return bias;
}

TEST(Dma, NoBiasAndFullWindowEqualsDense) {
  const OwnedProblem in = StructuredProblem(600, 4, 2, 64, DType::kBF16, 12);
  ThreadPool pool(2);
  ExpectDense("dma:window=600,min_n=0", in.problem, pool);
  ExpectDense("dma:window=100000,query_aware=0,min_n=0", in.problem, pool);
}

TEST(Dma, BiasOnlyMatchesFp64) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const OwnedProblem in = RandomProblem(400, 4, 2, 32, dtype, 13);
    const PrefillProblem& p = in.problem;
    ThreadPool pool(2);
    const std::vector<double> bias = Fp64DmaBias(p, 1.5);
    const std::vector<float> got = DmaBias(p, 1.5);
    for (size_t i = 0; i < bias.size(); ++i) ASSERT_NEAR(got[i], bias[i], 1e-5) << i;
    const Fp64Result ref = Fp64Attention(p, [](int, int64_t t, int64_t j) { return j <= t; },
                                         [&](int h, int64_t j) { return bias[(h / 2) * 400 + j]; });
    for (const char* spec : {"dma:window=4096,a=1.5", "dma:window=4096,a=1.5,min_n=0"}) {  // dense + bias, gathered
      Tensor out = Output(p);
      MakeSparseMethod(spec)->Run(p, out.view(), nullptr, &pool);
      EXPECT_LE(MaxAbsDiff(ref.out, out.data<float>()), dtype == DType::kF32 ? 2e-5 : 1.5e-2) << spec;
    }
  }
}

// w < n: the kept set against an independent fp64 top-w (ties toward the lower index), and the output
// against the fp64 reference with that explicit mask and the bias.
TEST(Dma, TopWMaskMatchesFp64) {
  for (int query_aware : {1, 0}) {
    const OwnedProblem in = StructuredProblem(700, 4, 2, 64, DType::kF32, 14);
    const PrefillProblem& p = in.problem;
    ThreadPool pool(2);
    DmaConfig c;
    c.window = 150;
    c.a = 0.7;
    c.query_aware = query_aware;
    const std::vector<double> bias = Fp64DmaBias(p, c.a);
    const KeySelection sel = DmaSelect(p, c, DmaBias(p, c.a), &pool);
    const std::vector<double> q = ToF64(p.q), k = ToF64(p.k);
    for (int g = 0; g < 2; ++g) {
      for (int b = 0; b < sel.num_q_blocks; ++b) {
        const int64_t r0 = int64_t(b) * 64, r1 = std::min<int64_t>(700, r0 + 64);
        std::vector<double> qm(64, 0.0);
        for (int64_t t = r0; t < r1; ++t)
          for (int h = 2 * g; h < 2 * g + 2; ++h)
            for (int x = 0; x < 64; ++x) qm[x] += q[(t * 4 + h) * 64 + x] / double(2 * (r1 - r0));
        std::vector<std::pair<double, int64_t>> score;
        for (int64_t j = 0; j < r0; ++j) {
          double dot = 0;
          for (int x = 0; x < 64; ++x) dot += qm[x] * k[(j * 2 + g) * 64 + x];
          score.push_back({-(query_aware ? dot * p.EffectiveScale() : 0.0) - bias[g * 700 + j], j});
        }
        std::sort(score.begin(), score.end());
        std::set<int32_t> want;
        for (size_t i = 0; i < score.size() && i < size_t(c.window); ++i) want.insert(int32_t(score[i].second));
        for (int64_t j = r0; j < r1; ++j) want.insert(int32_t(j));
        const int64_t l = sel.list(g, b);
        const std::set<int32_t> got(sel.keys.begin() + sel.offsets[l], sel.keys.begin() + sel.offsets[l + 1]);
        ASSERT_EQ(got, want) << "group " << g << " block " << b << " query_aware " << query_aware;
      }
    }
    Tensor out = Output(p);
    MakeSparseMethod("dma:window=150,a=0.7,query_aware=" + std::to_string(query_aware))->Run(p, out.view(), nullptr, &pool);
    const Fp64Result ref = Fp64Attention(p, [&](int h, int64_t t, int64_t j) { return j <= t && InSelection(sel, h / 2, t, j); },
                                         [&](int h, int64_t j) { return bias[(h / 2) * 700 + j]; });
    EXPECT_LE(MaxAbsDiff(ref.out, out.data<float>()), 2e-5);
  }
}

TEST(Dma, LemmaHoldsWithoutBias) {
  const OwnedProblem in = StructuredProblem(900, 4, 2, 64, DType::kF32, 15);
  const PrefillProblem& p = in.problem;
  ThreadPool pool(2);
  DmaConfig c;
  c.window = 200;
  const KeySelection sel = DmaSelect(p, c, DmaBias(p, 0.0), &pool);
  Tensor out = Output(p);
  MakeSparseMethod("dma:window=200")->Run(p, out.view(), nullptr, &pool);
  const double worst = LemmaWorstRatio(p, out.data<float>(), [&](int h, int64_t t, int64_t j) { return InSelection(sel, h / 2, t, j); }, 1e-5);
  EXPECT_LE(worst, 1.0);
}

// ---- Squeezed Attention -----------------------------------------------------------------------------

TEST(Squeezed, KeepEverythingEqualsDense) {
  const OwnedProblem in = StructuredProblem(640, 4, 2, 64, DType::kBF16, 16);
  ThreadPool pool(2);
  ExpectDense("squeezed:p=0,min_n=0", in.problem, pool);
  ExpectDense("squeezed:budget=1,levels=2,min_n=0", in.problem, pool);
}

TEST(Squeezed, SingletonClustersGiveTheExactMeanAttention) {
  const OwnedProblem in = RandomProblem(300, 1, 1, 32, DType::kF32, 17);
  const PrefillProblem& p = in.problem;
  const std::vector<double> q = ToF64(p.q), k = ToF64(p.k);
  const int64_t r0 = 256, rows = 44;  // a query block after 256 keys
  const std::vector<float> keys = HeadRowsF32(p.k, 0, 0, r0), qs = HeadRowsF32(p.q, 0, r0, rows);
  const std::vector<int64_t> ones(r0, 1);
  std::vector<float> a(r0);
  ClusterWeights(qs.data(), int(rows), keys.data(), ones.data(), int(r0), 32, p.EffectiveScale(), a.data());
  std::vector<double> expect(r0, 0.0);
  for (int64_t t = r0; t < r0 + rows; ++t) {
    std::vector<double> s(r0);
    for (int64_t j = 0; j < r0; ++j) {
      double dot = 0;
      for (int x = 0; x < 32; ++x) dot += q[t * 32 + x] * k[j * 32 + x];
      s[j] = dot * p.EffectiveScale();
    }
    const double mx = *std::max_element(s.begin(), s.end());
    double z = 0;
    for (double x : s) z += std::exp(x - mx);
    for (int64_t j = 0; j < r0; ++j) expect[j] += std::exp(s[j] - mx) / z / rows;
  }
  for (int64_t j = 0; j < r0; ++j) ASSERT_NEAR(a[j], expect[j], 1e-6 + 1e-4 * expect[j]) << j;
}

TEST(Squeezed, KMeansIsDeterministicAndFindsPlantedClusters) {
  std::mt19937 rng(1);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  const int n = 400, dim = 16;
  std::vector<float> dirs(4 * dim), keys(n * dim);
  for (float& x : dirs) x = noise(rng) * 20;
  for (int j = 0; j < n; ++j)
    for (int x = 0; x < dim; ++x) keys[j * dim + x] = (1 + j % 3) * dirs[(j % 4) * dim + x] + noise(rng);
  ThreadPool pool(2);
  const KMeansResult a = SphericalKMeans(keys.data(), n, dim, 4, 20, 3, &pool);
  const KMeansResult b = SphericalKMeans(keys.data(), n, dim, 4, 20, 3, &pool);
  EXPECT_EQ(a.label, b.label);
  EXPECT_EQ(a.centroid, b.centroid);
  for (int j = 4; j < n; ++j) EXPECT_EQ(a.label[j], a.label[j % 4]) << "point " << j;
  std::set<int> distinct(a.label.begin(), a.label.begin() + 4);
  EXPECT_EQ(distinct.size(), 4u);
  for (int c = 0; c < 4; ++c) EXPECT_EQ(a.size[c], 100);
  EXPECT_LT(a.inertia / n, 0.05);
}

TEST(Squeezed, ThresholdsAreMonotoneAndCalibrated) {
  const OwnedProblem in = StructuredProblem(1500, 4, 2, 64, DType::kBF16, 18);
  const PrefillProblem& p = in.problem;
  ThreadPool pool(2);
  SqueezedConfig lo, hi;
  lo.p = 0.5;
  hi.p = 0.8;
  const SqueezedModel m = SqueezedCluster(p, lo, &pool);
  const SqueezedThresholds tl = SqueezedCalibrate(p, lo, m, &pool), th = SqueezedCalibrate(p, hi, m, &pool);
  EXPECT_LE(tl.fine, th.fine);
  for (const auto& [t, cfg] : {std::pair{tl, lo}, std::pair{th, hi}}) {
    double above = 0;
    for (float x : t.fine_scores) above += x > t.fine;
    EXPECT_NEAR(above / double(t.fine_scores.size()), 1 - cfg.p, 0.01) << "calibration queries keep 1 - p";
  }
  const KeySelection a = SqueezedSelect(p, lo, m, tl, &pool), b = SqueezedSelect(p, hi, m, th, &pool);
  EXPECT_LT(b.keys.size(), a.keys.size());
  for (int64_t l = 0; l + 1 < int64_t(a.offsets.size()); ++l)
    for (int64_t e = b.offsets[l]; e < b.offsets[l + 1]; ++e)
      ASSERT_TRUE(std::binary_search(a.keys.begin() + a.offsets[l], a.keys.begin() + a.offsets[l + 1], b.keys[e]))
          << "raising p keeps a subset (list " << l << ")";
}

TEST(Squeezed, LemmaHoldsAndRunMatchesItsSelection) {
  const OwnedProblem in = StructuredProblem(1024, 4, 2, 64, DType::kF32, 19);
  const PrefillProblem& p = in.problem;
  ThreadPool pool(2);
  for (int levels : {1, 2}) {
    SqueezedConfig c;
    c.levels = levels;
    const SqueezedModel m = SqueezedCluster(p, c, &pool);
    const KeySelection sel = SqueezedSelect(p, c, m, SqueezedCalibrate(p, c, m, &pool), &pool);
    Tensor out = Output(p), run = Output(p);
    AttendGathered(p, ProblemKeys(p), sel, out.view(), nullptr, &pool);
    MakeSparseMethod("squeezed:min_n=0,levels=" + std::to_string(levels))->Run(p, run.view(), nullptr, &pool);
    for (int64_t i = 0; i < out.numel(); ++i) ASSERT_EQ(out.data<float>()[i], run.data<float>()[i]) << i;
    const double density = TokenDensity(p, ProblemKeys(p), sel);
    EXPECT_LT(density, 0.9) << "levels " << levels;
    const double worst = LemmaWorstRatio(p, out.data<float>(), [&](int h, int64_t t, int64_t j) { return InSelection(sel, h / 2, t, j); }, 1e-5);
    EXPECT_LE(worst, 1.0) << "levels " << levels;
  }
}
}  // namespace
}  // namespace qattn::sparse
