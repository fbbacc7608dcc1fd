// SentencePiece BPE ("llama"), as SentencePiece and llama.cpp's llm_tokenizer_spm encode it: spaces
// become U+2581 (a space is prepended at the start), the text splits into UTF-8 characters, and the
// adjacent pair whose concatenation is the highest-scoring piece merges until none is a piece.
// Characters that never became a piece fall back to <0xNN> byte tokens (or <unk>).
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "model/tokenizer/merge_queue.h"
#include "model/tokenizer/utf8.h"
#include "model/tokenizer/vocab.h"

namespace qattn::model::tok {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

class SpmTokenizer final : public BaseTokenizer {
 public:
  explicit SpmTokenizer(const VocabSpec& spec)
      : BaseTokenizer(spec), scores_(spec.scores), add_space_prefix_(spec.add_space_prefix) {
    byte_tokens_.fill(-1);
    for (int32_t id = 0; id < vocab_size(); ++id) {
      const int byte = ParseByteToken(token_text(id));
      if (token_type(id) == TokenType::kByte && byte >= 0 && byte_tokens_[byte] < 0) byte_tokens_[byte] = id;
    }
  }

  std::string DecodeToken(int32_t id, int32_t previous) const override {
    switch (token_type(id)) {
      case TokenType::kByte:
        return std::string(1, char(ParseByteToken(token_text(id))));
      case TokenType::kUserDefined:
        return token_text(id);
      case TokenType::kNormal:
      case TokenType::kUndefined:
        return NormalPiece(id, previous);
      default:  // control, unknown, unused: not part of the text
        return "";
    }
  }

 protected:
  void EncodeText(std::string_view text, bool after_special, std::vector<int32_t>& out) const override {
    const std::string normalized = Normalize(text, add_space_prefix_ && after_special);
    std::vector<uint32_t> bounds;  // [characters + 1] byte offsets of the characters in `normalized`
    for (size_t pos = 0; pos < normalized.size(); pos += Utf8CharLength(normalized, pos)) bounds.push_back(uint32_t(pos));
    bounds.push_back(uint32_t(normalized.size()));
    std::vector<MergeSymbol> symbols = LinkedSymbols(bounds);
    for (MergeSymbol& s : symbols) s.id = FindPiece(Span(normalized, s.begin, s.end));

    const auto pair = [&](const MergeSymbol& left, const MergeSymbol& right) -> std::optional<MergeCandidate> {
      const int32_t id = FindPiece(Span(normalized, left.begin, right.end));
      if (id < 0) return std::nullopt;
      return MergeCandidate{-double(scores_[id]), id};  // the highest score merges first
    };
    for (const MergeSymbol& s : MergeAdjacent(std::move(symbols), pair)) {
      if (s.id >= 0) {
        out.push_back(s.id);
      } else {
        AppendByteFallback(Span(normalized, s.begin, s.end), out);
      }
    }
  }

 private:
  static std::string_view Span(const std::string& text, uint32_t begin, uint32_t end) {
    return std::string_view(text).substr(begin, end - begin);
  }

  static std::string Normalize(std::string_view text, bool prefix_space) {
    std::string out;  // at most 3 bytes per input byte plus the prefix
    out.reserve(text.size() + 8);
    if (prefix_space) out += kSpaceMark;
    for (char c : text) {
      if (c == ' ') {
        out += kSpaceMark;
      } else {
        out += c;
      }
    }
    return out;
  }

  // A piece BPE may produce: a normal (or user-defined) token spelled `text`; -1 otherwise. Control and
  // byte tokens are never formed from text ("<s>" typed by a user stays characters).
  int32_t FindPiece(std::string_view text) const {
    const int32_t id = Find(text);
    if (id < 0) return -1;
    const TokenType t = token_type(id);
    return (t == TokenType::kNormal || t == TokenType::kUserDefined || t == TokenType::kUndefined) ? id : -1;
  }

  // One character that is not a piece: its bytes as <0xNN> tokens, or a single <unk> if the
  // vocabulary lacks one of them, or nothing if it has no <unk> either.
  void AppendByteFallback(std::string_view character, std::vector<int32_t>& out) const {
    bool all_bytes = true;
    for (char c : character) all_bytes = all_bytes && byte_tokens_[static_cast<unsigned char>(c)] >= 0;
    if (all_bytes) {
      for (char c : character) out.push_back(byte_tokens_[static_cast<unsigned char>(c)]);
    } else if (unk_id() >= 0) {
      out.push_back(unk_id());
    }
  }

  // U+2581 back to spaces; the first piece of a text (at the start or after BOS) loses the space the
  // encoder prepended.
  std::string NormalPiece(int32_t id, int32_t previous) const {
    const std::string& text = token_text(id);
    std::string out;
    out.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) {
      if (std::string_view(text).substr(pos, 3) == kSpaceMark) {
        out += ' ';
        pos += 3;
      } else {
        out += text[pos++];
      }
    }
    const bool first = previous < 0 || previous == bos_id();
    if (add_space_prefix_ && first && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

  std::vector<float> scores_;            // [n]
  std::array<int32_t, 256> byte_tokens_; // [256] the <0xNN> token of each byte, -1 if absent
  bool add_space_prefix_;
};

}  // namespace

std::unique_ptr<Tokenizer> MakeSpmTokenizer(const VocabSpec& spec) { return std::make_unique<SpmTokenizer>(spec); }

}  // namespace qattn::model::tok
