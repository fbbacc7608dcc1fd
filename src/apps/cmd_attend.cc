// `qattn attend`: attention over .npy inputs, written to .npy outputs.
#include <CLI/CLI.hpp>

#include <climits>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "apps/alibi.h"
#include "kernels/attention_call.h"
#include "apps/cli_support.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "eval/npy.h"

namespace qattn {
namespace {

struct AttendOptions {
  std::string q_path, k_path, v_path, out_path, lse_path, sink_logits_path;
  bool causal = false;
  std::string window;  // "L,R"; empty: no window
  int sinks = 0;
  bool alibi = false;
  double softcap = 0.0;
  double scale = 0.0;
  std::string dtype = "f32";
  int threads = 0;
};

// A loaded rank-3 input with the role it plays, for messages.
struct Input {
  std::string role;  // "Q", "K" or "V"
  std::string path;
  NpyArray array;

  int64_t dim(int i) const { return array.shape[i]; }
  std::string Name() const { return role + " ('" + path + "')"; }
};

constexpr int64_t kMaxHeadsOrDim = 1 << 20;  // heads and head dims are ints in the kernel API

// Reads an .npy file, naming the flag it came from in any error.
NpyArray ReadFor(const std::string& flag, const std::string& path) {
  try {
    return ReadNpyF32(path);
  } catch (const NpyError& e) {
    throw UsageError(flag + " " + e.what());
  }
}

void WriteFor(const std::string& flag, const std::string& path, const std::vector<int64_t>& shape, const float* data) {
  try {
    WriteNpyF32(path, shape, data);
  } catch (const NpyError& e) {
    throw UsageError(flag + " " + e.what());
  }
}

Input LoadInput(const std::string& role, const std::string& flag, const std::string& path, const char* layout) {
  Input in{role, path, ReadFor(flag, path)};
  if (in.array.rank() != 3) {
    throw UsageError(in.Name() + " has shape " + in.array.ShapeString() + " but must have 3 dimensions " + layout + ".");
  }
  for (int i = 0; i < 3; ++i) {
    if (in.dim(i) < 1) throw UsageError(in.Name() + " has shape " + in.array.ShapeString() + "; every dimension must be at least 1.");
  }
  if (in.dim(1) > kMaxHeadsOrDim || in.dim(2) > kMaxHeadsOrDim) {
    throw UsageError(in.Name() + " has shape " + in.array.ShapeString() + "; heads and head dimensions must be at most " +
                     std::to_string(kMaxHeadsOrDim) + ".");
  }
  return in;
}

void CheckSameDim(const Input& a, int ai, const Input& b, int bi, const char* what) {
  if (a.dim(ai) == b.dim(bi)) return;
  throw UsageError(a.Name() + " has " + what + " = " + std::to_string(a.dim(ai)) + " but " + b.Name() + " has " +
                   what + " = " + std::to_string(b.dim(bi)) + "; they must match.");
}

void CheckHeadGroups(const Input& q, const Input& kv, const char* kv_heads) {
  if (q.dim(1) % kv.dim(1) == 0) return;
  throw UsageError("H_q = " + std::to_string(q.dim(1)) + " query heads in " + q.Name() + " is not a multiple of " +
                   kv_heads + " = " + std::to_string(kv.dim(1)) + " heads in " + kv.Name() + ".");
}

// Q [n_q, H_q, d_qk], K [n_kv, H_k, d_qk], V [n_kv, H_v, d_v].
void CheckShapes(const Input& q, const Input& k, const Input& v) {
  CheckSameDim(q, 2, k, 2, "d_qk (last dimension)");
  CheckSameDim(k, 0, v, 0, "n_kv (first dimension)");
  CheckHeadGroups(q, k, "H_k");
  CheckHeadGroups(q, v, "H_v");
}

// "L,R" with integers >= -1 (-1: unbounded on that side).
std::pair<int, int> ParseWindow(const std::string& text) {
  const std::string usage = "--window expects L,R with two integers >= -1 (-1 = unbounded), e.g. --window 128,0; got '" + text + "'.";
  const size_t comma = text.find(',');
  if (comma == std::string::npos) throw UsageError(usage);
  auto parse = [&](const std::string& s) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(s, &used);
    } catch (const std::exception&) {
      throw UsageError(usage);
    }
    if (used != s.size() || v < -1 || v > INT_MAX) throw UsageError(usage);
    return int(v);
  };
  return {parse(text.substr(0, comma)), parse(text.substr(comma + 1))};
}

