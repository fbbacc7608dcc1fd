#include "model/runtime/linear.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <dnnl.hpp>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "kernels/tile_ops.h"

namespace qattn::model {
namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One matmul primitive per (in, columns, row stride of y, dtype), with the row count left to run
// time, so every layer of the same shape and every prompt length share it.
const dnnl::matmul& MatmulFor(int in, int cols, int y_stride, DType dtype) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int, DType>, dnnl::matmul> cache;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(in, cols, y_stride, dtype);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  const dt type = dtype == DType::kF32 ? dt::f32 : dt::bf16;
  const dnnl::memory::dim rows = DNNL_RUNTIME_DIM_VAL;
  const dnnl::memory::desc src({rows, in}, type, tag::ab);                     // x [n, in]
  const dnnl::memory::desc weights({in, cols}, type, tag::ba);                 // W^T over rows of W [out, in]
  const dnnl::memory::desc dst({rows, cols}, dt::f32, {y_stride, 1});          // y [n, y_stride], some columns
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, weights, dst), Engine());
  return cache.emplace(key, dnnl::matmul(pd)).first->second;
}

// Rows of one GGUF tensor appended to a weight buffer of the chosen dtype.
void AppendRows(const GgufFile& file, const GgufTensorInfo& t, DType dtype, uint8_t* dst) {
  const uint8_t* src = file.TensorData(t);
  if ((t.type == GgmlType::kF32 && dtype == DType::kF32) || (t.type == GgmlType::kBF16 && dtype == DType::kBF16)) {
    std::memcpy(dst, src, t.bytes);  // already in the layout and type we multiply
    return;
  }
  std::vector<float> row(t.dims[0]);  // [in]
  const uint64_t row_bytes = GgmlRowBytes(t.type, t.dims[0]);
  for (uint64_t r = 0; r < t.dims[1]; ++r) {
    DequantizeToF32(t.type, src + r * row_bytes, t.dims[0], row.data());
    ConvertFromF32(row.data(), dst + r * t.dims[0] * DTypeSize(dtype), dtype, t.dims[0]);
  }
}

void CheckMatrix(const GgufFile& file, const GgufTensorInfo& t, uint64_t in) {
  if (t.dims.size() != 2 || t.dims[0] != in || t.dims[1] == 0 || t.dims[1] > (1u << 30)) {
    std::string dims;
    for (uint64_t d : t.dims) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
    throw ModelFileError(file.name() + ": tensor '" + t.name + "' has dims [" + dims + "] but must be [" +
                         std::to_string(in) + ", n] like the other parts of its layer");
  }
}

}  // namespace

// oneDNN runs single-threaded inside each of our pool's threads (see Gemm), so OpenMP's own team
// never spins against our workers on the same cores.
void SetGemmThreads(int) { omp_set_num_threads(1); }

Linear Linear::FromTensors(const GgufFile& file, const std::vector<const GgufTensorInfo*>& parts,
                           const std::vector<const GgufTensorInfo*>& biases) {
  Linear l;
  l.in_ = int(parts.at(0)->dims.at(0));
  bool all_f32 = true;
  for (const GgufTensorInfo* p : parts) {
    CheckMatrix(file, *p, uint64_t(l.in_));
    l.out_ += int(p->dims[1]);
    all_f32 = all_f32 && p->type == GgmlType::kF32;
  }
  l.dtype_ = all_f32 ? DType::kF32 : DType::kBF16;
  l.weights_ = AlignedBuffer(uint64_t(l.in_) * l.out_ * DTypeSize(l.dtype_));
  uint8_t* dst = l.weights_.as<uint8_t>();
  for (const GgufTensorInfo* p : parts) {
    AppendRows(file, *p, l.dtype_, dst);
    file.ReleaseTensorData(*p);  // the copy is what runs: keep one copy of the weights resident
    dst += p->dims[0] * p->dims[1] * DTypeSize(l.dtype_);
  }
  if (!biases.empty()) {
    for (size_t i = 0; i < parts.size(); ++i) {
      const GgufTensorInfo& b = *biases.at(i);
      if (b.dims.size() != 1 || b.dims[0] != parts[i]->dims[1]) {
        throw ModelFileError(file.name() + ": bias '" + b.name + "' must have " + std::to_string(parts[i]->dims[1]) + " elements");
      }
      const size_t at = l.bias_.size();
      l.bias_.resize(at + b.dims[0]);
      DequantizeToF32(b.type, file.TensorData(b), b.dims[0], l.bias_.data() + at);
    }
  }
  return l;
}

