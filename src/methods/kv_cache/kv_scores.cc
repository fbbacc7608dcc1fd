// Scorers of the decode-time KV methods and the shared keep-top-k (docs/specs/kv_cache.md, part C).
// Dots run in f32 with fixed partial sums (vectorisable, deterministic); sums of probabilities and
// means run in f64, where that costs little next to the dots.
#include "methods/kv_cache/kv_scores.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

#include "core/thread_pool.h"

namespace qattn::kv {
namespace {

[[noreturn]] void Fail(const std::string& what) { throw std::invalid_argument("kv scores: " + what); }

// Indices are int32 in every selection; longer caches would need a wider type.
void CheckIndexRange(int64_t n) {
  if (n < 0 || n > std::numeric_limits<int32_t>::max()) Fail("token count out of the int32 index range");
}

// Eight independent partial sums let the compiler vectorise without reassociating a single chain.
float Dot(const float* a, const float* b, int d) {
  float part[8] = {};
  int c = 0;
  for (; c + 8 <= d; c += 8)
    for (int lane = 0; lane < 8; ++lane) part[lane] += a[c + lane] * b[c + lane];
  float tail = 0;
  for (; c < d; ++c) tail += a[c] * b[c];
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7])) + tail;
}

// Runs fn(i) for i in [0, count), on the pool when there is one.
void ForEach(int64_t count, ThreadPool* pool, const std::function<void(int64_t)>& fn) {
  if (pool != nullptr && count > 1) {
    pool->ParallelFor(count, [&](int64_t i, int) { fn(i); });
    return;
  }
  for (int64_t i = 0; i < count; ++i) fn(i);
}

// Row of key j for KV head g in k [n, H_kv, d].
const float* KeyRow(const float* k, const Heads& heads, int64_t j, int g) {
  return k + (j * heads.kv + g) * heads.dim;
}

// x[0..count) <- softmax(x) in place; the normaliser is summed in f64.
void SoftmaxInPlace(float* x, int64_t count) {
  if (count == 0) return;
  const float top = *std::max_element(x, x + count);
  double total = 0;
  for (int64_t j = 0; j < count; ++j) {
    x[j] = std::exp(x[j] - top);
    total += x[j];
  }
  const double inverse = 1.0 / total;
  for (int64_t j = 0; j < count; ++j) x[j] = static_cast<float>(x[j] * inverse);
}

// NaN ranks as -inf, so the order below is a strict total order and selections are deterministic.
float RankKey(float s) { return std::isnan(s) ? -std::numeric_limits<float>::infinity() : s; }

std::vector<int32_t> Iota(int64_t first, int64_t end) {
  std::vector<int32_t> out;
  out.reserve(std::max<int64_t>(0, end - first));
  for (int64_t i = first; i < end; ++i) out.push_back(static_cast<int32_t>(i));
  return out;
}

// The query heads of KV head g: [g * G, (g + 1) * G).
int FirstHeadOf(const Heads& heads, int g) { return g * heads.Group(); }

// Mean of `rows` rows of x [rows, width], summed in double.
std::vector<float> MeanOfRows(const float* x, int64_t rows, int64_t width) {
  std::vector<double> total(width, 0.0);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < width; ++c) total[c] += x[i * width + c];
  std::vector<float> out(width);
  for (int64_t c = 0; c < width; ++c) out[c] = static_cast<float>(total[c] / rows);
  return out;
}

}  // namespace

void CheckHeads(const Heads& heads) {
  if (heads.q <= 0 || heads.kv <= 0 || heads.dim <= 0) Fail("head counts and head dim must be positive");
  if (heads.q % heads.kv != 0) Fail("H_kv must divide H_q");
}

// ---------------------------------------------------------------------------------------------
// Shared machinery

std::vector<float> Pool1d(std::span<const float> x, int kernel, PoolKind kind) {
  const int64_t n = static_cast<int64_t>(x.size());
  if (kind == PoolKind::kNone || kernel <= 1) return {x.begin(), x.end()};
  const int64_t half = kernel / 2;
  std::vector<float> out(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t lo = std::max<int64_t>(0, i - half), hi = std::min<int64_t>(n, i - half + kernel);
    if (kind == PoolKind::kAvg) {
      double total = 0;  // padded positions add zero but still count in the divisor
      for (int64_t j = lo; j < hi; ++j) total += x[j];
      out[i] = static_cast<float>(total / kernel);
    } else {
      out[i] = *std::max_element(x.begin() + lo, x.begin() + hi);  // window always holds x[i]
    }
  }
  return out;
}

