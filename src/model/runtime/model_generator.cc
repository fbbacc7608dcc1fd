#include "model/runtime/model_generator.h"

#include <cmath>
#include <stdexcept>

#ifndef QATTN_MODELS_DIR
#define QATTN_MODELS_DIR "models"
#endif

namespace qattn::model {
namespace {

// Fast reproducible normals (splitmix64 + Box-Muller): a 0.5B-parameter model in seconds.
class NormalSource {
 public:
  explicit NormalSource(uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  float Next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = (double(Bits() >> 11) + 0.5) * 0x1.0p-53;
    const double u2 = double(Bits() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = float(r * std::sin(2 * M_PI * u2));
    has_spare_ = true;
    return float(r * std::cos(2 * M_PI * u2));
  }

 private:
  uint64_t Bits() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t state_;
  float spare_ = 0.0f;
  bool has_spare_ = false;
};

// Copies every tokenizer.* key of a vocabulary file, padding the vocabulary to n_vocab if asked.
void CopyVocabulary(const GgufFile& vocab, int n_vocab, GgufWriter& w) {
  for (const auto& [key, value] : vocab.metadata()) {
    if (key.rfind("tokenizer.", 0) != 0) continue;
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, int64_t>) w.SetInt(key, value.type, v);
          if constexpr (std::is_same_v<T, double>) w.SetF32(key, float(v));
          if constexpr (std::is_same_v<T, std::string>) w.SetString(key, v);
          if constexpr (std::is_same_v<T, std::vector<std::string>>) {
            std::vector<std::string> tokens = v;
            if (key == "tokenizer.ggml.tokens") {
              for (int i = int(tokens.size()); i < n_vocab; ++i) tokens.push_back("<|qattn_unused_" + std::to_string(i) + "|>");
            }
            w.SetStringArray(key, tokens);
          }
          if constexpr (std::is_same_v<T, std::vector<double>>) {
            std::vector<float> xs(v.begin(), v.end());
            if (key == "tokenizer.ggml.scores") xs.resize(std::max<size_t>(xs.size(), n_vocab), 0.0f);
            w.SetF32Array(key, xs);
          }
          if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
            std::vector<int32_t> xs(v.begin(), v.end());
            if (key == "tokenizer.ggml.token_type") xs.resize(std::max<size_t>(xs.size(), n_vocab), 3);  // control
            w.SetI32Array(key, xs);
          }
        },
        value.value);
  }
}

// Llama 3.1's frequency divisors (scale 32, original context 8192, low/high frequency factors 1 and 4).
std::vector<float> Llama3FreqFactors(int n_rot, float base) {
  const double factor = 32.0, low = 1.0, high = 4.0, original = 8192.0;
  std::vector<float> divisors(n_rot / 2);  // [n_rot / 2]
  for (int i = 0; i < n_rot / 2; ++i) {
    const double freq = std::pow(double(base), -2.0 * i / n_rot);
    const double wavelength = 2 * M_PI / freq;
    double scaled = freq;
    if (wavelength > original / low) {
      scaled = freq / factor;
    } else if (wavelength >= original / high) {
      const double smooth = (original / wavelength - low) / (high - low);
      scaled = (1 - smooth) * freq / factor + smooth * freq;
    }
    divisors[i] = float(freq / scaled);
  }
  return divisors;
}

void WriteMetadata(const ModelPreset& p, int n_vocab, GgufWriter& w) {
  const std::string a = p.arch + ".";
  w.SetString("general.architecture", p.arch);
  w.SetString("general.name", p.name + " (random weights, qattn gen-model)");
  w.SetU32(a + "context_length", p.n_ctx);
  w.SetU32(a + "embedding_length", p.n_embd);
  w.SetU32(a + "feed_forward_length", p.n_ff);
  w.SetU32(a + "block_count", p.n_layer);
  w.SetU32(a + "attention.head_count", p.n_head);
  w.SetU32(a + "attention.head_count_kv", p.n_head_kv);
  w.SetU32(a + "rope.dimension_count", p.n_embd / p.n_head);
  w.SetF32(a + "rope.freq_base", p.rope_base);
  w.SetF32(a + "attention.layer_norm_rms_epsilon", p.rms_eps);
  w.SetU32(a + "vocab_size", n_vocab);
  if (p.sliding_window > 0) w.SetU32(a + "attention.sliding_window", p.sliding_window);
}

}  // namespace

