// The paged KV cache: append and read back, page accounting, copy-on-write forks, eviction by
// Keep (bit-exact copies), runs, and bad input. The expected values come from the f32 inputs the
// test writes (f32 pages store them exactly; quantized pages are compared with their own
// round trip of the same token, which StoreKvToken/LoadKvTokens define).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "methods/kv_cache/paged_cache.h"
#include "methods/kv_cache/staircase.h"

namespace qattn::kv {
namespace {

constexpr int kHeads = 2, kDim = 64, kLayers = 2;

PagedCacheConfig Config(KvDType t, int page_tokens = 32) {
  PagedCacheConfig c;
  c.n_layer = kLayers;
  c.n_head_kv = kHeads;
  c.head_dim = kDim;
  c.dtype = t;
  c.page_tokens = page_tokens;
  return c;
}

// n tokens of random keys and values: [n, H_kv * d] each.
struct Tokens {
  std::vector<float> k, v;
  std::vector<int32_t> pos;
  Tokens(int64_t n, int64_t first_pos, uint32_t seed) : k(n * kHeads * kDim), v(n * kHeads * kDim), pos(n) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist;
    for (float& x : k) x = dist(rng);
    for (float& x : v) x = dist(rng);
    for (int64_t i = 0; i < n; ++i) pos[i] = int32_t(first_pos + i);
  }
  int64_t n() const { return int64_t(pos.size()); }
  const float* key(int64_t t, int h) const { return &k[(t * kHeads + h) * kDim]; }
  const float* value(int64_t t, int h) const { return &v[(t * kHeads + h) * kDim]; }
};

void AppendAll(PagedKvCache& c, int seq, const Tokens& t) {
  for (int l = 0; l < kLayers; ++l) c.Append(seq, l, t.k.data(), t.v.data(), kHeads * kDim, t.n(), t.pos.data());
}

// Reads one token of a stream: k, v [d].
void ReadToken(const PagedKvCache& c, int seq, int layer, int head, int64_t i, std::vector<float>* k,
               std::vector<float>* v) {
  k->resize(kDim);
  v->resize(kDim);
  c.Read(seq, layer, head, i, 1, k->data(), v->data());
}

// What a token looks like after a store in format t: its own round trip through one tile.
std::vector<float> RoundTrip(KvDType t, bool value, const float* x) {
  std::vector<uint8_t> tile(KvTileBytes(t, kDim, value));
  StoreKvToken(t, value, x, kDim, tile.data(), 3);
  std::vector<float> out(4 * kDim);
  LoadKvTokens(t, value, tile.data(), 4, kDim, out.data());
  return std::vector<float>(out.begin() + 3 * kDim, out.end());
}

TEST(PagedCache, F32AppendReadsBackExactlyAcrossPages) {
  PagedKvCache c(Config(KvDType::kF32));
  const int seq = c.NewSequence();
  const Tokens a(50, 0, 1), b(30, 50, 2);  // two appends crossing page boundaries (32 tokens)
  AppendAll(c, seq, a);
  AppendAll(c, seq, b);
  EXPECT_EQ(c.length(seq, 1, 1), 80);
  EXPECT_EQ(c.pages_in_use(), kLayers * kHeads * 3);  // ceil(80 / 32) pages per stream
  std::vector<float> k, v;
  for (int64_t i : {0, 31, 32, 49, 50, 79}) {
    const Tokens& src = i < 50 ? a : b;
    const int64_t j = i < 50 ? i : i - 50;
    ReadToken(c, seq, 1, 1, i, &k, &v);
    EXPECT_EQ(0, std::memcmp(k.data(), src.key(j, 1), kDim * 4)) << i;
    EXPECT_EQ(0, std::memcmp(v.data(), src.value(j, 1), kDim * 4)) << i;
    EXPECT_EQ(c.positions(seq, 1, 1)[i], int32_t(i));
  }
}

TEST(PagedCache, QuantizedTokensReadBackAsTheirOwnRoundTrip) {
  for (KvDType t : {KvDType::kBF16, KvDType::kF16, KvDType::kInt8, KvDType::kInt4}) {
    PagedKvCache c(Config(t));
    const int seq = c.NewSequence();
    const Tokens a(40, 0, 3);
    AppendAll(c, seq, a);
    std::vector<float> k, v;
    for (int64_t i : {0, 17, 39}) {
      ReadToken(c, seq, 0, 1, i, &k, &v);
      EXPECT_EQ(k, RoundTrip(t, false, a.key(i, 1))) << KvDTypeName(t) << " token " << i;
      EXPECT_EQ(v, RoundTrip(t, true, a.value(i, 1))) << KvDTypeName(t) << " token " << i;
    }
  }
}

TEST(PagedCache, ForkSharesPagesAndCopiesOnWrite) {
  PagedKvCache c(Config(KvDType::kF32));
  const int parent = c.NewSequence();
  const Tokens prefix(40, 0, 4);  // a full page and a partial one per stream
  AppendAll(c, parent, prefix);
  const int64_t before = c.pages_in_use();
  const int child = c.ForkSequence(parent);
  EXPECT_EQ(c.pages_in_use(), before);  // nothing copied yet
  const Tokens child_tail(5, 40, 5), parent_tail(5, 40, 6);
  AppendAll(c, child, child_tail);  // writes into the shared partial page: it is copied
  EXPECT_EQ(c.pages_in_use(), before + kLayers * kHeads);
  AppendAll(c, parent, parent_tail);  // the parent's page is now its own: no copy
  EXPECT_EQ(c.pages_in_use(), before + kLayers * kHeads);
  std::vector<float> k, v;
  ReadToken(c, child, 0, 0, 42, &k, &v);
  EXPECT_EQ(0, std::memcmp(k.data(), child_tail.key(2, 0), kDim * 4));
  ReadToken(c, parent, 0, 0, 42, &k, &v);
  EXPECT_EQ(0, std::memcmp(k.data(), parent_tail.key(2, 0), kDim * 4));
  ReadToken(c, child, 1, 1, 10, &k, &v);  // the shared prefix is intact in both
  EXPECT_EQ(0, std::memcmp(k.data(), prefix.key(10, 1), kDim * 4));
  c.FreeSequence(child);
  EXPECT_EQ(c.pages_in_use(), before);
  c.FreeSequence(parent);
  EXPECT_EQ(c.pages_in_use(), 0);
}

TEST(PagedCache, KeepCompactsExactlyAndLeavesForksAlone) {
  for (KvDType t : {KvDType::kF32, KvDType::kInt8, KvDType::kInt4}) {
    PagedKvCache c(Config(t));
    const int seq = c.NewSequence();
    const Tokens a(70, 100, 7);
    AppendAll(c, seq, a);
    const int fork = c.ForkSequence(seq);
    std::vector<std::vector<float>> before_k(70), before_v(70);
    for (int64_t i = 0; i < 70; ++i) ReadToken(c, seq, 1, 0, i, &before_k[i], &before_v[i]);
    const std::vector<int32_t> keep = {0, 3, 16, 31, 32, 33, 50, 69};
    c.Keep(seq, 1, 0, keep);
    ASSERT_EQ(c.length(seq, 1, 0), int64_t(keep.size()));
    EXPECT_EQ(c.length(seq, 1, 1), 70);  // other heads untouched
    std::vector<float> k, v;
    for (size_t i = 0; i < keep.size(); ++i) {
      ReadToken(c, seq, 1, 0, int64_t(i), &k, &v);
      EXPECT_EQ(k, before_k[keep[i]]) << KvDTypeName(t);  // bit-exact: no requantization
      EXPECT_EQ(v, before_v[keep[i]]) << KvDTypeName(t);
      EXPECT_EQ(c.positions(seq, 1, 0)[i], 100 + keep[i]);
    }
    EXPECT_EQ(c.length(fork, 1, 0), 70);
    ReadToken(c, fork, 1, 0, 5, &k, &v);
    EXPECT_EQ(k, before_k[5]);
  }
}

TEST(PagedCache, RunsCoverTheStreamPageByPage) {
  PagedKvCache c(Config(KvDType::kBF16, 32));
  const int seq = c.NewSequence();
  AppendAll(c, seq, Tokens(75, 0, 8));
  std::vector<KvRun> runs;
  c.AppendRuns(seq, 0, 1, &runs);
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0].tokens + runs[1].tokens + runs[2].tokens, 75);
  EXPECT_EQ(runs[2].tokens, 11);
  EXPECT_EQ(runs[1].position, 32);
  runs.clear();
  c.AppendRunsRange(seq, 0, 1, 16, 32, &runs);  // crosses a page boundary: two pieces
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].tokens, 16);
  EXPECT_EQ(runs[1].position, 32);
}

