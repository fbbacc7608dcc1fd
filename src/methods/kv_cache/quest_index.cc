#include "methods/kv_cache/quest_index.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/cpu_features.h"
#include "core/dtype.h"

#define QATTN_QUEST_BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")))

namespace qattn::kv {
namespace {

// bf16 of x rounded towards +inf (up = true) or -inf: truncation moves towards zero, so it is
// already the right direction for one sign and one ulp short for the other.
uint16_t Bf16Directed(float x, bool up) {
  if (std::isnan(x)) return 0x7fc0;
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint16_t truncated = uint16_t(u >> 16);
  if ((u & 0xffffu) == 0) return truncated;  // exact
  const bool negative = u >> 31;
  // Truncation rounded towards zero: that is down for positives and up for negatives.
  if (up != negative) return uint16_t(truncated + 1);  // one ulp further from zero
  return truncated;
}

float Bf16Value(uint16_t bits) { return BF16ToF32(BF16{bits}); }

// The query as bf16 pairs (q+_i, q-_i): [g, d, 2].
std::vector<uint16_t> QueryPairs(const float* q, int g, int d) {
  std::vector<uint16_t> pairs(size_t(g) * d * 2);
  for (int64_t i = 0; i < int64_t(g) * d; ++i) {
    pairs[2 * i] = F32ToBF16(std::max(q[i], 0.0f)).bits;
    pairs[2 * i + 1] = F32ToBF16(std::min(q[i], 0.0f)).bits;
  }
  return pairs;
}

// out[p] = max over the g heads of sum_i (q+_hi M_i(p) + q-_hi m_i(p)) for the 16 pages of each
// group. blocks [groups, d, 16, 2], pairs [g, d, 2], out [groups * 16].
void ScoreGroupsPortable(const uint16_t* pairs, int g, int d, const uint16_t* blocks, int64_t groups, float* out) {
  for (int64_t grp = 0; grp < groups; ++grp) {
    const uint16_t* b = blocks + grp * d * QuestIndex::kGroup * 2;
    for (int p = 0; p < QuestIndex::kGroup; ++p) {
      float best = -std::numeric_limits<float>::infinity();
      for (int h = 0; h < g; ++h) {
        float u = 0;
        for (int i = 0; i < d; ++i) {
          const uint16_t* pair = &pairs[(size_t(h) * d + i) * 2];
          const uint16_t* mm = &b[(size_t(i) * QuestIndex::kGroup + p) * 2];
          u += Bf16Value(pair[0]) * Bf16Value(mm[0]) + Bf16Value(pair[1]) * Bf16Value(mm[1]);
        }
        best = std::max(best, u);
      }
      out[grp * QuestIndex::kGroup + p] = best;
    }
  }
}

template <int G>
QATTN_QUEST_BF16 void ScoreGroupsBf16T(const uint16_t* pairs, int d, const uint16_t* blocks, int64_t groups,
                                       float* out) {
  for (int64_t grp = 0; grp < groups; ++grp) {
    const uint16_t* b = blocks + grp * d * QuestIndex::kGroup * 2;
    __m512 acc[G];
    for (int h = 0; h < G; ++h) acc[h] = _mm512_setzero_ps();
    for (int i = 0; i < d; ++i) {
      const __m512bh bounds = (__m512bh)_mm512_loadu_si512(b + size_t(i) * QuestIndex::kGroup * 2);
      for (int h = 0; h < G; ++h) {
        uint32_t pair;
        std::memcpy(&pair, &pairs[(size_t(h) * d + i) * 2], 4);
        acc[h] = _mm512_dpbf16_ps(acc[h], (__m512bh)_mm512_set1_epi32(int(pair)), bounds);
      }
    }
    __m512 best = acc[0];
    for (int h = 1; h < G; ++h) best = _mm512_max_ps(best, acc[h]);
    _mm512_storeu_ps(out + grp * QuestIndex::kGroup, best);
  }
}

// Heads in chunks of up to 8 (accumulators stay in registers), the running max across chunks.
QATTN_QUEST_BF16 void ScoreGroupsBf16(const uint16_t* pairs, int g, int d, const uint16_t* blocks, int64_t groups,
                                      float* out) {
  std::vector<float> part(g > 8 || (g != 8 && g != 4 && g != 2) ? size_t(groups) * QuestIndex::kGroup : 0);
  for (int h0 = 0; h0 < g; h0 += 8) {
    const int n = std::min(8, g - h0);
    float* dst = h0 == 0 ? out : part.data();
    const uint16_t* ph = pairs + size_t(h0) * d * 2;
    switch (n) {
      case 8: ScoreGroupsBf16T<8>(ph, d, blocks, groups, dst); break;
      case 4: ScoreGroupsBf16T<4>(ph, d, blocks, groups, dst); break;
      case 2: ScoreGroupsBf16T<2>(ph, d, blocks, groups, dst); break;
      default:
        for (int h = 0; h < n; ++h) {
          float* one = (h == 0 && h0 == 0) ? out : part.data();
          ScoreGroupsBf16T<1>(ph + size_t(h) * d * 2, d, blocks, groups, one);
          if (one != out) {
            for (size_t j = 0; j < part.size(); ++j) out[j] = std::max(out[j], part[j]);
          }
        }
        continue;
    }
    if (dst != out) {
      for (size_t j = 0; j < part.size(); ++j) out[j] = std::max(out[j], part[j]);
    }
  }
}

bool UseBf16() { return ActiveIsa() >= Isa::kAvx512Bf16 && DetectCpu().avx512_bf16; }

}  // namespace

QuestIndex::QuestIndex(int num_kv_heads, int dim, int page_tokens)
    : num_kv_heads_(num_kv_heads), dim_(dim), page_(page_tokens), bounds_(num_kv_heads), open_max_(size_t(num_kv_heads) * dim),
      open_min_(size_t(num_kv_heads) * dim) {}

int64_t QuestIndex::GroupOffset(int, int64_t group) const { return group * dim_ * kGroup * 2; }

void QuestIndex::StoreBounds(int head, int64_t page, const float* max, const float* min) {
  const int64_t group = page / kGroup, slot = page % kGroup;
  std::vector<uint16_t>& head_bounds = bounds_[head];
  const size_t needed = size_t(GroupOffset(head, group + 1));
  // A fresh group's unused page slots hold zeros (score 0); Scores trims them off.
  if (head_bounds.size() < needed) head_bounds.resize(needed, 0);
  uint16_t* b = &head_bounds[size_t(GroupOffset(head, group))];
  for (int i = 0; i < dim_; ++i) {
    b[(size_t(i) * kGroup + slot) * 2] = Bf16Directed(max[i], true);
    b[(size_t(i) * kGroup + slot) * 2 + 1] = Bf16Directed(min[i], false);
  }
}

void QuestIndex::Append(const float* keys, int64_t n) {
  for (int64_t t = 0; t < n; ++t, ++tokens_) {
    const bool first = tokens_ % page_ == 0;
    for (int h = 0; h < num_kv_heads_; ++h) {
      const float* k = keys + (t * num_kv_heads_ + h) * dim_;
      float* mx = &open_max_[size_t(h) * dim_];
      float* mn = &open_min_[size_t(h) * dim_];
      for (int i = 0; i < dim_; ++i) {
        mx[i] = first ? k[i] : std::max(mx[i], k[i]);
        mn[i] = first ? k[i] : std::min(mn[i], k[i]);
      }
      StoreBounds(h, tokens_ / page_, mx, mn);
    }
  }
}

int64_t QuestIndex::ScoresInto(const float* q, const Heads& heads, ThreadPool* pool, std::vector<float>* out) const {
  const int64_t pages = num_pages(), groups = (pages + kGroup - 1) / kGroup, stride = groups * kGroup;
  const int g = heads.Group();
  out->resize(size_t(num_kv_heads_) * stride);
  const std::vector<uint16_t> pairs = QueryPairs(q, heads.q, dim_);  // [H_q, d, 2]
  const bool bf16 = UseBf16();
  // Work items: (KV head, run of groups), enough for the pool to balance.
  constexpr int64_t kGroupsPerItem = 64;
  const int64_t chunks = (groups + kGroupsPerItem - 1) / kGroupsPerItem;
  auto item = [&](int64_t index, int) {
    const int h = int(index / chunks);
    const int64_t g0 = (index % chunks) * kGroupsPerItem, count = std::min(kGroupsPerItem, groups - g0);
    const uint16_t* head_pairs = &pairs[size_t(h) * g * dim_ * 2];  // [g, d, 2] of this KV head's queries
    const uint16_t* blocks = &bounds_[h][size_t(GroupOffset(h, g0))];
    float* dst = out->data() + size_t(h) * stride + g0 * kGroup;
    if (bf16) ScoreGroupsBf16(head_pairs, g, dim_, blocks, count, dst);
    else ScoreGroupsPortable(head_pairs, g, dim_, blocks, count, dst);
  };
  if (pool && num_kv_heads_ * chunks > 1) pool->ParallelFor(num_kv_heads_ * chunks, item);
  else for (int64_t i = 0; i < num_kv_heads_ * chunks; ++i) item(i, 0);
  return stride;
}

std::vector<float> QuestIndex::Scores(const float* q, const Heads& heads, ThreadPool* pool) const {
  std::vector<float> padded;
  const int64_t stride = ScoresInto(q, heads, pool, &padded), pages = num_pages();
  std::vector<float> scores(size_t(num_kv_heads_) * pages);  // [H_kv, pages]
  for (int h = 0; h < num_kv_heads_; ++h) std::copy_n(&padded[size_t(h) * stride], pages, &scores[size_t(h) * pages]);
  return scores;
}

}  // namespace qattn::kv
