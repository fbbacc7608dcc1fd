// ReKV (spec C6) as a decode-time policy: tokens that leave the local window move, a block at a
// time, from the paged cache to an OffloadStore (memory up to a cap, a file beyond it) with one
// representative per block (the block's mean key over its tokens, all KV heads); each decode step
// retrieves the blocks whose representatives best match the step's query (raw dot product) and
// attends over the first n_init tokens + those blocks + the local window.
#include <cstring>
#include <map>
#include <memory>

#include "core/aligned_buffer.h"
#include "methods/kv_cache/kv_policy_internal.h"
#include "methods/kv_cache/offload_store.h"

namespace qattn::kv {
namespace {

class Rekv final : public KvPolicy {
 public:
  explicit Rekv(sparse::MethodOptions& o)
      : block_(o.Int("block", 64)), topk_(int(o.Int("topk", 16))), n_init_(o.Int("n_init", 64)),
        n_local_(o.Int("n_local", 512)), chunk_(int(o.Int("chunk", 1))), memory_mb_(o.Float("memory_mb", 64)),
        dir_(o.String("dir", "")) {
    if (block_ < kKvTileTokens || block_ % kKvTileTokens) throw std::invalid_argument("block must be a multiple of 16");
    if (n_init_ < 0 || n_init_ % kKvTileTokens) throw std::invalid_argument("n_init must be a multiple of 16");
    if (topk_ < 1 || chunk_ < 1 || n_local_ < 1 || memory_mb_ < 0) {
      throw std::invalid_argument("topk, chunk and n_local must be >= 1 and memory_mb >= 0");
    }
  }
  std::string name() const override {
    return "rekv:block=" + std::to_string(block_) + ",topk=" + std::to_string(topk_) + ",n_init=" +
           std::to_string(n_init_) + ",n_local=" + std::to_string(n_local_) + ",chunk=" + std::to_string(chunk_) +
           ",memory_mb=" + std::to_string(memory_mb_).substr(0, 6);
  }
  void Reset() override { layers_.clear(); }
  void AfterPrompt(const LayerRef& at, const float*, int64_t, int64_t, ThreadPool*) override { Offload(at); }
  void SelectForDecode(const LayerRef& at, const float* q, std::vector<int64_t>* offsets, std::vector<KvRun>* runs,
                       ThreadPool*) override {
    Offload(at);
    auto it = layers_.find(at.layer);
    if (it == layers_.end() || it->second.store == nullptr) {
      AllRuns(at, offsets, runs);
      return;
    }
    Layer& state = it->second;
    const std::vector<float> query = RekvQueryVector(q, 1, at.heads);  // [H_kv * d]
    const std::vector<uint32_t> ids = state.store->Retrieve(query.data(), topk_, chunk_);
    state.scratch.resize(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      if (state.scratch[i].size() < state.store->block_bytes()) state.scratch[i] = AlignedBuffer(state.store->block_bytes());
      state.store->LoadInto(ids[i], state.scratch[i].data());
    }
    const int64_t n = at.cache->length(at.seq, at.layer, 0);
    offsets->assign(1, int64_t(runs->size()));
    for (int h = 0; h < at.heads.kv; ++h) {
      at.cache->AppendRunsRange(at.seq, at.layer, h, 0, std::min(n_init_, n), runs);
      for (size_t i = 0; i < ids.size(); ++i) runs->push_back(BlockRun(at, state, ids[i], state.scratch[i], h));
      if (n > n_init_) at.cache->AppendRunsRange(at.seq, at.layer, h, n_init_, n - n_init_, runs);
      offsets->push_back(int64_t(runs->size()));
    }
  }
  KvPolicyStats stats() const override {
    KvPolicyStats s;
    for (const auto& [layer, state] : layers_) {
      if (!state.store) continue;
      const OffloadStats o = state.store->stats();
      s.blocks_in_memory += int64_t(o.blocks_in_memory);
      s.blocks_on_disk += int64_t(o.blocks_on_disk);
      s.bytes_on_disk += double(o.bytes_on_disk);
      s.disk_loads += o.loads;
      s.load_seconds += o.load_seconds;
      s.spill_failures += o.spill_failures;
    }
    return s;
  }

 private:
  struct Layer {
    std::unique_ptr<OffloadStore> store;
    uint32_t next_id = 0;
    std::map<uint32_t, std::vector<int32_t>> positions;  // block id -> [block] positions
    std::vector<AlignedBuffer> scratch;                  // [topk] loaded blocks
  };