TEST(PagedCache, BadInputIsRefusedWithAReason) {
  EXPECT_THROW(PagedKvCache(Config(KvDType::kF32, 20)), InvalidArgument);
  PagedKvCache c(Config(KvDType::kF32));
  const int seq = c.NewSequence();
  AppendAll(c, seq, Tokens(10, 0, 9));
  EXPECT_THROW(c.Keep(seq, 0, 0, {3, 2}), InvalidArgument);
  EXPECT_THROW(c.Keep(seq, 0, 0, {10}), InvalidArgument);
  EXPECT_THROW(c.length(seq + 1, 0, 0), InvalidArgument);
  EXPECT_THROW(c.length(seq, kLayers, 0), InvalidArgument);
  std::vector<KvRun> runs;
  EXPECT_THROW(c.AppendRunsRange(seq, 0, 0, 3, 2, &runs), InvalidArgument);  // not on a tile boundary
}

// ---- Staircase (SAQ) ----

TEST(Staircase, SegmentsStepDownAndFullPrecisionStairsAreExact) {
  StaircaseConfig sc = StaircaseConfig::Parse("staircase:segment=32,stairs=f32/f32/f32");
  StaircaseKvCache c(Config(KvDType::kF32), sc);
  const int seq = c.NewSequence();
  const Tokens a(90, 0, 11), b(110, 90, 12);
  for (const Tokens* t : {&a, &b}) {
    for (int l = 0; l < kLayers; ++l) c.Append(seq, l, t->k.data(), t->v.data(), kHeads * kDim, t->n(), t->pos.data());
  }
  // 200 tokens: 8 in the residual, one segment of 32 on stair 1, the 160 oldest on the tail.
  EXPECT_EQ(c.stair(0).length(seq, 1, 1), 8);
  EXPECT_EQ(c.stair(1).length(seq, 1, 1), 32);
  EXPECT_EQ(c.stair(2).length(seq, 1, 1), 160);
  EXPECT_EQ(c.stair(1).positions(seq, 1, 1)[0], 160);
  std::vector<float> k(200 * kDim), v(200 * kDim);
  c.Read(seq, 1, 1, k.data(), v.data());
  for (int64_t i = 0; i < 200; ++i) {
    const Tokens& src = i < 90 ? a : b;
    const int64_t j = i < 90 ? i : i - 90;
    ASSERT_EQ(0, std::memcmp(&k[i * kDim], src.key(j, 1), kDim * 4)) << i;
    ASSERT_EQ(0, std::memcmp(&v[i * kDim], src.value(j, 1), kDim * 4)) << i;
  }
}