std::vector<int32_t> KeepTopK(std::span<const float> scores, int64_t budget, int64_t keep_first,
                              int64_t keep_last) {
  const int64_t n = static_cast<int64_t>(scores.size());
  CheckIndexRange(n);
  if (budget < 0 || keep_first < 0 || keep_last < 0) Fail("budget and kept ranges must be >= 0");
  if (budget >= n) return Iota(0, n);
  const int64_t first = std::min(keep_first, n);
  const int64_t last = std::min(keep_last, n - first);
  const int64_t picks = std::max<int64_t>(0, budget - first - last);

  // The take-th best key is found on a plain copy of the keys (nth_element over floats, no index
  // indirection: decode-time selection runs this every step over tens of thousands of pages);
  // one pass then takes everything above it and, in index order, as many equal to it as fit.
  const int64_t take = std::min<int64_t>(picks, n - last - first);
  std::vector<int32_t> middle;
  middle.reserve(take);
  if (take > 0) {
    std::vector<float> keys(size_t(n - last - first));  // [middle] rank keys
    for (int64_t i = first; i < n - last; ++i) keys[i - first] = RankKey(scores[i]);
    std::vector<float> order = keys;
    std::nth_element(order.begin(), order.begin() + (take - 1), order.end(), std::greater<float>());
    const float threshold = order[take - 1];
    int64_t above = 0;
    for (float k : keys) above += k > threshold;
    int64_t ties = take - above;  // equal keys to take, lowest indices first
    for (int64_t i = 0; i < int64_t(keys.size()); ++i) {
      if (keys[i] > threshold || (keys[i] == threshold && ties-- > 0)) middle.push_back(int32_t(first + i));
    }
  }

  std::vector<int32_t> kept = Iota(0, first);
  kept.insert(kept.end(), middle.begin(), middle.end());
  std::vector<int32_t> tail = Iota(n - last, n);
  kept.insert(kept.end(), tail.begin(), tail.end());
  std::sort(kept.begin(), kept.end());
  return kept;
}

// ---------------------------------------------------------------------------------------------
// Budgets

std::vector<int64_t> UniformBudget(int num_layers, int64_t average_budget) {
  if (num_layers < 0 || average_budget < 0) Fail("uniform budget needs non-negative layers and budget");
  return std::vector<int64_t>(num_layers, average_budget);
}

std::vector<int64_t> ErrorAwareLayerBudgets(std::span<const double> layer_weights, int64_t average_budget,
                                            int64_t min_budget) {
  const int64_t num_layers = static_cast<int64_t>(layer_weights.size());
  if (min_budget < 0 || average_budget < min_budget) Fail("error-aware budgets need B >= min budget >= 0");
  for (double w : layer_weights)
    if (!std::isfinite(w) || w < 0) Fail("layer weights must be finite and >= 0");
  const int64_t target = num_layers * average_budget;
  const int64_t max_budget = 3 * average_budget;
  const double spread = static_cast<double>(target - min_budget * num_layers);

  std::vector<int64_t> budget(num_layers);
  int64_t total = 0;
  for (int64_t l = 0; l < num_layers; ++l) {
    const int64_t raw = min_budget + std::llround(layer_weights[l] * spread);  // half away from zero
    budget[l] = std::clamp(raw, min_budget, max_budget);
    total += budget[l];
  }
  // Importance order: weight descending, ties to the lower layer.
  std::vector<int64_t> order(num_layers);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return layer_weights[a] > layer_weights[b]; });
  // min_budget * L <= target <= 3B * L, so every round moves at least one token until the sum is met.
  while (total < target)
    for (int64_t l : order)
      if (total < target && budget[l] < max_budget) ++budget[l], ++total;
  while (total > target)
    for (auto it = order.rbegin(); it != order.rend(); ++it)
      if (total > target && budget[*it] > min_budget) --budget[*it], --total;
  return budget;
}

