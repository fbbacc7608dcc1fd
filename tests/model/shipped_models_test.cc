// The model files shipped in models/: stories260K.gguf read as documented in its SOURCE.md, and the
// llama2.c checkpoints converted to the same tensors and vocabulary (bit for bit).
#include <gtest/gtest.h>

#include <cstring>

#include "model/gguf.h"
#include "model/llama2c.h"
#include "model_test_util.h"

namespace qattn::model {
namespace {

using testing::ModelsDir;

std::string Stories(const std::string& file) { return ModelsDir() + "/stories260K/" + file; }

TEST(ShippedModels, Stories260KGgufMatchesItsSourceNotes) {
  const GgufFile f = GgufFile::Open(Stories("stories260K.gguf"));
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.file_bytes(), 1185376u);
  EXPECT_EQ(f.GetString("general.architecture"), "llama");
  EXPECT_EQ(f.GetInt("llama.context_length"), 2048);
  EXPECT_EQ(f.GetInt("llama.embedding_length"), 64);
  EXPECT_EQ(f.GetInt("llama.feed_forward_length"), 172);
  EXPECT_EQ(f.GetInt("llama.block_count"), 5);
  EXPECT_EQ(f.GetInt("llama.attention.head_count"), 8);
  EXPECT_EQ(f.GetInt("llama.attention.head_count_kv"), 4);
  EXPECT_EQ(f.GetInt("llama.rope.dimension_count"), 8);
  EXPECT_NEAR(f.GetFloat("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-12);
  EXPECT_EQ(f.GetString("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens").size(), 512u);
  EXPECT_EQ(f.GetFloatArray("tokenizer.ggml.scores").size(), 512u);
  EXPECT_EQ(f.GetIntArray("tokenizer.ggml.token_type").size(), 512u);
  EXPECT_EQ(f.GetInt("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(f.GetInt("tokenizer.ggml.eos_token_id"), 2);
  EXPECT_EQ(f.GetInt("tokenizer.ggml.unknown_token_id"), 0);
  ASSERT_EQ(f.tensors().size(), 48u);
  uint64_t parameters = 0;
  for (const GgufTensorInfo& t : f.tensors()) {
    EXPECT_EQ(t.type, GgmlType::kF32) << t.name;
    parameters += t.elements;
  }
  EXPECT_EQ(parameters, 260032u + 32768u) << "the model's parameters plus an untied copy of the embedding";
  f.RequireTensor("token_embd.weight", {64, 512});
  f.RequireTensor("output.weight", {64, 512});
  f.RequireTensor("output_norm.weight", {64});
  for (int l = 0; l < 5; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    f.RequireTensor(b + "attn_q.weight", {64, 64});
    f.RequireTensor(b + "attn_k.weight", {64, 32});
    f.RequireTensor(b + "attn_v.weight", {64, 32});
    f.RequireTensor(b + "attn_output.weight", {64, 64});
    f.RequireTensor(b + "attn_norm.weight", {64});
    f.RequireTensor(b + "ffn_gate.weight", {64, 172});
    f.RequireTensor(b + "ffn_down.weight", {172, 64});
    f.RequireTensor(b + "ffn_up.weight", {64, 172});
    f.RequireTensor(b + "ffn_norm.weight", {64});
  }
}

bool SameData(const GgufFile& a, const GgufTensorInfo& ta, const GgufFile& b, const GgufTensorInfo& tb) {
  return ta.bytes == tb.bytes && std::memcmp(a.TensorData(ta), b.TensorData(tb), ta.bytes) == 0;
}

// Every tensor of `converted` exists in `reference` with the same dims, type and bytes.
void ExpectSameTensors(const GgufFile& converted, const GgufFile& reference) {
  for (const GgufTensorInfo& t : converted.tensors()) {
    const GgufTensorInfo* r = reference.FindTensor(t.name);
    ASSERT_NE(r, nullptr) << t.name;
    EXPECT_EQ(t.dims, r->dims) << t.name;
    EXPECT_EQ(t.type, r->type) << t.name;
    EXPECT_TRUE(SameData(converted, t, reference, *r)) << t.name << " differs";
  }
}

TEST(ShippedModels, Stories260KBinConvertsToTheGgufBitForBit) {
  const GgufFile gguf = GgufFile::Open(Stories("stories260K.gguf"));
  const GgufFile bin = ConvertLlama2c(Stories("stories260K.bin"), Stories("tok512.bin"));
  ASSERT_EQ(bin.tensors().size(), 47u) << "tied: no output.weight";
  ExpectSameTensors(bin, gguf);
  // The GGUF's untied output.weight is a copy of the embedding the converted file ties to.
  EXPECT_TRUE(SameData(gguf, gguf.RequireTensor("output.weight"), bin, bin.RequireTensor("token_embd.weight")));
  EXPECT_EQ(bin.GetInt("llama.context_length"), 512) << "trained context (the GGUF says 2048)";
  for (const char* key : {"llama.embedding_length", "llama.feed_forward_length", "llama.block_count", "llama.attention.head_count",
                          "llama.attention.head_count_kv", "llama.rope.dimension_count", "tokenizer.ggml.bos_token_id",
                          "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"}) {
    EXPECT_EQ(bin.GetInt(key), gguf.GetInt(key)) << key;
  }
  EXPECT_EQ(bin.GetFloat("llama.attention.layer_norm_rms_epsilon"), gguf.GetFloat("llama.attention.layer_norm_rms_epsilon"));
  EXPECT_EQ(bin.GetString("tokenizer.ggml.model"), "llama");
  // tok512.bin spells BOS/EOS "\n<s>\n" / "\n</s>\n" and spaces ' '; converted, the vocabulary is the GGUF's.
  EXPECT_EQ(bin.GetStringArray("tokenizer.ggml.tokens"), gguf.GetStringArray("tokenizer.ggml.tokens"));
  const auto& s1 = bin.GetFloatArray("tokenizer.ggml.scores");
  const auto& s2 = gguf.GetFloatArray("tokenizer.ggml.scores");
  ASSERT_EQ(s1.size(), s2.size());
  for (size_t i = 0; i < s1.size(); ++i) EXPECT_EQ(std::memcmp(&s1[i], &s2[i], 8), 0) << "score " << i << " (bits, so -0 != 0)";
  EXPECT_EQ(bin.GetIntArray("tokenizer.ggml.token_type"), gguf.GetIntArray("tokenizer.ggml.token_type"));
}

TEST(ShippedModels, Stories260KVersion1EqualsTheLegacyFile) {
  const GgufFile legacy = ConvertLlama2c(Stories("stories260K.bin"), Stories("tok512.bin"));
  const GgufFile v1 = ConvertLlama2c(Stories("stories260K_v1.bin"), Stories("tok512.bin"));
  ASSERT_EQ(v1.tensors().size(), legacy.tensors().size());
  ExpectSameTensors(v1, legacy);
  ExpectSameTensors(v1, GgufFile::Open(Stories("stories260K.gguf")));
  EXPECT_EQ(v1.GetInt("llama.context_length"), 512);
}

struct Header {
  std::string checkpoint;
  int64_t dim, hidden, layers, heads, kv_heads, vocab, seq;
};

TEST(ShippedModels, OtherLlama2cModelsConvertWithTheirHeaders) {
  const Header models[] = {
      {"aidreams260K/aidreams260K.bin", 64, 172, 4, 4, 4, 512, 128},
      {"llama2xs-gqa-d64/model.bin", 64, 192, 5, 8, 4, 512, 256},
  };
  for (const Header& m : models) {
    SCOPED_TRACE(m.checkpoint);
    const GgufFile f = OpenModelFile(ModelsDir() + "/" + m.checkpoint);  // finds tok512.bin next to it
    EXPECT_EQ(f.GetInt("llama.embedding_length"), m.dim);
    EXPECT_EQ(f.GetInt("llama.feed_forward_length"), m.hidden);
    EXPECT_EQ(f.GetInt("llama.block_count"), m.layers);
    EXPECT_EQ(f.GetInt("llama.attention.head_count"), m.heads);
    EXPECT_EQ(f.GetInt("llama.attention.head_count_kv"), m.kv_heads);
    EXPECT_EQ(f.GetInt("llama.context_length"), m.seq);
    EXPECT_EQ(f.GetInt("llama.rope.dimension_count"), m.dim / m.heads);
    EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens").size(), size_t(m.vocab));
    EXPECT_EQ(f.tensors().size(), size_t(2 + 9 * m.layers));
    f.RequireTensor("token_embd.weight", {uint64_t(m.dim), uint64_t(m.vocab)});
    f.RequireTensor("blk.0.attn_k.weight", {uint64_t(m.dim), uint64_t(m.kv_heads * (m.dim / m.heads))});
    f.RequireTensor("blk.0.ffn_down.weight", {uint64_t(m.hidden), uint64_t(m.dim)});
  }
  // llama2xs uses Karpathy's tok512 too: the same vocabulary as stories260K.
  EXPECT_EQ(OpenModelFile(ModelsDir() + "/llama2xs-gqa-d64/model.bin").GetStringArray("tokenizer.ggml.tokens"),
            GgufFile::Open(Stories("stories260K.gguf")).GetStringArray("tokenizer.ggml.tokens"));
}

TEST(ShippedModels, VocabOnlyGgufsHaveNoTensors) {
  const GgufFile f = GgufFile::Open(ModelsDir() + "/tokenizers/ggml-vocab-phi-3.gguf");
  EXPECT_EQ(f.tensors().size(), 0u);
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens").size(), 32064u);
  EXPECT_EQ(f.GetInt("tokenizer.ggml.eos_token_id"), 32000);
  EXPECT_TRUE(f.GetBool("tokenizer.ggml.add_bos_token"));
  for (const char* name : {"ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-deepseek-coder.gguf"}) {
    const GgufFile v = GgufFile::Open(ModelsDir() + "/tokenizers/" + name);
    EXPECT_EQ(v.tensors().size(), 0u) << name;
    EXPECT_GT(v.GetStringArray("tokenizer.ggml.tokens").size(), 30000u) << name;
  }
}

// Truncating the shipped tokenizer anywhere, or the checkpoint at sampled lengths, is an error.
TEST(ShippedModels, TruncatedShippedFilesAreErrors) {
  testing::ScratchDir dir;
  const std::vector<uint8_t> tok = testing::ReadBytes(Stories("tok512.bin"));
  const std::string cut_tok = dir.File("tok.bin");
  for (size_t n = 0; n < tok.size(); n += 1 + n % 5) {
    testing::WriteBytes(cut_tok, std::vector<uint8_t>(tok.begin(), tok.begin() + n));
    testing::ExpectModelFileError([&] { ConvertLlama2c(Stories("stories260K.bin"), cut_tok); }, {cut_tok + ": "});
  }
  const std::vector<uint8_t> bin = testing::ReadBytes(Stories("stories260K.bin"));
  const std::string cut_bin = dir.File("model.bin");
  const size_t without_rope = bin.size() - 2 * 512 * 4 * 4;  // a valid legacy size of its own
  for (size_t n = 0; n < bin.size(); n += 1 + n / 3) {
    if (n == without_rope) continue;
    testing::WriteBytes(cut_bin, std::vector<uint8_t>(bin.begin(), bin.begin() + n));
    testing::ExpectModelFileError([&] { ConvertLlama2c(cut_bin, Stories("tok512.bin")); }, {cut_bin + ": "});
  }
}

}  // namespace
}  // namespace qattn::model
