#include "apps/loaded_model.h"

#include <CLI/CLI.hpp>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "apps/cli_support.h"
#include "model/llama2c.h"

#ifndef QATTN_DEFAULT_MODEL
#define QATTN_DEFAULT_MODEL "models/stories260K/stories260K.gguf"
#endif

namespace qattn {

std::string DefaultModelPath() {
  if (const char* env = std::getenv("QATTN_MODEL"); env && *env) return env;
  return QATTN_DEFAULT_MODEL;
}

void ModelOptions::AddTo(CLI::App& command) {
  command.add_option("-m,--model", model_path, "GGUF model or llama2.c checkpoint (default: the shipped " +
                                                   std::string("stories260K.gguf)"))
      ->type_name("MODEL");
  command.add_option("--tokenizer", tokenizer_path,
                     "tokenizer.bin for a llama2.c checkpoint (default: tok512.bin or tokenizer.bin next to it)")
      ->type_name("PATH");
}

LoadedModel LoadModel(const ModelOptions& options, bool vocab_only) {
  LoadedModel m{model::OpenModelFile(options.ResolvedPath(), options.tokenizer_path), nullptr, nullptr};
  m.tokenizer = model::LoadTokenizer(m.file);
  if (!vocab_only) {
    m.transformer = std::make_unique<model::Transformer>(m.file);
    if (m.transformer->config().n_vocab != m.tokenizer->vocab_size()) {
      throw model::ModelFileError(m.file.name() + ": the tokenizer has " + std::to_string(m.tokenizer->vocab_size()) +
                                  " tokens but token_embd.weight has " +
                                  std::to_string(m.transformer->config().n_vocab) + " rows");
    }
  }
  return m;
}

std::string ReadTextFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(flag + " cannot open '" + path + "': " + std::strerror(errno));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) throw UsageError(flag + " cannot read '" + path + "'");
  return bytes.str();
}

}  // namespace qattn

namespace qattn {

void RuntimeOptions::AddTo(CLI::App& command) {
  command.add_option("--threads,-t", threads, "threads; 0 = every hardware thread (default)")->type_name("N");
  command.add_option("--ctx,-c", ctx, "context length to allocate (default: the model's, at most 4096)")->type_name("N");
  command.add_option("--batch,-b", batch, "prompt tokens per forward pass (default 512)")->type_name("N");
  command.add_option("--kv,--kv-dtype", kv_dtype,
                     "KV cache storage: auto, f32, bf16, f16, int8 (per token and head), int4 (per group of 32) or "
                     "staircase[:segment=S,stairs=bf16/int8/int4] (auto: f32 for f32 weights, else bf16)")
      ->type_name("TYPE");
  command.add_option("--attention", attention, "attention policy (default dense)")->type_name("POLICY");
}

ThreadPool* RuntimeOptions::StartThreads() const {
  if (threads < 0) throw UsageError("--threads must be 0 (all) or positive; got " + std::to_string(threads));
  const int n = ResolveThreads(threads);
  ThreadPool::SetDefaultThreads(n);
  model::SetGemmThreads(n);
  return &ThreadPool::Default();
}

int64_t RuntimeOptions::ContextFor(const model::ModelConfig& config) const {
  if (ctx < 0) throw UsageError("--ctx must be positive; got " + std::to_string(ctx));
  if (batch < 1) throw UsageError("--batch must be positive; got " + std::to_string(batch));
  return ctx > 0 ? ctx : std::min(config.n_ctx_train, 4096);
}

model::KvStorage RuntimeOptions::KvDtypeFor(const model::Transformer& transformer) const {
  if (kv_dtype == "auto") {
    return model::KvStorage::Of(transformer.weight_dtype() == DType::kF32 ? KvDType::kF32 : KvDType::kBF16);
  }
  try {
    return model::KvStorage::Parse(kv_dtype);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--kv: ") + e.what());
  }
}

std::unique_ptr<model::AttentionPolicy> RuntimeOptions::MakeAttention() const {
  try {
    return model::MakeAttentionPolicy(attention);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--attention: ") + e.what());
  }
}

}  // namespace qattn
