#include "core/thread_pool.h"

#include <chrono>
#include <memory>

namespace qattn {

namespace {
// About 50 microseconds of polling before a thread goes to sleep.
constexpr auto kSpinTime = std::chrono::microseconds(50);

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

ThreadPool::ThreadPool(int num_threads) : num_threads_(num_threads < 1 ? 1 : num_threads) {
  for (int t = 1; t < num_threads_; ++t) workers_.emplace_back([this, t] { WorkerLoop(t); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_.store(true);
  }
  start_cv_.notify_all();
  for (auto& w : workers_) w.join();
}

template <typename Done>
void ThreadPool::SpinThenWait(std::condition_variable& cv, Done done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
  for (int i = 0; !done(); ++i) {
    CpuRelax();
    if ((i & 63) == 0 && std::chrono::steady_clock::now() > deadline) {
      std::unique_lock<std::mutex> lock(mutex_);
      cv.wait(lock, done);
      return;
    }
  }
}

void ThreadPool::RunItems(int thread_id) {
  for (int64_t i = next_.fetch_add(1); i < count_; i = next_.fetch_add(1)) (*task_)(i, thread_id);
}

void ThreadPool::WorkerLoop(int thread_id) {
  uint64_t seen = 0;
  for (;;) {
    SpinThenWait(start_cv_, [&] { return stopping_.load() || generation_.load(std::memory_order_acquire) != seen; });
    if (stopping_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    RunItems(thread_id);
    if (busy_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);  // pairs with the caller's sleep in SpinThenWait
      done_cv_.notify_one();
    }
  }
}

void ThreadPool::ParallelFor(int64_t count, const std::function<void(int64_t, int)>& task) {
  if (count <= 0) return;
  if (num_threads_ == 1 || count == 1) {
    for (int64_t i = 0; i < count; ++i) task(i, 0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = &task;
    count_ = count;
    next_.store(0);
    busy_workers_.store(int(workers_.size()));
    generation_.fetch_add(1, std::memory_order_release);
  }
  start_cv_.notify_all();
  RunItems(0);
  SpinThenWait(done_cv_, [&] { return busy_workers_.load(std::memory_order_acquire) == 0; });
}

namespace {
std::unique_ptr<ThreadPool>& DefaultSlot() {
  static std::unique_ptr<ThreadPool> pool;
  return pool;
}
}  // namespace

ThreadPool& ThreadPool::Default() {
  auto& slot = DefaultSlot();
  if (!slot) slot = std::make_unique<ThreadPool>(int(std::thread::hardware_concurrency()));
  return *slot;
}

void ThreadPool::SetDefaultThreads(int num_threads) {
  auto& slot = DefaultSlot();
  if (slot && slot->num_threads() == num_threads) return;
  slot = std::make_unique<ThreadPool>(num_threads);
}

}  // namespace qattn