void CheckScalars(const AttendOptions& o) {
  if (o.sinks < 0) throw UsageError("--sinks must be a count >= 0; got " + std::to_string(o.sinks) + ".");
  if (!std::isfinite(o.softcap) || o.softcap < 0) throw UsageError("--softcap must be a finite value >= 0 (0 = off).");
  if (!std::isfinite(o.scale)) throw UsageError("--scale must be finite (0 = 1/sqrt(d_qk)).");
  if (o.threads < 0) throw UsageError("--threads must be >= 1 (or 0 for every hardware thread).");
}

DType ParseDTypeOption(const std::string& name) {
  DType t;
  if (!ParseDType(name, &t)) throw UsageError("--dtype must be f32, bf16 or f16; got '" + name + "'.");
  return t;
}

// [H_q] float32 logits, one per query head.
std::vector<float> LoadSinkLogits(const std::string& path, int64_t h_q) {
  NpyArray a = ReadFor("--sink-logits", path);
  if (a.rank() != 1 || a.shape[0] != h_q) {
    throw UsageError("--sink-logits '" + path + "' has shape " + a.ShapeString() + " but must have shape (H_q,) = (" +
                     std::to_string(h_q) + ",).");
  }
  return std::move(a.data);
}

// The input converted to the kernel dtype, in a tensor of the same shape. Frees the f32 copy read
// from the file, so large inputs are not held twice.
Tensor ToTensor(Input& in, DType dtype) {
  Tensor t(dtype, {in.dim(0), in.dim(1), in.dim(2)});
  ConvertFromF32(in.array.data.data(), t.view().data, dtype, in.array.data.size());
  std::vector<float>().swap(in.array.data);
  return t;
}

// The logit transforms and masks the flags ask for. The pointers borrow the caller's vectors.
AttentionVariant MakeVariant(const AttendOptions& o, std::pair<int, int> window, const std::vector<float>& slopes,
                             const std::vector<float>& sink_logits) {
  AttentionVariant variant;
  variant.scale = float(o.scale);
  variant.causal = o.causal;
  variant.window_left = window.first;
  variant.window_right = window.second;
  variant.sink_tokens = o.sinks;
  variant.softcap = float(o.softcap);
  variant.alibi_slopes = slopes.empty() ? nullptr : slopes.data();
  variant.sink_logits = sink_logits.empty() ? nullptr : sink_logits.data();
  return variant;
}

int RunAttend(const AttendOptions& o) {
  CheckScalars(o);
  const DType dtype = ParseDTypeOption(o.dtype);
  const std::pair<int, int> window = o.window.empty() ? std::pair(-1, -1) : ParseWindow(o.window);
  Input q = LoadInput("Q", "--q", o.q_path, "[n_q, H_q, d_qk]");
  Input k = LoadInput("K", "--k", o.k_path, "[n_kv, H_k, d_qk]");
  Input v = LoadInput("V", "--v", o.v_path, "[n_kv, H_v, d_v]");
  CheckShapes(q, k, v);
  const int64_t n_q = q.dim(0), h_q = q.dim(1), d_v = v.dim(2);

  const std::vector<float> sink_logits = o.sink_logits_path.empty() ? std::vector<float>() : LoadSinkLogits(o.sink_logits_path, h_q);
  const std::vector<float> slopes = o.alibi ? AlibiSlopes(int(h_q)) : std::vector<float>();  // [H_q]

  Tensor qt = ToTensor(q, dtype), kt = ToTensor(k, dtype), vt = ToTensor(v, dtype);
  Tensor out(DType::kF32, {n_q, h_q, d_v});
  std::vector<float> lse(size_t(n_q * h_q));  // [n_q, H_q]

  const AttentionCall call{qt.view(), kt.view(), vt.view(), out.view(), lse.data(),
                           MakeVariant(o, window, slopes, sink_logits)};

  ThreadPool::SetDefaultThreads(ResolveThreads(o.threads));
  RunAttention(call, &ThreadPool::Default());

  WriteFor("--out", o.out_path, {n_q, h_q, d_v}, out.data<float>());
  if (!o.lse_path.empty()) WriteFor("--lse", o.lse_path, {n_q, h_q}, lse.data());
  return kExitOk;
}

