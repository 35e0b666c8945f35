#include "train/sampling.h"

#include <cstdio>

#include "core/constants.h"
#include "core/error.h"  // cat

namespace par {

int32_t sample_token(const std::vector<float>& logits, const SamplingOptions& o,
                     std::mt19937_64& rng) {
  const double u = o.temperature == 0 ? 0.0 : draw_uniform(rng);
  return choose_token(logits.data(), int64_t(logits.size()), o, u);
}

namespace {

// Length of the valid UTF-8 sequence starting at s[i] (0 if invalid).
size_t utf8_length(const std::string& s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  // Lead bytes: C2-DF start 2 bytes, E0-EF 3, F0-F4 4; C0, C1 and F5-FF start none.
  size_t n = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  const unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
  if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0) || (c == 0xF0 && c1 < 0x90) ||
      (c == 0xF4 && c1 >= 0x90))
    return 0;  // overlong, surrogate, or beyond U+10FFFF
  return n;
}

// U+0080..U+009F (C2 80..C2 9F): valid UTF-8, but control characters that terminals obey
// (U+009B opens an escape sequence as ESC [ does).
bool c1_control(const std::string& s, size_t i) {
  return static_cast<unsigned char>(s[i]) == 0xC2 && static_cast<unsigned char>(s[i + 1]) < 0xA0;
}

std::string hex_byte(unsigned char c) {
  char buf[4];
  std::snprintf(buf, sizeof buf, "%02X", c);
  return buf;
}

// Whether the bytes from s[i], a '<', spell a token's tag: <pad>, <eos>, <sos> or <digits>.
bool spells_tag(const std::string& s, size_t i) {
  for (const char* tag : {"<pad>", "<eos>", "<sos>"})
    if (s.compare(i, 5, tag) == 0) return true;
  size_t k = i + 1;
  while (k < s.size() && s[k] >= '0' && s[k] <= '9') ++k;
  return k > i + 1 && k < s.size() && s[k] == '>';
}

std::string escape(const std::string& raw) {
  std::string out;
  for (size_t i = 0; i < raw.size();) {
    const unsigned char c = static_cast<unsigned char>(raw[i]);
    if (c == '\\') {  // doubled, so that a byte's \xNN is never the text "\xNN"
      out += "\\\\";
      ++i;
    } else if (c == '<' && spells_tag(raw, i)) {  // so that a tag in the text is a token's
      out += "\\x3C";
      ++i;
    } else if (c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7F)) {
      out += char(c);
      ++i;
    } else if (const size_t n = c >= 0x80 ? utf8_length(raw, i) : 0; n > 0 && !c1_control(raw, i)) {
      out.append(raw, i, n);
      i += n;
    } else if (n > 0) {  // a C1 control: both of its bytes escaped
      out += cat("\\x", hex_byte(c), "\\x", hex_byte(static_cast<unsigned char>(raw[i + 1])));
      i += n;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
      ++i;
    }
  }
  return out;
}

}  // namespace

std::string decode_bytes(const std::vector<int32_t>& ids) {
  std::string out, run;
  for (int32_t id : ids) {
    if (id >= kByteOffset && id < kByteVocabSize) {
      run += char(id - kByteOffset);
      continue;
    }
    out += escape(run);
    run.clear();
    out += id == kPadToken   ? "<pad>"
           : id == kEosToken ? "<eos>"
           : id == kSosToken ? "<sos>"
                             : cat("<", id, ">");
  }
  return out + escape(run);
}

}  // namespace par
