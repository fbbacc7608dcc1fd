// Malformed GGUF input: every truncation, single-byte corruptions everywhere, and targeted corruptions of
// each kind of field must raise ModelFileError naming the file and the problem; never a crash, another
// exception, or an allocation sized by a corrupted count (the address space is capped while these run).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <functional>
#include <random>

#include "model/gguf.h"
#include "model_test_util.h"

namespace qattn::model {
namespace {

using testing::ExpectModelFileError;
using testing::Find;
using testing::Peek;
using testing::Poke;
using testing::SucceedsOrModelFileError;

const char kName[] = "small.gguf";

// A small valid GGUF with metadata of several kinds and two tensors; the f32 tensor is last and its 32
// bytes end the file exactly, so every proper prefix is missing something.
std::vector<uint8_t> SmallGguf() {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetU32("dup.a", 1);
  w.SetU32("dup.b", 2);
  w.SetBool("flag", true);
  w.SetInt("big", GgufValueType::kU64, 5);
  w.SetF32Array("scores", {0.5f, -1.0f});
  w.SetStringArray("tokens", {"<unk>", "ab"});
  std::vector<float> values(32);
  for (int i = 0; i < 32; ++i) values[i] = float(i) - 10.5f;
  w.AddTensorF32("tensor.first", {32}, values.data(), GgmlType::kQ8_0);
  w.AddTensorF32("tensor.other", {8}, values.data(), GgmlType::kF32);
  return w.Serialize();
}

// Where a key's value starts (just after the key's bytes).
size_t AfterKey(const std::vector<uint8_t>& b, const std::string& key) { return Find(b, key) + key.size(); }

// Field offsets of a tensor info, from its name.
struct TensorFields {
  size_t n_dims, dims, type, offset;
};
TensorFields FieldsOf(const std::vector<uint8_t>& b, const std::string& name) {
  TensorFields f{};
  f.n_dims = AfterKey(b, name);
  f.dims = f.n_dims + 4;
  f.type = f.dims + 8 * Peek<uint32_t>(b, f.n_dims);
  f.offset = f.type + 4;
  return f;
}

// Caps the address space for the test so a corrupted count that slipped through to an allocation shows
// up as bad_alloc (reported as a failure) instead of a machine swapping.
class CappedMemory : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef __SANITIZE_ADDRESS__  // ASan needs far more address space than it uses; it catches bad allocations itself
    ASSERT_EQ(getrlimit(RLIMIT_AS, &old_), 0);
    struct rlimit cap = old_;
    cap.rlim_cur = std::min<rlim_t>(old_.rlim_cur, rlim_t(4) << 30);
    ASSERT_EQ(setrlimit(RLIMIT_AS, &cap), 0);
    capped_ = true;
#endif
  }
  void TearDown() override {
    if (capped_) setrlimit(RLIMIT_AS, &old_);
  }
  struct rlimit old_ {};
  bool capped_ = false;
};

using GgufMalformed = CappedMemory;

TEST_F(GgufMalformed, TheSmallFileIsValidAndEndsWithItsLastTensor) {
  const std::vector<uint8_t> bytes = SmallGguf();
  const GgufFile f = GgufFile::FromBytes(bytes, kName);
  EXPECT_EQ(f.GetInt("big"), 5);
  const GgufTensorInfo& last = f.tensors().back();
  EXPECT_EQ(last.offset + last.bytes, 96u);
  const size_t infos_end = FieldsOf(bytes, "tensor.other").offset + 8;
  EXPECT_EQ((infos_end + 31) / 32 * 32 + 96, bytes.size()) << "the data section ends the file";
}

TEST_F(GgufMalformed, EveryTruncationIsAnError) {
  const std::vector<uint8_t> bytes = SmallGguf();
  for (size_t n = 0; n < bytes.size(); ++n) {
    SCOPED_TRACE("prefix of " + std::to_string(n) + " bytes");
    ExpectModelFileError([&] { GgufFile::FromBytes(std::vector<uint8_t>(bytes.begin(), bytes.begin() + n), kName); },
                         {std::string(kName) + ": "});
  }
}

TEST_F(GgufMalformed, TruncatedFilesOnDiskNameThePath) {
  testing::ScratchDir dir;
  const std::vector<uint8_t> bytes = SmallGguf();
  for (size_t n : {size_t(0), size_t(3), size_t(23), bytes.size() / 2, bytes.size() - 1}) {
    const std::string path = dir.File("cut" + std::to_string(n) + ".gguf");
    testing::WriteBytes(path, std::vector<uint8_t>(bytes.begin(), bytes.begin() + n));
    ExpectModelFileError([&] { GgufFile::Open(path); }, {path + ": "});
  }
  ExpectModelFileError([&] { GgufFile::Open(dir.File("absent.gguf")); },
                       {"cannot open '" + dir.File("absent.gguf") + "': No such file or directory"});
  ExpectModelFileError([&] { GgufFile::Open(dir.path()); }, {"cannot open '" + dir.path() + "'", "directory"});
}

