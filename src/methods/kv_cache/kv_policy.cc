#include "methods/kv_cache/kv_policy.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <stdexcept>

#include "core/aligned_buffer.h"
#include "kernels/tile_ops.h"
#include "methods/kv_cache/kv_policy_internal.h"
#include "methods/kv_cache/quest_index.h"
#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::kv {

using sparse::MethodOptions;

void AllRuns(const LayerRef& at, std::vector<int64_t>* offsets, std::vector<KvRun>* runs) {
  offsets->assign(1, int64_t(runs->size()));
  for (int h = 0; h < at.heads.kv; ++h) {
    at.cache->AppendRuns(at.seq, at.layer, h, runs);
    offsets->push_back(int64_t(runs->size()));
  }
}

std::vector<float> ReadKeys(const LayerRef& at) {
  const int64_t n = at.cache->length(at.seq, at.layer, 0);
  const int d = at.heads.dim;
  std::vector<float> keys(size_t(n) * at.heads.kv * d);  // [n, H_kv, d]
  std::vector<float> head(size_t(n) * d);                // [n, d]
  for (int h = 0; h < at.heads.kv; ++h) {
    if (at.cache->length(at.seq, at.layer, h) != n) throw std::logic_error("KV heads of a layer differ in length");
    at.cache->Read(at.seq, at.layer, h, 0, n, head.data(), nullptr);
    for (int64_t t = 0; t < n; ++t) std::memcpy(&keys[(t * at.heads.kv + h) * d], &head[t * d], size_t(d) * 4);
  }
  return keys;
}

namespace {

// A token budget: `budget` tokens, or `frac` of the tokens present when it is applied.
struct Budget {
  int64_t tokens = 0;
  double frac = 0.0;
  static Budget Read(MethodOptions& o, int64_t fallback) {
    Budget b;
    b.frac = o.Float("frac", 0.0);
    b.tokens = o.Int("budget", fallback);
    if (b.frac < 0 || b.frac > 1) throw std::invalid_argument("frac must be in (0, 1]");
    if (b.tokens < 1) throw std::invalid_argument("budget must be at least 1 token");
    return b;
  }
  int64_t For(int64_t n) const { return frac > 0 ? std::max<int64_t>(1, int64_t(std::ceil(frac * n))) : tokens; }
  std::string Spec() const {
    return frac > 0 ? "frac=" + std::to_string(frac).substr(0, 6) : "budget=" + std::to_string(tokens);
  }
};

PoolKind ParsePool(const std::string& s) {
  if (s == "max") return PoolKind::kMax;
  if (s == "avg") return PoolKind::kAvg;
  if (s == "none") return PoolKind::kNone;
  throw std::invalid_argument("pool must be max, avg or none; got '" + s + "'");
}

void KeepSame(const LayerRef& at, const std::vector<int32_t>& keep) {
  for (int h = 0; h < at.heads.kv; ++h) at.cache->Keep(at.seq, at.layer, h, keep);
}

// The last w rows of q [n, H_q, d] (row stride q_stride) as a dense [w, H_q, d] copy.
std::vector<float> LastRows(const float* q, int64_t q_stride, int64_t n, int64_t w, const Heads& heads) {
  const int64_t width = int64_t(heads.q) * heads.dim;
  std::vector<float> out(size_t(w * width));  // [w, H_q, d]
  for (int64_t i = 0; i < w; ++i) std::memcpy(&out[i * width], q + (n - w + i) * q_stride, size_t(width) * 4);
  return out;
}

// ---- StreamingLLM: the first `sinks` tokens and the last `window` ----
class StreamingLlm final : public KvPolicy {
 public:
  explicit StreamingLlm(MethodOptions& o) : sinks_(o.Int("sinks", 4)), window_(o.Int("window", 0)) {
    const Budget b = Budget::Read(o, 256);
    if (window_ <= 0) window_ = std::max<int64_t>(1, b.tokens - sinks_);
    if (sinks_ < 0) throw std::invalid_argument("sinks must be >= 0");
  }
  std::string name() const override {
    return "streamingllm:sinks=" + std::to_string(sinks_) + ",window=" + std::to_string(window_);
  }
  void AfterPrompt(const LayerRef& at, const float*, int64_t, int64_t, ThreadPool*) override { Evict(at); }
  void SelectForDecode(const LayerRef& at, const float*, std::vector<int64_t>* offsets, std::vector<KvRun>* runs,
                       ThreadPool*) override {
    Evict(at);
    AllRuns(at, offsets, runs);
  }

