#include "methods/sparse_prefill/gather_attention.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace qattn::sparse {
namespace {

// Gathered keys per kernel call: bounds the gathered and the kernel's packed buffers (~8 MiB each at
// d = 128) while leaving enough query blocks per call to keep the threads busy.
constexpr int64_t kChunkKeys = int64_t(1) << 15;
constexpr int kMaxTail = 32;  // bias pair plus padding to a multiple of 16: at most 17 dims

int RoundUp(int x, int m) { return (x + m - 1) / m * m; }

// One (list head, query block) after sorting its keys by visibility.
struct BlockKeys {
  int64_t row0 = 0, rows = 0;     // the block's query rows
  int64_t begin = 0, past = 0;    // sel.keys[begin, past): visible to every row (position <= row0)
  int64_t diag = 0;               // sel.keys[past, diag): row0 < position < row0 + rows
  bool fused = false;             // the kernel's bottom-right causal rule is exact for all keys
  bool diag_fused = false;        // ... for the diagonal keys on their own
};

// The heads one list serves and the KV head it reads.
struct ListHeads {
  int q0 = 0, count = 1, kv = 0;
};

ListHeads HeadsOf(const PrefillProblem& p, const KeySelection& sel, int list_head) {
  if (sel.heads == p.num_q_heads()) return {list_head, 1, list_head / p.group()};
  return {list_head * p.group(), p.group(), list_head};
}

void Validate(const PrefillProblem& p, const KeySource& src, const KeySelection& sel) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("gathered attention: " + what); };
  if (sel.heads != p.num_q_heads() && sel.heads != p.num_kv_heads()) fail("selection heads must be H_q or H_kv");
  if (sel.q_block < 1 || sel.num_q_blocks != (p.n() + sel.q_block - 1) / sel.q_block) fail("query block count");
  if (sel.offsets.size() != size_t(sel.heads) * sel.num_q_blocks + 1 || sel.offsets.back() != int64_t(sel.keys.size()))
    fail("offsets do not match the lists");
  if (src.k.dtype != p.q.dtype || src.v.dtype != p.q.dtype) fail("the source dtype differs from the queries'");
  if (src.k.dim(1) != p.num_kv_heads() || src.k.dim(2) != p.head_dim() || src.v.dim(2) != p.value_dim() ||
      src.v.dim(0) != src.k.dim(0))
    fail("source shape " + src.k.ShapeString() + " does not fit the problem");
  for (size_t l = 0; l + 1 < sel.offsets.size(); ++l) {
    for (int64_t e = sel.offsets[l]; e < sel.offsets[l + 1]; ++e) {
      if (sel.keys[e] < 0 || sel.keys[e] >= src.size()) fail("a key index is out of range");
      if (e == sel.offsets[l]) continue;
      if (sel.keys[e] <= sel.keys[e - 1]) fail("key lists must be strictly ascending");
      if (src.Position(sel.keys[e]) < src.Position(sel.keys[e - 1])) fail("key positions must not decrease along a list");
    }
  }
}

// True when keys sel.keys[first, last) (ascending positions below row0 + rows) are seen by exactly
// the rows the kernel's bottom-right causal rule shows them to: key j (0-based of n_kv) is first
// seen by row max(0, pos - row0), and by the kernel from row max(0, j - (n_kv - rows)).
bool BottomRightExact(const KeySource& src, const KeySelection& sel, int64_t first, int64_t last, int64_t row0,
                      int64_t rows) {
  const int64_t n_kv = last - first;
  for (int64_t e = first; e < last; ++e) {
    const int64_t first_row = std::max<int64_t>(0, src.Position(sel.keys[e]) - row0);
    if (first_row != std::max<int64_t>(0, (e - first) - (n_kv - rows))) return false;
  }
  return true;
}

