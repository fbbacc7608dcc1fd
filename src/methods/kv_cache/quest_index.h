// Quest's page bounds laid out for fast scoring (spec C3; the plain f32 scorer is QuestPages /
// QuestPageScores in kv_scores.h, which this must agree with).
//
// Per KV head, pages (16 tokens by default) are stored in groups of 16 pages: [d][16 pages][max, min] bf16,
// with each max rounded up and each min rounded down, so the bf16 bounds still bound every key.
// One vdpbf16ps against the query pair (q+_i, q-_i) then adds q+_i M_i + q-_i m_i to all 16 pages'
// bounds at once: U(page) = sum_i max(q_i M_i, q_i m_i) = q+ . M + q- . m. The whole index is
// 1/8 of a bf16 cache's K and V bytes, so scoring it costs about 1/8 of a dense step's memory
// traffic. (The query pair is rounded to bf16; the bound is exact for that rounded query.)
#pragma once
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "methods/kv_cache/kv_scores.h"

namespace qattn::kv {

class QuestIndex {
 public:
  static constexpr int kGroup = 16;  // pages per stored group (one AVX-512 register of bounds)

  // page_tokens: tokens per Quest page, a multiple of 16 (the cache's tile) so pages are runs.
  QuestIndex(int num_kv_heads, int dim, int page_tokens = 16);
  int page_tokens() const { return page_; }
  // Appends tokens: keys [n, H_kv, d] f32 (as the cache stores them, post-RoPE).
  void Append(const float* keys, int64_t n);
  int64_t num_tokens() const { return tokens_; }
  int64_t num_pages() const { return (tokens_ + page_ - 1) / page_; }

  // Page scores [H_kv, num_pages]: per KV head the max over its group's query heads of U(page).
  // q [H_q, d]. Uses vdpbf16ps where the CPU has it; the portable path computes the same sums.
  std::vector<float> Scores(const float* q, const Heads& heads, ThreadPool* pool = nullptr) const;
  // The same into a reused buffer (decode calls this every step; fresh 100+ KiB buffers cost page
  // faults): out [H_kv, stride] with row h's first num_pages() entries the scores. Returns stride.
  int64_t ScoresInto(const float* q, const Heads& heads, ThreadPool* pool, std::vector<float>* out) const;
  size_t bytes() const { return bounds_.empty() ? 0 : bounds_.size() * bounds_[0].size() * sizeof(uint16_t); }

 private:
  int64_t GroupOffset(int head, int64_t group) const;  // first element of a group in its head's bounds
  void StoreBounds(int head, int64_t page, const float* max, const float* min);

  int num_kv_heads_, dim_, page_;
  int64_t tokens_ = 0;
  std::vector<std::vector<uint16_t>> bounds_;  // [H_kv][groups, d, 16 pages, 2] bf16 (max up, min down)
  std::vector<float> open_max_;     // [H_kv, d] exact bounds of the page being filled
  std::vector<float> open_min_;     // [H_kv, d]
};

}  // namespace qattn::kv