 private:
  void Evict(const LayerRef& at) {
    const int64_t n = at.cache->length(at.seq, at.layer, 0);
    if (n > sinks_ + window_) KeepSame(at, StreamingLlmKeep(n, sinks_, window_));
  }
  int64_t sinks_, window_;
};

// ---- SnapKV: observation-window scores, pooled, per KV head, once after the prompt ----
class SnapKv final : public KvPolicy {
 public:
  explicit SnapKv(MethodOptions& o)
      : budget_(Budget::Read(o, 1024)), window_(o.Int("window", 32)), kernel_(int(o.Int("kernel", 7))),
        pool_name_(o.String("pool", "max")), pool_(ParsePool(pool_name_)) {}
  std::string name() const override {
    return "snapkv:" + budget_.Spec() + ",window=" + std::to_string(window_) + ",kernel=" + std::to_string(kernel_) +
           ",pool=" + pool_name_;
  }
  void AfterPrompt(const LayerRef& at, const float* q, int64_t q_stride, int64_t n, ThreadPool* pool) override {
    const int64_t budget = budget_.For(n), w = std::min(window_, n);
    if (budget >= n) return;
    const std::vector<float> qw = LastRows(q, q_stride, n, w, at.heads);
    const std::vector<float> keys = ReadKeys(at);
    const std::vector<float> window = WindowAttentionScores(qw.data(), keys.data(), at.heads, n, w, pool);
    const std::vector<float> scores = SnapKvScores(window.data(), at.heads, n - w, kernel_, pool_);
    const auto keep = SnapKvSelect(scores.data(), at.heads.kv, n, w, budget);
    for (int h = 0; h < at.heads.kv; ++h) at.cache->Keep(at.seq, at.layer, h, keep[h]);
  }
  void SelectForDecode(const LayerRef& at, const float*, std::vector<int64_t>* offsets, std::vector<KvRun>* runs,
                       ThreadPool*) override {
    AllRuns(at, offsets, runs);
  }

 private:
  Budget budget_;
  int64_t window_;
  int kernel_;
  std::string pool_name_;
  PoolKind pool_;
};

// ---- CompressKV: SnapKV-style scores from the layer's semantic retrieval heads only, one index
// set shared by all KV heads, optional error-aware layer budgets ----
class CompressKv final : public KvPolicy {
 public:
  explicit CompressKv(MethodOptions& o)
      : budget_(Budget::Read(o, 1024)), window_(o.Int("window", 8)), kernel_(int(o.Int("kernel", 5))),
        first_k_(int(o.Int("first_k", 4))), pool_name_(o.String("pool", "avg")), pool_(ParsePool(pool_name_)),
        heads_spec_(o.String("heads", "")), weights_spec_(o.String("layer_weights", "")) {
    if (first_k_ < 1) throw std::invalid_argument("first_k must be at least 1");
    head_order_ = ParseLists(heads_spec_);
    const auto weights = ParseLists(weights_spec_);  // "w0/w1/..." one weight per layer
    if (weights.size() > 1) throw std::invalid_argument("layer_weights is one list: w0/w1/...");
    if (!weights.empty()) layer_weights_ = weights[0];
  }
  std::string name() const override {
    std::string s = "compresskv:" + budget_.Spec() + ",window=" + std::to_string(window_) +
                    ",kernel=" + std::to_string(kernel_) + ",first_k=" + std::to_string(first_k_) + ",pool=" + pool_name_;
    if (!heads_spec_.empty()) s += ",heads=" + heads_spec_;
    if (!weights_spec_.empty()) s += ",layer_weights=" + weights_spec_;
    return s;
  }
  void AfterPrompt(const LayerRef& at, const float* q, int64_t q_stride, int64_t n, ThreadPool* pool) override {
    const int64_t budget = LayerBudget(at, n), w = std::min(window_, n);
    if (budget >= n) return;
    const std::vector<float> qw = LastRows(q, q_stride, n, w, at.heads);
    const std::vector<float> keys = ReadKeys(at);
    const std::vector<float> window = WindowAttentionScores(qw.data(), keys.data(), at.heads, n, w, pool);
    const std::vector<int> srh = RetrievalHeads(at, window, n - w);
    const std::vector<float> scores = CompressKvScores(window.data(), at.heads, n - w, srh, kernel_, pool_);
    KeepSame(at, KeepPrefixTopAndWindow(scores, n, w, budget));
  }
  void SelectForDecode(const LayerRef& at, const float*, std::vector<int64_t>* offsets, std::vector<KvRun>* runs,
                       ThreadPool*) override {
    AllRuns(at, offsets, runs);
  }

