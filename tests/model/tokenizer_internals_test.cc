// The tokenizers' parts on small hand-made inputs: UTF-8 scanning, the byte-level alphabet, regex
// pre-tokenizers, the merge loop's order and tie-breaking, user-defined tokens, and SentencePiece vs
// byte-level BPE on in-memory vocabularies whose right answers follow from the rules by hand.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "model/tokenizer/merge_queue.h"
#include "model/tokenizer/pretokenizer.h"
#include "model/tokenizer/utf8.h"
#include "model/tokenizer/vocab.h"

namespace qattn::model::tok {
namespace {

using Ids = std::vector<int32_t>;
using Pieces = std::vector<std::string>;

TEST(Utf8, CharLengthsAndInvalidBytes) {
  const std::string s = "a\xC3\xA9\xE2\x96\x81\xF0\x9F\xA6\x99";  // a é ▁ 🦙
  EXPECT_EQ(Utf8CharLength(s, 0), 1);
  EXPECT_EQ(Utf8CharLength(s, 1), 2);
  EXPECT_EQ(Utf8CharLength(s, 3), 3);
  EXPECT_EQ(Utf8CharLength(s, 6), 4);
  EXPECT_TRUE(IsValidUtf8(s));
  // Each malformed sequence is a run of single bytes: stray continuation, truncated, overlong, surrogate.
  for (const std::string bad : {"\x80", "\xE2\x96", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xFF"}) {
    EXPECT_EQ(Utf8CharLength(bad, 0), 1) << int(static_cast<unsigned char>(bad[0]));
    EXPECT_FALSE(IsValidUtf8(bad));
  }
  EXPECT_EQ(DecodeUtf8(s, 3), 0x2581u);
  EXPECT_EQ(DecodeUtf8("\xFF", 0), kInvalidCodepoint);
}

TEST(ByteLevel, AlphabetIsGpt2s) {
  const auto& chars = ByteLevelChars();
  EXPECT_EQ(std::set<std::string>(chars.begin(), chars.end()).size(), 256u);
  EXPECT_EQ(chars['A'], "A");
  EXPECT_EQ(chars[' '], "\xC4\xA0");   // U+0120 'Ġ': the 33rd non-printable byte (0x00-0x20 come first)
  EXPECT_EQ(chars['\n'], "\xC4\x8A");  // U+010A 'Ċ'
  EXPECT_EQ(chars[0x00], "\xC4\x80");  // U+0100
  EXPECT_EQ(chars[0xAD], "\xC5\x83");  // U+0143: soft hyphen is the 68th and last
  EXPECT_EQ(chars[0xE9], "\xC3\xA9");  // é is printable Latin-1: itself
  std::string all;
  for (int b = 0; b < 256; ++b) all += chars[b];
  std::string bytes;
  for (int b = 0; b < 256; ++b) bytes += char(b);
  EXPECT_EQ(ByteLevelDecode(all), bytes);
  EXPECT_EQ(ByteLevelDecode("x\xE4\xB8\x80"), "x\xE4\xB8\x80");  // outside the alphabet: copied
}

Pieces Split(const PreTokenizer& pre, std::string_view text) {
  Pieces out;
  for (std::string_view p : pre.Split(text)) out.emplace_back(p);
  return out;
}

TEST(PreTokenizer, Gpt2Regex) {
  const PreTokenizer gpt2(*PreTokenizerPatterns("gpt-2"));
  EXPECT_EQ(Split(gpt2, "Hello world's  end!!\n\n x3"),
            (Pieces{"Hello", " world", "'s", " ", " end", "!!", "\n\n", " x", "3"}));
  EXPECT_EQ(Split(gpt2, "   "), (Pieces{"   "}));
  EXPECT_EQ(Split(gpt2, "a\tb"), (Pieces{"a", "\t", "b"}));
  EXPECT_EQ(Split(gpt2, "нещо на"), (Pieces{"нещо", " на"}));  // \p{L} is Unicode letters
  EXPECT_TRUE(gpt2.Split("").empty());
}

TEST(PreTokenizer, InvalidBytesAreSingleCharactersAndComeBackUnchanged) {
  const PreTokenizer gpt2(*PreTokenizerPatterns("gpt-2"));
  // 0xFF matches as U+FFFD would (a symbol): it joins the punctuation run and leaves the letters alone.
  EXPECT_EQ(Split(gpt2, "ab\xFF!cd"), (Pieces{"ab", "\xFF!", "cd"}));
  EXPECT_EQ(Split(gpt2, "\xE2\x96"), (Pieces{"\xE2\x96"}));
}

TEST(PreTokenizer, SequenceSplitsTheLeftoverPieces) {
  // deepseek-coder: newlines alone, then letter runs, then punctuation runs, CJK runs, single digits.
  const PreTokenizer ds(*PreTokenizerPatterns("deepseek-coder"));
  // '=' is a math symbol (Sm), not punctuation: " = " stays between the digits the last regex cuts off.
  EXPECT_EQ(Split(ds, "int x1 = 42;\n"), (Pieces{"int", " x", "1", " = ", "4", "2", ";", "\n"}));
  EXPECT_EQ(Split(ds, "f(a, b)"), (Pieces{"f", "(", "a", ",", " b", ")"}));
  EXPECT_EQ(Split(ds, "我想 abc"), (Pieces{"我想", " abc"}));
}

TEST(PreTokenizer, Llama3AndQwen2Digits) {
  const PreTokenizer llama3(*PreTokenizerPatterns("llama3"));
  const PreTokenizer qwen2(*PreTokenizerPatterns("qwen2"));
  EXPECT_EQ(Split(llama3, "12345 I'VE"), (Pieces{"123", "45", " I", "'VE"}));  // case-insensitive contractions
  EXPECT_EQ(Split(qwen2, "123"), (Pieces{"1", "2", "3"}));
  EXPECT_TRUE(PreTokenizerIgnoresMerges("llama-bpe"));
  EXPECT_FALSE(PreTokenizerIgnoresMerges("gpt-2"));
  EXPECT_EQ(PreTokenizerPatterns("no-such-pre"), nullptr);
}

// Spans of the symbols left after merging three one-unit symbols whose pairs (0,1) and (1,2) have
// the given priorities (the merged pair of three never qualifies).
std::vector<std::pair<uint32_t, uint32_t>> MergeThree(double p01, double p12) {
  const auto pair = [&](const MergeSymbol& l, const MergeSymbol& r) -> std::optional<MergeCandidate> {
    if (r.end - l.begin != 2) return std::nullopt;
    return MergeCandidate{l.begin == 0 ? p01 : p12, 7};
  };
  std::vector<std::pair<uint32_t, uint32_t>> spans;
  for (const MergeSymbol& s : MergeAdjacent(LinkedSymbols({0, 1, 2, 3}), pair)) spans.emplace_back(s.begin, s.end);
  return spans;
}

TEST(MergeQueue, LowestPriorityFirstLeftmostOnTies) {
  using Spans = std::vector<std::pair<uint32_t, uint32_t>>;
  EXPECT_EQ(MergeThree(1, 1), (Spans{{0, 2}, {2, 3}}));
  EXPECT_EQ(MergeThree(2, 1), (Spans{{0, 1}, {1, 3}}));
  EXPECT_EQ(MergeThree(1, 2), (Spans{{0, 2}, {2, 3}}));
}

TEST(MergeQueue, ChainsOfMergesAndStaleCandidates) {
  // Six units; every adjacent pair of equal-width symbols merges, narrower first: ((01)(23))((45)) ...
  const auto pair = [](const MergeSymbol& l, const MergeSymbol& r) -> std::optional<MergeCandidate> {
    const uint32_t lw = l.end - l.begin, rw = r.end - r.begin;
    if (lw != rw) return std::nullopt;
    return MergeCandidate{double(lw), int32_t(lw + rw)};
  };
  const std::vector<MergeSymbol> out = MergeAdjacent(LinkedSymbols({0, 1, 2, 3, 4, 5, 6}), pair);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].begin, 0u);
  EXPECT_EQ(out[0].end, 4u);
  EXPECT_EQ(out[0].id, 4);
  EXPECT_EQ(out[1].begin, 4u);
  EXPECT_EQ(out[1].end, 6u);
  EXPECT_EQ(out[1].prev, 0);
  EXPECT_TRUE(MergeAdjacent(std::vector<MergeSymbol>{}, pair).empty());
}

// A tiny SentencePiece vocabulary. Scores decide; equal scores go to the leftmost pair.
VocabSpec SmallSpm(float score_ab, float score_ba) {
  VocabSpec s;
  s.model = "llama";
  s.tokens = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b", "ab", "ba", "<0x63>", "<|u|>"};
  s.scores = {0, 0, 0, -1, -2, -2, score_ab, score_ba, 0, 0};
  s.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl, TokenType::kNormal,
             TokenType::kNormal,  TokenType::kNormal,  TokenType::kNormal,  TokenType::kNormal,
             TokenType::kByte,    TokenType::kUserDefined};
  s.bos = 1;
  s.eos = 2;
  s.unk = 0;
  s.add_bos = true;
  return s;
}

