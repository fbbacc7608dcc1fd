#include "methods/kv_cache/paged_cache.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace qattn::kv {
namespace {

constexpr size_t kArenaBytes = size_t(32) << 20;  // pages are carved from 32 MiB arenas

}  // namespace

// ---- PagePool ----

PagePool::PagePool(size_t page_bytes) : page_bytes_((page_bytes + kAlignment - 1) / kAlignment * kAlignment) {}

int32_t PagePool::Allocate() {
  if (free_.empty()) {
    const size_t per_arena = std::max<size_t>(1, kArenaBytes / page_bytes_);
    arenas_.emplace_back(per_arena * page_bytes_);
    uint8_t* base = arenas_.back().as<uint8_t>();
    // Pushed in reverse so that pages are handed out front to back within an arena.
    for (size_t i = per_arena; i-- > 0;) {
      free_.push_back(int32_t(page_ptrs_.size() + i));
    }
    for (size_t i = 0; i < per_arena; ++i) {
      page_ptrs_.push_back(base + i * page_bytes_);
      refcounts_.push_back(0);
    }
  }
  const int32_t page = free_.back();
  free_.pop_back();
  refcounts_[page] = 1;
  ++in_use_;
  return page;
}

void PagePool::Retain(int32_t page) { ++refcounts_[page]; }

void PagePool::Release(int32_t page) {
  if (--refcounts_[page] == 0) {
    free_.push_back(page);
    --in_use_;
  }
}

// ---- PagedKvCache ----

PagedKvCache::PagedKvCache(const PagedCacheConfig& c)
    : config_(c),
      tile_k_bytes_(int64_t(KvTileBytes(c.dtype, c.head_dim, false))),
      tile_v_bytes_(int64_t(KvTileBytes(c.dtype, c.head_dim, true))),
      pool_(size_t(c.page_tokens / kKvTileTokens) * size_t(tile_k_bytes_ + tile_v_bytes_)) {
  if (c.page_tokens < kKvTileTokens || c.page_tokens % kKvTileTokens != 0) {
    throw InvalidArgument("page_tokens must be a positive multiple of " + std::to_string(kKvTileTokens) + ", got " +
                          std::to_string(c.page_tokens));
  }
  if (c.n_layer < 1 || c.n_head_kv < 1) throw InvalidArgument("a KV cache needs at least one layer and one KV head");
}

PagedKvCache::~PagedKvCache() {
  for (int s = 0; s < int(sequences_.size()); ++s) {
    if (sequences_[s].live) FreeSequence(s);
  }
}

int PagedKvCache::NewSequence() {
  int id = 0;
  while (id < int(sequences_.size()) && sequences_[id].live) ++id;
  if (id == int(sequences_.size())) sequences_.emplace_back();
  sequences_[id].live = true;
  sequences_[id].streams.assign(size_t(config_.n_layer) * config_.n_head_kv, StreamState{});
  return id;
}

int PagedKvCache::ForkSequence(int parent) {
  Stream(parent, 0, 0);  // validates the id
  const int child = NewSequence();
  sequences_[child].streams = sequences_[parent].streams;
  for (const StreamState& s : sequences_[child].streams) {
    for (int32_t page : s.pages) pool_.Retain(page);
  }
  return child;
}

void PagedKvCache::FreeSequence(int seq) {
  Stream(seq, 0, 0);
  for (StreamState& s : sequences_[seq].streams) {
    for (int32_t page : s.pages) pool_.Release(page);
  }
  sequences_[seq] = Sequence{};
}

PagedKvCache::StreamState& PagedKvCache::Stream(int seq, int layer, int head) {
  return const_cast<StreamState&>(static_cast<const PagedKvCache*>(this)->Stream(seq, layer, head));
}

const PagedKvCache::StreamState& PagedKvCache::Stream(int seq, int layer, int head) const {
  if (seq < 0 || seq >= int(sequences_.size()) || !sequences_[seq].live) {
    throw InvalidArgument("no live KV cache sequence " + std::to_string(seq));
  }
  if (layer < 0 || layer >= config_.n_layer || head < 0 || head >= config_.n_head_kv) {
    throw InvalidArgument("KV cache stream (layer " + std::to_string(layer) + ", head " + std::to_string(head) +
                          ") is out of range");
  }
  return sequences_[seq].streams[size_t(layer) * config_.n_head_kv + head];
}

const uint8_t* PagedKvCache::Tile(const StreamState& s, int64_t token, bool value) const {
  const int64_t tiles = config_.page_tokens / kKvTileTokens;
  const int64_t tile = (token % config_.page_tokens) / kKvTileTokens;
  const uint8_t* page = pool_.data(s.pages[token / config_.page_tokens]);
  return value ? page + tiles * tile_k_bytes_ + tile * tile_v_bytes_ : page + tile * tile_k_bytes_;
}

uint8_t* PagedKvCache::WritableTile(StreamState& s, int64_t token, bool value) {
  const size_t page_index = size_t(token / config_.page_tokens);
  if (page_index == s.pages.size()) {
    s.pages.push_back(pool_.Allocate());
  } else if (pool_.refcount(s.pages[page_index]) > 1) {  // shared with a fork: copy before writing
    const int32_t copy = pool_.Allocate();
    std::memcpy(pool_.data(copy), pool_.data(s.pages[page_index]), pool_.page_bytes());
    pool_.Release(s.pages[page_index]);
    s.pages[page_index] = copy;
  }
  return const_cast<uint8_t*>(Tile(s, token, value));
}

