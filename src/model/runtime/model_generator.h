// Random-weight models with real shapes and a real vocabulary, written as GGUF: for speed at real
// sizes without downloading weights, and for parity tests of every architecture.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/gguf.h"

namespace qattn::model {

struct ModelPreset {
  std::string name;          // e.g. "qwen2.5-0.5b"
  std::string arch;          // llama | mistral | qwen2 | phi3
  int n_embd, n_layer, n_head, n_head_kv, n_ff;
  int n_vocab;               // 0: the vocabulary file's size; larger: padded with unused control tokens
  int n_ctx;
  float rope_base = 10000.0f;
  float rms_eps = 1e-5f;
  bool tied = false;         // no output.weight
  int sliding_window = 0;
  bool llama3_rope = false;  // write rope_freqs.weight as Llama 3.1 files do (factor 32, 8192 original)
  std::string vocab_file;    // file name under the shipped models/tokenizers
};

const std::vector<ModelPreset>& ModelPresets();
// Throws std::invalid_argument naming the known presets for this architecture.
const ModelPreset& FindPreset(const std::string& arch, const std::string& name);

struct GenerateModelOptions {
  uint64_t seed = 1;
  GgmlType weight_type = GgmlType::kF32;  // matrices; norms and biases stay f32
  float weight_std = 0.02f;               // normal(0, std) matrices; larger spreads the logits
  std::string vocab_path;                 // empty: the preset's shipped vocabulary
};

// A complete model file: llama.cpp metadata, the vocabulary's tokenizer.* keys, random tensors.
// `progress` (may be empty) is called with (tensors written, total).
GgufWriter GenerateRandomModel(const ModelPreset& preset, const GenerateModelOptions& options,
                               const std::function<void(int, int)>& progress = {});

// The shipped vocabulary directory (models/tokenizers in the source tree).
std::string ShippedVocabularyDir();

}  // namespace qattn::model
