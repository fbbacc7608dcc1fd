// Tokenizers against real vocabularies: llama.cpp's test vectors (ids made by the reference Hugging
// Face / SentencePiece tokenizers) for phi-3, llama-spm and deepseek-coder; hand-derived GPT-2 cases;
// Karpathy's tok512 (stories260K) against llama2.c's encode; round trips; small in-memory vocabularies
// for tie-breaking and merge order; and malformed metadata.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "model/gguf.h"
#include "model/tokenizer/merge_queue.h"
#include "model/tokenizer/pretokenizer.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/utf8.h"
#include "model/tokenizer/vocab.h"

namespace qattn::model {
namespace {

using Ids = std::vector<int32_t>;

const std::string kModels = QATTN_MODELS_DIR;
const std::string kTokDir = kModels + "/tokenizers/";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// llama.cpp's test-tokenizer-0 convention: every input is followed by "\n__ggml_vocab_test__\n";
// the .out file has one line of space-separated ids per input.
std::vector<std::string> ReadInputs(const std::string& path) {
  const std::string raw = ReadAll(path);
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  for (size_t pos = 0; pos < raw.size();) {
    const size_t next = raw.find(sep, pos);
    if (next == std::string::npos) {
      inputs.push_back(raw.substr(pos));
      break;
    }
    inputs.push_back(raw.substr(pos, next - pos));
    pos = next + sep.size();
  }
  return inputs;
}

std::vector<Ids> ReadOutputs(const std::string& path) {
  std::istringstream lines(ReadAll(path));
  std::vector<Ids> outputs;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ids(line);
    Ids row;
    for (int32_t id; ids >> id;) row.push_back(id);
    outputs.push_back(row);
  }
  return outputs;
}

// Each vocabulary is loaded once for the whole run.
const Tokenizer& Vocab(const std::string& path) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& slot = cache[path];
  if (!slot) slot = LoadTokenizer(GgufFile::Open(path));
  return *slot;
}

const Tokenizer& Gpt2() { return Vocab(kTokDir + "ggml-vocab-gpt-2.gguf"); }
const Tokenizer& Stories() { return Vocab(kModels + "/stories260K/stories260K.gguf"); }

std::string Printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else {
      out += char(c);
    }
  }
  return out;
}

// ------------------------------------------------------------------ llama.cpp's test vectors

struct VectorCase {
  std::string vocab;     // file under models/tokenizers
  std::string expected;  // its .out (phi-3's also serves llama-spm: same Llama 2 pieces)
};

void PrintTo(const VectorCase& c, std::ostream* os) { *os << c.vocab << " vs " << c.expected; }

class TestVectors : public ::testing::TestWithParam<VectorCase> {};

TEST_P(TestVectors, EncodeMatchesReferenceAndDecodeRoundTrips) {
  const VectorCase& c = GetParam();
  const std::vector<std::string> inputs = ReadInputs(kTokDir + "ggml-vocab-phi-3.gguf.inp");
  const std::vector<Ids> expected = ReadOutputs(kTokDir + c.expected);
  ASSERT_EQ(inputs.size(), 46u);
  ASSERT_EQ(expected.size(), inputs.size());
  const Tokenizer& tok = Vocab(kTokDir + c.vocab);
  int passed = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Ids ids = tok.Encode(inputs[i], /*add_bos=*/false);
    EXPECT_EQ(ids, expected[i]) << "input " << i << ": '" << Printable(inputs[i]) << "'";
    EXPECT_EQ(tok.Decode(ids), inputs[i]) << "input " << i;
    passed += ids == expected[i];
  }
  EXPECT_EQ(passed, 46);
}

INSTANTIATE_TEST_SUITE_P(
    Vocabularies, TestVectors,
    ::testing::Values(VectorCase{"ggml-vocab-phi-3.gguf", "ggml-vocab-phi-3.gguf.out"},
                      VectorCase{"ggml-vocab-llama-spm.gguf", "ggml-vocab-phi-3.gguf.out"},
                      VectorCase{"ggml-vocab-deepseek-coder.gguf", "ggml-vocab-deepseek-coder.gguf.out"}),
    [](const ::testing::TestParamInfo<VectorCase>& info) {
      std::string name = info.param.vocab.substr(11);  // after "ggml-vocab-"
      name = name.substr(0, name.find('.'));
      for (char& ch : name) ch = ch == '-' ? '_' : ch;
      return name;
    });

