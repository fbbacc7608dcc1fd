// The policies that select at read time and evict nothing: Quest (page bounds) and TokenSelect
// (soft-voted token criticality, selection cache).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <stdexcept>

#include "core/aligned_buffer.h"
#include "methods/kv_cache/kv_policy_internal.h"
#include "methods/kv_cache/quest_index.h"

namespace qattn::kv {
namespace {

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
    std::vector<float> keys(size_t(m) * at.heads.kv * at.heads.dim);  // [m, H_kv, d] the new tokens
    at.cache->ReadLayer(at.seq, at.layer, first, m, keys.data(), nullptr);
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

}  // namespace

std::unique_ptr<KvPolicy> MakeQuestPolicy(MethodOptions& o) { return std::make_unique<Quest>(o); }
std::unique_ptr<KvPolicy> MakeTokenSelectPolicy(MethodOptions& o) { return std::make_unique<TokenSelect>(o); }

}  // namespace qattn::kv
