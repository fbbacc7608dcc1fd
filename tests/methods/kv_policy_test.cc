// The KV policies end to end on a paged cache: each policy chooses (and may evict) tokens, the
// core's paged decode kernel attends over its runs, and the result is compared with a plain fp64
// attention over the tokens the policy should have chosen (computed here from the spec, not by
// the policy code).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "methods/kv_cache/calibration.h"
#include "methods/kv_cache/kv_policy.h"
#include "methods/kv_cache/quest_index.h"

namespace qattn::kv {
namespace {

constexpr int kHq = 8, kHkv = 2, kDim = 32;

struct Fixture {
  PagedKvCache cache;
  int seq;
  std::vector<float> k, v;  // [n, H_kv, d] what was appended
  std::vector<float> q;     // [n, H_q, d] the prompt's queries
  int64_t n;
  explicit Fixture(int64_t n_tokens, KvDType t = KvDType::kF32, uint32_t seed = 1)
      : cache(PagedCacheConfig{1, kHkv, kDim, t, 64}), seq(cache.NewSequence()), k(n_tokens * kHkv * kDim),
        v(k.size()), q(n_tokens * kHq * kDim), n(n_tokens) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    for (float& x : k) x = normal(rng);
    for (float& x : v) x = normal(rng);
    for (float& x : q) x = normal(rng);
  }
  void Fill() {
    std::vector<int32_t> pos(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = int32_t(i);
    cache.Append(seq, 0, k.data(), v.data(), kHkv * kDim, n, pos.data());
  }
  LayerRef At() { return LayerRef{&cache, seq, 0, Heads{kHq, kHkv, kDim}}; }
  const float* key(int64_t t, int h) const { return &k[(t * kHkv + h) * kDim]; }
  const float* value(int64_t t, int h) const { return &v[(t * kHkv + h) * kDim]; }
};

// fp64 attention of one query [H_q, d] over the given original token indices of each KV head.
std::vector<double> Reference(const Fixture& f, const float* q, const std::vector<std::vector<int32_t>>& tokens) {
  std::vector<double> out(kHq * kDim, 0.0);  // [H_q, d]
  for (int h = 0; h < kHq; ++h) {
    const int kh = h / (kHq / kHkv);
    std::vector<double> s;
    for (int32_t t : tokens[kh]) {
      double dot = 0;
      for (int i = 0; i < kDim; ++i) dot += double(q[h * kDim + i]) * f.key(t, kh)[i];
      s.push_back(dot / std::sqrt(double(kDim)));
    }
    const double m = *std::max_element(s.begin(), s.end());
    double sum = 0;
    for (double& x : s) sum += (x = std::exp(x - m));
    for (size_t j = 0; j < tokens[kh].size(); ++j) {
      for (int i = 0; i < kDim; ++i) out[h * kDim + i] += s[j] / sum * f.value(tokens[kh][j], kh)[i];
    }
  }
  return out;
}

// The policy's decode step: its runs, attended by the paged kernel. out [H_q, d].
std::vector<float> Step(KvPolicy& p, Fixture& f, const float* q, std::vector<KvRun>* runs_out = nullptr) {
  std::vector<int64_t> offsets;
  std::vector<KvRun> runs;
  p.SelectForDecode(f.At(), q, &offsets, &runs, nullptr);
  std::vector<float> out(kHq * kDim);
  PagedDecodeArgs a;
  a.q = MakeView(const_cast<float*>(q), DType::kF32, {1, kHq, kDim});
  a.map = HeadMap{kHq, kHkv, kHkv};
  a.d_v = kDim;
  a.kv_dtype = f.cache.config().dtype;
  a.run_offsets = offsets;
  a.runs = runs;
  a.query_positions = {f.n};
  a.out = MakeView(out.data(), DType::kF32, {1, kHq, kDim});
  AttendDecodePaged(a);
  if (runs_out) *runs_out = runs;
  return out;
}

// The original positions one KV head's runs cover.
std::set<int32_t> Positions(const std::vector<KvRun>& runs) {
  std::set<int32_t> s;
  for (const KvRun& r : runs) {
    for (int i = 0; i < r.tokens; ++i) s.insert(r.positions ? r.positions[i] : int32_t(r.position + i));
  }
  return s;
}

void ExpectNear(const std::vector<float>& got, const std::vector<double>& want, const std::string& what) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, std::abs(got[i] - want[i]));
    norm = std::max(norm, std::abs(want[i]));
  }
  EXPECT_LT(err, 2e-5 * std::max(1.0, norm)) << what;
}

