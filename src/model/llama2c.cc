// llama2.c checkpoint (legacy or export version 1) -> in-memory GGUF with llama.cpp's names.
#include "model/llama2c.h"

#include <array>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "model/byte_reader.h"
#include "model/llama2c_internal.h"
#include "model/mapped_file.h"

namespace qattn::model {
namespace {

using internal::ByteReader;

constexpr uint32_t kV1Magic = 0x616b3432;  // "ak42"
constexpr uint64_t kLegacyHeaderBytes = 7 * 4;
constexpr uint64_t kV1HeaderBytes = 256;

struct Config {
  int64_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0, seq_len = 0;
  bool shared_classifier = true;
  bool v1 = false;  // export version 1 (else legacy)
  int64_t head_size() const { return dim / n_heads; }
  int64_t kv_dim() const { return n_kv_heads * head_size(); }
};

// The f32 arrays of a checkpoint; each file format stores a subset in its own order.
enum Part { kTokEmb, kRmsAtt, kWq, kWk, kWv, kWo, kRmsFfn, kW1, kW2, kW3, kRmsFinal, kFreqCis, kWcls, kPartCount };
constexpr Part kLegacyOrder[] = {kTokEmb, kRmsAtt, kWq, kWk, kWv, kWo, kRmsFfn, kW1, kW2, kW3, kRmsFinal, kFreqCis, kWcls};
constexpr Part kV1Order[] = {kRmsAtt, kRmsFfn, kRmsFinal, kTokEmb, kWq, kWk, kWv, kWo, kW1, kW2, kW3, kWcls};

// Where each part starts (in floats after the header) and the size of the whole file.
struct Layout {
  std::array<uint64_t, kPartCount> offset{};
  uint64_t file_bytes = 0;
};

// a * b * c with overflow checks; the header's sizes come from an untrusted file.
uint64_t Product(const ByteReader& in, std::initializer_list<int64_t> xs) {
  uint64_t n = 1;
  for (int64_t x : xs) {
    if (__builtin_mul_overflow(n, uint64_t(x), &n)) in.Fail("the llama2.c header's sizes are too large (their products overflow)");
  }
  return n;
}

uint64_t PartFloats(const ByteReader& in, const Config& c, Part part) {
  const int64_t L = c.n_layers;
  switch (part) {
    case kTokEmb:
    case kWcls: return Product(in, {c.vocab_size, c.dim});
    case kRmsAtt:
    case kRmsFfn: return Product(in, {L, c.dim});
    case kWq:
    case kWo: return Product(in, {L, c.dim, c.dim});
    case kWk:
    case kWv: return Product(in, {L, c.kv_dim(), c.dim});
    case kW1:
    case kW2:
    case kW3: return Product(in, {L, c.hidden_dim, c.dim});
    case kRmsFinal: return uint64_t(c.dim);
    case kFreqCis: return Product(in, {2, c.seq_len, c.head_size() / 2});  // real and imaginary tables
    case kPartCount: break;
  }
  return 0;
}

Layout MakeLayout(const ByteReader& in, const Config& c, bool with_freq_cis) {
  Layout layout;
  uint64_t floats = 0;
  const auto place = [&](Part p) {
    if ((p == kFreqCis && !with_freq_cis) || (p == kWcls && c.shared_classifier)) return;
    layout.offset[p] = floats;
    if (__builtin_add_overflow(floats, PartFloats(in, c, p), &floats)) in.Fail("the llama2.c header's sizes are too large");
  };
  if (c.v1) {
    for (Part p : kV1Order) place(p);
  } else {
    for (Part p : kLegacyOrder) place(p);
  }
  const uint64_t header = c.v1 ? kV1HeaderBytes : kLegacyHeaderBytes;
  if (__builtin_mul_overflow(floats, uint64_t(4), &layout.file_bytes) || __builtin_add_overflow(layout.file_bytes, header, &layout.file_bytes)) {
    in.Fail("the llama2.c header's sizes are too large");
  }
  return layout;
}

std::string Describe(const Config& c) {
  return "dim " + std::to_string(c.dim) + ", hidden_dim " + std::to_string(c.hidden_dim) + ", n_layers " + std::to_string(c.n_layers) +
         ", n_heads " + std::to_string(c.n_heads) + ", n_kv_heads " + std::to_string(c.n_kv_heads) + ", vocab_size " +
         std::to_string(c.vocab_size) + ", seq_len " + std::to_string(c.seq_len) +
         (c.shared_classifier ? ", shared classifier" : ", separate classifier");
}

void ReadSizes(ByteReader& in, Config& c) {
  for (int64_t* field : {&c.dim, &c.hidden_dim, &c.n_layers, &c.n_heads, &c.n_kv_heads, &c.vocab_size, &c.seq_len}) {
    *field = in.Read<int32_t>("7 x i32 sizes");
  }
}

Config ReadConfig(ByteReader& in) {
  in.SetContext("the llama2.c header");
  Config c;
  if (in.Read<uint32_t>("magic or dim") == kV1Magic) {
    const int32_t version = in.Read<int32_t>("version");
    if (version == 2) in.Fail("llama2.c export version 2 (int8 quantized) is not supported");
    if (version != 1) in.Fail("unknown llama2.c export version " + std::to_string(version) + " (only 1 and the legacy format are supported)");
    c.v1 = true;
    ReadSizes(in, c);
    const uint8_t shared = in.Read<uint8_t>("shared_classifier");
    if (shared > 1) in.Fail("the llama2.c header's shared_classifier byte is " + std::to_string(shared) + ", not 0 or 1");
    c.shared_classifier = shared == 1;
    in.Need(kV1HeaderBytes - in.pos(), "header padding");
  } else {
    in.Seek(0);  // the legacy header starts with dim
    ReadSizes(in, c);
  }
  return c;
}

void CheckConfig(const ByteReader& in, Config& c) {
  if (!c.v1 && c.vocab_size < 0) {  // legacy: negative = separate classifier
    c.vocab_size = -c.vocab_size;
    c.shared_classifier = false;
  }
  // A file that is not GGUF lands here too, so say both.
  const auto bad = [&](const std::string& why) { in.Fail("not a GGUF file, and not a valid llama2.c checkpoint: " + why); };
  const std::pair<const char*, int64_t> fields[] = {{"dim", c.dim},         {"hidden_dim", c.hidden_dim}, {"n_layers", c.n_layers},
                                                    {"n_heads", c.n_heads}, {"n_kv_heads", c.n_kv_heads}, {"vocab_size", c.vocab_size},
                                                    {"seq_len", c.seq_len}};
  for (const auto& [field, value] : fields) {
    if (value <= 0) bad("its header has " + std::string(field) + " = " + std::to_string(value) + " (every size must be positive)");
  }
  if (c.dim % c.n_heads != 0) bad("its header's dim " + std::to_string(c.dim) + " is not a multiple of n_heads " + std::to_string(c.n_heads));
  if (c.n_heads % c.n_kv_heads != 0) {
    bad("its header's n_heads " + std::to_string(c.n_heads) + " is not a multiple of n_kv_heads " + std::to_string(c.n_kv_heads));
  }
  if (c.head_size() % 2 != 0) bad("its header gives an odd head size " + std::to_string(c.head_size()) + " (RoPE rotates pairs)");
}

// The layout whose size matches the file: legacy files may or may not carry the RoPE tables.
Layout MatchLayout(const ByteReader& in, const Config& c) {
  const Layout plain = MakeLayout(in, c, false);
  if (plain.file_bytes == in.size()) return plain;
  std::string expected = std::to_string(plain.file_bytes);
  if (!c.v1) {
    const Layout with_freq = MakeLayout(in, c, true);
    if (with_freq.file_bytes == in.size()) return with_freq;
    expected += " (or " + std::to_string(with_freq.file_bytes) + " with the RoPE tables)";
  }
  in.Fail("the file has " + std::to_string(in.size()) + " bytes but a llama2.c checkpoint with this header (" + Describe(c) +
          ") has " + expected);
}

struct Checkpoint {
  internal::MappedFile file;
  Config config;
  Layout layout;
};

Checkpoint LoadCheckpoint(const std::string& path) {
  Checkpoint ck{internal::MappedFile::Open(path), {}, {}};
  ByteReader in(ck.file.data(), ck.file.size(), path);
  ck.config = ReadConfig(in);
  CheckConfig(in, ck.config);
  ck.layout = MatchLayout(in, ck.config);
  return ck;
}

// Adds the f32 tensor whose values start `float_offset` floats into part `p` (dims fastest first).
class TensorCopier {
 public:
  TensorCopier(const Checkpoint& ck, GgufWriter& w) : ck_(ck), w_(w) {
    weights_ = ck.file.data() + (ck.config.v1 ? kV1HeaderBytes : kLegacyHeaderBytes);
  }
  void Add(const std::string& name, Part p, uint64_t float_offset, std::vector<uint64_t> dims) {
    uint64_t n = 1;
    for (uint64_t d : dims) n *= d;  // no overflow: the part fits in the file
    const uint8_t* src = weights_ + 4 * (ck_.layout.offset[p] + float_offset);
    w_.AddTensor(name, GgmlType::kF32, dims, std::vector<uint8_t>(src, src + 4 * n));
  }

