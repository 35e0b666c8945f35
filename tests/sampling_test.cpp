// Choosing tokens from logits (greedy, temperature, top-k, top-p), showing byte-level
// tokens as text, and `par sample`'s handling of bad options.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>

#include "tests/par_cli.h"
#include "train/sampling.h"

namespace par {
namespace {

using testing_util::ParRun;
using testing_util::quote;
using testing_util::run_par;
using testing_util::TempDir;

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, -1.0f, 2.5f};

TEST(Sampling, GreedyTopKAndTopP) {
  std::mt19937_64 rng(1);
  SamplingOptions greedy;
  greedy.temperature = 0;
  EXPECT_EQ(sample_token(kLogits, greedy, rng), 1);
  SamplingOptions k1;
  k1.top_k = 1;
  SamplingOptions p_small;
  p_small.top_p = 1e-6;
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(sample_token(kLogits, k1, rng), 1);
    EXPECT_EQ(sample_token(kLogits, p_small, rng), 1);
  }
  // top-k 2 keeps ids 1 and 4 only.
  SamplingOptions k2;
  k2.top_k = 2;
  for (int i = 0; i < 200; ++i) {
    const int32_t t = sample_token(kLogits, k2, rng);
    EXPECT_TRUE(t == 1 || t == 4) << t;
  }
}

// Frequencies of 200,000 draws against softmax(logits / T): within 5 standard errors.
TEST(Sampling, DrawsFollowTheSoftmax) {
  for (double temperature : {1.0, 0.5}) {
    SamplingOptions o;
    o.temperature = temperature;
    std::mt19937_64 rng(7);
    const int n = 200000;
    std::map<int32_t, int> counts;
    for (int i = 0; i < n; ++i) ++counts[sample_token(kLogits, o, rng)];
    double z = 0;
    for (float l : kLogits) z += std::exp(l / temperature);
    for (size_t v = 0; v < kLogits.size(); ++v) {
      const double p = std::exp(kLogits[v] / temperature) / z;
      const double se = std::sqrt(p * (1 - p) / n);
      EXPECT_NEAR(double(counts[int32_t(v)]) / n, p, 5 * se + 1e-9) << "token " << v << " T " << temperature;
    }
  }
  // The same seed gives the same tokens.
  std::mt19937_64 a(3), b(3);
  SamplingOptions o;
  for (int i = 0; i < 100; ++i) EXPECT_EQ(sample_token(kLogits, o, a), sample_token(kLogits, o, b));
}

TEST(Sampling, BytesAsText) {
  auto ids = [](const std::string& s) {
    std::vector<int32_t> v;
    for (unsigned char c : s) v.push_back(int32_t(c) + 3);
    return v;
  };
  EXPECT_EQ(decode_bytes(ids("hello\nworld")), "hello\nworld");
  EXPECT_EQ(decode_bytes(ids("caf\xC3\xA9")), "caf\xC3\xA9");  // valid UTF-8 passes
  EXPECT_EQ(decode_bytes(ids("a\xC3z")), "a\\xC3z");           // a broken sequence is escaped
  EXPECT_EQ(decode_bytes(ids(std::string("\x01\x7F", 2))), "\\x01\\x7F");
  // A backslash is doubled: the text "\x41" is not the escape of a byte.
  EXPECT_EQ(decode_bytes(ids("a\\x41")), "a\\\\x41");
  // C1 controls are valid UTF-8 that terminals obey (U+009B opens an escape sequence):
  // escaped; U+00A0 on is text.
  EXPECT_EQ(decode_bytes(ids("a\xC2\x9B" "2J\xC2\x80\xC2\xA0")), "a\\xC2\\x9B2J\\xC2\\x80\xC2\xA0");
  // F5-FF never start a sequence (they once passed as 3-byte leads, which made the JSON
  // of `par sample` invalid UTF-8); with continuation bytes after them, all are escaped.
  for (int lead = 0xF5; lead <= 0xFF; ++lead) {
    char want[32];
    std::snprintf(want, sizeof want, "\\x%02X\\x80\\x80\\x80", lead);
    EXPECT_EQ(decode_bytes(ids(std::string{char(lead), '\x80', '\x80', '\x80'})), want);
  }
  EXPECT_EQ(decode_bytes(ids("\xF0\x9F\x98\x80")), "\xF0\x9F\x98\x80");  // 4-byte UTF-8 passes
  std::vector<int32_t> special = {0, 1, 2, 'x' + 3};
  EXPECT_EQ(decode_bytes(special), "<pad><eos><sos>x");
  // Bytes that spell a tag are not the token: their '<' is escaped; other '<' stay.
  EXPECT_EQ(decode_bytes(ids("<eos><pad><sos><12>")), "\\x3Ceos>\\x3Cpad>\\x3Csos>\\x3C12>");
  EXPECT_EQ(decode_bytes(ids("a<b> <eos <> <1x> <<eos")), "a<b> <eos <> <1x> <<eos");
  std::vector<int32_t> mixed = ids("<");
  mixed.push_back(1);
  EXPECT_EQ(decode_bytes(mixed), "<<eos>");  // a byte '<' before the EOS token
}

