#include "reference/reference_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace qattn::ref {
namespace {

// The two ways of running the one algorithm below differ only in the accumulation type T and in
// what happens when an intermediate tensor is stored (Store).
struct Fp64 {
  using T = double;
  double Store(double x) const { return x; }
};
struct SamePrecision {
  using T = float;
  DType dtype;
  float Store(float x) const { return RoundTrip(x, dtype); }  // a tensor materialised in dtype
};

template <class T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// One head of one sequence gathered out of the packed [tokens, heads, dim] layout.
template <class T>
struct Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<T> a;  // [rows, cols]
  T& at(int64_t r, int64_t c) { return a[r * cols + c]; }
  T at(int64_t r, int64_t c) const { return a[r * cols + c]; }
};

// Rows [t0, t0 + n) of head `head` from src [tokens, num_heads, dim] (already in the precision P).
template <class P>
Matrix<typename P::T> Gather(const std::vector<double>& src, int64_t t0, int64_t n, int num_heads, int head,
                             int dim) {
  using T = typename P::T;
  Matrix<T> m{n, dim, std::vector<T>(size_t(n * dim))};  // [n, dim]
  for (int64_t t = 0; t < n; ++t)
    for (int c = 0; c < dim; ++c) m.at(t, c) = T(src[size_t(((t0 + t) * num_heads + head) * dim + c)]);
  return m;
}

// The inputs as tensors of the precision P: rounded once, up front (a no-op for fp64).
template <class P>
RefProblem StoreInputs(const P& prec, RefProblem p) {
  for (std::vector<double>* t : {&p.q, &p.k, &p.v})
    for (double& x : *t) x = double(prec.Store(typename P::T(x)));
  return p;
}

// S = Q K^T, each dot accumulated in T and the result stored in the precision P.
template <class P>
Matrix<typename P::T> Scores(const P& prec, const Matrix<typename P::T>& q, const Matrix<typename P::T>& k) {
  using T = typename P::T;
  Matrix<T> s{q.rows, k.rows, std::vector<T>(size_t(q.rows * k.rows))};  // [n_q, n_kv]
  for (int64_t i = 0; i < q.rows; ++i)
    for (int64_t j = 0; j < k.rows; ++j) {
      T acc = 0;
      for (int64_t c = 0; c < q.cols; ++c) acc += q.at(i, c) * k.at(j, c);
      s.at(i, j) = prec.Store(acc);
    }
  return s;
}

double EffectiveScale(const RefVariant& v, int d_qk) {
  return v.scale != 0.0 ? v.scale : 1.0 / std::sqrt(double(d_qk));
}

// scale, then softcap, then ALiBi, in the order attention.h states; each step is a stored tensor.
template <class P>
void TransformScores(const P& prec, const RefVariant& v, int h, int d_qk, int64_t n_q, int64_t n_kv,
                     Matrix<typename P::T>* s) {
  using T = typename P::T;
  const T scale = T(EffectiveScale(v, d_qk));
  const T cap = T(v.softcap);
  const int64_t shift = n_kv - n_q;  // pos(i) = i + shift (bottom-right alignment)
  for (int64_t i = 0; i < n_q; ++i)
    for (int64_t j = 0; j < n_kv; ++j) {
      T x = prec.Store(s->at(i, j) * scale);
      if (v.softcap > 0) {
        x = prec.Store(x / cap);
        x = prec.Store(std::tanh(x));
        x = prec.Store(x * cap);
      }
      if (!v.alibi_slopes.empty()) {
        const T bias = prec.Store(T(v.alibi_slopes[h]) * T(std::llabs(i + shift - j)));
        x = prec.Store(x - bias);
      }
      s->at(i, j) = x;
    }
}

// Softmax of one score row over its visible keys, with the optional sink logit in the denominator.
// Writes the stored probabilities to p ([n_kv], 0 where masked) and returns the log-sum-exp.
template <class P>
typename P::T SoftmaxRow(const P& prec, const typename P::T* s, const uint8_t* visible, int64_t n_kv,
                         bool has_sink, typename P::T sink, typename P::T* p) {
  using T = typename P::T;
  T m = has_sink ? sink : kNegInf<T>;
  for (int64_t j = 0; j < n_kv; ++j)
    if (visible[j]) m = std::max(m, s[j]);
  std::fill(p, p + n_kv, T(0));
  if (m == kNegInf<T>) return m;  // nothing visible, no sink: out 0, lse -inf
  T sum = has_sink ? std::exp(sink - m) : T(0);
  for (int64_t j = 0; j < n_kv; ++j)
    if (visible[j]) sum += std::exp(s[j] - m);
  for (int64_t j = 0; j < n_kv; ++j)
    if (visible[j]) p[j] = prec.Store(std::exp(s[j] - m) / sum);
  return m + std::log(sum);
}