TEST(TestVectors, SpmAddsBosOnRequest) {
  const Tokenizer& tok = Vocab(kTokDir + "ggml-vocab-llama-spm.gguf");
  EXPECT_TRUE(tok.adds_bos());
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.Encode("", true), (Ids{1}));
  EXPECT_EQ(tok.Encode("Hello world", true), (Ids{1, 15043, 3186}));  // .out line 12 with BOS
  EXPECT_EQ(tok.Decode({1, 15043, 3186, 2}), "Hello world");         // BOS/EOS print nothing
}

TEST(TestVectors, EndOfGenerationTokens) {
  const Tokenizer& phi3 = Vocab(kTokDir + "ggml-vocab-phi-3.gguf");
  EXPECT_EQ(phi3.eos_id(), 32000);               // <|endoftext|>
  EXPECT_TRUE(phi3.IsEndOfGeneration(32000));
  EXPECT_TRUE(phi3.IsEndOfGeneration(32007));    // <|end|>: ends a chat turn
  EXPECT_FALSE(phi3.IsEndOfGeneration(32010));   // <|user|>
  EXPECT_FALSE(phi3.IsEndOfGeneration(2));       // </s> is user-defined here, not phi-3's EOS
  const Tokenizer& ds = Vocab(kTokDir + "ggml-vocab-deepseek-coder.gguf");
  EXPECT_TRUE(ds.IsEndOfGeneration(32014));      // <｜end▁of▁sentence｜>
  EXPECT_TRUE(ds.IsEndOfGeneration(32021));      // <|EOT|>
  EXPECT_FALSE(ds.IsEndOfGeneration(32013));     // BOS
  EXPECT_TRUE(ds.adds_bos());
  EXPECT_EQ(ds.Encode("Führer", true), (Ids{32013, 37, 32009, 71, 6247}));  // .out line 2 with BOS
}

// ------------------------------------------------------------------ GPT-2

// Expected pieces come from the GPT-2 regex by hand ('s|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|
// \s+(?!\S)|\s+), each piece a single vocabulary token, looked up by its byte-level spelling
// (space -> "Ġ" U+0120, newline -> "Ċ" U+010A, tab -> "ĉ" U+0109). The literal ids are GPT-2's
// well-known ones ("Hello" 15496, " world" 995, "," 11, "!" 0, " " 220, "\n" 198), cross-checked by lookup.
Ids Lookup(const Tokenizer& tok, const std::vector<std::string>& spellings) {
  const auto& base = dynamic_cast<const tok::BaseTokenizer&>(tok);
  Ids ids;
  for (const std::string& s : spellings) {
    ids.push_back(base.Find(s));
    EXPECT_GE(ids.back(), 0) << "'" << s << "' is not a GPT-2 token";
  }
  return ids;
}

TEST(Gpt2, WellKnownIds) {
  EXPECT_EQ(Gpt2().Encode("Hello world", false), (Ids{15496, 995}));
  EXPECT_EQ(Gpt2().Encode(" Hello", false), (Ids{18435}));
  EXPECT_EQ(Gpt2().Encode("Hello, world!", false), (Ids{15496, 11, 995, 0}));
  EXPECT_EQ(Gpt2().Encode(" ", false), (Ids{220}));
  EXPECT_EQ(Gpt2().Encode("\n", false), (Ids{198}));
  EXPECT_EQ(Lookup(Gpt2(), {"Hello", "Ġworld", ",", "!", "Ġ", "Ċ", "ĠHello"}),
            (Ids{15496, 995, 11, 0, 220, 198, 18435}));
}

TEST(Gpt2, RegexPiecesByHand) {
  const Tokenizer& t = Gpt2();
  // "  Hello": \s+(?!\S) takes one space (two would be followed by 'H'), then " Hello".
  EXPECT_EQ(t.Encode("  Hello", false), Lookup(t, {"Ġ", "ĠHello"}));
  // Contractions split off: "I" "'m"; "don" "'t".
  EXPECT_EQ(t.Encode("I'm", false), Lookup(t, {"I", "'m"}));
  EXPECT_EQ(t.Encode("don't", false), Lookup(t, {"don", "'t"}));
  // A tab before a letter is its own piece (\s+ after \s+(?!\S) fails), the letter run follows without space.
  EXPECT_EQ(t.Encode("Hello\tworld", false), Lookup(t, {"Hello", "ĉ", "world"}));
  // Digits and letters never share a piece: " 3" then "rd".
  EXPECT_EQ(t.Encode(" 3rd", false), Lookup(t, {"Ġ3", "rd"}));
  // Punctuation run with its leading space: " !!".
  EXPECT_EQ(t.Encode("a !!", false), Lookup(t, {"a", "Ġ!!"}));
}

