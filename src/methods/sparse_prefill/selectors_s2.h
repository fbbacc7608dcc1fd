// The testable pieces of the nsa, squeezed, draft, psa and dma selectors (each method's .cc
// defines its own): configurations with the spec's defaults, estimators and selections. The
// methods themselves are reached through the registry (method_list.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"
#include "methods/sparse_prefill/gather_attention.h"
#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::sparse {

// ---- NSA (spec 3), inference without trained compressor or gates --------------------------------
struct NsaConfig {
  int cmp_block = 32;    // l: compressed token length
  int stride = 16;       // delta: compressed token stride
  int block = 64;        // l': selection block (also the query block the selection is shared by)
  int topk = 16;         // T, including the forced blocks
  int init_blocks = 1;
  int local_blocks = 2;
  int window = 512;      // w: the window branch sees keys [t - w, t]
  bool gated = false;    // false: gate-free LSE merge of disjoint branches; true: constant gates
  float g_cmp = 1.0f / 3, g_slc = 1.0f / 3, g_win = 1.0f / 3;
  int64_t min_n = 4096;  // n <= min_n: dense (the short-input fallback; measured break-even)
};

// Mean-pooled compressed tokens: token i averages raw rows [i * stride, i * stride + cmp_block).
struct NsaCompressed {
  Tensor k, v;                // [C, H_kv, d] and [C, H_kv, d_v] in the problem's dtype
  std::vector<int64_t> last;  // [C] i * stride + cmp_block - 1: the last raw key each covers
  int64_t count = 0;          // C = floor((n - l) / stride) + 1, or 0 when n < l
};
NsaCompressed NsaCompress(const PrefillProblem& problem, const NsaConfig& config, ThreadPool* pool);

// Selection block scores per KV group and query block: [H_kv, nb, nb] (row r holds blocks 0..r):
// sum over the block's query rows t and the group's heads h of sum_i w(i, j) p_cmp[t, h, i], with
// p_cmp the exact softmax over the compressed tokens t may see (t >= i * stride + l - 1) and w(i, j)
// the number of stride units token i shares with block j.
std::vector<float> NsaBlockScores(const PrefillProblem& problem, const NsaConfig& config,
                                  const NsaCompressed& compressed, ThreadPool* pool);

// Top-T blocks per (KV group, query block) with the init and local blocks forced, as a block list
// with heads = H_kv (ascending, the diagonal block partial).
BlockList NsaSelect(const std::vector<float>& scores, int64_t n, int num_kv_heads, const NsaConfig& config);

// ---- Squeezed Attention (spec 4) ------------------------------------------------------------------
// Spherical k-means (k-means++ seeding, Lloyd iterations on L2-normalised keys); centroids are the
// means of the raw keys of each cluster (zero if empty).
struct KMeansResult {
  int clusters = 0;
  int dim = 0;
  std::vector<int32_t> label;     // [n]
  std::vector<float> centroid;    // [clusters, dim] raw-space means
  std::vector<int64_t> size;      // [clusters]
  int iterations = 0;
  double inertia = 0.0;           // sum of (1 - cosine) to the assigned centroid
};
KMeansResult SphericalKMeans(const float* keys, int64_t n, int dim, int clusters, int iterations, uint64_t seed,
                             ThreadPool* pool);

// Estimated per-key softmax weight of each cluster for one query block, averaged over its rows:
//   a[k] = mean_t exp(s q_t.c_k) / sum_k' count[k'] exp(s q_t.c_k'), over clusters with count > 0.
// q: [rows, d]; centroids: [clusters, d]; count: [clusters]; a: [clusters] (0 where count = 0).
void ClusterWeights(const float* q, int rows, const float* centroids, const int64_t* count, int clusters, int d,
                    float scale, float* a);

struct SqueezedConfig {
  double percent = 5.0;    // fine clusters as a percentage of the keys (spec: percent_clusters 5)
  int iterations = 10;     // Lloyd iterations at most [ours; the spec's K-means runs 300]
  uint64_t seed = 0;
  double p = 0.7;          // threshold quantile (<= 0: keep every key)
  double budget = 0.0;     // > 0: keep clusters by estimate until this fraction of earlier keys
  int obs = 100;           // calibration queries: the last `obs` rows (spec: observation window)
  int block = 64;          // query rows sharing one lookup
  int levels = 1;          // 2: hierarchical (coarse then fine clusters)
  double percent_l1 = 1.0; // coarse clusters, percent of the keys (levels = 2)
  double p_l1 = 0.5;       // coarse threshold quantile (levels = 2)
  int64_t min_n = 4096;    // n <= min_n: dense (the short-input fallback)
};

// Offline part: per KV head, the fine (and for levels = 2 the coarse) clustering of all keys.
struct SqueezedModel {
  std::vector<KMeansResult> fine, coarse;  // [H_kv] each; coarse empty for levels = 1
};
SqueezedModel SqueezedCluster(const PrefillProblem& problem, const SqueezedConfig& config, ThreadPool* pool);