// out[c] = sum_j p[j] * v[j, c], accumulated in T over j in order, then stored.
template <class P>
void WeightedSum(const P& prec, const typename P::T* p, const Matrix<typename P::T>& v, double* out) {
  using T = typename P::T;
  std::vector<T> acc(size_t(v.cols), T(0));  // [d_v]
  for (int64_t j = 0; j < v.rows; ++j) {
    if (p[j] == T(0)) continue;  // a zero weight adds nothing (and skips masked keys)
    for (int64_t c = 0; c < v.cols; ++c) acc[c] += p[j] * v.at(j, c);
  }
  for (int64_t c = 0; c < v.cols; ++c) out[c] = double(prec.Store(acc[c]));
}

// Sequence b: gather every K and V head once, then for each query head h read the K head and the
// V head the head map names; score, transform, mask, softmax, weighted sum.
template <class P>
void AttendSequence(const P& prec, const RefProblem& pr, int b, RefResult* r) {
  using T = typename P::T;
  const HeadMap& hm = pr.heads;
  const int64_t q0 = pr.q_begin(b), n_q = pr.q_end(b) - q0;
  const int64_t kv0 = pr.kv_begin(b), n_kv = pr.kv_end(b) - kv0;
  std::vector<Matrix<T>> ks, vs;  // [H_k] of [n_kv, d_qk], [H_v] of [n_kv, d_v]
  for (int g = 0; g < hm.num_k_heads; ++g) ks.push_back(Gather<P>(pr.k, kv0, n_kv, hm.num_k_heads, g, pr.d_qk));
  for (int g = 0; g < hm.num_v_heads; ++g) vs.push_back(Gather<P>(pr.v, kv0, n_kv, hm.num_v_heads, g, pr.d_v));
  const BlockList* list = pr.blocks.empty() ? nullptr : &pr.blocks[size_t(b)];
  const bool has_sink = !pr.variant.sink_logits.empty();
  std::vector<T> probs(static_cast<size_t>(n_kv));  // [n_kv] one row of probabilities
  for (int h = 0; h < hm.num_q_heads; ++h) {
    const auto q = Gather<P>(pr.q, q0, n_q, hm.num_q_heads, h, pr.d_qk);  // [n_q, d_qk]
    const Matrix<T>& k = ks[size_t(hm.k_head(h))];                          // [n_kv, d_qk]
    const Matrix<T>& v = vs[size_t(hm.v_head(h))];                          // [n_kv, d_v]
    auto s = Scores(prec, q, k);                                            // [n_q, n_kv]
    TransformScores(prec, pr.variant, h, pr.d_qk, n_q, n_kv, &s);
    const std::vector<uint8_t> mask = VisibleMask(pr.variant, hm, h, n_q, n_kv, list);  // [n_q, n_kv]
    const T sink = has_sink ? prec.Store(T(pr.variant.sink_logits[h])) : T(0);
    for (int64_t i = 0; i < n_q; ++i) {
      const size_t row = size_t((q0 + i) * hm.num_q_heads + h);
      // (data() + offset: a sequence with no keys has empty rows, where &x[0] would be undefined)
      const T lse = SoftmaxRow(prec, s.a.data() + i * n_kv, mask.data() + i * n_kv, n_kv, has_sink, sink,
                               probs.data());
      r->lse[row] = double(lse);
      WeightedSum(prec, probs.data(), v, &r->out[row * pr.d_v]);
    }
  }
}

template <class P>
RefResult Attend(const P& prec, const RefProblem& p) {
  p.CheckShapes();
  RefResult r;
  r.out.assign(size_t(p.total_q() * p.heads.num_q_heads * p.d_v), 0.0);  // [total_q, H_q, d_v]
  r.lse.assign(size_t(p.total_q() * p.heads.num_q_heads), kNegInf<double>);  // [total_q, H_q]
  for (int b = 0; b < p.batch(); ++b) AttendSequence(prec, p, b, &r);
  return r;
}

