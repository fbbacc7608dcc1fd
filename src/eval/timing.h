// The timing harness shared by `qattn bench`: warm-up runs, then repeated timed runs summarised
// by their median (robust to the odd slow run caused by other processes on a small machine).
#pragma once
#include <functional>
#include <vector>

namespace qattn {

// Seconds on a monotonic clock, from an arbitrary origin.
double NowSeconds();

struct TimingStats {
  std::vector<double> samples;  // [repeats] seconds, in run order
  double median = 0.0;
  double min = 0.0;
  double max = 0.0;
  double mean = 0.0;
};

// Calls fn `warmup` times untimed (page faults, caches, thread start-up), then `repeats` times timed.
// repeats must be >= 1.
TimingStats TimeRepeated(const std::function<void()>& fn, int warmup, int repeats);

// Median, min, max and mean of timed samples (at least one).
TimingStats Summarize(std::vector<double> samples);

// Median of the values (mean of the middle two for an even count); 0 for none.
double Median(std::vector<double> values);

}  // namespace qattn