// Global thresholds on a key's estimated weight relative to uniform (estimate x keys in play),
// the p-quantiles over every head and context key of the calibration queries' mean estimates.
struct SqueezedThresholds {
  double fine = -INFINITY, coarse = -INFINITY;
  std::vector<float> fine_scores;  // [H_q * context keys] the relative scores the quantile is taken over
};
SqueezedThresholds SqueezedCalibrate(const PrefillProblem& problem, const SqueezedConfig& config,
                                     const SqueezedModel& model, ThreadPool* pool);

// Kept keys per (KV group, query block): keys before the block whose cluster passes for any head of
// the group (the union, spec 4.3 (b)), plus the block's own keys.
KeySelection SqueezedSelect(const PrefillProblem& problem, const SqueezedConfig& config, const SqueezedModel& model,
                            const SqueezedThresholds& thresholds, ThreadPool* pool);

// ---- DraftAttention-1D (spec 5) -------------------------------------------------------------------
// The draft map of one query head: softmax over block-causal pooled keys of s * mean(q) . mean(k),
// blocks of `block` tokens: [nb, nb], zero above the diagonal.
std::vector<float> DraftMap(const PrefillProblem& problem, int q_head, int block);
// Per-head global top-(1 - rho) of the causal entries (threshold: >= the largest of the
// floor(rho * count) smallest), diagonal always kept: [nb, nb] of 0/1.
std::vector<uint8_t> DraftKeep(const std::vector<float>& map, int nb, double rho);

// ---- Pyramid Sparse Attention (spec 6) ------------------------------------------------------------
// XAttention antidiagonal block importance of one query head: [nb, nb] (row-wise probabilities
// summed per block; zero above the diagonal). stride sigma, block b (a multiple of sigma).
std::vector<float> PsaImportance(const PrefillProblem& problem, int q_head, int stride, int block);

struct PsaConfig {
  int block = 128;             // b_q = b_k
  int stride = 16;             // xattn stride
  bool energy = false;         // false: topk (rank ranges), true: energybound (mass ranges)
  double bounds[4] = {0.05, 0.15, 0.25, 0.5};  // upper ends of levels 1, 2, 4, 8; the rest is skipped
  bool sim = false;            // similarity cap (spec 6.1 step 5)
  double sim_thresholds[3] = {0.75, 0.7, 0.7};
  int64_t min_n = 4096;        // n <= min_n: dense (the short-input fallback)
};
// Levels per (query head, q block, kv block): [H_q, nb, nb], values 1, 2, 4, 8 or 0 (skip).
std::vector<uint8_t> PsaLevels(const PrefillProblem& problem, const PsaConfig& config, ThreadPool* pool);

// The pyramid of one problem: levels 2, 4 and 8 of K and V, mean-pooled inside each key block over
// true counts, laid out block by block ([block 0: level 2, 4, 8][block 1: ...]) so that a list with
// one level per block is ascending in index and position. Each pooled key has a position (the last
// raw key it covers) and a bias log(count) per KV head.
struct PsaPyramid {
  int block = 128;
  Tensor k, v;                  // [m, H_kv, d], [m, H_kv, d_v]
  std::vector<int64_t> last;    // [m]
  std::vector<float> bias;      // [H_kv, m]
  std::vector<int64_t> start;   // [nb * 3 + 1] first index of (key block c, level 2 / 4 / 8)
};
PsaPyramid PsaBuildPyramid(const PrefillProblem& problem, int block, ThreadPool* pool);
// The pooled keys each (query head, q block) reads: for every (r, c <= r) with level 2, 4 or 8, that
// level's keys of block c. levels: [H_q, nb, nb].
KeySelection PsaPooledSelection(const PsaPyramid& pyramid, const std::vector<uint8_t>& levels, int64_t n, int heads);

// ---- DMA (spec 7), training-free form -------------------------------------------------------------
struct DmaConfig {
  int64_t window = 2048;  // w: keys kept per query block (plus the block's own keys)
  double a = 0.0;         // A: bias amplitude (the paper initialises A = 0)
  int block = 64;         // query rows sharing one selection
  bool query_aware = true;  // rank by s * mean(q) . k + bias; false: by the bias alone
  int64_t min_n = -1;       // n <= min_n: dense (+ bias); -1: 3 * window, where the mask keeps >= ~60% of pairs
};
// delta[g, j] = a * softplus(<v_j, u_g>) with u_g the unit mean value direction of KV head g: [H_kv, n].
std::vector<float> DmaBias(const PrefillProblem& problem, double a);
// Kept keys per (KV group, query block): the top-w earlier keys (ties toward the lower index) and
// the block's own keys.
KeySelection DmaSelect(const PrefillProblem& problem, const DmaConfig& config, const std::vector<float>& bias,
                       ThreadPool* pool);

}  // namespace qattn::sparse
