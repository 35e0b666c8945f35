#include "train/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/constants.h"
#include "core/error.h"

namespace par {

void SamplingOptions::validate() const {
  if (!(temperature >= 0)) fail_user("--temperature must be >= 0 (0: greedy)");
  if (top_k < 0) fail_user("--top-k must be >= 0 (0: no limit)");
  if (!(top_p > 0 && top_p <= 1)) fail_user("--top-p must be in (0, 1] (1: no limit)");
}

int32_t sample_token(const std::vector<float>& logits, const SamplingOptions& o,
                     std::mt19937_64& rng) {
  const int64_t V = int64_t(logits.size());
  if (o.temperature == 0)
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  // Most likely first; ties by id, so the order (and the draw) is deterministic.
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] != logits[size_t(b)] ? logits[size_t(a)] > logits[size_t(b)] : a < b;
  });
  int64_t keep = o.top_k > 0 ? std::min(o.top_k, V) : V;
  const double top = double(logits[size_t(order[0])]) / o.temperature;
  std::vector<double> p(static_cast<size_t>(keep));
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    p[size_t(i)] = std::exp(double(logits[size_t(order[size_t(i)])]) / o.temperature - top);
    sum += p[size_t(i)];
  }
  if (o.top_p < 1) {
    double cum = 0;
    int64_t n = 0;
    while (n < keep && cum < o.top_p * sum) cum += p[size_t(n++)];
    keep = std::max<int64_t>(1, n);
    sum = 0;
    for (int64_t i = 0; i < keep; ++i) sum += p[size_t(i)];
  }
  const double u = double(rng() >> 11) * 0x1p-53 * sum;
  double cum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    cum += p[size_t(i)];
    if (u < cum) return order[size_t(i)];
  }
  return order[size_t(keep - 1)];
}

namespace {

// Length of the valid UTF-8 sequence starting at s[i] (0 if invalid).
size_t utf8_length(const std::string& s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  const unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
  if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0) || (c == 0xF0 && c1 < 0x90) ||
      (c == 0xF4 && c1 >= 0x90))
    return 0;  // overlong, surrogate, or beyond U+10FFFF
  return n;
}

std::string escape(const std::string& raw) {
  std::string out;
  for (size_t i = 0; i < raw.size();) {
    const unsigned char c = static_cast<unsigned char>(raw[i]);
    if (c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7F)) {
      out += char(c);
      ++i;
    } else if (const size_t n = c >= 0x80 ? utf8_length(raw, i) : 0) {
      out.append(raw, i, n);
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