 private:
  // "a/b/c;d/e" -> {{a,b,c},{d,e}}: per layer lists (head order, or one weight per layer).
  static std::vector<std::vector<double>> ParseLists(const std::string& s) {
    std::vector<std::vector<double>> lists;
    if (s.empty()) return lists;
    lists.emplace_back();
    std::string item;
    for (size_t i = 0; i <= s.size(); ++i) {
      if (i == s.size() || s[i] == '/' || s[i] == ';') {
        if (item.empty()) throw std::invalid_argument("empty entry in '" + s + "'");
        lists.back().push_back(std::stod(item));
        item.clear();
        if (i < s.size() && s[i] == ';') lists.emplace_back();
      } else {
        item += s[i];
      }
    }
    return lists;
  }
  int64_t LayerBudget(const LayerRef& at, int64_t n) const {
    const int64_t average = budget_.For(n);
    const int layers = at.cache->config().n_layer;
    if (layer_weights_.empty()) return average;
    if (int(layer_weights_.size()) != layers) {
      throw std::invalid_argument("layer_weights has " + std::to_string(layer_weights_.size()) + " entries for " +
                                  std::to_string(layers) + " layers");
    }
    return ErrorAwareLayerBudgets(layer_weights_, average, std::min<int64_t>(32, average))[at.layer];
  }
  // The layer's first_k retrieval heads: from `heads` (offline needle runs), or else the heads
  // whose pooled window attention is most concentrated (a proxy: retrieval heads put their mass on
  // few prefix tokens), best first.
  std::vector<int> RetrievalHeads(const LayerRef& at, const std::vector<float>& window, int64_t m) const {
    std::vector<int> order;
    if (!head_order_.empty()) {
      const auto& list = head_order_[std::min<size_t>(at.layer, head_order_.size() - 1)];
      for (double h : list) order.push_back(int(h));
    } else {
      std::vector<double> peak(at.heads.q, 0.0);  // [H_q]
      for (int h = 0; h < at.heads.q; ++h) {
        for (int64_t j = 0; j < m; ++j) peak[h] = std::max<double>(peak[h], window[h * m + j]);
      }
      order = OrderHeadsByScore(peak);
    }
    order.resize(std::min<size_t>(order.size(), size_t(first_k_)));
    for (int h : order) {
      if (h < 0 || h >= at.heads.q) throw std::invalid_argument("heads lists query head " + std::to_string(h));
    }
    return order;
  }
  Budget budget_;
  int64_t window_;
  int kernel_, first_k_;
  std::string pool_name_;
  PoolKind pool_;
  std::string heads_spec_, weights_spec_;
  std::vector<std::vector<double>> head_order_;
  std::vector<double> layer_weights_;
};

}  // namespace