std::vector<int64_t> BudgetsFromScores(const float* scores, int rows, int64_t m, int64_t total) {
  if (rows <= 0 || m < 0 || total < 0) Fail("per-head budgets need rows > 0, m >= 0 and total >= 0");
  const std::span<const float> all(scores, size_t(rows) * size_t(m));
  std::vector<int64_t> counts(rows, 0);
  for (int32_t flat : KeepTopK(all, total)) ++counts[flat / m];  // flat index = row * m + token
  return counts;
}

std::vector<int64_t> SplitEvenly(int64_t total, int parts) {
  if (parts <= 0 || total < 0) Fail("split needs parts > 0 and total >= 0");
  std::vector<int64_t> out(parts, total / parts);
  for (int64_t p = 0; p < total % parts; ++p) ++out[p];
  return out;
}

// ---------------------------------------------------------------------------------------------
// Observation-window attention

std::vector<float> CausalColumnSums(const float* q, const float* k, const Heads& heads, int64_t n, int64_t w,
                                    ThreadPool* pool) {
  CheckHeads(heads);
  CheckIndexRange(n);
  if (w < 0 || w > n) Fail("window must be in [0, n]");
  const float scale = 1.0f / std::sqrt(static_cast<float>(heads.dim));
  std::vector<float> out(static_cast<size_t>(heads.q) * n);
  ForEach(heads.q, pool, [&](int64_t h) {
    const int g = heads.KvOf(static_cast<int>(h));
    std::vector<double> column(n, 0.0);
    std::vector<float> probs(n);
    for (int64_t i = 0; i < w; ++i) {
      const float* query = q + (i * heads.q + h) * heads.dim;
      const int64_t visible = n - w + i + 1;  // causal: window query i sits at position n - w + i
      for (int64_t j = 0; j < visible; ++j) probs[j] = scale * Dot(query, KeyRow(k, heads, j, g), heads.dim);
      SoftmaxInPlace(probs.data(), visible);
      for (int64_t j = 0; j < visible; ++j) column[j] += probs[j];
    }
    float* row = out.data() + h * n;
    for (int64_t j = 0; j < n; ++j) row[j] = static_cast<float>(column[j]);
  });
  return out;
}

std::vector<float> WindowAttentionScores(const float* q, const float* k, const Heads& heads, int64_t n,
                                         int64_t w, ThreadPool* pool) {
  // The window's own columns are computed too: the softmax needs them in the normaliser.
  const std::vector<float> all = CausalColumnSums(q, k, heads, n, w, pool);
  const int64_t m = n - w;
  std::vector<float> out(static_cast<size_t>(heads.q) * m);
  for (int h = 0; h < heads.q; ++h)
    std::copy_n(all.begin() + h * n, m, out.begin() + h * m);
  return out;
}

std::vector<int32_t> KeepPrefixTopAndWindow(std::span<const float> prefix_scores, int64_t n, int64_t w,
                                            int64_t budget) {
  CheckIndexRange(n);
  if (w < 0 || w > n || static_cast<int64_t>(prefix_scores.size()) != n - w)
    Fail("prefix scores must hold n - w values with 0 <= w <= n");
  if (budget >= n) return Iota(0, n);
  // The window always stays (the budget includes it); the prefix gets what is left.
  std::vector<int32_t> kept = KeepTopK(prefix_scores, std::max<int64_t>(0, budget - w));
  std::vector<int32_t> window = Iota(n - w, n);
  kept.insert(kept.end(), window.begin(), window.end());
  return kept;
}

// ---------------------------------------------------------------------------------------------
// SnapKV

