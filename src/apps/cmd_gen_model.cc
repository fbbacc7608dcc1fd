// `qattn gen-model`: a random-weight GGUF model with a preset's real shapes and a real vocabulary.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>

#include "apps/cli_support.h"
#include "model/runtime/model_config.h"
#include "model/runtime/model_generator.h"

namespace qattn {
namespace {

struct GenModelOptions {
  std::string arch;
  std::string preset;
  bool random = false;
  std::string out;
  std::string type = "bf16";
  int64_t seed = 1;
  float weight_std = 0.02f;
  std::string vocab;
};

model::GgmlType ParseWeightType(const std::string& name) {
  for (model::GgmlType t : {model::GgmlType::kF32, model::GgmlType::kF16, model::GgmlType::kBF16,
                            model::GgmlType::kQ8_0, model::GgmlType::kQ4_0}) {
    if (name == model::GgmlTypeName(t)) return t;
  }
  throw UsageError("--type must be f32, f16, bf16, q8_0 or q4_0; got '" + name + "'");
}

int Run(const GenModelOptions& o) {
  if (!o.random) throw UsageError("only --random weights can be generated (there is no model hub here)");
  const model::GgmlType type = ParseWeightType(o.type);
  const model::ModelPreset* preset;
  try {
    preset = &model::FindPreset(o.arch, o.preset);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  model::GenerateModelOptions g;
  g.seed = uint64_t(o.seed);
  g.weight_type = type;
  g.weight_std = o.weight_std;
  g.vocab_path = o.vocab;
  const model::GgufWriter writer = model::GenerateRandomModel(*preset, g, [](int done, int total) {
    std::fprintf(stderr, "\rgenerating tensors %d/%d", done, total);
    if (done == total) std::fprintf(stderr, "\n");
  });
  std::fprintf(stderr, "writing %s\n", o.out.c_str());
  writer.WriteFile(o.out);
  return kExitOk;
}

}  // namespace

Command AddGenModelCommand(CLI::App& parent) {
  auto o = std::make_shared<GenModelOptions>();
  CLI::App* cmd = parent.add_subcommand("gen-model", "write a random-weight GGUF model with a preset's real shapes");
  cmd->add_option("--arch", o->arch, "architecture: " + model::SupportedArchitectures())->required()->type_name("ARCH");
  cmd->add_option("--preset", o->preset, "shape preset, e.g. qwen2.5-0.5b, llama-3.2-1b, tiny")->required()->type_name("NAME");
  cmd->add_flag("--random", o->random, "random weights (required: the only kind available)");
  cmd->add_option("-o,--out", o->out, "output GGUF path")->required()->type_name("X.gguf");
  cmd->add_option("--type", o->type, "weight type of the matrices: f32, f16, bf16 (default), q8_0, q4_0")->type_name("TYPE");
  cmd->add_option("--seed", o->seed, "random seed (default 1)");
  cmd->add_option("--weight-std", o->weight_std, "standard deviation of the matrices (default 0.02)")->type_name("S");
  cmd->add_option("--vocab", o->vocab, "vocabulary GGUF to use instead of the preset's shipped one")->type_name("PATH");
  return {cmd, [o] { return Run(*o); }};
}

}  // namespace qattn