// Splits a block's keys into always-visible / diagonal / never-visible and tests the fused rules.
BlockKeys Classify(const KeySource& src, const KeySelection& sel, int64_t list, int64_t row0, int64_t rows) {
  BlockKeys b{row0, rows, sel.offsets[list], sel.offsets[list], sel.offsets[list]};
  const int64_t end = sel.offsets[list + 1];
  while (b.past < end && src.Position(sel.keys[b.past]) <= row0) ++b.past;
  b.diag = b.past;
  while (b.diag < end && src.Position(sel.keys[b.diag]) < row0 + rows) ++b.diag;
  b.fused = BottomRightExact(src, sel, b.begin, b.diag, row0, rows);
  b.diag_fused = BottomRightExact(src, sel, b.past, b.diag, row0, rows);
  return b;
}

// Writes the folded-bias tail of a row of d dims: [x_hi, x_lo, 0...] up to d_pad, with x_hi + x_lo = x
// in the dtype's precision (queries get [1, 1, 0...]).
void WriteTail(char* row, int d, int d_pad, DType dtype, float x, bool query) {
  float tail[kMaxTail] = {};
  if (query) {
    tail[0] = tail[1] = 1.0f;
  } else {
    tail[0] = RoundTrip(x, dtype);
    tail[1] = x - tail[0];
  }
  ConvertFromF32(tail, row + size_t(d) * DTypeSize(dtype), dtype, size_t(d_pad - d));
}

int BiasedDim(int d) { return RoundUp(d + 2, 16); }

// Grow-only buffers reused across calls on this thread: fresh multi-megabyte allocations cost more
// in page faults and zeroing than the gathers themselves. Every byte handed out is overwritten.
struct Workspace {
  AlignedBuffer k, v, q, o, l;
  static void* Get(AlignedBuffer& b, size_t bytes) {
    bytes = std::max<size_t>(bytes, 64);
    if (b.size() < bytes) b = AlignedBuffer(bytes + bytes / 4);
    return b.data();
  }
};

Workspace& ThreadWorkspace() {
  static thread_local Workspace w;
  return w;
}

// One kernel call: gathered K/V rows and one varlen sequence per block or segment.
struct Gathered {
  int d = 0;  // head dim as the kernel sees it (with the bias pair and padding)
  std::vector<int64_t> cu_q{0}, cu_kv{0};
  void* k = nullptr;  // [keys, 1, d]    (workspace)
  void* v = nullptr;  // [keys, 1, d_v]  (workspace)
  int64_t keys() const { return cu_kv.back(); }
};

// One piece of work: `count` source keys from sel.keys[first...] copied into rows [dst, dst+count).
struct Copy {
  int64_t first, count, dst;
};

class Executor {
 public:
  Executor(const PrefillProblem& p, const KeySource& src, const KeySelection& sel, TensorView out, float* lse,
           ThreadPool& pool)
      : p_(p), src_(src), sel_(sel), out_(out), lse_(lse), pool_(pool), es_(DTypeSize(p.q.dtype)) {
    d_ = src.bias ? BiasedDim(p.head_dim()) : p.head_dim();
  }

  void Run() {
    for (int lh = 0; lh < sel_.heads; ++lh) {
      int b0 = 0;
      while (b0 < sel_.num_q_blocks) {
        int b1 = b0;
        int64_t keys = 0;
        while (b1 < sel_.num_q_blocks && (b1 == b0 || keys < kChunkKeys)) {
          const int64_t l = sel_.list(lh, b1++);
          keys += sel_.offsets[l + 1] - sel_.offsets[l];
        }
        RunChunk(lh, b0, b1);
        b0 = b1;
      }
    }
  }

