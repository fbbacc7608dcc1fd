// Unit tests of the runtime's building blocks against plain fp64 formulas written here.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <map>
#include <random>

#include "model/runtime/linear.h"
#include "model/runtime/ops.h"
#include "model/runtime/sampler.h"

namespace qattn::model {
namespace {

std::vector<float> RandomVector(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// A GGUF holding one [out, in] matrix of the given type, so Linear is built the way models build it.
GgufFile OneMatrixFile(const std::vector<float>& w, int in, int out, GgmlType type) {
  GgufWriter writer;
  writer.SetString("general.architecture", "test");
  writer.AddTensorF32("w", {uint64_t(in), uint64_t(out)}, w.data(), type);
  return GgufFile::FromBytes(writer.Serialize(), "matrix");
}

float RoundBf16(float v) { return BF16ToF32(F32ToBF16(v)); }

// bf16 weights multiply bf16-rounded activations (Linear's contract, for one row and for many).
double NaiveDot(const float* w, const float* x, int in, bool bf16) {
  double s = 0;
  for (int i = 0; i < in; ++i) s += bf16 ? double(RoundBf16(w[i])) * RoundBf16(x[i]) : double(w[i]) * x[i];
  return s;
}

class LinearTest : public ::testing::TestWithParam<std::tuple<int, int, int, GgmlType>> {};

TEST_P(LinearTest, MatchesNaiveProduct) {
  const auto [in, out, rows, type] = GetParam();
  const std::vector<float> w = RandomVector(size_t(in) * out, 1);  // [out, in]
  const std::vector<float> x = RandomVector(size_t(rows) * in, 2);  // [rows, in]
  const GgufFile file = OneMatrixFile(w, in, out, type);
  const Linear linear = Linear::FromTensors(file, {&file.RequireTensor("w")});
  std::vector<float> y(size_t(rows) * out);  // [rows, out]
  ThreadPool pool(2);
  linear.Forward(x.data(), rows, y.data(), &pool);
  const bool bf16 = type != GgmlType::kF32;
  // bf16 weights: both paths sum exactly the reference's products in f32 (one row on our kernels,
  // many rows on oneDNN's bf16 matmul, each fed the same rounded x).
  const double tol = bf16 ? 1e-5 : 1e-4;
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < out; ++c) {
      const double ref = NaiveDot(&w[size_t(c) * in], &x[size_t(r) * in], in, bf16);
      ASSERT_NEAR(y[size_t(r) * out + c], ref, tol * std::sqrt(double(in))) << "row " << r << " col " << c;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearTest,
                         ::testing::Combine(::testing::Values(64, 172, 896), ::testing::Values(1, 37, 256),
                                            ::testing::Values(1, 5, 64),
                                            ::testing::Values(GgmlType::kF32, GgmlType::kBF16)));

TEST(Ops, RmsNormMatchesFormula) {
  const int dim = 96;
  const std::vector<float> x = RandomVector(3 * dim, 3), w = RandomVector(dim, 4);
  std::vector<float> out(3 * dim);
  RmsNorm(x.data(), w.data(), 3, dim, 1e-5f, out.data());
  for (int r = 0; r < 3; ++r) {
    double ms = 0;
    for (int j = 0; j < dim; ++j) ms += double(x[r * dim + j]) * x[r * dim + j] / dim;
    for (int j = 0; j < dim; ++j) {
      EXPECT_NEAR(out[r * dim + j], x[r * dim + j] / std::sqrt(ms + 1e-5) * w[j], 1e-5);
    }
  }
}

// RoPE as rotations of complex numbers: normal mode pairs (2i, 2i+1), neox pairs (i, i + n_rot/2).
TEST(Ops, RopeMatchesComplexRotation) {
  ModelConfig c;
  c.n_rot = 12;
  c.rope_base = 10000.0f;
  c.rope_freq_factors = {1, 1, 2, 4, 8, 8};
  const int head_dim = 16, heads = 2;
  for (RopeStyle style : {RopeStyle::kNormal, RopeStyle::kNeox}) {
    const std::vector<float> x = RandomVector(2 * heads * head_dim, 5);
    std::vector<float> y = x;
    const int32_t positions[2] = {0, 37};
    ApplyRope(y.data(), 2, heads * head_dim, heads, head_dim, c.n_rot, style, RopeInverseFrequencies(c), positions);
    for (int r = 0; r < 2; ++r) {
      for (int h = 0; h < heads; ++h) {
        const float* a = &x[(r * heads + h) * head_dim];
        const float* b = &y[(r * heads + h) * head_dim];
        for (int i = 0; i < c.n_rot / 2; ++i) {
          const int p = style == RopeStyle::kNormal ? 2 * i : i, q = style == RopeStyle::kNormal ? 2 * i + 1 : i + 6;
          const double theta = positions[r] * std::pow(10000.0, -2.0 * i / 12) / c.rope_freq_factors[i];
          const std::complex<double> z = std::complex<double>(a[p], a[q]) * std::polar(1.0, theta);
          EXPECT_NEAR(b[p], z.real(), 1e-5);
          EXPECT_NEAR(b[q], z.imag(), 1e-5);
        }
        for (int j = c.n_rot; j < head_dim; ++j) EXPECT_EQ(b[j], a[j]) << "dims past n_rot pass through";
      }
    }
  }
}

TEST(Ops, SwiGluMatchesFormula) {
  const std::vector<float> gu = RandomVector(2 * 2 * 10, 6);  // [2, 2 * 10]
  std::vector<float> out(2 * 10);
  SwiGlu(gu.data(), 2, 10, out.data());
  for (int r = 0; r < 2; ++r) {
    for (int j = 0; j < 10; ++j) {
      const double g = gu[r * 20 + j], u = gu[r * 20 + 10 + j];
      EXPECT_NEAR(out[r * 10 + j], g / (1 + std::exp(-g)) * u, 1e-6);
    }
  }
}

TEST(Sampler, GreedyTakesArgmaxAfterPenalty) {
  std::vector<float> logits = {1.0f, 3.0f, 2.9f, -1.0f};
  SamplingParams p;
  p.temperature = 0.0f;
  EXPECT_EQ(Sampler(p).Sample(logits.data(), 4, {}), 1);
  p.repeat_penalty = 1.5f;  // token 1 was seen: 3.0 / 1.5 = 2.0 < 2.9
  logits = {1.0f, 3.0f, 2.9f, -1.0f};
  EXPECT_EQ(Sampler(p).Sample(logits.data(), 4, {1, 1}), 2);
  EXPECT_FLOAT_EQ(logits[1], 2.0f) << "penalised once even if repeated";
}

// Empirical frequencies against the distribution each filter should leave, computed here by hand.
std::map<int, double> Frequencies(const SamplingParams& p, const std::vector<float>& logits, int draws) {
  Sampler sampler(p);
  std::map<int, double> freq;
  for (int i = 0; i < draws; ++i) {
    std::vector<float> l = logits;
    freq[sampler.Sample(l.data(), int(l.size()), {})] += 1.0 / draws;
  }
  return freq;
}

TEST(Sampler, FiltersLeaveTheExpectedDistribution) {
  // probabilities at temperature 1: softmax(log([0.4, 0.3, 0.2, 0.1])) = 0.4, 0.3, 0.2, 0.1
  const std::vector<float> logits = {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = 7;
  const int draws = 40000;
  auto expect = [&](const std::map<int, double>& want, const SamplingParams& params) {
    const std::map<int, double> got = Frequencies(params, logits, draws);
    for (const auto& [id, f] : got) EXPECT_TRUE(want.count(id)) << "token " << id << " should be filtered out";
    for (const auto& [id, f] : want) EXPECT_NEAR(got.count(id) ? got.at(id) : 0.0, f, 0.015) << "token " << id;
  };
  expect({{0, 0.4}, {1, 0.3}, {2, 0.2}, {3, 0.1}}, p);
  SamplingParams k = p;
  k.top_k = 2;  // 0.4, 0.3 renormalised
  expect({{0, 4.0 / 7}, {1, 3.0 / 7}}, k);
  SamplingParams top_p = p;
  top_p.top_p = 0.75f;  // 0.4 + 0.3 = 0.7 < 0.75, so 0.2 joins
  expect({{0, 0.4 / 0.9}, {1, 0.3 / 0.9}, {2, 0.2 / 0.9}}, top_p);
  SamplingParams min_p = p;
  min_p.min_p = 0.45f;  // keeps p >= 0.18: tokens 0, 1, 2
  expect({{0, 0.4 / 0.9}, {1, 0.3 / 0.9}, {2, 0.2 / 0.9}}, min_p);
  SamplingParams temp = p;
  temp.temperature = 0.5f;  // p^2 renormalised: 0.16, 0.09, 0.04, 0.01 over 0.30
  expect({{0, 0.16 / 0.3}, {1, 0.09 / 0.3}, {2, 0.04 / 0.3}, {3, 0.01 / 0.3}}, temp);
}

TEST(Sampler, SameSeedSameTokens) {
  const std::vector<float> logits = RandomVector(100, 8);
  SamplingParams p;
  p.seed = 42;
  Sampler a(p), b(p);
  for (int i = 0; i < 50; ++i) {
    std::vector<float> la = logits, lb = logits;
    EXPECT_EQ(a.Sample(la.data(), 100, {}), b.Sample(lb.data(), 100, {}));
  }
}

}  // namespace
}  // namespace qattn::model

namespace qattn::model {
namespace {

// Loading releases each tensor's pages once copied; reading the tensor again must re-read the file.
TEST(GgufRelease, ReleasedTensorsReadTheSameBytesAgain) {
  const GgufFile file = GgufFile::Open(std::string(QATTN_MODELS_DIR) + "/stories260K/stories260K.gguf");
  const GgufTensorInfo& t = file.RequireTensor("token_embd.weight");
  const std::vector<uint8_t> before(file.TensorData(t), file.TensorData(t) + t.bytes);
  file.ReleaseTensorData(t);
  EXPECT_TRUE(std::equal(before.begin(), before.end(), file.TensorData(t)));
}

}  // namespace
}  // namespace qattn::model