TEST(SmallSpm, HigherScoreWinsAndTiesGoLeft) {
  // "aba" -> "▁aba": candidate pieces "ab" (chars 1-2) and "ba" (chars 2-3) overlap.
  EXPECT_EQ(MakeTokenizer(SmallSpm(-1, -1))->Encode("aba", false), (Ids{3, 6, 4}));  // tie: "ab" first
  EXPECT_EQ(MakeTokenizer(SmallSpm(-3, -1))->Encode("aba", false), (Ids{3, 4, 7}));  // "ba" scores higher
  EXPECT_EQ(MakeTokenizer(SmallSpm(-1, -3))->Encode("aba", false), (Ids{3, 6, 4}));
}

TEST(SmallSpm, ByteFallbackUnknownAndUserTokens) {
  auto tok = MakeTokenizer(SmallSpm(-1, -1));
  EXPECT_EQ(tok->Encode("c", false), (Ids{3, 8}));   // 'c' is no piece: its byte token <0x63>
  EXPECT_EQ(tok->Encode("d", false), (Ids{3, 0}));   // no byte token for 'd' either: <unk>
  EXPECT_EQ(tok->Encode("a<|u|>b", false), (Ids{3, 4, 9, 3, 5}));  // space prefix again after the user token
  EXPECT_EQ(tok->Encode("<s>", false).size(), 4u);   // control tokens are not matched in text
  EXPECT_EQ(tok->Decode({1, 3, 6, 8, 2}), "abc");    // BOS/EOS nothing, leading space dropped after BOS
  EXPECT_EQ(tok->DecodeToken(6, 6), "ab");
  EXPECT_EQ(tok->DecodeToken(3, 4), " ");            // mid-text: the space stays
  EXPECT_EQ(tok->Decode({0}), "");                   // <unk> prints nothing (as llama.cpp)
  EXPECT_THROW(tok->DecodeToken(10, -1), std::out_of_range);
  EXPECT_THROW(tok->DecodeToken(-1, -1), std::out_of_range);
}

