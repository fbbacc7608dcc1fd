// The decode-time KV cache: fixed-size pages from one pool, a page table per (sequence, layer,
// KV head) stream, copy-on-write sharing of prefixes between sequences, and eviction by keeping a
// sorted subset of a stream's tokens.
//
// A page holds `page_tokens` consecutive tokens of ONE stream (one KV head of one layer), in the
// tile format of kernels/kv_format.h: [tiles] K tiles, then [tiles] V tiles, tiles = page_tokens/16.
// Per-head contiguous storage is what lets decode stream each head's keys at memory speed (a
// per-position [token, head, d] layout interleaves heads and costs peers 4-6x here).
// Each stream keeps the logical position of every token it holds (positions[i]), so RoPE'd keys
// keep their meaning after eviction and masks/ALiBi see true distances.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/aligned_buffer.h"
#include "kernels/kv_format.h"

namespace qattn::kv {

struct PagedCacheConfig {
  int n_layer = 1;
  int n_head_kv = 1;
  int head_dim = 64;
  KvDType dtype = KvDType::kBF16;
  int page_tokens = 256;  // a multiple of 16
};

// Fixed-size, reference-counted pages carved from 2 MiB-aligned arenas (huge pages where the OS
// grants them: decode streams pages front to back).
class PagePool {
 public:
  explicit PagePool(size_t page_bytes);
  int32_t Allocate();              // refcount 1
  void Retain(int32_t page);       // one more owner
  void Release(int32_t page);      // frees the page when the last owner lets go
  int refcount(int32_t page) const { return refcounts_[page]; }
  uint8_t* data(int32_t page) const { return page_ptrs_[page]; }
  size_t page_bytes() const { return page_bytes_; }
  int64_t pages_in_use() const { return in_use_; }
  int64_t pages_allocated() const { return int64_t(page_ptrs_.size()); }

 private:
  size_t page_bytes_;
  std::vector<AlignedBuffer> arenas_;
  std::vector<uint8_t*> page_ptrs_;  // [pages ever carved]
  std::vector<int32_t> refcounts_;   // [pages ever carved]
  std::vector<int32_t> free_;        // ids with refcount 0
  int64_t in_use_ = 0;
};

class PagedKvCache {
 public:
  // Throws InvalidArgument for a bad head dim / page size / format combination.
  explicit PagedKvCache(const PagedCacheConfig& config);
  ~PagedKvCache();
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  const PagedCacheConfig& config() const { return config_; }
  int64_t tile_k_bytes() const { return tile_k_bytes_; }
  int64_t tile_v_bytes() const { return tile_v_bytes_; }

  // Sequences: ids are small integers, reused after Free.
  int NewSequence();
  // A new sequence sharing every page of `parent` (copy on write: the first write to a shared page
  // copies it, so neither sequence ever sees the other's later tokens).
  int ForkSequence(int parent);
  void FreeSequence(int seq);

  // Appends n tokens to every KV head of `layer`: k, v [n, H_kv * d] f32, row stride in floats,
  // token t at logical position positions[t].
  void Append(int seq, int layer, const float* k, const float* v, int64_t row_stride, int64_t n,
              const int32_t* positions);
  // Keeps only the tokens at `indices` (ascending, unique, < length) of one stream, in order.
  // Kept bytes are copied exactly (no requantization); freed pages return to the pool.
  void Keep(int seq, int layer, int head, const std::vector<int32_t>& indices);

  int64_t length(int seq, int layer, int head) const { return Stream(seq, layer, head).length; }
  const std::vector<int32_t>& positions(int seq, int layer, int head) const {
    return Stream(seq, layer, head).positions;
  }
  // One run per page of the stream, in token order, appended to *runs.
  void AppendRuns(int seq, int layer, int head, std::vector<KvRun>* runs) const;
  // The runs covering tokens [first, first + count) of a stream (page-aligned pieces).
  void AppendRunsRange(int seq, int layer, int head, int64_t first, int64_t count, std::vector<KvRun>* runs) const;
  // Tokens [first, first + count) of a stream dequantized: k, v [count, d] f32 (either may be null).
  void Read(int seq, int layer, int head, int64_t first, int64_t count, float* k, float* v) const;
  // Tokens [first, first + count) of every KV head of a layer, token-major as the model produces
  // them: k, v [count, H_kv, d] f32 (either may be null).
  void ReadLayer(int seq, int layer, int64_t first, int64_t count, float* k, float* v) const;

  // Accounting.
  int64_t pages_in_use() const { return pool_.pages_in_use(); }
  size_t page_bytes() const { return pool_.page_bytes(); }
  double bytes_per_token_per_layer() const;  // K and V of every KV head of one layer

 private:
  struct StreamState {
    std::vector<int32_t> pages;      // [ceil(length / page_tokens)] page ids
    std::vector<int32_t> positions;  // [length]
    int64_t length = 0;
  };
  struct Sequence {
    bool live = false;
    std::vector<StreamState> streams;  // [n_layer * n_head_kv]
  };
  StreamState& Stream(int seq, int layer, int head);
  const StreamState& Stream(int seq, int layer, int head) const;
  uint8_t* WritableTile(StreamState& s, int64_t token, bool value);  // copies a shared page first
  const uint8_t* Tile(const StreamState& s, int64_t token, bool value) const;

  PagedCacheConfig config_;
  int64_t tile_k_bytes_, tile_v_bytes_;
  PagePool pool_;
  std::vector<Sequence> sequences_;
};

}  // namespace qattn::kv
