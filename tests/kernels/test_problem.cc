#include "test_problem.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <sstream>

#include "core/thread_pool.h"

namespace qattn::test {
namespace {

constexpr int kPad = 8;                      // extra elements after each head row in strided views
constexpr uint32_t kSentinelBits = 0x7fc12345;  // a NaN with a payload no kernel writes by chance

float SentinelF32() {
  float f;
  std::memcpy(&f, &kSentinelBits, 4);
  return f;
}

std::vector<int64_t> Prefix(const std::vector<int64_t>& lens) {
  std::vector<int64_t> cu(lens.size() + 1, 0);  // [batch + 1]
  for (size_t b = 0; b < lens.size(); ++b) cu[b + 1] = cu[b] + lens[b];
  return cu;
}

// Stores x (already representable) as element `index` of a typed buffer.
void StoreTyped(void* base, DType t, int64_t index, float x) {
  char* p = static_cast<char*>(base) + index * int64_t(DTypeSize(t));
  ConvertFromF32(&x, p, t, 1);
}

}  // namespace

TypedBuffer AllocTyped(int64_t tokens, int heads, int dim, DType t, bool strided) {
  const int64_t head_stride = strided ? dim + kPad : dim;
  const int64_t token_stride = strided ? (heads + 1) * head_stride : heads * head_stride;
  const int64_t elems = std::max<int64_t>(1, tokens) * token_stride;
  TypedBuffer b;
  b.storage.resize(size_t(elems * int64_t(DTypeSize(t))));  // raw bytes [tokens, heads(+1), dim(+pad)]
  for (int64_t i = 0; i < elems; ++i) StoreTyped(b.storage.data(), t, i, NAN);
  b.view = MakeView(b.storage.data(), t, {tokens, heads, dim});
  b.view.stride = {token_stride, head_stride, 1, 0};
  return b;
}

namespace {

int64_t Offset(const TensorView& v, int64_t t, int64_t h, int64_t c) {
  return t * v.stride[0] + h * v.stride[1] + c;
}

// Fills a view with N(0, std) values (token t of T scaled by 1 + ramp * t / T) rounded to its dtype;
// returns them as [tokens, heads, dim].
std::vector<double> FillRandom(std::mt19937_64& rng, float std_dev, TypedBuffer* b, float ramp = 0.0f) {
  const TensorView& v = b->view;
  std::normal_distribution<float> normal(0.0f, std_dev);
  std::vector<double> values(size_t(v.numel()));  // [tokens, heads, dim]
  size_t n = 0;
  for (int64_t t = 0; t < v.shape[0]; ++t)
    for (int64_t h = 0; h < v.shape[1]; ++h)
      for (int64_t c = 0; c < v.shape[2]; ++c) {
        const float gain = 1.0f + ramp * float(t) / float(v.shape[0]);
        const float x = RoundTrip(gain * normal(rng), v.dtype);
        StoreTyped(b->storage.data(), v.dtype, Offset(v, t, h, c), x);
        values[n++] = x;
      }
  return values;
}

// True when the variant shows every element of the block (rows [r0, r1), keys [c0, c1)) of mask.
bool BlockAllVisible(const std::vector<uint8_t>& mask, int64_t n_kv, int64_t r0, int64_t r1, int64_t c0,
                     int64_t c1) {
  for (int64_t i = r0; i < r1; ++i)
    for (int64_t j = c0; j < c1; ++j)
      if (!mask[size_t(i * n_kv + j)]) return false;
  return true;
}

// A caller-supplied block list for one sequence: a random subset of kv blocks per (head, q block).
BlockList MakeBlockList(const Case& c, const ref::RefVariant& var, int64_t n_q, int64_t n_kv,
                        std::mt19937_64& rng) {
  const BlockSpec& s = c.blocks;
  BlockList l;
  l.q_block = s.q_block;
  l.kv_block = s.kv_block;
  l.num_q_blocks = int((n_q + s.q_block - 1) / s.q_block);
  l.num_kv_blocks = int((n_kv + s.kv_block - 1) / s.kv_block);
  l.heads = s.heads == BlockSpec::Heads::kOne ? 1 : s.heads == BlockSpec::Heads::kPerK ? c.h_k : c.h_q;
  const HeadMap hm{c.h_q, c.h_k, c.h_v};
  const std::vector<uint8_t> mask = ref::VisibleMask(var, hm, 0, n_q, n_kv, nullptr);  // [n_q, n_kv]
  std::uniform_real_distribution<double> u(0.0, 1.0);
  l.offsets = {0};
  for (int head = 0; head < l.heads; ++head)
    for (int qb = 0; qb < l.num_q_blocks; ++qb) {
      const bool skip = s.skip_every_q_block > 0 && qb % s.skip_every_q_block == 0;
      for (int kb = 0; kb < l.num_kv_blocks; ++kb) {
        if (skip || u(rng) >= s.keep) continue;
        const int64_t r0 = int64_t(qb) * s.q_block, r1 = std::min(n_q, r0 + s.q_block);
        const int64_t c0 = int64_t(kb) * s.kv_block, c1 = std::min(n_kv, c0 + s.kv_block);
        bool partial = u(rng) < 0.5;
        if (s.flags == BlockSpec::Flags::kAllFull) partial = false;
        if (s.flags == BlockSpec::Flags::kAllPartial) partial = true;
        if (s.flags == BlockSpec::Flags::kTruthful) partial = !BlockAllVisible(mask, n_kv, r0, r1, c0, c1);
        l.kv_blocks.push_back(kb);
        l.partial.push_back(partial ? 1 : 0);
      }
      l.offsets.push_back(int32_t(l.kv_blocks.size()));
    }
  return l;
}

ref::RefVariant MakeRefVariant(const Case& c, const std::vector<float>& alibi, const std::vector<float>& sinks) {
  ref::RefVariant v;
  v.scale = c.scale;
  v.causal = c.causal;
  v.window_left = c.window_left;
  v.window_right = c.window_right;
  v.sink_tokens = c.sink_tokens;
  v.softcap = c.softcap;
  v.alibi_slopes.assign(alibi.begin(), alibi.end());
  v.sink_logits.assign(sinks.begin(), sinks.end());
  return v;
}

std::string Join(const std::vector<int64_t>& v) {
  std::string s = "{";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "}";
}

// "seq b row i head h" for flat row r of [rows, H_q].
std::string Locate(const Problem& p, int64_t row, int h) {
  const auto& cu = p.c.decode ? std::vector<int64_t>{} : Prefix(p.c.len_q);
  int64_t b = p.c.decode ? row : 0;
  if (!p.c.decode)
    while (b + 1 < int64_t(cu.size()) && cu[size_t(b) + 1] <= row) ++b;
  const int64_t i = p.c.decode ? 0 : row - cu[size_t(b)];
  std::ostringstream os;
  os << "seq " << b << " row " << i << " (n_q " << (p.c.decode ? 1 : p.c.len_q[size_t(b)]) << ", n_kv "
     << p.c.len_kv[size_t(b)] << ") head " << h;
  return os.str();
}

// Output, lse and layout checks; each records gtest failures with the case description.
void CheckOutput(const Problem& p, const Expected& e, const KernelResult& r, const std::string& where) {
  const int hq = p.c.h_q, dv = p.c.d_v;
  double max_err = 0;
  size_t worst = 0, nonfinite = 0, first_nonfinite = 0, nonzero_masked = 0, first_nonzero = 0;
  for (size_t i = 0; i < r.out.size(); ++i) {
    const size_t row_head = i / size_t(dv);
    if (!std::isfinite(r.out[i])) {
      if (nonfinite++ == 0) first_nonfinite = i;
      continue;
    }
    if (e.visible[row_head] == 0 && r.out[i] != 0.0 && nonzero_masked++ == 0) first_nonzero = i;
    const double err = std::fabs(r.out[i] - e.ref.out[i]);
    if (err > max_err) max_err = err, worst = i;
  }
  auto at = [&](size_t i) {
    std::ostringstream os;
    os << Locate(p, int64_t(i / size_t(dv * hq)), int(i / size_t(dv) % size_t(hq))) << " col " << i % size_t(dv)
       << ": kernel " << r.out[i] << " ref " << e.ref.out[i];
    return os.str();
  };
  EXPECT_EQ(nonfinite, 0u) << where << ": non-finite outputs, first at " << at(first_nonfinite) << "\n"
                           << p.c.Describe();
  EXPECT_EQ(nonzero_masked, 0u) << where << ": rows with no visible key must output exactly 0, first at "
                                << at(first_nonzero) << "\n" << p.c.Describe();
  if (std::getenv("QATTN_TEST_VERBOSE"))  // how close each case runs to its budget
    std::cout << where << ": out err " << max_err << " / limit " << e.out_budget.limit() << " (ratio "
              << max_err / e.out_budget.limit() << ")\n";
  EXPECT_LE(max_err, e.out_budget.limit())
      << where << ": output error " << max_err << " > budget 2*" << e.out_budget.naive_err << "+"
      << e.out_budget.eps << ", worst at " << at(worst) << "\n" << p.c.Describe();
}

void CheckLse(const Problem& p, const Expected& e, const KernelResult& r, const std::string& where) {
  if (r.lse.empty()) return;
  const int hq = p.c.h_q;
  double max_err = 0;
  size_t worst = 0, mismatched = 0, first_mismatch = 0;
  for (size_t i = 0; i < r.lse.size(); ++i) {
    const bool ref_neg_inf = std::isinf(e.ref.lse[i]) && e.ref.lse[i] < 0;
    const bool ok = ref_neg_inf ? (std::isinf(r.lse[i]) && r.lse[i] < 0) : std::isfinite(r.lse[i]);
    if (!ok) {
      if (mismatched++ == 0) first_mismatch = i;
      continue;
    }
    if (ref_neg_inf) continue;
    const double err = std::fabs(r.lse[i] - e.ref.lse[i]);
    if (err > max_err) max_err = err, worst = i;
  }
  auto at = [&](size_t i) {
    std::ostringstream os;
    os << Locate(p, int64_t(i / size_t(hq)), int(i % size_t(hq))) << ": kernel lse " << r.lse[i] << " ref "
       << e.ref.lse[i];
    return os.str();
  };
  EXPECT_EQ(mismatched, 0u) << where << ": lse must be -inf exactly where no key (and no sink) is seen, "
                            << "finite elsewhere; first wrong at " << at(first_mismatch) << "\n" << p.c.Describe();
  EXPECT_LE(max_err, e.lse_budget.limit())
      << where << ": lse error " << max_err << " > budget 2*" << e.lse_budget.naive_err << "+"
      << e.lse_budget.eps << ", worst at " << at(worst) << "\n" << p.c.Describe();
}

// Reads the kernel output back through its view and checks the padding kept the sentinel.
void ReadOutput(const TypedBuffer& out, KernelResult* r) {
  const TensorView& v = out.view;
  const float* base = reinterpret_cast<const float*>(out.storage.data());
  r->out.resize(size_t(v.numel()));  // [rows, H_q, d_v]
  std::vector<uint8_t> in_view(out.storage.size() / 4, 0);  // [storage floats] 1 = inside the view
  size_t n = 0;
  for (int64_t t = 0; t < v.shape[0]; ++t)
    for (int64_t h = 0; h < v.shape[1]; ++h)
      for (int64_t c = 0; c < v.shape[2]; ++c) {
        const int64_t off = Offset(v, t, h, c);
        r->out[n++] = base[off];
        in_view[size_t(off)] = 1;
      }
  for (size_t i = 0; i < in_view.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &base[i], 4);
    if (!in_view[i] && bits != kSentinelBits) {
      r->layout_error = "the kernel wrote outside its output view at float offset " + std::to_string(i);
      return;
    }
  }
}

TypedBuffer AllocOutput(int64_t rows, int h_q, int d_v, bool strided) {
  TypedBuffer out = AllocTyped(rows, h_q, d_v, DType::kF32, strided);
  float* f = reinterpret_cast<float*>(out.storage.data());
  for (size_t i = 0; i < out.storage.size() / 4; ++i) f[i] = SentinelF32();  // unwritten = NaN
  return out;
}

double Ms(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

}  // namespace

std::string Case::Describe() const {
  std::ostringstream os;
  os << "case " << name << ": " << (decode ? "decode" : "prefill") << " dtype=" << DTypeName(dtype)
     << " H_q=" << h_q << " H_k=" << h_k << " H_v=" << h_v << " d_qk=" << d_qk << " d_v=" << d_v
     << " len_q=" << Join(len_q) << " len_kv=" << Join(len_kv) << " pass_cu_seqlens=" << pass_cu_seqlens
     << " scale=" << scale << " causal=" << causal << " window=(" << window_left << "," << window_right
     << ") sink_tokens=" << sink_tokens << " softcap=" << softcap << " alibi=" << alibi
     << " sink_logits=" << sink_logits;
  if (blocks.enabled)
    os << " blocks{heads=" << int(blocks.heads) << " flags=" << int(blocks.flags) << " q_block=" << blocks.q_block
       << " kv_block=" << blocks.kv_block << " keep=" << blocks.keep << " skip_every=" << blocks.skip_every_q_block
       << "}";
  os << " num_splits=" << num_splits << " strided=" << strided << " threads=" << threads << " lse=" << lse
     << " input_std=" << input_std << " key_ramp=" << key_ramp << " seed=" << seed;
  return os.str();
}

AttentionVariant Problem::Variant() const {
  AttentionVariant v;
  v.scale = c.scale;
  v.causal = c.causal;
  v.window_left = c.window_left;
  v.window_right = c.window_right;
  v.sink_tokens = c.sink_tokens;
  v.softcap = c.softcap;
  v.alibi_slopes = alibi.empty() ? nullptr : alibi.data();
  v.sink_logits = sinks.empty() ? nullptr : sinks.data();
  return v;
}

Problem MakeProblem(const Case& c) {
  Problem p;
  p.c = c;
  std::mt19937_64 rng(c.seed);
  const std::vector<int64_t> cu_kv = Prefix(c.len_kv);                               // [batch + 1]
  const std::vector<int64_t> cu_q = c.decode ? std::vector<int64_t>{} : Prefix(c.len_q);  // [batch + 1]
  const int64_t rows = c.decode ? int64_t(c.len_kv.size()) : cu_q.back();
  p.q = AllocTyped(rows, c.h_q, c.d_qk, c.dtype, c.strided);
  p.k = AllocTyped(cu_kv.back(), c.h_k, c.d_qk, c.dtype, c.strided);
  p.v = AllocTyped(cu_kv.back(), c.h_v, c.d_v, c.dtype, c.strided);
  p.ref.heads = HeadMap{c.h_q, c.h_k, c.h_v};
  p.ref.d_qk = c.d_qk;
  p.ref.d_v = c.d_v;
  p.ref.q = FillRandom(rng, c.input_std, &p.q);  // [rows, H_q, d_qk]
  p.ref.k = FillRandom(rng, c.input_std, &p.k, c.key_ramp);  // [total_kv, H_k, d_qk]
  p.ref.v = FillRandom(rng, 1.0f, &p.v);         // [total_kv, H_v, d_v]
  p.ref.cu_seqlens_q = cu_q;
  p.ref.cu_seqlens_kv = cu_kv;
  // ALiBi's usual geometric slopes; sink logits spread so that some dominate their row.
  for (int h = 0; c.alibi && h < c.h_q; ++h) p.alibi.push_back(std::exp2(-8.0f * float(h + 1) / float(c.h_q)));
  std::uniform_real_distribution<float> sink_dist(-2.0f, 4.0f);
  for (int h = 0; c.sink_logits && h < c.h_q; ++h) p.sinks.push_back(sink_dist(rng));
  p.ref.variant = MakeRefVariant(c, p.alibi, p.sinks);
  for (size_t b = 0; c.blocks.enabled && b < c.len_kv.size(); ++b)
    p.lists.push_back(MakeBlockList(c, p.ref.variant, c.len_q[b], c.len_kv[b], rng));
  p.ref.blocks = p.lists;
  return p;
}

KernelResult RunKernel(const Problem& p) {
  const Case& c = p.c;
  const int64_t rows = p.q.view.shape[0];
  TypedBuffer out = AllocOutput(rows, c.h_q, c.d_v, c.strided);
  std::vector<float> lse(size_t(rows * c.h_q), SentinelF32());  // [rows, H_q]
  std::unique_ptr<ThreadPool> pool = c.threads > 0 ? std::make_unique<ThreadPool>(c.threads) : nullptr;
  const std::vector<int64_t> cu_kv = c.pass_cu_seqlens ? Prefix(c.len_kv) : std::vector<int64_t>{};
  if (c.decode) {
    DecodeArgs a;
    a.q = p.q.view, a.k = p.k.view, a.v = p.v.view, a.out = out.view;
    a.lse = c.lse ? lse.data() : nullptr;
    a.cu_seqlens_kv = cu_kv;
    a.variant = p.Variant();
    a.num_splits = c.num_splits;
    AttendDecode(a, pool.get());
  } else {
    PrefillArgs a;
    a.q = p.q.view, a.k = p.k.view, a.v = p.v.view, a.out = out.view;
    a.lse = c.lse ? lse.data() : nullptr;
    a.cu_seqlens_q = c.pass_cu_seqlens ? Prefix(c.len_q) : std::vector<int64_t>{};
    a.cu_seqlens_kv = cu_kv;
    a.variant = p.Variant();
    a.blocks = p.lists.empty() ? nullptr : p.lists.data();
    AttendPrefill(a, pool.get());
  }
  KernelResult r;
  ReadOutput(out, &r);
  if (c.lse) r.lse.assign(lse.begin(), lse.end());
  return r;
}

Expected ComputeExpected(const Problem& p) {
  const ref::RefProblem decoded = p.c.decode ? ref::DecodeProblem(p.ref) : ref::RefProblem{};
  const ref::RefProblem& rp = p.c.decode ? decoded : p.ref;  // no copy of a prefill problem
  Expected e;
  e.ref = ref::ReferenceAttention(rp);
  const ref::RefResult naive = ref::NaiveAttention(rp, p.c.dtype);
  e.out_budget = ref::ErrorBudget(e.ref.out, naive.out);
  e.lse_budget = ref::ErrorBudget(e.ref.lse, naive.lse);
  const int hq = p.c.h_q;
  e.visible.assign(e.ref.lse.size(), 0);  // [rows, H_q]
  for (int b = 0; b < rp.batch(); ++b) {
    const int64_t q0 = rp.q_begin(b), n_q = rp.q_end(b) - q0, n_kv = rp.kv_end(b) - rp.kv_begin(b);
    const BlockList* list = rp.blocks.empty() ? nullptr : &rp.blocks[size_t(b)];
    for (int h = 0; h < hq; ++h) {
      const std::vector<uint8_t> mask = ref::VisibleMask(rp.variant, rp.heads, h, n_q, n_kv, list);  // [n_q, n_kv]
      for (int64_t i = 0; i < n_q; ++i)
        for (int64_t j = 0; j < n_kv; ++j) e.visible[size_t((q0 + i) * hq + h)] += mask[size_t(i * n_kv + j)];
    }
  }
  return e;
}

void CheckResult(const Problem& p, const Expected& e, const KernelResult& r, const std::string& where) {
  if (!r.layout_error.empty()) ADD_FAILURE() << where << ": " << r.layout_error << "\n" << p.c.Describe();
  CheckOutput(p, e, r, where);
  CheckLse(p, e, r, where);
}

std::vector<Isa> SupportedIsas() {
  const CpuFeatures& f = DetectCpu();
  std::vector<Isa> isas = {Isa::kScalar};
  if (f.avx2_fma) isas.push_back(Isa::kAvx2);
  if (f.avx512) isas.push_back(Isa::kAvx512);
  if (f.avx512_bf16) isas.push_back(Isa::kAvx512Bf16);
  return isas;
}

void RunCaseAllIsas(const Case& c) {
  const bool verbose = std::getenv("QATTN_TEST_VERBOSE") != nullptr;
  if (verbose) std::cout << c.Describe() << "\n";
  auto t0 = std::chrono::steady_clock::now();
  const Problem p = MakeProblem(c);
  const Expected e = ComputeExpected(p);  // once: the reference does not depend on the ISA
  if (verbose) std::cout << "  inputs + reference + naive: " << Ms(t0) << " ms\n";
  IsaCapGuard guard;
  for (Isa isa : SupportedIsas()) {
    SetIsaCap(isa);
    const std::string where = "[isa " + IsaName(isa) + "] " + c.name;
    KernelResult r;
    try {
      t0 = std::chrono::steady_clock::now();
      r = RunKernel(p);
      if (verbose) std::cout << "  " << where << " kernel: " << Ms(t0) << " ms\n";
    } catch (const std::exception& ex) {
      ADD_FAILURE() << where << " threw: " << ex.what() << "\n" << c.Describe();
      continue;
    }
    CheckResult(p, e, r, where);
  }
}

void CaseList::Add(std::string tag, Case c) {
  std::string name = tag + "_" + std::string(DTypeName(c.dtype));
  int dup = 0;
  for (bool clash = true; clash;) {
    clash = false;
    const std::string candidate = dup ? name + "_" + std::to_string(dup) : name;
    for (const Case& o : cases_) clash = clash || o.name == candidate;
    if (clash) ++dup;
    else name = candidate;
  }
  c.name = name;
  c.seed = Fnv1a(name);  // stable across runs and independent of the case order
  cases_.push_back(std::move(c));
}

}  // namespace qattn::test