TEST(Gpt2, SpecialIdsAndEndOfGeneration) {
  EXPECT_FALSE(Gpt2().adds_bos());
  EXPECT_EQ(Gpt2().eos_id(), 50256);
  EXPECT_TRUE(Gpt2().IsEndOfGeneration(50256));
  EXPECT_FALSE(Gpt2().IsEndOfGeneration(198));
  EXPECT_EQ(Gpt2().Decode({50256}), "");                 // control token: nothing
  // Typed text is not the control token: "<|" "endoftext" "|>" become ordinary tokens.
  const Ids typed = Gpt2().Encode("<|endoftext|>", false);
  EXPECT_GT(typed.size(), 1u);
  EXPECT_EQ(std::count(typed.begin(), typed.end(), 50256), 0);
  EXPECT_EQ(Gpt2().Decode(typed), "<|endoftext|>");
}

TEST(Gpt2, AllTestInputsRoundTrip) {
  for (const std::string& s : ReadInputs(kTokDir + "ggml-vocab-phi-3.gguf.inp")) {
    EXPECT_EQ(Gpt2().Decode(Gpt2().Encode(s, false)), s) << "'" << Printable(s) << "'";
  }
}

TEST(Gpt2, InvalidUtf8IsKeptByteForByte) {
  for (const std::string& s : {std::string("a\xff" "b"), std::string("\xe2\x96"), std::string(" \xc3(x \x80\x80 \xf0\x9f\x98")}) {
    const Ids ids = Gpt2().Encode(s, false);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(Gpt2().Decode(ids), s);
  }
  // deepseek-coder stores the byte-level characters of 0xFE and 0xFF ('þ', 'ÿ') as user-defined
  // tokens, which print as text: no crash, but those bytes come back as the characters.
  const Tokenizer& ds = Vocab(kTokDir + "ggml-vocab-deepseek-coder.gguf");
  EXPECT_EQ(ds.Decode(ds.Encode("x\xff\xfe y", false)), "x\xC3\xBF\xC3\xBE y");
}

// ------------------------------------------------------------------ stories260K (tok512)

// llama2.c's encode (dummy " " prefix, codepoint lookup, byte fallback id = byte + 3, then merge the
// best-scoring adjacent pair, leftmost on ties) run by hand in Python on this vocabulary's pieces and
// scores (tests/model/test_tokenize.py holds the same reference and checks the CLI against it):
// "Once upon a time" -> ["▁Once", "▁upon", "▁a", "▁time"].
TEST(Stories260K, OnceUponATime) {
  const Ids ids = Stories().Encode("Once upon a time", false);
  EXPECT_EQ(ids, Lookup(Stories(), {"▁Once", "▁upon", "▁a", "▁time"}));
  EXPECT_EQ(ids, (Ids{403, 407, 261, 378}));
  EXPECT_EQ(Stories().Encode("Once upon a time", true), (Ids{1, 403, 407, 261, 378}));
  EXPECT_TRUE(Stories().adds_bos());
  EXPECT_EQ(Stories().Decode({1, 403, 407, 261, 378, 2}), "Once upon a time");
}

TEST(Stories260K, ByteFallbackForCharactersOutsideTheVocabulary) {
  // "ß" (C3 9F) and the llama emoji (F0 9F A6 99) are not pieces of tok512: byte tokens, id = byte + 3.
  const Ids ids = Stories().Encode("\xC3\x9F\xF0\x9F\xA6\x99", false);
  EXPECT_EQ(ids, (Ids{Lookup(Stories(), {"▁"})[0], 0xC3 + 3, 0x9F + 3, 0xF0 + 3, 0x9F + 3, 0xA6 + 3, 0x99 + 3}));
  EXPECT_EQ(Stories().Decode(ids), "\xC3\x9F\xF0\x9F\xA6\x99");
  // 'é' is a piece of tok512 (id 485): no fallback.
  EXPECT_EQ(Stories().Encode("é", false), Lookup(Stories(), {"▁", "é"}));
  EXPECT_EQ(Stories().DecodeToken(0x0A + 3, 5), "\n");  // <0x0A>
}

}  // namespace
}  // namespace qattn::model
