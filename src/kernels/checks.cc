#include "kernels/checks.h"

#include <cmath>

namespace qattn::detail {

namespace {
std::string S(int64_t x) { return std::to_string(x); }
}  // namespace

void CheckRank3(const TensorView& t, const char* name) {
  if (t.data == nullptr) throw InvalidArgument(std::string(name) + " has no data");
  if (t.rank != 3)
    throw InvalidArgument(std::string(name) + " must have rank 3, got shape " + t.ShapeString());
  if (t.stride[2] != 1) throw InvalidArgument(std::string(name) + " must be contiguous in its last dimension");
  for (int i = 0; i < 3; ++i)
    if (t.shape[i] < 0) throw InvalidArgument(std::string(name) + " has a negative dimension");
}

HeadMap CheckQkvOut(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out) {
  CheckRank3(q, "Q");
  CheckRank3(k, "K");
  CheckRank3(v, "V");
  CheckRank3(out, "output");
  if (k.dtype != q.dtype || v.dtype != q.dtype)
    throw InvalidArgument("Q, K and V must have one dtype (got " + std::string(DTypeName(q.dtype)) + ", " +
                          std::string(DTypeName(k.dtype)) + ", " + std::string(DTypeName(v.dtype)) + ")");
  if (out.dtype != DType::kF32) throw InvalidArgument("the output must be f32");
  if (k.shape[0] != v.shape[0])
    throw InvalidArgument("K has " + S(k.shape[0]) + " tokens but V has " + S(v.shape[0]));
  if (q.shape[2] != k.shape[2])
    throw InvalidArgument("Q head dim " + S(q.shape[2]) + " differs from K head dim " + S(k.shape[2]));
  if (q.shape[2] < 1 || v.shape[2] < 1) throw InvalidArgument("head dims must be at least 1");
  if (q.shape[2] > 512 || v.shape[2] > 512) throw InvalidArgument("head dims above 512 are not supported");
  if (out.shape[0] != q.shape[0] || out.shape[1] != q.shape[1] || out.shape[2] != v.shape[2])
    throw InvalidArgument("output shape " + out.ShapeString() + " must be [" + S(q.shape[0]) + ", " +
                          S(q.shape[1]) + ", " + S(v.shape[2]) + "]");
  HeadMap map{int(q.shape[1]), int(k.shape[1]), int(v.shape[1])};
  map.Validate();
  return map;
}

std::vector<int64_t> CheckOffsets(const std::vector<int64_t>& cu, int64_t total, const char* name) {
  if (cu.empty()) return {0, total};
  if (cu.size() < 2) throw InvalidArgument(std::string(name) + " needs at least two entries");
  if (cu.front() != 0) throw InvalidArgument(std::string(name) + " must start at 0");
  for (size_t i = 1; i < cu.size(); ++i)
    if (cu[i] < cu[i - 1]) throw InvalidArgument(std::string(name) + " must not decrease");
  if (cu.back() != total)
    throw InvalidArgument(std::string(name) + " ends at " + S(cu.back()) + " but the tensor has " + S(total) +
                          " tokens");
  return cu;
}

void CheckVariant(const AttentionVariant& v) {
  if (!std::isfinite(v.scale)) throw InvalidArgument("scale must be finite");
  if (!(v.softcap >= 0) || !std::isfinite(v.softcap)) throw InvalidArgument("softcap must be finite and >= 0");
  if (v.window_left < -1 || v.window_right < -1) throw InvalidArgument("window sizes must be >= 0 or -1 (unbounded)");
  if (v.sink_tokens < 0) throw InvalidArgument("sink token count must be >= 0");
}

}  // namespace qattn::detail