std::vector<float> SnapKvScores(const float* window_scores, const Heads& heads, int64_t prefix_len, int kernel,
                                PoolKind kind) {
  CheckHeads(heads);
  if (prefix_len < 0) Fail("prefix length must be >= 0");
  const int group = heads.Group();
  std::vector<float> out(static_cast<size_t>(heads.kv) * prefix_len);
  for (int g = 0; g < heads.kv; ++g) {
    std::vector<double> mean(prefix_len, 0.0);
    for (int h = FirstHeadOf(heads, g); h < FirstHeadOf(heads, g) + group; ++h) {
      const std::vector<float> pooled =
          Pool1d({window_scores + static_cast<int64_t>(h) * prefix_len, static_cast<size_t>(prefix_len)}, kernel, kind);
      for (int64_t j = 0; j < prefix_len; ++j) mean[j] += pooled[j];
    }
    for (int64_t j = 0; j < prefix_len; ++j) out[g * prefix_len + j] = static_cast<float>(mean[j] / group);
  }
  return out;
}

std::vector<std::vector<int32_t>> SnapKvSelect(const float* kv_scores, int num_kv_heads, int64_t n, int64_t w,
                                               int64_t budget) {
  std::vector<std::vector<int32_t>> kept(num_kv_heads);
  const int64_t m = n - w;
  for (int g = 0; g < num_kv_heads; ++g)
    kept[g] = KeepPrefixTopAndWindow({kv_scores + g * m, static_cast<size_t>(m)}, n, w, budget);
  return kept;
}

// ---------------------------------------------------------------------------------------------
// CompressKV

std::vector<float> CompressKvScores(const float* window_scores, const Heads& heads, int64_t prefix_len,
                                    std::span<const int> srh_heads, int kernel, PoolKind kind) {
  CheckHeads(heads);
  if (srh_heads.empty()) Fail("CompressKV needs at least one retrieval head");
  if (prefix_len < 0) Fail("prefix length must be >= 0");
  std::vector<double> mean(prefix_len, 0.0);
  for (int h : srh_heads) {
    if (h < 0 || h >= heads.q) Fail("retrieval head index out of range");
    const std::vector<float> pooled =
        Pool1d({window_scores + static_cast<int64_t>(h) * prefix_len, static_cast<size_t>(prefix_len)}, kernel, kind);
    for (int64_t j = 0; j < prefix_len; ++j) mean[j] += pooled[j];
  }
  std::vector<float> out(prefix_len);
  for (int64_t j = 0; j < prefix_len; ++j) out[j] = static_cast<float>(mean[j] / srh_heads.size());
  return out;
}

void AccumulateNeedleMass(const float* last_probs, int num_q_heads, int64_t n, int64_t needle_begin,
                          int64_t needle_end, bool generated_token_in_needle, std::span<double> head_scores) {
  if (static_cast<int64_t>(head_scores.size()) != num_q_heads) Fail("head scores must hold H_q values");
  if (needle_begin < 0 || needle_begin > needle_end || needle_end > n) Fail("needle span outside the cache");
  if (!generated_token_in_needle) return;  // only steps that copy a needle token count
  for (int h = 0; h < num_q_heads; ++h) {
    double mass = 0;
    for (int64_t t = needle_begin; t < needle_end; ++t) mass += last_probs[h * n + t];
    head_scores[h] += mass;
  }
}

bool TokenInNeedle(int32_t token, std::span<const int32_t> needle_tokens) {
  return std::find(needle_tokens.begin(), needle_tokens.end(), token) != needle_tokens.end();
}

std::vector<int> OrderHeadsByScore(std::span<const double> head_scores) {
  std::vector<int> order(head_scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return head_scores[a] > head_scores[b]; });
  return order;
}

// ---------------------------------------------------------------------------------------------
// H2O

std::vector<float> H2oPrefillScores(const float* q, const float* k, const Heads& heads, int64_t n,
                                    ThreadPool* pool) {
  const std::vector<float> per_query_head = CausalColumnSums(q, k, heads, n, n, pool);
  std::vector<float> out(static_cast<size_t>(heads.kv) * n, 0.0f);
  H2oAccumulateStep(per_query_head.data(), heads, n, out.data(), n);
  return out;
}

void H2oAccumulateStep(const float* probs, const Heads& heads, int64_t n, float* scores, int64_t scores_stride) {
  CheckHeads(heads);
  if (scores_stride < n) Fail("H2O scores row shorter than the cache");
  for (int h = 0; h < heads.q; ++h) {
    float* row = scores + heads.KvOf(h) * scores_stride;
    for (int64_t t = 0; t < n; ++t) row[t] += probs[h * n + t];
  }
}

