#include "model/tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstdint>
#include <map>
#include <stdexcept>
#include <utility>

#include "model/tokenizer/utf8.h"

namespace qattn::model::tok {
namespace {

// The regexes are those of the Hugging Face tokenizer.json files the names stand for (as llama.cpp
// groups them); \p{..} are Unicode general categories, \s Unicode white space.
const std::string kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const std::string kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const std::string kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

const std::map<std::string, std::vector<std::string>, std::less<>>& PatternTable() {
  static const std::map<std::string, std::vector<std::string>, std::less<>> table = [] {
    const std::vector<std::string> gpt2 = {kGpt2};
    const std::vector<std::string> llama3 = {kLlama3};
    const std::vector<std::string> qwen2 = {kQwen2};
    const std::vector<std::string> starcoder = {R"(\p{N})", kGpt2};
    std::map<std::string, std::vector<std::string>, std::less<>> t = {
        // llama.cpp's fallback for a byte-level vocabulary whose pre-tokenizer it does not know.
        {"default", {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", R"([0-9][0-9][0-9])"}},
        {"gpt-2", gpt2}, {"phi-2", gpt2}, {"mpt", gpt2}, {"olmo", gpt2}, {"roberta-bpe", gpt2},
        {"llama3", llama3}, {"llama-v3", llama3}, {"llama-bpe", llama3}, {"falcon3", llama3},
        {"qwen2", qwen2}, {"deepseek-r1-qwen", qwen2}, {"stablelm2", qwen2},
        {"starcoder", starcoder}, {"refact", starcoder},
        {"falcon", {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, R"([0-9][0-9][0-9])"}},
        // Newlines alone, letter runs, punctuation runs, CJK/Hangul runs, then single digits.
        {"deepseek-coder",
         {R"([\r\n])", R"(\s?\p{L}+)", R"(\s?\p{P}+)", R"([\x{4E00}-\x{9FA5}\x{0800}-\x{4E00}\x{AC00}-\x{D7FF}]+)", R"(\p{N})"}},
    };
    return t;
  }();
  return table;
}

struct Span {
  uint32_t begin, end;
};

// PCRE2 needs valid UTF-8: each invalid byte is replaced by U+FFFD (3 bytes) for matching, and
// `original` maps every character start of `text` back to the input offset.
struct MatchText {
  std::string text;
  std::vector<uint32_t> original;  // [text.size() + 1]; meaningful at character starts and the end
};

MatchText Sanitize(std::string_view input) {
  MatchText m;
  m.text.reserve(input.size() + 16);
  m.original.reserve(input.size() + 16);
  for (size_t pos = 0; pos < input.size();) {
    const int n = Utf8CharLength(input, pos);
    const bool bad = n == 1 && static_cast<unsigned char>(input[pos]) >= 0x80;
    if (bad) {
      AppendUtf8(0xFFFD, m.text);
    } else {
      m.text.append(input.substr(pos, n));
    }
    m.original.resize(m.text.size(), uint32_t(pos));
    pos += n;
  }
  m.original.push_back(uint32_t(input.size()));
  return m;
}

}  // namespace

const std::vector<std::string>* PreTokenizerPatterns(std::string_view pre) {
  const auto& table = PatternTable();
  const auto it = table.find(pre);
  return it == table.end() ? nullptr : &it->second;
}

bool PreTokenizerIgnoresMerges(std::string_view pre) {
  return pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3";
}

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }

  // Appends the matches of this regex in text[span] and the gaps between them, in order.
  void Split(std::string_view text, Span span, pcre2_match_data* match, std::vector<Span>& out) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data() + span.begin);
    const size_t length = span.end - span.begin;
    size_t gap = 0, pos = 0;
    while (pos < length) {
      const int rc = pcre2_match(code, subject, length, pos, PCRE2_NO_UTF_CHECK, match, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) throw std::runtime_error("the pre-tokenizer regex failed with PCRE2 error " + std::to_string(rc));
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
      const size_t b = ovector[0], e = ovector[1];
      if (e == b) {  // an empty match cuts nothing: step over one character
        pos = b + Utf8CharLength(text, span.begin + b);
        continue;
      }
      if (b > gap) out.push_back(Span{span.begin + uint32_t(gap), span.begin + uint32_t(b)});
      out.push_back(Span{span.begin + uint32_t(b), span.begin + uint32_t(e)});
      gap = pos = e;
    }
    if (gap < length) out.push_back(Span{span.begin + uint32_t(gap), span.end});
  }
};

PreTokenizer::PreTokenizer(const std::vector<std::string>& patterns) {
  for (const std::string& pattern : patterns) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    auto regex = std::make_unique<Regex>();
    regex->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                                &error, &offset, nullptr);
    if (!regex->code) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      throw std::logic_error("pre-tokenizer regex '" + pattern + "' does not compile at offset " +
                             std::to_string(offset) + ": " + reinterpret_cast<const char*>(message));
    }
    pcre2_jit_compile(regex->code, PCRE2_JIT_COMPLETE);  // faster when available; the interpreter otherwise
    regexes_.push_back(std::move(regex));
  }
}

PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer::~PreTokenizer() = default;

std::vector<std::string_view> PreTokenizer::Split(std::string_view input) const {
  if (input.empty()) return {};
  const bool valid = IsValidUtf8(input);
  MatchText sanitized;
  if (!valid) sanitized = Sanitize(input);
  const std::string_view text = valid ? input : std::string_view(sanitized.text);

  std::vector<Span> spans = {Span{0, uint32_t(text.size())}};
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(pcre2_match_data_create(1, nullptr),
                                                                            &pcre2_match_data_free);
  if (!match) throw std::bad_alloc();
  for (const auto& regex : regexes_) {
    std::vector<Span> next;
    next.reserve(spans.size() * 2);
    for (const Span& span : spans) regex->Split(text, span, match.get(), next);
    spans = std::move(next);
  }

  std::vector<std::string_view> pieces;
  pieces.reserve(spans.size());
  for (const Span& s : spans) {
    const uint32_t b = valid ? s.begin : sanitized.original[s.begin];
    const uint32_t e = valid ? s.end : sanitized.original[s.end];
    pieces.push_back(input.substr(b, e - b));
  }
  return pieces;
}

}  // namespace qattn::model::tok