// The variant's rule for one element, exactly as kernels/attention.h states it.
bool VariantVisible(const RefVariant& v, int64_t pos, int64_t j) {
  if (v.causal && j > pos) return false;
  if (j < v.sink_tokens) return true;  // sinks skip the window, not causality
  const bool left_ok = v.window_left < 0 || j >= pos - v.window_left;
  const bool right_ok = v.window_right < 0 || j <= pos + v.window_right;
  return left_ok && right_ok;
}

// Which kv blocks one list names for one query block: [num_kv_blocks], 1 = listed.
std::vector<uint8_t> ListedBlocks(const BlockList& list, int list_head, int64_t q_block_index) {
  std::vector<uint8_t> listed(size_t(list.num_kv_blocks), 0);
  const size_t at = size_t(list_head) * size_t(list.num_q_blocks) + size_t(q_block_index);
  if (q_block_index >= list.num_q_blocks || at + 1 >= list.offsets.size())
    throw std::invalid_argument("reference: block list has no entry for query block " +
                                std::to_string(q_block_index));
  for (int32_t e = list.offsets[at]; e < list.offsets[at + 1]; ++e) {
    const int32_t kb = list.kv_blocks[size_t(e)];
    if (kb < 0 || kb >= list.num_kv_blocks) throw std::invalid_argument("reference: kv block out of range");
    listed[size_t(kb)] = 1;
  }
  return listed;
}

int64_t SeqLenSum(const std::vector<double>& data, int64_t per_token) {
  return per_token > 0 ? int64_t(data.size()) / per_token : 0;
}

}  // namespace

int64_t RefProblem::total_q() const {
  return cu_seqlens_q.empty() ? SeqLenSum(q, int64_t(heads.num_q_heads) * d_qk) : cu_seqlens_q.back();
}
int64_t RefProblem::total_kv() const {
  return cu_seqlens_kv.empty() ? SeqLenSum(k, int64_t(heads.num_k_heads) * d_qk) : cu_seqlens_kv.back();
}
int RefProblem::batch() const {
  return cu_seqlens_q.empty() ? 1 : int(cu_seqlens_q.size()) - 1;
}
int64_t RefProblem::q_begin(int b) const { return cu_seqlens_q.empty() ? 0 : cu_seqlens_q[size_t(b)]; }
int64_t RefProblem::q_end(int b) const { return cu_seqlens_q.empty() ? total_q() : cu_seqlens_q[size_t(b) + 1]; }
int64_t RefProblem::kv_begin(int b) const { return cu_seqlens_kv.empty() ? 0 : cu_seqlens_kv[size_t(b)]; }
int64_t RefProblem::kv_end(int b) const {
  return cu_seqlens_kv.empty() ? total_kv() : cu_seqlens_kv[size_t(b) + 1];
}

void RefProblem::CheckShapes() const {
  auto fail = [](const std::string& what) { throw std::invalid_argument("reference: " + what); };
  const int hq = heads.num_q_heads, hk = heads.num_k_heads, hv = heads.num_v_heads;
  if (hq < 1 || hk < 1 || hv < 1 || hq % hk || hq % hv) fail("bad head map");
  if (cu_seqlens_q.empty() != cu_seqlens_kv.empty()) fail("give both cu_seqlens or neither");
  if (!cu_seqlens_q.empty() && cu_seqlens_q.size() != cu_seqlens_kv.size()) fail("cu_seqlens sizes differ");
  if (q.size() != size_t(total_q() * hq * d_qk)) fail("q size");
  if (k.size() != size_t(total_kv() * hk * d_qk)) fail("k size");
  if (v.size() != size_t(total_kv() * hv * d_v)) fail("v size");
  if (!variant.alibi_slopes.empty() && variant.alibi_slopes.size() != size_t(hq)) fail("alibi size");
  if (!variant.sink_logits.empty() && variant.sink_logits.size() != size_t(hq)) fail("sink logits size");
  if (!blocks.empty() && blocks.size() != size_t(batch())) fail("one block list per sequence");
}

int ListHead(const BlockList& list, const HeadMap& heads, int h) {
  if (list.heads == 1) return 0;
  if (list.heads == heads.num_q_heads) return h;
  if (list.heads == heads.num_k_heads) return heads.k_head(h);  // one list per K head ("KV group")
  throw std::invalid_argument("reference: block list heads must be 1, H_q or H_k");
}