// Each stair holds exactly its format's round trip of what the stair above held.
TEST(Staircase, StairsHoldTheRoundTripsOfTheirFormats) {
  StaircaseKvCache c(Config(KvDType::kF32), StaircaseConfig::Parse("staircase:segment=16,stairs=f32/int8/int4"));
  const int seq = c.NewSequence();
  const Tokens a(100, 0, 14);
  c.Append(seq, 0, a.k.data(), a.v.data(), kHeads * kDim, a.n(), a.pos.data());
  std::vector<float> k(100 * kDim), v(100 * kDim);
  c.Read(seq, 0, 1, k.data(), v.data());
  for (int64_t i = 0; i < 100; ++i) {
    std::vector<float> want_k(a.key(i, 1), a.key(i, 1) + kDim), want_v(a.value(i, 1), a.value(i, 1) + kDim);
    if (i < 96) {  // left stair 0: int8
      want_k = RoundTrip(KvDType::kInt8, false, want_k.data());
      want_v = RoundTrip(KvDType::kInt8, true, want_v.data());
    }
    if (i < 80) {  // left stair 1 too: int4 of the int8 values
      want_k = RoundTrip(KvDType::kInt4, false, want_k.data());
      want_v = RoundTrip(KvDType::kInt4, true, want_v.data());
    }
    ASSERT_EQ(std::vector<float>(k.begin() + i * kDim, k.begin() + (i + 1) * kDim), want_k) << "token " << i;
    ASSERT_EQ(std::vector<float>(v.begin() + i * kDim, v.begin() + (i + 1) * kDim), want_v) << "token " << i;
  }
}

TEST(Staircase, ErrorGrowsWithTokenAge) {
  StaircaseKvCache c(Config(KvDType::kF32), StaircaseConfig::Parse("staircase:segment=32"));  // bf16/int8/int4
  const int seq = c.NewSequence();
  const Tokens a(200, 0, 13);
  c.Append(seq, 0, a.k.data(), a.v.data(), kHeads * kDim, a.n(), a.pos.data());
  std::vector<float> k(200 * kDim), v(200 * kDim);
  c.Read(seq, 0, 0, k.data(), v.data());
  // Mean squared error per stair: tail [0, 160), int8 segment [160, 192), bf16 residual [192, 200).
  auto mse = [&](int64_t lo, int64_t hi) {
    double e = 0;
    for (int64_t i = lo; i < hi; ++i) {
      for (int j = 0; j < kDim; ++j) e += std::pow(double(k[i * kDim + j]) - a.key(i, 0)[j], 2);
    }
    return e / double((hi - lo) * kDim);
  };
  const double tail = mse(0, 160), mid = mse(160, 192), recent = mse(192, 200);
  EXPECT_GT(tail, 4 * mid);
  EXPECT_GT(mid, 4 * recent);
  EXPECT_GT(recent, 0.0);  // bf16 rounds
  EXPECT_LT(c.bytes_per_token_per_layer(seq), 0.5 * kHeads * kDim * 2 * 2);  // under half of bf16
}

TEST(Staircase, BadSpecsAreRefused) {
  EXPECT_THROW(StaircaseConfig::Parse("staircase:segment=20"), std::invalid_argument);
  EXPECT_THROW(StaircaseConfig::Parse("staircase:stairs=int8"), std::invalid_argument);
  EXPECT_THROW(StaircaseConfig::Parse("staircase:stairs=bf16/int3"), std::invalid_argument);
  EXPECT_THROW(StaircaseConfig::Parse("staircase:depth=2"), std::invalid_argument);
}

}  // namespace
}  // namespace qattn::kv