 private:
  // Attention of one list head over query blocks [b0, b1): one causal call when every block is
  // fused, else the always-visible keys non-causally plus the diagonal keys (causally where the
  // kernel's rule is exact, by row segments elsewhere), merged by LSE.
  void RunChunk(int lh, int b0, int b1) {
    const ListHeads heads = HeadsOf(p_, sel_, lh);
    std::vector<BlockKeys> blocks;
    bool all_fused = true, diag_fused = false, diag_segments = false;
    for (int b = b0; b < b1; ++b) {
      const int64_t row0 = int64_t(b) * sel_.q_block, rows = std::min<int64_t>(sel_.q_block, p_.n() - row0);
      const BlockKeys& k = blocks.emplace_back(Classify(src_, sel_, sel_.list(lh, b), row0, rows));
      all_fused = all_fused && k.fused;
      diag_fused = diag_fused || (k.diag > k.past && k.diag_fused);
      diag_segments = diag_segments || (k.diag > k.past && !k.diag_fused);
    }
    std::vector<Part> parts{all_fused ? kAll : kPast};
    if (!all_fused && diag_fused) parts.push_back(kDiagFused);
    if (!all_fused && diag_segments) parts.push_back(kDiagSegments);
    const int64_t row0 = blocks.front().row0, rows = blocks.back().row0 + blocks.back().rows - row0;
    const size_t state = size_t(rows) * heads.count;  // rows x heads of this list
    const int dv = p_.value_dim();
    Workspace& ws = ThreadWorkspace();
    float* o = static_cast<float*>(Workspace::Get(ws.o, state * dv * parts.size() * 4));  // [parts, rows, heads, d_v]
    float* l = static_cast<float*>(Workspace::Get(ws.l, state * parts.size() * 4));       // [parts, rows, heads]
    std::vector<float*> outs, lses;
    const void* q = BiasedQueries(heads, row0, rows);
    for (size_t i = 0; i < parts.size(); ++i) {
      outs.push_back(o + i * state * dv);
      lses.push_back(l + i * state);
      const Gathered g = Plan(blocks, parts[i], heads.kv);
      Attend(heads, q, row0, rows, g, parts[i] == kAll || parts[i] == kDiagFused, outs[i], lses[i]);
    }
    MergeInto(outs, lses, int64_t(state), dv, &pool_);
    Store(heads, row0, rows, outs[0], lses[0]);
  }

  enum Part { kAll, kPast, kDiagFused, kDiagSegments };

  // Lays out the sequences of one call (one per block, or per row segment) and gathers their keys.
  Gathered Plan(const std::vector<BlockKeys>& blocks, Part part, int kv) {
    Gathered g;
    g.d = d_;
    std::vector<Copy> copies;
    for (const BlockKeys& b : blocks) {
      if (part == kAll) AddSequence(g, copies, b.rows, b.begin, b.diag - b.begin);
      if (part == kPast) AddSequence(g, copies, b.rows, b.begin, b.past - b.begin);
      if (part == kDiagFused) AddSequence(g, copies, b.rows, b.past, b.diag_fused ? b.diag - b.past : 0);
      if (part != kDiagSegments) continue;
      if (b.diag_fused) {
        AddSequence(g, copies, b.rows, b.past, 0);
        continue;
      }
      // Rows [t0, t1) between consecutive diagonal positions see the first `e - past` of them.
      int64_t t0 = b.row0, e = b.past;
      while (t0 < b.row0 + b.rows) {
        while (e < b.diag && src_.Position(sel_.keys[e]) <= t0) ++e;
        const int64_t t1 = e < b.diag ? src_.Position(sel_.keys[e]) : b.row0 + b.rows;
        AddSequence(g, copies, t1 - t0, b.past, e - b.past);
        t0 = t1;
      }
    }
    GatherRows(g, copies, kv);
    return g;
  }

  static void AddSequence(Gathered& g, std::vector<Copy>& copies, int64_t rows, int64_t first, int64_t count) {
    copies.push_back({first, count, g.cu_kv.back()});
    g.cu_q.push_back(g.cu_q.back() + rows);
    g.cu_kv.push_back(g.cu_kv.back() + count);
  }

  // Copies the selected K rows (with the bias pair) and V rows of KV head `kv`, in parallel.
  void GatherRows(Gathered& g, const std::vector<Copy>& copies, int kv) {
    const int d = p_.head_dim(), dv = p_.value_dim();
    g.k = Workspace::Get(ThreadWorkspace().k, size_t(g.keys()) * g.d * es_);
    g.v = Workspace::Get(ThreadWorkspace().v, size_t(g.keys()) * dv * es_);
    const float inv_scale = 1.0f / p_.EffectiveScale();
    pool_.ParallelFor(int64_t(copies.size()), [&](int64_t i, int) {
      const Copy& c = copies[i];
      for (int64_t r = 0; r < c.count; ++r) {
        const int32_t key = sel_.keys[c.first + r];
        char* krow = static_cast<char*>(g.k) + size_t(c.dst + r) * g.d * es_;
        std::memcpy(krow, src_.k.at(key, kv), size_t(d) * es_);
        std::memcpy(static_cast<char*>(g.v) + size_t(c.dst + r) * dv * es_, src_.v.at(key, kv), size_t(dv) * es_);
        if (src_.bias) WriteTail(krow, d, g.d, p_.q.dtype, src_.bias[int64_t(kv) * src_.size() + key] * inv_scale, false);
      }
    });
  }