void QueryLogitsInto(const LayerRef& at, const float* q, int64_t n, std::vector<float>* out, ThreadPool* pool) {
  out->resize(size_t(at.heads.q) * n);  // [H_q, n]
  const int g = at.heads.Group();
  auto head = [&](int64_t kh, int) {
    std::vector<KvRun> runs;
    at.cache->AppendRuns(at.seq, at.layer, int(kh), &runs);
    int64_t t0 = 0;
    for (const KvRun& r : runs) {
      KvDotRun(at.cache->config().dtype, q + kh * g * at.heads.dim, g, at.heads.dim, r,
               out->data() + size_t(kh) * g * n + t0, n);
      t0 += r.tokens;
    }
  };
  if (pool) pool->ParallelFor(at.heads.kv, head);  // each KV head's keys are one stream
  else for (int kh = 0; kh < at.heads.kv; ++kh) head(kh, 0);
}

std::vector<float> QueryLogits(const LayerRef& at, const float* q, int64_t n) {
  std::vector<float> logits;
  QueryLogitsInto(at, q, n, &logits, nullptr);
  return logits;
}

// Row softmax on the core's vectorised exp, in place: row h of x [rows, stride] holds m logits
// then padding up to stride (a multiple of 16; the caller fills it with -inf); on return the row
// holds the probabilities softmax_i(scale * x[h, i]).
void SoftmaxRowsInPlace(float* x, int rows, int64_t m, int64_t stride, float scale) {
  std::vector<float> mx(rows, -INFINITY), l(rows, 0.0f), alpha(rows);  // [rows] each
  tile::SoftmaxStep step;
  step.s = x;
  step.rows = rows;
  step.cols = int(stride);
  step.s_stride = int(stride);
  step.scale = scale;
  step.m = mx.data();
  step.l = l.data();
  step.alpha = alpha.data();
  tile::SoftmaxUpdate(step);  // x = exp(scale * x - max), l = row sums
  for (int h = 0; h < rows; ++h) {
    const float inv = l[h] > 0 ? 1.0f / l[h] : 0.0f;
    float* row = x + size_t(h) * stride;
    for (int64_t i = 0; i < m; ++i) row[i] *= inv;
  }
}

