// Internal: the two halves of the llama2.c conversion.
#pragma once
#include <cstdint>
#include <string>

#include "model/gguf.h"

namespace qattn::model::internal {

// Maps the checkpoint and validates its header and size (throws ModelFileError) without converting.
void CheckLlama2cCheckpoint(const std::string& path);

// Reads a llama2.c tokenizer.bin holding exactly `vocab_size` tokens and adds llama.cpp's tokenizer.ggml.*
// keys to `writer` (spaces back to U+2581, BOS/EOS spelt "<s>" / "</s>", token types). Throws ModelFileError.
void AddLlama2cTokenizer(GgufWriter& writer, const std::string& path, int64_t vocab_size);

}  // namespace qattn::model::internal
