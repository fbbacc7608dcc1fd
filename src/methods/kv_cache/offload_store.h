// ReKV's block store (spec C6): fixed-size KV blocks held in memory up to a cap and spilled to a
// file beyond it, one representative vector per block kept in memory for retrieval by raw dot
// product, and reads back from the file checked with a CRC32.
//
// A block is the K and V bytes of `block_tokens` tokens of one layer, all KV heads; the store does
// not interpret them. Blocks are immutable once added. Ids are the caller's (ReKV: the block's
// position in the stream), and "consecutive blocks" for chunked retrieval means consecutive in
// ascending id order.
//
// Failure policy: the file is append-only and an index entry points at a file region only after
// the whole block was written there, so a failed write (full disk, I/O error, short write) leaves
// the block resident in memory (the memory cap is then exceeded until a later spill succeeds),
// counts a failure and keeps the message. A read that is short or fails its checksum throws
// std::runtime_error naming the file and the block; it never hands out unverified bytes.
//
// Thread safety: every public method takes one internal mutex, so calls from several threads are
// safe. The pointer Load returns stays valid only until the next Put or Load on this store (either
// may evict the block); threads sharing a store should use LoadInto instead.
#pragma once
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace qattn::kv {

// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, the zlib / PNG checksum) of n bytes.
uint32_t Crc32(const void* data, size_t n);

struct OffloadOptions {
  size_t block_bytes = 0;       // bytes of one block (> 0)
  int rep_dim = 0;              // floats per representative vector (ReKV: H_kv * d), > 0
  size_t memory_cap_bytes = 0;  // resident block bytes allowed; least recently used blocks beyond it go to disk
  std::string dir;              // directory of the spill file; empty = $TMPDIR, or /tmp without it
  // Failure injection for tests: a write that would grow the file past this many bytes writes what
  // fits and then fails with ENOSPC, like a full disk. 0 = no cap.
  uint64_t file_cap_bytes = 0;
};

struct OffloadStats {
  size_t blocks = 0;             // blocks in the store
  size_t blocks_in_memory = 0;   // resident blocks
  size_t bytes_in_memory = 0;    // blocks_in_memory * block_bytes (representatives not counted)
  size_t blocks_on_disk = 0;     // blocks with a verified-written copy in the file
  size_t bytes_on_disk = 0;      // blocks_on_disk * block_bytes
  uint64_t file_bytes = 0;       // end of the last successful write = bytes the file should hold
  int64_t spills = 0;            // successful block writes
  int64_t spill_failures = 0;    // failed block writes (block kept in memory)
  int64_t evictions = 0;         // blocks whose memory was freed
  int64_t loads = 0;             // Load / LoadInto calls that read the file
  int64_t memory_hits = 0;       // Load / LoadInto calls served from memory
  double load_seconds = 0;       // wall time spent reading and verifying blocks from the file
  double spill_seconds = 0;      // wall time spent writing blocks (failed writes included)
  std::string last_spill_error;  // message of the latest failed write; empty when none failed
};

class OffloadStore {
 public:
  // Creates a fresh spill file in the directory (throws std::runtime_error when it cannot) and
  // validates the options (std::invalid_argument).
  explicit OffloadStore(const OffloadOptions& options);
  // Closes and removes the spill file.
  ~OffloadStore();
  OffloadStore(const OffloadStore&) = delete;
  OffloadStore& operator=(const OffloadStore&) = delete;

  // Adds block `id`: copies block_bytes bytes and rep_dim floats (the representative). The block
  // starts resident and most recently used; older blocks may be spilled. Throws
  // std::invalid_argument when the id is already present.
  void Put(uint32_t id, const void* bytes, const float* representative);
  // The block's bytes [block_bytes], read back from the file when not resident (the block becomes
  // resident and most recently used). Valid until the next Put or Load. Throws std::out_of_range
  // for an unknown id and std::runtime_error for a short read or a checksum mismatch.
  const uint8_t* Load(uint32_t id);
  // Like Load, but copies the bytes to out[block_bytes] under the lock.
  void LoadInto(uint32_t id, void* out);

  // Ids of the blocks chosen for a query [rep_dim], ascending. Scores are raw dot products with
  // the representatives (not cosine, spec C6 step 3), accumulated in fp64. chunk_size == 1: the
  // topk best blocks. chunk_size > 1: scores are averaged over chunks of chunk_size consecutive
  // blocks (a final partial chunk over its true count) and max(1, topk / chunk_size) best chunks
  // give all their blocks. topk >= blocks returns every block; topk <= 0 returns none. Ties go to
  // the lower id.
  std::vector<uint32_t> Retrieve(const float* query, int topk, int chunk_size = 1) const;

  bool Contains(uint32_t id) const;
  bool IsResident(uint32_t id) const;
  bool IsOnDisk(uint32_t id) const;
  std::vector<uint32_t> Ids() const;                     // ascending
  std::vector<float> Representative(uint32_t id) const;  // [rep_dim]; std::out_of_range if unknown
  OffloadStats stats() const;
  const std::string& file_path() const { return path_; }
  size_t block_bytes() const { return options_.block_bytes; }
  int rep_dim() const { return options_.rep_dim; }

  // Test hook: changes the simulated disk size (0 = no cap), e.g. to "free space" after failures.
  void SetFileCapForTesting(uint64_t file_cap_bytes);

 private:
  struct Block {
    std::vector<float> representative;  // [rep_dim]
    std::vector<uint8_t> bytes;         // [block_bytes] while resident, empty otherwise
    bool on_disk = false;               // a complete, checksummed copy sits at file_offset
    uint64_t file_offset = 0;
    uint32_t crc = 0;                                  // CRC32 of the bytes, set with on_disk
    std::list<uint32_t>::iterator lru_position;        // valid while resident
  };

  Block& Find(uint32_t id);
  const Block& Find(uint32_t id) const;
  const uint8_t* LoadLocked(uint32_t id);
  void ReadVerified(uint32_t id, const Block& block, std::vector<uint8_t>& out);
  bool Spill(uint32_t id, Block& block);
  void MakeResident(uint32_t id, Block& block, std::vector<uint8_t>&& bytes);
  void Evict(Block& block);
  void EnforceMemoryCap(const Block* keep);
  std::vector<double> BlockScores(const float* query) const;

  OffloadOptions options_;
  std::string path_;                   // the spill file
  int fd_ = -1;
  uint64_t file_end_ = 0;              // next write offset: every byte before it belongs to a valid block
  std::map<uint32_t, Block> blocks_;   // sorted by id, so chunks of consecutive ids are adjacent
  std::list<uint32_t> lru_;            // resident ids, most recently used first
  size_t bytes_in_memory_ = 0;
  OffloadStats counters_;              // the counting fields; sizes are filled in by stats()
  mutable std::mutex mutex_;
};

}  // namespace qattn::kv
