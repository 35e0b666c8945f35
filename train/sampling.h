// Choosing the next token from the model's logits (temperature, top-k, top-p), and showing
// byte-level tokens as text.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/token_choice.h"

namespace par {

// u in [0, 1) from the top 53 bits of one rng() call, so a seed gives the same numbers on
// every platform.
inline double draw_uniform(std::mt19937_64& rng) { return uniform_from_bits(rng()); }

// A token drawn from softmax(logits / temperature) restricted to the top_k most likely
// tokens and then to the smallest set of most likely ones whose probability reaches top_p:
// choose_token (core/token_choice.h) for draw_uniform(rng). Greedy (temperature 0) draws
// nothing.
int32_t sample_token(const std::vector<float>& logits, const SamplingOptions& opts,
                     std::mt19937_64& rng);

// Byte-level ids as text: id b+3 is byte b; PAD, EOS and SOS show as <pad>, <eos>, <sos>;
// bytes that are not printable text (control characters other than newline and tab, C1
// controls U+0080..U+009F included, and invalid UTF-8) are escaped as \xNN, a backslash
// is doubled, and a '<' whose bytes would spell a tag is \x3C, so that escapes and tags
// read back without doubt.
std::string decode_bytes(const std::vector<int32_t>& ids);

}  // namespace par
