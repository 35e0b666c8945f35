// `par prep` through the library: prepared shards hold exactly the expected token stream for
// bytes, token arrays (raw and HDF5) and the mirror task, and existing shards are protected.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/dataset.h"
#include "data/prep.h"

#include "tests/temp_dir.h"
#include "tests/user_error.h"

namespace par {
namespace {

using testing_util::TempDir;
using testing_util::user_error_of;
using testing_util::slurp;

namespace fs = std::filesystem;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::vector<int32_t> read_shards(const std::vector<ShardInfo>& shards) {
  std::vector<int32_t> all;
  for (const ShardInfo& s : shards) {
    ShardReader r(s.path);
    EXPECT_EQ(r.info().num_tokens, s.num_tokens);
    std::vector<int32_t> t(static_cast<size_t>(s.num_tokens));
    r.read(0, s.num_tokens, t.data(), r.info().vocab_size);
    all.insert(all.end(), t.begin(), t.end());
  }
  return all;
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(PrepTest, BytesModeIdsEosAndSplit) {
  TempDir dir;
  const std::vector<std::string> docs = {"abc", "", "hello world", std::string("\x00\xff", 2)};
  std::vector<std::string> inputs;
  std::vector<int32_t> expect;
  for (size_t i = 0; i < docs.size(); ++i) {
    inputs.push_back(dir.file("doc" + std::to_string(i)));
    write_bytes(inputs.back(), docs[i]);
    for (unsigned char c : docs[i]) expect.push_back(c + 3);
    expect.push_back(1);  // EOS after every document, the last included
  }
  ASSERT_EQ(expect.size(), 20u);
  BytesPrepOptions o;
  o.common.out_dir = dir.file("out/nested");  // created
  o.common.shard_tokens = 6;
  o.inputs = inputs;
  o.val_fraction = 0.25;  // 5 of 20 tokens
  std::ostringstream log;
  const PrepResult r = prep_bytes(o, log);
  ASSERT_EQ(r.train.size(), 3u);  // 6 + 6 + 3
  ASSERT_EQ(r.val.size(), 1u);
  EXPECT_EQ(r.train[2].num_tokens, 3);
  EXPECT_EQ(r.val[0].num_tokens, 5);
  EXPECT_EQ(r.train[0].path, (fs::path(o.common.out_dir) / "train-00000.h5").string());
  EXPECT_EQ(r.val[0].path, (fs::path(o.common.out_dir) / "val-00000.h5").string());
  EXPECT_EQ(r.train[0].vocab_size, 259);
  std::vector<int32_t> got = read_shards(r.train);
  EXPECT_EQ(got, std::vector<int32_t>(expect.begin(), expect.begin() + 15));
  EXPECT_EQ(read_shards(r.val), std::vector<int32_t>(expect.begin() + 15, expect.end()));
  EXPECT_EQ(got[0], 'a' + 3);
  EXPECT_EQ(got[3], 1);
  EXPECT_EQ(got[4], 1);  // the empty document is just its EOS
  EXPECT_EQ(read_shards(r.val)[3], 255 + 3);
  EXPECT_HAS(log.str(), "train-00002.h5 (3 tokens)");
  EXPECT_EQ(names_in(o.common.out_dir),
            (std::vector<std::string>{"train-00000.h5", "train-00001.h5", "train-00002.h5",
                                      "val-00000.h5"}));

  // No validation data asked for: no val shard.
  BytesPrepOptions o2 = o;
  o2.common.out_dir = dir.file("noval");
  o2.val_fraction = 0;
  o2.common.shard_tokens = 1000;
  const PrepResult r2 = prep_bytes(o2, log);
  EXPECT_TRUE(r2.val.empty());
  EXPECT_EQ(read_shards(r2.train), expect);

  // And the data set of those shards reads back the same windows.
  Dataset d({r.train[0].path, r.train[1].path}, 5, 259);
  EXPECT_EQ(d.num_windows(), 2);
  std::vector<int32_t> w(6);
  d.read_window(1, 0, 6, w.data());
  EXPECT_EQ(w, std::vector<int32_t>(expect.begin() + 6, expect.begin() + 12));
}

TEST(PrepTest, TokensModeFromRawUint16AndInt64) {
  TempDir dir;
  std::mt19937_64 g(4);
  std::vector<int32_t> t(1000);
  std::string le16, le64;
  for (auto& x : t) {
    x = static_cast<int32_t>(g() % 40000);
    le16.push_back(static_cast<char>(x & 0xff));
    le16.push_back(static_cast<char>(x >> 8));
    for (int b = 0; b < 8; ++b) le64.push_back(static_cast<char>((int64_t{x} >> (8 * b)) & 0xff));
  }
  write_bytes(dir.file("t.u16"), le16);
  write_bytes(dir.file("t.i64"), le64);
  std::ostringstream log;
  TokensPrepOptions o;
  o.common.out_dir = dir.file("out16");
  o.common.shard_tokens = 400;
  o.input = dir.file("t.u16");
  o.dtype = "uint16";
  o.vocab_size = 40000;
  o.val_fraction = 0.1;
  PrepResult r = prep_tokens(o, log);
  EXPECT_EQ(r.train.size(), 3u);  // 900 = 400 + 400 + 100
  EXPECT_EQ(r.val.size(), 1u);
  EXPECT_EQ(r.train[0].vocab_size, 40000);
  std::vector<int32_t> all = read_shards(r.train);
  const std::vector<int32_t> val = read_shards(r.val);
  all.insert(all.end(), val.begin(), val.end());
  EXPECT_EQ(all, t);

  o.common.out_dir = dir.file("out64");
  o.input = dir.file("t.i64");
  o.dtype = "int64";
  o.val_fraction = 0;
  r = prep_tokens(o, log);
  EXPECT_EQ(read_shards(r.train), t);
}

TEST(PrepTest, TokensModeFromHdf5) {
  TempDir dir;
  const std::vector<int64_t> ids = {5, 0, 1, 2, 99, 7, 8};
  const std::vector<int32_t> expect(ids.begin(), ids.end());
  {
    h5::Object f = h5::create_file(dir.file("in.h5"));
    h5::write_dataset<int64_t>(f.id(), "corpus/ids", ids.data(), {7});
    const std::vector<int32_t> t32(ids.begin(), ids.end());
    h5::write_dataset<int32_t>(f.id(), "tokens", t32.data(), {7});
  }
  std::ostringstream log;
  TokensPrepOptions o;
  o.common.out_dir = dir.file("a");
  o.input = dir.file("in.h5");
  o.dataset = "corpus/ids";
  o.vocab_size = 100;
  o.val_fraction = 0;
  EXPECT_EQ(read_shards(prep_tokens(o, log).train), expect);
  o.common.out_dir = dir.file("b");
  o.dataset = "";  // default: "tokens"
  EXPECT_EQ(read_shards(prep_tokens(o, log).train), expect);
}

TEST(PrepTest, TokensModeErrors) {
  TempDir dir;
  std::ostringstream log;
  const std::string raw = dir.file("t.u16");
  write_bytes(raw, std::string("\x05\x00\x06\x00\x2c\x01\x07\x00", 8));  // 5 6 300 7
  TokensPrepOptions o;
  o.common.out_dir = dir.file("out");
  o.common.shard_tokens = 2;  // the first shard is complete before the bad token
  o.input = raw;
  o.dtype = "uint16";
  o.vocab_size = 259;
  o.val_fraction = 0;
  std::string msg = user_error_of([&] { prep_tokens(o, log); });
  EXPECT_HAS(msg, raw);
  EXPECT_HAS(msg, "position 2");
  EXPECT_HAS(msg, "300");
  // Nothing half-written is left behind, nor the directory the failed run made.
  EXPECT_FALSE(std::filesystem::exists(o.common.out_dir));

  o.dtype = "";
  EXPECT_HAS(user_error_of([&] { prep_tokens(o, log); }), "--dtype is required");
  o.dtype = "float16";
  EXPECT_HAS(user_error_of([&] { prep_tokens(o, log); }), "--dtype must be one of");
  o.dtype = "int32";
  write_bytes(raw, "abcdef");
  EXPECT_HAS(user_error_of([&] { prep_tokens(o, log); }), "not a multiple of 4");
  o.dataset = "x";
  EXPECT_HAS(user_error_of([&] { prep_tokens(o, log); }), "not an HDF5 file");
  o.input = dir.file("nope.bin");
  EXPECT_HAS(user_error_of([&] { prep_tokens(o, log); }), "nope.bin");
}

// Checks the mirror task's structure; returns the tokens.
std::vector<int32_t> check_mirror(const std::vector<ShardInfo>& shards, int64_t e, int64_t k) {
  const std::vector<int32_t> t = read_shards(shards);
  EXPECT_EQ(static_cast<int64_t>(t.size()), k * e);
  for (const ShardInfo& s : shards) EXPECT_EQ(s.num_tokens % e, 0) << "whole examples per shard";
  const int64_t h = (e - 1) / 2;
  for (int64_t x = 0; x < k && !::testing::Test::HasFailure(); ++x) {
    const int32_t* ex = t.data() + x * e;
    for (int64_t i = 0; i < h; ++i) {
      EXPECT_GE(ex[i], 3);
      EXPECT_LE(ex[i], 258);
      EXPECT_EQ(ex[h + i], ex[h - 1 - i]) << "example " << x;
    }
    for (int64_t i = 2 * h; i < e; ++i) EXPECT_EQ(ex[i], 1) << "example " << x;
    EXPECT_NE(ex[2 * h - 1], 1);  // exactly e - 2h EOS: one if E odd, two if even
  }
  return t;
}

TEST(PrepTest, MirrorModeStructureAndDeterminism) {
  TempDir dir;
  std::ostringstream log;
  MirrorPrepOptions o;
  o.length = 9;
  o.examples = 25;
  o.seed = 3;
  o.common.out_dir = dir.file("a");
  o.common.shard_tokens = 40;  // 4 whole examples (36 tokens) per shard
  const PrepResult a = prep_mirror(o, log);
  EXPECT_EQ(a.train.size(), 7u);
  EXPECT_EQ(a.train[0].num_tokens, 36);
  EXPECT_EQ(a.train[0].vocab_size, 259);
  const std::vector<int32_t> ta = check_mirror(a.train, 9, 25);
  const std::vector<int32_t> va = check_mirror(a.val, 9, 2);  // default max(1, 25/10)

  o.common.out_dir = dir.file("b");
  o.common.shard_tokens = 1 << 20;
  const PrepResult b = prep_mirror(o, log);
  EXPECT_EQ(b.train.size(), 1u);
  EXPECT_EQ(read_shards(b.train), ta) << "same seed, same data, whatever the sharding";
  EXPECT_EQ(read_shards(b.val), va);

  o.common.out_dir = dir.file("c");
  o.seed = 4;
  const PrepResult c = prep_mirror(o, log);
  EXPECT_NE(read_shards(c.train), ta);

  o.common.out_dir = dir.file("d");
  o.length = 10;  // even: two EOS
  o.examples = 3;
  o.val_examples = 5;
  const PrepResult d = prep_mirror(o, log);
  check_mirror(d.train, 10, 3);
  check_mirror(d.val, 10, 5);

  o.common.out_dir = dir.file("e");
  o.length = 2;
  EXPECT_HAS(user_error_of([&] { prep_mirror(o, log); }), "--length must be at least 3");
  o.length = 9;
  o.examples = 0;
  EXPECT_HAS(user_error_of([&] { prep_mirror(o, log); }), "--examples");
  o.examples = 2;
  o.common.shard_tokens = 8;
  EXPECT_HAS(user_error_of([&] { prep_mirror(o, log); }), "--shard-tokens");
}

// Copy-task options: E-token examples, seed 3, into `out`.
MirrorPrepOptions copy_options(int64_t length, int64_t examples, const std::string& out) {
  MirrorPrepOptions o;
  o.length = length;
  o.examples = examples;
  o.seed = 3;
  o.reverse = false;
  o.common.out_dir = out;
  return o;
}

TEST(PrepTest, CopyModeRepeatsTheFirstHalfInOrder) {
  TempDir dir;
  std::ostringstream log;
  MirrorPrepOptions o = copy_options(10, 6, dir.file("copy"));
  const std::vector<int32_t> t = read_shards(prep_mirror(o, log).train);
  ASSERT_EQ(t.size(), 60u);
  const int64_t h = 4;
  for (int64_t x = 0; x < 6; ++x) {
    const int32_t* ex = t.data() + x * 10;
    for (int64_t i = 0; i < h; ++i) {
      EXPECT_GE(ex[i], 3);
      EXPECT_EQ(ex[h + i], ex[i]) << "example " << x << " position " << h + i;
    }
    EXPECT_EQ(ex[8], 1);
    EXPECT_EQ(ex[9], 1);
  }
  // The same random halves as the mirror task of the same seed.
  o.reverse = true;
  o.common.out_dir = dir.file("mirror");
  const std::vector<int32_t> m = read_shards(prep_mirror(o, log).train);
  for (int64_t x = 0; x < 6; ++x)
    for (int64_t i = 0; i < h; ++i) EXPECT_EQ(m[size_t(x * 10 + i)], t[size_t(x * 10 + i)]);
}

// --half sets the distance back (no EOS when the halves fill the example); --keep blanks
// out (PAD) all but the last K tokens of the second half and the random tokens they repeat,
// which stay those of the whole task.
TEST(PrepTest, HalfAndKeep) {
  TempDir dir;
  std::ostringstream log;
  MirrorPrepOptions o = copy_options(10, 4, dir.file("whole"));
  o.half = 5;
  const std::vector<int32_t> whole = read_shards(prep_mirror(o, log).train);
  ASSERT_EQ(whole.size(), 40u);
  for (int64_t x = 0; x < 4; ++x)
    for (int64_t i = 0; i < 5; ++i) {
      EXPECT_GE(whole[size_t(x * 10 + i)], 3);
      EXPECT_EQ(whole[size_t(x * 10 + 5 + i)], whole[size_t(x * 10 + i)]);
    }
  for (bool reverse : {false, true}) {
    SCOPED_TRACE(reverse ? "mirror" : "copy");
    o.reverse = reverse;
    o.keep = 2;
    o.common.out_dir = dir.file(reverse ? "mirror" : "copy");
    const std::vector<int32_t> t = read_shards(prep_mirror(o, log).train);
    ASSERT_EQ(t.size(), 40u);
    for (int64_t x = 0; x < 4; ++x) {
      const int32_t* ex = t.data() + x * 10;
      const int32_t* full = whole.data() + x * 10;
      // Second half: positions 5..7 PAD, 8 and 9 kept, repeating 3 and 4 (copy) or 1 and
      // 0 (mirror); the first half keeps only those.
      for (int64_t i = 5; i < 8; ++i) EXPECT_EQ(ex[i], 0) << i;
      for (int64_t i = 8; i < 10; ++i) {
        const int64_t src = reverse ? 9 - i : i - 5;
        EXPECT_EQ(ex[i], full[src]) << i;
        EXPECT_EQ(ex[src], full[src]) << src;
      }
      const std::vector<int64_t> blank = reverse ? std::vector<int64_t>{2, 3, 4}
                                                 : std::vector<int64_t>{0, 1, 2};
      for (int64_t i : blank) EXPECT_EQ(ex[i], 0) << i;
    }
  }
  o.common.out_dir = dir.file("bad");
  o.keep = 6;
  EXPECT_HAS(user_error_of([&] { prep_mirror(o, log); }), "--keep must be between 1 and the half (5)");
  o.keep = -1;
  o.half = 6;
  EXPECT_HAS(user_error_of([&] { prep_mirror(o, log); }), "--half must be between 1 and --length / 2 = 5");
}

TEST(PrepTest, RefusesToOverwriteUnlessForced) {
  TempDir dir;
  std::ostringstream log;
  MirrorPrepOptions o;
  o.length = 5;
  o.examples = 6;
  o.common.out_dir = dir.file("out");
  o.common.shard_tokens = 10;
  prep_mirror(o, log);  // train-00000..00002, val-00000
  const std::string first = dir.file("out/train-00000.h5");
  const std::string before = slurp(first);
  ASSERT_FALSE(before.empty());

  o.seed = 1;
  const std::string msg = user_error_of([&] { prep_mirror(o, log); });
  EXPECT_HAS(msg, o.common.out_dir);
  EXPECT_HAS(msg, "--force");
  EXPECT_EQ(slurp(first), before) << "the existing shard is untouched";

  o.common.force = true;
  o.common.shard_tokens = 100;  // one train shard now: the old 00001, 00002 must go
  const PrepResult r = prep_mirror(o, log);
  EXPECT_EQ(r.train.size(), 1u);
  EXPECT_NE(slurp(first), before);
  EXPECT_EQ(names_in(o.common.out_dir),
            (std::vector<std::string>{"train-00000.h5", "val-00000.h5"}));
  EXPECT_HAS(log.str(), "removed old shard");
}

}  // namespace
}  // namespace par
