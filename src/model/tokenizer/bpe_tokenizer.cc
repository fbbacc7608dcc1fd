// Byte-level BPE ("gpt2"), as GPT-2 and Hugging Face tokenizers define it: the pre-tokenizer cuts the
// text into pieces, each piece's bytes become characters of the byte-level alphabet (one symbol per
// byte), and the adjacent pair with the best-ranked merge rule merges until no rule applies.
#include <array>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/tokenizer/merge_queue.h"
#include "model/tokenizer/pretokenizer.h"
#include "model/tokenizer/utf8.h"
#include "model/tokenizer/vocab.h"

namespace qattn::model::tok {
namespace {

class BpeTokenizer final : public BaseTokenizer {
 public:
  explicit BpeTokenizer(const VocabSpec& spec)
      : BaseTokenizer(spec), pre_(*PreTokenizerPatterns(spec.pre)), ignore_merges_(PreTokenizerIgnoresMerges(spec.pre)) {
    for (int b = 0; b < 256; ++b) byte_tokens_[b] = Find(ByteLevelChars()[b]);
    rules_.reserve(spec.merges.size());
    for (size_t rank = 0; rank < spec.merges.size(); ++rank) AddRule(spec.merges[rank], int32_t(rank));
  }

  std::string DecodeToken(int32_t id, int32_t previous) const override {
    switch (token_type(id)) {
      case TokenType::kNormal:
      case TokenType::kUndefined:
        return ByteLevelDecode(token_text(id));
      case TokenType::kUserDefined:  // added tokens are stored as plain text, not byte-level
        return token_text(id);
      case TokenType::kByte: {
        const int byte = ParseByteToken(token_text(id));
        return byte >= 0 ? std::string(1, char(byte)) : token_text(id);
      }
      default:  // control, unknown, unused
        return "";
    }
  }

 protected:
  void EncodeText(std::string_view text, bool /*after_special*/, std::vector<int32_t>& out) const override {
    for (std::string_view piece : pre_.Split(text)) EncodePiece(piece, out);
  }

 private:
  struct Rule {
    int32_t rank;    // position in tokenizer.ggml.merges: lower merges first
    int32_t merged;  // the token the pair becomes
  };

  static uint64_t PairKey(int32_t left, int32_t right) { return (uint64_t(uint32_t(left)) << 32) | uint32_t(right); }

  // "left right" (the first space after the first character separates them, so a left part may itself
  // be a space in vocabularies that keep raw spaces).
  void AddRule(const std::string& entry, int32_t rank) {
    const std::string where = "tokenizer.ggml.merges[" + std::to_string(rank) + "] '" + entry + "'";
    const size_t space = entry.size() > 1 ? entry.find(' ', 1) : std::string::npos;
    if (space == std::string::npos) throw ModelFileError(where + " is not two tokens separated by a space");
    const std::string_view left = std::string_view(entry).substr(0, space);
    const std::string_view right = std::string_view(entry).substr(space + 1);
    const int32_t l = Find(left), r = Find(right), merged = Find(std::string(left) + std::string(right));
    if (l < 0 || r < 0 || merged < 0) {
      const std::string unknown = l < 0 ? std::string(left) : r < 0 ? std::string(right) : std::string(left) + std::string(right);
      throw ModelFileError(where + " names the token '" + unknown + "', which is not in tokenizer.ggml.tokens");
    }
    rules_.emplace(PairKey(l, r), Rule{rank, merged});  // a repeated rule keeps its first rank
  }

  void EncodePiece(std::string_view piece, std::vector<int32_t>& out) const {
    if (ignore_merges_) {  // Llama 3: a piece that is a whole token is taken as is
      std::string chars;
      for (char c : piece) chars += ByteLevelChars()[static_cast<unsigned char>(c)];
      if (const int32_t id = Find(chars); id >= 0) {
        out.push_back(id);
        return;
      }
    }
    std::vector<uint32_t> bounds(piece.size() + 1);  // one symbol per byte
    for (size_t i = 0; i < bounds.size(); ++i) bounds[i] = uint32_t(i);
    std::vector<MergeSymbol> symbols = LinkedSymbols(bounds);
    for (MergeSymbol& s : symbols) s.id = byte_tokens_[static_cast<unsigned char>(piece[s.begin])];

    const auto pair = [&](const MergeSymbol& left, const MergeSymbol& right) -> std::optional<MergeCandidate> {
      if (left.id < 0 || right.id < 0) return std::nullopt;
      const auto it = rules_.find(PairKey(left.id, right.id));
      if (it == rules_.end()) return std::nullopt;
      return MergeCandidate{double(it->second.rank), it->second.merged};
    };
    for (const MergeSymbol& s : MergeAdjacent(std::move(symbols), pair)) {
      if (s.id >= 0) {
        out.push_back(s.id);
      } else if (unk_id() >= 0) {  // a byte whose character the vocabulary lacks
        out.push_back(unk_id());
      }
    }
  }

  PreTokenizer pre_;
  bool ignore_merges_;
  std::array<int32_t, 256> byte_tokens_;  // [256] the token of each byte's character, -1 if absent
  std::unordered_map<uint64_t, Rule> rules_;
};

}  // namespace

std::unique_ptr<Tokenizer> MakeBpeTokenizer(const VocabSpec& spec) { return std::make_unique<BpeTokenizer>(spec); }

}  // namespace qattn::model::tok
