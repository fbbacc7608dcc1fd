// AttendDecode against the fp64 reference (one query at the last position of each sequence):
// batches of unequal lengths, every num_splits policy, head maps, head dims, hooks and layouts.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "test_problem.h"

namespace qattn::test {
namespace {

constexpr DType kF32 = DType::kF32, kBF16 = DType::kBF16, kF16 = DType::kF16;
constexpr DType kAllTypes[] = {kF32, kBF16, kF16};
constexpr int kSplits[] = {1, 2, 7, 0};  // 0: chosen by the kernel

std::string Str(int64_t x) { return std::to_string(x); }
std::string SplitStr(int s) { return s == 0 ? "auto" : Str(s); }

Case DecodeCase(DType t, int hq, int hk, int hv, int dqk, int dv, std::vector<int64_t> lkv, int splits) {
  Case c;
  c.decode = true;
  c.dtype = t;
  c.h_q = hq, c.h_k = hk, c.h_v = hv;
  c.d_qk = dqk, c.d_v = dv;
  c.len_kv = std::move(lkv);
  c.num_splits = splits;
  return c;
}

// Lengths around a tile and beyond 1000 in one batch, under every split count.
void AddSplits(CaseList* l) {
  for (int s : kSplits)
    for (DType t : kAllTypes)
      l->Add("splits" + SplitStr(s), DecodeCase(t, 8, 1, 1, 128, 128, {1, 7, 63, 64, 65, 1100}, s));
  // More splits than keys.
  l->Add("splits7_short", DecodeCase(kBF16, 4, 2, 2, 64, 64, {1, 2, 3, 6}, 7));
  // One long sequence without cu_seqlens.
  Case single = DecodeCase(kBF16, 8, 1, 1, 128, 128, {4000}, 0);
  single.pass_cu_seqlens = false;
  l->Add("single_long_no_cu_seqlens", single);
  for (int s : kSplits)  // a sequence with no keys: out 0, lse -inf, whatever the split
    l->Add("empty_seq_splits" + SplitStr(s), DecodeCase(kF32, 4, 2, 2, 64, 64, {0, 10, 0, 300}, s));
}

void AddHeadMaps(CaseList* l) {
  int i = 0;
  for (int r : {1, 2, 4, 8, 16})
    for (DType t : kAllTypes) {
      const int hk = r == 16 ? 1 : 2;
      l->Add("gqa" + Str(r), DecodeCase(t, r * hk, hk, hk, 64, 64, {65, 300}, kSplits[i++ % 4]));
    }
  for (DType t : kAllTypes) {  // MQA and Sparse Query Attention (fewer query heads than a base of 8)
    l->Add("mqa8", DecodeCase(t, 8, 1, 1, 128, 128, {129, 513}, kSplits[i++ % 4]));
    l->Add("sqa_symmetric_q4kv4", DecodeCase(t, 4, 4, 4, 128, 128, {200}, kSplits[i++ % 4]));
    l->Add("sqa_extreme_q2kv1", DecodeCase(t, 2, 1, 1, 64, 64, {77, 1}, kSplits[i++ % 4]));
  }
  struct Heads { int q, k, v; };  // DiffQKV
  for (Heads h : {Heads{8, 2, 4}, Heads{8, 4, 1}, Heads{6, 3, 2}})
    for (DType t : kAllTypes)
      l->Add("diffqkv_q" + Str(h.q) + "k" + Str(h.k) + "v" + Str(h.v),
             DecodeCase(t, h.q, h.k, h.v, 64, 64, {100, 37}, kSplits[i++ % 4]));
}

void AddHeadDims(CaseList* l) {
  struct Dims { int qk, v; };
  int i = 0;
  for (Dims d : {Dims{32, 32}, Dims{64, 64}, Dims{80, 80}, Dims{96, 96}, Dims{128, 128}, Dims{192, 192},
                 Dims{256, 256}, Dims{192, 128}})
    for (DType t : kAllTypes)
      l->Add("dim" + Str(d.qk) + (d.v != d.qk ? "_v" + Str(d.v) : ""),
             DecodeCase(t, 4, 1, 1, d.qk, d.v, {70, 129}, kSplits[i++ % 4]));
}

void AddVariants(CaseList* l) {
  int i = 0;
  for (DType t : kAllTypes) {
    Case window = DecodeCase(t, 8, 2, 2, 64, 64, {1100, 20, 3}, 7);
    window.window_left = 32, window.sink_tokens = 4;
    l->Add("window_sinks", window);
    Case alibi = DecodeCase(t, 8, 2, 2, 64, 64, {300, 9}, kSplits[i++ % 4]);
    alibi.alibi = true;
    l->Add("alibi", alibi);
    Case softcap = DecodeCase(t, 4, 1, 1, 64, 64, {200, 64}, kSplits[i++ % 4]);
    softcap.softcap = 2.0f, softcap.input_std = 2.0f;
    l->Add("softcap_tight", softcap);
    Case logits = DecodeCase(t, 4, 2, 2, 64, 64, {0, 150, 1}, kSplits[i++ % 4]);
    logits.sink_logits = true;
    l->Add("sink_logits", logits);
    Case scale = DecodeCase(t, 4, 2, 2, 64, 64, {150, 65}, 2);
    scale.scale = 1.0f;
    l->Add("scale_explicit", scale);
    Case all = DecodeCase(t, 8, 2, 4, 96, 64, {500, 1, 70}, 7);
    all.window_left = 50, all.sink_tokens = 3, all.softcap = 15.0f, all.alibi = true, all.sink_logits = true;
    all.scale = 0.2f;
    l->Add("all_hooks", all);
  }
  for (DType t : kAllTypes) {  // logits of sd ~70 whose max keeps rising along the keys
    Case c = DecodeCase(t, 8, 2, 2, 64, 64, {1100, 200, 5}, 7);
    c.scale = 1.0f, c.input_std = 3.0f, c.key_ramp = 3.0f;
    l->Add("extreme_logits_rising_max", c);
  }
  // causal is implied for decode: stating it, or a right window, changes nothing.
  Case causal = DecodeCase(kF32, 4, 2, 2, 64, 64, {100, 7}, 2);
  causal.causal = true, causal.window_right = 0;
  l->Add("causal_stated", causal);
  Case window0 = DecodeCase(kBF16, 4, 2, 2, 64, 64, {100, 1}, 0);  // only the last key
  window0.window_left = 0;
  l->Add("window_left0", window0);
}

void AddLayouts(CaseList* l) {
  for (DType t : kAllTypes) {
    Case c = DecodeCase(t, 8, 2, 2, 64, 64, {65, 200, 1}, 2);
    c.strided = true;
    l->Add("strided", c);
  }
  Case no_lse = DecodeCase(kBF16, 8, 1, 1, 128, 128, {300, 64}, 7);
  no_lse.lse = false;
  l->Add("no_lse", no_lse);
  for (int threads : {0, 1, 3})
    for (int s : {1, 0}) {
      Case c = DecodeCase(kF32, 8, 2, 2, 64, 64, {400, 3, 65}, s);
      c.threads = threads;
      l->Add("threads" + Str(threads) + "_splits" + SplitStr(s), c);
    }
}

// Random combinations (fixed seed): batches of 1..5 sequences of 0..2000 keys, any split count.
void AddRandom(CaseList* l, int count) {
  struct Heads { int q, k, v; };
  struct Dims { int qk, v; };
  const Heads heads[] = {{1, 1, 1}, {4, 4, 4}, {4, 2, 2}, {8, 2, 2}, {8, 1, 1}, {16, 1, 1}, {8, 2, 4}, {6, 3, 2}, {32, 4, 4}};
  const Dims dims[] = {{32, 32}, {64, 64}, {80, 80}, {96, 96}, {128, 128}, {192, 192}, {256, 256}, {192, 128}};
  const int64_t lens[] = {0, 1, 7, 63, 64, 65, 1024, 1500};
  const int splits[] = {0, 1, 2, 3, 7, 16};
  std::mt19937_64 rng(20240612);
  auto pick = [&](int n) { return int(rng() % uint64_t(n)); };
  auto chance = [&](int percent) { return pick(100) < percent; };
  for (int n = 0; n < count; ++n) {
    const Heads h = heads[pick(9)];
    const Dims d = dims[pick(8)];
    std::vector<int64_t> lkv;
    for (int b = 0, batch = 1 + pick(5); b < batch; ++b) lkv.push_back(chance(50) ? lens[pick(8)] : pick(2000));
    // Keep the fp64 reference cheap: at most ~2M K and V elements per case (halve the longest).
    auto kv_elems = [&] { return std::accumulate(lkv.begin(), lkv.end(), int64_t(0)) * (h.k * d.qk + h.v * d.v); };
    while (kv_elems() > 2'000'000) *std::max_element(lkv.begin(), lkv.end()) /= 2;
    Case c = DecodeCase(kAllTypes[pick(3)], h.q, h.k, h.v, d.qk, d.v, lkv, splits[pick(6)]);
    if (chance(40)) c.window_left = pick(256);
    if (chance(30)) c.sink_tokens = 1 + pick(8);
    if (chance(20)) c.softcap = chance(50) ? 5.0f : 30.0f;
    c.alibi = chance(20);
    c.sink_logits = chance(20);
    if (chance(30)) c.scale = 0.05f + 0.45f * float(pick(100)) / 100.0f;
    c.strided = chance(15);
    c.threads = pick(4);
    c.lse = chance(90);
    l->Add("random" + Str(n), c);
  }
}

std::vector<Case> DecodeCases() {
  CaseList l;
  AddSplits(&l);
  AddHeadMaps(&l);
  AddHeadDims(&l);
  AddVariants(&l);
  AddLayouts(&l);
  AddRandom(&l, 80);
  return l.cases();
}

class Decode : public testing::TestWithParam<Case> {};

TEST_P(Decode, MatchesReference) { RunCaseAllIsas(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Cases, Decode, testing::ValuesIn(DecodeCases()),
                         [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
}  // namespace qattn::test
