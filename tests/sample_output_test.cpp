// What `par sample` prints (launch/sample_output.h): JSON strings and lines, and the
// progress line with its ETA.
#include <gtest/gtest.h>

#include "core/constants.h"
#include "launch/sample_output.h"

namespace par {
namespace {

TEST(SampleOutput, JsonQuoteEscapes) {
  EXPECT_EQ(json_quote("plain"), "\"plain\"");
  EXPECT_EQ(json_quote("a\"b\\c\nd\te"), "\"a\\\"b\\\\c\\nd\\te\"");
  EXPECT_EQ(json_quote(std::string("\x01\x7f", 2)), "\"\\u0001\\u007f\"");
  EXPECT_EQ(json_quote("h\xC3\xA9"), "\"h\xC3\xA9\"") << "UTF-8 passes through";
}

TEST(SampleOutput, JsonLine) {
  SampleRecord r;
  r.prompt_index = 2;
  r.sample = 1;
  r.seed = 7;
  r.prompt = {'h' + kByteOffset};
  r.generated = {'"' + kByteOffset, kEosToken};
  r.tokens_per_s = 12.5;
  EXPECT_EQ(json_line(r, true),
            "{\"prompt_index\": 2, \"sample\": 1, \"seed\": 7, \"prompt\": [107], \"generated\": "
            "[37, 1], \"text\": \"\\\"<eos>\", \"tokens_per_s\": 12.5}");
  EXPECT_EQ(json_line(r, false).find("text"), std::string::npos) << "ids alone for token models";
}

TEST(SampleOutput, ProgressWithEta) {
  // 9.3 s left: rounded up, so that a little left never reads "0 s".
  EXPECT_EQ(progress_text(1200, 4000, 4), "1200 of 4000 tokens generated (300 tokens/s, ETA 10 s)");
  EXPECT_EQ(progress_text(9990, 10000, 1), "9990 of 10000 tokens generated (9990 tokens/s, ETA 1 s)");
  EXPECT_EQ(progress_text(100, 100, 2), "100 of 100 tokens generated (50 tokens/s)");
  EXPECT_EQ(duration_text(184), "3 min 04 s");
  EXPECT_EQ(duration_text(7500), "2 h 05 min");
  EXPECT_EQ(progress_text(0, 10, 5), "0 of 10 tokens generated (0 tokens/s)");
}

}  // namespace
}  // namespace par