namespace {

// ---- H2O: accumulated attention (heavy hitters) + recent tokens, per KV head ----
class H2o final : public KvPolicy {
 public:
  explicit H2o(MethodOptions& o) : budget_(Budget::Read(o, 1024)), recent_frac_(o.Float("recent", 0.5)) {
    if (recent_frac_ < 0 || recent_frac_ > 1) throw std::invalid_argument("recent must be a fraction in [0, 1]");
  }
  std::string name() const override {
    return "h2o:" + budget_.Spec() + ",recent=" + std::to_string(recent_frac_).substr(0, 4);
  }
  void Reset() override { scores_.clear(); budgets_.clear(); }
  void AfterPrompt(const LayerRef& at, const float* q, int64_t q_stride, int64_t n, ThreadPool* pool) override {
    const std::vector<float> qa = LastRows(q, q_stride, n, n, at.heads);
    const std::vector<float> keys = ReadKeys(at);
    const std::vector<float> s = H2oPrefillScores(qa.data(), keys.data(), at.heads, n, pool);  // [H_kv, n]
    auto& rows = scores_[at.layer];
    rows.assign(at.heads.kv, {});
    budgets_[at.layer] = budget_.For(n);
    for (int h = 0; h < at.heads.kv; ++h) {
      rows[h].assign(s.begin() + int64_t(h) * n, s.begin() + int64_t(h + 1) * n);
      const int64_t budget = budgets_[at.layer];
      if (budget < n) Keep(at, h, KeepTopK(rows[h], budget, 0, Recent(budget)));
    }
  }
  void SelectForDecode(const LayerRef& at, const float* q, std::vector<int64_t>* offsets, std::vector<KvRun>* runs,
                       ThreadPool*) override {
    auto& rows = scores_[at.layer];
    if (rows.empty()) rows.assign(at.heads.kv, {});
    const int64_t n = at.cache->length(at.seq, at.layer, 0);
    if (!budgets_.count(at.layer)) budgets_[at.layer] = budget_.For(n);
    const int64_t stride = (n + 15) / 16 * 16;
    QueryLogitsInto(at, q, n, &logits_, nullptr);  // [H_q, n]
    probs_.assign(size_t(at.heads.q) * stride, -INFINITY);  // [H_q, stride]
    for (int h = 0; h < at.heads.q; ++h) std::copy_n(&logits_[size_t(h) * n], n, &probs_[size_t(h) * stride]);
    SoftmaxRowsInPlace(probs_.data(), at.heads.q, n, stride, 1.0f / std::sqrt(float(at.heads.dim)));
    for (int kh = 0; kh < at.heads.kv; ++kh) rows[kh].resize(n, 0.0f);  // the new token starts at 0
    std::vector<float> flat(size_t(at.heads.kv) * n);  // [H_kv, n]
    for (int kh = 0; kh < at.heads.kv; ++kh) std::copy(rows[kh].begin(), rows[kh].end(), flat.begin() + kh * n);
    std::vector<float> probs(size_t(at.heads.q) * n);  // [H_q, n]
    for (int h = 0; h < at.heads.q; ++h) std::copy_n(&probs_[size_t(h) * stride], n, &probs[size_t(h) * n]);
    H2oAccumulateStep(probs.data(), at.heads, n, flat.data(), n);  // accumulate before evicting
    const int64_t budget = budgets_[at.layer];
    for (int kh = 0; kh < at.heads.kv; ++kh) {
      rows[kh].assign(flat.begin() + kh * n, flat.begin() + (kh + 1) * n);
      if (n <= budget) continue;
      const int64_t evict = H2oEvictIndex(rows[kh], Recent(budget));
      if (evict < 0) continue;
      std::vector<int32_t> keep;
      for (int64_t t = 0; t < n; ++t) {
        if (t != evict) keep.push_back(int32_t(t));
      }
      Keep(at, kh, keep);
    }
    AllRuns(at, offsets, runs);
  }

 private:
  int64_t Recent(int64_t budget) const { return int64_t(std::llround(recent_frac_ * budget)); }
  void Keep(const LayerRef& at, int h, const std::vector<int32_t>& keep) {
    at.cache->Keep(at.seq, at.layer, h, keep);
    std::vector<float>& row = scores_[at.layer][h];
    std::vector<float> kept(keep.size());
    for (size_t i = 0; i < keep.size(); ++i) kept[i] = row[keep[i]];
    row = std::move(kept);
  }
  Budget budget_;
  double recent_frac_;
  std::map<int, std::vector<std::vector<float>>> scores_;  // layer -> [H_kv][kept] accumulated attention
  std::map<int, int64_t> budgets_;                         // layer -> tokens
  std::vector<float> logits_, probs_;                      // [H_q, n], [H_q, stride] this step's
};

// Runs covering the given sorted 16-token pages of one head (adjacent pages merged).
void PageRuns(const LayerRef& at, int head, const std::vector<int32_t>& pages, int page, std::vector<KvRun>* runs) {
  const int64_t n = at.cache->length(at.seq, at.layer, head);
  for (size_t i = 0; i < pages.size();) {
    size_t j = i + 1;
    while (j < pages.size() && pages[j] == pages[j - 1] + 1) ++j;
    const int64_t first = int64_t(pages[i]) * page, end = std::min<int64_t>(n, int64_t(pages[j - 1] + 1) * page);
    at.cache->AppendRunsRange(at.seq, at.layer, head, first, end - first, runs);
    i = j;
  }
}

// ---- Quest: per-page key bounds, query-aware page selection at read time, no eviction ----
class Quest final : public KvPolicy {
 public:
  explicit Quest(MethodOptions& o)
      : budget_(Budget::Read(o, 4096)), page_(int(o.Int("page", 16))), skip_layers_(int(o.Int("skip_layers", 2))) {
    if (page_ < kKvTileTokens || page_ % kKvTileTokens) throw std::invalid_argument("page must be a multiple of 16");
  }
  std::string name() const override {
    return "quest:" + budget_.Spec() + ",page=" + std::to_string(page_) + ",skip_layers=" + std::to_string(skip_layers_);
  }
  void Reset() override { index_.clear(); }
  void SelectForDecode(const LayerRef& at, const float* q, std::vector<int64_t>* offsets, std::vector<KvRun>* runs,
                       ThreadPool* pool) override {
    const int64_t n = at.cache->length(at.seq, at.layer, 0);
    const int64_t budget = budget_.For(n);
    if (at.layer < skip_layers_ || budget >= n) {
      AllRuns(at, offsets, runs);
      return;
    }
    const QuestIndex& index = Update(at, n);
    const int64_t stride = index.ScoresInto(q, at.heads, pool, &scores_);  // [H_kv, stride]
    const int64_t num_pages = index.num_pages();
    std::vector<std::vector<int32_t>> pages(at.heads.kv);  // [H_kv] chosen pages
    auto select = [&](int64_t h, int) {
      const std::span<const float> row(&scores_[size_t(h) * stride], size_t(num_pages));
      pages[h] = QuestSelectPages(row, budget, page_);
    };
    if (pool) pool->ParallelFor(at.heads.kv, select);
    else for (int h = 0; h < at.heads.kv; ++h) select(h, 0);
    offsets->assign(1, int64_t(runs->size()));
    for (int h = 0; h < at.heads.kv; ++h) {
      PageRuns(at, h, pages[h], page_, runs);
      offsets->push_back(int64_t(runs->size()));
    }
  }