 private:
  const Checkpoint& ck_;
  GgufWriter& w_;
  const uint8_t* weights_;
};

void AddTensors(const Checkpoint& ck, GgufWriter& w) {
  const Config& c = ck.config;
  const auto dim = uint64_t(c.dim), hidden = uint64_t(c.hidden_dim), kv_dim = uint64_t(c.kv_dim()), vocab = uint64_t(c.vocab_size);
  TensorCopier t(ck, w);
  // A row-major [out][in] matrix is GGUF dims {in, out}.
  t.Add("token_embd.weight", kTokEmb, 0, {dim, vocab});
  t.Add("output_norm.weight", kRmsFinal, 0, {dim});
  if (!c.shared_classifier) t.Add("output.weight", kWcls, 0, {dim, vocab});  // tied: the runtime reuses token_embd
  for (uint64_t l = 0; l < uint64_t(c.n_layers); ++l) {
    const std::string blk = "blk." + std::to_string(l) + ".";
    t.Add(blk + "attn_q.weight", kWq, l * dim * dim, {dim, dim});
    t.Add(blk + "attn_k.weight", kWk, l * kv_dim * dim, {dim, kv_dim});
    t.Add(blk + "attn_v.weight", kWv, l * kv_dim * dim, {dim, kv_dim});
    t.Add(blk + "attn_output.weight", kWo, l * dim * dim, {dim, dim});
    t.Add(blk + "attn_norm.weight", kRmsAtt, l * dim, {dim});
    t.Add(blk + "ffn_gate.weight", kW1, l * hidden * dim, {dim, hidden});
    t.Add(blk + "ffn_down.weight", kW2, l * dim * hidden, {hidden, dim});
    t.Add(blk + "ffn_up.weight", kW3, l * hidden * dim, {dim, hidden});
    t.Add(blk + "ffn_norm.weight", kRmsFfn, l * dim, {dim});
  }
}

void AddMetadata(const Config& c, const std::string& path, GgufWriter& w) {
  w.SetString("general.architecture", "llama");
  w.SetString("general.name", std::filesystem::path(path).stem().string());
  w.SetU32("llama.context_length", uint32_t(c.seq_len));
  w.SetU32("llama.embedding_length", uint32_t(c.dim));
  w.SetU32("llama.feed_forward_length", uint32_t(c.hidden_dim));
  w.SetU32("llama.block_count", uint32_t(c.n_layers));
  w.SetU32("llama.attention.head_count", uint32_t(c.n_heads));
  w.SetU32("llama.attention.head_count_kv", uint32_t(c.n_kv_heads));
  w.SetU32("llama.rope.dimension_count", uint32_t(c.head_size()));
  w.SetF32("llama.attention.layer_norm_rms_epsilon", 1e-5f);  // llama2.c's rmsnorm
  w.SetF32("llama.rope.freq_base", 10000.0f);
}

}  // namespace

namespace internal {
void CheckLlama2cCheckpoint(const std::string& path) { LoadCheckpoint(path); }
}  // namespace internal

GgufFile ConvertLlama2c(const std::string& checkpoint_path, const std::string& tokenizer_path) {
  GgufWriter w;
  {
    const Checkpoint ck = LoadCheckpoint(checkpoint_path);
    AddMetadata(ck.config, checkpoint_path, w);
    if (!tokenizer_path.empty()) internal::AddLlama2cTokenizer(w, tokenizer_path, ck.config.vocab_size);
    AddTensors(ck, w);
  }
  return GgufFile::FromBytes(w.Serialize(), checkpoint_path);
}

}  // namespace qattn::model
