#include "model/tokenizer/vocab.h"

#include <algorithm>
#include <climits>
#include <stdexcept>

#include "model/tokenizer/pretokenizer.h"

namespace qattn::model::tok {
namespace {

constexpr std::string_view kTokens = "tokenizer.ggml.tokens";

// Control tokens that end a turn in the chat formats of common models; generation stops at them.
constexpr std::string_view kEndOfTurnNames[] = {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>",
                                                "<|end|>",       "<|EOT|>",    "<end_of_turn>"};

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

// A special token id from the file: absent -> `fallback`; -1 or u32 0xFFFFFFFF (llama.cpp's "none")
// -> -1; anything else must be a token id.
int32_t ReadSpecialId(const GgufFile& file, std::string_view key, int64_t fallback, size_t n_tokens,
                      const std::string& where) {
  const int64_t v = file.GetInt(key, fallback);
  if (v == -1 || v == 0xFFFFFFFFLL) return -1;
  if (v < 0 || v >= int64_t(n_tokens)) {
    throw ModelFileError(where + std::string(key) + " is " + std::to_string(v) + ", outside the vocabulary of " +
                         std::to_string(n_tokens) + " tokens");
  }
  return int32_t(v);
}

std::vector<TokenType> ReadTypes(const GgufFile& file, const std::vector<std::string>& tokens, const std::string& where) {
  std::vector<TokenType> types(tokens.size(), TokenType::kNormal);
  if (!file.Has("tokenizer.ggml.token_type")) {
    // Old files: recognise byte tokens by their spelling so byte fallback and decoding still work.
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (ParseByteToken(tokens[i]) >= 0) types[i] = TokenType::kByte;
    }
    return types;
  }
  const std::vector<int64_t>& raw = file.GetIntArray("tokenizer.ggml.token_type");
  if (raw.size() != tokens.size()) {
    throw ModelFileError(where + "tokenizer.ggml.token_type has " + std::to_string(raw.size()) + " entries but " +
                         std::string(kTokens) + " has " + std::to_string(tokens.size()));
  }
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] < 0 || raw[i] > int64_t(TokenType::kByte)) {
      throw ModelFileError(where + "tokenizer.ggml.token_type[" + std::to_string(i) + "] is " + std::to_string(raw[i]) +
                           "; token types are 0 to 6");
    }
    types[i] = TokenType(raw[i]);
  }
  return types;
}

void CheckId(std::string_view key, int32_t id, size_t n) {
  if (id < -1 || id >= int64_t(n)) {
    throw ModelFileError(std::string(key) + " is " + std::to_string(id) + ", outside the vocabulary of " +
                         std::to_string(n) + " tokens");
  }
}

}  // namespace

