// llama2.c conversion on small synthetic checkpoints written here (legacy with and without the RoPE
// tables, tied and untied, export version 1), their tokenizers, every truncation, header errors, and
// OpenModelFile's choice of format and tokenizer.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "model/gguf.h"
#include "model/llama2c.h"
#include "model_test_util.h"

namespace qattn::model {
namespace {

using testing::Append;
using testing::ExpectModelFileError;
using testing::Poke;
using testing::ScratchDir;

struct TinyConfig {
  int32_t dim = 8, hidden = 12, layers = 2, heads = 4, kv_heads = 2, vocab = 10, seq = 6;
  bool shared = true;
  int32_t head_size() const { return dim / heads; }
  int32_t kv_dim() const { return kv_heads * head_size(); }
};

// The checkpoint's arrays by llama2.c name, each filled with distinct values.
using Parts = std::map<std::string, std::vector<float>>;

Parts MakeParts(const TinyConfig& c) {
  const int32_t L = c.layers, d = c.dim, h = c.hidden, kv = c.kv_dim();
  const std::pair<std::string, int64_t> sizes[] = {
      {"tok_emb", int64_t(c.vocab) * d}, {"rms_att", L * d},       {"wq", L * d * d},      {"wk", L * kv * d},
      {"wv", L * kv * d},                {"wo", L * d * d},        {"rms_ffn", L * d},     {"w1", L * h * d},
      {"w2", L * d * h},                 {"w3", L * h * d},        {"rms_final", d},       {"freq_cis", c.seq * c.head_size()},
      {"wcls", int64_t(c.vocab) * d}};
  Parts parts;
  float next = 1.0f;
  for (const auto& [name, n] : sizes) {
    std::vector<float>& v = parts[name];
    for (int64_t i = 0; i < n; ++i) v.push_back(next++);
  }
  return parts;
}

void AppendFloats(std::vector<uint8_t>& out, const std::vector<float>& v) {
  for (float x : v) Append<float>(out, x);
}

std::vector<uint8_t> LegacyCheckpoint(const TinyConfig& c, const Parts& p, bool rope_tables) {
  std::vector<uint8_t> out;
  for (int32_t x : {c.dim, c.hidden, c.layers, c.heads, c.kv_heads, c.shared ? c.vocab : -c.vocab, c.seq}) Append<int32_t>(out, x);
  for (const char* name : {"tok_emb", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final"}) AppendFloats(out, p.at(name));
  if (rope_tables) AppendFloats(out, p.at("freq_cis"));
  if (!c.shared) AppendFloats(out, p.at("wcls"));
  return out;
}

std::vector<uint8_t> V1Checkpoint(const TinyConfig& c, const Parts& p) {
  std::vector<uint8_t> out;
  Append<uint32_t>(out, 0x616b3432);
  Append<int32_t>(out, 1);
  for (int32_t x : {c.dim, c.hidden, c.layers, c.heads, c.kv_heads, c.vocab, c.seq}) Append<int32_t>(out, x);
  Append<uint8_t>(out, c.shared ? 1 : 0);
  out.resize(256, 0);
  for (const char* name : {"rms_att", "rms_ffn", "rms_final", "tok_emb", "wq", "wk", "wv", "wo", "w1", "w2", "w3"}) AppendFloats(out, p.at(name));
  if (!c.shared) AppendFloats(out, p.at("wcls"));
  return out;
}

struct Token {
  std::string text;
  float score;
};

std::vector<Token> TinyVocab() {
  return {{"<unk>", 0.0f}, {"\n<s>\n", 0.0f}, {"\n</s>\n", 0.0f}, {"<0x00>", 0.0f}, {"<0x41>", 0.0f},
          {" a", -1.0f},   {"b c", -2.5f},    {"xyz", -3.0f},    {" ", -4.0f},      {"<0xZZ>", -5.0f}};
}

std::vector<uint8_t> Tokenizer(const std::vector<Token>& vocab, int32_t max_len = 7) {
  std::vector<uint8_t> out;
  Append<int32_t>(out, max_len);
  for (const Token& t : vocab) {
    Append<float>(out, t.score);
    Append<int32_t>(out, int32_t(t.text.size()));
    out.insert(out.end(), t.text.begin(), t.text.end());
  }
  return out;
}

// Which llama2.c array (and where in it) each GGUF tensor comes from; GGUF dims are {in, out}.
struct Source {
  std::string part;
  int64_t offset;
  std::vector<uint64_t> dims;
};

std::map<std::string, Source> ExpectedTensors(const TinyConfig& c) {
  const uint64_t d = c.dim, h = c.hidden, kv = c.kv_dim(), v = c.vocab;
  std::map<std::string, Source> m = {{"token_embd.weight", {"tok_emb", 0, {d, v}}}, {"output_norm.weight", {"rms_final", 0, {d}}}};
  if (!c.shared) m["output.weight"] = {"wcls", 0, {d, v}};
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    m[b + "attn_norm.weight"] = {"rms_att", int64_t(l * d), {d}};
    m[b + "attn_q.weight"] = {"wq", int64_t(l * d * d), {d, d}};
    m[b + "attn_k.weight"] = {"wk", int64_t(l * kv * d), {d, kv}};
    m[b + "attn_v.weight"] = {"wv", int64_t(l * kv * d), {d, kv}};
    m[b + "attn_output.weight"] = {"wo", int64_t(l * d * d), {d, d}};
    m[b + "ffn_norm.weight"] = {"rms_ffn", int64_t(l * d), {d}};
    m[b + "ffn_gate.weight"] = {"w1", int64_t(l * h * d), {d, h}};
    m[b + "ffn_down.weight"] = {"w2", int64_t(l * d * h), {h, d}};
    m[b + "ffn_up.weight"] = {"w3", int64_t(l * h * d), {d, h}};
  }
  return m;
}

void ExpectTensorsFrom(const GgufFile& f, const TinyConfig& c, const Parts& p) {
  const auto expected = ExpectedTensors(c);
  ASSERT_EQ(f.tensors().size(), expected.size());
  for (const auto& [name, src] : expected) {
    SCOPED_TRACE(name);
    const GgufTensorInfo& t = f.RequireTensor(name, src.dims);
    ASSERT_EQ(t.type, GgmlType::kF32);
    std::vector<float> got(t.elements);
    DequantizeToF32(t.type, f.TensorData(t), t.elements, got.data());
    const std::vector<float>& part = p.at(src.part);
    EXPECT_EQ(got, std::vector<float>(part.begin() + src.offset, part.begin() + src.offset + int64_t(t.elements)));
  }
}

void ExpectHeaderMetadata(const GgufFile& f, const TinyConfig& c) {
  EXPECT_EQ(f.GetString("general.architecture"), "llama");
  EXPECT_EQ(f.GetInt("llama.context_length"), c.seq);
  EXPECT_EQ(f.GetInt("llama.embedding_length"), c.dim);
  EXPECT_EQ(f.GetInt("llama.feed_forward_length"), c.hidden);
  EXPECT_EQ(f.GetInt("llama.block_count"), c.layers);
  EXPECT_EQ(f.GetInt("llama.attention.head_count"), c.heads);
  EXPECT_EQ(f.GetInt("llama.attention.head_count_kv"), c.kv_heads);
  EXPECT_EQ(f.GetInt("llama.rope.dimension_count"), c.head_size());
  EXPECT_EQ(f.GetFloat("llama.attention.layer_norm_rms_epsilon"), double(1e-5f));
  EXPECT_EQ(f.GetFloat("llama.rope.freq_base"), 10000.0);
}

class Llama2cTest : public ::testing::Test {
 protected:
  // Writes the files and converts; the tokenizer is TinyVocab's unless `tokenizer` is given.
  GgufFile Convert(const std::vector<uint8_t>& checkpoint, const std::vector<uint8_t>* tokenizer = nullptr) {
    testing::WriteBytes(ckpt_, checkpoint);
    testing::WriteBytes(tok_, tokenizer ? *tokenizer : Tokenizer(TinyVocab()));
    return ConvertLlama2c(ckpt_, tok_);
  }
  ScratchDir dir_;
  std::string ckpt_ = dir_.File("tiny.bin"), tok_ = dir_.File("tok.bin");
};

TEST_F(Llama2cTest, LegacyTiedWithRopeTables) {
  const TinyConfig c;
  const Parts p = MakeParts(c);
  const GgufFile f = Convert(LegacyCheckpoint(c, p, true));
  EXPECT_EQ(f.name(), ckpt_);
  EXPECT_EQ(f.GetString("general.name"), "tiny");
  ExpectHeaderMetadata(f, c);
  ExpectTensorsFrom(f, c, p);
  EXPECT_EQ(f.FindTensor("output.weight"), nullptr) << "tied: the runtime reuses token_embd";
}

TEST_F(Llama2cTest, LegacyUntiedWithAndWithoutRopeTables) {
  TinyConfig c;
  c.shared = false;
  const Parts p = MakeParts(c);
  for (bool rope : {true, false}) {
    SCOPED_TRACE(rope ? "with RoPE tables" : "without");
    const GgufFile f = Convert(LegacyCheckpoint(c, p, rope));
    ExpectHeaderMetadata(f, c);
    ExpectTensorsFrom(f, c, p);
  }
}

TEST_F(Llama2cTest, Version1GivesTheSameTensorsAsLegacy) {
  for (bool shared : {true, false}) {
    TinyConfig c;
    c.shared = shared;
    c.heads = 2;
    c.kv_heads = 1;  // another head layout: head size 4, kv_dim 4
    const Parts p = MakeParts(c);
    const GgufFile f = Convert(V1Checkpoint(c, p));
    ExpectHeaderMetadata(f, c);
    ExpectTensorsFrom(f, c, p);
  }
}

TEST_F(Llama2cTest, TokenizerBecomesLlamaCppVocabulary) {
  const TinyConfig c;
  const GgufFile f = Convert(LegacyCheckpoint(c, MakeParts(c), true));
  const std::string bar = "\xe2\x96\x81";  // U+2581, SentencePiece's space
  EXPECT_EQ(f.GetString("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens"),
            (std::vector<std::string>{"<unk>", "<s>", "</s>", "<0x00>", "<0x41>", bar + "a", "b" + bar + "c", "xyz", bar, "<0xZZ>"}));
  std::vector<double> scores;
  for (const Token& t : TinyVocab()) scores.push_back(t.score);
  EXPECT_EQ(f.GetFloatArray("tokenizer.ggml.scores"), scores);
  EXPECT_EQ(f.GetIntArray("tokenizer.ggml.token_type"), (std::vector<int64_t>{2, 3, 3, 6, 6, 1, 1, 1, 1, 1}));
  EXPECT_EQ(f.GetInt("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(f.GetInt("tokenizer.ggml.eos_token_id"), 2);
  EXPECT_EQ(f.GetInt("tokenizer.ggml.unknown_token_id"), 0);
  EXPECT_TRUE(f.GetBool("tokenizer.ggml.add_bos_token"));
}

TEST_F(Llama2cTest, WithoutATokenizerThereIsNoVocabulary) {
  const TinyConfig c;
  testing::WriteBytes(ckpt_, LegacyCheckpoint(c, MakeParts(c), true));
  const GgufFile f = ConvertLlama2c(ckpt_, "");
  EXPECT_FALSE(f.Has("tokenizer.ggml.tokens"));
  ExpectHeaderMetadata(f, c);
}

// Every prefix of a smaller checkpoint (dim 4, one layer; ~600 bytes), converted without a tokenizer.
TEST_F(Llama2cTest, EveryTruncatedCheckpointIsAnError) {
  TinyConfig c;
  c.dim = 4, c.hidden = 4, c.layers = 1, c.heads = 2, c.kv_heads = 1, c.vocab = 4, c.seq = 2;
  const Parts p = MakeParts(c);
  const auto convert_prefix = [&](const std::vector<uint8_t>& full, size_t n) {
    testing::WriteBytes(ckpt_, std::vector<uint8_t>(full.begin(), full.begin() + n));
    ConvertLlama2c(ckpt_, "");
  };
  for (bool shared : {true, false}) {
    c.shared = shared;
    const std::vector<uint8_t> legacy = LegacyCheckpoint(c, p, true);
    const size_t without_rope = LegacyCheckpoint(c, p, false).size();  // a valid size of its own
    convert_prefix(legacy, legacy.size());
    for (size_t n = 0; n < legacy.size(); ++n) {
      if (n == without_rope) continue;
      SCOPED_TRACE("legacy prefix " + std::to_string(n));
      ExpectModelFileError([&] { convert_prefix(legacy, n); }, {ckpt_ + ": "});
    }
    const std::vector<uint8_t> v1 = V1Checkpoint(c, p);
    convert_prefix(v1, v1.size());
    for (size_t n = 0; n < v1.size(); ++n) {
      SCOPED_TRACE("v1 prefix " + std::to_string(n));
      ExpectModelFileError([&] { convert_prefix(v1, n); }, {ckpt_ + ": "});
    }
  }
}

TEST_F(Llama2cTest, EveryTruncatedTokenizerIsAnError) {
  const TinyConfig c;
  const std::vector<uint8_t> ckpt = LegacyCheckpoint(c, MakeParts(c), true);
  const std::vector<uint8_t> tok = Tokenizer(TinyVocab());
  for (size_t n = 0; n < tok.size(); ++n) {
    SCOPED_TRACE("tokenizer prefix " + std::to_string(n));
    const std::vector<uint8_t> cut(tok.begin(), tok.begin() + n);
    ExpectModelFileError([&] { Convert(ckpt, &cut); }, {tok_ + ": "});
  }
}

TEST_F(Llama2cTest, TokenizerErrorsNameTheProblem) {
  const TinyConfig c;
  const std::vector<uint8_t> ckpt = LegacyCheckpoint(c, MakeParts(c), true);
  std::vector<Token> more = TinyVocab();
  more.push_back({"extra", -9.0f});
  std::vector<uint8_t> tok = Tokenizer(more);
  ExpectModelFileError([&] { Convert(ckpt, &tok); }, {tok_ + ": ", "more tokens", "vocab_size 10"});
  std::vector<Token> fewer = TinyVocab();
  fewer.pop_back();
  tok = Tokenizer(fewer);
  ExpectModelFileError([&] { Convert(ckpt, &tok); }, {"after 9 tokens", "vocab_size is 10"});
  tok = Tokenizer(TinyVocab(), 5);  // "\n</s>\n" has 6 bytes
  ExpectModelFileError([&] { Convert(ckpt, &tok); }, {"token 2 has length 6", "max_token_length (5)"});
  tok = Tokenizer(TinyVocab(), 0);
  ExpectModelFileError([&] { Convert(ckpt, &tok); }, {"max_token_length is 0"});
  tok = Tokenizer(TinyVocab());
  Poke<int32_t>(tok, 4 + 4, -1);  // token 0's length
  ExpectModelFileError([&] { Convert(ckpt, &tok); }, {"token 0 has length -1"});
  Poke<int32_t>(tok, 4 + 4, 0x7fffffff);
  ExpectModelFileError([&] { Convert(ckpt, &tok); }, {"token 0 has length 2147483647"});
  ExpectModelFileError([&] { ConvertLlama2c(ckpt_, dir_.File("none.bin")); }, {"cannot open '" + dir_.File("none.bin") + "'"});
}

// Header fields patched into a valid legacy checkpoint (offsets: dim 0, hidden 4, layers 8, heads 12,
// kv_heads 16, vocab 20, seq 24).
TEST_F(Llama2cTest, HeaderErrorsNameTheProblem) {
  const TinyConfig c;
  const std::vector<uint8_t> good = LegacyCheckpoint(c, MakeParts(c), true);
  const struct {
    size_t offset;
    int32_t value;
    std::vector<std::string> message;
  } cases[] = {
      {12, 3, {"dim 8 is not a multiple of n_heads 3"}},
      {16, 3, {"n_heads 4 is not a multiple of n_kv_heads 3"}},
      {12, 8, {"odd head size 1"}},
      {0, 0, {"dim = 0"}},
      {4, -5, {"hidden_dim = -5"}},
      {8, 0, {"n_layers = 0"}},
      {24, -1, {"seq_len = -1"}},
      {16, 0, {"n_kv_heads = 0"}},
      {20, 0, {"vocab_size = 0"}},
      {8, 3, {"the file has " + std::to_string(good.size()) + " bytes", "n_layers 3"}},
      {8, 0x7fffffff, {"bytes"}},
      {0, 0x40000000, {ckpt_ + ": "}},
  };
  for (const auto& k : cases) {
    SCOPED_TRACE("offset " + std::to_string(k.offset) + " = " + std::to_string(k.value));
    std::vector<uint8_t> bad = good;
    Poke<int32_t>(bad, k.offset, k.value);
    ExpectModelFileError([&] { Convert(bad); }, k.message);
  }
  std::vector<uint8_t> huge = good;
  for (size_t off = 0; off < 28; off += 4) Poke<int32_t>(huge, off, off == 12 || off == 16 ? 2 : off == 0 ? 0x7ffffffc : 0x7fffffff);
  ExpectModelFileError([&] { Convert(huge); }, {ckpt_ + ": ", "too large"});
  std::vector<uint8_t> extra = good;
  extra.push_back(0);
  ExpectModelFileError([&] { Convert(extra); }, {"the file has " + std::to_string(extra.size()) + " bytes", "with the RoPE tables"});
}

TEST_F(Llama2cTest, Version1HeaderErrors) {
  const TinyConfig c;
  const std::vector<uint8_t> good = V1Checkpoint(c, MakeParts(c));
  std::vector<uint8_t> bad = good;
  Poke<int32_t>(bad, 4, 2);
  ExpectModelFileError([&] { Convert(bad); }, {"version 2", "not supported"});
  Poke<int32_t>(bad, 4, 7);
  ExpectModelFileError([&] { Convert(bad); }, {"unknown llama2.c export version 7"});
  bad = good;
  bad[36] = 2;
  ExpectModelFileError([&] { Convert(bad); }, {"shared_classifier byte is 2"});
  bad = good;
  Poke<int32_t>(bad, 8 + 20, -10);  // vocab_size: negative is legacy-only
  ExpectModelFileError([&] { Convert(bad); }, {"vocab_size = -10"});
}

TEST_F(Llama2cTest, OpenModelFileFindsTheTokenizerNextToTheCheckpoint) {
  const TinyConfig c;
  const Parts p = MakeParts(c);
  testing::WriteBytes(ckpt_, LegacyCheckpoint(c, p, true));
  ExpectModelFileError([&] { OpenModelFile(ckpt_); },
                       {"'" + ckpt_ + "'", "'" + dir_.File("tok512.bin") + "'", "'" + dir_.File("tokenizer.bin") + "'"});
  std::vector<Token> vocab = TinyVocab();
  testing::WriteBytes(dir_.File("tokenizer.bin"), Tokenizer(vocab));
  EXPECT_EQ(OpenModelFile(ckpt_).GetStringArray("tokenizer.ggml.tokens")[7], "xyz");
  vocab[7].text = "tok512";
  testing::WriteBytes(dir_.File("tok512.bin"), Tokenizer(vocab));
  EXPECT_EQ(OpenModelFile(ckpt_).GetStringArray("tokenizer.ggml.tokens")[7], "tok512") << "tok512.bin comes first";
  vocab[7].text = "given";
  testing::WriteBytes(tok_, Tokenizer(vocab));
  const GgufFile f = OpenModelFile(ckpt_, tok_);
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens")[7], "given");
  ExpectTensorsFrom(f, c, p);
}

TEST_F(Llama2cTest, OpenModelFileOpensGgufAndReportsMissingFiles) {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  const std::string gguf = dir_.File("model.gguf");
  w.WriteFile(gguf);
  EXPECT_TRUE(LooksLikeGguf(gguf));
  EXPECT_EQ(OpenModelFile(gguf).GetString("general.architecture"), "llama");
  const TinyConfig c;
  testing::WriteBytes(ckpt_, LegacyCheckpoint(c, MakeParts(c), true));
  EXPECT_FALSE(LooksLikeGguf(ckpt_));
  EXPECT_FALSE(LooksLikeGguf(dir_.File("absent")));
  const std::string absent = dir_.File("absent.bin");
  ExpectModelFileError([&] { OpenModelFile(absent); }, {"cannot open '" + absent + "': No such file or directory"});
  ExpectModelFileError([&] { OpenModelFile(dir_.path()); }, {"cannot open '" + dir_.path() + "': Is a directory"});
  // Neither GGUF nor llama2.c, and no tokenizer nearby: the file's own problem is reported first.
  const std::string text = dir_.File("notes.txt");
  testing::WriteBytes(text, std::vector<uint8_t>(100, 'x'));
  ExpectModelFileError([&] { OpenModelFile(text); }, {text + ": ", "not a GGUF file"});
}

}  // namespace
}  // namespace qattn::model