const std::vector<ModelPreset>& ModelPresets() {
  static const std::vector<ModelPreset> kPresets = {
      // Small shapes for parity tests: several layers, GQA, every architecture trait exercised.
      {"tiny", "llama", 64, 3, 4, 2, 160, 0, 512, 10000.0f, 1e-5f, false, 0, false, "ggml-vocab-llama-spm.gguf"},
      {"tiny-llama3", "llama", 64, 3, 4, 2, 160, 0, 512, 500000.0f, 1e-5f, true, 0, true, "ggml-vocab-llama-spm.gguf"},
      {"tiny", "mistral", 64, 3, 4, 2, 160, 0, 512, 10000.0f, 1e-5f, false, 7, false, "ggml-vocab-llama-spm.gguf"},
      {"tiny", "qwen2", 64, 3, 4, 2, 160, 0, 512, 1000000.0f, 1e-6f, true, 0, false, "ggml-vocab-gpt-2.gguf"},
      {"tiny", "phi3", 64, 3, 4, 4, 160, 0, 512, 10000.0f, 1e-5f, false, 5, false, "ggml-vocab-phi-3.gguf"},
      // Real shapes (vocabulary padded to the real size so the embedding and output layers are real too).
      {"qwen2.5-0.5b", "qwen2", 896, 24, 14, 2, 4864, 151936, 32768, 1000000.0f, 1e-6f, true, 0, false, "ggml-vocab-gpt-2.gguf"},
      {"qwen2.5-1.5b", "qwen2", 1536, 28, 12, 2, 8960, 151936, 32768, 1000000.0f, 1e-6f, true, 0, false, "ggml-vocab-gpt-2.gguf"},
      {"llama-3.2-1b", "llama", 2048, 16, 32, 8, 8192, 128256, 131072, 500000.0f, 1e-5f, true, 0, true, "ggml-vocab-llama-spm.gguf"},
      {"tinyllama-1.1b", "llama", 2048, 22, 32, 4, 5632, 0, 2048, 10000.0f, 1e-5f, false, 0, false, "ggml-vocab-llama-spm.gguf"},
      {"mistral-7b", "mistral", 4096, 32, 32, 8, 14336, 0, 32768, 10000.0f, 1e-5f, false, 4096, false, "ggml-vocab-llama-spm.gguf"},
      {"phi-3-mini", "phi3", 3072, 32, 32, 32, 8192, 0, 4096, 10000.0f, 1e-5f, false, 2047, false, "ggml-vocab-phi-3.gguf"},
  };
  return kPresets;
}

const ModelPreset& FindPreset(const std::string& arch, const std::string& name) {
  std::string known;
  for (const ModelPreset& p : ModelPresets()) {
    if (p.arch != arch) continue;
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  if (known.empty()) throw std::invalid_argument("no presets for architecture '" + arch + "' (llama, mistral, qwen2, phi3)");
  throw std::invalid_argument("unknown preset '" + name + "' for " + arch + " (known: " + known + ")");
}

std::string ShippedVocabularyDir() { return std::string(QATTN_MODELS_DIR) + "/tokenizers"; }

GgufWriter GenerateRandomModel(const ModelPreset& p, const GenerateModelOptions& o,
                               const std::function<void(int, int)>& progress) {
  const GgufFile vocab = GgufFile::Open(o.vocab_path.empty() ? ShippedVocabularyDir() + "/" + p.vocab_file : o.vocab_path);
  const int vocab_tokens = int(vocab.GetStringArray("tokenizer.ggml.tokens").size());
  if (p.n_vocab != 0 && p.n_vocab < vocab_tokens) throw std::invalid_argument("the preset's vocabulary is smaller than the file's");
  const int n_vocab = p.n_vocab ? p.n_vocab : vocab_tokens;
  GgufWriter w;
  WriteMetadata(p, n_vocab, w);
  CopyVocabulary(vocab, n_vocab, w);

  const uint64_t d = p.n_embd, hd = p.n_embd / p.n_head, q = p.n_head * hd, kv = p.n_head_kv * hd, ff = p.n_ff;
  const bool phi3 = p.arch == "phi3", qwen2 = p.arch == "qwen2";
  NormalSource normal(o.seed);
  const int total = 2 + (p.tied ? 0 : 1) + p.n_layer * (phi3 ? 6 : qwen2 ? 12 : 9) + (p.llama3_rope ? 1 : 0);
  int written = 0;
  auto add = [&](const std::string& name, std::vector<uint64_t> dims, float mean, float std, bool matrix) {
    uint64_t n = 1;
    for (uint64_t x : dims) n *= x;
    std::vector<float> values(n);  // [prod(dims)]
    for (float& v : values) v = mean + std * normal.Next();
    w.AddTensorF32(name, dims, values.data(), matrix ? o.weight_type : GgmlType::kF32);
    if (progress) progress(++written, total);
  };
  add("token_embd.weight", {d, uint64_t(n_vocab)}, 0.0f, o.weight_std, true);
  add("output_norm.weight", {d}, 1.0f, 0.1f, false);
  if (!p.tied) add("output.weight", {d, uint64_t(n_vocab)}, 0.0f, o.weight_std, true);
  if (p.llama3_rope) {
    const std::vector<float> factors = Llama3FreqFactors(int(hd), p.rope_base);
    w.AddTensorF32("rope_freqs.weight", {factors.size()}, factors.data());
    if (progress) progress(++written, total);
  }
  for (int l = 0; l < p.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", {d}, 1.0f, 0.1f, false);
    if (phi3) {
      add(b + "attn_qkv.weight", {d, q + 2 * kv}, 0.0f, o.weight_std, true);
    } else {
      add(b + "attn_q.weight", {d, q}, 0.0f, o.weight_std, true);
      add(b + "attn_k.weight", {d, kv}, 0.0f, o.weight_std, true);
      add(b + "attn_v.weight", {d, kv}, 0.0f, o.weight_std, true);
    }
    if (qwen2) {
      add(b + "attn_q.bias", {q}, 0.0f, o.weight_std, false);
      add(b + "attn_k.bias", {kv}, 0.0f, o.weight_std, false);
      add(b + "attn_v.bias", {kv}, 0.0f, o.weight_std, false);
    }
    add(b + "attn_output.weight", {q, d}, 0.0f, o.weight_std, true);
    add(b + "ffn_norm.weight", {d}, 1.0f, 0.1f, false);
    if (phi3) {
      add(b + "ffn_up.weight", {d, 2 * ff}, 0.0f, o.weight_std, true);
    } else {
      add(b + "ffn_gate.weight", {d, ff}, 0.0f, o.weight_std, true);
      add(b + "ffn_up.weight", {d, ff}, 0.0f, o.weight_std, true);
    }
    add(b + "ffn_down.weight", {ff, d}, 0.0f, o.weight_std, true);
  }
  return w;
}

}  // namespace qattn::model