  // q' = [q, 1, 1, 0...] for the rows and heads of one list; null when there is no bias.
  const void* BiasedQueries(const ListHeads& heads, int64_t row0, int64_t rows) const {
    if (!src_.bias) return nullptr;
    char* q = static_cast<char*>(Workspace::Get(ThreadWorkspace().q, size_t(rows) * heads.count * d_ * es_));  // [rows, heads, d']
    pool_.ParallelFor(rows, [&](int64_t t, int) {
      for (int h = 0; h < heads.count; ++h) {
        char* row = q + (size_t(t) * heads.count + h) * d_ * es_;
        std::memcpy(row, p_.q.at(row0 + t, heads.q0 + h), size_t(p_.head_dim()) * es_);
        WriteTail(row, p_.head_dim(), d_, p_.q.dtype, 0.0f, true);
      }
    });
    return q;
  }

  // One AttendPrefill over the gathered sequences; o: [rows, heads, d_v], l: [rows, heads].
  void Attend(const ListHeads& heads, const void* qb, int64_t row0, int64_t rows, const Gathered& g, bool causal,
              float* o, float* l) {
    PrefillArgs a;
    if (qb) {
      a.q = MakeView(const_cast<void*>(qb), p_.q.dtype, {rows, heads.count, d_});
    } else {  // the problem's own rows and heads, strided
      a.q = p_.q;
      a.q.data = p_.q.at(row0, heads.q0);
      a.q.shape[0] = rows;
      a.q.shape[1] = heads.count;
    }
    a.k = MakeView(g.k, p_.q.dtype, {g.keys(), 1, g.d});
    a.v = MakeView(g.v, p_.q.dtype, {g.keys(), 1, p_.value_dim()});
    a.out = MakeView(o, DType::kF32, {rows, heads.count, p_.value_dim()});
    a.lse = l;
    a.cu_seqlens_q = g.cu_q;
    a.cu_seqlens_kv = g.cu_kv;
    a.variant.scale = p_.EffectiveScale();
    a.variant.causal = causal;
    AttendPrefill(a, &pool_);
  }

  void Store(const ListHeads& heads, int64_t row0, int64_t rows, const float* o, const float* l) {
    const int dv = p_.value_dim(), hq = p_.num_q_heads();
    pool_.ParallelFor(rows, [&](int64_t t, int) {
      for (int h = 0; h < heads.count; ++h) {
        const size_t i = size_t(t) * heads.count + h;
        std::memcpy(out_.at<float>(row0 + t, heads.q0 + h), o + i * dv, size_t(dv) * 4);
        if (lse_) lse_[(row0 + t) * hq + heads.q0 + h] = l[i];
      }
    });
  }

  const PrefillProblem& p_;
  const KeySource& src_;
  const KeySelection& sel_;
  TensorView out_;
  float* lse_;
  ThreadPool& pool_;
  size_t es_;
  int d_ = 0;
};

}  // namespace

KeySource ProblemKeys(const PrefillProblem& p) { return {p.k, p.v, nullptr, nullptr}; }

void KeySelection::Init(int64_t n, int list_heads, int block) {
  q_block = block;
  num_q_blocks = int((n + block - 1) / block);
  heads = list_heads;
  offsets.assign(1, 0);
  keys.clear();
}

