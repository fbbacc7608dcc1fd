// ALiBi slopes (Press et al., "Train Short, Test Long", 2022), as the reference implementation and
// Hugging Face models compute them:
//   H a power of two:  slope[h] = 2^(-8 (h + 1) / H)            for h in [0, H)
//   otherwise, with P the largest power of two below H: the P slopes for P heads, followed by
//   every other slope of the 2P-head sequence (indices 0, 2, 4, ...), H - P of them.
// E.g. H = 8: 1/2, 1/4, ..., 1/256. H = 6: the 4-head slopes 1/4, 1/16, 1/64, 1/256, then the
// 8-head slopes 1/2 and 1/8.
#pragma once
#include <vector>

namespace qattn {

std::vector<float> AlibiSlopes(int num_heads);  // [num_heads]; empty for num_heads <= 0

}  // namespace qattn
