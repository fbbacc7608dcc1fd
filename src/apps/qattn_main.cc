// qattn: the command-line front end. Parses the command line, runs the chosen subcommand, and turns
// every failure into one sentence on stderr with a distinct exit status (2 for bad input).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <new>
#include <string>
#include <thread>

#include "apps/cli_support.h"
#include "core/cpu_features.h"
#include "eval/npy.h"
#include "kernels/attention.h"
#include "model/gguf.h"

#ifndef QATTN_VERSION
#define QATTN_VERSION "0.0.0"
#endif

namespace qattn {

int ResolveThreads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? int(hw) : 1;
}

namespace {

// The deepest subcommand given on the command line (the app itself if none).
CLI::App* DeepestCommand(CLI::App& app) {
  CLI::App* cur = &app;
  while (!cur->get_subcommands().empty()) cur = cur->get_subcommands().front();
  return cur;
}

// "qattn", "qattn attend", "qattn bench attention": the command given, for messages.
std::string CommandPath(CLI::App& app) {
  std::string path;
  for (const CLI::App* cur = DeepestCommand(app); cur; cur = cur->get_parent()) {
    path = cur->get_name() + (path.empty() ? "" : " " + path);
  }
  return path;
}

// CLI11 checks required options and subcommands before it complains about unknown words, so a
// misspelt flag or subcommand would be reported as "--q is required". Name the unknown word instead.
std::string UnknownWordMessage(CLI::App& app) {
  CLI::App* cur = DeepestCommand(app);
  const std::vector<std::string> rest = cur->remaining();
  if (rest.empty() || rest.front().empty()) return "";
  const std::string& word = rest.front();
  if (word[0] == '-') return "unknown option '" + word.substr(0, word.find('=')) + "'";
  std::string names;
  for (const CLI::App* sub : cur->get_subcommands([](CLI::App*) { return true; })) {
    names += (names.empty() ? "" : " or ") + sub->get_name();
  }
  if (names.empty()) return "unexpected argument '" + word + "'";
  return "unknown command '" + word + "' (expected " + names + ")";
}

// Keeps a message to one line ending in a full stop.
std::string Sentence(std::string msg) {
  for (char& c : msg) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  while (!msg.empty() && msg.back() == ' ') msg.pop_back();
  if (msg.empty() || (msg.back() != '.' && msg.back() != '?')) msg += '.';
  return msg;
}

int Fail(CLI::App& app, int code, const std::string& msg) {
  std::fprintf(stderr, "%s: error: %s\n", CommandPath(app).c_str(), Sentence(msg).c_str());
  return code;
}

int ReportParseError(CLI::App& app, const CLI::ParseError& e) {
  // --help and --version arrive as "errors" with exit code 0; CLI11 prints them.
  if (e.get_exit_code() == int(CLI::ExitCodes::Success)) return app.exit(e);
  if (dynamic_cast<const CLI::RequiredError*>(&e) || dynamic_cast<const CLI::ExtrasError*>(&e)) {
    if (const std::string unknown = UnknownWordMessage(app); !unknown.empty()) return Fail(app, kExitBadInput, unknown);
  }
  return Fail(app, kExitBadInput, std::string(e.what()) + " (see --help)");
}

int RunCommand(CLI::App& app, const Command& command) {
  try {
    return command.run();
  } catch (const UsageError& e) {
    return Fail(app, kExitBadInput, e.what());
  } catch (const NpyError& e) {
    return Fail(app, kExitBadInput, e.what());
  } catch (const model::ModelFileError& e) {
    return Fail(app, kExitBadInput, e.what());
  } catch (const InvalidArgument& e) {
    return Fail(app, kExitBadInput, std::string("the kernel rejected the input: ") + e.what());
  } catch (const std::invalid_argument& e) {  // the runtime's checks of what it was asked to do
    return Fail(app, kExitBadInput, e.what());
  } catch (const std::bad_alloc&) {
    return Fail(app, kExitBadInput, "not enough memory for this input");
  } catch (const std::exception& e) {
    return Fail(app, kExitInternal, std::string("internal error: ") + e.what());
  }
}

}  // namespace
}  // namespace qattn

int main(int argc, char** argv) {
  using namespace qattn;
  CLI::App app{"qattn: a CPU attention engine (prefill and decode kernels, benchmarks).", "qattn"};
  app.set_version_flag("--version", std::string("qattn ") + QATTN_VERSION);
  app.require_subcommand(1);
  std::string isa;
  app.add_option("--isa", isa,
                 "cap the kernels' instruction set: scalar, avx2, avx512 or avx512bf16 (default: the best this "
                 "CPU has; the environment variable QATTN_ISA does the same)")
      ->type_name("ISA");
  std::vector<Command> commands = {AddAttendCommand(app)};
  for (Command& c : AddBenchCommands(app)) commands.push_back(c);
  // Model commands (each helper registers its own here).
  commands.push_back(AddTokenizeCommand(app));
  commands.push_back(AddInspectCommand(app));
  commands.push_back(AddRunCommand(app));
  for (Command& c : AddEvalCommands(app)) commands.push_back(c);
  commands.push_back(AddCalibrateCommand(app));
  commands.push_back(AddGenModelCommand(app));
  for (Command& c : AddReportCommands(app)) commands.push_back(c);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return ReportParseError(app, e);
  }
  if (!isa.empty()) {
    Isa cap;
    if (!ParseIsa(isa, &cap)) return Fail(app, kExitBadInput, "--isa must be scalar, avx2, avx512 or avx512bf16; got '" + isa + "'");
    SetIsaCap(cap);
  }
  for (const Command& c : commands) {
    if (c.app->parsed()) return RunCommand(app, c);
  }
  return Fail(app, kExitBadInput, "no command given (see --help)");
}
