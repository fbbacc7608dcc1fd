// Scorers of the decode-time KV selection / eviction methods (docs/specs/kv_cache.md, part C) and the
// one keep-top-k step they share. Pure functions over f32 arrays: they decide *which* cached tokens
// (or pages, or blocks) to keep or attend to; storing, gathering and attending are elsewhere.
//
// Conventions
// - Every buffer is a dense row-major f32 array; its shape is written next to it, e.g. q [w, H_q, d]
//   means q[(i * H_q + h) * d + c]. Keys are token-major as the model produces them: k [n, H_kv, d].
// - GQA: query head h reads KV head h / G with G = H_q / H_kv (the HF layout, spec A1). The official
//   TokenSelect scoring kernel and the CompressKV repo's SnapKV baseline group heads as h % H_kv;
//   that is a bug for HF checkpoints and is deliberately not reproduced here (spec C1, C2 pitfalls).
// - Every selection returns token (or page / block) indices as int32, sorted ascending, no repeats.
// - Scores are ranked by KeepTopK: higher is better, ties go to the lower index, NaN ranks lowest,
//   so every selection is deterministic.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace qattn {
class ThreadPool;
}

namespace qattn::kv {

// Head counts and head width of one attention layer.
struct Heads {
  int q = 0;    // H_q, query heads
  int kv = 0;   // H_kv, key/value heads; must divide H_q
  int dim = 0;  // d, head dimension of queries and keys
  int Group() const { return q / kv; }       // G = H_q / H_kv
  int KvOf(int h) const { return h / Group(); }  // HF layout (not h % H_kv, see above)
};
// Throws std::invalid_argument unless q, kv, dim > 0 and kv divides q.
void CheckHeads(const Heads& heads);

// ---------------------------------------------------------------------------------------------
// Shared machinery (spec C, "Shared machinery")

enum class PoolKind { kNone, kAvg, kMax };

// 1-D pooling along tokens with PyTorch's avg_pool1d / max_pool1d semantics: stride 1, padding
// kernel/2, avg divides by `kernel` (padded zeros count), max ignores the padding. Output has the
// length of the input. Output i covers inputs [i - kernel/2, i - kernel/2 + kernel): for odd kernels
// that is centred; for even kernels PyTorch returns n + 1 values and we keep its first n (the window
// reaches one further to the left than to the right). kind kNone or kernel <= 1 copies x.
// x [n] -> [n]
std::vector<float> Pool1d(std::span<const float> x, int kernel, PoolKind kind);

// The indices of the `budget` best scores of scores [n], always including [0, keep_first) and
// [n - keep_last, n) (which count towards the budget; when they alone exceed it, exactly they are
// kept). budget >= n keeps everything. Sorted ascending; ties to the lower index; NaN ranks lowest.
std::vector<int32_t> KeepTopK(std::span<const float> scores, int64_t budget, int64_t keep_first = 0,
                              int64_t keep_last = 0);

// ---------------------------------------------------------------------------------------------
// Budgets (spec C2 "Offline step 2", C3)

// Every one of `num_layers` layers gets `average_budget` tokens.
std::vector<int64_t> UniformBudget(int num_layers, int64_t average_budget);

// CompressKV's error-aware allocation: weights w [L] (each layer's normalised compression error,
// >= 0, normally summing to 1), average budget B -> b [L] with
//   b_l = min_budget + round(w_l * (L*B - min_budget*L)), clipped to [min_budget, 3B],
// then the remainder distributed one token at a time by importance (w descending, ties to the lower
// layer): a shortfall adds +1 to the most important layers first (skipping those at 3B), an excess
// takes -1 from the least important first (skipping those at min_budget), round after round, until
// sum b_l == L*B exactly. Needs B >= min_budget. Monotone: w_i > w_j implies b_i >= b_j.
std::vector<int64_t> ErrorAwareLayerBudgets(std::span<const double> layer_weights, int64_t average_budget,
                                            int64_t min_budget = 32);

// Per-head budgets from the heads' own scores (Ada-KV style): the `total` best entries of all rows
// of scores [rows, m] taken jointly (ties to the lower row, then the lower index), counted per
// row. Rows whose mass is concentrated on few tokens give their share to diffuse rows; the
// counts sum to min(total, rows * m).
std::vector<int64_t> BudgetsFromScores(const float* scores, int rows, int64_t m, int64_t total);

// `total` split over `parts` as evenly as possible; the first total % parts parts get one more.
// (E.g. a layer budget over KV heads, or H2O's budget into heavy hitters and recent tokens.)
std::vector<int64_t> SplitEvenly(int64_t total, int parts);

// ---------------------------------------------------------------------------------------------
// Observation-window attention (SnapKV and CompressKV, spec C2 step 1-2, C3)

// Column sums of causal softmax attention over the last w prompt queries:
//   out[h, j] = sum_i softmax_j(scale * q[i, h] . k[j, kv(h)]) over visible j,
// where window query i sits at position n - w + i and sees keys j <= n - w + i; scale 1/sqrt(d).
// Dots in f32, softmax sums and the column accumulation in f64. Parallel over query heads if a pool
// is given. q [w, H_q, d], k [n, H_kv, d] -> [H_q, n]. (w == n gives all prefill queries: H2O.)
std::vector<float> CausalColumnSums(const float* q, const float* k, const Heads& heads, int64_t n, int64_t w,
                                    ThreadPool* pool = nullptr);

// The window scores of SnapKV / CompressKV: CausalColumnSums restricted to the prefix keys
// [0, n - w). q [w, H_q, d], k [n, H_kv, d] -> [H_q, n - w]
std::vector<float> WindowAttentionScores(const float* q, const float* k, const Heads& heads, int64_t n,
                                         int64_t w, ThreadPool* pool = nullptr);

// Keep `budget` tokens of an n-token prompt: the last w (the window, always kept) plus the top
// budget - w of prefix_scores [n - w]. budget >= n keeps all. -> sorted indices into [0, n).
std::vector<int32_t> KeepPrefixTopAndWindow(std::span<const float> prefix_scores, int64_t n, int64_t w,
                                            int64_t budget);

// ---------------------------------------------------------------------------------------------
// SnapKV (spec C3)

// Each query head's window scores pooled (kernel, kind), then averaged over the G query heads of
// each KV head. window_scores [H_q, m] (m = n - w) -> [H_kv, m]
std::vector<float> SnapKvScores(const float* window_scores, const Heads& heads, int64_t prefix_len, int kernel,
                                PoolKind kind);

// Per KV head: KeepPrefixTopAndWindow of its row. kv_scores [H_kv, n - w] -> H_kv index lists.
std::vector<std::vector<int32_t>> SnapKvSelect(const float* kv_scores, int num_kv_heads, int64_t n, int64_t w,
                                               int64_t budget);

// ---------------------------------------------------------------------------------------------
// CompressKV (spec C2)

// Mean over the given query heads (the layer's first `first_k` semantic retrieval heads) of their
// pooled window scores: one vector shared by all KV heads of the layer; select with
// KeepPrefixTopAndWindow. window_scores [H_q, m], srh_heads: query-head indices -> [m]
std::vector<float> CompressKvScores(const float* window_scores, const Heads& heads, int64_t prefix_len,
                                    std::span<const int> srh_heads, int kernel, PoolKind kind);

// Semantic-retrieval-head scoring, one decode step of a needle run: when the generated token is one
// of the needle's tokens, add each query head's attention mass on the needle span [begin, end) to
// head_scores. last_probs [H_q, n] are the last query's probabilities over the n cached tokens;
// head_scores [H_q] accumulates across steps (the caller averages over successful runs).
void AccumulateNeedleMass(const float* last_probs, int num_q_heads, int64_t n, int64_t needle_begin,
                          int64_t needle_end, bool generated_token_in_needle, std::span<double> head_scores);

// Whether `token` is any of the needle's tokens (the condition AccumulateNeedleMass is given).
bool TokenInNeedle(int32_t token, std::span<const int32_t> needle_tokens);

// Query heads ordered by score, best first, ties to the lower head: the layer's head_idx list, whose
// first first_k entries are the SRH heads. head_scores [H_q] -> [H_q]
std::vector<int> OrderHeadsByScore(std::span<const double> head_scores);

// ---------------------------------------------------------------------------------------------
// H2O (spec C3)

// Heavy-hitter scores after prefill: column sums of the causal softmax over all n prompt queries,
// summed over each KV head's query heads. q [n, H_q, d], k [n, H_kv, d] -> [H_kv, n]
std::vector<float> H2oPrefillScores(const float* q, const float* k, const Heads& heads, int64_t n,
                                    ThreadPool* pool = nullptr);

// One decode step: scores[g, t] += sum over g's query heads of probs[h, t], t < n. Accumulate before
// evicting. probs [H_q, n] (this step's attention over the n cached tokens, in cache order),
// scores [H_kv, scores_stride] with scores_stride >= n.
void H2oAccumulateStep(const float* probs, const Heads& heads, int64_t n, float* scores, int64_t scores_stride);

// The token to evict from one KV head's cache of n = scores.size() tokens: the lowest score among the
// non-recent ones [0, n - recent) (ties to the older one), or -1 when all are recent.
int64_t H2oEvictIndex(std::span<const float> scores, int64_t recent);

// ---------------------------------------------------------------------------------------------
// Quest (spec C3)

// Element-wise min and max of the keys of each page of page_size tokens, per KV head. The last
// page may be partial; Append extends it (or opens a new page) as decode adds tokens.
class QuestPages {
 public:
  QuestPages(int num_kv_heads, int dim, int page_size = 16);
  // k [n, H_kv, d]: the whole cache.
  QuestPages(const float* k, int64_t n, int num_kv_heads, int dim, int page_size = 16);
  void Append(const float* key);  // key [H_kv, d]: one new token

  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_pages() const { return (num_tokens_ + page_size_ - 1) / page_size_; }
  int page_size() const { return page_size_; }
  const float* Min(int kv_head, int64_t page) const;  // [d]
  const float* Max(int kv_head, int64_t page) const;  // [d]