int64_t H2oEvictIndex(std::span<const float> scores, int64_t recent) {
  const int64_t candidates = static_cast<int64_t>(scores.size()) - std::max<int64_t>(0, recent);
  if (candidates <= 0) return -1;
  int64_t victim = 0;
  for (int64_t t = 1; t < candidates; ++t)
    if (RankKey(scores[t]) < RankKey(scores[victim])) victim = t;  // strict: ties keep the older
  return victim;
}

// ---------------------------------------------------------------------------------------------
// Quest

QuestPages::QuestPages(int num_kv_heads, int dim, int page_size)
    : num_kv_heads_(num_kv_heads), dim_(dim), page_size_(page_size) {
  if (num_kv_heads <= 0 || dim <= 0 || page_size <= 0) Fail("Quest pages need positive heads, dim and page size");
}

QuestPages::QuestPages(const float* k, int64_t n, int num_kv_heads, int dim, int page_size)
    : QuestPages(num_kv_heads, dim, page_size) {
  for (int64_t t = 0; t < n; ++t) Append(k + t * num_kv_heads * dim);
}

void QuestPages::Append(const float* key) {
  const int64_t width = static_cast<int64_t>(num_kv_heads_) * dim_;
  if (num_tokens_ % page_size_ == 0) {  // the first token of a page is its min and max
    min_.insert(min_.end(), key, key + width);
    max_.insert(max_.end(), key, key + width);
  } else {
    float* lo = min_.data() + (num_pages() - 1) * width;
    float* hi = max_.data() + (num_pages() - 1) * width;
    for (int64_t c = 0; c < width; ++c) {
      lo[c] = std::min(lo[c], key[c]);
      hi[c] = std::max(hi[c], key[c]);
    }
  }
  ++num_tokens_;
}

const float* QuestPages::Min(int kv_head, int64_t page) const { return min_.data() + Offset(kv_head, page); }
const float* QuestPages::Max(int kv_head, int64_t page) const { return max_.data() + Offset(kv_head, page); }

float QuestUpperBound(const float* q, const float* page_min, const float* page_max, int dim) {
  // Per channel, q_i * k_i over k_i in [m_i, M_i] is largest at an end: which end depends on q_i's sign.
  double bound = 0;
  for (int i = 0; i < dim; ++i)
    bound += std::max(static_cast<double>(q[i]) * page_max[i], static_cast<double>(q[i]) * page_min[i]);
  return static_cast<float>(bound);
}

std::vector<float> QuestPageScores(const float* q, const Heads& heads, const QuestPages& pages) {
  CheckHeads(heads);
  const int64_t num_pages = pages.num_pages();
  std::vector<float> out(static_cast<size_t>(heads.kv) * num_pages, -std::numeric_limits<float>::infinity());
  for (int h = 0; h < heads.q; ++h) {
    const int g = heads.KvOf(h);
    for (int64_t p = 0; p < num_pages; ++p) {
      const float bound = QuestUpperBound(q + h * heads.dim, pages.Min(g, p), pages.Max(g, p), heads.dim);
      out[g * num_pages + p] = std::max(out[g * num_pages + p], bound);
    }
  }
  return out;
}

std::vector<int32_t> QuestSelectPages(std::span<const float> page_scores, int64_t budget_tokens, int page_size) {
  if (page_size <= 0 || budget_tokens < 0) Fail("Quest selection needs page size > 0 and budget >= 0");
  const int64_t pages = std::max<int64_t>(1, budget_tokens / page_size);
  return KeepTopK(page_scores, pages, 0, 1);  // the current page holds the newest tokens: always kept
}

// ---------------------------------------------------------------------------------------------
// TokenSelect

std::vector<float> QueryFingerprint(const float* q, int64_t m, const Heads& heads) {
  CheckHeads(heads);
  if (m <= 0) Fail("fingerprint needs at least one query");
  return MeanOfRows(q, m, static_cast<int64_t>(heads.q) * heads.dim);
}