std::vector<std::vector<int32_t>> AllTokens(int64_t n) {
  std::vector<int32_t> all(n);
  for (int64_t i = 0; i < n; ++i) all[i] = int32_t(i);
  return std::vector<std::vector<int32_t>>(kHkv, all);
}

TEST(KvPolicy, EveryPolicyWithTheWholeContextEqualsDense) {
  const int64_t n = 300;
  for (const std::string spec :
       {"streamingllm:budget=400", "snapkv:budget=400", "compresskv:budget=400", "h2o:budget=400",
        "quest:budget=400,skip_layers=0", "tokenselect:n_init=16,n_local=16,top_k=400",
        "rekv:block=16,topk=1000,n_init=16,n_local=32", "rekv:block=32,topk=1000,n_init=16,n_local=32,memory_mb=0",
        "promptdistill:layer=0,budget=400"}) {
    Fixture f(n);
    f.Fill();
    auto p = MakeKvPolicy(spec);
    p->AfterPrompt(f.At(), f.q.data(), kHq * kDim, n, nullptr);
    const float* q = &f.q[(n - 1) * kHq * kDim];
    ExpectNear(Step(*p, f, q), Reference(f, q, AllTokens(n)), spec);
    EXPECT_TRUE(p->TakePromptSelection(0).empty()) << spec;
  }
}

// SnapKV with adaptive per-head budgets: heads keep different numbers of tokens (B x H_kv in all),
// and decode over those unequal heads equals fp64 attention over exactly what each head kept.
TEST(KvPolicy, SnapKvAdaptiveHeadBudgetsKeepUnequalHeads) {
  const int64_t n = 200;
  Fixture f(n, KvDType::kF32, 12);
  for (int64_t t = 0; t < n; ++t) {  // make KV head 0's attention far more concentrated than head 1's
    for (int i = 0; i < kDim; ++i) f.k[(t * kHkv + 0) * kDim + i] *= (t % 50 == 0) ? 6.0f : 0.2f;
  }
  f.Fill();
  auto p = MakeKvPolicy("snapkv:budget=40,window=8,head_budgets=adaptive");
  p->AfterPrompt(f.At(), f.q.data(), kHq * kDim, n, nullptr);
  const int64_t a = f.cache.length(f.seq, 0, 0), b = f.cache.length(f.seq, 0, 1);
  EXPECT_EQ(a + b, 2 * 40);
  EXPECT_NE(a, b);
  std::vector<std::vector<int32_t>> kept(kHkv);
  for (int h = 0; h < kHkv; ++h) kept[h] = f.cache.positions(f.seq, 0, h);
  for (int h = 0; h < kHkv; ++h) EXPECT_EQ(kept[h].back(), int32_t(n - 1));  // the window stays
  const float* q = &f.q[(n - 1) * kHq * kDim];
  ExpectNear(Step(*p, f, q), Reference(f, q, kept), "snapkv adaptive");
}

TEST(KvPolicy, StreamingLlmKeepsSinksAndTheRecentWindow) {
  Fixture f(200);
  f.Fill();
  auto p = MakeKvPolicy("streamingllm:sinks=4,window=60");
  std::vector<KvRun> runs;
  const float* q = &f.q[0];
  const std::vector<float> out = Step(*p, f, q, &runs);
  std::vector<int32_t> want;
  for (int32_t t = 0; t < 4; ++t) want.push_back(t);
  for (int32_t t = 140; t < 200; ++t) want.push_back(t);
  EXPECT_EQ(f.cache.positions(f.seq, 0, 1), want);
  ExpectNear(out, Reference(f, q, std::vector<std::vector<int32_t>>(kHkv, want)), "streamingllm");
}

