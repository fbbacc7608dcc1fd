// `qattn inspect MODEL`: what a model file holds: format, metadata (long arrays abbreviated), tensors
// and totals. GGUF files are read as they are; llama2.c checkpoints are converted in memory first.
#include <CLI/CLI.hpp>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/cli_support.h"
#include "model/gguf.h"
#include "model/llama2c.h"

namespace qattn {
namespace {

using model::GgufFile;
using model::GgufValue;
using model::GgufValueType;
using nlohmann::json;

struct InspectOptions {
  std::string model_path;
  std::string tokenizer_path;  // llama2.c checkpoints only; empty: look next to the checkpoint
  bool json = false;
};

constexpr size_t kArrayPreview = 8;     // elements of an array shown before "..."
constexpr size_t kStringPreview = 160;  // bytes of a string value shown in the text output

uint64_t OnDiskBytes(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? uint64_t(st.st_size) : 0;
}

// A string as a C-style quoted literal, so tokens such as "\n" stay on one line; long strings (chat
// templates) are cut after kStringPreview bytes, at a UTF-8 character boundary.
std::string Quoted(const std::string& s) {
  size_t shown = std::min(s.size(), kStringPreview);
  while (shown < s.size() && shown > 0 && (static_cast<unsigned char>(s[shown]) & 0xC0) == 0x80) --shown;
  std::string out = "\"";
  for (char ch : std::string_view(s).substr(0, shown)) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') out += std::string("\\") + ch;
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else out += ch;
  }
  out += "\"";
  if (shown < s.size()) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

std::string FloatText(double v, GgufValueType type) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*g", type == GgufValueType::kF32 ? 9 : 17, v);
  return buf;
}

std::string ScalarText(GgufValueType type, const GgufValue& v, size_t i, bool in_array) {
  if (type == GgufValueType::kString) {
    return Quoted(in_array ? std::get<std::vector<std::string>>(v.value)[i] : std::get<std::string>(v.value));
  }
  if (type == GgufValueType::kF32 || type == GgufValueType::kF64) {
    return FloatText(in_array ? std::get<std::vector<double>>(v.value)[i] : std::get<double>(v.value), type);
  }
  const int64_t x = in_array ? std::get<std::vector<int64_t>>(v.value)[i] : std::get<int64_t>(v.value);
  if (type == GgufValueType::kBool) return x ? "true" : "false";
  return std::to_string(x);
}

size_t ArrayCount(const GgufValue& v) {
  if (const auto* s = std::get_if<std::vector<std::string>>(&v.value)) return s->size();
  if (const auto* d = std::get_if<std::vector<double>>(&v.value)) return d->size();
  if (const auto* i = std::get_if<std::vector<int64_t>>(&v.value)) return i->size();
  return 0;
}

std::string ValueText(const GgufValue& v) {
  if (v.type != GgufValueType::kArray) return ScalarText(v.type, v, 0, false);
  const size_t n = ArrayCount(v);
  std::string s = "[";
  for (size_t i = 0; i < std::min(n, kArrayPreview); ++i) s += (i ? ", " : "") + ScalarText(v.array_type, v, i, true);
  if (n > kArrayPreview) s += ", ...";
  return s + "] (" + std::to_string(n) + " elements)";
}

json ScalarJson(GgufValueType type, const GgufValue& v, size_t i, bool in_array) {
  if (type == GgufValueType::kString) return in_array ? std::get<std::vector<std::string>>(v.value)[i] : std::get<std::string>(v.value);
  if (type == GgufValueType::kF32 || type == GgufValueType::kF64) {
    return in_array ? std::get<std::vector<double>>(v.value)[i] : std::get<double>(v.value);
  }
  const int64_t x = in_array ? std::get<std::vector<int64_t>>(v.value)[i] : std::get<int64_t>(v.value);
  if (type == GgufValueType::kBool) return json(x != 0);
  return json(x);
}

// {"key", "type", "value"}; arrays add "count" and keep only the first kArrayPreview elements in "value".
json MetadataJson(const std::string& key, const GgufValue& v) {
  json j = {{"key", key}, {"type", v.TypeName()}};
  if (v.type != GgufValueType::kArray) {
    j["value"] = ScalarJson(v.type, v, 0, false);
    return j;
  }
  const size_t n = ArrayCount(v);
  json head = json::array();
  for (size_t i = 0; i < std::min(n, kArrayPreview); ++i) head.push_back(ScalarJson(v.array_type, v, i, true));
  j["count"] = n;
  j["value"] = head;
  return j;
}

std::string DimsText(const std::vector<uint64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

struct Totals {
  uint64_t parameters = 0, bytes = 0;
};

Totals Sum(const GgufFile& f) {
  Totals t;
  for (const auto& info : f.tensors()) t.parameters += info.elements, t.bytes += info.bytes;
  return t;
}

json InspectJson(const GgufFile& f, const InspectOptions& o, bool gguf) {
  json metadata = json::array();
  for (const auto& [key, value] : f.metadata()) metadata.push_back(MetadataJson(key, value));
  json tensors = json::array();
  for (const auto& t : f.tensors()) {
    tensors.push_back({{"name", t.name}, {"type", model::GgmlTypeName(t.type)}, {"dims", t.dims},
                       {"elements", t.elements}, {"bytes", t.bytes}, {"offset", t.offset}});
  }
  const Totals totals = Sum(f);
  return {{"file", o.model_path}, {"format", gguf ? "gguf" : "llama2c"}, {"version", f.version()},
          {"alignment", f.alignment()}, {"file_bytes", OnDiskBytes(o.model_path)}, {"metadata", metadata},
          {"tensors", tensors},
          {"totals", {{"tensors", f.tensors().size()}, {"parameters", totals.parameters}, {"bytes", totals.bytes}}}};
}

void PrintMetadata(const GgufFile& f) {
  size_t key_width = 0, type_width = 0;
  for (const auto& [key, value] : f.metadata()) {
    key_width = std::max(key_width, key.size());
    type_width = std::max(type_width, value.TypeName().size());
  }
  std::printf("metadata: %zu keys\n", f.metadata().size());
  for (const auto& [key, value] : f.metadata()) {
    std::printf("  %-*s  %-*s  %s\n", int(key_width), key.c_str(), int(type_width), value.TypeName().c_str(), ValueText(value).c_str());
  }
}

void PrintTensors(const GgufFile& f) {
  size_t name_width = 4, dims_width = 4;
  for (const auto& t : f.tensors()) {
    name_width = std::max(name_width, t.name.size());
    dims_width = std::max(dims_width, DimsText(t.dims).size());
  }
  std::printf("tensors: %zu\n", f.tensors().size());
  if (f.tensors().empty()) return;
  std::printf("  %-*s  %-5s  %-*s  %12s  %12s\n", int(name_width), "name", "type", int(dims_width), "dims", "elements", "bytes");
  for (const auto& t : f.tensors()) {
    std::printf("  %-*s  %-5s  %-*s  %12llu  %12llu\n", int(name_width), t.name.c_str(), model::GgmlTypeName(t.type),
                int(dims_width), DimsText(t.dims).c_str(), (unsigned long long)t.elements, (unsigned long long)t.bytes);
  }
}

void PrintInspect(const GgufFile& f, const InspectOptions& o, bool gguf) {
  std::printf("file: %s (%llu bytes)\n", o.model_path.c_str(), (unsigned long long)OnDiskBytes(o.model_path));
  if (gguf) std::printf("format: GGUF v%u, alignment %llu\n", f.version(), (unsigned long long)f.alignment());
  else std::printf("format: llama2.c checkpoint, converted in memory to GGUF v%u\n", f.version());
  PrintMetadata(f);
  PrintTensors(f);
  const Totals totals = Sum(f);
  std::printf("totals: %zu tensors, %llu parameters, %llu bytes\n", f.tensors().size(), (unsigned long long)totals.parameters,
              (unsigned long long)totals.bytes);
}

int RunInspect(const InspectOptions& o) {
  const bool gguf = model::LooksLikeGguf(o.model_path);
  if (gguf && !o.tokenizer_path.empty()) throw UsageError("--tokenizer applies to llama2.c checkpoints only; '" + o.model_path + "' is a GGUF file");
  const GgufFile f = model::OpenModelFile(o.model_path, o.tokenizer_path);
  if (o.json) std::printf("%s\n", InspectJson(f, o, gguf).dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  else PrintInspect(f, o, gguf);
  return kExitOk;
}

}  // namespace

Command AddInspectCommand(CLI::App& parent) {
  auto o = std::make_shared<InspectOptions>();
  CLI::App* cmd = parent.add_subcommand("inspect", "Show a model file's format, metadata, tensors and totals (GGUF or llama2.c).");
  cmd->add_option("model", o->model_path, "GGUF file, or llama2.c checkpoint (.bin)")->required()->type_name("MODEL");
  cmd->add_option("--tokenizer", o->tokenizer_path,
                  "llama2.c tokenizer.bin for a llama2.c checkpoint (default: tok512.bin, else tokenizer.bin, next to it)")
      ->type_name("PATH");
  cmd->add_flag("--json", o->json, "print one JSON object (arrays cut to their first elements, with \"count\")");
  return {cmd, [o] { return RunInspect(*o); }};
}

}  // namespace qattn
