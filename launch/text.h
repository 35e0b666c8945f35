// Number formatting for logs, metrics and resolved configs.
#pragma once

#include <charconv>
#include <cstdio>
#include <string>

namespace par {

// The shortest text that reads back as exactly the same double (for metrics and
// configs that must round-trip).
inline std::string exact(double x) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

// printf-style formatting of one number, for human-readable logs.
inline std::string fmt(const char* format, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, x);
  return buf;
}

}  // namespace par
