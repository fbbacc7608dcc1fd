// The policies that evict: StreamingLLM (sinks + window), SnapKV and CompressKV (observation-window
// scores, once after the prompt) and H2O (accumulated attention, one eviction per step).
#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>

#include "methods/kv_cache/kv_policy_internal.h"

namespace qattn::kv {
namespace {

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
        pool_name_(o.String("pool", "max")), pool_(ParsePool(pool_name_)),
        head_budgets_(o.String("head_budgets", "uniform")) {
    if (head_budgets_ != "uniform" && head_budgets_ != "adaptive") {
      throw std::invalid_argument("head_budgets must be uniform or adaptive, got '" + head_budgets_ + "'");
    }
  }
  std::string name() const override {
    return "snapkv:" + budget_.Spec() + ",window=" + std::to_string(window_) + ",kernel=" + std::to_string(kernel_) +
           ",pool=" + pool_name_ + ",head_budgets=" + head_budgets_;
  }
  void AfterPrompt(const LayerRef& at, const float* q, int64_t q_stride, int64_t n, ThreadPool* pool) override {
    const int64_t budget = budget_.For(n), w = std::min(window_, n);
    if (budget >= n) return;
    const std::vector<float> qw = LastRows(q, q_stride, n, w, at.heads);
    const std::vector<float> keys = ReadKeys(at);
    const std::vector<float> window = WindowAttentionScores(qw.data(), keys.data(), at.heads, n, w, pool);
    const std::vector<float> scores = SnapKvScores(window.data(), at.heads, n - w, kernel_, pool_);  // [H_kv, n - w]
    if (head_budgets_ == "uniform") {
      const auto keep = SnapKvSelect(scores.data(), at.heads.kv, n, w, budget);
      for (int h = 0; h < at.heads.kv; ++h) at.cache->Keep(at.seq, at.layer, h, keep[h]);
      return;
    }
    // Adaptive: the layer's prefix budget over all KV heads jointly, so each head keeps as many
    // tokens as its scores earn (the window stays in every head).
    const int64_t prefix_total = std::max<int64_t>(0, budget - w) * at.heads.kv;
    const std::vector<int64_t> per_head = BudgetsFromScores(scores.data(), at.heads.kv, n - w, prefix_total);
    for (int h = 0; h < at.heads.kv; ++h) {
      const std::span<const float> row(&scores[size_t(h) * (n - w)], size_t(n - w));
      at.cache->Keep(at.seq, at.layer, h, KeepPrefixTopAndWindow(row, n, w, per_head[h] + w));
    }
  }

 private:
  Budget budget_;
  int64_t window_;
  int kernel_;
  std::string pool_name_;
  PoolKind pool_;
  std::string head_budgets_;  // "uniform" (B per head) or "adaptive" (B x H_kv over the layer's heads)
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

}  // namespace

std::unique_ptr<KvPolicy> MakeStreamingLlmPolicy(MethodOptions& o) { return std::make_unique<StreamingLlm>(o); }
std::unique_ptr<KvPolicy> MakeSnapKvPolicy(MethodOptions& o) { return std::make_unique<SnapKv>(o); }
std::unique_ptr<KvPolicy> MakeCompressKvPolicy(MethodOptions& o) { return std::make_unique<CompressKv>(o); }
std::unique_ptr<KvPolicy> MakeH2oPolicy(MethodOptions& o) { return std::make_unique<H2o>(o); }

}  // namespace qattn::kv
