// A move-only, zero-initialised byte buffer aligned to 64 bytes (one cache line, one AVX-512 vector).
// Large buffers (KV caches, packed tiles) are aligned to 2 MiB and asked to live on huge pages:
// hardware prefetchers stop at 4 KiB page boundaries, and streaming decode over 4 KiB pages
// measured at under half the memory bandwidth here.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include <sys/mman.h>

namespace qattn {

constexpr size_t kAlignment = 64;
constexpr size_t kHugePageBytes = size_t(2) << 20;

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes) : size_(bytes) {
    if (bytes == 0) return;
    const size_t align = bytes >= kHugePageBytes ? kHugePageBytes : kAlignment;
    const size_t rounded = (bytes + align - 1) / align * align;
    data_ = std::aligned_alloc(align, rounded);
    if (!data_) throw std::bad_alloc();
    if (align == kHugePageBytes) madvise(data_, rounded, MADV_HUGEPAGE);  // a hint; failure is harmless
    std::memset(data_, 0, rounded);
  }
  AlignedBuffer(AlignedBuffer&& o) noexcept { *this = std::move(o); }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  void* data() const { return data_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace qattn
