// The decode-time KV scorers (src/methods/kv_cache/kv_scores.h) against fp64 references written
// here with naive loops, hand-built cases with known answers, and the oracles of
// docs/specs/kv_cache.md (C1 TokenSelect, C2 CompressKV, C3 SnapKV / H2O / StreamingLLM / Quest,
// C5 PromptDistill, C6 ReKV).
#include "methods/kv_cache/kv_scores.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <span>
#include <vector>

#include "core/thread_pool.h"

namespace qattn::kv {
namespace {

using Indices = std::vector<int32_t>;

// ---------------------------------------------------------------------------------------------
// Helpers and fp64 references

std::vector<float> RandomNormal(size_t count, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> out(count);
  for (float& x : out) x = dist(rng);
  return out;
}

Indices Range(int64_t first, int64_t end) {
  Indices out;
  for (int64_t i = first; i < end; ++i) out.push_back(static_cast<int32_t>(i));
  return out;
}

bool Contains(const Indices& kept, int32_t index) {
  return std::find(kept.begin(), kept.end(), index) != kept.end();
}

void ExpectNear(const std::vector<float>& got, const std::vector<double>& want, double rel, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], rel * std::max(1.0, std::abs(want[i]))) << what << " at " << i;
}

double Dot64(const float* a, const float* b, int d) {
  double s = 0;
  for (int c = 0; c < d; ++c) s += static_cast<double>(a[c]) * b[c];
  return s;
}

std::vector<double> Softmax64(std::vector<double> x) {
  const double top = *std::max_element(x.begin(), x.end());
  double total = 0;
  for (double& v : x) total += (v = std::exp(v - top));
  for (double& v : x) v /= total;
  return x;
}

// The GQA map written out independently: query head h reads KV head floor(h * H_kv / H_q).
int RefKv(const Heads& heads, int h) { return h * heads.kv / heads.q; }

const float* Q(const float* q, const Heads& heads, int64_t i, int h) { return q + (i * heads.q + h) * heads.dim; }
const float* K(const float* k, const Heads& heads, int64_t j, int g) { return k + (j * heads.kv + g) * heads.dim; }

// Column sums of causal softmax attention of the last w queries: [H_q, n].
std::vector<double> RefColumnSums(const std::vector<float>& q, const std::vector<float>& k, const Heads& heads,
                                  int64_t n, int64_t w) {
  std::vector<double> out(heads.q * n, 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(heads.dim));
  for (int h = 0; h < heads.q; ++h)
    for (int64_t i = 0; i < w; ++i) {
      const int64_t position = n - w + i;
      std::vector<double> logits;
      for (int64_t j = 0; j <= position; ++j)
        logits.push_back(scale * Dot64(Q(q.data(), heads, i, h), K(k.data(), heads, j, RefKv(heads, h)), heads.dim));
      const std::vector<double> p = Softmax64(logits);
      for (int64_t j = 0; j <= position; ++j) out[h * n + j] += p[j];
    }
  return out;
}

// PyTorch pooling, written as PyTorch defines it: pad kernel/2 on both sides (zeros for avg, -inf for
// max), slide a window of `kernel` with stride 1 (n + 2*pad - kernel + 1 outputs), keep the first n.
std::vector<double> RefPool(const std::vector<double>& x, int kernel, PoolKind kind) {
  if (kind == PoolKind::kNone || kernel <= 1) return x;
  const int pad = kernel / 2;
  const double fill = kind == PoolKind::kAvg ? 0.0 : -std::numeric_limits<double>::infinity();
  std::vector<double> padded(pad, fill);
  padded.insert(padded.end(), x.begin(), x.end());
  padded.insert(padded.end(), pad, fill);
  std::vector<double> out;
  for (size_t start = 0; start + kernel <= padded.size() && out.size() < x.size(); ++start) {
    double acc = kind == PoolKind::kAvg ? 0.0 : fill;
    for (int j = 0; j < kernel; ++j)
      acc = kind == PoolKind::kAvg ? acc + padded[start + j] : std::max(acc, padded[start + j]);
    out.push_back(kind == PoolKind::kAvg ? acc / kernel : acc);
  }
  return out;
}

