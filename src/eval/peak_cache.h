// A small JSON file of machine-peak measurements, so `qattn bench attention` can report a fraction
// of peak without spending seconds re-measuring on every run. Entries are keyed by CPU model and
// thread count, since the peak scales with both.
//
// Location: $QATTN_PEAK_CACHE if set, else $XDG_CACHE_HOME/qattn/peak.json, else
// ~/.cache/qattn/peak.json. Layout:
//   {"version": 1, "entries": {"<cpu model>|threads=<n>": {"f32_gflops": ..., "bf16_gflops": ...,
//     "memory_gbps": ..., "memory_bytes": ..., "f32_isa": "...", "measured_unix": ...}}}
// A missing, unreadable or malformed file is treated as empty; writing is best effort.
#pragma once
#include <optional>
#include <string>

#include "eval/machine_peak.h"

namespace qattn {

std::string PeakCachePath();
std::string PeakCacheKey(const std::string& cpu_model, int threads);

// The cached entry for `key`, or nothing.
std::optional<MachinePeak> LoadCachedPeak(const std::string& path, const std::string& key);
// Adds or replaces the entry for `key`, keeping the others. Returns false if the file could not be
// written (the caller carries on with the measurement it has).
bool StoreCachedPeak(const std::string& path, const std::string& key, const MachinePeak& peak);

}  // namespace qattn
