// Rows of logits with sampling options and uniform numbers, for testing a backend's
// Ops::sample_tokens against choose_token (core/token_choice.h): random rows, rows with
// many equal logits (ties, +0 and -0), the top-p boundary reached exactly, and the extreme
// uniform numbers 0 and the largest below 1.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/token_choice.h"

namespace par::testing_util {

struct SamplingCase {
  int64_t rows = 0, vocab = 0;
  std::vector<float> logits;  // [rows, vocab]
  SamplingOptions opts;
  std::vector<double> u;      // [rows]
  std::string describe() const {
    return cat(rows, " rows of ", vocab, " logits, temperature ", opts.temperature, ", top-k ",
               opts.top_k, ", top-p ", opts.top_p);
  }
};

// Logits of one kind: 0 normal (scale 3), 1 few distinct values (many ties, with -0 and +0
// among them), 2 all equal (every top-p boundary is reached exactly, in exact arithmetic).
inline std::vector<float> sampling_logits(int kind, int64_t n, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 3.0);
  std::vector<float> v(static_cast<size_t>(n));
  for (size_t i = 0; i < v.size(); ++i) {
    if (kind == 0) v[i] = float(normal(rng));
    if (kind == 1) v[i] = float(int64_t(rng() % 5) - 2) * 0.5f;
    if (kind == 2) v[i] = 1.25f;
    if (kind == 1 && v[i] == 0 && rng() % 2) v[i] = -0.0f;
  }
  return v;
}

// Every combination of vocabulary size (up to max_vocab), rows, kind of logits and options.
inline std::vector<SamplingCase> sampling_cases(int64_t max_vocab) {
  std::vector<SamplingCase> cases;
  std::mt19937_64 rng(2026);
  std::vector<int64_t> vocabs;
  for (int64_t v : {1, 2, 4, 7, 259, 1000, 50257})
    if (v <= max_vocab) vocabs.push_back(v);
  for (int64_t vocab : vocabs)
    for (int64_t rows : {1, 5})
      for (int kind : {0, 1, 2})
        for (double temperature : {0.0, 0.3, 1.0, 2.5})
          for (int64_t top_k : {int64_t(0), int64_t(1), int64_t(3), vocab + 5})
            for (double top_p : {1.0, 0.9, 0.5, 0.25, 1e-6}) {
              if (temperature == 0 && (top_k != 0 || top_p != 1)) continue;  // ignored then
              SamplingCase c;
              c.rows = rows;
              c.vocab = vocab;
              c.logits = sampling_logits(kind, rows * vocab, rng);
              c.opts = {temperature, top_k, top_p};
              for (int64_t r = 0; r < rows; ++r) c.u.push_back(uniform_from_bits(rng()));
              if (kind == 2) c.u[0] = std::nextafter(1.0, 0.0);  // the last kept token
              if (rows > 1) c.u[1] = 0;                          // the first
              cases.push_back(std::move(c));
            }
  // Rows whose likeliest logit over the temperature is not finite (choose_token: the first
  // of the order): two +inf (the smaller id wins), every logit -inf, and finite logits over
  // a temperature so small that the quotient overflows.
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t vocab : vocabs)
    for (double top_p : {1.0, 0.9})
      for (int64_t top_k : {int64_t(0), int64_t(2)}) {
        SamplingCase c;
        c.rows = 3;
        c.vocab = vocab;
        c.logits = sampling_logits(0, 3 * vocab, rng);
        c.logits[size_t(vocab - 1)] = inf;
        c.logits[size_t(vocab / 2)] = inf;
        for (int64_t i = 0; i < vocab; ++i) c.logits[size_t(vocab + i)] = -inf;
        c.opts = {1.0, top_k, top_p};
        c.u = {0.999, 0.5, 0.75};
        cases.push_back(c);
        c.rows = 1;
        c.logits = sampling_logits(0, vocab, rng);
        c.opts.temperature = 1e-310;
        c.u = {0.999};
        cases.push_back(std::move(c));
      }
  return cases;
}

}  // namespace par::testing_util
