#include "methods/sparse_prefill/sparse_method.h"

#include <cmath>
#include <sstream>
#include <stdexcept>

#include "methods/sparse_prefill/method_list.h"

namespace qattn::sparse {

float PrefillProblem::EffectiveScale() const { return scale > 0 ? scale : 1.0f / std::sqrt(float(head_dim())); }

void CoverageMap::Init(int64_t n, int num_heads, int block_size) {
  block = block_size;
  num_blocks = int((n + block - 1) / block);
  heads = num_heads;
  computed.assign(size_t(heads) * num_blocks * num_blocks, 0);
}

void CoverageMap::MarkBlockList(const BlockList& list, const HeadMap& map) {
  for (int h = 0; h < heads; ++h) {
    for (int qb = 0; qb < list.num_q_blocks; ++qb) {
      const int index = list.list_index(h, map, qb);
      for (int32_t e = list.offsets[index]; e < list.offsets[index + 1]; ++e) {
        // Map the list's (possibly different) block size onto the map's grid.
        const int64_t q0 = int64_t(qb) * list.q_block, q1 = q0 + list.q_block;
        const int64_t k0 = int64_t(list.kv_blocks[e]) * list.kv_block, k1 = k0 + list.kv_block;
        for (int64_t r = q0 / block; r < std::min<int64_t>(num_blocks, (q1 + block - 1) / block); ++r) {
          for (int64_t c = k0 / block; c < std::min<int64_t>(num_blocks, (k1 + block - 1) / block); ++c) {
            if (c <= r) at(h, int(r), int(c)) = 1;
          }
        }
      }
    }
  }
}

BlockList CoverageMap::ToBlockList(int64_t n) const {
  BlockList list;
  list.q_block = list.kv_block = block;
  list.num_q_blocks = list.num_kv_blocks = num_blocks;
  list.heads = heads;
  list.offsets.push_back(0);
  for (int h = 0; h < heads; ++h) {
    for (int r = 0; r < num_blocks; ++r) {
      for (int c = 0; c <= r; ++c) {
        if (!at(h, r, c)) continue;
        list.kv_blocks.push_back(c);
        list.partial.push_back(c == r);  // only the diagonal block straddles the causal edge
      }
      list.offsets.push_back(int32_t(list.kv_blocks.size()));
    }
  }
  (void)n;
  return list;
}

double CoverageMap::Density(int64_t n) const {
  // Causal pairs in block (r, c): full blocks below the diagonal, a triangle on it.
  auto rows = [&](int r) { return std::min<int64_t>(block, n - int64_t(r) * block); };
  double kept = 0.0, total = 0.0;
  for (int r = 0; r < num_blocks; ++r) {
    const double diag = double(rows(r)) * (rows(r) + 1) / 2;
    const double below = double(rows(r)) * block * r;
    total += heads * (diag + below);
    for (int h = 0; h < heads; ++h) {
      for (int c = 0; c <= r; ++c) {
        if (at(h, r, c)) kept += c == r ? diag : double(rows(r)) * block;
      }
    }
  }
  return total > 0 ? kept / total : 0.0;
}

MethodOptions MethodOptions::Parse(const std::string& text) {
  MethodOptions o;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size()) {
      throw std::invalid_argument("method option '" + item + "' must look like key=value");
    }
    o.values_[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return o;
}

double MethodOptions::Float(const std::string& key, double fallback) {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  used_[key] = true;
  char* end = nullptr;
  const double v = std::strtod(it->second.c_str(), &end);
  if (*end != '\0' || !std::isfinite(v)) throw std::invalid_argument("option " + key + "=" + it->second + " is not a number");
  return v;
}

int64_t MethodOptions::Int(const std::string& key, int64_t fallback) {
  const double v = Float(key, double(fallback));
  if (v != std::floor(v)) throw std::invalid_argument("option " + key + " must be an integer");
  return int64_t(v);
}

std::string MethodOptions::String(const std::string& key, const std::string& fallback) {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  used_[key] = true;
  return it->second;
}

void MethodOptions::CheckAllUsed(const std::string& method) const {
  for (const auto& [key, value] : values_) {
    if (!used_.count(key)) throw std::invalid_argument("method '" + method + "' has no option '" + key + "'");
  }
}

const std::vector<MethodInfo>& SparseMethods() {
  static const std::vector<MethodInfo> kMethods = AllSparseMethods();
  return kMethods;
}

std::unique_ptr<SparsePrefillMethod> MakeSparseMethod(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  MethodOptions options = MethodOptions::Parse(colon == std::string::npos ? "" : spec.substr(colon + 1));
  std::string known;
  for (const MethodInfo& m : SparseMethods()) {
    if (m.name == name) {
      std::unique_ptr<SparsePrefillMethod> method = m.make(options);
      options.CheckAllUsed(name);
      return method;
    }
    known += (known.empty() ? "" : ", ") + m.name;
  }
  throw std::invalid_argument("unknown sparse method '" + name + "' (known: " + known + ")");
}

PrefillArgs CausalArgs(const PrefillProblem& p, TensorView out, float* lse) {
  PrefillArgs args;
  args.q = p.q;
  args.k = p.k;
  args.v = p.v;
  args.out = out;
  args.lse = lse;
  args.variant.scale = p.EffectiveScale();
  args.variant.causal = true;
  return args;
}

void AttendBlocks(const PrefillProblem& p, const BlockList& blocks, TensorView out, float* lse, ThreadPool* pool) {
  PrefillArgs args = CausalArgs(p, out, lse);
  args.blocks = &blocks;
  AttendPrefill(args, pool);
}

void DenseCausal(const PrefillProblem& p, TensorView out, float* lse, ThreadPool* pool) {
  AttendPrefill(CausalArgs(p, out, lse), pool);
}

}  // namespace qattn::sparse
