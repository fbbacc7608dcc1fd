// A model as the CLI uses it: the file (GGUF, or a llama2.c checkpoint converted in memory), its
// tokenizer and the transformer built from it. Shared by run, eval and bench model.
#pragma once
#include <memory>
#include <string>

#include "core/thread_pool.h"
#include "kernels/kv_format.h"
#include "model/gguf.h"
#include "model/runtime/attention_policy.h"
#include "model/runtime/transformer.h"
#include "model/tokenizer/tokenizer.h"

namespace CLI {
class App;
}

namespace qattn {

// The model that ships with qattn (used when -m is absent).
std::string DefaultModelPath();

// -m / --tokenizer as every model command spells them.
struct ModelOptions {
  std::string model_path;      // empty: the default model
  std::string tokenizer_path;  // llama2.c checkpoints only; empty: next to the checkpoint
  void AddTo(CLI::App& command);
  std::string ResolvedPath() const { return model_path.empty() ? DefaultModelPath() : model_path; }
};

struct LoadedModel {
  model::GgufFile file;
  std::unique_ptr<model::Tokenizer> tokenizer;
  std::unique_ptr<model::Transformer> transformer;
};

// Opens the file and builds the tokenizer and (unless vocab_only) the transformer.
// Throws model::ModelFileError for anything wrong with the file.
LoadedModel LoadModel(const ModelOptions& options, bool vocab_only = false);

// How a model runs: threads, context, prompt batch, KV dtype, attention policy.
struct RuntimeOptions {
  int threads = 0;            // 0: every hardware thread
  int ctx = 0;                // 0: the file's context length, at most 4096
  int batch = 512;            // prompt tokens per forward pass
  std::string kv_dtype = "auto";
  std::string attention = "dense";
  void AddTo(CLI::App& command);
  // Sets the kernel and GEMM thread counts; returns the pool to use.
  ThreadPool* StartThreads() const;
  // The context to allocate for a model (capped by the file's trained length unless --ctx says more).
  int64_t ContextFor(const model::ModelConfig& config) const;
  // auto: f32 for f32 weights (exact), bf16 otherwise.
  model::KvStorage KvDtypeFor(const model::Transformer& transformer) const;
  std::unique_ptr<model::AttentionPolicy> MakeAttention() const;
};

// Reads a whole file's bytes exactly (for -f); throws UsageError naming the flag and the path.
std::string ReadTextFile(const std::string& flag, const std::string& path);

}  // namespace qattn