// Top `count` of scores by a full stable sort (descending score, lower index first), sorted back.
Indices RefTop(const std::vector<float>& scores, int64_t count) {
  Indices order = Range(0, static_cast<int64_t>(scores.size()));
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  order.resize(std::min<size_t>(order.size(), count));
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<double> Widen(const std::vector<float>& x) { return {x.begin(), x.end()}; }

// ---------------------------------------------------------------------------------------------
// Pooling

TEST(KvPool, HandBuiltOddKernel) {
  const std::vector<float> x = {1, 2, 3, 4, 5};
  EXPECT_EQ(Pool1d(x, 3, PoolKind::kAvg), (std::vector<float>{1, 2, 3, 4, 3}));  // ends: padded zeros count
  EXPECT_EQ(Pool1d(x, 3, PoolKind::kMax), (std::vector<float>{2, 3, 4, 5, 5}));
  EXPECT_EQ(Pool1d(x, 3, PoolKind::kNone), x);
  EXPECT_EQ(Pool1d(x, 1, PoolKind::kMax), x);
}

TEST(KvPool, HandBuiltEvenKernelKeepsPyTorchsFirstN) {
  const std::vector<float> x = {1, 2, 3, 4, 5};
  // PyTorch gives 6 values (0+1)/2, (1+2)/2, ..., (5+0)/2; the first 5 are kept.
  EXPECT_EQ(Pool1d(x, 2, PoolKind::kAvg), (std::vector<float>{0.5f, 1.5f, 2.5f, 3.5f, 4.5f}));
  EXPECT_EQ(Pool1d(x, 2, PoolKind::kMax), (std::vector<float>{1, 2, 3, 4, 5}));
  const std::vector<float> spike = {0, 0, 0, 8, 0, 0, 0};
  // kernel 4: output i covers [i - 2, i + 2): the spike at 3 reaches outputs 2..5.
  EXPECT_EQ(Pool1d(spike, 4, PoolKind::kMax), (std::vector<float>{0, 0, 8, 8, 8, 8, 0}));
}

TEST(KvPool, MatchesPyTorchDefinitionOnRandomData) {
  for (int kernel : {2, 3, 4, 5, 6, 7, 12}) {
    for (int64_t n : {1, 3, 7, 40}) {
      const std::vector<float> x = RandomNormal(n, 100 + kernel * 7 + n);
      for (PoolKind kind : {PoolKind::kAvg, PoolKind::kMax})
        ExpectNear(Pool1d(x, kernel, kind), RefPool(Widen(x), kernel, kind), 1e-6, "pool");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// KeepTopK

TEST(KvKeepTopK, BudgetAtLeastNKeepsAll) {
  const std::vector<float> s = RandomNormal(10, 1);
  EXPECT_EQ(KeepTopK(s, 10), Range(0, 10));
  EXPECT_EQ(KeepTopK(s, 50, 3, 3), Range(0, 10));
}

TEST(KvKeepTopK, HandBuiltWithForcedRanges) {
  const std::vector<float> s = {0, 9, 1, 7, 7, 2, 0, 5};
  EXPECT_EQ(KeepTopK(s, 3), (Indices{1, 3, 4}));
  EXPECT_EQ(KeepTopK(s, 2), (Indices{1, 3}));  // tie 3 / 4: the lower index wins
  // First 1 and last 2 forced, two picks from the middle [1, 6).
  EXPECT_EQ(KeepTopK(s, 5, 1, 2), (Indices{0, 1, 3, 6, 7}));
  // The forced ranges alone exceed the budget: exactly they are kept.
  EXPECT_EQ(KeepTopK(s, 2, 2, 2), (Indices{0, 1, 6, 7}));
  EXPECT_EQ(KeepTopK(s, 0), Indices{});
}

TEST(KvKeepTopK, NanRanksLowest) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> s = {nan, -5, nan, -7};
  EXPECT_EQ(KeepTopK(s, 2), (Indices{1, 3}));
}

TEST(KvKeepTopK, MatchesFullSortOnTiedRandomScores) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> level(0, 4);  // many ties
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<float> s(37);
    for (float& v : s) v = static_cast<float>(level(rng));
    const int64_t budget = trial % 37, first = trial % 3, last = trial % 4;
    const Indices got = KeepTopK(s, budget, first, last);
    // Reference: forced ranges plus the full-sort top of the middle.
    const int64_t n = 37, picks = std::max<int64_t>(0, budget - first - last);
    std::vector<float> middle(s.begin() + first, s.end() - last);
    Indices want = Range(0, first);
    for (int32_t i : RefTop(middle, picks)) want.push_back(static_cast<int32_t>(i + first));
    for (int32_t i : Range(n - last, n)) want.push_back(i);
    std::sort(want.begin(), want.end());
    ASSERT_EQ(got, want) << "trial " << trial;
  }
}

// ---------------------------------------------------------------------------------------------
// Budgets

TEST(KvBudget, UniformAndSplit) {
  EXPECT_EQ(UniformBudget(3, 128), (std::vector<int64_t>{128, 128, 128}));
  EXPECT_EQ(SplitEvenly(10, 4), (std::vector<int64_t>{3, 3, 2, 2}));
  EXPECT_EQ(SplitEvenly(8, 4), (std::vector<int64_t>{2, 2, 2, 2}));
}

TEST(KvBudget, ErrorAwareHandBuilt) {
  // Equal weights: every layer gets the average.
  EXPECT_EQ(ErrorAwareLayerBudgets(std::vector<double>(4, 0.25), 128), (std::vector<int64_t>(4, 128)));
  // All weight on layer 1: 32 + 4*(128-32) = 416 clips to 3B = 384; the 32 left over go +1 per layer
  // by importance (layers 0, 2, 3 tie at weight 0: lower first), round after round: 32 + 11, 11, 10.
  EXPECT_EQ(ErrorAwareLayerBudgets(std::vector<double>{0, 1, 0, 0}, 128),
            (std::vector<int64_t>{43, 384, 43, 42}));
  // Weights 0.5 / 0.3 / 0.2 over (3*100 - 96) = 204: 32 + {102, 61.2, 40.8} -> 134, 93, 73 = 300.
  EXPECT_EQ(ErrorAwareLayerBudgets(std::vector<double>{0.5, 0.3, 0.2}, 100),
            (std::vector<int64_t>{134, 93, 73}));
  // Rounding up overshoots: 204 * {0.2525, 0.2525, 0.495} = 51.51, 51.51, 100.98 -> 52, 52, 101
  // (sum 301); the extra token comes off the least important layer (1: ties go to the lower layer).
  EXPECT_EQ(ErrorAwareLayerBudgets(std::vector<double>{0.2525, 0.2525, 0.495}, 100),
            (std::vector<int64_t>{84, 83, 133}));
}

TEST(KvBudget, ErrorAwarePropertiesOnRandomWeights) {
  std::mt19937 rng(11);
  std::exponential_distribution<double> draw(1.0);
  for (int trial = 0; trial < 300; ++trial) {
    const int layers = 1 + trial % 40;
    const int64_t average = 32 + static_cast<int64_t>(trial * 37 % 2048);
    std::vector<double> w(layers);
    const double sharpness = 1 + trial % 6;  // from flat to very peaked
    for (double& x : w) x = std::pow(draw(rng), sharpness);
    if (trial % 3 == 0)  // few distinct levels: equal weights and rounding overshoot are common
      for (double& x : w) x = 1.0 + std::floor(3.0 * std::min(0.999, x / (1.0 + x)));
    const double total_w = std::accumulate(w.begin(), w.end(), 0.0);
    for (double& x : w) x /= total_w;
    const std::vector<int64_t> b = ErrorAwareLayerBudgets(w, average);
    ASSERT_EQ(std::accumulate(b.begin(), b.end(), int64_t{0}), layers * average) << "trial " << trial;
    for (int l = 0; l < layers; ++l) {
      ASSERT_GE(b[l], 32) << "trial " << trial;
      ASSERT_LE(b[l], 3 * average) << "trial " << trial;
      for (int o = 0; o < layers; ++o) {
        if (w[l] > w[o]) {
          ASSERT_GE(b[l], b[o]) << "monotone, trial " << trial;
        }
      }
    }
  }
}

TEST(KvBudget, ErrorAwareRejectsBudgetBelowMinimum) {
  EXPECT_THROW(ErrorAwareLayerBudgets(std::vector<double>{1.0}, 16), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// Observation-window attention, SnapKV, CompressKV

struct Problem {
  Heads heads;
  int64_t n = 0;
  std::vector<float> q, k;  // q [rows, H_q, d], k [n, H_kv, d]
};

Problem MakeProblem(Heads heads, int64_t n, int64_t query_rows, uint32_t seed) {
  Problem p{heads, n, RandomNormal(query_rows * heads.q * heads.dim, seed),
            RandomNormal(n * heads.kv * heads.dim, seed + 1)};
  return p;
}

TEST(KvWindow, ColumnSumsMatchFp64AcrossHeadLayouts) {
  for (Heads heads : {Heads{4, 2, 16}, Heads{6, 1, 13}, Heads{3, 3, 8}, Heads{8, 2, 24}}) {
    const int64_t n = 45, w = 7;
    const Problem p = MakeProblem(heads, n, w, 21 + heads.q);
    ExpectNear(CausalColumnSums(p.q.data(), p.k.data(), heads, n, w), RefColumnSums(p.q, p.k, heads, n, w), 1e-5,
               "column sums");
    const std::vector<double> all = RefColumnSums(p.q, p.k, heads, n, w);
    std::vector<double> prefix;
    for (int h = 0; h < heads.q; ++h) prefix.insert(prefix.end(), all.begin() + h * n, all.begin() + h * n + n - w);
    ExpectNear(WindowAttentionScores(p.q.data(), p.k.data(), heads, n, w), prefix, 1e-5, "window scores");
  }
}

TEST(KvWindow, ThreadedEqualsSerial) {
  const Heads heads{8, 2, 32};
  const Problem p = MakeProblem(heads, 200, 16, 3);
  ThreadPool pool(2);
  EXPECT_EQ(WindowAttentionScores(p.q.data(), p.k.data(), heads, 200, 16, &pool),
            WindowAttentionScores(p.q.data(), p.k.data(), heads, 200, 16));
}

TEST(KvSnapKv, ScoresArePooledThenAveragedOverTheGroup) {
  const Heads heads{6, 2, 8};
  const int64_t m = 30;
  const std::vector<float> window = RandomNormal(heads.q * m, 8);
  for (PoolKind kind : {PoolKind::kAvg, PoolKind::kMax, PoolKind::kNone}) {
    std::vector<double> want(heads.kv * m, 0.0);
    for (int h = 0; h < heads.q; ++h) {
      const std::vector<double> pooled =
          RefPool(std::vector<double>(window.begin() + h * m, window.begin() + (h + 1) * m), 5, kind);
      for (int64_t j = 0; j < m; ++j) want[RefKv(heads, h) * m + j] += pooled[j] / heads.Group();
    }
    ExpectNear(SnapKvScores(window.data(), heads, m, 5, kind), want, 1e-6, "snapkv scores");
  }
}

TEST(KvSnapKv, HandBuiltPooledSelection) {
  // One KV head with two query heads, prefix of 6 tokens, window of 2 (n = 8).
  const Heads heads{2, 1, 4};
  const std::vector<float> window = {0, 0, 9, 0, 0, 0,   // head 0
                                     0, 0, 0, 0, 0, 3};  // head 1
  // avg kernel 3: head 0 -> [0,3,3,3,0,0], head 1 -> [0,0,0,0,1,1]; mean [0,1.5,1.5,1.5,.5,.5].
  const std::vector<float> avg = SnapKvScores(window.data(), heads, 6, 3, PoolKind::kAvg);
  EXPECT_EQ(avg, (std::vector<float>{0, 1.5f, 1.5f, 1.5f, 0.5f, 0.5f}));
  EXPECT_EQ(SnapKvSelect(avg.data(), 1, 8, 2, 5)[0], (Indices{1, 2, 3, 6, 7}));
  // max kernel 3: [0,9,9,9,0,0] and [0,0,0,0,3,3]; mean [0,4.5,4.5,4.5,1.5,1.5]: top 2 -> 1, 2.
  const std::vector<float> mx = SnapKvScores(window.data(), heads, 6, 3, PoolKind::kMax);
  EXPECT_EQ(mx, (std::vector<float>{0, 4.5f, 4.5f, 4.5f, 1.5f, 1.5f}));
  EXPECT_EQ(SnapKvSelect(mx.data(), 1, 8, 2, 4)[0], (Indices{1, 2, 6, 7}));
  // Budget below the window: the window alone.
  EXPECT_EQ(SnapKvSelect(mx.data(), 1, 8, 2, 1)[0], (Indices{6, 7}));
}

TEST(KvSnapKv, BudgetAtLeastPromptKeepsEverything) {
  const Heads heads{4, 2, 8};
  const int64_t n = 40, w = 8;
  const Problem p = MakeProblem(heads, n, w, 31);
  const std::vector<float> window = WindowAttentionScores(p.q.data(), p.k.data(), heads, n, w);
  const std::vector<float> scores = SnapKvScores(window.data(), heads, n - w, 7, PoolKind::kMax);
  for (const Indices& kept : SnapKvSelect(scores.data(), heads.kv, n, w, n)) EXPECT_EQ(kept, Range(0, n));
  for (const Indices& kept : SnapKvSelect(scores.data(), heads.kv, n, w, 20)) {
    EXPECT_EQ(kept.size(), 20u);
    EXPECT_EQ(Indices(kept.end() - w, kept.end()), Range(n - w, n));
  }
}

TEST(KvSnapKv, PlantedKeyIsKeptForItsKvHeadOnly) {
  // The window queries of query heads 2 and 3 (KV head 1 in the HF map; KV head 0 under h % H_kv
  // for head 2) share a direction u, and KV head 1's key at token 5 is u.
  const Heads heads{4, 2, 16};
  const int64_t n = 64, w = 8, planted = 5;
  Problem p = MakeProblem(heads, n, w, 41);
  const std::vector<float> u = RandomNormal(heads.dim, 42, 1.5f);
  for (int64_t i = 0; i < w; ++i)
    for (int h : {2, 3})
      for (int c = 0; c < heads.dim; ++c) p.q[(i * heads.q + h) * heads.dim + c] = u[c] + 0.3f * p.q[(i * heads.q + h) * heads.dim + c];
  for (int c = 0; c < heads.dim; ++c) p.k[(planted * heads.kv + 1) * heads.dim + c] = u[c];
  const std::vector<float> window = WindowAttentionScores(p.q.data(), p.k.data(), heads, n, w);
  const std::vector<float> scores = SnapKvScores(window.data(), heads, n - w, 1, PoolKind::kNone);
  const std::span<const float> kv0(scores.data(), n - w), kv1(scores.data() + (n - w), n - w);
  EXPECT_EQ(KeepTopK(kv1, 1), (Indices{planted}));
  EXPECT_NE(KeepTopK(kv0, 1), (Indices{planted}));
  const std::vector<Indices> kept = SnapKvSelect(scores.data(), heads.kv, n, w, w + 1);
  EXPECT_EQ(kept[1], (Indices{planted, 56, 57, 58, 59, 60, 61, 62, 63}));
}

TEST(KvCompressKv, AllHeadsAndUniformBudgetsEqualSnapKvWithSharedIndices) {
  const Heads heads{8, 2, 16};
  const int64_t n = 120, w = 8;
  const int layers = 4;
  const std::vector<int64_t> budgets = UniformBudget(layers, 40);
  std::vector<int> all_heads(heads.q);
  std::iota(all_heads.begin(), all_heads.end(), 0);
  for (int layer = 0; layer < layers; ++layer) {
    const Problem p = MakeProblem(heads, n, w, 50 + layer);
    const std::vector<float> window = WindowAttentionScores(p.q.data(), p.k.data(), heads, n, w);
    const std::vector<float> compress = CompressKvScores(window.data(), heads, n - w, all_heads, 5, PoolKind::kAvg);
    // SnapKV with one shared index set: its per-KV-head scores averaged over the KV heads.
    const std::vector<float> snap = SnapKvScores(window.data(), heads, n - w, 5, PoolKind::kAvg);
    std::vector<float> shared(n - w, 0.0f);
    for (int g = 0; g < heads.kv; ++g)
      for (int64_t j = 0; j < n - w; ++j) shared[j] += snap[g * (n - w) + j] / heads.kv;
    ExpectNear(compress, Widen(shared), 1e-6, "compresskv vs shared snapkv");
    EXPECT_EQ(KeepPrefixTopAndWindow(compress, n, w, budgets[layer]),
              KeepPrefixTopAndWindow(shared, n, w, budgets[layer]));
  }
}

TEST(KvCompressKv, MeanOverTheGivenHeadsOnly) {
  const Heads heads{4, 1, 4};
  const int64_t m = 12;
  const std::vector<float> window = RandomNormal(heads.q * m, 60);
  const std::vector<int> srh = {3, 1};
  std::vector<double> want(m, 0.0);
  for (int h : srh) {
    const std::vector<double> pooled =
        RefPool(std::vector<double>(window.begin() + h * m, window.begin() + (h + 1) * m), 5, PoolKind::kAvg);
    for (int64_t j = 0; j < m; ++j) want[j] += pooled[j] / srh.size();
  }
  ExpectNear(CompressKvScores(window.data(), heads, m, srh, 5, PoolKind::kAvg), want, 1e-6, "srh mean");
  EXPECT_EQ(KeepPrefixTopAndWindow(std::vector<float>(m, 0.0f), m + 4, 4, m + 4), Range(0, m + 4));
}

TEST(KvCompressKv, NeedleMassAndHeadOrder) {
  const int hq = 3;
  const int64_t n = 6;
  const std::vector<float> probs = {0.1f, 0.1f, 0.5f, 0.2f, 0.1f, 0.0f,   // head 0: 0.7 on [2, 4)
                                    0.0f, 0.0f, 0.1f, 0.1f, 0.8f, 0.0f,   // head 1: 0.2
                                    0.0f, 0.0f, 0.3f, 0.6f, 0.1f, 0.0f};  // head 2: 0.9
  std::vector<double> scores(hq, 0.0);
  AccumulateNeedleMass(probs.data(), hq, n, 2, 4, /*generated_token_in_needle=*/false, scores);
  EXPECT_EQ(scores, (std::vector<double>{0, 0, 0}));
  AccumulateNeedleMass(probs.data(), hq, n, 2, 4, true, scores);
  AccumulateNeedleMass(probs.data(), hq, n, 2, 4, true, scores);
  EXPECT_NEAR(scores[0], 1.4, 1e-6);
  EXPECT_NEAR(scores[1], 0.4, 1e-6);
  EXPECT_NEAR(scores[2], 1.8, 1e-6);
  EXPECT_EQ(OrderHeadsByScore(scores), (std::vector<int>{2, 0, 1}));
  EXPECT_EQ(OrderHeadsByScore(std::vector<double>{1, 2, 2, 0}), (std::vector<int>{1, 2, 0, 3}));
  const std::vector<int32_t> needle = {17, 4, 99};
  EXPECT_TRUE(TokenInNeedle(4, needle));
  EXPECT_FALSE(TokenInNeedle(5, needle));
}

// ---------------------------------------------------------------------------------------------
// H2O

TEST(KvH2o, PrefillScoresAreGroupSummedColumnSums) {
  const Heads heads{4, 2, 8};
  const int64_t n = 33;
  const Problem p = MakeProblem(heads, n, n, 70);
  const std::vector<double> columns = RefColumnSums(p.q, p.k, heads, n, n);
  std::vector<double> want(heads.kv * n, 0.0);
  for (int h = 0; h < heads.q; ++h)
    for (int64_t j = 0; j < n; ++j) want[RefKv(heads, h) * n + j] += columns[h * n + j];
  ExpectNear(H2oPrefillScores(p.q.data(), p.k.data(), heads, n), want, 1e-5, "h2o prefill");
  // Each of the n queries spreads one unit of mass per query head.
  const std::vector<float> got = H2oPrefillScores(p.q.data(), p.k.data(), heads, n);
  EXPECT_NEAR(std::accumulate(got.begin(), got.end(), 0.0), heads.q * n, 1e-3);
}

TEST(KvH2o, AccumulateStepAndEvictionChoice) {
  const Heads heads{4, 2, 8};
  const std::vector<float> probs = {0.5f, 0.5f, 0.0f,  // heads 0 and 1 -> KV head 0
                                    0.2f, 0.2f, 0.6f,  //
                                    1.0f, 0.0f, 0.0f,  // heads 2 and 3 -> KV head 1
                                    0.0f, 0.0f, 1.0f};
  std::vector<float> scores(2 * 5, 1.0f);  // stride 5 > 3 tokens
  H2oAccumulateStep(probs.data(), heads, 3, scores.data(), 5);
  EXPECT_EQ(scores, (std::vector<float>{1.7f, 1.7f, 1.6f, 1, 1, 2, 1, 2, 1, 1}));
  EXPECT_EQ(H2oEvictIndex(std::vector<float>{3, 1, 2, 0, 0}, 2), 1);  // tokens 3, 4 are recent
  EXPECT_EQ(H2oEvictIndex(std::vector<float>{3, 1, 1, 0}, 1), 1);     // tie: the older
  EXPECT_EQ(H2oEvictIndex(std::vector<float>{3, 1}, 2), -1);
}

TEST(KvH2o, AlwaysAttendedTokenSurvivesEviction) {
  // Single head; every query matches key 3 strongly. Budget 8 = 4 recent + 4 heavy; 60 decode steps.
  const Heads heads{1, 1, 16};
  const int64_t budget = 8, recent = 4;
  std::vector<float> all_keys = RandomNormal(80 * heads.dim, 80, 0.3f);
  const std::vector<float> direction = RandomNormal(heads.dim, 81);
  for (int c = 0; c < heads.dim; ++c) all_keys[3 * heads.dim + c] = direction[c];
  std::vector<int32_t> cache;   // original positions of the kept tokens
  std::vector<float> scores;    // their accumulated attention
  for (int32_t position = 0; position < 70; ++position) {
    cache.push_back(position);
    scores.push_back(0.0f);
    std::vector<float> query = RandomNormal(heads.dim, 1000 + position, 0.3f);
    for (int c = 0; c < heads.dim; ++c) query[c] += direction[c];
    std::vector<double> logits;
    for (int32_t t : cache) logits.push_back(Dot64(query.data(), &all_keys[t * heads.dim], heads.dim) / 4.0);
    const std::vector<double> p64 = Softmax64(logits);
    const std::vector<float> probs(p64.begin(), p64.end());
    H2oAccumulateStep(probs.data(), heads, static_cast<int64_t>(cache.size()), scores.data(),
                      static_cast<int64_t>(scores.size()));
    if (static_cast<int64_t>(cache.size()) > budget) {
      const int64_t victim = H2oEvictIndex(scores, recent);
      ASSERT_GE(victim, 0);
      cache.erase(cache.begin() + victim);
      scores.erase(scores.begin() + victim);
    }
  }
  EXPECT_EQ(static_cast<int64_t>(cache.size()), budget);
  EXPECT_TRUE(Contains(cache, 3));
  EXPECT_EQ(Indices(cache.end() - recent, cache.end()), Range(66, 70));
}

// ---------------------------------------------------------------------------------------------
// Quest

TEST(KvQuest, BoundCoversEveryTokenOfItsPage) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const Heads heads{4, 2, 8 + static_cast<int>(seed % 5)};
    const int64_t n = 37 + seed * 3;  // partial last page
    const Problem p = MakeProblem(heads, n, 1, 90 + seed);
    const QuestPages pages(p.k.data(), n, heads.kv, heads.dim, 16);
    ASSERT_EQ(pages.num_pages(), (n + 15) / 16);
    for (int h = 0; h < heads.q; ++h)
      for (int64_t t = 0; t < n; ++t) {
        const int g = RefKv(heads, h);
        const double truth = Dot64(Q(p.q.data(), heads, 0, h), K(p.k.data(), heads, t, g), heads.dim);
        const double bound = QuestUpperBound(Q(p.q.data(), heads, 0, h), pages.Min(g, t / 16), pages.Max(g, t / 16),
                                             heads.dim);
        ASSERT_GE(bound, truth - 1e-5 * std::max(1.0, std::abs(truth))) << "seed " << seed << " token " << t;
      }
  }
}

TEST(KvQuest, BoundIsPositivePartTimesMaxPlusNegativePartTimesMin) {
  const std::vector<float> q = {1.5f, -2.0f, 0.0f, 3.0f}, lo = {-1, -1, 5, 2}, hi = {2, 4, 6, 2};
  // q+ . M + q- . m = 1.5*2 + 3*2 + (-2)*(-1) = 11
  EXPECT_FLOAT_EQ(QuestUpperBound(q.data(), lo.data(), hi.data(), 4), 11.0f);
  // A one-token page bounds exactly that token's score.
  const std::vector<float> key = {0.5f, -1.0f, 2.0f, 0.25f};
  EXPECT_FLOAT_EQ(QuestUpperBound(q.data(), key.data(), key.data(), 4), 0.75f + 2.0f + 0.0f + 0.75f);
}

TEST(KvQuest, AppendEqualsBuildingFromTheWholeCache) {
  const Heads heads{2, 2, 5};
  const int64_t n = 35;
  const std::vector<float> k = RandomNormal(n * heads.kv * heads.dim, 95);
  const QuestPages whole(k.data(), n, heads.kv, heads.dim, 16);
  QuestPages grown(heads.kv, heads.dim, 16);
  for (int64_t t = 0; t < n; ++t) grown.Append(&k[t * heads.kv * heads.dim]);
  ASSERT_EQ(grown.num_pages(), 3);
  for (int g = 0; g < heads.kv; ++g)
    for (int64_t page = 0; page < 3; ++page)
      for (int c = 0; c < heads.dim; ++c) {
        float lo = std::numeric_limits<float>::infinity(), hi = -lo;
        for (int64_t t = page * 16; t < std::min<int64_t>(n, page * 16 + 16); ++t) {
          lo = std::min(lo, k[(t * heads.kv + g) * heads.dim + c]);
          hi = std::max(hi, k[(t * heads.kv + g) * heads.dim + c]);
        }
        ASSERT_EQ(grown.Min(g, page)[c], lo);
        ASSERT_EQ(grown.Max(g, page)[c], hi);
        ASSERT_EQ(whole.Min(g, page)[c], lo);
        ASSERT_EQ(whole.Max(g, page)[c], hi);
      }
}

TEST(KvQuest, PageScoresTakeTheGroupMaxAndSelectionKeepsTheLastPage) {
  const Heads heads{4, 2, 6};
  const int64_t n = 80;
  const Problem p = MakeProblem(heads, n, 1, 97);
  const QuestPages pages(p.k.data(), n, heads.kv, heads.dim, 16);
  const std::vector<float> scores = QuestPageScores(p.q.data(), heads, pages);
  for (int g = 0; g < heads.kv; ++g)
    for (int64_t page = 0; page < 5; ++page) {
      float want = -std::numeric_limits<float>::infinity();
      for (int h = 0; h < heads.q; ++h)
        if (RefKv(heads, h) == g)
          want = std::max(want, QuestUpperBound(Q(p.q.data(), heads, 0, h), pages.Min(g, page), pages.Max(g, page),
                                                heads.dim));
      ASSERT_EQ(scores[g * 5 + page], want);
    }
  const std::vector<float> page_scores = {5, 1, 4, 3, -10};
  EXPECT_EQ(QuestSelectPages(page_scores, 32, 16), (Indices{0, 4}));  // 2 pages: the last + the best
  EXPECT_EQ(QuestSelectPages(page_scores, 48, 16), (Indices{0, 2, 4}));
  EXPECT_EQ(QuestSelectPages(page_scores, 5, 16), (Indices{4}));      // at least the current page
  EXPECT_EQ(QuestSelectPages(page_scores, 80, 16), Range(0, 5));      // budget >= T: every page
}

// ---------------------------------------------------------------------------------------------
// TokenSelect

TEST(KvTokenSelect, FingerprintAndCriticalityMatchFp64) {
  const Heads heads{4, 2, 12};
  const int64_t m = 3, t_total = 50, begin = 4, end = 42;
  const Problem p = MakeProblem(heads, t_total, m, 110);
  const std::vector<float> fingerprint = QueryFingerprint(p.q.data(), m, heads);
  std::vector<double> want_fp(heads.q * heads.dim, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < heads.q * heads.dim; ++c) want_fp[c] += p.q[i * heads.q * heads.dim + c] / 3.0;
  ExpectNear(fingerprint, want_fp, 1e-6, "fingerprint");

  for (bool scaled : {false, true}) {
    std::vector<double> want(end - begin, 0.0);
    for (int h = 0; h < heads.q; ++h) {
      std::vector<double> logits;
      for (int64_t t = begin; t < end; ++t)
        logits.push_back(Dot64(&fingerprint[h * heads.dim], K(p.k.data(), heads, t, RefKv(heads, h)), heads.dim) *
                         (scaled ? 1.0 / std::sqrt(12.0) : 1.0));
      const std::vector<double> vote = Softmax64(logits);
      for (size_t t = 0; t < vote.size(); ++t) want[t] += vote[t];
    }
    ExpectNear(TokenSelectCriticality(fingerprint.data(), p.k.data(), heads, begin, end, scaled), want, 1e-5,
               "criticality");
  }
  ThreadPool pool(2);
  EXPECT_EQ(TokenSelectCriticality(fingerprint.data(), p.k.data(), heads, begin, end, false, &pool),
            TokenSelectCriticality(fingerprint.data(), p.k.data(), heads, begin, end, false));
}

TEST(KvTokenSelect, PlantedTokenIsSelected) {
  const Heads heads{4, 2, 16};
  const int64_t t_total = 300, n_init = 4, n_local = 16, top_k = 8;
  Problem p = MakeProblem(heads, t_total, 1, 120);
  for (float& x : p.k) x *= 0.2f;
  const int64_t planted = 137;
  // Both KV heads' key at `planted` points along the query heads of their group.
  for (int g = 0; g < heads.kv; ++g)
    for (int c = 0; c < heads.dim; ++c)
      p.k[(planted * heads.kv + g) * heads.dim + c] =
          p.q[(2 * g) * heads.dim + c] + p.q[(2 * g + 1) * heads.dim + c];
  const std::vector<float> fingerprint = QueryFingerprint(p.q.data(), 1, heads);
  const std::vector<float> c =
      TokenSelectCriticality(fingerprint.data(), p.k.data(), heads, n_init, t_total - n_local);
  for (int kernel : {0, 6}) {
    const std::vector<float> smooth = Pool1d(c, kernel, PoolKind::kMax);
    const Indices kept = TokenSelectKeep(smooth, t_total, n_init, n_local, top_k);
    EXPECT_TRUE(Contains(kept, planted)) << "kernel " << kernel;
    EXPECT_EQ(kept.size(), static_cast<size_t>(n_init + top_k + n_local));
    EXPECT_EQ(Indices(kept.begin(), kept.begin() + n_init), Range(0, n_init));
    EXPECT_EQ(Indices(kept.end() - n_local, kept.end()), Range(t_total - n_local, t_total));
  }
  // Enough budget: everything.
  EXPECT_EQ(TokenSelectKeep({}, 20, 4, 16, 0), Range(0, 20));
}

TEST(KvTokenSelect, SelectionCacheThresholds) {
  const std::vector<float> a = RandomNormal(64, 130), b = RandomNormal(64, 131);
  std::vector<float> negated = a;
  for (float& x : negated) x = -x;
  const Indices chosen = {3, 9, 12};

  SelectionCache never(1.0);
  EXPECT_EQ(never.Find(a), nullptr);  // empty
  never.Store(a, chosen);
  EXPECT_EQ(never.Find(b), nullptr);
  std::vector<float> nudged = a;
  nudged[0] += 0.01f;
  EXPECT_EQ(never.Find(nudged), nullptr);
  ASSERT_NE(never.Find(a), nullptr);  // an identical fingerprint is cosine 1
  EXPECT_EQ(*never.Find(a), chosen);

  SelectionCache always(-1.0);
  always.Store(a, chosen);
  ASSERT_NE(always.Find(b), nullptr);
  ASSERT_NE(always.Find(negated), nullptr);
  EXPECT_EQ(*always.Find(negated), chosen);
  always.Clear();
  EXPECT_EQ(always.Find(a), nullptr);

  SelectionCache paper(0.9);
  paper.Store(a, chosen);
  EXPECT_NE(paper.Find(nudged), nullptr);
  EXPECT_EQ(paper.Find(b), nullptr);
  EXPECT_NEAR(CosineSimilarity(a, negated), -1.0, 1e-12);
}

// ---------------------------------------------------------------------------------------------
// PromptDistill

TEST(KvPromptDistill, ScoresMatchFp64InBothModes) {
  const Heads heads{6, 2, 10};
  const int64_t n = 40;
  const Problem p = MakeProblem(heads, n, 1, 140);
  for (bool softmax : {false, true}) {
    std::vector<double> want(n, 0.0);
    for (int h = 0; h < heads.q; ++h) {
      std::vector<double> row;
      for (int64_t t = 0; t < n; ++t)
        row.push_back(Dot64(Q(p.q.data(), heads, 0, h), K(p.k.data(), heads, t, RefKv(heads, h)), heads.dim));
      if (softmax) {
        for (double& x : row) x /= std::sqrt(10.0);
        row = Softmax64(row);
      }
      for (int64_t t = 0; t < n; ++t) want[t] += row[t];
    }
    ExpectNear(PromptDistillScores(p.q.data(), p.k.data(), heads, n, softmax), want, 1e-5, "promptdistill");
  }
}

TEST(KvPromptDistill, SelectionKeepsTheLastTokensAndAllAtKEqualsN) {
  const Heads heads{2, 1, 8};
  const int64_t n = 30;
  Problem p = MakeProblem(heads, n, 1, 150);
  for (int c = 0; c < heads.dim; ++c) p.k[11 * heads.dim + c] = 3.0f * (p.q[c] + p.q[heads.dim + c]);
  const std::vector<float> s = PromptDistillScores(p.q.data(), p.k.data(), heads, n, true);
  const Indices kept = KeepTopK(s, 6, 0, 4);
  EXPECT_EQ(kept.size(), 6u);
  EXPECT_TRUE(Contains(kept, 11));
  EXPECT_EQ(Indices(kept.end() - 4, kept.end()), Range(26, 30));
  EXPECT_EQ(KeepTopK(s, n, 0, 4), Range(0, n));
}

// ---------------------------------------------------------------------------------------------
// StreamingLLM

TEST(KvStreamingLlm, SinksPlusWindow) {
  EXPECT_EQ(StreamingLlmKeep(10, 4, 20), Range(0, 10));
  EXPECT_EQ(StreamingLlmKeep(24, 4, 20), Range(0, 24));
  EXPECT_EQ(StreamingLlmKeep(12, 2, 3), (Indices{0, 1, 9, 10, 11}));
  EXPECT_EQ(StreamingLlmKeep(12, 0, 3), (Indices{9, 10, 11}));
}

// ---------------------------------------------------------------------------------------------
// ReKV

TEST(KvRekv, RepresentativeAndQueryVectorMatchFp64) {
  const Heads heads{6, 2, 4};
  const int64_t block = 5, m = 3;
  const Problem p = MakeProblem(heads, block, m, 160);
  std::vector<double> rep(heads.kv * heads.dim, 0.0), query(heads.kv * heads.dim, 0.0);
  for (int64_t t = 0; t < block; ++t)
    for (int g = 0; g < heads.kv; ++g)
      for (int c = 0; c < heads.dim; ++c) rep[g * heads.dim + c] += K(p.k.data(), heads, t, g)[c] / 5.0;
  for (int64_t i = 0; i < m; ++i)
    for (int h = 0; h < heads.q; ++h)
      for (int c = 0; c < heads.dim; ++c) query[RefKv(heads, h) * heads.dim + c] += Q(p.q.data(), heads, i, h)[c] / 9.0;
  ExpectNear(RekvBlockRepresentative(p.k.data(), block, heads.kv, heads.dim), rep, 1e-6, "representative");
  ExpectNear(RekvQueryVector(p.q.data(), m, heads), query, 1e-6, "query vector");
  const std::vector<float> reps = RandomNormal(4 * 8, 161), qv = RandomNormal(8, 162);
  std::vector<double> sims;
  for (int b = 0; b < 4; ++b) sims.push_back(Dot64(qv.data(), &reps[b * 8], 8));  // raw, not normalised
  ExpectNear(RekvSimilarities(qv.data(), reps.data(), 4, 8), sims, 1e-5, "similarities");
}

TEST(KvRekv, PlantedBlockIsRetrieved) {
  const Heads heads{4, 2, 16};
  const int64_t block = 8, num_blocks = 20, question = 4, planted = 13;
  Problem p = MakeProblem(heads, block * num_blocks, question, 170);
  for (float& x : p.k) x *= 0.3f;
  const std::vector<float> target = RekvQueryVector(p.q.data(), question, heads);
  for (int64_t t = planted * block; t < (planted + 1) * block; ++t)
    for (int64_t c = 0; c < heads.kv * heads.dim; ++c) p.k[t * heads.kv * heads.dim + c] += target[c];
  std::vector<float> reps;
  for (int64_t b = 0; b < num_blocks; ++b) {
    const std::vector<float> r =
        RekvBlockRepresentative(&p.k[b * block * heads.kv * heads.dim], block, heads.kv, heads.dim);
    reps.insert(reps.end(), r.begin(), r.end());
  }
  const std::vector<float> sims = RekvSimilarities(target.data(), reps.data(), num_blocks, heads.kv * heads.dim);
  EXPECT_EQ(RekvSelectBlocks(sims, 1), (Indices{static_cast<int32_t>(planted)}));
  EXPECT_TRUE(Contains(RekvSelectBlocks(sims, 4), planted));
  EXPECT_EQ(RekvSelectBlocks(sims, num_blocks), Range(0, num_blocks));
}

TEST(KvRekv, ChunkAveraging) {
  const std::vector<float> sims = {1, 1, 9, -9, 4, 4, 5};  // chunks of 2: means 1, 0, 4, 5 (last: one block)
  EXPECT_EQ(RekvSelectBlocks(sims, 2, 2), (Indices{6}));           // one chunk: the last
  EXPECT_EQ(RekvSelectBlocks(sims, 4, 2), (Indices{4, 5, 6}));     // two chunks: 2 and 3
  EXPECT_EQ(RekvSelectBlocks(sims, 2, 1), (Indices{2, 6}));
  EXPECT_EQ(RekvSelectBlocks(sims, 7, 3), Range(0, 7));
}

TEST(KvHeads, RejectsBadLayouts) {
  const std::vector<float> x(64, 0.0f);
  EXPECT_THROW(CausalColumnSums(x.data(), x.data(), Heads{3, 2, 4}, 2, 1), std::invalid_argument);
  EXPECT_THROW(CausalColumnSums(x.data(), x.data(), Heads{2, 1, 4}, 2, 3), std::invalid_argument);
  EXPECT_THROW(KeepTopK(x, -1), std::invalid_argument);
}

// Per-head budgets from scores: the best entries over all rows jointly, counted per row.
TEST(KvBudgets, FromScoresFollowTheJointTopEntries) {
  const std::vector<float> scores = {0.90f, 0.05f, 0.03f, 0.02f,   // a concentrated head
                                     0.26f, 0.25f, 0.25f, 0.24f};  // a diffuse one
  EXPECT_EQ(BudgetsFromScores(scores.data(), 2, 4, 4), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(BudgetsFromScores(scores.data(), 2, 4, 8), (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(BudgetsFromScores(scores.data(), 2, 4, 0), (std::vector<int64_t>{0, 0}));
  // Random rows: counts sum to the total and equal a naive joint sort.
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u;
  std::vector<float> r(3 * 50);
  for (float& x : r) x = u(rng);
  std::vector<std::pair<float, int>> all;
  for (int i = 0; i < 150; ++i) all.push_back({-r[i], i});
  std::sort(all.begin(), all.end());
  std::vector<int64_t> want(3, 0);
  for (int i = 0; i < 70; ++i) ++want[all[i].second / 50];
  EXPECT_EQ(BudgetsFromScores(r.data(), 3, 50, 70), want);
}

}  // namespace
}  // namespace qattn::kv
