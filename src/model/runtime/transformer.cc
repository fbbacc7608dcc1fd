#include "model/runtime/transformer.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "model/runtime/ops.h"

namespace qattn::model {
namespace {

std::vector<float> ReadVector(const GgufFile& file, const std::string& name, int length) {
  const GgufTensorInfo& t = file.RequireTensor(name, {uint64_t(length)});
  std::vector<float> values(length);  // [length]
  DequantizeToF32(t.type, file.TensorData(t), t.elements, values.data());
  return values;
}

const GgufTensorInfo* Matrix(const GgufFile& file, const std::string& name, int in, int out) {
  return &file.RequireTensor(name, {uint64_t(in), uint64_t(out)});
}

}  // namespace

// Activations of one forward pass over n tokens.
struct Transformer::Scratch {
  explicit Scratch(const ModelConfig& c, int64_t n)
      : x(n * c.n_embd), h(n * c.n_embd), qkv(n * (c.q_dim() + 2 * c.kv_dim())), attn(n * c.q_dim()),
        gate_up(n * 2 * c.n_ff), ff(n * c.n_ff), positions(n) {}
  std::vector<float> x;        // [n, n_embd] the residual stream
  std::vector<float> h;        // [n, n_embd] normed input of a block, then its output
  std::vector<float> qkv;      // [n, q_dim + 2 kv_dim]
  std::vector<float> attn;     // [n, q_dim] attention output
  std::vector<float> gate_up;  // [n, 2 n_ff]
  std::vector<float> ff;       // [n, n_ff]
  std::vector<int32_t> positions;  // [n]
  bool prompt_end = false;         // this pass ends a prompt (KV eviction policies act after it)
};

Transformer::Transformer(const GgufFile& file) : config_(ReadModelConfig(file)) {
  const ModelConfig& c = config_;
  rope_inv_freq_ = RopeInverseFrequencies(c);
  embeddings_ = Linear::FromTensors(file, {Matrix(file, "token_embd.weight", c.n_embd, c.n_vocab)});
  if (!c.tied_embeddings) output_ = Linear::FromTensors(file, {Matrix(file, "output.weight", c.n_embd, c.n_vocab)});
  output_norm_ = ReadVector(file, "output_norm.weight", c.n_embd);
  layers_.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) LoadLayer(file, l);
}

void Transformer::LoadLayer(const GgufFile& file, int index) {
  const ModelConfig& c = config_;
  const std::string p = "blk." + std::to_string(index) + ".";
  Layer& layer = layers_[index];
  layer.attn_norm = ReadVector(file, p + "attn_norm.weight", c.n_embd);
  layer.ffn_norm = ReadVector(file, p + "ffn_norm.weight", c.n_embd);
  if (c.arch.fused_qkv) {
    layer.qkv = Linear::FromTensors(file, {Matrix(file, p + "attn_qkv.weight", c.n_embd, c.q_dim() + 2 * c.kv_dim())});
  } else {
    std::vector<const GgufTensorInfo*> biases;
    if (c.arch.qkv_bias) {
      for (const char* b : {"attn_q.bias", "attn_k.bias", "attn_v.bias"}) biases.push_back(&file.RequireTensor(p + b));
    }
    layer.qkv = Linear::FromTensors(file,
                                    {Matrix(file, p + "attn_q.weight", c.n_embd, c.q_dim()),
                                     Matrix(file, p + "attn_k.weight", c.n_embd, c.kv_dim()),
                                     Matrix(file, p + "attn_v.weight", c.n_embd, c.kv_dim())},
                                    biases);
  }
  layer.attn_out = Linear::FromTensors(file, {Matrix(file, p + "attn_output.weight", c.q_dim(), c.n_embd)});
  if (c.arch.fused_gate_up) {
    layer.gate_up = Linear::FromTensors(file, {Matrix(file, p + "ffn_up.weight", c.n_embd, 2 * c.n_ff)});
  } else {
    layer.gate_up = Linear::FromTensors(
        file, {Matrix(file, p + "ffn_gate.weight", c.n_embd, c.n_ff), Matrix(file, p + "ffn_up.weight", c.n_embd, c.n_ff)});
  }
  layer.down = Linear::FromTensors(file, {Matrix(file, p + "ffn_down.weight", c.n_ff, c.n_embd)});
}

uint64_t Transformer::weight_bytes() const {
  uint64_t total = embeddings_.weight_bytes() + output_.weight_bytes();
  for (const Layer& l : layers_) {
    total += l.qkv.weight_bytes() + l.attn_out.weight_bytes() + l.gate_up.weight_bytes() + l.down.weight_bytes();
  }
  return total;
}

void Transformer::Embed(const int32_t* tokens, int64_t n, float* x) const {
  const int d = config_.n_embd;
  const size_t row_bytes = size_t(d) * DTypeSize(embeddings_.weight_dtype());
  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= config_.n_vocab) {
      throw std::invalid_argument("token id " + std::to_string(tokens[t]) + " is outside the vocabulary of " +
                                  std::to_string(config_.n_vocab));
    }
    const auto* row = static_cast<const uint8_t*>(embeddings_.weights()) + size_t(tokens[t]) * row_bytes;
    ConvertToF32(row, embeddings_.weight_dtype(), x + t * d, d);
  }
}