double TokenDensity(const PrefillProblem& p, const KeySource& src, const KeySelection& sel) {
  double kept = 0;
  const int per_list = sel.heads == p.num_q_heads() ? 1 : p.group();
  for (int h = 0; h < sel.heads; ++h) {
    for (int b = 0; b < sel.num_q_blocks; ++b) {
      const int64_t l = sel.list(h, b), r0 = int64_t(b) * sel.q_block, r1 = std::min<int64_t>(p.n(), r0 + sel.q_block);
      for (int64_t e = sel.offsets[l]; e < sel.offsets[l + 1]; ++e)  // rows t in [max(pos, r0), r1) see key e
        kept += double(std::max<int64_t>(0, r1 - std::max(src.Position(sel.keys[e]), r0))) * per_list;
    }
  }
  const double n = double(p.n());
  return kept / (n * (n + 1) / 2 * p.num_q_heads());
}

void AttendGathered(const PrefillProblem& p, const KeySource& src, const KeySelection& sel, TensorView out, float* lse,
                    ThreadPool* pool) {
  Validate(p, src, sel);
  if (p.n() == 0) return;
  Executor(p, src, sel, out, lse, pool ? *pool : ThreadPool::Default()).Run();
}

void AttendDenseBiased(const PrefillProblem& p, const float* bias, TensorView out, float* lse, ThreadPool* pool) {
  const int d = p.head_dim(), dp = BiasedDim(d), hq = p.num_q_heads(), hkv = p.num_kv_heads();
  const size_t es = DTypeSize(p.q.dtype);
  Tensor q(p.q.dtype, {p.n(), hq, dp}), k(p.k.dtype, {p.n(), hkv, dp});  // [n, H, d'] folded copies
  const float inv_scale = 1.0f / p.EffectiveScale();
  ThreadPool& tp = pool ? *pool : ThreadPool::Default();
  tp.ParallelFor(p.n(), [&](int64_t t, int) {
    for (int h = 0; h < hq; ++h) {
      std::memcpy(q.view().at(t, h), p.q.at(t, h), size_t(d) * es);
      WriteTail(q.view().at<char>(t, h), d, dp, p.q.dtype, 0.0f, true);
    }
    for (int g = 0; g < hkv; ++g) {
      std::memcpy(k.view().at(t, g), p.k.at(t, g), size_t(d) * es);
      WriteTail(k.view().at<char>(t, g), d, dp, p.k.dtype, bias[int64_t(g) * p.n() + t] * inv_scale, false);
    }
  });
  PrefillArgs a;
  a.q = q.view();
  a.k = k.view();
  a.v = p.v;
  a.out = out;
  a.lse = lse;
  a.variant.scale = p.EffectiveScale();
  a.variant.causal = true;
  AttendPrefill(a, &tp);
}

MethodResult DenseFallback(const PrefillProblem& p, int coverage_block, TensorView out, float* lse, ThreadPool* pool) {
  MethodResult r;
  const auto t0 = std::chrono::steady_clock::now();
  DenseCausal(p, out, lse, pool);
  r.attend_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.coverage.Init(p.n(), p.num_q_heads(), coverage_block);
  for (int h = 0; h < r.coverage.heads; ++h)
    for (int row = 0; row < r.coverage.num_blocks; ++row)
      for (int c = 0; c <= row; ++c) r.coverage.at(h, row, c) = 1;
  return r;
}

void MergeInto(std::vector<float*> outs, std::vector<float*> lses, int64_t rows, int d_v, ThreadPool* pool) {
  const int states = int(outs.size());
  if (states < 2) return;
  constexpr int64_t kRows = 256;  // rows per task: stacked copies for MergeStates stay in cache
  ThreadPool& tp = pool ? *pool : ThreadPool::Default();
  tp.ParallelFor((rows + kRows - 1) / kRows, [&](int64_t task, int) {
    const int64_t r0 = task * kRows, n = std::min(kRows, rows - r0);
    std::vector<float> o(size_t(states) * n * d_v), l(size_t(states) * n);  // [states, n, d_v], [states, n]
    for (int s = 0; s < states; ++s) {
      std::memcpy(&o[size_t(s) * n * d_v], outs[s] + r0 * d_v, size_t(n) * d_v * 4);
      std::memcpy(&l[size_t(s) * n], lses[s] + r0, size_t(n) * 4);
    }
    MergeStates(o.data(), l.data(), states, n, d_v, outs[0] + r0 * d_v, lses[0] + r0);
  });
}

}  // namespace qattn::sparse
