// UTF-8 helpers for the tokenizers and GPT-2's byte-level alphabet (every byte stands for one
// printable Unicode character, so byte strings can be stored as text tokens).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace qattn::model::tok {

// Bytes of the character starting at text[pos] (pos < text.size()): 1-4 for a well-formed UTF-8
// sequence, 1 for a byte that does not start one (invalid input is taken a byte at a time).
int Utf8CharLength(std::string_view text, size_t pos);
// The code point of the character at text[pos], or kInvalidCodepoint for a byte that starts none.
constexpr uint32_t kInvalidCodepoint = 0xFFFFFFFF;
uint32_t DecodeUtf8(std::string_view text, size_t pos);
bool IsValidUtf8(std::string_view text);
void AppendUtf8(uint32_t codepoint, std::string& out);

// GPT-2's byte-level alphabet: the UTF-8 text of the character standing for each byte [256].
const std::array<std::string, 256>& ByteLevelChars();
// Maps the characters of a byte-level token back to the bytes they stand for; a character outside
// the alphabet is copied through unchanged.
std::string ByteLevelDecode(std::string_view token_text);

}  // namespace qattn::model::tok
