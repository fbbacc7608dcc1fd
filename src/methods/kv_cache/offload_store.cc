#include "methods/kv_cache/offload_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <stdexcept>

namespace qattn::kv {
namespace {

// Byte-at-a-time CRC-32 table for the reflected IEEE polynomial: [256].
constexpr std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t byte = 0; byte < 256; ++byte) {
    uint32_t crc = byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
    table[byte] = crc;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrcTable = MakeCrcTable();

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string SpillDirectory(const std::string& requested) {
  if (!requested.empty()) return requested;
  const char* tmpdir = std::getenv("TMPDIR");
  return tmpdir && *tmpdir ? tmpdir : "/tmp";
}

// Outcome of writing one whole buffer: ok, or errno and how far it got.
struct WriteResult {
  bool ok = false;
  int error = 0;
  size_t written = 0;
};

// Writes n bytes at `offset`, retrying short writes and EINTR. `cap` (0 = none) simulates a disk
// that holds only `cap` bytes: what fits is written, the rest fails with ENOSPC.
WriteResult WriteFully(int fd, const uint8_t* data, size_t n, uint64_t offset, uint64_t cap) {
  WriteResult result;
  size_t allowed = n;
  if (cap != 0) allowed = offset >= cap ? 0 : size_t(std::min<uint64_t>(n, cap - offset));
  while (result.written < allowed) {
    const ssize_t got = pwrite(fd, data + result.written, allowed - result.written, off_t(offset + result.written));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      result.error = got < 0 ? errno : EIO;  // a 0-byte write of a non-empty buffer makes no progress
      return result;
    }
    result.written += size_t(got);
  }
  if (allowed < n) {
    result.error = ENOSPC;
    return result;
  }
  result.ok = true;
  return result;
}

// Reads up to n bytes at `offset`, retrying short reads and EINTR; returns the count read (less
// than n only at end of file) or -1 with errno set.
ssize_t ReadFully(int fd, uint8_t* data, size_t n, uint64_t offset) {
  size_t done = 0;
  while (done < n) {
    const ssize_t got = pread(fd, data + done, n - done, off_t(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return -1;
    if (got == 0) break;  // end of file
    done += size_t(got);
  }
  return ssize_t(done);
}

std::string BlockInFile(uint32_t id, const std::string& path, uint64_t offset) {
  return "block " + std::to_string(id) + " in " + path + " at offset " + std::to_string(offset);
}

}  // namespace

uint32_t Crc32(const void* data, size_t n) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) crc = kCrcTable[(crc ^ bytes[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

OffloadStore::OffloadStore(const OffloadOptions& options) : options_(options) {
  if (options_.block_bytes == 0) throw std::invalid_argument("OffloadStore: block_bytes must be > 0");
  if (options_.rep_dim <= 0) throw std::invalid_argument("OffloadStore: rep_dim must be > 0");
  // mkostemp creates a new file that no other store or process shares.
  std::string name = SpillDirectory(options_.dir) + "/qattn-kv-offload-XXXXXX";
  fd_ = mkostemp(name.data(), O_CLOEXEC);
  if (fd_ < 0) {
    throw std::runtime_error("OffloadStore: cannot create a spill file " + name + ": " + std::strerror(errno));
  }
  path_ = name;
}

OffloadStore::~OffloadStore() {
  if (fd_ >= 0) close(fd_);
  if (!path_.empty()) unlink(path_.c_str());
}

OffloadStore::Block& OffloadStore::Find(uint32_t id) {
  auto it = blocks_.find(id);
  if (it == blocks_.end()) throw std::out_of_range("OffloadStore: no block " + std::to_string(id));
  return it->second;
}

const OffloadStore::Block& OffloadStore::Find(uint32_t id) const {
  auto it = blocks_.find(id);
  if (it == blocks_.end()) throw std::out_of_range("OffloadStore: no block " + std::to_string(id));
  return it->second;
}

void OffloadStore::Put(uint32_t id, const void* bytes, const float* representative) {
  if (!bytes || !representative) throw std::invalid_argument("OffloadStore::Put: null bytes or representative");
  std::lock_guard<std::mutex> lock(mutex_);
  if (blocks_.count(id)) throw std::invalid_argument("OffloadStore::Put: block " + std::to_string(id) + " exists");
  Block& block = blocks_[id];
  block.representative.assign(representative, representative + options_.rep_dim);
  const auto* first = static_cast<const uint8_t*>(bytes);
  MakeResident(id, block, std::vector<uint8_t>(first, first + options_.block_bytes));
  EnforceMemoryCap(nullptr);
}

void OffloadStore::MakeResident(uint32_t id, Block& block, std::vector<uint8_t>&& bytes) {
  block.bytes = std::move(bytes);
  lru_.push_front(id);
  block.lru_position = lru_.begin();
  bytes_in_memory_ += options_.block_bytes;
}

void OffloadStore::Evict(Block& block) {
  lru_.erase(block.lru_position);
  std::vector<uint8_t>().swap(block.bytes);  // swap, not clear: clear keeps the capacity allocated
  bytes_in_memory_ -= options_.block_bytes;
  ++counters_.evictions;
}

// Appends the block to the file. The index fields (on_disk, offset, crc) change only after the
// whole block is written, so a failure leaves the block as it was: resident and not on disk.
bool OffloadStore::Spill(uint32_t id, Block& block) {
  const auto start = std::chrono::steady_clock::now();
  const uint32_t crc = Crc32(block.bytes.data(), block.bytes.size());
  const uint64_t offset = file_end_;
  const WriteResult result = WriteFully(fd_, block.bytes.data(), block.bytes.size(), offset, options_.file_cap_bytes);
  counters_.spill_seconds += SecondsSince(start);
  if (!result.ok) {
    // Drop the partial tail so the file again ends at the last valid block; if this fails too,
    // the next write simply overwrites those bytes, which belong to no block.
    if (ftruncate(fd_, off_t(file_end_)) != 0) { /* nothing more to undo */ }
    ++counters_.spill_failures;
    counters_.last_spill_error = "OffloadStore: spilling " + BlockInFile(id, path_, offset) + " failed after " +
                                 std::to_string(result.written) + " of " + std::to_string(block.bytes.size()) +
                                 " bytes: " + std::strerror(result.error) + "; the block stays in memory";
    return false;
  }
  file_end_ = offset + block.bytes.size();
  block.file_offset = offset;
  block.crc = crc;
  block.on_disk = true;
  ++counters_.spills;
  return true;
}

// Frees least recently used blocks until the resident bytes fit the cap. `keep` (the block just
// loaded, whose pointer the caller is about to use) is never evicted. A block with no copy on disk
// is written first; after one failed write in a pass the remaining unwritten blocks are skipped
// (the disk is likely full) while written ones can still be freed.
void OffloadStore::EnforceMemoryCap(const Block* keep) {
  bool write_failed = false;
  auto it = lru_.end();
  while (bytes_in_memory_ > options_.memory_cap_bytes && it != lru_.begin()) {
    --it;
    Block& block = blocks_.at(*it);
    if (&block == keep) continue;
    if (!block.on_disk && (write_failed || !Spill(*it, block))) {
      write_failed = true;
      continue;
    }
    auto newer = std::next(it);  // erase invalidates `it`; resume from its successor
    Evict(block);
    it = newer;
  }
}

void OffloadStore::ReadVerified(uint32_t id, const Block& block, std::vector<uint8_t>& out) {
  out.resize(options_.block_bytes);
  const ssize_t got = ReadFully(fd_, out.data(), out.size(), block.file_offset);
  if (got < 0) {
    throw std::runtime_error("OffloadStore: reading " + BlockInFile(id, path_, block.file_offset) +
                             " failed: " + std::strerror(errno));
  }
  if (size_t(got) != out.size()) {
    throw std::runtime_error("OffloadStore: short read of " + BlockInFile(id, path_, block.file_offset) + ": got " +
                             std::to_string(got) + " of " + std::to_string(out.size()) + " bytes");
  }
  const uint32_t crc = Crc32(out.data(), out.size());
  if (crc != block.crc) {
    throw std::runtime_error("OffloadStore: checksum mismatch for " + BlockInFile(id, path_, block.file_offset) +
                             " (stored CRC32 " + std::to_string(block.crc) + ", read " + std::to_string(crc) +
                             "): the spill file is corrupted");
  }
}

const uint8_t* OffloadStore::LoadLocked(uint32_t id) {
  Block& block = Find(id);
  if (!block.bytes.empty()) {
    lru_.splice(lru_.begin(), lru_, block.lru_position);  // most recently used; iterators stay valid
    ++counters_.memory_hits;
    return block.bytes.data();
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<uint8_t> bytes;  // [block_bytes]
  ReadVerified(id, block, bytes);
  counters_.load_seconds += SecondsSince(start);
  ++counters_.loads;
  MakeResident(id, block, std::move(bytes));
  EnforceMemoryCap(&block);
  return block.bytes.data();
}

const uint8_t* OffloadStore::Load(uint32_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  return LoadLocked(id);
}

void OffloadStore::LoadInto(uint32_t id, void* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::memcpy(out, LoadLocked(id), options_.block_bytes);
}

// Raw dot products of the query with every representative, in id order: [blocks].
std::vector<double> OffloadStore::BlockScores(const float* query) const {
  std::vector<double> scores;
  scores.reserve(blocks_.size());
  for (const auto& [id, block] : blocks_) {
    double dot = 0;  // float * float is exact in double; only the sum rounds
    for (int j = 0; j < options_.rep_dim; ++j) dot += double(block.representative[j]) * double(query[j]);
    scores.push_back(dot);
  }
  return scores;
}

std::vector<uint32_t> OffloadStore::Retrieve(const float* query, int topk, int chunk_size) const {
  if (chunk_size < 1) throw std::invalid_argument("OffloadStore::Retrieve: chunk_size must be >= 1");
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<uint32_t> ids;  // [blocks], ascending
  ids.reserve(blocks_.size());
  for (const auto& entry : blocks_) ids.push_back(entry.first);
  if (topk <= 0) return {};
  if (size_t(topk) >= ids.size()) return ids;

  // Per-chunk mean scores (a chunk of 1 is the block itself): [ceil(blocks / chunk_size)].
  const std::vector<double> block_scores = BlockScores(query);
  const size_t num_chunks = (ids.size() + chunk_size - 1) / chunk_size;
  std::vector<double> chunk_scores(num_chunks, 0.0);
  for (size_t c = 0; c < num_chunks; ++c) {
    const size_t first = c * chunk_size, last = std::min(ids.size(), first + chunk_size);
    for (size_t b = first; b < last; ++b) chunk_scores[c] += block_scores[b];
    chunk_scores[c] /= double(last - first);
  }

  const size_t keep = std::min(num_chunks, size_t(std::max(1, topk / chunk_size)));
  std::vector<size_t> order(num_chunks);  // chunk indices, best first after the partial sort
  std::iota(order.begin(), order.end(), size_t(0));
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), [&](size_t a, size_t b) {
    return chunk_scores[a] != chunk_scores[b] ? chunk_scores[a] > chunk_scores[b] : a < b;
  });
  order.resize(keep);
  std::sort(order.begin(), order.end());  // chunks ascending -> their blocks come out ascending

  std::vector<uint32_t> chosen;
  for (size_t c : order) {
    for (size_t b = c * chunk_size; b < std::min(ids.size(), (c + 1) * chunk_size); ++b) chosen.push_back(ids[b]);
  }
  return chosen;
}

bool OffloadStore::Contains(uint32_t id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return blocks_.count(id) != 0;
}

bool OffloadStore::IsResident(uint32_t id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return !Find(id).bytes.empty();
}

bool OffloadStore::IsOnDisk(uint32_t id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return Find(id).on_disk;
}

std::vector<uint32_t> OffloadStore::Ids() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<uint32_t> ids;
  for (const auto& entry : blocks_) ids.push_back(entry.first);
  return ids;
}

std::vector<float> OffloadStore::Representative(uint32_t id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return Find(id).representative;
}

OffloadStats OffloadStore::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  OffloadStats s = counters_;
  s.blocks = blocks_.size();
  s.blocks_in_memory = lru_.size();
  s.bytes_in_memory = bytes_in_memory_;
  s.blocks_on_disk = size_t(std::count_if(blocks_.begin(), blocks_.end(), [](const auto& e) { return e.second.on_disk; }));
  s.bytes_on_disk = s.blocks_on_disk * options_.block_bytes;
  s.file_bytes = file_end_;
  return s;
}

void OffloadStore::SetFileCapForTesting(uint64_t file_cap_bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  options_.file_cap_bytes = file_cap_bytes;
}

}  // namespace qattn::kv
