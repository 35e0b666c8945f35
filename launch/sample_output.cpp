#include "launch/sample_output.h"

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "launch/text.h"
#include "train/sampling.h"

namespace par {

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;  // UTF-8 passes through
    }
  }
  return out + "\"";
}

namespace {

std::string id_list(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += cat(i ? ", " : "", v[i]);
  return s + "]";
}

}  // namespace

std::string json_line(const SampleRecord& r, bool byte_model) {
  std::string s = cat("{\"prompt_index\": ", r.prompt_index, ", \"sample\": ", r.sample,
                      ", \"seed\": ", r.seed, ", \"prompt\": ", id_list(r.prompt),
                      ", \"generated\": ", id_list(r.generated));
  if (byte_model) s += cat(", \"text\": ", json_quote(decode_bytes(r.generated)));
  return s + cat(", \"tokens_per_s\": ", fmt("%.1f", r.tokens_per_s), "}");
}

std::string duration_text(double seconds) {
  const int64_t s = int64_t(std::llround(std::max(0.0, seconds)));
  if (s < 60) return cat(s, " s");
  if (s < 3600) return cat(s / 60, " min ", fmt("%02.0f", double(s % 60)), " s");
  return cat(s / 3600, " h ", fmt("%02.0f", double(s / 60 % 60)), " min");
}

std::string progress_text(int64_t done, int64_t total, double seconds) {
  const double rate = seconds > 0 ? double(done) / seconds : 0;
  std::string s = cat(done, " of ", total, " tokens generated (", fmt("%.0f", rate), " tokens/s");
  // Rounded up: what is left is never "0 s" while anything is.
  if (rate > 0 && done < total)
    s += cat(", ETA ", duration_text(std::ceil(double(total - done) / rate)));
  return s + ")";
}

}  // namespace par
