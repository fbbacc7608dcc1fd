// The one attention test driver (DESIGN.md, "One reference, one test driver"): every fast path is run
// against the fp64 reference in src/reference under every ISA cap this CPU supports, and held to
//   max|kernel - ref| <= 2 * max|naive same-precision - ref| + 1e-5 * max(1, max|ref|).
// The cases live in prefill_cases.cc, decode_cases.cc and merge_and_blocks_test.cc.
#include <gtest/gtest.h>
#include <malloc.h>

#include <iostream>

#include "test_problem.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  // Each case allocates and frees buffers of tens of MB; keeping them on the heap instead of fresh
  // mmap()s (and page faults) every time roughly halves the run time of the big cases.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  std::cout << "ISA caps under test:";
  for (qattn::Isa isa : qattn::test::SupportedIsas()) std::cout << " " << qattn::IsaName(isa);
  std::cout << "\n";
  return RUN_ALL_TESTS();
}
