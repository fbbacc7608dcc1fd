// PromptDistill (spec C5): after the selection layer has run on the whole prompt, the last prompt
// token's query scores every prompt token; only the top-k tokens' hidden states continue through
// the later layers (original positions kept), and the earlier layers' caches are cut to the same
// tokens. The runtime performs the cut (Transformer::Forward asks TakePromptSelection after each
// layer); this object only scores and chooses. Decode is dense over what is kept.
#include <map>

#include "methods/kv_cache/kv_policy_internal.h"

namespace qattn::kv {
namespace {

class PromptDistill final : public KvPolicy {
 public:
  explicit PromptDistill(sparse::MethodOptions& o)
      : layer_(int(o.Int("layer", 1))), keep_(o.Int("budget", 1024)), frac_(o.Float("frac", 0.0)),
        keep_last_(o.Int("keep_last", 1)), softmax_(o.Int("softmax", 0) != 0) {
    if (layer_ < 0 || keep_ < 1 || keep_last_ < 1 || frac_ < 0 || frac_ > 1) {
      throw std::invalid_argument("promptdistill needs layer >= 0, budget >= 1, keep_last >= 1, frac in [0, 1]");
    }
  }
  std::string name() const override {
    return "promptdistill:layer=" + std::to_string(layer_) +
           (frac_ > 0 ? ",frac=" + std::to_string(frac_).substr(0, 6) : ",budget=" + std::to_string(keep_)) +
           ",keep_last=" + std::to_string(keep_last_) + ",softmax=" + std::to_string(int(softmax_));
  }
  void Reset() override { selection_.clear(); }
  void AfterPrompt(const LayerRef& at, const float* q, int64_t q_stride, int64_t n, ThreadPool* pool) override {
    if (at.layer != layer_) return;
    const int64_t budget = frac_ > 0 ? std::max<int64_t>(1, int64_t(frac_ * double(n) + 0.999999)) : keep_;
    if (budget >= n || at.cache->length(at.seq, at.layer, 0) != n) return;  // only a whole, fresh prompt
    const std::vector<float> keys = ReadKeys(at);
    const std::vector<float> scores =
        PromptDistillScores(q + (n - 1) * q_stride, keys.data(), at.heads, n, softmax_, pool);
    selection_[at.layer] = KeepTopK(scores, budget, 0, keep_last_);
  }
  std::vector<int32_t> TakePromptSelection(int layer) override {
    auto it = selection_.find(layer);
    if (it == selection_.end()) return {};
    std::vector<int32_t> s = std::move(it->second);
    selection_.erase(it);
    return s;
  }

 private:
  int layer_;
  int64_t keep_;
  double frac_;
  int64_t keep_last_;
  bool softmax_;
  std::map<int, std::vector<int32_t>> selection_;  // layer -> chosen prompt rows, until taken
};

}  // namespace

std::unique_ptr<KvPolicy> MakePromptDistillPolicy(sparse::MethodOptions& options) {
  return std::make_unique<PromptDistill>(options);
}

}  // namespace qattn::kv
