#include "eval/timing.h"

#include <algorithm>
#include <chrono>
#include <numeric>

namespace qattn {

double NowSeconds() {
  using Clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

double Median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

TimingStats TimeRepeated(const std::function<void()>& fn, int warmup, int repeats) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> samples;
  for (int i = 0; i < std::max(repeats, 1); ++i) {
    const double t0 = NowSeconds();
    fn();
    samples.push_back(NowSeconds() - t0);
  }
  return Summarize(std::move(samples));
}

TimingStats Summarize(std::vector<double> samples) {
  TimingStats s;
  s.samples = std::move(samples);
  s.median = Median(s.samples);
  s.min = *std::min_element(s.samples.begin(), s.samples.end());
  s.max = *std::max_element(s.samples.begin(), s.samples.end());
  s.mean = std::accumulate(s.samples.begin(), s.samples.end(), 0.0) / double(s.samples.size());
  return s;
}

}  // namespace qattn
