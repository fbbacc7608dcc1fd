#include "model/runtime/attention_policy.h"

#include <cstring>
#include <stdexcept>

#include "eval/npy.h"
#include "kernels/attention_call.h"
#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::model {
namespace {

// Exact attention on the core skeleton: split-KV decode for one new token, tiled prefill otherwise.
class DensePolicy final : public AttentionPolicy {
 public:
  std::string name() const override { return "dense"; }
  void Attend(const LayerAttention& call, ThreadPool* pool) override {
    RunAttention({call.q, call.k, call.v, call.out, nullptr, call.variant}, pool);
  }
};

// A sparse prefill method for a whole prompt's prefill (queries == keys); dense everywhere else.
class SparsePrefillPolicy final : public AttentionPolicy {
 public:
  explicit SparsePrefillPolicy(std::unique_ptr<sparse::SparsePrefillMethod> method) : method_(std::move(method)) {}
  std::string name() const override { return method_->name(); }
  bool wants_whole_prompt() const override { return true; }
  void Attend(const LayerAttention& call, ThreadPool* pool) override {
    if (call.q.dim(0) != call.k.dim(0) || call.q.dim(0) < 2) {
      dense_.Attend(call, pool);
      return;
    }
    if (call.variant.window_left >= 0) {  // a sliding-window model: its window is part of the mask
      dense_.Attend(call, pool);
      return;
    }
    // Methods read K and V as plain [n, H_kv, d] rows; the cache holds them head-major.
    k_ = Contiguous(call.k);
    v_ = Contiguous(call.v);
    method_->Run(sparse::PrefillProblem{call.q, k_.view(), v_.view(), call.variant.scale}, call.out, nullptr, pool);
  }

 private:
  static Tensor Contiguous(const TensorView& x) {
    Tensor t(x.dtype, {x.dim(0), x.dim(1), x.dim(2)});
    const size_t row = size_t(x.dim(2)) * DTypeSize(x.dtype);
    for (int64_t i = 0; i < x.dim(0); ++i) {
      for (int64_t h = 0; h < x.dim(1); ++h) std::memcpy(t.view().at(i, h), x.at(i, h), row);
    }
    return t;
  }
  std::unique_ptr<sparse::SparsePrefillMethod> method_;
  DensePolicy dense_;
  Tensor k_, v_;  // [n, H_kv, d] copies of the cache for the current layer
};

// Writes a view as a float32 .npy [n, H, d].
void DumpView(const TensorView& x, const std::string& path) {
  std::vector<float> values(size_t(x.numel()));  // [n, H, d]
  for (int64_t i = 0; i < x.dim(0); ++i) {
    for (int64_t h = 0; h < x.dim(1); ++h) {
      ConvertToF32(x.at(i, h), x.dtype, values.data() + (i * x.dim(1) + h) * x.dim(2), size_t(x.dim(2)));
    }
  }
  WriteNpyF32(path, {x.dim(0), x.dim(1), x.dim(2)}, values.data());
}

class QkvDumpPolicy final : public AttentionPolicy {
 public:
  QkvDumpPolicy(std::unique_ptr<AttentionPolicy> inner, std::string dir) : inner_(std::move(inner)), dir_(std::move(dir)) {}
  std::string name() const override { return inner_->name(); }
  bool wants_whole_prompt() const override { return true; }
  void Attend(const LayerAttention& call, ThreadPool* pool) override {
    if (call.q.dim(0) == call.k.dim(0) && call.q.dim(0) > 1) {
      const std::string stem = dir_ + "/layer" + std::to_string(call.layer) + "_";
      DumpView(call.q, stem + "q.npy");
      DumpView(call.k, stem + "k.npy");
      DumpView(call.v, stem + "v.npy");
    }
    inner_->Attend(call, pool);
  }

 private:
  std::unique_ptr<AttentionPolicy> inner_;
  std::string dir_;
};

}  // namespace

std::unique_ptr<AttentionPolicy> WithQkvDump(std::unique_ptr<AttentionPolicy> inner, const std::string& dir) {
  return std::make_unique<QkvDumpPolicy>(std::move(inner), dir);
}

std::unique_ptr<AttentionPolicy> MakeAttentionPolicy(const std::string& spec) {
  const std::string name = spec.substr(0, spec.find(':'));
  if (name == "dense") {
    if (name.size() != spec.size()) throw std::invalid_argument("the attention policy 'dense' takes no options");
    return std::make_unique<DensePolicy>();
  }
  return std::make_unique<SparsePrefillPolicy>(sparse::MakeSparseMethod(spec));  // names the known ones
}

}  // namespace qattn::model