TEST_F(GgufMalformed, SingleByteCorruptionsNeverCrash) {
  const std::vector<uint8_t> bytes = SmallGguf();
  int errors = 0, total = 0;
  for (size_t pos = 0; pos < bytes.size(); ++pos) {
    for (int variant = 0; variant < 5; ++variant) {
      std::vector<uint8_t> bad = bytes;
      const uint8_t values[] = {0x00, 0xff, 0x7f, uint8_t(bytes[pos] ^ 0x01), uint8_t(bytes[pos] ^ 0x80)};
      bad[pos] = values[variant];
      if (bad == bytes) continue;
      std::string msg;
      ++total;
      if (!SucceedsOrModelFileError([&] { GgufFile::FromBytes(bad, kName); }, &msg)) {
        ++errors;
        EXPECT_EQ(msg.rfind(std::string(kName) + ": ", 0), 0u) << msg;
      }
    }
  }
  // Corrupting any of the 24 header bytes, lengths or type ids is caught; bytes inside strings and data are not.
  EXPECT_GT(errors, total / 4) << errors << " of " << total;
}

TEST_F(GgufMalformed, RandomMultiByteCorruptionsOfTheShippedModelNeverCrash) {
  const std::vector<uint8_t> bytes = testing::ReadBytes(testing::ModelsDir() + "/stories260K/stories260K.gguf");
  const uint64_t header_bytes = 14152;  // up to the end of the tensor infos
  std::mt19937 rng(1);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<uint8_t> bad(bytes.begin(), bytes.begin() + header_bytes + 4096);  // [header + some data]
    for (int k = 0; k < 1 + trial % 4; ++k) bad[rng() % header_bytes] = uint8_t(rng());
    SucceedsOrModelFileError([&] { GgufFile::FromBytes(bad, "stories260K.gguf"); });
  }
  for (uint64_t n = 0; n < header_bytes; n += 1 + n / 64) {
    ExpectModelFileError([&] { GgufFile::FromBytes(std::vector<uint8_t>(bytes.begin(), bytes.begin() + n), "stories260K.gguf"); },
                         {"stories260K.gguf: "});
  }
}

struct Corruption {
  std::string what;
  std::function<void(std::vector<uint8_t>&)> apply;
  std::vector<std::string> message;  // parts the error must contain
};

