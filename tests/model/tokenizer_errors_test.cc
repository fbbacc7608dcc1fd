// Malformed tokenizer metadata: every problem is a ModelFileError that names the file and the key at
// fault. Each case starts from a valid little GGUF (built with GgufWriter) and breaks one thing.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "model/gguf.h"
#include "model/tokenizer/tokenizer.h"

namespace qattn::model {
namespace {

struct Meta {
  std::string model = "llama";
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "<0x41>"};
  std::vector<float> scores = {0, 0, 0, -1, -2, 0};
  std::vector<int32_t> types = {2, 3, 3, 1, 1, 6};
  std::vector<std::string> merges;  // written when non-empty
  std::string pre;                  // written when non-empty
  int64_t bos = 1;
  bool write_tokens = true, write_scores = true, write_model = true;
};

GgufFile Build(const Meta& m) {
  GgufWriter w;
  if (m.write_model) w.SetString("tokenizer.ggml.model", m.model);
  if (!m.pre.empty()) w.SetString("tokenizer.ggml.pre", m.pre);
  if (m.write_tokens) w.SetStringArray("tokenizer.ggml.tokens", m.tokens);
  if (m.write_scores) w.SetF32Array("tokenizer.ggml.scores", m.scores);
  w.SetI32Array("tokenizer.ggml.token_type", m.types);
  if (!m.merges.empty()) w.SetStringArray("tokenizer.ggml.merges", m.merges);
  w.SetInt("tokenizer.ggml.bos_token_id", GgufValueType::kI64, m.bos);
  return GgufFile::FromBytes(w.Serialize(), "broken.gguf");
}

Meta Bpe() {
  Meta m;
  m.model = "gpt2";
  m.pre = "gpt-2";
  m.tokens = {"a", "b", "ab", "<|endoftext|>"};
  m.scores.clear();
  m.write_scores = false;
  m.types = {1, 1, 1, 3};
  m.merges = {"a b"};
  m.bos = 3;
  return m;
}

// The message of the ModelFileError LoadTokenizer throws for `m` ("" if it throws none).
std::string LoadError(const Meta& m) {
  try {
    LoadTokenizer(Build(m));
  } catch (const ModelFileError& e) {
    return e.what();
  }
  return "";
}

void ExpectError(const Meta& m, const std::vector<std::string>& fragments) {
  const std::string msg = LoadError(m);
  ASSERT_FALSE(msg.empty()) << "no error";
  EXPECT_NE(msg.find("broken.gguf"), std::string::npos) << msg;
  for (const std::string& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "'" << f << "' not in: " << msg;
}

TEST(TokenizerErrors, ValidBaselinesLoad) {
  EXPECT_EQ(LoadError(Meta{}), "");
  EXPECT_EQ(LoadError(Bpe()), "");
  auto spm = LoadTokenizer(Build(Meta{}));
  EXPECT_EQ(spm->Encode("aA", false), (std::vector<int32_t>{3, 4, 5}));  // ▁ a <0x41>
  auto bpe = LoadTokenizer(Build(Bpe()));
  EXPECT_EQ(bpe->Encode("ab", false), (std::vector<int32_t>{2}));
  EXPECT_EQ(bpe->Encode("ab", true), (std::vector<int32_t>{3, 2}));  // asked for: BOS even if gpt2 does not add it
  EXPECT_FALSE(bpe->adds_bos());
}

TEST(TokenizerErrors, MissingKeys) {
  Meta no_tokens;
  no_tokens.write_tokens = false;
  ExpectError(no_tokens, {"tokenizer.ggml.tokens"});
  Meta no_model;
  no_model.write_model = false;
  ExpectError(no_model, {"tokenizer.ggml.model"});
  Meta no_scores;
  no_scores.write_scores = false;
  ExpectError(no_scores, {"tokenizer.ggml.scores"});
  Meta no_merges = Bpe();
  no_merges.merges.clear();
  ExpectError(no_merges, {"tokenizer.ggml.merges"});
}

TEST(TokenizerErrors, LengthMismatches) {
  Meta scores;
  scores.scores.pop_back();
  ExpectError(scores, {"tokenizer.ggml.scores", "5", "6"});
  Meta types;
  types.types.push_back(1);
  ExpectError(types, {"tokenizer.ggml.token_type", "7", "6"});
  Meta empty;
  empty.tokens.clear();
  empty.scores.clear();
  empty.types.clear();
  ExpectError(empty, {"tokenizer.ggml.tokens", "empty"});
}

TEST(TokenizerErrors, BadValues) {
  Meta bos;
  bos.bos = 6;
  ExpectError(bos, {"tokenizer.ggml.bos_token_id", "6", "6 tokens"});
  Meta negative;
  negative.bos = -5;
  ExpectError(negative, {"tokenizer.ggml.bos_token_id", "-5"});
  Meta type;
  type.types[4] = 9;
  ExpectError(type, {"tokenizer.ggml.token_type[4]", "9"});
  Meta byte;
  byte.tokens[5] = "<0xZZ>";
  ExpectError(byte, {"tokenizer.ggml.token_type[5]", "<0xZZ>"});
  Meta model;
  model.model = "bert";
  ExpectError(model, {"tokenizer.ggml.model", "'bert'"});
}

TEST(TokenizerErrors, BadMergesAndPreTokenizer) {
  Meta unknown = Bpe();
  unknown.merges = {"a b", "b zz"};
  ExpectError(unknown, {"tokenizer.ggml.merges[1]", "'zz'"});
  Meta result = Bpe();
  result.merges = {"b a"};  // "ba" is no token
  ExpectError(result, {"tokenizer.ggml.merges[0]", "'ba'"});
  Meta nospace = Bpe();
  nospace.merges = {"ab"};
  ExpectError(nospace, {"tokenizer.ggml.merges[0]", "space"});
  Meta pre = Bpe();
  pre.pre = "mystery-pre";
  ExpectError(pre, {"tokenizer.ggml.pre", "'mystery-pre'"});
}

TEST(TokenizerErrors, NoneIdsAreAccepted) {
  Meta none;
  none.bos = 0xFFFFFFFFLL;  // llama.cpp writes u32 -1 for "no such token"
  auto tok = LoadTokenizer(Build(none));
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_EQ(tok->Encode("a", true), (std::vector<int32_t>{3, 4}));  // no BOS to add
}

}  // namespace
}  // namespace qattn::model
