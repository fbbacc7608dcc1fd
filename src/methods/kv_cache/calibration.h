// Offline calibration of CompressKV (spec C2, offline steps 1 and 2), as two KV policies the
// calibration command (`qattn calibrate compresskv`) runs the model with:
// - AttentionMassProbe measures, at every decode step, the attention mass each query head of each
//   layer puts on a span of positions (the needle): semantic retrieval head scores come from it.
// - LayerErrorMeter wraps a policy and, after the prompt, measures per layer how much its eviction
//   changes the attention output of the observation-window queries:
//   e_l = ||O_kept - O_full||_F / (||O_full||_F + 1e-5), computed in fp64 before the cut.
#pragma once
#include <memory>
#include <vector>

#include "methods/kv_cache/kv_policy.h"

namespace qattn::kv {

class AttentionMassProbe final : public KvPolicy {
 public:
  std::string name() const override { return "attention-mass-probe"; }
  // The span [begin, end) of positions whose attention mass is measured.
  void SetSpan(int32_t begin, int32_t end) { begin_ = begin; end_ = end; }
  void SelectForDecode(const LayerRef& at, const float* q, std::vector<int64_t>* offsets, std::vector<KvRun>* runs,
                       ThreadPool* pool) override;
  // The last decode step's masses: [layer][H_q] (empty layers: not measured yet).
  const std::vector<std::vector<double>>& last_step() const { return masses_; }
  void Reset() override { masses_.clear(); }

 private:
  int32_t begin_ = 0, end_ = 0;
  std::vector<std::vector<double>> masses_;
};

class LayerErrorMeter final : public KvPolicy {
 public:
  LayerErrorMeter(std::unique_ptr<KvPolicy> inner, int64_t window) : inner_(std::move(inner)), window_(window) {}
  std::string name() const override { return inner_->name(); }
  void AfterPrompt(const LayerRef& at, const float* q, int64_t q_stride, int64_t n, ThreadPool* pool) override;
  void SelectForDecode(const LayerRef& at, const float* q, std::vector<int64_t>* offsets, std::vector<KvRun>* runs,
                       ThreadPool* pool) override {
    inner_->SelectForDecode(at, q, offsets, runs, pool);
  }
  void Reset() override { inner_->Reset(); }
  // Summed e_l per layer over every prompt so far: [layers].
  const std::vector<double>& errors() const { return errors_; }

 private:
  std::unique_ptr<KvPolicy> inner_;
  int64_t window_;
  std::vector<double> errors_;
};

}  // namespace qattn::kv
