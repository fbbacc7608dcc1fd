// Head maps, variants, block lists and FLOP counting: the bookkeeping around the skeleton.
#include <cmath>
#include <numeric>

#include "kernels/attention.h"
#include "kernels/variant_mask.h"

namespace qattn {

int HeadMap::shared_group() const {
  return std::gcd(num_q_heads / num_k_heads, num_q_heads / num_v_heads);
}

void HeadMap::Validate() const {
  if (num_q_heads < 1 || num_k_heads < 1 || num_v_heads < 1)
    throw InvalidArgument("head counts must be at least 1 (got H_q=" + std::to_string(num_q_heads) +
                          ", H_k=" + std::to_string(num_k_heads) + ", H_v=" + std::to_string(num_v_heads) + ")");
  if (num_q_heads % num_k_heads != 0)
    throw InvalidArgument("H_q=" + std::to_string(num_q_heads) + " is not a multiple of H_k=" +
                          std::to_string(num_k_heads));
  if (num_q_heads % num_v_heads != 0)
    throw InvalidArgument("H_q=" + std::to_string(num_q_heads) + " is not a multiple of H_v=" +
                          std::to_string(num_v_heads));
}

float AttentionVariant::EffectiveScale(int d_qk) const {
  return scale != 0.0f ? scale : 1.0f / std::sqrt(float(d_qk));
}

int BlockList::list_index(int q_head, const HeadMap& map, int q_block_index) const {
  int head = 0;
  if (heads == map.num_q_heads) head = q_head;
  else if (heads == map.num_k_heads) head = map.k_head(q_head);
  return head * num_q_blocks + q_block_index;
}

void BlockList::Validate(int64_t n_q, int64_t n_kv, const HeadMap& map) const {
  auto fail = [](const std::string& what) { throw InvalidArgument("block list: " + what); };
  if (q_block < 1 || kv_block < 16 || kv_block % 16 != 0 || kv_block > 1024)
    fail("kv_block must be a multiple of 16 in [16, 1024] and q_block >= 1");
  if (num_q_blocks != (n_q + q_block - 1) / q_block || num_kv_blocks != (n_kv + kv_block - 1) / kv_block)
    fail("block counts do not match the sequence lengths");
  if (heads != 1 && heads != map.num_q_heads && heads != map.num_k_heads)
    fail("heads must be 1, H_k or H_q (got " + std::to_string(heads) + ")");
  if (offsets.size() != size_t(heads) * num_q_blocks + 1 || offsets.front() != 0)
    fail("offsets must have heads * num_q_blocks + 1 entries starting at 0");
  if (kv_blocks.size() != size_t(offsets.back()) || partial.size() != kv_blocks.size())
    fail("kv_blocks and partial must have offsets.back() entries");
  for (size_t list = 0; list + 1 < offsets.size(); ++list) {
    if (offsets[list + 1] < offsets[list]) fail("offsets must not decrease");
    for (int32_t e = offsets[list]; e < offsets[list + 1]; ++e) {
      if (kv_blocks[e] < 0 || kv_blocks[e] >= num_kv_blocks) fail("a kv block index is out of range");
      if (e > offsets[list] && kv_blocks[e] <= kv_blocks[e - 1]) fail("kv blocks must be strictly ascending");
    }
  }
}

BlockList DenseBlockList(int64_t n_q, int64_t n_kv, const AttentionVariant& variant, int q_block, int kv_block) {
  BlockList list;
  list.q_block = q_block;
  list.kv_block = kv_block;
  list.num_q_blocks = int((n_q + q_block - 1) / q_block);
  list.num_kv_blocks = int((n_kv + kv_block - 1) / kv_block);
  list.offsets.push_back(0);
  const VariantMask mask(variant, n_q, n_kv);
  for (int qb = 0; qb < list.num_q_blocks; ++qb) {
    const int64_t r0 = int64_t(qb) * q_block, r1 = std::min<int64_t>(n_q, r0 + q_block);
    for (int kb = 0; kb < list.num_kv_blocks; ++kb) {
      const int64_t c0 = int64_t(kb) * kv_block, c1 = std::min<int64_t>(n_kv, c0 + kv_block);
      if (!mask.BlockMayBeVisible(r0, r1, c0, c1)) continue;
      list.kv_blocks.push_back(kb);
      list.partial.push_back(mask.BlockFullyVisible(r0, r1, c0, c1) ? 0 : 1);
    }
    list.offsets.push_back(int32_t(list.kv_blocks.size()));
  }
  return list;
}

double AttentionFlops(int64_t n_q, int64_t n_kv, int h_q, int d_qk, int d_v, bool causal) {
  const double full = 2.0 * double(n_q) * double(n_kv) * h_q * (d_qk + d_v);
  return causal && n_q == n_kv ? full / 2 : full;
}

}  // namespace qattn