std::vector<Corruption> TargetedCorruptions() {
  using B = std::vector<uint8_t>&;
  const uint64_t huge = uint64_t(1) << 63;
  return {
      {"magic", [](B b) { b[3] = 'X'; }, {"not a GGUF file"}},
      {"version 1", [](B b) { Poke<uint32_t>(b, 4, 1); }, {"version 1", "not supported"}},
      {"version 4", [](B b) { Poke<uint32_t>(b, 4, 4); }, {"unsupported GGUF version 4"}},
      {"big-endian", [](B b) { Poke<uint32_t>(b, 4, 0x03000000); }, {"big-endian"}},
      {"tensor count 2^60", [](B b) { Poke<uint64_t>(b, 8, uint64_t(1) << 60); }, {"1152921504606846976 tensors"}},
      {"metadata count 2^63", [=](B b) { Poke<uint64_t>(b, 16, huge); }, {"9223372036854775808 metadata entries"}},
      {"key length 2^63", [=](B b) { Poke<uint64_t>(b, Find(b, "general.architecture") - 8, huge); }, {"key length of 9223372036854775808"}},
      {"string value length 2^63", [=](B b) { Poke<uint64_t>(b, AfterKey(b, "general.architecture") + 4, huge); },
       {"string length of 9223372036854775808"}},
      {"string value length past the end", [](B b) { Poke<uint64_t>(b, AfterKey(b, "general.architecture") + 4, b.size()); },
       {"string length of"}},
      {"value type 13", [](B b) { Poke<uint32_t>(b, AfterKey(b, "dup.b"), 13); }, {"'dup.b'", "unknown value type 13"}},
      {"value type 2^31", [](B b) { Poke<uint32_t>(b, AfterKey(b, "flag"), 0x80000000u); }, {"'flag'", "unknown value type 2147483648"}},
      {"bool byte 2", [](B b) { b[AfterKey(b, "flag") + 4] = 2; }, {"'flag'", "bool"}},
      {"u64 above 2^63-1", [](B b) { Poke<uint64_t>(b, AfterKey(b, "big") + 4, ~uint64_t(0)); }, {"'big'", "18446744073709551615"}},
      {"array element type 99", [](B b) { Poke<uint32_t>(b, AfterKey(b, "scores") + 4, 99); }, {"'scores'", "unknown array element type 99"}},
      {"array of arrays", [](B b) { Poke<uint32_t>(b, AfterKey(b, "scores") + 4, 9); }, {"'scores'", "array of arrays"}},
      {"array length 2^62", [](B b) { Poke<uint64_t>(b, AfterKey(b, "tokens") + 8, uint64_t(1) << 62); },
       {"'tokens'", "4611686018427387904 string values"}},
      {"array string length 2^63", [=](B b) { Poke<uint64_t>(b, AfterKey(b, "tokens") + 16, huge); }, {"string length of"}},
      {"duplicate key", [](B b) { b[Find(b, "dup.b") + 4] = 'a'; }, {"duplicate metadata key 'dup.a'"}},
      {"n_dims 1e9", [](B b) { Poke<uint32_t>(b, FieldsOf(b, "tensor.other").n_dims, 1000000000); },
       {"'tensor.other'", "1000000000 dimensions"}},
      {"n_dims 5", [](B b) { Poke<uint32_t>(b, FieldsOf(b, "tensor.other").n_dims, 5); }, {"'tensor.other'", "5 dimensions"}},
      {"dim 2^62 (bytes overflow)", [](B b) { Poke<uint64_t>(b, FieldsOf(b, "tensor.other").dims, uint64_t(1) << 62); },
       {"'tensor.other'"}},
      {"dim 2^63", [=](B b) { Poke<uint64_t>(b, FieldsOf(b, "tensor.other").dims, huge); }, {"'tensor.other'", "overflows"}},
      {"q8_0 dim 33", [](B b) { Poke<uint64_t>(b, FieldsOf(b, "tensor.first").dims, 33); }, {"'tensor.first'", "block size 32"}},
      {"q8_0 dim 64 (data past the end)", [](B b) { Poke<uint64_t>(b, FieldsOf(b, "tensor.other").dims, 64); },
       {"'tensor.other'", "extends past the end of the file"}},
      {"ggml type 12", [](B b) { Poke<uint32_t>(b, FieldsOf(b, "tensor.first").type, 12); }, {"'tensor.first'", "ggml type 12 (q4_K)", "not supported"}},
      {"ggml type 99", [](B b) { Poke<uint32_t>(b, FieldsOf(b, "tensor.first").type, 99); }, {"'tensor.first'", "unknown ggml type 99"}},
      {"offset past the end", [](B b) { Poke<uint64_t>(b, FieldsOf(b, "tensor.other").offset, 1 << 20); },
       {"'tensor.other' data [offset", "extends past the end of the file (" }},
      {"offset 2^64-32", [](B b) { Poke<uint64_t>(b, FieldsOf(b, "tensor.other").offset, ~uint64_t(31)); },
       {"'tensor.other'", "extends past the end"}},
      {"misaligned offset", [](B b) { Poke<uint64_t>(b, FieldsOf(b, "tensor.other").offset, 68); },
       {"'tensor.other' has data offset 68, not a multiple of the alignment 32"}},
      {"overlapping tensors", [](B b) { Poke<uint64_t>(b, FieldsOf(b, "tensor.other").offset, 32); }, {"overlap"}},
      {"duplicate tensor name", [](B b) { std::memcpy(b.data() + Find(b, "tensor.other"), "tensor.first", 12); },
       {"duplicate tensor name 'tensor.first'"}},
      {"tensor name length 2^63", [=](B b) { Poke<uint64_t>(b, Find(b, "tensor.other") - 8, huge); }, {"tensor name length of"}},
  };
}

TEST_F(GgufMalformed, TargetedCorruptionsNameTheProblem) {
  const std::vector<uint8_t> bytes = SmallGguf();
  for (const Corruption& c : TargetedCorruptions()) {
    SCOPED_TRACE(c.what);
    std::vector<uint8_t> bad = bytes;
    c.apply(bad);
    ASSERT_NE(bad, bytes);
    std::vector<std::string> parts = c.message;
    parts.push_back(std::string(kName) + ": ");
    ExpectModelFileError([&] { GgufFile::FromBytes(bad, kName); }, parts);
  }
}

// general.alignment must be an integer power of two; checked on a file written with a bad one patched in.
TEST_F(GgufMalformed, BadAlignmentValues) {
  GgufWriter w;
  w.SetU32("general.alignment", 64);
  const std::vector<uint8_t> good = w.Serialize();
  const size_t at = AfterKey(good, "general.alignment") + 4;
  std::vector<uint8_t> bad = good;
  Poke<uint32_t>(bad, at, 48);
  ExpectModelFileError([&] { GgufFile::FromBytes(bad, kName); }, {"general.alignment is 48, not a power of two"});
  Poke<uint32_t>(bad, at, 0);
  ExpectModelFileError([&] { GgufFile::FromBytes(bad, kName); }, {"general.alignment is 0"});
  bad = good;
  Poke<uint32_t>(bad, at - 4, uint32_t(GgufValueType::kF32));
  ExpectModelFileError([&] { GgufFile::FromBytes(bad, kName); }, {"general.alignment is a f32, not an integer"});
}

}  // namespace
}  // namespace qattn::model