TEST(KvPolicy, QuestReadsThePagesWithTheHighestBounds) {
  const int64_t n = 256;  // 16 pages of 16
  Fixture f(n, KvDType::kF32, 3);
  f.Fill();
  auto p = MakeKvPolicy("quest:budget=64,skip_layers=0");
  const float* q = &f.q[5 * kHq * kDim];
  std::vector<KvRun> runs;
  std::vector<int64_t> offsets;
  p->SelectForDecode(f.At(), q, &offsets, &runs, nullptr);
  for (int kh = 0; kh < kHkv; ++kh) {
    // Naive bound per page: max over the group's heads of sum_i max(q_i * max_t k_ti, q_i * min_t k_ti).
    std::vector<std::pair<double, int>> pages;
    for (int page = 0; page < 16; ++page) {
      double best = -1e300;
      for (int h = kh * 4; h < kh * 4 + 4; ++h) {
        double u = 0;
        for (int i = 0; i < kDim; ++i) {
          double lo = 1e300, hi = -1e300;
          for (int t = page * 16; t < page * 16 + 16; ++t) {
            lo = std::min<double>(lo, f.key(t, kh)[i]);
            hi = std::max<double>(hi, f.key(t, kh)[i]);
          }
          u += std::max(q[h * kDim + i] * hi, q[h * kDim + i] * lo);
        }
        best = std::max(best, u);
      }
      pages.push_back({page == 15 ? 1e300 : best, page});  // the last page is always read
    }
    std::sort(pages.begin(), pages.end(), [](auto a, auto b) { return a.first > b.first; });
    std::set<int32_t> want;
    for (int i = 0; i < 4; ++i) {
      for (int t = 0; t < 16; ++t) want.insert(pages[i].second * 16 + t);
    }
    const std::vector<KvRun> head(runs.begin() + offsets[kh], runs.begin() + offsets[kh + 1]);
    EXPECT_EQ(Positions(head), want) << "kv head " << kh;
  }
}

TEST(KvPolicy, TokenSelectFindsAPlantedCriticalToken) {
  const int64_t n = 400, planted = 201;
  Fixture f(n, KvDType::kF32, 4);
  const float* q = &f.q[(n - 1) * kHq * kDim];
  for (int kh = 0; kh < kHkv; ++kh) {  // the planted key points along the sum of its group's queries
    for (int i = 0; i < kDim; ++i) {
      double s = 0;
      for (int h = kh * 4; h < kh * 4 + 4; ++h) s += q[h * kDim + i];
      f.k[(planted * kHkv + kh) * kDim + i] = float(s);
    }
  }
  f.Fill();
  auto p = MakeKvPolicy("tokenselect:n_init=16,n_local=32,top_k=8");
  std::vector<KvRun> runs;
  std::vector<int64_t> offsets;
  p->SelectForDecode(f.At(), q, &offsets, &runs, nullptr);
  for (int kh = 0; kh < kHkv; ++kh) {
    const std::set<int32_t> got = Positions({runs.begin() + offsets[kh], runs.begin() + offsets[kh + 1]});
    EXPECT_EQ(got.size(), 16u + 8u + 32u);
    EXPECT_TRUE(got.count(int32_t(planted))) << "kv head " << kh;
    EXPECT_TRUE(got.count(0) && got.count(15) && got.count(int32_t(n - 1)));
  }
}

TEST(KvPolicy, RekvRetrievesAPlantedBlockFromDisk) {
  const int64_t n = 512, block = 32;
  Fixture f(n, KvDType::kBF16, 5);
  const float* q = &f.q[(n - 1) * kHq * kDim];
  const int64_t planted_block = 5;  // tokens [16 + 5 * 32, ...) after the 16 initial tokens
  for (int64_t t = 16 + planted_block * block; t < 16 + (planted_block + 1) * block; ++t) {
    for (int kh = 0; kh < kHkv; ++kh) {
      for (int i = 0; i < kDim; ++i) f.k[(t * kHkv + kh) * kDim + i] = 3.0f * q[kh * 4 * kDim + i];
    }
  }
  f.Fill();
  auto p = MakeKvPolicy("rekv:block=32,topk=1,n_init=16,n_local=64,memory_mb=0");
  p->AfterPrompt(f.At(), f.q.data(), kHq * kDim, n, nullptr);
  EXPECT_GT(p->stats().blocks_on_disk, 0);
  std::vector<KvRun> runs;
  Step(*p, f, q, &runs);
  const std::set<int32_t> got = Positions(runs);
  for (int64_t t = 16 + planted_block * block; t < 16 + (planted_block + 1) * block; ++t) {
    EXPECT_TRUE(got.count(int32_t(t))) << t;
  }
  EXPECT_GT(p->stats().disk_loads, 0);
}