std::vector<float> TokenSelectCriticality(const float* fingerprint, const float* k, const Heads& heads,
                                          int64_t begin, int64_t end, bool scale_by_rsqrt_d, ThreadPool* pool) {
  CheckHeads(heads);
  if (begin < 0 || end < begin) Fail("candidate range must satisfy 0 <= begin <= end");
  CheckIndexRange(end);
  const int64_t count = end - begin;
  const float scale = scale_by_rsqrt_d ? 1.0f / std::sqrt(static_cast<float>(heads.dim)) : 1.0f;
  std::vector<float> votes(static_cast<size_t>(heads.q) * count);  // [H_q, count]: each head's soft vote
  ForEach(heads.q, pool, [&](int64_t h) {
    const int g = heads.KvOf(static_cast<int>(h));
    float* row = votes.data() + h * count;
    for (int64_t t = 0; t < count; ++t)
      row[t] = scale * Dot(fingerprint + h * heads.dim, KeyRow(k, heads, begin + t, g), heads.dim);
    SoftmaxInPlace(row, count);
  });
  std::vector<float> out(count);
  for (int64_t t = 0; t < count; ++t) {
    double total = 0;  // fixed head order: the same result with or without threads
    for (int h = 0; h < heads.q; ++h) total += votes[h * count + t];
    out[t] = static_cast<float>(total);
  }
  return out;
}

std::vector<int32_t> TokenSelectKeep(std::span<const float> criticality, int64_t num_tokens, int64_t n_init,
                                     int64_t n_local, int64_t top_k) {
  CheckIndexRange(num_tokens);
  if (n_init < 0 || n_local < 0 || top_k < 0) Fail("TokenSelect sizes must be >= 0");
  if (n_init + top_k + n_local >= num_tokens) return Iota(0, num_tokens);
  const int64_t candidates = num_tokens - n_init - n_local;
  if (static_cast<int64_t>(criticality.size()) != candidates) Fail("criticality must cover [n_init, T - n_local)");
  std::vector<int32_t> kept = Iota(0, n_init);
  for (int32_t c : KeepTopK(criticality, top_k)) kept.push_back(static_cast<int32_t>(c + n_init));
  std::vector<int32_t> local = Iota(num_tokens - n_local, num_tokens);
  kept.insert(kept.end(), local.begin(), local.end());
  return kept;
}

double CosineSimilarity(std::span<const float> a, std::span<const float> b) {
  if (a.size() != b.size()) Fail("cosine of vectors of different lengths");
  // Identical vectors are exactly 1 (the formula can round below it, and theta 1 must reuse them).
  if (std::equal(a.begin(), a.end(), b.begin())) return 1.0;
  double dot = 0, norm_a = 0, norm_b = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += static_cast<double>(a[i]) * b[i];
    norm_a += static_cast<double>(a[i]) * a[i];
    norm_b += static_cast<double>(b[i]) * b[i];
  }
  if (norm_a == 0 || norm_b == 0) return 0.0;  // a zero vector has no direction
  return std::clamp(dot / std::sqrt(norm_a * norm_b), -1.0, 1.0);
}

const std::vector<int32_t>* SelectionCache::Find(std::span<const float> fingerprint) const {
  if (!filled_ || fingerprint.size() != fingerprint_.size()) return nullptr;
  return CosineSimilarity(fingerprint, fingerprint_) >= theta_ ? &indices_ : nullptr;
}

void SelectionCache::Store(std::span<const float> fingerprint, std::vector<int32_t> indices) {
  fingerprint_.assign(fingerprint.begin(), fingerprint.end());
  indices_ = std::move(indices);
  filled_ = true;
}

void SelectionCache::Clear() {
  filled_ = false;
  fingerprint_.clear();
  indices_.clear();
}

// ---------------------------------------------------------------------------------------------
// PromptDistill

