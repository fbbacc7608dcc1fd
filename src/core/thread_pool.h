// A fixed pool of worker threads for data-parallel loops. The calling thread takes part,
// so a pool of N threads starts N-1 workers. Between loops the workers spin briefly before they
// sleep: attention calls come in quick succession (layer after layer), and waking a sleeping
// thread costs tens of microseconds, more than a short decode step itself.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace qattn {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Runs task(index, thread_id) for index in [0, count); items are handed out dynamically
  // (an atomic counter), so uneven items balance. thread_id is in [0, num_threads()).
  // Not reentrant: a task must not call ParallelFor on the same pool.
  void ParallelFor(int64_t count, const std::function<void(int64_t index, int thread_id)>& task);

  // The process-wide pool; its size is set by SetDefaultThreads (default: hardware threads).
  static ThreadPool& Default();
  static void SetDefaultThreads(int num_threads);

 private:
  void WorkerLoop(int thread_id);
  void RunItems(int thread_id);
  // Waits until `done()` holds: spins first, then sleeps on cv (woken under mutex_).
  template <typename Done>
  void SpinThenWait(std::condition_variable& cv, Done done);

  int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable start_cv_, done_cv_;
  std::atomic<uint64_t> generation_{0};  // bumped once per loop; workers start when it changes
  std::atomic<int> busy_workers_{0};      // workers still inside the current loop
  std::atomic<bool> stopping_{false};
  const std::function<void(int64_t, int)>* task_ = nullptr;
  int64_t count_ = 0;
  std::atomic<int64_t> next_{0};
};

}  // namespace qattn
