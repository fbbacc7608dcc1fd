#include "model/tokenizer/utf8.h"


namespace qattn::model::tok {
namespace {

bool IsContinuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// The allowed range of the second byte after a lead byte (RFC 3629 table: excludes overlong forms,
// surrogates and code points above U+10FFFF), and the sequence length; length 0 for a non-lead byte.
struct LeadInfo {
  int length;
  unsigned char second_lo, second_hi;
};

LeadInfo Lead(unsigned char c) {
  if (c < 0x80) return {1, 0, 0};
  if (c >= 0xC2 && c <= 0xDF) return {2, 0x80, 0xBF};
  if (c == 0xE0) return {3, 0xA0, 0xBF};
  if (c == 0xED) return {3, 0x80, 0x9F};
  if (c >= 0xE1 && c <= 0xEF) return {3, 0x80, 0xBF};
  if (c == 0xF0) return {4, 0x90, 0xBF};
  if (c >= 0xF1 && c <= 0xF3) return {4, 0x80, 0xBF};
  if (c == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

}  // namespace

int Utf8CharLength(std::string_view text, size_t pos) {
  const LeadInfo lead = Lead(static_cast<unsigned char>(text[pos]));
  if (lead.length <= 1) return 1;
  if (pos + lead.length > text.size()) return 1;
  const auto second = static_cast<unsigned char>(text[pos + 1]);
  if (second < lead.second_lo || second > lead.second_hi) return 1;
  for (int i = 2; i < lead.length; ++i) {
    if (!IsContinuation(static_cast<unsigned char>(text[pos + i]))) return 1;
  }
  return lead.length;
}

uint32_t DecodeUtf8(std::string_view text, size_t pos) {
  const int n = Utf8CharLength(text, pos);
  const auto lead = static_cast<unsigned char>(text[pos]);
  if (n == 1) return lead < 0x80 ? lead : kInvalidCodepoint;
  uint32_t cp = lead & (0x7F >> n);
  for (int i = 1; i < n; ++i) cp = (cp << 6) | (static_cast<unsigned char>(text[pos + i]) & 0x3F);
  return cp;
}

bool IsValidUtf8(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    const int n = Utf8CharLength(text, pos);
    if (n == 1 && static_cast<unsigned char>(text[pos]) >= 0x80) return false;
    pos += n;
  }
  return true;
}

void AppendUtf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

const std::array<std::string, 256>& ByteLevelChars() {
  // Bytes that are printable Latin-1 characters ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand
  // for themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen) take U+0100, U+0101, ...
  // in byte order, so no token ever contains whitespace or a control character.
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    uint32_t next_free = 0x100;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      AppendUtf8(printable ? b : next_free++, t[b]);
    }
    return t;
  }();
  return table;
}

std::string ByteLevelDecode(std::string_view text) {
  // inverse[cp] = the byte code point cp stands for, or -1 (the alphabet lies below U+0144).
  static const std::array<int16_t, 0x144> inverse = [] {
    std::array<int16_t, 0x144> inv;
    inv.fill(-1);
    for (int b = 0; b < 256; ++b) inv[DecodeUtf8(ByteLevelChars()[b], 0)] = int16_t(b);
    return inv;
  }();
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const int n = Utf8CharLength(text, pos);
    const uint32_t cp = DecodeUtf8(text, pos);
    if (cp < inverse.size() && inverse[cp] >= 0) {
      out += char(inverse[cp]);
    } else {
      out.append(text.substr(pos, n));
    }
    pos += n;
  }
  return out;
}

}  // namespace qattn::model::tok