void Linear::Forward(const float* x, int64_t n, float* y, ThreadPool* pool) const {
  if (n == 1) {
    Gemv(x, y, pool);
  } else {
    Gemm(x, n, y, pool);
  }
  if (bias_.empty()) return;
  for (int64_t r = 0; r < n; ++r) {
    float* row = y + r * out_;
    for (int c = 0; c < out_; ++c) row[c] += bias_[c];
  }
}

void Linear::Gemv(const float* x, float* y, ThreadPool* pool) const {
  const int threads = pool ? pool->num_threads() : 1;
  // At least 64 rows per item, and about 16 items per thread on wide outputs: each item starts its
  // stream cold (its first blocks are not prefetched), and the LM head's 151936 rows in 64-row items
  // measured 1.15-1.2x slower.
  const int rows_per_item = std::max(64, (out_ / (16 * threads) + 3) / 4 * 4);
  const int64_t items = (out_ + rows_per_item - 1) / rows_per_item;
  const bool bf16 = dtype_ == DType::kBF16, dot = bf16 && tile::HasBf16Path();
  std::vector<uint16_t> x16;   // [in] x rounded to bf16 (bf16 weights)
  std::vector<float> x_round;  // [in] the same values as f32, for the widening kernel
  if (bf16) {
    x16.resize(in_);
    ConvertFromF32(x, x16.data(), DType::kBF16, in_);
    if (!dot) {
      x_round.resize(in_);
      ConvertToF32(x16.data(), DType::kBF16, x_round.data(), in_);
    }
  }
  auto run = [&](int64_t item, int) {
    const int begin = int(item * rows_per_item);
    const int end = std::min(out_, begin + rows_per_item);
    if (!bf16) {
      GemvRowsF32(weights_.as<float>(), in_, x, begin, end, y);
    } else if (dot) {
      GemvRowsBf16Dot(weights_.as<uint16_t>(), in_, x16.data(), begin, end, y);
    } else {
      GemvRowsBf16(weights_.as<uint16_t>(), in_, x_round.data(), begin, end, y);
    }
  };
  if (pool && items > 1) {
    pool->ParallelFor(items, run);
  } else {
    for (int64_t i = 0; i < items; ++i) run(i, 0);
  }
}

// Each pool thread multiplies a slice of the output columns with a single-threaded oneDNN matmul:
// one threading system for GEMMs, attention and everything else.
void Linear::Gemm(const float* x, int64_t n, float* y, ThreadPool* pool) const {
  using tag = dnnl::memory::format_tag;
  using dt = dnnl::memory::data_type;
  const dt type = dtype_ == DType::kF32 ? dt::f32 : dt::bf16;
  std::vector<uint16_t> x_bf16;  // [n, in], only for bf16 weights (oneDNN multiplies like with like)
  const void* src_data = x;
  if (dtype_ == DType::kBF16) {
    x_bf16.resize(size_t(n) * in_);
    ConvertFromF32(x, x_bf16.data(), DType::kBF16, x_bf16.size());
    src_data = x_bf16.data();
  }
  const int threads = pool ? pool->num_threads() : 1;
  constexpr int kColumnAlign = 64;  // whole cache lines of y per slice
  const int slice = std::max(kColumnAlign, (out_ / threads + kColumnAlign - 1) / kColumnAlign * kColumnAlign);
  const int64_t slices = (out_ + slice - 1) / slice;
  auto run = [&](int64_t index, int) {
    omp_set_num_threads(1);  // this thread's OpenMP setting: oneDNN stays on it
    const int c0 = int(index) * slice, cols = std::min(out_, c0 + slice) - c0;
    const auto* w = weights_.as<uint8_t>() + size_t(c0) * in_ * DTypeSize(dtype_);
    dnnl::stream stream(Engine());
    dnnl::memory src({{n, in_}, type, tag::ab}, Engine(), const_cast<void*>(src_data));
    dnnl::memory weights({{in_, cols}, type, tag::ba}, Engine(), const_cast<uint8_t*>(w));
    dnnl::memory dst({{n, cols}, dt::f32, {out_, 1}}, Engine(), y + c0);
    MatmulFor(in_, cols, out_, dtype_).execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
    stream.wait();
  };
  if (pool && slices > 1) {
    pool->ParallelFor(slices, run);
  } else {
    for (int64_t i = 0; i < slices; ++i) run(i, 0);
  }
}

}  // namespace qattn::model
