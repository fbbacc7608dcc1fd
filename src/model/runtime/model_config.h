// What a transformer needs to know about its file: sizes, the architecture's traits and the RoPE
// setup, read from GGUF metadata (llama.cpp's keys: "<arch>.embedding_length", ...).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/gguf.h"

namespace qattn::model {

// How RoPE pairs the dimensions of a head: kNormal rotates (x[2i], x[2i+1]) (llama, mistral as
// llama.cpp stores them); kNeox rotates (x[i], x[i + n_rot/2]) (qwen2, phi3).
enum class RopeStyle { kNormal, kNeox };

// The differences between the supported architectures. Everything else (RMSNorm, RoPE, attention on
// the core skeleton, SwiGLU MLP, tied embeddings) is shared.
struct ArchitectureTraits {
  std::string name;           // general.architecture
  RopeStyle rope = RopeStyle::kNormal;
  bool qkv_bias = false;      // q/k/v projections carry a bias (qwen2)
  bool fused_qkv = false;     // one attn_qkv matrix [q; k; v] (phi3)
  bool fused_gate_up = false; // ffn_up holds [gate; up], 2 * n_ff rows (phi3)
};

// Looks up the traits of a supported architecture; throws ModelFileError naming unsupported ones.
ArchitectureTraits TraitsOf(const std::string& architecture);
// Names of the supported architectures, for messages and --help: "llama, mistral, qwen2, phi3".
std::string SupportedArchitectures();

struct ModelConfig {
  ArchitectureTraits arch;
  int n_embd = 0;       // model width
  int n_layer = 0;
  int n_head = 0;       // query heads
  int n_head_kv = 0;    // key/value heads (GQA when < n_head)
  int head_dim = 0;     // n_embd / n_head unless the file says otherwise (attention.key_length)
  int n_ff = 0;         // MLP hidden width
  int n_vocab = 0;
  int n_ctx_train = 0;  // context length the file declares
  float rms_eps = 1e-5f;
  // RoPE: theta(pos, i) = pos * freq_scale * base^(-2i / n_rot) / freq_factors[i]
  int n_rot = 0;                       // rotated dims per head (<= head_dim)
  float rope_base = 10000.0f;
  float rope_freq_scale = 1.0f;        // 1 / rope.scaling.factor for linear scaling
  std::vector<float> rope_freq_factors;  // [n_rot / 2] from rope_freqs.weight (Llama 3.1+), or empty
  int sliding_window = 0;              // 0: none; else a query sees the last W keys (itself included)
  bool tied_embeddings = false;        // no output.weight: logits use token_embd

  int q_dim() const { return n_head * head_dim; }
  int kv_dim() const { return n_head_kv * head_dim; }
  std::string Describe() const;  // one line: "llama: 5 layers, width 64, heads 8/4 x 8, ff 172, vocab 512"
};

// Reads and validates the configuration (every required key present and consistent). Tensors are
// checked when the weights are loaded.
ModelConfig ReadModelConfig(const GgufFile& file);

}  // namespace qattn::model
