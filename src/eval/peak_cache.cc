#include "eval/peak_cache.h"

#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

namespace qattn {
namespace {

using nlohmann::json;
constexpr int kCacheVersion = 1;

json ReadCacheFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return json::object();
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || j.value("version", 0) != kCacheVersion || !j.contains("entries") ||
      !j["entries"].is_object()) {
    return json::object();
  }
  return j;
}

}  // namespace

std::string PeakCachePath() {
  if (const char* p = std::getenv("QATTN_PEAK_CACHE"); p && *p) return p;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/qattn/peak.json";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/qattn/peak.json";
  return "qattn-peak.json";  // no home: the working directory is the only place left
}

std::string PeakCacheKey(const std::string& cpu_model, int threads) {
  return cpu_model + "|threads=" + std::to_string(threads);
}

std::optional<MachinePeak> LoadCachedPeak(const std::string& path, const std::string& key) {
  const json j = ReadCacheFile(path);
  if (!j.contains("entries") || !j["entries"].contains(key)) return std::nullopt;
  const json& e = j["entries"][key];
  if (!e.is_object()) return std::nullopt;
  MachinePeak p;
  try {
    p.f32_gflops = e.at("f32_gflops").get<double>();
    p.bf16_gflops = e.at("bf16_gflops").get<double>();
    p.memory_gbps = e.at("memory_gbps").get<double>();
    p.memory_bytes = e.value("memory_bytes", size_t(0));
    p.f32_isa = e.value("f32_isa", std::string());
    p.cpu_model = e.value("cpu_model", std::string());
    p.threads = e.value("threads", 0);
    p.other_running_tasks = e.value("other_running_tasks", 0);
  } catch (const json::exception&) {
    return std::nullopt;  // a hand-edited or foreign entry: measure again
  }
  if (!(p.f32_gflops > 0) || !(p.memory_gbps > 0)) return std::nullopt;
  return p;
}

bool StoreCachedPeak(const std::string& path, const std::string& key, const MachinePeak& peak) {
  json j = ReadCacheFile(path);
  j["version"] = kCacheVersion;
  if (!j.contains("entries")) j["entries"] = json::object();
  j["entries"][key] = {{"cpu_model", peak.cpu_model},     {"threads", peak.threads},
                       {"f32_isa", peak.f32_isa},         {"f32_gflops", peak.f32_gflops},
                       {"bf16_gflops", peak.bf16_gflops}, {"memory_gbps", peak.memory_gbps},
                       {"memory_bytes", peak.memory_bytes}, {"other_running_tasks", peak.other_running_tasks},
                       {"measured_unix", int64_t(std::time(nullptr))}};
  std::error_code ec;
  const std::filesystem::path target(path);
  if (target.has_parent_path()) std::filesystem::create_directories(target.parent_path(), ec);
  // Write a sibling and rename it into place, so a concurrent reader never sees half a file.
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(tmp);
    if (!out) return false;
    out << j.dump(2) << "\n";
    if (!out) return false;
  }
  std::filesystem::rename(tmp, target, ec);
  const bool stored = !ec;
  if (!stored) std::filesystem::remove(tmp, ec);
  return stored;
}

}  // namespace qattn
