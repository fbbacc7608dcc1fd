#include "methods/sparse_prefill/harness.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "eval/timing.h"

namespace qattn::sparse {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double MedianOf(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// max_j ||v_j|| over the keys of each KV head: [H_kv].
std::vector<double> MaxValueNorms(const PrefillProblem& p) {
  std::vector<double> norms(p.num_kv_heads(), 0.0);
  std::vector<float> row(p.value_dim());  // [d_v]
  for (int64_t j = 0; j < p.n(); ++j) {
    for (int g = 0; g < p.num_kv_heads(); ++g) {
      ConvertToF32(p.v.at(j, g), p.v.dtype, row.data(), row.size());
      double s = 0;
      for (float x : row) s += double(x) * x;
      norms[g] = std::max(norms[g], std::sqrt(s));
    }
  }
  return norms;
}

void CompareOutputs(const PrefillProblem& p, const Tensor& out, const DenseBaseline& dense,
                    const std::vector<float>& mass, SparseReport& r) {
  const std::vector<double> vmax = MaxValueNorms(p);
  const int hq = p.num_q_heads(), dv = p.value_dim();
  double diff2 = 0.0, ref2 = 0.0;
  for (int64_t i = 0; i < p.n(); ++i) {
    for (int h = 0; h < hq; ++h) {
      const float* a = out.data<float>() + (i * hq + h) * dv;
      const float* b = dense.out.data<float>() + (i * hq + h) * dv;
      double row_diff2 = 0.0;
      for (int c = 0; c < dv; ++c) {
        row_diff2 += double(a[c] - b[c]) * (a[c] - b[c]);
        ref2 += double(b[c]) * b[c];
      }
      diff2 += row_diff2;
      const double bound = 2.0 * (1.0 - mass[i * hq + h]) * vmax[h / p.group()] + 1e-3 * vmax[h / p.group()];
      r.max_row_bound_ratio = std::max(r.max_row_bound_ratio, std::sqrt(row_diff2) / bound);
    }
  }
  r.output_rel_error = ref2 > 0 ? std::sqrt(diff2 / ref2) : 0.0;
}

}  // namespace

DenseBaseline RunDense(const PrefillProblem& p, ThreadPool* pool, int repeats) {
  DenseBaseline d;
  d.out = Tensor(DType::kF32, {p.n(), p.num_q_heads(), p.value_dim()});
  d.lse.resize(size_t(p.n()) * p.num_q_heads());
  std::vector<double> times;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    auto t0 = std::chrono::steady_clock::now();
    DenseCausal(p, d.out.view(), d.lse.data(), pool);
    times.push_back(Seconds(t0, std::chrono::steady_clock::now()));
  }
  d.seconds = MedianOf(times);
  return d;
}

std::vector<float> KeptMass(const PrefillProblem& p, const CoverageMap& coverage, const std::vector<float>& dense_lse,
                            ThreadPool* pool) {
  Tensor scratch(DType::kF32, {p.n(), p.num_q_heads(), p.value_dim()});
  std::vector<float> lse(size_t(p.n()) * p.num_q_heads());  // [n, H_q] over the kept keys
  const BlockList list = coverage.ToBlockList(p.n());
  AttendBlocks(p, list, scratch.view(), lse.data(), pool);
  for (size_t i = 0; i < lse.size(); ++i) {
    lse[i] = std::isinf(lse[i]) ? 0.0f : std::min(1.0f, std::exp(lse[i] - dense_lse[i]));
  }
  return lse;
}

SparseReport Measure(SparsePrefillMethod& method, const PrefillProblem& p, const DenseBaseline& dense,
                     ThreadPool* pool, int repeats, bool paired_dense) {
  SparseReport r;
  r.method = method.name();
  r.granularity = method.granularity();
  r.n = p.n();
  Tensor out(DType::kF32, {p.n(), p.num_q_heads(), p.value_dim()});
  Tensor dense_out;                           // [n, H_q, d_v] scratch of the paired dense runs
  std::vector<float> dense_lse;               // [n, H_q]
  if (paired_dense) {
    dense_out = Tensor(DType::kF32, {p.n(), p.num_q_heads(), p.value_dim()});
    dense_lse.resize(size_t(p.n()) * p.num_q_heads());
  }
  std::vector<double> select, attend, dense_times, ratios;
  MethodResult last;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    if (paired_dense) {
      auto t0 = std::chrono::steady_clock::now();
      DenseCausal(p, dense_out.view(), dense_lse.data(), pool);
      dense_times.push_back(Seconds(t0, std::chrono::steady_clock::now()));
    }
    last = method.Run(p, out.view(), nullptr, pool);
    select.push_back(last.select_seconds);
    attend.push_back(last.attend_seconds);
    if (paired_dense) ratios.push_back(dense_times.back() / std::max(1e-12, select.back() + attend.back()));
  }
  r.select_seconds = MedianOf(select);
  r.attend_seconds = MedianOf(attend);
  r.dense_seconds = paired_dense ? MedianOf(dense_times) : dense.seconds;
  r.speedup = paired_dense ? MedianOf(ratios) : dense.seconds / std::max(1e-12, r.select_seconds + r.attend_seconds);
  r.density = last.coverage.Density(p.n());
  const std::vector<float> mass = KeptMass(p, last.coverage, dense.lse, pool);
  const int hq = p.num_q_heads();
  r.head_mass.assign(hq, 0.0);
  for (int64_t i = 0; i < p.n(); ++i) {
    for (int h = 0; h < hq; ++h) r.head_mass[h] += mass[i * hq + h] / double(p.n());
  }
  r.mean_kept_mass = 0.0;
  for (double m : r.head_mass) r.mean_kept_mass += m / hq;
  r.min_kept_mass = *std::min_element(r.head_mass.begin(), r.head_mass.end());
  CompareOutputs(p, out, dense, mass, r);
  if (last.approximates_outside_coverage) r.max_row_bound_ratio = 0.0;  // the lemma does not apply
  r.coverage = std::move(last.coverage);
  return r;
}

InputStatistics DescribeInput(const PrefillProblem& p, const DenseBaseline& dense, ThreadPool* pool) {
  const int hq = p.num_q_heads();
  auto mean_mass = [&](auto keep) {
    CoverageMap map;
    map.Init(p.n(), hq, 64);
    for (int h = 0; h < hq; ++h) {
      for (int r = 0; r < map.num_blocks; ++r) {
        for (int c = 0; c <= r; ++c) map.at(h, r, c) = keep(r, c);
      }
    }
    const std::vector<float> mass = KeptMass(p, map, dense.lse, pool);
    std::vector<double> per_head(hq, 0.0);  // [H_q]
    for (int64_t i = 0; i < p.n(); ++i) {
      for (int h = 0; h < hq; ++h) per_head[h] += mass[i * hq + h] / double(p.n());
    }
    return per_head;
  };
  InputStatistics st;
  st.sink = mean_mass([](int, int c) { return c == 0; });
  st.local = mean_mass([](int r, int c) { return c > 0 && r - c <= 3; });
  st.far = mean_mass([](int r, int c) { return c > 0 && r - c > 3; });
  return st;
}

}  // namespace qattn::sparse
