// What every subcommand shares: the error type for bad input, the exit codes, and the command record
// main() dispatches on.
#pragma once
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace qattn {

// Bad input on the command line or in an input file; main() prints the message (one sentence) and
// exits with kExitBadInput.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr int kExitOk = 0;
constexpr int kExitInternal = 1;  // a bug or a failure of the machine, not of the input
constexpr int kExitBadInput = 2;

// A subcommand as registered with CLI11: run() is called when `app` was the one parsed.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

Command AddAttendCommand(CLI::App& parent);
// `bench` with its subcommands `attention` and `peak`.
std::vector<Command> AddBenchCommands(CLI::App& parent);
// `inspect MODEL`: a model file's metadata and tensors (cmd_inspect.cc).
Command AddInspectCommand(CLI::App& parent);

// Model runtime commands: run, eval {ppl,kl,logits}, gen-model, and `bench model` (under bench).
Command AddRunCommand(CLI::App& parent);
std::vector<Command> AddEvalCommands(CLI::App& parent);
// `calibrate compresskv`: offline retrieval heads and layer budgets.
Command AddCalibrateCommand(CLI::App& parent);
Command AddGenModelCommand(CLI::App& parent);
Command AddBenchModelCommand(CLI::App& bench);
// `bench decode`: a KV selection/eviction policy's decode step against dense.
Command AddBenchDecodeCommand(CLI::App& bench);
// `bench sparse`: a sparse prefill method against dense.
Command AddBenchSparseCommand(CLI::App& bench);
// `report sparse`: the HTML comparison of sparse prefill methods.
std::vector<Command> AddReportCommands(CLI::App& parent);

// `tokenize`: text -> token ids (or ids -> text with --decode) with a model's tokenizer (cmd_tokenize.cc).
Command AddTokenizeCommand(CLI::App& parent);

// Threads to use for a --threads value: 0 means every hardware thread.
int ResolveThreads(int requested);

}  // namespace qattn