int ParseByteToken(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  int value = 0;
  for (char c : text.substr(3, 2)) {
    const int digit = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

VocabSpec ReadVocabSpec(const GgufFile& file) {
  const std::string where = file.name() + ": ";
  VocabSpec s;
  s.model = file.GetString("tokenizer.ggml.model");
  const bool spm = s.model == "llama";
  if (!spm && s.model != "gpt2") {
    throw ModelFileError(where + "tokenizer.ggml.model " + Quoted(s.model) +
                         " is not supported (expected 'llama' or 'gpt2')");
  }
  s.tokens = file.GetStringArray(kTokens);
  if (s.tokens.empty()) throw ModelFileError(where + std::string(kTokens) + " is empty");
  if (spm) {
    if (!file.Has("tokenizer.ggml.scores")) {
      throw ModelFileError(where + "tokenizer.ggml.scores is missing; a 'llama' tokenizer needs one score per token");
    }
    const std::vector<double>& scores = file.GetFloatArray("tokenizer.ggml.scores");
    s.scores.assign(scores.begin(), scores.end());
  } else {
    s.merges = file.GetStringArray("tokenizer.ggml.merges");
    s.pre = file.GetString("tokenizer.ggml.pre", "default");
  }
  s.types = ReadTypes(file, s.tokens, where);
  const size_t n = s.tokens.size();
  // llama.cpp's defaults: SentencePiece vocabularies put <unk>, <s>, </s> at 0, 1, 2.
  s.bos = ReadSpecialId(file, "tokenizer.ggml.bos_token_id", spm && n > 1 ? 1 : -1, n, where);
  s.eos = ReadSpecialId(file, "tokenizer.ggml.eos_token_id", spm && n > 2 ? 2 : -1, n, where);
  s.unk = ReadSpecialId(file, "tokenizer.ggml.unknown_token_id", spm && n > 0 ? 0 : -1, n, where);
  s.add_bos = file.GetBool("tokenizer.ggml.add_bos_token", spm || PreTokenizerIgnoresMerges(s.pre));
  s.add_eos = file.GetBool("tokenizer.ggml.add_eos_token", false);
  s.add_space_prefix = spm && file.GetBool("tokenizer.ggml.add_space_prefix", true);
  try {
    ValidateVocabSpec(s);
  } catch (const ModelFileError& e) {
    throw ModelFileError(where + e.what());
  }
  return s;
}

void ValidateVocabSpec(const VocabSpec& s) {
  const size_t n = s.tokens.size();
  if (s.model != "llama" && s.model != "gpt2") {
    throw ModelFileError("tokenizer.ggml.model " + Quoted(s.model) + " is not supported (expected 'llama' or 'gpt2')");
  }
  if (n == 0) throw ModelFileError(std::string(kTokens) + " is empty");
  if (n > size_t(INT32_MAX)) throw ModelFileError(std::string(kTokens) + " has more than 2^31 - 1 tokens");
  if (s.model == "llama" && s.scores.size() != n) {
    throw ModelFileError("tokenizer.ggml.scores has " + std::to_string(s.scores.size()) + " entries but " +
                         std::string(kTokens) + " has " + std::to_string(n));
  }
  if (s.types.size() != n) {
    throw ModelFileError("tokenizer.ggml.token_type has " + std::to_string(s.types.size()) + " entries but " +
                         std::string(kTokens) + " has " + std::to_string(n));
  }
  for (size_t i = 0; i < n; ++i) {
    if (s.model == "llama" && s.types[i] == TokenType::kByte && ParseByteToken(s.tokens[i]) < 0) {
      throw ModelFileError("tokenizer.ggml.token_type[" + std::to_string(i) + "] marks " + Quoted(s.tokens[i]) +
                           " as a byte token, but byte tokens are spelled <0xNN>");
    }
  }
  CheckId("tokenizer.ggml.bos_token_id", s.bos, n);
  CheckId("tokenizer.ggml.eos_token_id", s.eos, n);
  CheckId("tokenizer.ggml.unknown_token_id", s.unk, n);
  if (s.model == "gpt2" && !PreTokenizerPatterns(s.pre)) {
    throw ModelFileError("tokenizer.ggml.pre " + Quoted(s.pre) +
                         " names a pre-tokenizer this program does not know (known: default, gpt-2, llama3, "
                         "llama-bpe, qwen2, deepseek-coder, starcoder, falcon and aliases)");
  }
}

BaseTokenizer::BaseTokenizer(const VocabSpec& spec)
    : tokens_(spec.tokens),
      types_(spec.types),
      user_tokens_by_byte_(256),
      bos_(spec.bos),
      eos_(spec.eos),
      unk_(spec.unk),
      add_bos_(spec.add_bos),
      add_eos_(spec.add_eos) {
  ids_.reserve(tokens_.size());
  for (size_t i = 0; i < tokens_.size(); ++i) {
    ids_.emplace(tokens_[i], int32_t(i));  // the first of duplicate spellings wins
    const TokenType type = types_[i];
    if (type == TokenType::kUserDefined && !tokens_[i].empty()) {
      user_tokens_by_byte_[static_cast<unsigned char>(tokens_[i][0])].push_back(int32_t(i));
    }
    const bool named_end = std::find(std::begin(kEndOfTurnNames), std::end(kEndOfTurnNames), tokens_[i]) !=
                           std::end(kEndOfTurnNames);
    if (named_end && (type == TokenType::kControl || type == TokenType::kUserDefined)) end_of_generation_.insert(int32_t(i));
  }
  if (eos_ >= 0) end_of_generation_.insert(eos_);
  for (auto& candidates : user_tokens_by_byte_) {
    std::stable_sort(candidates.begin(), candidates.end(),
                     [&](int32_t a, int32_t b) { return tokens_[a].size() > tokens_[b].size(); });
  }
}

int32_t BaseTokenizer::Find(std::string_view text) const {
  const auto it = ids_.find(text);
  return it == ids_.end() ? -1 : it->second;
}

int32_t BaseTokenizer::CheckedId(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary of " +
                            std::to_string(vocab_size()) + " tokens");
  }
  return id;
}

bool BaseTokenizer::IsEndOfGeneration(int32_t id) const { return end_of_generation_.count(id) != 0; }

std::vector<BaseTokenizer::Fragment> BaseTokenizer::SplitOnUserTokens(std::string_view text) const {
  std::vector<Fragment> fragments;
  size_t plain = 0;  // start of the plain text not yet emitted
  for (size_t pos = 0; pos < text.size();) {
    int32_t match = -1;
    for (int32_t id : user_tokens_by_byte_[static_cast<unsigned char>(text[pos])]) {
      if (text.substr(pos).starts_with(tokens_[id])) {
        match = id;  // candidates are sorted longest first
        break;
      }
    }
    if (match < 0) {
      ++pos;
      continue;
    }
    if (pos > plain) fragments.push_back(Fragment{text.substr(plain, pos - plain), -1});
    fragments.push_back(Fragment{{}, match});
    pos += tokens_[match].size();
    plain = pos;
  }
  if (plain < text.size()) fragments.push_back(Fragment{text.substr(plain), -1});
  return fragments;
}

std::vector<int32_t> BaseTokenizer::Encode(std::string_view text, bool add_bos) const {
  // Offsets inside the tokenizers are 32-bit.
  if (text.size() >= size_t(UINT32_MAX) / 4) throw std::length_error("text of " + std::to_string(text.size()) + " bytes is too long to tokenize");
  std::vector<int32_t> out;
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  bool after_special = true;
  for (const Fragment& f : SplitOnUserTokens(text)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      after_special = true;
    } else {
      EncodeText(f.text, after_special, out);
      after_special = false;
    }
  }
  return out;
}

}  // namespace qattn::model::tok