 private:
  // Brings the layer's page bounds up to the cache's n tokens (built once, then one token a step).
  const QuestIndex& Update(const LayerRef& at, int64_t n) {
    auto it = index_.find(at.layer);
    if (it == index_.end() || it->second.num_tokens() > n) {
      it = index_.insert_or_assign(at.layer, QuestIndex(at.heads.kv, at.heads.dim, page_)).first;
    }
    const int64_t first = it->second.num_tokens(), m = n - first;
    if (m == 0) return it->second;
    const int d = at.heads.dim;
    std::vector<float> keys(size_t(m) * at.heads.kv * d), head(size_t(m) * d);  // [m, H_kv, d], [m, d]
    for (int h = 0; h < at.heads.kv; ++h) {
      at.cache->Read(at.seq, at.layer, h, first, m, head.data(), nullptr);
      for (int64_t t = 0; t < m; ++t) std::memcpy(&keys[(t * at.heads.kv + h) * d], &head[t * d], size_t(d) * 4);
    }
    it->second.Append(keys.data(), m);
    return it->second;
  }
  Budget budget_;
  int page_, skip_layers_;
  std::map<int, QuestIndex> index_;  // layer -> bounds of every page
  std::vector<float> scores_;        // [H_kv, stride] page scores of the current step (reused)
};

// Scratch tiles holding gathered tokens of each KV head (for token-level selection).
class GatherBuffer {
 public:
  // Copies tokens `indices` of one head into scratch and returns one run over them.
  KvRun Gather(const LayerRef& at, int head, const std::vector<int32_t>& indices) {
    const PagedKvCache& c = *at.cache;
    const int64_t tiles = (int64_t(indices.size()) + kKvTileTokens - 1) / kKvTileTokens;
    Slot& s = slots_[head];
    const size_t k_bytes = size_t(tiles * c.tile_k_bytes()), v_bytes = size_t(tiles * c.tile_v_bytes());
    if (s.k.size() < k_bytes) s.k = AlignedBuffer(k_bytes);  // [tiles] K tiles
    if (s.v.size() < v_bytes) s.v = AlignedBuffer(v_bytes);  // [tiles] V tiles
    s.positions.resize(indices.size());
    const std::vector<int32_t>& pos = c.positions(at.seq, at.layer, head);
    std::vector<KvRun> src;
    c.AppendRuns(at.seq, at.layer, head, &src);
    const int64_t page = c.config().page_tokens;
    for (size_t i = 0; i < indices.size(); ++i) {
      const KvRun& r = src[indices[i] / page];
      const int64_t in_run = indices[i] % page, tile = in_run / kKvTileTokens;
      for (int value = 0; value < 2; ++value) {
        const int64_t tb = value ? c.tile_v_bytes() : c.tile_k_bytes();
        const auto* from = static_cast<const uint8_t*>(value ? r.v : r.k) + tile * tb;
        uint8_t* to = (value ? s.v : s.k).as<uint8_t>() + (i / kKvTileTokens) * tb;
        CopyKvToken(c.config().dtype, value, c.config().head_dim, from, int(in_run % kKvTileTokens), to,
                    int(i % kKvTileTokens));
      }
      s.positions[i] = pos[indices[i]];
    }
    KvRun run;
    run.k = s.k.data();
    run.v = s.v.data();
    run.tokens = int32_t(indices.size());
    run.position = s.positions.empty() ? 0 : s.positions[0];
    run.positions = s.positions.data();
    return run;
  }