void PagedKvCache::Append(int seq, int layer, const float* k, const float* v, int64_t row_stride, int64_t n,
                          const int32_t* positions) {
  const int d = config_.head_dim;
  for (int h = 0; h < config_.n_head_kv; ++h) {
    StreamState& s = Stream(seq, layer, h);
    for (int64_t t = 0; t < n; ++t) {
      const int slot = int(s.length % kKvTileTokens);
      StoreKvToken(config_.dtype, false, k + t * row_stride + int64_t(h) * d, d, WritableTile(s, s.length, false), slot);
      StoreKvToken(config_.dtype, true, v + t * row_stride + int64_t(h) * d, d, WritableTile(s, s.length, true), slot);
      s.positions.push_back(positions[t]);
      ++s.length;
    }
  }
}

void PagedKvCache::Keep(int seq, int layer, int head, const std::vector<int32_t>& indices) {
  StreamState& old = Stream(seq, layer, head);
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] < 0 || indices[i] >= old.length || (i > 0 && indices[i] <= indices[i - 1])) {
      throw InvalidArgument("Keep needs ascending unique token indices below the stream length " +
                            std::to_string(old.length));
    }
  }
  // Compacts into fresh pages: the old pages may be shared with a fork, and a fresh copy also
  // keeps the kept tokens contiguous for decode.
  StreamState kept;
  const int d = config_.head_dim;
  for (int32_t index : indices) {
    const int dst_slot = int(kept.length % kKvTileTokens), src_slot = index % kKvTileTokens;
    for (bool value : {false, true}) {
      CopyKvToken(config_.dtype, value, d, Tile(old, index, value), src_slot, WritableTile(kept, kept.length, value),
                  dst_slot);
    }
    kept.positions.push_back(old.positions[index]);
    ++kept.length;
  }
  for (int32_t page : old.pages) pool_.Release(page);
  old = std::move(kept);
}

void PagedKvCache::AppendRunsRange(int seq, int layer, int head, int64_t first, int64_t count,
                                   std::vector<KvRun>* runs) const {
  const StreamState& s = Stream(seq, layer, head);
  if (first < 0 || count < 0 || first + count > s.length || first % kKvTileTokens != 0) {
    throw InvalidArgument("a run range must start on a tile boundary inside the stream");
  }
  for (int64_t t = first; t < first + count;) {
    const int64_t page_end = (t / config_.page_tokens + 1) * config_.page_tokens;
    const int64_t end = std::min(first + count, page_end);
    KvRun run;
    run.k = Tile(s, t, false);
    run.v = Tile(s, t, true);
    run.tokens = int32_t(end - t);
    run.position = s.positions[t];
    run.positions = &s.positions[t];
    runs->push_back(run);
    t = end;
  }
}

void PagedKvCache::AppendRuns(int seq, int layer, int head, std::vector<KvRun>* runs) const {
  AppendRunsRange(seq, layer, head, 0, length(seq, layer, head), runs);
}

void PagedKvCache::Read(int seq, int layer, int head, int64_t first, int64_t count, float* k, float* v) const {
  const StreamState& s = Stream(seq, layer, head);
  if (first < 0 || count < 0 || first + count > s.length) throw InvalidArgument("Read past the end of a KV stream");
  const int d = config_.head_dim;
  for (int64_t t = first; t < first + count;) {
    const int slot = int(t % kKvTileTokens);
    const int in_tile = int(std::min<int64_t>(kKvTileTokens - slot, first + count - t));
    float tile[kKvTileTokens * 512];  // [16, d] one dequantized tile (d <= 512)
    for (int value = 0; value < 2; ++value) {
      float* dst = value ? v : k;
      if (!dst) continue;
      if (d > 512) throw InvalidArgument("head dims above 512 are not supported by the KV cache");
      LoadKvTokens(config_.dtype, value, Tile(s, t, value), slot + in_tile, d, tile);
      std::memcpy(dst + (t - first) * d, tile + int64_t(slot) * d, size_t(in_tile) * d * sizeof(float));
    }
    t += in_tile;
  }
}

void PagedKvCache::ReadLayer(int seq, int layer, int64_t first, int64_t count, float* k, float* v) const {
  const int d = config_.head_dim, heads = config_.n_head_kv;
  std::vector<float> hk(k ? size_t(count) * d : 0), hv(v ? size_t(count) * d : 0);  // [count, d] one head
  for (int h = 0; h < heads; ++h) {
    Read(seq, layer, h, first, count, k ? hk.data() : nullptr, v ? hv.data() : nullptr);
    for (int64_t t = 0; t < count; ++t) {
      const int64_t dst = (t * heads + h) * d;
      if (k) std::memcpy(k + dst, &hk[size_t(t) * d], size_t(d) * sizeof(float));
      if (v) std::memcpy(v + dst, &hv[size_t(t) * d], size_t(d) * sizeof(float));
    }
  }
}

double PagedKvCache::bytes_per_token_per_layer() const {
  return double(tile_k_bytes_ + tile_v_bytes_) / kKvTileTokens * config_.n_head_kv;
}

}  // namespace qattn::kv