TEST(KvPolicy, H2oEvictsDownToItsBudgetAndKeepsAHeavyHitter) {
  const int64_t n = 200, heavy = 37;
  Fixture f(n, KvDType::kF32, 6);
  for (int kh = 0; kh < kHkv; ++kh) {  // a key every query attends to: large along all queries' mean
    for (int i = 0; i < kDim; ++i) {
      double s = 0;
      for (int64_t t = 0; t < n; ++t) {
        for (int h = kh * 4; h < kh * 4 + 4; ++h) s += f.q[(t * kHq + h) * kDim + i];
      }
      f.k[(heavy * kHkv + kh) * kDim + i] = float(s / n * 8);
    }
  }
  f.Fill();
  auto p = MakeKvPolicy("h2o:budget=64,recent=0.5");
  p->AfterPrompt(f.At(), f.q.data(), kHq * kDim, n, nullptr);
  for (int kh = 0; kh < kHkv; ++kh) {
    EXPECT_EQ(f.cache.length(f.seq, 0, kh), 64);
    const auto& pos = f.cache.positions(f.seq, 0, kh);
    EXPECT_TRUE(std::find(pos.begin(), pos.end(), int32_t(heavy)) != pos.end()) << "kv head " << kh;
    EXPECT_EQ(pos.back(), int32_t(n - 1));
  }
}

// QuestIndex (bf16 bounds, vdpbf16ps) against the definition: for every page its score bounds the
// true q.k of every key in the page (q rounded to bf16, as the index rounds it), stays within
// bf16 rounding of the f32 bound of QuestPageScores, and both ISA paths agree.
TEST(KvPolicy, QuestIndexBoundsEveryKeyOfItsPages) {
  const int64_t n = 1000;  // 63 pages of 16 (the last partial), 32 of 32
  Fixture f(n, KvDType::kF32, 9);
  // Tokens [64, 128) repeat one key per head: there the bound is tight (U = q.k), so a bound that
  // rounded M down or m up would fall below the true score.
  for (int64_t t = 65; t < 128; ++t) {
    for (int kh = 0; kh < kHkv; ++kh) std::copy_n(f.key(64, kh), kDim, &f.k[(t * kHkv + kh) * kDim]);
  }
  const Heads heads{kHq, kHkv, kDim};
  const float* q = &f.q[7 * kHq * kDim];
  for (int page : {16, 32}) {
    QuestIndex index(kHkv, kDim, page);
    index.Append(f.k.data(), 600);
    index.Append(f.k.data() + 600 * kHkv * kDim, n - 600);  // appends continue a partial page
    ASSERT_EQ(index.num_pages(), (n + page - 1) / page);
    const QuestPages plain(f.k.data(), n, kHkv, kDim, page);
    const std::vector<float> reference = QuestPageScores(q, heads, plain);  // [H_kv, pages] f32
    std::vector<float> scores[2];
    for (int path = 0; path < 2; ++path) {
      SetIsaCap(path == 0 ? Isa::kAvx512Bf16 : Isa::kAvx512);  // the bf16 path where the CPU has it, then portable
      scores[path] = index.Scores(q, heads);
    }
    SetIsaCap(Isa::kAvx512Bf16);
    for (int kh = 0; kh < kHkv; ++kh) {
      for (int64_t p = 0; p < index.num_pages(); ++p) {
        const float got = scores[0][kh * index.num_pages() + p];
        EXPECT_NEAR(got, scores[1][kh * index.num_pages() + p], 1e-4 * (1 + std::abs(got)));
        double magnitude = 0, best_true = -1e300;
        for (int h = kh * 4; h < kh * 4 + 4; ++h) {
          for (int64_t t = p * page; t < std::min<int64_t>(n, (p + 1) * page); ++t) {
            double dot = 0;
            for (int i = 0; i < kDim; ++i) {
              const double qi = BF16ToF32(F32ToBF16(q[h * kDim + i]));
              dot += qi * f.key(t, kh)[i];
              magnitude += std::abs(qi * f.key(t, kh)[i]) / page;
            }
            best_true = std::max(best_true, dot);
          }
        }
        EXPECT_GE(got, best_true - 1e-5 * magnitude * page) << "page " << p << " of " << page;
        EXPECT_NEAR(got, reference[kh * index.num_pages() + p], 0.02 * magnitude) << "page " << p;
      }
    }
  }
}