TEST(Sampling, BadOptionsAreClearErrors) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 40);
  ASSERT_EQ(run_par(dir, cat("train --config ", quote(testing_util::configs_dir() + "tiny.ini"),
                             " --data ", quote(data), " --out ", quote(dir.file("run")), " --steps 1"))
                .rc,
            0);
  // A model whose vocabulary is not the byte-level one.
  ASSERT_EQ(run_par(dir, cat("train --config ", quote(testing_util::configs_dir() + "tiny.ini"),
                             " --data ", quote(data), " --out ", quote(dir.file("ids")),
                             " --steps 1 --vocab-size 300"))
                .rc,
            0);
  const std::string base = cat("sample --checkpoint ", quote(dir.file("run")), " --tokens 3");
  EXPECT_USER_ERROR(run_par(dir, base + " --temperature -1"), "--temperature");
  EXPECT_USER_ERROR(run_par(dir, base + " --top-p 0"), "--top-p");
  EXPECT_USER_ERROR(run_par(dir, base + " --top-p 1.5"), "--top-p");
  EXPECT_USER_ERROR(run_par(dir, base + " --top-k -2"), "--top-k");
  EXPECT_USER_ERROR(run_par(dir, base + " --tokens 0"), "--tokens");
  EXPECT_USER_ERROR(run_par(dir, base + " --prompt ab --prompt-file x"), "one prompt");
  EXPECT_USER_ERROR(run_par(dir, base + " --format html"), "--format");
  EXPECT_USER_ERROR(run_par(dir, base + " --prompt-file " + quote(dir.file("none.txt"))), "none.txt");
  EXPECT_USER_ERROR(run_par(dir, cat(base, " --prompt-shard ", quote(dir.file("data/val-00000.h5")),
                                     " --prompt-begin 200 --prompt-length 500")),
                    "--prompt-begin");
  EXPECT_USER_ERROR(run_par(dir, "sample --tokens 3"), "--checkpoint");
  const std::string ids = cat("sample --checkpoint ", quote(dir.file("ids")), " --tokens 3");
  EXPECT_USER_ERROR(run_par(dir, ids + " --prompt hello"), "byte-level");
  EXPECT_USER_ERROR(run_par(dir, ids + " --format text"), "byte-level");
  // And the good cases run: an empty prompt (from SOS) and a text prompt.
  ParRun r = run_par(dir, base + " --format ids --seed 4");
  EXPECT_EQ(r.rc, 0) << r.err;
  r = run_par(dir, base + " --prompt 'hi there' --temperature 0.7 --top-k 20 --top-p 0.9");
  EXPECT_EQ(r.rc, 0) << r.err;
  r = run_par(dir, ids + " --format json --temperature 0");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("\"prompt\": [2]"), std::string::npos) << r.out;  // SOS
}

}  // namespace
}  // namespace par
