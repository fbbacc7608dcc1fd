// What both tokenizer kinds share: the validated tokenizer.ggml.* metadata (VocabSpec), the token
// table with its text -> id map, special ids, end-of-generation tokens, and the splitting of text on
// user-defined tokens (which match as whole tokens before any BPE, as llama.cpp and Hugging Face do).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "model/gguf.h"
#include "model/tokenizer/tokenizer.h"

namespace qattn::model::tok {

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
enum class TokenType : int32_t {
  kUndefined = 0, kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6,
};

// The tokenizer metadata of a file, checked: every array has one entry per token, special ids are in
// range or -1, merges name known tokens. Builds either tokenizer without a file (tests do).
struct VocabSpec {
  std::string model;                 // tokenizer.ggml.model: "llama" or "gpt2"
  std::string pre = "default";       // tokenizer.ggml.pre (byte-level BPE only)
  std::vector<std::string> tokens;   // [n]
  std::vector<float> scores;         // [n] for "llama"; empty for "gpt2"
  std::vector<TokenType> types;      // [n]
  std::vector<std::string> merges;   // "left right" per rule, best first ("gpt2" only)
  int32_t bos = -1, eos = -1, unk = -1;
  bool add_bos = false, add_eos = false;
  bool add_space_prefix = true;      // "llama" only
};

// Reads and validates tokenizer.ggml.* from `file`. Throws ModelFileError naming the key at fault.
VocabSpec ReadVocabSpec(const GgufFile& file);
// Builds the tokenizer `spec` describes; validates it as ReadVocabSpec does (ModelFileError).
std::unique_ptr<Tokenizer> MakeTokenizer(VocabSpec spec);
// Throws ModelFileError unless the spec is consistent (array lengths, id ranges, known model/pre).
void ValidateVocabSpec(const VocabSpec& spec);

// The byte a SentencePiece byte token spells ("<0x0A>" -> 10), or -1 if `text` is not one.
int ParseByteToken(std::string_view text);

// Hashes std::string and std::string_view alike, so lookups by view need no copy.
struct TextHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TextToId = std::unordered_map<std::string, int32_t, TextHash, std::equal_to<>>;

class BaseTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  int32_t vocab_size() const override { return int32_t(tokens_.size()); }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }
  int32_t unk_id() const { return unk_; }
  bool IsEndOfGeneration(int32_t id) const override;
  bool adds_bos() const override { return add_bos_; }
  bool adds_eos() const override { return add_eos_; }

  const std::string& token_text(int32_t id) const { return tokens_[CheckedId(id)]; }
  TokenType token_type(int32_t id) const { return types_[CheckedId(id)]; }
  // The id of the token spelled `text` (first one if several), or -1.
  int32_t Find(std::string_view text) const;

 protected:
  explicit BaseTokenizer(const VocabSpec& spec);
  // Appends the tokens of plain text (no user-defined tokens in it). `after_special` is true at the
  // start of the text and right after a user-defined token.
  virtual void EncodeText(std::string_view text, bool after_special, std::vector<int32_t>& out) const = 0;
  // `id` if it is a valid token id; throws std::out_of_range naming it and the vocabulary size otherwise.
  int32_t CheckedId(int32_t id) const;

 private:
  struct Fragment {
    std::string_view text;  // plain text when token < 0
    int32_t token = -1;     // a user-defined token
  };
  // Text cut at user-defined tokens, matched leftmost-longest.
  std::vector<Fragment> SplitOnUserTokens(std::string_view text) const;

  std::vector<std::string> tokens_;  // [n]
  std::vector<TokenType> types_;     // [n]
  TextToId ids_;
  // User-defined tokens by first byte, longest first (the candidates to try at each position).
  std::vector<std::vector<int32_t>> user_tokens_by_byte_;  // [256]
  std::unordered_set<int32_t> end_of_generation_;
  int32_t bos_, eos_, unk_;
  bool add_bos_, add_eos_;
};

std::unique_ptr<Tokenizer> MakeSpmTokenizer(const VocabSpec& spec);
std::unique_ptr<Tokenizer> MakeBpeTokenizer(const VocabSpec& spec);

}  // namespace qattn::model::tok
