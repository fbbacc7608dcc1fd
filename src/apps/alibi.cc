#include "apps/alibi.h"

#include <cmath>

namespace qattn {
namespace {

std::vector<float> PowerOfTwoSlopes(int n) {
  std::vector<float> s(n);
  for (int h = 0; h < n; ++h) s[h] = float(std::exp2(-8.0 * double(h + 1) / double(n)));
  return s;
}

}  // namespace

std::vector<float> AlibiSlopes(int num_heads) {
  if (num_heads <= 0) return {};
  int p = 1;
  while (p * 2 <= num_heads) p *= 2;
  std::vector<float> slopes = PowerOfTwoSlopes(p);
  if (p == num_heads) return slopes;
  // Interleaving the finer 2P-head sequence keeps the extra heads' slopes between existing ones.
  const std::vector<float> finer = PowerOfTwoSlopes(2 * p);
  for (int i = 0; i < num_heads - p; ++i) slopes.push_back(finer[2 * i]);
  return slopes;
}

}  // namespace qattn
