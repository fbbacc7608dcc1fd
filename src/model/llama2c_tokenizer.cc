// llama2.c tokenizer.bin -> tokenizer.ggml.* metadata.
//   i32 max_token_length, then per token: f32 score, i32 length, `length` bytes.
// llama2.c's exporter replaced SentencePiece's U+2581 by ' ' and spelt BOS/EOS "\n<s>\n" / "\n</s>\n";
// both are undone here so the vocabulary reads like llama.cpp's.
#include <cstdio>
#include <string>
#include <vector>

#include "model/byte_reader.h"
#include "model/llama2c_internal.h"
#include "model/mapped_file.h"

namespace qattn::model::internal {
namespace {

constexpr int32_t kUnknownId = 0, kBosId = 1, kEosId = 2;
// llama.cpp token types.
constexpr int32_t kTypeNormal = 1, kTypeUnknown = 2, kTypeControl = 3, kTypeByte = 6;

bool IsByteToken(const std::string& t) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && hex(t[3]) && hex(t[4]) && t[5] == '>';
}

int32_t TokenType(int64_t id, const std::string& text) {
  if (id == kUnknownId) return kTypeUnknown;
  if (id == kBosId || id == kEosId) return kTypeControl;
  return IsByteToken(text) ? kTypeByte : kTypeNormal;
}

std::string FromLlama2cSpelling(int64_t id, std::string text) {
  if (id == kBosId && text == "\n<s>\n") return "<s>";
  if (id == kEosId && text == "\n</s>\n") return "</s>";
  std::string out;
  out.reserve(text.size());
  for (char c : text) out += c == ' ' ? std::string("\xe2\x96\x81") : std::string(1, c);  // U+2581
  return out;
}

}  // namespace

void AddLlama2cTokenizer(GgufWriter& writer, const std::string& path, int64_t vocab_size) {
  const MappedFile file = MappedFile::Open(path);
  ByteReader in(file.data(), file.size(), path);
  if (vocab_size < 3) in.Fail("a vocabulary of " + std::to_string(vocab_size) + " tokens has no room for <unk>, <s> and </s>");
  in.SetContext("the tokenizer header");
  const int32_t max_length = in.Read<int32_t>("max_token_length");
  if (max_length <= 0) in.Fail("max_token_length is " + std::to_string(max_length) + "; it must be positive");
  std::vector<std::string> tokens;  // [vocab_size]
  std::vector<float> scores;        // [vocab_size]
  std::vector<int32_t> types;       // [vocab_size]
  for (int64_t id = 0; id < vocab_size; ++id) {
    if (in.remaining() == 0) {
      in.Fail("the tokenizer ends after " + std::to_string(id) + " tokens but the checkpoint's vocab_size is " +
              std::to_string(vocab_size) + "; they must match");
    }
    in.SetContext("token " + std::to_string(id));
    const float score = in.Read<float>("score");
    const int32_t length = in.Read<int32_t>("length");
    if (length < 0 || length > max_length) {
      in.Fail("token " + std::to_string(id) + " has length " + std::to_string(length) + ", outside 0..max_token_length (" +
              std::to_string(max_length) + ")");
    }
    std::string text = FromLlama2cSpelling(id, in.ReadBytes(uint64_t(length), "bytes"));
    types.push_back(TokenType(id, text));
    tokens.push_back(std::move(text));
    scores.push_back(score);
  }
  if (in.remaining() != 0) {
    in.Fail(std::to_string(in.remaining()) + " bytes remain after token " + std::to_string(vocab_size - 1) +
            ": the tokenizer has more tokens than the checkpoint's vocab_size " + std::to_string(vocab_size) + "; they must match");
  }
  writer.SetString("tokenizer.ggml.model", "llama");
  writer.SetStringArray("tokenizer.ggml.tokens", tokens);
  writer.SetF32Array("tokenizer.ggml.scores", scores);
  writer.SetI32Array("tokenizer.ggml.token_type", types);
  writer.SetU32("tokenizer.ggml.bos_token_id", kBosId);
  writer.SetU32("tokenizer.ggml.eos_token_id", kEosId);
  writer.SetU32("tokenizer.ggml.unknown_token_id", kUnknownId);
  writer.SetBool("tokenizer.ggml.add_bos_token", true);
}

}  // namespace qattn::model::internal
