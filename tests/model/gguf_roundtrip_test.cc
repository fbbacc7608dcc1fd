// GgufWriter -> GgufFile round trips: every metadata value type (scalars and arrays), every tensor type,
// custom alignment, typed getters and their errors, and atomic WriteFile.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <cmath>
#include <limits>

#include "model/gguf.h"
#include "model_test_util.h"

namespace qattn::model {
namespace {

using testing::ExpectModelFileError;
using testing::ScratchDir;

using VT = GgufValueType;

GgufValue Scalar(VT type, int64_t v) {
  GgufValue x;
  x.type = type;
  x.value = v;
  return x;
}
GgufValue Float(VT type, double v) {
  GgufValue x;
  x.type = type;
  x.value = v;
  return x;
}
GgufValue Str(const std::string& s) {
  GgufValue x;
  x.type = VT::kString;
  x.value = s;
  return x;
}
template <typename T>
GgufValue Array(VT element, std::vector<T> values) {
  GgufValue x;
  x.type = VT::kArray;
  x.array_type = element;
  x.value = std::move(values);
  return x;
}

// Every value type, with values at the edges of their ranges.
std::vector<std::pair<std::string, GgufValue>> AllValues() {
  static const char kOdd[] = "nul\0 byte, \xe2\x96\x81 U+2581, \n newline";
  const std::string odd_string(kOdd, sizeof kOdd - 1);
  return {
      {"v.u8", Scalar(VT::kU8, 255)},
      {"v.i8", Scalar(VT::kI8, -128)},
      {"v.u16", Scalar(VT::kU16, 65535)},
      {"v.i16", Scalar(VT::kI16, -32768)},
      {"v.u32", Scalar(VT::kU32, 4294967295LL)},
      {"v.i32", Scalar(VT::kI32, INT32_MIN)},
      {"v.f32", Float(VT::kF32, 1.0f / 3.0f)},
      {"v.bool.true", Scalar(VT::kBool, 1)},
      {"v.bool.false", Scalar(VT::kBool, 0)},
      {"v.string", Str(odd_string)},
      {"v.empty_string", Str("")},
      {"v.u64", Scalar(VT::kU64, INT64_MAX)},
      {"v.i64", Scalar(VT::kI64, INT64_MIN)},
      {"v.f64", Float(VT::kF64, M_PI)},
      {"a.u8", Array<int64_t>(VT::kU8, {0, 1, 255})},
      {"a.i8", Array<int64_t>(VT::kI8, {-128, 0, 127})},
      {"a.u16", Array<int64_t>(VT::kU16, {0, 65535})},
      {"a.i16", Array<int64_t>(VT::kI16, {-32768, 32767})},
      {"a.u32", Array<int64_t>(VT::kU32, {0, 4294967295LL})},
      {"a.i32", Array<int64_t>(VT::kI32, {INT32_MIN, -1, INT32_MAX})},
      {"a.u64", Array<int64_t>(VT::kU64, {0, INT64_MAX})},
      {"a.i64", Array<int64_t>(VT::kI64, {INT64_MIN, INT64_MAX})},
      {"a.bool", Array<int64_t>(VT::kBool, {1, 0, 1})},
      {"a.f32", Array<double>(VT::kF32, {-0.0, 1.5, double(std::numeric_limits<float>::max()), double(INFINITY)})},
      {"a.f64", Array<double>(VT::kF64, {1e-300, -2.5})},
      {"a.string", Array<std::string>(VT::kString, {"a", "", odd_string, "<0x0A>"})},
      {"a.empty", Array<int64_t>(VT::kI32, {})},
  };
}

// The value bits as written: f32 values compare after rounding to float.
void ExpectSameValue(const std::string& key, const GgufValue& want, const GgufValue& got) {
  EXPECT_EQ(got.type, want.type) << key;
  EXPECT_EQ(got.TypeName(), want.TypeName()) << key;
  if (want.type == VT::kArray) {
    EXPECT_EQ(got.array_type, want.array_type) << key;
  }
  EXPECT_EQ(got.value.index(), want.value.index()) << key;
  if (std::holds_alternative<std::vector<double>>(want.value) && want.array_type == VT::kF32) {
    const auto& w = std::get<std::vector<double>>(want.value);
    const auto& g = std::get<std::vector<double>>(got.value);
    ASSERT_EQ(g.size(), w.size()) << key;
    for (size_t i = 0; i < w.size(); ++i) {
      EXPECT_EQ(std::signbit(g[i]), std::signbit(w[i])) << key;
      EXPECT_EQ(float(g[i]), float(w[i])) << key << "[" << i << "]";
    }
  } else if (want.type == VT::kF32) {
    EXPECT_EQ(std::get<double>(got.value), double(float(std::get<double>(want.value)))) << key;
  } else {
    EXPECT_TRUE(got.value == want.value) << key;
  }
}

TEST(GgufRoundTrip, EveryValueTypeSurvivesWriteAndRead) {
  GgufWriter w;
  const auto values = AllValues();
  for (const auto& [key, value] : values) w.SetValue(key, value);
  const GgufFile f = GgufFile::FromBytes(w.Serialize(), "values.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  ASSERT_EQ(f.metadata().size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(f.metadata()[i].first, values[i].first) << "metadata keeps file order";
    ExpectSameValue(values[i].first, values[i].second, f.metadata()[i].second);
  }
  EXPECT_EQ(f.Find("v.string")->TypeName(), "string");
  EXPECT_EQ(f.Find("a.f32")->TypeName(), "array of f32");
  EXPECT_EQ(f.Find("nope"), nullptr);
}

TEST(GgufRoundTrip, TypedSettersAndGetters) {
  GgufWriter w;
  w.SetU32("n", 7);
  w.SetInt("neg", VT::kI16, -5);
  w.SetBool("flag", true);
  w.SetF32("eps", 1e-5f);
  w.SetString("name", "tiny");
  w.SetStringArray("tokens", {"<unk>", "\xe2\x96\x81" "a"});
  w.SetF32Array("scores", {0.0f, -1.5f});
  w.SetI32Array("types", {2, 1});
  w.SetU32("n", 9);  // replaces, keeping the first position
  const GgufFile f = GgufFile::FromBytes(w.Serialize(), "typed.gguf");
  EXPECT_EQ(f.metadata().front().first, "n");
  EXPECT_EQ(f.GetInt("n"), 9);
  EXPECT_EQ(f.GetInt("neg"), -5);
  EXPECT_EQ(f.Find("neg")->type, VT::kI16);
  EXPECT_TRUE(f.GetBool("flag"));
  EXPECT_EQ(f.GetFloat("eps"), double(1e-5f));
  EXPECT_EQ(f.GetFloat("n"), 9.0) << "float getters accept integers";
  EXPECT_EQ(f.GetString("name"), "tiny");
  EXPECT_EQ(f.GetStringArray("tokens"), (std::vector<std::string>{"<unk>", "\xe2\x96\x81" "a"}));
  EXPECT_EQ(f.GetFloatArray("scores"), (std::vector<double>{0.0, -1.5}));
  EXPECT_EQ(f.GetIntArray("types"), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(f.GetInt("absent", 42), 42);
  EXPECT_EQ(f.GetFloat("absent", 0.5), 0.5);
  EXPECT_FALSE(f.GetBool("absent", false));
  EXPECT_EQ(f.GetString("absent", "x"), "x");
  EXPECT_EQ(f.GetInt("n", 42), 9);
}

TEST(GgufRoundTrip, GettersNameTheFileAndKeyOnErrors) {
  GgufWriter w;
  w.SetString("name", "tiny");
  w.SetF32("eps", 0.5f);
  w.SetBool("flag", false);
  const GgufFile f = GgufFile::FromBytes(w.Serialize(), "typed.gguf");
  ExpectModelFileError([&] { f.GetInt("missing"); }, {"typed.gguf: ", "'missing'", "missing"});
  ExpectModelFileError([&] { f.GetInt("name"); }, {"typed.gguf: ", "'name'", "string", "integer"});
  ExpectModelFileError([&] { f.GetInt("eps"); }, {"'eps'", "f32"});
  ExpectModelFileError([&] { f.GetInt("flag"); }, {"'flag'", "bool"});
  ExpectModelFileError([&] { f.GetBool("eps"); }, {"'eps'"});
  ExpectModelFileError([&] { f.GetFloat("name"); }, {"'name'"});
  ExpectModelFileError([&] { f.GetString("eps"); }, {"'eps'"});
  ExpectModelFileError([&] { f.GetStringArray("name"); }, {"'name'"});
  ExpectModelFileError([&] { f.GetIntArray("name"); }, {"'name'"});
  ExpectModelFileError([&] { f.GetFloatArray("name"); }, {"'name'"});
  ExpectModelFileError([&] { f.GetInt("name", 3); }, {"'name'"});  // present with the wrong kind still throws
}

// f32 values for a tensor of n elements.
std::vector<float> Ramp(size_t n, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * std::sin(float(i) * 0.7f + 0.1f);
  return v;
}

TEST(GgufRoundTrip, EveryTensorTypeKeepsDimsTypeAndBytes) {
  struct Case {
    std::string name;
    GgmlType type;
    std::vector<uint64_t> dims;
  };
  const std::vector<Case> cases = {
      {"t.f32", GgmlType::kF32, {5, 3}},       {"t.f16", GgmlType::kF16, {7}},
      {"t.bf16", GgmlType::kBF16, {2, 3, 2}},   {"t.q8_0", GgmlType::kQ8_0, {64, 3}},
      {"t.q4_0", GgmlType::kQ4_0, {32, 2, 1, 2}}, {"t.empty", GgmlType::kF32, {0, 4}},
  };
  GgufWriter w;
  std::vector<std::vector<uint8_t>> data;
  for (const Case& c : cases) {
    uint64_t n = 1;
    for (uint64_t d : c.dims) n *= d;
    const std::vector<float> values = Ramp(n, 3.0f);
    data.push_back(QuantizeFromF32(c.type, values.data(), n));
    w.AddTensor(c.name, c.type, c.dims, data.back());
  }
  const GgufFile f = GgufFile::FromBytes(w.Serialize(), "tensors.gguf");
  ASSERT_EQ(f.tensors().size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const GgufTensorInfo& t = f.RequireTensor(cases[i].name, cases[i].dims);
    EXPECT_EQ(&t, &f.tensors()[i]) << "tensors keep file order";
    EXPECT_EQ(t.type, cases[i].type);
    EXPECT_EQ(t.bytes, data[i].size());
    EXPECT_EQ(t.offset % 32, 0u);
    EXPECT_EQ(std::vector<uint8_t>(f.TensorData(t), f.TensorData(t) + t.bytes), data[i]) << cases[i].name;
  }
  ExpectModelFileError([&] { f.RequireTensor("t.none"); }, {"tensors.gguf: ", "'t.none'", "missing"});
  ExpectModelFileError([&] { f.RequireTensor("t.f32", {3, 5}); }, {"'t.f32'", "[5, 3]", "[3, 5]"});
}

TEST(GgufRoundTrip, AddTensorF32StoresEachType) {
  const std::vector<float> values = Ramp(64, 2.0f);
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0, GgmlType::kQ4_0}) {
    GgufWriter w;
    w.AddTensorF32("x", {64}, values.data(), type);
    const GgufFile f = GgufFile::FromBytes(w.Serialize(), "x.gguf");
    const GgufTensorInfo& t = f.RequireTensor("x", {64});
    EXPECT_EQ(t.type, type);
    const std::vector<uint8_t> want = QuantizeFromF32(type, values.data(), 64);
    EXPECT_EQ(std::vector<uint8_t>(f.TensorData(t), f.TensorData(t) + t.bytes), want) << GgmlTypeName(type);
  }
}

TEST(GgufRoundTrip, CustomAlignmentPlacesEveryTensorOnIt) {
  GgufWriter w;
  w.SetU32("general.alignment", 256);
  const std::vector<float> values = Ramp(3, 1.0f);
  w.AddTensorF32("a", {3}, values.data());
  w.AddTensorF32("b", {3}, values.data());
  const std::vector<uint8_t> bytes = w.Serialize();
  const GgufFile f = GgufFile::FromBytes(bytes, "aligned.gguf");
  EXPECT_EQ(f.alignment(), 256u);
  for (const GgufTensorInfo& t : f.tensors()) {
    EXPECT_EQ(t.offset % 256, 0u);
    EXPECT_EQ((f.TensorData(t) - f.TensorData(f.tensors()[0])) % 256, 0);
  }
  EXPECT_EQ(f.tensors()[1].offset, 256u);
  GgufWriter bad;
  bad.SetU32("general.alignment", 48);
  ExpectModelFileError([&] { bad.Serialize(); }, {"alignment"});
}

TEST(GgufRoundTrip, WriterRejectsInconsistentInput) {
  GgufWriter w;
  ExpectModelFileError([&] { w.SetInt("k", VT::kU8, 256); }, {"'k'", "u8"});
  ExpectModelFileError([&] { w.SetInt("k", VT::kBool, 2); }, {"'k'"});
  ExpectModelFileError([&] { w.SetInt("k", VT::kString, 1); }, {"'k'"});
  ExpectModelFileError([&] { w.SetValue("k", Array<int64_t>(VT::kI8, {1, 300})); }, {"'k'", "300"});
  ExpectModelFileError([&] { w.SetValue("k", Array<int64_t>(VT::kArray, {})); }, {"'k'"});
  ExpectModelFileError([&] { w.SetValue("k", Array<double>(VT::kString, {})); }, {"'k'"});
  ExpectModelFileError([&] { w.AddTensor("t", GgmlType::kF32, {4}, std::vector<uint8_t>(15)); }, {"'t'", "15"});
  ExpectModelFileError([&] { w.AddTensor("t", GgmlType::kQ8_0, {16}, std::vector<uint8_t>(17)); }, {"'t'", "block"});
  ExpectModelFileError([&] { w.AddTensor("t", GgmlType(12), {32}, std::vector<uint8_t>(18)); }, {"'t'", "12"});
  ExpectModelFileError([&] { w.AddTensor("t", GgmlType::kF32, {1, 1, 1, 1, 1}, std::vector<uint8_t>(4)); }, {"'t'"});
  w.AddTensor("t", GgmlType::kF32, {1}, std::vector<uint8_t>(4));
  ExpectModelFileError([&] { w.AddTensor("t", GgmlType::kF32, {1}, std::vector<uint8_t>(4)); }, {"duplicate", "'t'"});
}

TEST(GgufWriteFile, WritesAtomicallyAndOpensViaMmap) {
  ScratchDir dir;
  GgufWriter w;
  w.SetString("general.name", "file");
  const std::vector<float> values = Ramp(40, 1.0f);
  w.AddTensorF32("t", {8, 5}, values.data());
  const std::string path = dir.File("model.gguf");
  testing::WriteBytes(path, {1, 2, 3});  // an older file, replaced whole
  w.WriteFile(path);
  EXPECT_EQ(dir.List(), std::vector<std::string>{"model.gguf"}) << "no temporary file left behind";
  EXPECT_EQ(testing::ReadBytes(path), w.Serialize());
  const GgufFile f = GgufFile::Open(path);
  EXPECT_EQ(f.name(), path);
  EXPECT_EQ(f.file_bytes(), w.Serialize().size());
  EXPECT_EQ(f.GetString("general.name"), "file");
  const GgufTensorInfo& t = f.RequireTensor("t", {8, 5});
  EXPECT_EQ(std::memcmp(f.TensorData(t), values.data(), 160), 0);
}

TEST(GgufWriteFile, FailureNamesThePathAndLeavesNoPartialFile) {
  ScratchDir dir;
  GgufWriter w;
  w.SetString("general.name", "x");
  const std::string missing_dir = dir.File("no/such/dir/model.gguf");
  ExpectModelFileError([&] { w.WriteFile(missing_dir); }, {"cannot write '" + missing_dir + "'", "No such file"});

  // A write that fails half way (file size limit): the old file stays as it was, no temporary remains.
  const std::string path = dir.File("model.gguf");
  testing::WriteBytes(path, {9, 9, 9});
  std::vector<float> big(64 * 1024, 1.0f);
  GgufWriter large;
  large.AddTensorF32("t", {big.size()}, big.data());
  struct rlimit old {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::string msg = ExpectModelFileError([&] { large.WriteFile(path); }, {"cannot write '" + path + "'"});
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  EXPECT_EQ(testing::ReadBytes(path), (std::vector<uint8_t>{9, 9, 9}));
  EXPECT_EQ(dir.List(), std::vector<std::string>{"model.gguf"});
}

}  // namespace
}  // namespace qattn::model