 private:
  struct Slot {
    AlignedBuffer k, v;
    std::vector<int32_t> positions;  // [gathered]
  };
  std::map<int, Slot> slots_;
};

// ---- TokenSelect: per-head soft-voted criticality of every token, top-k + sinks + local ----
class TokenSelect final : public KvPolicy {
 public:
  explicit TokenSelect(MethodOptions& o)
      : n_init_(o.Int("n_init", 128)), n_local_(o.Int("n_local", 512)), kernel_(int(o.Int("kernel", 0))),
        theta_(o.Float("theta", 0.9)), scaled_(o.Int("scaled", 0) != 0), top_k_(o.Int("top_k", 0)),
        budget_(Budget::Read(o, 2048 + 128 + 512)) {
    if (top_k_ < 0 || n_init_ < 0 || n_local_ < 0) throw std::invalid_argument("top_k, n_init and n_local must be >= 0");
  }
  std::string name() const override {
    return "tokenselect:n_init=" + std::to_string(n_init_) + ",n_local=" + std::to_string(n_local_) +
           (top_k_ > 0 ? ",top_k=" + std::to_string(top_k_) : "," + budget_.Spec()) + ",kernel=" + std::to_string(kernel_) +
           ",theta=" + std::to_string(theta_).substr(0, 5) + ",scaled=" + std::to_string(int(scaled_));
  }
  void Reset() override { caches_.clear(); }
  int64_t reused() const { return reused_; }
  void SelectForDecode(const LayerRef& at, const float* q, std::vector<int64_t>* offsets, std::vector<KvRun>* runs,
                       ThreadPool* pool) override {
    const int64_t n = at.cache->length(at.seq, at.layer, 0);
    // top_k, or what the budget leaves after the initial and local tokens.
    const int64_t top_k = top_k_ > 0 ? top_k_ : std::max<int64_t>(1, budget_.For(n) - n_init_ - n_local_);
    if (n_init_ + top_k + n_local_ >= n) {
      AllRuns(at, offsets, runs);
      return;
    }
    const std::span<const float> fingerprint(q, size_t(at.heads.q) * at.heads.dim);
    SelectionCache& cache = caches_.try_emplace(at.layer, theta_).first->second;
    std::vector<int32_t> keep;
    const std::vector<int32_t>* cached = cache.Find(fingerprint);
    if (cached && cached->size() == size_t(n_init_ + top_k + n_local_) && cached->back() < n) {
      keep = *cached;
      // The local window slides with the new token; the cached top-k stays.
      keep.erase(std::remove_if(keep.begin(), keep.end(), [&](int32_t t) { return t >= n - n_local_ - 1; }), keep.end());
      for (int64_t t = n - n_local_ - 1; t < n; ++t) {
        if (t >= n_init_) keep.push_back(int32_t(t));
      }
      std::sort(keep.begin(), keep.end());
      keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
      ++reused_;
    } else {
      keep = Select(at, q, n, top_k, pool);
      cache.Store(fingerprint, keep);
    }
    offsets->assign(1, int64_t(runs->size()));
    for (int h = 0; h < at.heads.kv; ++h) {
      runs->push_back(gather_.Gather(at, h, keep));
      offsets->push_back(int64_t(runs->size()));
    }
  }