void Transformer::AttentionBlock(int index, Scratch& s, int64_t n, KvCache& cache, AttentionPolicy& attention,
                                 ThreadPool* pool) const {
  const ModelConfig& c = config_;
  const Layer& layer = layers_[index];
  const int64_t qkv_stride = c.q_dim() + 2 * c.kv_dim();
  RmsNorm(s.x.data(), layer.attn_norm.data(), n, c.n_embd, c.rms_eps, s.h.data());
  layer.qkv.Forward(s.h.data(), n, s.qkv.data(), pool);
  float* q = s.qkv.data();
  float* k = q + c.q_dim();
  float* v = k + c.kv_dim();
  ApplyRope(q, n, qkv_stride, c.n_head, c.head_dim, c.n_rot, c.arch.rope, rope_inv_freq_, s.positions.data());
  ApplyRope(k, n, qkv_stride, c.n_head_kv, c.head_dim, c.n_rot, c.arch.rope, rope_inv_freq_, s.positions.data());
  cache.Append(index, n, k, v, qkv_stride, s.positions.data());

  LayerAttention call;
  call.layer = index;
  call.n_new = n;
  call.q = q;
  call.q_row_stride = qkv_stride;
  call.positions = s.positions.data();
  call.cache = &cache;
  call.out = MakeView(s.attn.data(), DType::kF32, {n, c.n_head, c.head_dim});
  call.variant.causal = true;
  if (c.sliding_window > 0) call.variant.window_left = c.sliding_window - 1;
  call.prompt_end = s.prompt_end;
  attention.Attend(call, pool);
  layer.attn_out.Forward(s.attn.data(), n, s.h.data(), pool);
  AddInPlace(s.x.data(), s.h.data(), n * c.n_embd);
}

void Transformer::MlpBlock(int index, Scratch& s, int64_t n, ThreadPool* pool) const {
  const ModelConfig& c = config_;
  const Layer& layer = layers_[index];
  RmsNorm(s.x.data(), layer.ffn_norm.data(), n, c.n_embd, c.rms_eps, s.h.data());
  layer.gate_up.Forward(s.h.data(), n, s.gate_up.data(), pool);
  SwiGlu(s.gate_up.data(), n, c.n_ff, s.ff.data());
  layer.down.Forward(s.ff.data(), n, s.h.data(), pool);
  AddInPlace(s.x.data(), s.h.data(), n * c.n_embd);
}

// PromptDistill: keeps only the chosen rows of the residual stream (and their positions) for the
// later layers, and cuts layers 0..layer of the cache to the same tokens. Returns the new row count.
int64_t Transformer::KeepPromptRows(int layer, Scratch& s, int64_t n, KvCache& cache,
                                    const std::vector<int32_t>& keep, LogitRows rows) const {
  if (keep.empty() || int64_t(keep.size()) >= n) return n;
  if (keep.back() != n - 1) throw std::logic_error("a prompt selection must keep the last row");
  if (rows == LogitRows::kAll) {
    throw std::invalid_argument("this attention policy drops prompt rows, so only the last row has logits");
  }
  if (cache.kept(0) != n) throw std::logic_error("prompt rows can only be cut from a whole, fresh prompt");
  const int d = config_.n_embd;
  for (size_t i = 0; i < keep.size(); ++i) {
    std::copy_n(&s.x[size_t(keep[i]) * d], d, &s.x[i * d]);  // keep[i] >= i: moves rows forward only
    s.positions[i] = s.positions[keep[i]];
  }
  for (int l = 0; l <= layer; ++l) {
    for (int h = 0; h < config_.n_head_kv; ++h) cache.paged().Keep(cache.sequence(), l, h, keep);
  }
  return int64_t(keep.size());
}

void Transformer::Forward(const int32_t* tokens, int64_t n, KvCache& cache, AttentionPolicy& attention,
                          LogitRows rows, float* logits, ThreadPool* pool) const {
  if (n < 1) return;
  const ModelConfig& c = config_;
  if (cache.length() + n > cache.capacity()) {
    throw std::invalid_argument("the context is full: " + std::to_string(cache.length() + n) +
                                " tokens do not fit in " + std::to_string(cache.capacity()) + " (raise --ctx)");
  }
  Scratch s(c, n);
  for (int64_t t = 0; t < n; ++t) s.positions[t] = int32_t(cache.length() + t);
  // Policies that evict after a prompt take whole prompts (wants_whole_prompt), so for them every
  // multi-token pass is a complete prompt.
  s.prompt_end = n > 1;
  Embed(tokens, n, s.x.data());
  const int64_t consumed = n;  // positions this pass takes, whatever rows a policy drops
  for (int l = 0; l < c.n_layer; ++l) {
    AttentionBlock(l, s, n, cache, attention, pool);
    MlpBlock(l, s, n, pool);
    if (s.prompt_end) n = KeepPromptRows(l, s, n, cache, attention.TakePromptSelection(l), rows);
  }
  cache.set_length(cache.length() + consumed);
  if (rows == LogitRows::kNone) return;
  const int64_t first = rows == LogitRows::kLast ? n - 1 : 0;
  const int64_t count = n - first;
  RmsNorm(s.x.data() + first * c.n_embd, output_norm_.data(), count, c.n_embd, c.rms_eps, s.h.data());
  (c.tied_embeddings ? embeddings_ : output_).Forward(s.h.data(), count, logits, pool);
}

}  // namespace qattn::model
