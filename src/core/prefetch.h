// Software prefetch of a byte range, for kernels that stream more than the hardware prefetcher
// keeps in flight (decode's K/V blocks, the decode GEMV's weight rows).
#pragma once
#include <cstdint>

namespace qattn {

// Asks for the cache lines of [p, p + bytes) to be loaded into L1. An asm statement on x86: GCC 12
// drops __builtin_prefetch in loops like these as dead code.
inline void PrefetchBytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) {
#if defined(__x86_64__) || defined(__i386__)
    asm volatile("prefetcht0 %0" : : "m"(*(c + b)));
#else
    __builtin_prefetch(c + b);
#endif
  }
}

}  // namespace qattn
