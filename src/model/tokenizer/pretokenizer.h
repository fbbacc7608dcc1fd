// Pre-tokenizers of byte-level BPE: the text is cut into pieces by a list of Unicode regexes (PCRE2),
// each splitting the pieces the previous one left; every match and every gap between matches becomes
// a piece (Hugging Face's "Isolated" split). BPE then never merges across a piece boundary.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qattn::model::tok {

// The regex list tokenizer.ggml.pre names (llama.cpp's names), or nullptr if the name is unknown.
const std::vector<std::string>* PreTokenizerPatterns(std::string_view pre);
// True if the named pre-tokenizer looks a whole piece up in the vocabulary before merging (Llama 3).
bool PreTokenizerIgnoresMerges(std::string_view pre);

class PreTokenizer {
 public:
  // Compiles the patterns (PCRE2, UTF + Unicode properties). A pattern that does not compile is a
  // bug: std::logic_error.
  explicit PreTokenizer(const std::vector<std::string>& patterns);
  PreTokenizer(PreTokenizer&&) noexcept;
  ~PreTokenizer();

  // The pieces of `text`, in order, covering it exactly. Bytes that are not valid UTF-8 are matched as
  // single characters (as U+FFFD would be) and come back unchanged.
  std::vector<std::string_view> Split(std::string_view text) const;

 private:
  struct Regex;
  std::vector<std::unique_ptr<Regex>> regexes_;
};

}  // namespace qattn::model::tok
