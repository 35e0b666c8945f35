// Choosing the next token from the model's logits (temperature, top-k, top-p), and showing
// byte-level tokens as text.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace par {

struct SamplingOptions {
  double temperature = 1.0;  // 0: the most likely token
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;        // 1: no limit
  void validate() const;     // UserError naming the option
};

// A token drawn from softmax(logits / temperature) restricted to the top_k most likely
// tokens and then to the smallest set of most likely ones whose probability reaches top_p.
// The draw uses the top 53 bits of one rng() call, so a seed gives the same tokens on every
// platform.
int32_t sample_token(const std::vector<float>& logits, const SamplingOptions& opts,
                     std::mt19937_64& rng);

// Byte-level ids as text: id b+3 is byte b; PAD, EOS and SOS show as <pad>, <eos>, <sos>;
// bytes that are not printable text (control characters other than newline and tab,
// invalid UTF-8) are escaped as \xNN.
std::string decode_bytes(const std::vector<int32_t>& ids);

}  // namespace par
