#include "model/runtime/model_config.h"

#include <cmath>

namespace qattn::model {
namespace {

const std::vector<ArchitectureTraits>& KnownArchitectures() {
  static const std::vector<ArchitectureTraits> kArchs = {
      {"llama", RopeStyle::kNormal, false, false, false},
      {"mistral", RopeStyle::kNormal, false, false, false},
      {"qwen2", RopeStyle::kNeox, true, false, false},
      {"phi3", RopeStyle::kNeox, false, true, true},
  };
  return kArchs;
}

int PositiveInt(const GgufFile& file, const std::string& key) {
  const int64_t v = file.GetInt(key);
  if (v < 1 || v > (int64_t(1) << 30)) {
    throw ModelFileError(file.name() + ": " + key + " = " + std::to_string(v) + " is out of range.");
  }
  return int(v);
}

void Require(bool ok, const GgufFile& file, const std::string& what) {
  if (!ok) throw ModelFileError(file.name() + ": " + what + ".");
}

// Llama 3 files carry per-frequency divisors as a tensor rather than as metadata.
std::vector<float> ReadFreqFactors(const GgufFile& file, int n_rot) {
  const GgufTensorInfo* info = file.FindTensor("rope_freqs.weight");
  if (!info) return {};
  Require(info->elements == uint64_t(n_rot / 2), file,
          "rope_freqs.weight has " + std::to_string(info->elements) + " elements but rope.dimension_count / 2 = " +
              std::to_string(n_rot / 2));
  std::vector<float> factors(info->elements);  // [n_rot / 2]
  DequantizeToF32(info->type, file.TensorData(*info), info->elements, factors.data());
  for (float f : factors) Require(std::isfinite(f) && f > 0, file, "rope_freqs.weight holds a non-positive factor");
  return factors;
}

}  // namespace

ArchitectureTraits TraitsOf(const std::string& architecture) {
  for (const ArchitectureTraits& a : KnownArchitectures()) {
    if (a.name == architecture) return a;
  }
  throw ModelFileError("unsupported architecture '" + architecture + "' (supported: " + SupportedArchitectures() + ")");
}

std::string SupportedArchitectures() {
  std::string names;
  for (const ArchitectureTraits& a : KnownArchitectures()) names += (names.empty() ? "" : ", ") + a.name;
  return names;
}

std::string ModelConfig::Describe() const {
  return arch.name + ": " + std::to_string(n_layer) + " layers, width " + std::to_string(n_embd) + ", heads " +
         std::to_string(n_head) + "/" + std::to_string(n_head_kv) + " x " + std::to_string(head_dim) + ", ff " +
         std::to_string(n_ff) + ", vocab " + std::to_string(n_vocab) +
         (sliding_window ? ", window " + std::to_string(sliding_window) : "");
}

ModelConfig ReadModelConfig(const GgufFile& file) {
  ModelConfig c;
  c.arch = TraitsOf(file.GetString("general.architecture"));
  const std::string p = c.arch.name + ".";
  c.n_embd = PositiveInt(file, p + "embedding_length");
  c.n_layer = PositiveInt(file, p + "block_count");
  c.n_head = PositiveInt(file, p + "attention.head_count");
  c.n_head_kv = file.Has(p + "attention.head_count_kv") ? PositiveInt(file, p + "attention.head_count_kv") : c.n_head;
  c.n_ff = PositiveInt(file, p + "feed_forward_length");
  c.n_ctx_train = PositiveInt(file, p + "context_length");
  Require(c.n_head % c.n_head_kv == 0, file,
          "attention.head_count (" + std::to_string(c.n_head) + ") is not a multiple of head_count_kv (" +
              std::to_string(c.n_head_kv) + ")");
  c.head_dim = file.Has(p + "attention.key_length") ? PositiveInt(file, p + "attention.key_length") : c.n_embd / c.n_head;
  Require(c.head_dim * c.n_head == c.n_embd || file.Has(p + "attention.key_length"), file,
          "embedding_length (" + std::to_string(c.n_embd) + ") is not a multiple of head_count");
  if (file.Has(p + "attention.value_length")) {
    Require(file.GetInt(p + "attention.value_length") == c.head_dim, file, "attention.value_length differs from key_length");
  }
  c.rms_eps = float(file.GetFloat(p + "attention.layer_norm_rms_epsilon"));
  Require(c.rms_eps > 0 && c.rms_eps < 1, file, p + "attention.layer_norm_rms_epsilon is out of range");
  c.n_rot = file.Has(p + "rope.dimension_count") ? PositiveInt(file, p + "rope.dimension_count") : c.head_dim;
  Require(c.n_rot <= c.head_dim && c.n_rot % 2 == 0, file,
          p + "rope.dimension_count must be even and at most the head dimension");
  c.rope_base = float(file.GetFloat(p + "rope.freq_base", 10000.0));
  Require(c.rope_base > 1, file, p + "rope.freq_base must be greater than 1");
  const std::string scaling = file.GetString(p + "rope.scaling.type", "none");
  if (scaling == "linear") {
    const double factor = file.GetFloat(p + "rope.scaling.factor");
    Require(factor > 0, file, p + "rope.scaling.factor must be positive");
    c.rope_freq_scale = float(1.0 / factor);
  } else {
    Require(scaling == "none", file, "rope scaling type '" + scaling + "' is not supported (none or linear)");
  }
  c.rope_freq_factors = ReadFreqFactors(file, c.n_rot);
  const int64_t window = file.GetInt(p + "attention.sliding_window", 0);
  Require(window >= 0, file, p + "attention.sliding_window is negative");
  c.sliding_window = int(window);
  const GgufTensorInfo& embd = file.RequireTensor("token_embd.weight");
  Require(embd.dims.size() == 2 && embd.dims[0] == uint64_t(c.n_embd), file,
          "token_embd.weight must have dims [" + std::to_string(c.n_embd) + ", n_vocab]");
  c.n_vocab = int(embd.dims[1]);
  c.tied_embeddings = file.FindTensor("output.weight") == nullptr;
  return c;
}

}  // namespace qattn::model
