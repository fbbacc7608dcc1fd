// The ReKV disk offload store: bit-exact round trips under a small memory cap, LRU residency,
// retrieval against an fp64 top-k written here, chunk averaging, failure injection (a simulated
// full disk and a real RLIMIT_FSIZE in a forked child), corrupted and truncated files, cleanup.
#include "methods/kv_cache/offload_store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <set>
#include <thread>

namespace qattn::kv {
namespace {

namespace fs = std::filesystem;

// A fresh directory for one test's spill file, removed with everything in it afterwards.
class TempDir {
 public:
  TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/qattn-kv-test-XXXXXX";
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Random block contents and representatives for n blocks.
struct RandomBlocks {
  size_t block_bytes;
  int rep_dim;
  std::vector<std::vector<uint8_t>> bytes;  // [n][block_bytes]
  std::vector<std::vector<float>> reps;     // [n][rep_dim]

  RandomBlocks(int n, size_t block_bytes_, int rep_dim_, uint32_t seed) : block_bytes(block_bytes_), rep_dim(rep_dim_) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    for (int i = 0; i < n; ++i) {
      bytes.emplace_back(block_bytes);
      for (auto& b : bytes.back()) b = uint8_t(rng());
      reps.emplace_back(rep_dim);
      for (auto& r : reps.back()) r = normal(rng);
    }
  }
};

OffloadOptions Options(const TempDir& dir, size_t block_bytes, int rep_dim, size_t cap_blocks) {
  OffloadOptions o;
  o.block_bytes = block_bytes;
  o.rep_dim = rep_dim;
  o.memory_cap_bytes = cap_blocks * block_bytes;
  o.dir = dir.path();
  return o;
}

void PutAll(OffloadStore& store, const RandomBlocks& blocks) {
  for (size_t i = 0; i < blocks.bytes.size(); ++i) store.Put(uint32_t(i), blocks.bytes[i].data(), blocks.reps[i].data());
}

bool LoadsExactly(OffloadStore& store, uint32_t id, const std::vector<uint8_t>& expected) {
  return std::memcmp(store.Load(id), expected.data(), expected.size()) == 0;
}

std::set<uint32_t> ResidentIds(const OffloadStore& store) {
  std::set<uint32_t> resident;
  for (uint32_t id : store.Ids()) {
    if (store.IsResident(id)) resident.insert(id);
  }
  return resident;
}

uint64_t FileSize(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return ~uint64_t(0);
  return uint64_t(st.st_size);
}

TEST(OffloadStore, Crc32MatchesTheStandardCheckValue) {
  const char* check = "123456789";
  EXPECT_EQ(Crc32(check, 9), 0xCBF43926u);  // the published CRC-32/ISO-HDLC check value
  EXPECT_EQ(Crc32(check, 0), 0u);
}

TEST(OffloadStore, RejectsBadOptionsAndIds) {
  TempDir dir;
  OffloadOptions bad = Options(dir, 0, 4, 1);
  EXPECT_THROW(OffloadStore{bad}, std::invalid_argument);
  bad = Options(dir, 16, 0, 1);
  EXPECT_THROW(OffloadStore{bad}, std::invalid_argument);
  OffloadOptions missing_dir = Options(dir, 16, 4, 1);
  missing_dir.dir = dir.path() + "/does-not-exist";
  EXPECT_THROW(OffloadStore{missing_dir}, std::runtime_error);

  OffloadStore store(Options(dir, 16, 4, 1));
  RandomBlocks blocks(1, 16, 4, 1);
  store.Put(5, blocks.bytes[0].data(), blocks.reps[0].data());
  EXPECT_THROW(store.Put(5, blocks.bytes[0].data(), blocks.reps[0].data()), std::invalid_argument);
  EXPECT_THROW(store.Load(6), std::out_of_range);
  EXPECT_THROW(store.Retrieve(blocks.reps[0].data(), 1, 0), std::invalid_argument);
}

// 300 blocks of an odd size through a cap of 7 blocks: nearly everything spills and reloads.
TEST(OffloadStore, RoundTripIsBitExactUnderASmallMemoryCap) {
  TempDir dir;
  const size_t block_bytes = 1031, cap_blocks = 7;
  RandomBlocks blocks(300, block_bytes, 8, 11);
  OffloadStore store(Options(dir, block_bytes, 8, cap_blocks));
  PutAll(store, blocks);

  OffloadStats s = store.stats();
  EXPECT_EQ(s.blocks, 300u);
  EXPECT_EQ(s.blocks_in_memory, cap_blocks);
  EXPECT_EQ(s.bytes_in_memory, cap_blocks * block_bytes);
  EXPECT_EQ(s.spills, 300 - int64_t(cap_blocks));
  EXPECT_EQ(s.spill_failures, 0);
  EXPECT_EQ(s.file_bytes, uint64_t(s.spills) * block_bytes);
  EXPECT_EQ(FileSize(store.file_path()), s.file_bytes);

  std::mt19937 rng(5);
  std::vector<uint32_t> order(300);
  std::iota(order.begin(), order.end(), 0u);
  for (int pass = 0; pass < 3; ++pass) {
    std::shuffle(order.begin(), order.end(), rng);
    for (uint32_t id : order) {
      ASSERT_TRUE(LoadsExactly(store, id, blocks.bytes[id])) << "block " << id << " pass " << pass;
      ASSERT_LE(store.stats().bytes_in_memory, cap_blocks * block_bytes);
    }
  }
  std::vector<uint8_t> copy(block_bytes);  // [block_bytes]
  store.LoadInto(123, copy.data());
  EXPECT_EQ(copy, blocks.bytes[123]);

  s = store.stats();
  EXPECT_GT(s.loads, 800);  // 3 passes x 300 loads, few of them hits with 7 resident
  EXPECT_EQ(s.loads + s.memory_hits, 901);
  EXPECT_GT(s.load_seconds, 0.0);
  // Each block was written exactly once: the 7 never-written ones when reloads pushed them out,
  // and reloaded blocks are clean copies of the file, so they are freed without a rewrite.
  EXPECT_EQ(s.spills, 300);
  EXPECT_EQ(s.blocks_on_disk, 300u);
  EXPECT_EQ(FileSize(store.file_path()), 300 * block_bytes);
}

TEST(OffloadStore, LeastRecentlyUsedBlocksLeaveMemoryFirst) {
  TempDir dir;
  RandomBlocks blocks(6, 64, 4, 3);
  OffloadStore store(Options(dir, 64, 4, 3));
  PutAll(store, blocks);
  EXPECT_EQ(ResidentIds(store), (std::set<uint32_t>{3, 4, 5}));

  ASSERT_TRUE(LoadsExactly(store, 0, blocks.bytes[0]));  // order now 0,5,4,3 -> 3 leaves
  EXPECT_EQ(ResidentIds(store), (std::set<uint32_t>{0, 4, 5}));
  ASSERT_TRUE(LoadsExactly(store, 4, blocks.bytes[4]));  // a hit: order 4,0,5
  ASSERT_TRUE(LoadsExactly(store, 1, blocks.bytes[1]));  // 5 is least recent now, not 4
  EXPECT_EQ(ResidentIds(store), (std::set<uint32_t>{0, 1, 4}));
  EXPECT_EQ(store.stats().memory_hits, 1);
}

// The block just loaded stays usable even when the cap is smaller than one block.
TEST(OffloadStore, ZeroCapKeepsOnlyTheBlockJustLoaded) {
  TempDir dir;
  RandomBlocks blocks(4, 100, 2, 9);
  OffloadStore store(Options(dir, 100, 2, 0));
  PutAll(store, blocks);
  EXPECT_EQ(store.stats().blocks_in_memory, 0u);
  for (uint32_t id = 0; id < 4; ++id) {
    ASSERT_TRUE(LoadsExactly(store, id, blocks.bytes[id]));
    EXPECT_EQ(ResidentIds(store), (std::set<uint32_t>{id}));
  }
}

// fp64 top-k written independently: sort every (score, id) pair, best first, ties to lower id.
std::vector<uint32_t> NaiveTopK(const std::vector<uint32_t>& ids, const std::vector<std::vector<float>>& reps,
                                const std::vector<float>& query, int topk, int chunk_size) {
  const size_t n = ids.size();
  if (topk <= 0) return {};
  if (size_t(topk) >= n) return ids;
  std::vector<double> block_score(n);  // [n]
  for (size_t b = 0; b < n; ++b) {
    for (size_t j = 0; j < query.size(); ++j) block_score[b] += double(reps[b][j]) * double(query[j]);
  }
  std::vector<std::pair<double, size_t>> chunks;  // (-mean score, chunk index)
  for (size_t first = 0; first < n; first += chunk_size) {
    const size_t last = std::min(n, first + chunk_size);
    double sum = 0;
    for (size_t b = first; b < last; ++b) sum += block_score[b];
    chunks.push_back({-sum / double(last - first), first / chunk_size});
  }
  std::sort(chunks.begin(), chunks.end());
  const size_t keep = std::min(chunks.size(), size_t(std::max(1, topk / chunk_size)));
  std::vector<uint32_t> chosen;
  for (size_t c = 0; c < keep; ++c) {
    const size_t first = chunks[c].second * chunk_size;
    for (size_t b = first; b < std::min(n, first + chunk_size); ++b) chosen.push_back(ids[b]);
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

TEST(OffloadStore, RetrievalMatchesAnFp64TopK) {
  TempDir dir;
  const int n = 97, rep_dim = 48;
  RandomBlocks blocks(n, 32, rep_dim, 21);
  OffloadStore store(Options(dir, 32, rep_dim, 10));
  // Sparse ids inserted in shuffled order: "consecutive" must mean ascending id, not insertion.
  std::vector<uint32_t> ids(n);  // [n], ascending
  for (int i = 0; i < n; ++i) ids[i] = uint32_t(3 * i + 7);
  std::vector<int> insertion(n);
  std::iota(insertion.begin(), insertion.end(), 0);
  std::shuffle(insertion.begin(), insertion.end(), std::mt19937(2));
  for (int i : insertion) store.Put(ids[i], blocks.bytes[i].data(), blocks.reps[i].data());

  std::mt19937 rng(8);
  std::normal_distribution<float> normal;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> query(rep_dim);  // [rep_dim]
    for (auto& q : query) q = normal(rng);
    for (int chunk_size : {1, 2, 3, 5}) {
      for (int topk : {1, 4, 10, 33, 96}) {
        EXPECT_EQ(store.Retrieve(query.data(), topk, chunk_size), NaiveTopK(ids, blocks.reps, query, topk, chunk_size))
            << "trial " << trial << " topk " << topk << " chunk " << chunk_size;
      }
    }
  }
}

TEST(OffloadStore, RetrievalFindsAPlantedBlockByDotProductNotCosine) {
  TempDir dir;
  const int n = 200, rep_dim = 64;
  RandomBlocks blocks(n, 16, rep_dim, 4);
  std::vector<float> query = blocks.reps[0];  // [rep_dim]: a random direction
  // Block 137 points along the query with twice its norm: the best dot product by far.
  for (int j = 0; j < rep_dim; ++j) blocks.reps[137][j] = 2 * query[j];
  OffloadStore planted(Options(dir, 16, rep_dim, 4));
  PutAll(planted, blocks);
  EXPECT_EQ(planted.Retrieve(query.data(), 1), std::vector<uint32_t>{137});

  // Cosine would pick block 0 (exactly parallel); the dot product picks 1 (longer, less aligned).
  std::vector<float> parallel = query, longer(rep_dim);  // [rep_dim] each
  for (int j = 0; j < rep_dim; ++j) longer[j] = 3 * query[j] + (j % 2 ? 1.0f : -1.0f);
  OffloadStore two(Options(dir, 16, rep_dim, 4));
  two.Put(0, blocks.bytes[0].data(), parallel.data());
  two.Put(1, blocks.bytes[1].data(), longer.data());
  two.Put(2, blocks.bytes[2].data(), blocks.reps[2].data());
  EXPECT_EQ(two.Retrieve(query.data(), 1), std::vector<uint32_t>{1});
}

// Scores (query = 1, rep_dim = 1) are the representatives themselves: 0 10 0 0 4 4.
TEST(OffloadStore, ChunkAveragingSelectsWholeChunks) {
  TempDir dir;
  const float scores[6] = {0, 10, 0, 0, 4, 4};
  const uint8_t bytes[8] = {};
  OffloadStore store(Options(dir, 8, 1, 6));
  for (uint32_t id = 0; id < 6; ++id) store.Put(id, bytes, &scores[id]);
  const float query = 1;
  EXPECT_EQ(store.Retrieve(&query, 2, 1), (std::vector<uint32_t>{1, 4}));  // 10, then 4 (tie: lower id)
  EXPECT_EQ(store.Retrieve(&query, 2, 2), (std::vector<uint32_t>{0, 1}));  // chunk means 5, 0, 4
  EXPECT_EQ(store.Retrieve(&query, 4, 2), (std::vector<uint32_t>{0, 1, 4, 5}));
  // Chunks {0..3} mean 2.5 and {4, 5} mean 4: a partial chunk averages over its true count (over
  // 4 it would be 2 and lose).
  EXPECT_EQ(store.Retrieve(&query, 4, 4), (std::vector<uint32_t>{4, 5}));
  EXPECT_EQ(store.Retrieve(&query, 1, 2), (std::vector<uint32_t>{0, 1}));  // topk < chunk: one chunk
}

TEST(OffloadStore, TopKAtLeastTheBlockCountReturnsEveryBlock) {
  TempDir dir;
  RandomBlocks blocks(9, 8, 3, 6);
  OffloadStore store(Options(dir, 8, 3, 2));
  for (uint32_t i : {8u, 2u, 5u, 0u, 7u, 1u, 6u, 3u, 4u}) store.Put(i * 10, blocks.bytes[i].data(), blocks.reps[i].data());
  const std::vector<uint32_t> all = {0, 10, 20, 30, 40, 50, 60, 70, 80};
  for (int topk : {9, 10, 1000}) {
    EXPECT_EQ(store.Retrieve(blocks.reps[0].data(), topk), all);
    EXPECT_EQ(store.Retrieve(blocks.reps[0].data(), topk, 4), all);
  }
  EXPECT_TRUE(store.Retrieve(blocks.reps[0].data(), 0).empty());
  EXPECT_EQ(store.Retrieve(blocks.reps[0].data(), 8).size(), 8u);
}

// A disk that holds 5.5 blocks: the sixth spill fails half way. Nothing may be lost, the file must
// end at the last good block, and once space "frees up" spilling resumes where it stopped.
TEST(OffloadStore, FullDiskKeepsBlocksInMemoryAndReportsTheError) {
  TempDir dir;
  const size_t block_bytes = 4096;
  RandomBlocks blocks(12, block_bytes, 4, 17);
  OffloadOptions options = Options(dir, block_bytes, 4, 2);
  options.file_cap_bytes = 5 * block_bytes + block_bytes / 2;
  OffloadStore store(options);
  PutAll(store, blocks);

  OffloadStats s = store.stats();
  EXPECT_EQ(s.spills, 5);
  EXPECT_GT(s.spill_failures, 0);
  EXPECT_EQ(s.blocks_in_memory, 12u - 5u);  // the cap (2) is exceeded rather than losing blocks
  EXPECT_EQ(s.file_bytes, 5 * block_bytes);
  EXPECT_EQ(FileSize(store.file_path()), 5 * block_bytes);  // the partial write was cut off
  EXPECT_NE(s.last_spill_error.find(std::strerror(ENOSPC)), std::string::npos) << s.last_spill_error;
  EXPECT_NE(s.last_spill_error.find(store.file_path()), std::string::npos) << s.last_spill_error;
  EXPECT_NE(s.last_spill_error.find("2048 of 4096"), std::string::npos) << s.last_spill_error;

  for (uint32_t id = 0; id < 12; ++id) ASSERT_TRUE(LoadsExactly(store, id, blocks.bytes[id])) << "block " << id;

  store.SetFileCapForTesting(0);
  RandomBlocks extra(1, block_bytes, 4, 18);
  store.Put(12, extra.bytes[0].data(), extra.reps[0].data());  // spills the backlog down to the cap
  s = store.stats();
  EXPECT_EQ(s.blocks_in_memory, 2u);
  EXPECT_EQ(s.blocks_on_disk, 11u);
  EXPECT_EQ(s.file_bytes, uint64_t(s.spills) * block_bytes);
  EXPECT_EQ(FileSize(store.file_path()), s.file_bytes);
  for (uint32_t id = 0; id < 12; ++id) ASSERT_TRUE(LoadsExactly(store, id, blocks.bytes[id])) << "block " << id;
  ASSERT_TRUE(LoadsExactly(store, 12, extra.bytes[0]));
}

// The scenario of the full-disk test under a real RLIMIT_FSIZE; returns 0 or the failed check.
int RealFileSizeLimitScenario(const std::string& dir_path) {
  const size_t block_bytes = 4096;
  signal(SIGXFSZ, SIG_IGN);  // writes past the limit then fail with EFBIG instead of killing us
  rlimit limit{};
  if (getrlimit(RLIMIT_FSIZE, &limit) != 0) return 10;
  limit.rlim_cur = 3 * block_bytes + 1000;
  if (setrlimit(RLIMIT_FSIZE, &limit) != 0) return 11;

  RandomBlocks blocks(10, block_bytes, 4, 23);
  OffloadOptions options;
  options.block_bytes = block_bytes;
  options.rep_dim = 4;
  options.memory_cap_bytes = block_bytes;
  options.dir = dir_path;
  OffloadStore store(options);
  PutAll(store, blocks);
  const OffloadStats s = store.stats();
  if (s.spills != 3) return 12;
  if (s.spill_failures == 0) return 13;
  if (s.last_spill_error.find(std::strerror(EFBIG)) == std::string::npos) return 14;
  if (FileSize(store.file_path()) != 3 * block_bytes) return 15;
  for (uint32_t id = 0; id < 10; ++id) {
    if (!LoadsExactly(store, id, blocks.bytes[id])) return 16;
  }
  return 0;
}

TEST(OffloadStore, RealFileSizeLimitInAForkedChild) {
  TempDir dir;
  const pid_t child = fork();
  ASSERT_GE(child, 0) << "fork failed";
  if (child == 0) {
    int code = 20;
    try {
      code = RealFileSizeLimitScenario(dir.path());
    } catch (...) {
      code = 21;
    }
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "failed check code (see RealFileSizeLimitScenario)";
}

void FlipByte(const std::string& path, uint64_t offset) {
  FILE* f = std::fopen(path.c_str(), "r+b");
  ASSERT_NE(f, nullptr);
  std::fseek(f, long(offset), SEEK_SET);
  const int byte = std::fgetc(f);
  std::fseek(f, long(offset), SEEK_SET);
  std::fputc(byte ^ 0x40, f);
  std::fclose(f);
}

TEST(OffloadStore, CorruptedByteMakesExactlyThatBlockThrow) {
  TempDir dir;
  const size_t block_bytes = 500;
  RandomBlocks blocks(10, block_bytes, 2, 31);
  OffloadStore store(Options(dir, block_bytes, 2, 0));  // cap 0: every block goes to the file
  PutAll(store, blocks);
  FlipByte(store.file_path(), 6 * block_bytes + 77);  // some block's byte; which is the store's business

  int failures = 0;
  for (uint32_t id = 0; id < 10; ++id) {
    try {
      ASSERT_TRUE(LoadsExactly(store, id, blocks.bytes[id])) << "garbage returned for block " << id;
    } catch (const std::runtime_error& e) {
      ++failures;
      const std::string message = e.what();
      EXPECT_NE(message.find("checksum mismatch"), std::string::npos) << message;
      EXPECT_NE(message.find("block " + std::to_string(id) + " "), std::string::npos) << message;
      EXPECT_NE(message.find(store.file_path()), std::string::npos) << message;
      EXPECT_FALSE(store.IsResident(id));
      EXPECT_THROW(store.Load(id), std::runtime_error);  // still refused, never cached as valid
    }
  }
  EXPECT_EQ(failures, 1);
}

TEST(OffloadStore, TruncatedFileGivesAShortReadError) {
  TempDir dir;
  const size_t block_bytes = 256;
  RandomBlocks blocks(4, block_bytes, 2, 37);
  OffloadStore store(Options(dir, block_bytes, 2, 0));
  PutAll(store, blocks);
  ASSERT_EQ(truncate(store.file_path().c_str(), off_t(4 * block_bytes - 10)), 0);
  int short_reads = 0;
  for (uint32_t id = 0; id < 4; ++id) {
    try {
      ASSERT_TRUE(LoadsExactly(store, id, blocks.bytes[id]));
    } catch (const std::runtime_error& e) {
      ++short_reads;
      EXPECT_NE(std::string(e.what()).find("short read"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("246 of 256"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(short_reads, 1);
}

TEST(OffloadStore, DestructionRemovesTheFileAndTmpdirIsRespected) {
  TempDir dir;
  const char* old = std::getenv("TMPDIR");
  const std::string saved = old ? old : "";
  setenv("TMPDIR", dir.path().c_str(), 1);
  std::string path;
  {
    OffloadOptions options;  // no dir: TMPDIR decides
    options.block_bytes = 8;
    options.rep_dim = 1;
    OffloadStore store(options);
    path = store.file_path();
    EXPECT_TRUE(fs::exists(path));
  }
  if (old) setenv("TMPDIR", saved.c_str(), 1); else unsetenv("TMPDIR");
  EXPECT_EQ(fs::path(path).parent_path(), fs::path(dir.path()));
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

// Several threads copying blocks out while others evict them: every copy must be exact.
TEST(OffloadStore, ConcurrentLoadIntoIsExact) {
  TempDir dir;
  const size_t block_bytes = 777;
  RandomBlocks blocks(40, block_bytes, 2, 41);
  OffloadStore store(Options(dir, block_bytes, 2, 3));
  PutAll(store, blocks);
  std::vector<int> mismatches(4, 0);  // [threads]
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      std::vector<uint8_t> out(block_bytes);  // [block_bytes]
      for (int i = 0; i < 300; ++i) {
        const uint32_t id = rng() % 40;
        store.LoadInto(id, out.data());
        mismatches[t] += out != blocks.bytes[id];
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(std::accumulate(mismatches.begin(), mismatches.end(), 0), 0);
  EXPECT_LE(store.stats().bytes_in_memory, 3 * block_bytes);
}

}  // namespace
}  // namespace qattn::kv