std::vector<float> PromptDistillScores(const float* q_last, const float* k, const Heads& heads, int64_t n,
                                       bool summed_softmax, ThreadPool* pool) {
  CheckHeads(heads);
  CheckIndexRange(n);
  const float scale = 1.0f / std::sqrt(static_cast<float>(heads.dim));
  std::vector<float> per_head(static_cast<size_t>(heads.q) * n);  // [H_q, n]
  ForEach(heads.q, pool, [&](int64_t h) {
    const int g = heads.KvOf(static_cast<int>(h));
    float* row = per_head.data() + h * n;
    for (int64_t t = 0; t < n; ++t) row[t] = Dot(q_last + h * heads.dim, KeyRow(k, heads, t, g), heads.dim);
    if (summed_softmax) {
      for (int64_t t = 0; t < n; ++t) row[t] *= scale;
      SoftmaxInPlace(row, n);
    }
  });
  std::vector<float> out(n);
  for (int64_t t = 0; t < n; ++t) {
    double total = 0;
    for (int h = 0; h < heads.q; ++h) total += per_head[h * n + t];
    out[t] = static_cast<float>(total);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// StreamingLLM

std::vector<int32_t> StreamingLlmKeep(int64_t num_tokens, int64_t sinks, int64_t window) {
  CheckIndexRange(num_tokens);
  if (sinks < 0 || window < 0) Fail("StreamingLLM sizes must be >= 0");
  if (sinks + window >= num_tokens) return Iota(0, num_tokens);
  std::vector<int32_t> kept = Iota(0, sinks);
  std::vector<int32_t> recent = Iota(num_tokens - window, num_tokens);
  kept.insert(kept.end(), recent.begin(), recent.end());
  return kept;
}

// ---------------------------------------------------------------------------------------------
// ReKV

std::vector<float> RekvBlockRepresentative(const float* k, int64_t block_len, int num_kv_heads, int dim) {
  if (block_len <= 0 || num_kv_heads <= 0 || dim <= 0) Fail("ReKV block needs tokens, heads and dim");
  return MeanOfRows(k, block_len, static_cast<int64_t>(num_kv_heads) * dim);
}

std::vector<float> RekvQueryVector(const float* q, int64_t m, const Heads& heads) {
  CheckHeads(heads);
  if (m <= 0) Fail("ReKV query needs at least one question token");
  std::vector<double> total(static_cast<size_t>(heads.kv) * heads.dim, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int h = 0; h < heads.q; ++h) {
      const float* query = q + (i * heads.q + h) * heads.dim;
      double* slot = total.data() + static_cast<int64_t>(heads.KvOf(h)) * heads.dim;
      for (int c = 0; c < heads.dim; ++c) slot[c] += query[c];
    }
  const double count = static_cast<double>(m) * heads.Group();
  std::vector<float> out(total.size());
  for (size_t c = 0; c < total.size(); ++c) out[c] = static_cast<float>(total[c] / count);
  return out;
}

std::vector<float> RekvSimilarities(const float* query, const float* representatives, int64_t num_blocks,
                                    int64_t width) {
  std::vector<float> out(num_blocks);
  for (int64_t b = 0; b < num_blocks; ++b)
    out[b] = Dot(query, representatives + b * width, static_cast<int>(width));
  return out;
}

std::vector<int32_t> RekvSelectBlocks(std::span<const float> similarities, int64_t top_k, int64_t chunk_size) {
  const int64_t num_blocks = static_cast<int64_t>(similarities.size());
  CheckIndexRange(num_blocks);
  if (top_k < 0 || chunk_size < 1) Fail("ReKV selection needs top_k >= 0 and chunk size >= 1");
  if (top_k >= num_blocks) return Iota(0, num_blocks);
  if (chunk_size == 1) return KeepTopK(similarities, top_k);
  const int64_t num_chunks = (num_blocks + chunk_size - 1) / chunk_size;
  std::vector<float> chunk_mean(num_chunks);
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t lo = c * chunk_size, hi = std::min(num_blocks, lo + chunk_size);
    double total = 0;
    for (int64_t b = lo; b < hi; ++b) total += similarities[b];
    chunk_mean[c] = static_cast<float>(total / (hi - lo));
  }
  std::vector<int32_t> blocks;
  for (int32_t c : KeepTopK(chunk_mean, std::max<int64_t>(1, top_k / chunk_size))) {
    std::vector<int32_t> members = Iota(c * chunk_size, std::min(num_blocks, (c + 1) * chunk_size));
    blocks.insert(blocks.end(), members.begin(), members.end());
  }
  return blocks;
}

}  // namespace qattn::kv