  // Bytes of one KV head inside a block: [block/16 K tiles][block/16 V tiles].
  size_t HeadBytes(const PagedKvCache& c) const {
    return size_t(block_ / kKvTileTokens) * size_t(c.tile_k_bytes() + c.tile_v_bytes());
  }

  KvRun BlockRun(const LayerRef& at, const Layer& state, uint32_t id, const AlignedBuffer& bytes, int head) const {
    const PagedKvCache& c = *at.cache;
    const uint8_t* base = bytes.as<uint8_t>() + size_t(head) * HeadBytes(c);
    KvRun run;
    run.k = base;
    run.v = base + size_t(block_ / kKvTileTokens) * c.tile_k_bytes();
    run.tokens = int32_t(block_);
    run.positions = state.positions.at(id).data();
    run.position = run.positions[0];
    return run;
  }

  // Moves every complete block that has left the local window out of the paged cache.
  void Offload(const LayerRef& at) {
    PagedKvCache& c = *at.cache;
    const int64_t n = c.length(at.seq, at.layer, 0);
    const int64_t blocks = n > n_init_ + n_local_ ? (n - n_init_ - n_local_) / block_ : 0;
    if (blocks == 0) return;
    Layer& state = layers_[at.layer];
    if (!state.store) {
      OffloadOptions o;
      o.block_bytes = HeadBytes(c) * at.heads.kv;
      o.rep_dim = at.heads.kv * at.heads.dim;
      o.memory_cap_bytes = size_t(memory_mb_ * 1048576.0 / c.config().n_layer);
      o.dir = dir_;
      state.store = std::make_unique<OffloadStore>(o);
    }
    std::vector<uint8_t> bytes(state.store->block_bytes());  // [H_kv][K tiles, V tiles]
    std::vector<float> keys(size_t(block_) * at.heads.kv * at.heads.dim);  // [block, H_kv, d]
    const std::vector<int32_t>& pos = c.positions(at.seq, at.layer, 0);
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t first = n_init_ + b * block_;
      for (int h = 0; h < at.heads.kv; ++h) CopyBlockHead(at, h, first, bytes.data() + size_t(h) * HeadBytes(c));
      c.ReadLayer(at.seq, at.layer, first, block_, keys.data(), nullptr);
      const std::vector<float> rep = RekvBlockRepresentative(keys.data(), block_, at.heads.kv, at.heads.dim);
      state.positions[state.next_id].assign(pos.begin() + first, pos.begin() + first + block_);
      state.store->Put(state.next_id++, bytes.data(), rep.data());
    }
    std::vector<int32_t> keep;  // the first n_init tokens and everything after the moved blocks
    for (int64_t t = 0; t < n; ++t) {
      if (t < n_init_ || t >= n_init_ + blocks * block_) keep.push_back(int32_t(t));
    }
    for (int h = 0; h < at.heads.kv; ++h) c.Keep(at.seq, at.layer, h, keep);
  }

  // Copies the K then the V tiles of tokens [first, first + block) of one head to out.
  void CopyBlockHead(const LayerRef& at, int head, int64_t first, uint8_t* out) const {
    const PagedKvCache& c = *at.cache;
    std::vector<KvRun> runs;
    c.AppendRunsRange(at.seq, at.layer, head, first, block_, &runs);
    uint8_t* k_out = out;
    uint8_t* v_out = out + size_t(block_ / kKvTileTokens) * c.tile_k_bytes();
    for (const KvRun& r : runs) {
      const size_t tiles = size_t(r.tokens) / kKvTileTokens;
      std::memcpy(k_out, r.k, tiles * c.tile_k_bytes());
      std::memcpy(v_out, r.v, tiles * c.tile_v_bytes());
      k_out += tiles * c.tile_k_bytes();
      v_out += tiles * c.tile_v_bytes();
    }
  }

  int64_t block_;
  int topk_;
  int64_t n_init_, n_local_;
  int chunk_;
  double memory_mb_;
  std::string dir_;
  std::map<int, Layer> layers_;
};

}  // namespace

std::unique_ptr<KvPolicy> MakeRekvPolicy(sparse::MethodOptions& options) { return std::make_unique<Rekv>(options); }

}  // namespace qattn::kv
