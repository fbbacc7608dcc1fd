// The thread pool runs every index exactly once, on valid thread ids, call after call.
#include "core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace qattn {
namespace {

// Runs ParallelFor(count) and checks each index ran once, with a thread id below num_threads.
void ExpectEachIndexOnce(ThreadPool& pool, int64_t count) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(count));  // [count] runs per index
  std::atomic<int> bad_thread{0};
  pool.ParallelFor(count, [&](int64_t i, int tid) {
    hits[size_t(i)].fetch_add(1);
    if (tid < 0 || tid >= pool.num_threads()) bad_thread.fetch_add(1);
  });
  for (int64_t i = 0; i < count; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << "index " << i << " of " << count;
  EXPECT_EQ(bad_thread.load(), 0);
}

TEST(ThreadPool, EveryIndexOnce) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t count : {0, 1, 2, 7, 64, 1000, 100000}) ExpectEachIndexOnce(pool, count);
  }
}

TEST(ThreadPool, ManyCallsInARow) {
  ThreadPool pool(4);
  for (int rep = 0; rep < 500; ++rep) ExpectEachIndexOnce(pool, rep % 17);
}

// Pauses longer than the workers' spin time between calls, so they go to sleep and must be woken.
TEST(ThreadPool, WakesSleepingWorkers) {
  ThreadPool pool(3);
  for (int rep = 0; rep < 20; ++rep) {
    std::this_thread::sleep_for(std::chrono::microseconds(rep % 2 ? 300 : 10));
    ExpectEachIndexOnce(pool, 50);
  }
}

TEST(ThreadPool, ClampsThreadCountToOne) {
  ThreadPool pool(0);
  EXPECT_EQ(pool.num_threads(), 1);
  ExpectEachIndexOnce(pool, 10);
}

TEST(ThreadPool, UsesMoreThanOneThreadForSlowItems) {
  ThreadPool pool(2);
  std::mutex m;
  std::set<int> seen;  // thread ids that ran an item
  pool.ParallelFor(64, [&](int64_t, int tid) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::lock_guard<std::mutex> lock(m);
    seen.insert(tid);
  });
  EXPECT_EQ(seen.size(), 2u);
}

TEST(ThreadPool, DefaultPoolFollowsSetDefaultThreads) {
  ThreadPool::SetDefaultThreads(3);
  EXPECT_EQ(ThreadPool::Default().num_threads(), 3);
  ExpectEachIndexOnce(ThreadPool::Default(), 99);
  ThreadPool::SetDefaultThreads(1);
  EXPECT_EQ(ThreadPool::Default().num_threads(), 1);
  ExpectEachIndexOnce(ThreadPool::Default(), 5);
}

}  // namespace
}  // namespace qattn