 private:
  std::vector<int32_t> Select(const LayerRef& at, const float* q, int64_t n, int64_t top_k, ThreadPool* pool) {
    const int64_t begin = n_init_, end = n - n_local_, m = end - begin, stride = (m + 15) / 16 * 16;
    QueryLogitsInto(at, q, n, &logits_, pool);  // [H_q, n]
    // Soft vote: per-head softmax over the candidates, summed over heads.
    probs_.resize(size_t(at.heads.q) * stride);  // [H_q, stride]
    for (int h = 0; h < at.heads.q; ++h) {
      float* row = &probs_[size_t(h) * stride];
      std::copy_n(&logits_[size_t(h) * n + begin], m, row);
      std::fill(row + m, row + stride, -INFINITY);
    }
    SoftmaxRowsInPlace(probs_.data(), at.heads.q, m, stride, scaled_ ? 1.0f / std::sqrt(float(at.heads.dim)) : 1.0f);
    std::vector<float> crit(size_t(m), 0.0f);  // [m]
    for (int h = 0; h < at.heads.q; ++h) {
      for (int64_t i = 0; i < m; ++i) crit[i] += probs_[size_t(h) * stride + i];
    }
    if (kernel_ > 1) crit = Pool1d(crit, kernel_, PoolKind::kMax);
    return TokenSelectKeep(crit, n, n_init_, n_local_, top_k);
  }
  int64_t n_init_, n_local_;
  int kernel_;
  double theta_;
  bool scaled_;
  int64_t top_k_;  // 0: from the budget
  Budget budget_;
  int64_t reused_ = 0;
  std::map<int, SelectionCache> caches_;
  GatherBuffer gather_;
  std::vector<float> logits_, probs_;  // [H_q, n], [H_q, stride] this step's (reused)
};

struct PolicyInfo {
  const char* name;
  std::unique_ptr<KvPolicy> (*make)(MethodOptions&);
};

template <typename T>
std::unique_ptr<KvPolicy> Make(MethodOptions& o) {
  return std::make_unique<T>(o);
}

const PolicyInfo kPolicies[] = {
    {"streamingllm", Make<StreamingLlm>}, {"snapkv", Make<SnapKv>}, {"compresskv", Make<CompressKv>},
    {"h2o", Make<H2o>},                   {"quest", Make<Quest>},   {"tokenselect", Make<TokenSelect>},
    {"rekv", MakeRekvPolicy},             {"promptdistill", MakePromptDistillPolicy},
};

}  // namespace

std::vector<std::string> KvPolicyNames() {
  std::vector<std::string> names;
  for (const PolicyInfo& p : kPolicies) names.push_back(p.name);
  return names;
}

bool IsKvPolicyName(const std::string& name) {
  for (const PolicyInfo& p : kPolicies) {
    if (name == p.name) return true;
  }
  return false;
}

std::unique_ptr<KvPolicy> MakeKvPolicy(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  for (const PolicyInfo& p : kPolicies) {
    if (name != p.name) continue;
    MethodOptions o = MethodOptions::Parse(colon == std::string::npos ? "" : spec.substr(colon + 1));
    std::unique_ptr<KvPolicy> policy = p.make(o);
    o.CheckAllUsed(name);
    return policy;
  }
  std::string known;
  for (const PolicyInfo& p : kPolicies) known += std::string(known.empty() ? "" : ", ") + p.name;
  throw std::invalid_argument("unknown KV policy '" + name + "' (known: " + known + ")");
}

}  // namespace qattn::kv
