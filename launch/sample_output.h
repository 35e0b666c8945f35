// What `par sample` prints: each sample as text, ids or one JSON line, and the progress of
// a long generation (on stderr, through the log).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace par {

// One generated continuation: sample `sample` of prompt `prompt_index`, drawn with `seed`.
struct SampleRecord {
  int64_t prompt_index = 0, sample = 0;
  uint64_t seed = 0;
  std::vector<int32_t> prompt, generated;  // the prompt as used (at most N tokens)
  double tokens_per_s = 0;                 // of its batch's generation, per sample
};

// s as a JSON string literal (quotes, backslashes and control characters escaped).
std::string json_quote(const std::string& s);

// {"prompt_index": P, "sample": K, "seed": S, "prompt": [...], "generated": [...],
//  "text": "..." (byte-level models), "tokens_per_s": R} on one line.
std::string json_line(const SampleRecord& r, bool byte_model);

// "1200 of 4000 tokens generated (300 tokens/s, ETA 9 s)": `done` of at most `total`
// tokens after `seconds`.
std::string progress_text(int64_t done, int64_t total, double seconds);

// A duration for people: "45 s", "3 min 04 s", "2 h 05 min".
std::string duration_text(double seconds);

}  // namespace par
