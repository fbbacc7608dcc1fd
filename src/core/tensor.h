// Non-owning views of strided tensors (row-major, innermost dimension contiguous) and
// an owning Tensor built on an aligned buffer.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/aligned_buffer.h"
#include "core/dtype.h"

namespace qattn {

constexpr int kMaxRank = 4;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int rank = 0;
  std::array<int64_t, kMaxRank> shape{};   // elements per dimension
  std::array<int64_t, kMaxRank> stride{};  // in elements; stride[rank-1] == 1

  int64_t dim(int i) const { return shape[i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= shape[i];
    return n;
  }
  bool contiguous() const;
  std::string ShapeString() const;  // e.g. "[4096, 32, 128]"

  // Address of element (i0, i1, ...) for the leading indices given; trailing ones are 0.
  template <typename T = void>
  T* at(int64_t i0, int64_t i1 = 0, int64_t i2 = 0) const {
    const int64_t off = i0 * stride[0] + (rank > 1 ? i1 * stride[1] : 0) + (rank > 2 ? i2 * stride[2] : 0);
    return reinterpret_cast<T*>(static_cast<char*>(data) + off * int64_t(DTypeSize(dtype)));
  }
};

// A contiguous view over data with the given shape.
TensorView MakeView(void* data, DType dtype, std::initializer_list<int64_t> shape);

// Owns a contiguous, 64-byte aligned tensor.
class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, std::initializer_list<int64_t> shape);
  const TensorView& view() const { return view_; }
  template <typename T>
  T* data() const { return static_cast<T*>(view_.data); }
  int64_t numel() const { return view_.numel(); }

 private:
  AlignedBuffer buffer_;
  TensorView view_;
};

}  // namespace qattn