std::vector<uint8_t> VisibleMask(const RefVariant& variant, const HeadMap& heads, int h, int64_t n_q,
                                 int64_t n_kv, const BlockList* list) {
  std::vector<uint8_t> mask(size_t(n_q * n_kv), 0);  // [n_q, n_kv]
  const int64_t shift = n_kv - n_q;                  // pos(i) = i + shift
  for (int64_t i = 0; i < n_q; ++i) {
    std::vector<uint8_t> listed;  // [num_kv_blocks] for this row's query block
    if (list) listed = ListedBlocks(*list, ListHead(*list, heads, h), i / list->q_block);
    for (int64_t j = 0; j < n_kv; ++j) {
      bool vis = VariantVisible(variant, i + shift, j);
      if (list) vis = vis && listed[size_t(j / list->kv_block)];
      mask[size_t(i * n_kv + j)] = vis ? 1 : 0;
    }
  }
  return mask;
}

RefResult ReferenceAttention(const RefProblem& p) { return Attend(Fp64{}, p); }

RefResult NaiveAttention(const RefProblem& p, DType dtype) {
  const SamePrecision prec{dtype};
  p.CheckShapes();
  return Attend(prec, StoreInputs(prec, p));  // inputs as tensors of that dtype
}

RefProblem DecodeProblem(RefProblem p) {
  const int64_t per_token = int64_t(p.heads.num_q_heads) * p.d_qk;
  const int64_t batch = per_token > 0 ? int64_t(p.q.size()) / per_token : 0;  // one row per sequence
  if (p.cu_seqlens_kv.empty())
    p.cu_seqlens_kv = {0, SeqLenSum(p.k, int64_t(p.heads.num_k_heads) * p.d_qk)};
  if (int64_t(p.cu_seqlens_kv.size()) != batch + 1)
    throw std::invalid_argument("reference: decode needs one kv sequence per query row");
  p.cu_seqlens_q.resize(size_t(batch + 1));
  for (int64_t b = 0; b <= batch; ++b) p.cu_seqlens_q[size_t(b)] = b;
  p.variant.causal = true;  // the query sits at the last position
  p.blocks.clear();
  return p;
}

void ReferenceMerge(const std::vector<double>& outs, const std::vector<double>& lses, int num_states,
                    int64_t rows, int d_v, std::vector<double>* out, std::vector<double>* lse) {
  out->assign(size_t(rows * d_v), 0.0);                // [rows, d_v]
  lse->assign(size_t(rows), kNegInf<double>);          // [rows]
  for (int64_t r = 0; r < rows; ++r) {
    double m = kNegInf<double>;
    for (int s = 0; s < num_states; ++s) m = std::max(m, lses[size_t(s * rows + r)]);
    if (m == kNegInf<double>) continue;  // no state saw a key: out 0, lse -inf
    double sum = 0;
    for (int s = 0; s < num_states; ++s) sum += std::exp(lses[size_t(s * rows + r)] - m);
    for (int s = 0; s < num_states; ++s) {
      const double w = std::exp(lses[size_t(s * rows + r)] - m) / sum;
      if (w == 0.0) continue;  // an empty state contributes nothing, whatever its output holds
      for (int c = 0; c < d_v; ++c) (*out)[size_t(r * d_v + c)] += w * outs[size_t((s * rows + r) * d_v + c)];
    }
    (*lse)[size_t(r)] = m + std::log(sum);
  }
}

Budget ErrorBudget(const std::vector<double>& ref, const std::vector<double>& naive) {
  Budget b;
  double max_ref = 1.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(ref[i])) continue;  // -inf lse entries are compared exactly elsewhere
    if (!std::isfinite(naive[i]))  // an overflowing yardstick would allow any error: refuse it
      throw std::runtime_error("reference: the naive yardstick is not finite at entry " + std::to_string(i) +
                               "; choose inputs within the dtype's range");
    max_ref = std::max(max_ref, std::fabs(ref[i]));
    b.naive_err = std::max(b.naive_err, std::fabs(naive[i] - ref[i]));
  }
  b.eps = kBudgetEps * max_ref;
  return b;
}

}  // namespace qattn::ref
