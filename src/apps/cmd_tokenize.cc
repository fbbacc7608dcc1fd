// `qattn tokenize`: text -> token ids with a model file's tokenizer, or with --decode, ids -> text.
#include <CLI/CLI.hpp>

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "apps/cli_support.h"
#include "apps/loaded_model.h"
#include "model/tokenizer/tokenizer.h"

namespace qattn {
namespace {

struct TokenizeOptions {
  ModelOptions model;
  std::string text;
  std::string file;
  bool bos = false;
  bool decode = false;
  const CLI::Option* text_option = nullptr;  // tells "" given apart from no TEXT at all
};

// The input: TEXT or the file's bytes, exactly one of them.
std::string Input(const TokenizeOptions& o) {
  const bool has_text = o.text_option->count() > 0;
  if (has_text && !o.file.empty()) throw UsageError("give either TEXT or -f FILE, not both");
  if (!has_text && o.file.empty()) throw UsageError("give the TEXT to tokenize or -f FILE");
  return has_text ? o.text : ReadTextFile("-f", o.file);
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// Whitespace-separated token ids, each checked against the vocabulary.
std::vector<int32_t> ParseIds(std::string_view text, int32_t vocab_size) {
  std::vector<int32_t> ids;
  for (size_t pos = 0; pos < text.size();) {
    if (IsSpace(text[pos])) {
      ++pos;
      continue;
    }
    size_t end = pos;
    while (end < text.size() && !IsSpace(text[end])) ++end;
    const std::string_view word = text.substr(pos, end - pos);
    int64_t id = 0;
    const auto [ptr, ec] = std::from_chars(word.data(), word.data() + word.size(), id);
    if (ec != std::errc() || ptr != word.data() + word.size()) {
      throw UsageError("--decode expects token ids separated by spaces; '" + std::string(word) + "' is not one");
    }
    if (id < 0 || id >= vocab_size) {
      throw UsageError("token id " + std::string(word) + " is outside the vocabulary of " + std::to_string(vocab_size) +
                       " tokens (ids 0 to " + std::to_string(vocab_size - 1) + ")");
    }
    ids.push_back(int32_t(id));
    pos = end;
  }
  return ids;
}

std::string JoinIds(const std::vector<int32_t>& ids) {
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) line += ' ';
    line += std::to_string(ids[i]);
  }
  return line + "\n";
}

int Tokenize(const TokenizeOptions& o) {
  if (o.decode && o.bos) throw UsageError("--bos applies to encoding, not to --decode");
  const std::string input = Input(o);
  const LoadedModel m = LoadModel(o.model, /*vocab_only=*/true);
  const model::Tokenizer& tok = *m.tokenizer;
  std::string out;
  if (o.decode) {
    out = tok.Decode(ParseIds(input, tok.vocab_size()));  // the bytes exactly: no newline added
  } else {
    if (o.bos && tok.bos_id() < 0) throw UsageError("--bos: the model's vocabulary has no BOS token");
    out = JoinIds(tok.Encode(input, o.bos));
  }
  if (std::fwrite(out.data(), 1, out.size(), stdout) != out.size() || std::fflush(stdout) != 0) {
    throw std::runtime_error("cannot write to standard output");
  }
  return kExitOk;
}

}  // namespace

Command AddTokenizeCommand(CLI::App& parent) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = parent.add_subcommand(
      "tokenize",
      "Print the token ids of TEXT (or of a file's exact bytes) with a model's tokenizer, on one line; with "
      "--decode, print the text of whitespace-separated ids (exactly, no newline added).");
  o->model.AddTo(*cmd);
  o->text_option = cmd->add_option("text", o->text, "the text (with --decode: the ids)")->type_name("TEXT");
  cmd->add_option("-f,--file", o->file, "read the text (or ids) from this file, bytes taken exactly")->type_name("FILE");
  cmd->add_flag("--bos", o->bos, "prepend the BOS token");
  cmd->add_flag("--decode", o->decode, "turn token ids back into text");
  return Command{cmd, [o] { return Tokenize(*o); }};
}

}  // namespace qattn