constexpr const char* kAttendFooter = R"(
Semantics (as src/kernels/attention.h): query row i sits at position i + (n_kv - n_q), key j at j.
  --causal hides keys after the query position; --window L,R keeps keys within L before and R after
  it (-1 = unbounded); the first --sinks keys are exempt from the window. One query row (n_q = 1)
  runs the decode kernel, more rows the prefill kernel; both compute the same result.
--alibi subtracts slope[h] * |query position - key position| from the logits, with the standard
  ALiBi slopes for H_q heads: 2^(-8 (h + 1) / H_q) when H_q is a power of two; otherwise the slopes
  for P heads (P the largest power of two below H_q) followed by every other slope of the 2P-head
  sequence (as in Press et al. and Hugging Face models).
--softcap C replaces a logit s by C * tanh(s / C), before ALiBi.
--sink-logits S.npy ([H_q] float32) adds exp(S[h]) to each softmax denominator (with a zero value).
Inputs are float32 .npy files; --dtype converts them (round to nearest even) before the kernel.
Errors in the input are reported in one sentence on stderr, with exit status 2.
)";

}  // namespace

Command AddAttendCommand(CLI::App& parent) {
  auto o = std::make_shared<AttendOptions>();
  CLI::App* cmd = parent.add_subcommand("attend", "Compute attention over .npy inputs and write the output (and LSE) as .npy.");
  cmd->add_option("--q", o->q_path, "queries, float32 .npy [n_q, H_q, d_qk]")->required()->type_name("Q.npy");
  cmd->add_option("--k", o->k_path, "keys, float32 .npy [n_kv, H_k, d_qk]")->required()->type_name("K.npy");
  cmd->add_option("--v", o->v_path, "values, float32 .npy [n_kv, H_v, d_v]")->required()->type_name("V.npy");
  cmd->add_option("--out", o->out_path, "output, float32 .npy [n_q, H_q, d_v]")->required()->type_name("O.npy");
  cmd->add_option("--lse", o->lse_path, "log-sum-exp of each row, float32 .npy [n_q, H_q]")->type_name("L.npy");
  cmd->add_flag("--causal", o->causal, "mask keys after each query's position");
  cmd->add_option("--window", o->window, "local window: L keys before, R after the query (-1 = unbounded)")->type_name("L,R");
  cmd->add_option("--sinks", o->sinks, "the first N keys are always visible (exempt from the window)")->type_name("N");
  cmd->add_option("--sink-logits", o->sink_logits_path, "per-head sink logits, float32 .npy [H_q]")->type_name("S.npy");
  cmd->add_flag("--alibi", o->alibi, "add ALiBi position biases with the standard slopes for H_q heads");
  cmd->add_option("--softcap", o->softcap, "logit soft cap C: s -> C tanh(s / C); 0 = off")->type_name("C");
  cmd->add_option("--scale", o->scale, "logit scale; 0 = 1/sqrt(d_qk)")->type_name("S");
  cmd->add_option("--dtype", o->dtype, "element type the kernel reads: f32, bf16 or f16 (default f32)")->type_name("TYPE");
  cmd->add_option("--threads", o->threads, "worker threads; 0 = every hardware thread (default)")->type_name("N");
  cmd->footer(kAttendFooter);
  return {cmd, [o] { return RunAttend(*o); }};
}

}  // namespace qattn