TEST(SmallSpm, NoSpacePrefixWhenTheFileSaysSo) {
  VocabSpec s = SmallSpm(-1, -1);
  s.add_space_prefix = false;
  auto tok = MakeTokenizer(s);
  EXPECT_EQ(tok->Encode("ab", false), (Ids{6}));
  EXPECT_EQ(tok->Decode({3, 6}), " ab");  // nothing was prepended, so nothing is dropped
}

// A tiny byte-level vocabulary: merge rank decides ("b c" ranked before "a b" or after it).
VocabSpec SmallBpe(const std::vector<std::string>& merges) {
  VocabSpec s;
  s.model = "gpt2";
  s.pre = "gpt-2";
  s.tokens = {"a", "b", "c", "ab", "bc", "\xC4\xA0", "\xC4\xA0" "a", "<|end|>", "<|eot|>"};
  s.types.assign(s.tokens.size(), TokenType::kNormal);
  s.types[7] = TokenType::kControl;
  s.types[8] = TokenType::kUserDefined;
  s.merges = merges;
  s.eos = -1;
  return s;
}

TEST(SmallBpe, MergeRankDecides) {
  EXPECT_EQ(MakeTokenizer(SmallBpe({"b c", "a b"}))->Encode("abc", false), (Ids{0, 4}));
  EXPECT_EQ(MakeTokenizer(SmallBpe({"a b", "b c"}))->Encode("abc", false), (Ids{3, 2}));
  // Pieces never merge across the regex boundary: "ab" " a" (Ġa needs rule "Ġ a").
  EXPECT_EQ(MakeTokenizer(SmallBpe({"a b", "\xC4\xA0 a"}))->Encode("ab a", false), (Ids{3, 6}));
  EXPECT_EQ(MakeTokenizer(SmallBpe({"a b"}))->Encode("ab a", false), (Ids{3, 5, 0}));
}

TEST(SmallBpe, BytesOutsideTheVocabularyAndEndOfGeneration) {
  auto tok = MakeTokenizer(SmallBpe({"a b"}));
  EXPECT_EQ(tok->Encode("azb", false), (Ids{0, 1}));  // 'z' has no token and there is no <unk>: dropped
  EXPECT_FALSE(tok->adds_bos());
  EXPECT_TRUE(tok->IsEndOfGeneration(7));   // "<|end|>" control token
  EXPECT_FALSE(tok->IsEndOfGeneration(8));  // a user-defined token that is not an end name
  EXPECT_EQ(tok->Encode("a<|eot|>a", false), (Ids{0, 8, 0}));  // user-defined tokens match in text
  EXPECT_EQ(tok->Decode({0, 8, 7}), "a<|eot|>");                // ... and print as text; control: nothing
}

}  // namespace
}  // namespace qattn::model::tok
