// The sparse prefill harness against fp64 computations written here: kept mass, density, errors,
// options and the registry.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "methods/sparse_prefill/harness.h"
#include "methods/sparse_prefill/inputs.h"

namespace qattn::sparse {
namespace {

// Keeps a random subset of blocks (always the diagonal), as a stand-in for a selector.
class RandomBlocks final : public SparsePrefillMethod {
 public:
  std::string name() const override { return "random_blocks"; }
  std::string granularity() const override { return "per query head"; }
  MethodResult Run(const PrefillProblem& p, TensorView out, float* lse, ThreadPool* pool) override {
    MethodResult r;
    r.coverage.Init(p.n(), p.num_q_heads(), 32);
    std::mt19937 rng(3);
    for (int h = 0; h < r.coverage.heads; ++h) {
      for (int row = 0; row < r.coverage.num_blocks; ++row) {
        for (int c = 0; c <= row; ++c) r.coverage.at(h, row, c) = c == row || rng() % 3 == 0;
      }
    }
    AttendBlocks(p, r.coverage.ToBlockList(p.n()), out, lse, pool);
    return r;
  }
};

// fp64 causal softmax probabilities of one (row, head).
std::vector<double> DenseRow(const OwnedProblem& in, int64_t i, int h) {
  const PrefillProblem& p = in.problem;
  const int d = p.head_dim(), g = h / p.group();
  std::vector<float> q(d), k(d);
  ConvertToF32(p.q.at(i, h), p.q.dtype, q.data(), d);
  std::vector<double> s(i + 1);
  double max = -1e300;
  for (int64_t j = 0; j <= i; ++j) {
    ConvertToF32(p.k.at(j, g), p.k.dtype, k.data(), d);
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += double(q[c]) * k[c];
    s[j] = dot * p.EffectiveScale();
    max = std::max(max, s[j]);
  }
  double z = 0;
  for (double& x : s) z += (x = std::exp(x - max));
  for (double& x : s) x /= z;
  return s;
}

TEST(SparseHarness, KeptMassAndDensityMatchFp64) {
  const OwnedProblem in = StructuredProblem(300, 4, 2, 64, DType::kF32, 5);
  ThreadPool pool(2);
  const DenseBaseline dense = RunDense(in.problem, &pool, 1);
  RandomBlocks method;
  const SparseReport r = Measure(method, in.problem, dense, &pool, 1);
  double kept_pairs = 0, pairs = 0;
  std::vector<double> head_mass(4, 0.0);
  for (int64_t i = 0; i < 300; ++i) {
    for (int h = 0; h < 4; ++h) {
      const std::vector<double> P = DenseRow(in, i, h);
      for (int64_t j = 0; j <= i; ++j) {
        const bool kept = r.coverage.at(h, int(i / 32), int(j / 32));
        pairs += 1;
        kept_pairs += kept;
        if (kept) head_mass[h] += P[j] / 300.0;
      }
    }
  }
  EXPECT_NEAR(r.density, kept_pairs / pairs, 1e-12);
  for (int h = 0; h < 4; ++h) EXPECT_NEAR(r.head_mass[h], head_mass[h], 1e-4) << "head " << h;
  EXPECT_NEAR(r.min_kept_mass, *std::min_element(head_mass.begin(), head_mass.end()), 1e-4);
  EXPECT_LT(r.mean_kept_mass, 0.999) << "a random selection drops mass";
  EXPECT_GT(r.output_rel_error, 1e-4);
  EXPECT_LE(r.max_row_bound_ratio, 1.0) << "lemma 0.4 holds for exact keep/drop selections";
}

TEST(SparseHarness, DenseBlocksEqualDense) {
  const OwnedProblem in = RandomProblem(500, 4, 1, 64, DType::kF32, 2);
  ThreadPool pool(2);
  const DenseBaseline dense = RunDense(in.problem, &pool, 1);
  auto method = MakeSparseMethod("dense_blocks:block=32");
  const SparseReport r = Measure(*method, in.problem, dense, &pool, 1);
  EXPECT_DOUBLE_EQ(r.density, 1.0);
  EXPECT_NEAR(r.min_kept_mass, 1.0, 1e-6);
  EXPECT_LT(r.output_rel_error, 1e-6);
}

TEST(SparseHarness, PairedDenseTimingReplacesTheBaselineTime) {
  const OwnedProblem in = RandomProblem(500, 4, 1, 64, DType::kF32, 2);
  ThreadPool pool(2);
  DenseBaseline dense = RunDense(in.problem, &pool, 1);
  dense.seconds = 1e6;  // a sentinel: paired timing must not read it
  auto method = MakeSparseMethod("dense_blocks:block=32");
  const SparseReport unpaired = Measure(*method, in.problem, dense, &pool, 1);
  const SparseReport paired = Measure(*method, in.problem, dense, &pool, 3, /*paired_dense=*/true);
  EXPECT_DOUBLE_EQ(unpaired.dense_seconds, 1e6);
  EXPECT_GT(paired.dense_seconds, 0.0);
  EXPECT_LT(paired.dense_seconds, 1e3);
  EXPECT_GT(paired.speedup, 0.0);
  EXPECT_LT(paired.speedup, 1e6) << "the ratio uses the paired dense runs, not the sentinel";
  EXPECT_DOUBLE_EQ(paired.density, unpaired.density);
  EXPECT_DOUBLE_EQ(paired.min_kept_mass, unpaired.min_kept_mass);
}

TEST(SparseHarness, OptionsAndRegistryErrors) {
  EXPECT_THROW(MakeSparseMethod("no_such_method"), std::invalid_argument);
  EXPECT_THROW(MakeSparseMethod("dense_blocks:blok=32"), std::invalid_argument);
  EXPECT_THROW(MakeSparseMethod("dense_blocks:block"), std::invalid_argument);
  EXPECT_THROW(MakeSparseMethod("dense_blocks:block=abc"), std::invalid_argument);
  EXPECT_NO_THROW(MakeSparseMethod("dense_blocks:block=32"));
}

TEST(SparseInputs, StructuredHeadsConcentrateTheirMass) {
  const OwnedProblem in = StructuredProblem(2048, 4, 2, 128, DType::kBF16, 1);
  ThreadPool pool(2);
  const DenseBaseline dense = RunDense(in.problem, &pool, 1);
  const InputStatistics st = DescribeInput(in.problem, dense, &pool);
  EXPECT_GT(st.local[0], 0.5) << "head kind 0 is local-heavy";
  EXPECT_GT(st.sink[1], 0.2) << "head kind 1 leans on the sink";
  for (int h = 0; h < 4; ++h) EXPECT_NEAR(st.sink[h] + st.local[h] + st.far[h], 1.0, 1e-3);
}

}  // namespace
}  // namespace qattn::sparse
