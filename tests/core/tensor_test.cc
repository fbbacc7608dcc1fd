// Tensor views: strides, contiguity, element addressing; the aligned buffer behind Tensor.
#include "core/tensor.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace qattn {
namespace {

TEST(TensorView, MakeViewIsRowMajor) {
  std::vector<float> data(2 * 3 * 4);  // [2, 3, 4]
  const TensorView v = MakeView(data.data(), DType::kF32, {2, 3, 4});
  EXPECT_EQ(v.rank, 3);
  EXPECT_EQ(v.stride[0], 12);
  EXPECT_EQ(v.stride[1], 4);
  EXPECT_EQ(v.stride[2], 1);
  EXPECT_EQ(v.numel(), 24);
  EXPECT_TRUE(v.contiguous());
  EXPECT_EQ(v.ShapeString(), "[2, 3, 4]");
  EXPECT_EQ(v.at<float>(1, 2, 3), data.data() + 23);
  EXPECT_EQ(v.at<float>(1), data.data() + 12);  // trailing indices default to 0
}

TEST(TensorView, AddressesUseTheElementSize) {
  std::vector<uint16_t> data(5 * 8);  // [5, 8] bf16
  const TensorView v = MakeView(data.data(), DType::kBF16, {5, 8});
  EXPECT_EQ(v.at<uint16_t>(3, 2), data.data() + 26);
}

TEST(TensorView, StridedViewIsNotContiguous) {
  std::vector<float> data(4 * 10);  // [4, 10]; the view keeps 6 of each 10 columns
  TensorView v = MakeView(data.data(), DType::kF32, {4, 6});
  v.stride[0] = 10;
  EXPECT_FALSE(v.contiguous());
  EXPECT_EQ(v.at<float>(2, 5), data.data() + 25);
  TensorView one_row = v;  // a single row never strides
  one_row.shape[0] = 1;
  EXPECT_TRUE(one_row.contiguous());
}

TEST(Tensor, OwnsAlignedZeroedMemory) {
  const Tensor t(DType::kF16, {3, 5, 7});  // [3, 5, 7]
  EXPECT_EQ(t.numel(), 105);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.view().data) % kAlignment, 0u);
  EXPECT_TRUE(t.view().contiguous());
  const uint16_t* p = t.data<uint16_t>();
  for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(p[i], 0) << i;
}

TEST(AlignedBuffer, MovesOwnership) {
  AlignedBuffer a(100);
  void* p = a.data();
  AlignedBuffer b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.size(), 100u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kAlignment, 0u);
  EXPECT_EQ(AlignedBuffer(0).data(), nullptr);
}

}  // namespace
}  // namespace qattn