 private:
  int64_t Offset(int kv_head, int64_t page) const { return (page * num_kv_heads_ + kv_head) * dim_; }
  int num_kv_heads_, dim_, page_size_;
  int64_t num_tokens_ = 0;
  std::vector<float> min_, max_;  // [pages, H_kv, d]
};

// Quest's bound on q . k for every k in a page: U = sum_i max(q_i M_i, q_i m_i) (= q+ . M + q- . m
// with q+ / q- the positive / negative parts of q). Unscaled: a positive scale does not change the
// ranking. q, min, max [d]
float QuestUpperBound(const float* q, const float* page_min, const float* page_max, int dim);

// Page scores per KV head: the max over the group's query heads of each one's bound.
// q [H_q, d] (this step's query) -> [H_kv, num_pages]
std::vector<float> QuestPageScores(const float* q, const Heads& heads, const QuestPages& pages);

// The top budget_tokens / page_size pages of page_scores [num_pages] (at least one), the last
// (current) page always among them. -> sorted page indices
std::vector<int32_t> QuestSelectPages(std::span<const float> page_scores, int64_t budget_tokens, int page_size);

// ---------------------------------------------------------------------------------------------
// TokenSelect (spec C1)

// The step's query fingerprint: the mean over its m queries (already rotated as the caller's RoPE
// policy says). q [m, H_q, d] -> [H_q, d]
std::vector<float> QueryFingerprint(const float* q, int64_t m, const Heads& heads);

// Criticality of the candidates [begin, end): c[t] = sum_h softmax_t(s_h[t]) with
// s_h[t] = fingerprint[h] . k[t, kv(h)], times 1/sqrt(d) only if scale_by_rsqrt_d (the official code
// has no scale). fingerprint [H_q, d], k [T, H_kv, d] -> [end - begin]
std::vector<float> TokenSelectCriticality(const float* fingerprint, const float* k, const Heads& heads,
                                          int64_t begin, int64_t end, bool scale_by_rsqrt_d = false,
                                          ThreadPool* pool = nullptr);

// The attended set [0, n_init) + top_k of the candidates [n_init, T - n_local) + [T - n_local, T),
// where criticality [T - n_init - n_local] holds the (already smoothed, if wanted: Pool1d kMax)
// candidate scores. n_init + top_k + n_local >= T attends to everything.
std::vector<int32_t> TokenSelectKeep(std::span<const float> criticality, int64_t num_tokens, int64_t n_init,
                                     int64_t n_local, int64_t top_k);

// The paper's selection cache: reuse the previous selection while the fingerprint stays close
// (cosine >= theta, computed in f64 on the flattened [H_q * d] vectors, clamped to [-1, 1]). theta 1
// reuses only for a fingerprint parallel to the stored one; theta -1 always reuses once filled.
// A zero fingerprint has cosine 1 with an identical one and 0 with anything else.
class SelectionCache {
 public:
  explicit SelectionCache(double theta) : theta_(theta) {}
  // The stored indices if a selection is stored and cos(fingerprint, stored) >= theta, else nullptr.
  const std::vector<int32_t>* Find(std::span<const float> fingerprint) const;
  void Store(std::span<const float> fingerprint, std::vector<int32_t> indices);
  void Clear();

