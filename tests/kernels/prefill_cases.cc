// AttendPrefill against the fp64 reference: lengths, head dims, head maps, masks, varlen batches,
// caller-supplied block lists, logit hooks and layouts, each under every ISA the CPU supports.
#include <gtest/gtest.h>

#include <random>

#include "test_problem.h"

namespace qattn::test {
namespace {

constexpr DType kF32 = DType::kF32, kBF16 = DType::kBF16, kF16 = DType::kF16;
constexpr DType kAllTypes[] = {kF32, kBF16, kF16};

std::string Str(int64_t x) { return std::to_string(x); }
std::string WindowStr(int x) { return x < 0 ? "inf" : Str(x); }  // -1: unbounded

Case PrefillCase(DType t, int hq, int hk, int hv, int dqk, int dv, std::vector<int64_t> lq, std::vector<int64_t> lkv) {
  Case c;
  c.dtype = t;
  c.h_q = hq, c.h_k = hk, c.h_v = hv;
  c.d_qk = dqk, c.d_v = dv;
  c.len_q = std::move(lq);
  c.len_kv = std::move(lkv);
  return c;
}

BlockSpec Blocks(BlockSpec::Heads heads, BlockSpec::Flags flags, int q_block, int kv_block, double keep = 0.5,
                 int skip_every = 0) {
  BlockSpec b;
  b.enabled = true;
  b.heads = heads, b.flags = flags;
  b.q_block = q_block, b.kv_block = kv_block;
  b.keep = keep;
  b.skip_every_q_block = skip_every;
  return b;
}

// n_q = n_kv at the lengths around one 64-row tile, causal and not.
void AddLengths(CaseList* l) {
  for (int64_t n : {1, 7, 63, 64, 65})
    for (bool causal : {false, true})
      for (DType t : kAllTypes) {
        Case c = PrefillCase(t, 4, 2, 2, 64, 64, {n}, {n});
        c.causal = causal;
        l->Add("len" + Str(n) + (causal ? "_causal" : ""), c);
      }
}

// More than 1000 rows and keys: few cases, since the fp64 reference is quadratic.
void AddLong(CaseList* l) {
  for (DType t : kAllTypes) {
    Case c = PrefillCase(t, 2, 1, 1, 64, 64, {1100}, {1100});
    c.causal = true;
    l->Add("long1100_causal", c);
  }
  Case dense = PrefillCase(kF32, 1, 1, 1, 32, 32, {1025}, {1025});
  l->Add("long1025_dense", dense);
  Case window = PrefillCase(kBF16, 2, 2, 2, 64, 64, {1030}, {1100});
  window.causal = true, window.window_left = 200, window.sink_tokens = 4;
  l->Add("long_window_sinks", window);
  Case sparse = PrefillCase(kF16, 2, 1, 1, 64, 64, {1100}, {1100});
  sparse.causal = true;
  sparse.blocks = Blocks(BlockSpec::Heads::kPerQ, BlockSpec::Flags::kRandom, 64, 64, 0.5);
  l->Add("long_blocks", sparse);
  Case varlen = PrefillCase(kBF16, 2, 1, 1, 64, 64, {3, 1050, 0}, {3, 1100, 17});
  varlen.causal = true;
  l->Add("long_varlen", varlen);
}

void AddHeadDims(CaseList* l) {
  struct Dims { int qk, v; };
  for (Dims d : {Dims{32, 32}, Dims{64, 64}, Dims{80, 80}, Dims{96, 96}, Dims{128, 128}, Dims{192, 192},
                 Dims{256, 256}, Dims{192, 128}})
    for (DType t : kAllTypes) {
      Case c = PrefillCase(t, 2, 1, 1, d.qk, d.v, {70}, {77});
      c.causal = t != kF32;
      l->Add("dim" + Str(d.qk) + (d.v != d.qk ? "_v" + Str(d.v) : ""), c);
    }
}

// MHA (ratio 1), GQA (2..8) and, at ratio 16 with one KV head, MQA.
void AddHeadMaps(CaseList* l) {
  for (int r : {1, 2, 4, 8, 16})
    for (DType t : kAllTypes) {
      const int hk = r == 16 ? 1 : 2;
      Case c = PrefillCase(t, r * hk, hk, hk, 64, 64, {40}, {45});
      c.causal = true;
      l->Add("gqa" + Str(r), c);
    }
  for (DType t : kAllTypes) l->Add("mqa8", PrefillCase(t, 8, 1, 1, 64, 64, {66}, {66}));
  // Sparse Query Attention: the projection keeps fewer query heads than the base model's 8 (here 4
  // over 4 KV heads, "symmetric" SQA, and 2 over 1, "extreme" SQA); the kernel sees H_q = 4 and 2.
  for (DType t : kAllTypes) {
    Case sym = PrefillCase(t, 4, 4, 4, 64, 64, {70}, {70});
    sym.causal = true;
    l->Add("sqa_symmetric_q4kv4", sym);
    l->Add("sqa_extreme_q2kv1", PrefillCase(t, 2, 1, 1, 128, 128, {33}, {90}));
  }
  struct Heads { int q, k, v; };  // DiffQKV: H_k != H_v
  int i = 0;
  for (Heads h : {Heads{8, 2, 4}, Heads{8, 4, 2}, Heads{8, 1, 8}, Heads{6, 3, 2}, Heads{4, 4, 1}, Heads{8, 8, 2}})
    for (DType t : kAllTypes) {
      Case c = PrefillCase(t, h.q, h.k, h.v, 64, 64, {50}, {60});
      c.causal = (i++ % 2) == 0;
      l->Add("diffqkv_q" + Str(h.q) + "k" + Str(h.k) + "v" + Str(h.v), c);
    }
}

// Rows that see no key: out must be exactly 0 and lse -inf (or the sink logit), never NaN.
void AddMaskedRows(CaseList* l) {
  for (DType t : kAllTypes) {
    Case causal = PrefillCase(t, 4, 2, 2, 64, 64, {100}, {40});  // rows 0..59 sit before key 0
    causal.causal = true;
    l->Add("masked_causal_nq_gt_nkv", causal);
    Case window = PrefillCase(t, 2, 1, 1, 64, 64, {90}, {20});  // pos + 2 < 0 for the first rows
    window.window_left = 2, window.window_right = 2;
    l->Add("masked_window", window);
    Case skipped = PrefillCase(t, 4, 2, 2, 64, 64, {130}, {150});  // every other q block lists nothing
    skipped.causal = true;
    skipped.blocks = Blocks(BlockSpec::Heads::kPerK, BlockSpec::Flags::kRandom, 32, 32, 0.7, 2);
    l->Add("masked_block_rows", skipped);
  }
  Case sinks = PrefillCase(kBF16, 4, 2, 2, 64, 64, {100}, {40});
  sinks.causal = true, sinks.sink_logits = true;
  l->Add("masked_rows_sink_logits", sinks);
  Case empty_kv = PrefillCase(kF32, 2, 1, 1, 64, 64, {5, 9, 3}, {0, 12, 0});
  l->Add("masked_empty_kv", empty_kv);
  Case empty_kv_sinks = empty_kv;
  empty_kv_sinks.dtype = kF16, empty_kv_sinks.sink_logits = true;
  l->Add("masked_empty_kv_sink_logits", empty_kv_sinks);
  Case no_window = PrefillCase(kBF16, 2, 2, 2, 64, 64, {80}, {80});  // each row sees only its own key
  no_window.window_left = 0, no_window.window_right = 0;
  l->Add("window_diagonal", no_window);
}

// n_q != n_kv: bottom-right alignment decides which rows see which keys.
void AddUnequalLengths(CaseList* l) {
  struct Len { int64_t q, kv; };
  int i = 0;
  for (Len n : {Len{33, 130}, Len{130, 33}, Len{1, 300}, Len{64, 65}, Len{65, 64}, Len{7, 200}, Len{200, 7}})
    for (bool causal : {true, false}) {
      Case c = PrefillCase(kAllTypes[i++ % 3], 4, 1, 1, 64, 64, {n.q}, {n.kv});
      c.causal = causal;
      l->Add("q" + Str(n.q) + "_kv" + Str(n.kv) + (causal ? "_causal" : ""), c);
    }
}

void AddVarlen(CaseList* l) {
  for (DType t : kAllTypes) {
    Case c = PrefillCase(t, 4, 2, 2, 64, 64, {7, 0, 65, 1, 130, 64}, {7, 5, 65, 40, 100, 64});
    c.causal = true;
    l->Add("varlen_causal", c);
  }
  l->Add("varlen_dense", PrefillCase(kF32, 2, 2, 2, 96, 96, {1, 7, 63, 64, 65}, {65, 64, 63, 7, 1}));
  Case window = PrefillCase(kBF16, 8, 2, 2, 128, 128, {33, 90}, {120, 90});
  window.causal = true, window.window_left = 16, window.window_right = 0, window.sink_tokens = 2;
  l->Add("varlen_window_sinks", window);
  Case blocks = PrefillCase(kF16, 4, 2, 2, 64, 64, {70, 0, 129}, {100, 50, 129});
  blocks.causal = true;
  blocks.blocks = Blocks(BlockSpec::Heads::kPerQ, BlockSpec::Flags::kTruthful, 64, 64, 0.6);
  l->Add("varlen_blocks", blocks);
  Case single = PrefillCase(kF32, 4, 2, 2, 64, 64, {77}, {77});
  single.causal = true, single.pass_cu_seqlens = false;
  l->Add("single_seq_no_cu_seqlens", single);
}

// Caller-supplied lists: list heads 1 / H_k / H_q, every flag policy, several block shapes, variants.
void AddBlockLists(CaseList* l) {
  using H = BlockSpec::Heads;
  using F = BlockSpec::Flags;
  struct Shape { int q, kv; };
  const Shape shapes[] = {{64, 64}, {32, 16}, {16, 48}, {128, 32}, {100, 128}, {1, 16}};
  int i = 0;
  for (H heads : {H::kOne, H::kPerK, H::kPerQ})
    for (F flags : {F::kRandom, F::kAllFull, F::kAllPartial, F::kTruthful}) {
      const Shape s = shapes[i % 6];
      Case c = PrefillCase(kAllTypes[i % 3], 8, 2, 2, 64, 64, {150}, {170});
      c.causal = i % 3 != 0;
      if (i % 4 == 1) c.window_left = 40, c.window_right = 8, c.sink_tokens = 3;
      c.blocks = Blocks(heads, flags, s.q, s.kv, 0.5);
      l->Add("blocks_h" + Str(int(heads)) + "_f" + Str(int(flags)) + "_q" + Str(s.q) + "kv" + Str(s.kv), c);
      ++i;
    }
  // Everything listed: must equal dense, even when every flag claims "full" on a causal mask.
  for (DType t : kAllTypes) {
    Case c = PrefillCase(t, 4, 2, 2, 64, 64, {130}, {130});
    c.causal = true;
    c.blocks = Blocks(H::kOne, F::kAllFull, 64, 64, 1.0);
    l->Add("blocks_all_listed_flags_lie", c);
  }
  Case diff = PrefillCase(kBF16, 8, 2, 4, 64, 64, {96}, {140});
  diff.causal = true;
  diff.blocks = Blocks(H::kPerK, F::kTruthful, 32, 32, 0.5);
  l->Add("blocks_diffqkv_per_k", diff);
  Case hooks = PrefillCase(kF32, 4, 4, 4, 80, 80, {120}, {120});
  hooks.alibi = true, hooks.softcap = 20.0f, hooks.sink_logits = true, hooks.causal = true;
  hooks.blocks = Blocks(H::kPerQ, F::kRandom, 32, 64, 0.4);
  l->Add("blocks_with_hooks", hooks);
}

void AddVariants(CaseList* l) {
  for (DType t : kAllTypes) {
    Case sinks = PrefillCase(t, 4, 2, 2, 64, 64, {150}, {150});
    sinks.causal = true, sinks.window_left = 16, sinks.sink_tokens = 4;
    l->Add("sink_tokens_causal_window", sinks);
    Case logits = PrefillCase(t, 4, 2, 2, 64, 64, {70}, {90});
    logits.sink_logits = true;
    l->Add("sink_logits", logits);
    Case alibi = PrefillCase(t, 8, 2, 2, 64, 64, {100}, {100});
    alibi.causal = true, alibi.alibi = true;
    l->Add("alibi_causal", alibi);
    Case softcap = PrefillCase(t, 4, 2, 2, 64, 64, {80}, {80});  // logits of sd 4 against a cap of 2
    softcap.softcap = 2.0f, softcap.input_std = 2.0f, softcap.causal = true;
    l->Add("softcap_tight", softcap);
    Case scale = PrefillCase(t, 4, 2, 2, 64, 64, {70}, {70});  // sd-8 logits: a peaked softmax
    scale.scale = 1.0f;
    l->Add("scale_explicit", scale);
    Case all = PrefillCase(t, 8, 2, 4, 96, 64, {90}, {160});
    all.causal = true, all.window_left = 30, all.sink_tokens = 5, all.softcap = 15.0f, all.alibi = true;
    all.sink_logits = true, all.scale = 0.2f;
    l->Add("all_hooks", all);
  }
  Case sinks_window = PrefillCase(kBF16, 2, 2, 2, 64, 64, {100}, {100});
  sinks_window.window_left = 8, sinks_window.window_right = 8, sinks_window.sink_tokens = 3;
  l->Add("sink_tokens_window_both_sides", sinks_window);
  Case sinks_all = PrefillCase(kF32, 2, 2, 2, 64, 64, {70}, {70});  // more sinks than keys: all visible
  sinks_all.window_left = 4, sinks_all.window_right = 4, sinks_all.sink_tokens = 200;
  l->Add("sink_tokens_exceed_keys", sinks_all);
  Case logits_causal = PrefillCase(kF16, 4, 1, 1, 64, 64, {70}, {70});
  logits_causal.sink_logits = true, logits_causal.causal = true;
  l->Add("sink_logits_causal", logits_causal);
  Case alibi_nc = PrefillCase(kF32, 4, 4, 4, 64, 64, {40}, {150});
  alibi_nc.alibi = true;
  l->Add("alibi_noncausal_nq_lt_nkv", alibi_nc);
  Case cap30 = PrefillCase(kF32, 2, 2, 2, 128, 128, {65}, {65});
  cap30.softcap = 30.0f, cap30.input_std = 3.0f;
  l->Add("softcap30", cap30);
  for (DType t : kAllTypes) {  // logits of sd ~70 whose row max keeps rising: online rescaling
    Case c = PrefillCase(t, 4, 2, 2, 64, 64, {300}, {300});
    c.scale = 1.0f, c.input_std = 3.0f, c.key_ramp = 3.0f, c.causal = true;
    l->Add("extreme_logits_rising_max", c);
  }
  Case small_scale = PrefillCase(kBF16, 2, 2, 2, 64, 64, {65}, {65});
  small_scale.scale = 0.05f;
  l->Add("scale_small", small_scale);
  struct Window { int left, right; bool causal; };
  for (Window w : {Window{5, 3, false}, Window{0, 0, false}, Window{-1, 0, false}, Window{0, -1, false},
                   Window{16, -1, true}, Window{16, 4, true}, Window{100, 100, false}})
    for (DType t : {kF32, kBF16}) {
      Case c = PrefillCase(t, 4, 2, 2, 64, 64, {90}, {110});
      c.window_left = w.left, c.window_right = w.right, c.causal = w.causal;
      l->Add("window_l" + WindowStr(w.left) + "_r" + WindowStr(w.right) + (w.causal ? "_causal" : ""), c);
    }
}

// Non-contiguous (padded) views, no lse, and every way of passing a thread pool.
void AddLayouts(CaseList* l) {
  for (DType t : kAllTypes) {
    Case c = PrefillCase(t, 8, 2, 2, 64, 64, {70, 33}, {70, 90});
    c.strided = true, c.causal = true;
    l->Add("strided_gqa_varlen", c);
  }
  Case diff = PrefillCase(kBF16, 8, 2, 4, 128, 96, {65}, {100});
  diff.strided = true, diff.causal = true;
  l->Add("strided_diffqkv", diff);
  Case no_lse = PrefillCase(kBF16, 4, 2, 2, 64, 64, {65, 10}, {65, 30});
  no_lse.lse = false, no_lse.causal = true;
  l->Add("no_lse", no_lse);
  for (int threads : {0, 1, 3}) {
    Case c = PrefillCase(kF32, 4, 2, 2, 64, 64, {130, 7}, {130, 20});
    c.threads = threads, c.causal = true;
    l->Add("threads" + Str(threads), c);
  }
}

// Random combinations of everything above (fixed seed, so every run sees the same cases).
void AddRandom(CaseList* l, int count) {
  struct Heads { int q, k, v; };
  struct Dims { int qk, v; };
  const Heads heads[] = {{1, 1, 1}, {4, 4, 4}, {4, 2, 2}, {8, 2, 2}, {8, 1, 1}, {16, 1, 1}, {8, 2, 4}, {6, 3, 2}, {4, 1, 2}};
  const Dims dims[] = {{32, 32}, {64, 64}, {80, 80}, {96, 96}, {128, 128}, {192, 192}, {256, 256}, {192, 128}};
  const int64_t lens[] = {0, 1, 7, 63, 64, 65, 100, 129};
  const BlockSpec::Flags flags[] = {BlockSpec::Flags::kRandom, BlockSpec::Flags::kAllFull,
                                    BlockSpec::Flags::kAllPartial, BlockSpec::Flags::kTruthful};
  std::mt19937_64 rng(20240611);
  auto pick = [&](int n) { return int(rng() % uint64_t(n)); };
  auto chance = [&](int percent) { return pick(100) < percent; };
  auto length = [&] { return chance(50) ? lens[pick(8)] : int64_t(pick(200)); };
  for (int n = 0; n < count; ++n) {
    const Heads h = heads[pick(9)];
    const Dims d = dims[pick(8)];
    const int batch = 1 + pick(3);
    std::vector<int64_t> lq, lkv;
    for (int b = 0; b < batch; ++b) lq.push_back(length()), lkv.push_back(length());
    Case c = PrefillCase(kAllTypes[pick(3)], h.q, h.k, h.v, d.qk, d.v, lq, lkv);
    c.causal = chance(60);
    if (chance(40)) c.window_left = pick(64);
    if (chance(25)) c.window_right = pick(16);
    if (chance(30)) c.sink_tokens = 1 + pick(8);
    if (chance(20)) c.softcap = chance(50) ? 5.0f : 30.0f;
    c.alibi = chance(20);
    c.sink_logits = chance(20);
    if (chance(30)) c.scale = 0.05f + 0.45f * float(pick(100)) / 100.0f;
    if (chance(35)) {
      const int qb[] = {1, 16, 32, 64, 100}, kb[] = {16, 32, 48, 64, 128};
      const BlockSpec::Heads bh = h.k == h.q ? BlockSpec::Heads::kPerQ : BlockSpec::Heads(pick(3));
      c.blocks = Blocks(bh, flags[pick(4)], qb[pick(5)], kb[pick(5)], 0.3 + 0.1 * pick(8), pick(4));
    }
    c.strided = chance(15);
    c.threads = pick(3);
    c.lse = chance(90);
    l->Add("random" + Str(n), c);
  }
}

std::vector<Case> PrefillCases() {
  CaseList l;
  AddLengths(&l);
  AddLong(&l);
  AddHeadDims(&l);
  AddHeadMaps(&l);
  AddMaskedRows(&l);
  AddUnequalLengths(&l);
  AddVarlen(&l);
  AddBlockLists(&l);
  AddVariants(&l);
  AddLayouts(&l);
  AddRandom(&l, 120);
  return l.cases();
}

class Prefill : public testing::TestWithParam<Case> {};

TEST_P(Prefill, MatchesReference) { RunCaseAllIsas(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Cases, Prefill, testing::ValuesIn(PrefillCases()),
                         [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
}  // namespace qattn::test
