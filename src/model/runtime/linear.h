// Dense projections y = x W^T (+ b): the plain GEMMs of a transformer.
//
// Weights live once, row-major W[out, in] (GGUF dims {in, out}): f32 files stay f32 so results match
// an f32 reference; every other weight type (f16, bf16, q8_0, q4_0) is widened once to bf16, the
// format this CPU multiplies fastest. Rows of several tensors can be stacked into one matrix (q, k and
// v; gate and up) so a layer makes one call instead of three.
//
// Many rows (prefill) go through oneDNN's matmul (measured here against OpenBLAS: 320-360 vs 110-190
// GFLOP/s f32, 700-750 GFLOP/s bf16); one row (decode) is a memory-bound product done by our own
// kernels over the same plain layout, which oneDNN handles poorly for very wide outputs. With bf16
// weights the activations are rounded to bf16 either way (oneDNN multiplies like with like; the
// one-row kernels do the same on every CPU, so decode and prefill see the same inputs).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/aligned_buffer.h"
#include "core/dtype.h"
#include "core/prefetch.h"
#include "core/thread_pool.h"
#include "model/gguf.h"

namespace qattn::model {

class Linear {
 public:
  Linear() = default;
  // Stacks the rows of `parts` (each dims {in, out_i}, same `in`) into one [sum out_i, in] matrix.
  // Bias tensors, if given, must match the parts one to one (dims {out_i}).
  static Linear FromTensors(const GgufFile& file, const std::vector<const GgufTensorInfo*>& parts,
                            const std::vector<const GgufTensorInfo*>& biases = {});

  // y[n, out] = x[n, in] W^T + b. x and y are row-major, contiguous, and must not alias.
  void Forward(const float* x, int64_t n, float* y, ThreadPool* pool) const;

  int in() const { return in_; }
  int out() const { return out_; }
  DType weight_dtype() const { return dtype_; }
  uint64_t weight_bytes() const { return uint64_t(in_) * out_ * DTypeSize(dtype_); }
  const void* weights() const { return weights_.data(); }  // [out, in] of weight_dtype()
  bool has_bias() const { return !bias_.empty(); }

 private:
  void Gemv(const float* x, float* y, ThreadPool* pool) const;
  void Gemm(const float* x, int64_t n, float* y, ThreadPool* pool) const;

  int in_ = 0, out_ = 0;
  DType dtype_ = DType::kF32;
  AlignedBuffer weights_;     // [out, in] f32 or bf16
  std::vector<float> bias_;   // [out] or empty
};

// The row walk of the one-row kernels: blocks of four rows (each x vector loaded once per four
// weight vectors) with the block after next prefetched (one core's hardware prefetcher alone
// reaches about half the memory bandwidth), then single rows. block(r) computes rows [r, r + 4),
// row(r) row r; rows are row_bytes apart from w.
template <typename Block, typename Row>
inline void ForGemvRowBlocks(const void* w, int64_t row_bytes, int row_begin, int row_end, Block&& block, Row&& row) {
  const char* base = static_cast<const char*>(w);
  int r = row_begin;
  for (; r + 4 <= row_end; r += 4) {
    if (r + 12 <= row_end) PrefetchBytes(base + int64_t(r + 8) * row_bytes, 4 * row_bytes);
    block(r);
  }
  for (; r < row_end; ++r) row(r);
}

// y[out] = W[out, in] x[in] on one thread, rows [row_begin, row_end). Highway, dispatched at run time.
void GemvRowsF32(const float* w, int in, const float* x, int row_begin, int row_end, float* y);
void GemvRowsBf16(const uint16_t* w, int in, const float* x, int row_begin, int row_end, float* y);
// The same for bf16 weights and a bf16 x on vdpbf16ps; only where tile::HasBf16Path().
void GemvRowsBf16Dot(const uint16_t* w, int in, const uint16_t* x, int row_begin, int row_end, float* y);

// Keeps oneDNN's OpenMP to one thread per caller: Linear parallelises GEMMs on our ThreadPool.
void SetGemmThreads(int threads);

}  // namespace qattn::model
