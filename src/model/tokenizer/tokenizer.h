// Tokenizers read from GGUF metadata (tokenizer.ggml.*): SentencePiece-style BPE ("llama") and
// byte-level BPE ("gpt2") with the pre-tokenizer named by tokenizer.ggml.pre. llama2.c's
// tokenizer.bin arrives here already converted to "llama" metadata (see model/llama2c.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/gguf.h"

namespace qattn::model {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text` (bytes taken exactly). add_bos prepends BOS when the vocabulary has one.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos) const = 0;
  // The bytes of one token as it appears in generated text. `previous` is the token before it (-1 at
  // the start): SentencePiece drops the leading space of the first piece after BOS, as llama.cpp does.
  virtual std::string DecodeToken(int32_t id, int32_t previous) const = 0;
  // All tokens' bytes concatenated (control tokens such as BOS/EOS print nothing).
  std::string Decode(const std::vector<int32_t>& ids) const;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 if none
  virtual int32_t eos_id() const = 0;  // -1 if none
  // True if generation should stop at this token (EOS and end-of-turn style control tokens).
  virtual bool IsEndOfGeneration(int32_t id) const = 0;
  // True if the file asks for BOS at the start of a prompt (tokenizer.ggml.add_bos_token; default per model).
  virtual bool adds_bos() const = 0;
  // True if the file asks for EOS at the end of a prompt (tokenizer.ggml.add_eos_token; default false).
  virtual bool adds_eos() const { return false; }
};

// Builds the tokenizer a GGUF file describes. Throws ModelFileError naming a missing or malformed key,
// or an unsupported tokenizer.ggml.model / tokenizer.ggml.pre.
std::unique_ptr<Tokenizer> LoadTokenizer(const GgufFile& file);

}  // namespace qattn::model