// CompressKV calibration probes: the attention mass on a span, and the window-output error of an
// eviction, each against a direct fp64 computation.
TEST(KvPolicy, AttentionMassProbeMeasuresTheSpansShare) {
  const int64_t n = 120;
  Fixture f(n, KvDType::kF32, 10);
  f.Fill();
  AttentionMassProbe probe;
  probe.SetSpan(30, 45);
  const float* q = &f.q[(n - 1) * kHq * kDim];
  std::vector<int64_t> offsets;
  std::vector<KvRun> runs;
  probe.SelectForDecode(f.At(), q, &offsets, &runs, nullptr);
  EXPECT_EQ(Positions(runs).size(), size_t(n));  // attends to everything
  for (int h = 0; h < kHq; ++h) {
    std::vector<double> s(n);
    for (int64_t t = 0; t < n; ++t) {
      double dot = 0;
      for (int i = 0; i < kDim; ++i) dot += double(q[h * kDim + i]) * f.key(t, h / 4)[i];
      s[t] = dot / std::sqrt(double(kDim));
    }
    const double m = *std::max_element(s.begin(), s.end());
    double total = 0, span = 0;
    for (int64_t t = 0; t < n; ++t) {
      total += std::exp(s[t] - m);
      if (t >= 30 && t < 45) span += std::exp(s[t] - m);
    }
    EXPECT_NEAR(probe.last_step()[0][h], span / total, 1e-6) << "head " << h;
  }
}

TEST(KvPolicy, LayerErrorMeterIsZeroWithoutEvictionAndMatchesADirectComputation) {
  const int64_t n = 100, w = 8;
  for (int64_t budget : {200, 40}) {
    Fixture f(n, KvDType::kF32, 11);
    f.Fill();
    LayerErrorMeter meter(MakeKvPolicy("streamingllm:sinks=4,window=" + std::to_string(budget - 4)), w);
    meter.AfterPrompt(f.At(), f.q.data(), kHq * kDim, n, nullptr);
    // Direct: window query i (index n - w + i) over all keys <= it, and over the kept ones.
    auto window_output = [&](bool kept_only) {
      std::vector<double> out;
      for (int64_t i = n - w; i < n; ++i) {
        for (int h = 0; h < kHq; ++h) {
          std::vector<int32_t> keys;
          for (int32_t t = 0; t <= i; ++t) {
            if (!kept_only || budget >= n || t < 4 || t >= n - (budget - 4)) keys.push_back(t);
          }
          std::vector<double> s;
          for (int32_t t : keys) {
            double dot = 0;
            for (int c = 0; c < kDim; ++c) dot += double(f.q[(i * kHq + h) * kDim + c]) * f.key(t, h / 4)[c];
            s.push_back(dot / std::sqrt(double(kDim)));
          }
          const double m = *std::max_element(s.begin(), s.end());
          double sum = 0;
          for (double& x : s) sum += (x = std::exp(x - m));
          for (int c = 0; c < kDim; ++c) {
            double o = 0;
            for (size_t j = 0; j < keys.size(); ++j) o += s[j] / sum * f.value(keys[j], h / 4)[c];
            out.push_back(o);
          }
        }
      }
      return out;
    };
    const std::vector<double> full = window_output(false), cut = window_output(true);
    double diff = 0, norm = 0;
    for (size_t i = 0; i < full.size(); ++i) {
      diff += (cut[i] - full[i]) * (cut[i] - full[i]);
      norm += full[i] * full[i];
    }
    const double want = std::sqrt(diff) / (std::sqrt(norm) + 1e-5);
    ASSERT_EQ(meter.errors().size(), 1u);
    EXPECT_NEAR(meter.errors()[0], want, 1e-6 + 1e-6 * want) << "budget " << budget;
    if (budget >= n) EXPECT_EQ(meter.errors()[0], 0.0);
    else EXPECT_GT(meter.errors()[0], 1e-3);
  }
}

TEST(KvPolicy, UnknownNamesAndBadOptionsAreRefused) {
  EXPECT_THROW(MakeKvPolicy("nosuch"), std::invalid_argument);
  EXPECT_THROW(MakeKvPolicy("quest:budget=0"), std::invalid_argument);
  EXPECT_THROW(MakeKvPolicy("snapkv:pool=median"), std::invalid_argument);
  EXPECT_THROW(MakeKvPolicy("rekv:block=20"), std::invalid_argument);
  EXPECT_THROW(MakeKvPolicy("quest:page=24"), std::invalid_argument);
  EXPECT_THROW(MakeKvPolicy("snapkv:head_budgets=sometimes"), std::invalid_argument);
  EXPECT_THROW(MakeKvPolicy("h2o:nonsense=1"), std::invalid_argument);
}

}  // namespace
}  // namespace qattn::kv