 private:
  double theta_;
  bool filled_ = false;
  std::vector<float> fingerprint_;
  std::vector<int32_t> indices_;
};

// Cosine similarity in f64, clamped to [-1, 1]; see SelectionCache for zero vectors.
double CosineSimilarity(std::span<const float> a, std::span<const float> b);

// ---------------------------------------------------------------------------------------------
// PromptDistill (spec C5)

// Token scores from the last prompt token's queries: s[t] = sum_h q_h . k[t, kv(h)] (raw, unscaled),
// or with summed_softmax s[t] = sum_h softmax_t(q_h . k[t, kv(h)] / sqrt(d)) (GemFilter's variant).
// q_last [H_q, d], k [N, H_kv, d] -> [N]; select with KeepTopK(s, k, 0, keep_last).
std::vector<float> PromptDistillScores(const float* q_last, const float* k, const Heads& heads, int64_t n,
                                       bool summed_softmax, ThreadPool* pool = nullptr);

// ---------------------------------------------------------------------------------------------
// StreamingLLM (spec C3)

// The kept set of a T-token cache: the first `sinks` tokens and the last `window`.
std::vector<int32_t> StreamingLlmKeep(int64_t num_tokens, int64_t sinks, int64_t window);

// ---------------------------------------------------------------------------------------------
// ReKV (spec C6)

// A block's representative: the mean of its keys over its tokens, flattened over KV heads.
// k [block_len, H_kv, d] -> [H_kv * d]
std::vector<float> RekvBlockRepresentative(const float* k, int64_t block_len, int num_kv_heads, int dim);

// The question vector: queries averaged over the question's m tokens and over each KV head's query
// heads. q [m, H_q, d] -> [H_kv * d]
std::vector<float> RekvQueryVector(const float* q, int64_t m, const Heads& heads);

// Raw dot products (the official code calls it cosine but does not normalise).
// query [width], representatives [num_blocks, width] -> [num_blocks]
std::vector<float> RekvSimilarities(const float* query, const float* representatives, int64_t num_blocks,
                                    int64_t width);

// The top_k blocks. With chunk_size > 1 the similarities are averaged over chunks of chunk_size
// consecutive blocks (the last chunk over the blocks it has), the top max(1, top_k / chunk_size)
// chunks are chosen and expanded to their blocks. top_k >= num_blocks keeps all.
// similarities [num_blocks] -> sorted block indices
std::vector<int32_t> RekvSelectBlocks(std::span<const float> similarities, int64_t top_k, int64_t chunk_size = 1);

}  // namespace qattn::kv
