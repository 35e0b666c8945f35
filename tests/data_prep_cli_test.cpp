// `par prep` through the real binary: success output, and bad input that must end with exit
// status 2 and a message on stderr naming the file or option.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/h5.h"
#include "tests/par_cli.h"
#include "data/shard.h"

namespace par {
namespace {

using testing_util::TempDir;
using testing_util::slurp;
using testing_util::ParRun;
using testing_util::run_par;

namespace fs = std::filesystem;

std::string quoted(const std::string& s) { return cat("'", s, "'"); }

ParRun par(const TempDir& dir, const std::string& args) { return run_par(dir, args); }

TEST(PrepCliTest, BytesEndToEnd) {
  TempDir dir;
  std::ofstream(dir.file("a.txt")) << "hello";
  std::ofstream(dir.file("b.txt")) << "xy";
  const std::string out = dir.file("shards");
  const ParRun r = par(dir, cat("prep bytes --out '", out, "' --val-fraction 0 '", dir.file("a.txt"),
                             "' '", dir.file("b.txt"), "'"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("train-00000.h5 (9 tokens)"), std::string::npos) << r.out;
  ShardReader s(out + "/train-00000.h5");
  std::vector<int32_t> t(9);
  s.read(0, 9, t.data(), 259);
  EXPECT_EQ(t, (std::vector<int32_t>{'h' + 3, 'e' + 3, 'l' + 3, 'l' + 3, 'o' + 3, 1, 'x' + 3,
                                     'y' + 3, 1}));
  const ParRun help = par(dir, "prep mirror --help");
  EXPECT_EQ(help.rc, 0);
  EXPECT_NE(help.out.find("--examples"), std::string::npos) << help.out;
}

// An empty input file is a document of EOS alone: said among others, an error alone.
TEST(PrepCliTest, EmptyInputFiles) {
  TempDir dir;
  std::ofstream(dir.file("empty.txt"));
  std::ofstream(dir.file("a.txt")) << "hello";
  EXPECT_USER_ERROR(par(dir, cat("prep bytes --out ", quoted(dir.file("o")), " ",
                                 quoted(dir.file("empty.txt")))),
                    cat("the input file ", dir.file("empty.txt"), " is empty: no bytes"));
  EXPECT_FALSE(fs::exists(dir.file("o")));
  const ParRun r = par(dir, cat("prep bytes --val-fraction 0 --out ", quoted(dir.file("o")), " ",
                                quoted(dir.file("a.txt")), " ", quoted(dir.file("empty.txt"))));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find(cat("warning: 1 input file(s) are empty (the first: ", dir.file("empty.txt"),
                           "); each is a document of EOS alone")),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("train-00000.h5 (7 tokens)"), std::string::npos) << r.out;
}

TEST(PrepCliTest, BadOptionsExitTwoNamingTheOption) {
  TempDir dir;
  const std::string out = quoted(dir.file("o"));
  EXPECT_USER_ERROR(par(dir, cat("prep mirror --out ", out, " --length 5 --examples 2 --bogus")),
                    "--bogus");
  EXPECT_USER_ERROR(par(dir, cat("prep mirror --out ", out, " --examples 2")), "--length");
  EXPECT_USER_ERROR(par(dir, "prep mirror --length 5 --examples 2"), "--out");
  EXPECT_USER_ERROR(par(dir, cat("prep mirror --out ", out, " --length 2 --examples 2")),
                    "--length must be at least 3");
  EXPECT_USER_ERROR(par(dir, cat("prep mirror --out ", out, " --length five --examples 2")),
                    "--length");
  EXPECT_USER_ERROR(par(dir, cat("prep tokens --out ", out, " --input x")), "--vocab-size");
  // No model takes a vocabulary past int32: no data for one either.
  EXPECT_USER_ERROR(par(dir, cat("prep tokens --out ", out, " --input x --vocab-size 2147483648")),
                    "--vocab-size must be between 1 and 2147483647");
  EXPECT_USER_ERROR(par(dir, cat("prep shuffle --out ", out)), "unknown mode 'shuffle'");
  EXPECT_USER_ERROR(par(dir, cat("prep bytes --out ", out)), "no input files");
  EXPECT_FALSE(fs::exists(dir.file("o/train-00000.h5")));
}

TEST(PrepCliTest, BadInputFilesExitTwoNamingTheFile) {
  TempDir dir;
  const std::string out = quoted(dir.file("o"));
  const std::string missing = dir.file("missing.bin");
  EXPECT_USER_ERROR(par(dir, cat("prep bytes --out ", out, " ", quoted(missing))), missing);
  EXPECT_USER_ERROR(par(dir, cat("prep tokens --out ", out, " --vocab-size 10 --input ", quoted(missing))),
                    missing);

  // A valid HDF5 file without the dataset asked for.
  const std::string h5file = dir.file("other.h5");
  {
    h5::Object f = h5::create_file(h5file);
    const std::vector<int32_t> v = {1, 2, 3};
    h5::write_dataset<int32_t>(f.id(), "ids", v.data(), {3});
  }
  ParRun r = par(dir, cat("prep tokens --out ", out, " --vocab-size 10 --input ", quoted(h5file)));
  EXPECT_USER_ERROR(r, h5file);
  EXPECT_NE(r.err.find("'tokens'"), std::string::npos) << r.err;

  // A token id >= --vocab-size.
  const std::string raw = dir.file("t.u8");
  std::ofstream(raw, std::ios::binary) << std::string("\x01\x02\x09\x03", 4);
  r = par(dir, cat("prep tokens --out ", out, " --vocab-size 9 --dtype uint8 --input ", quoted(raw)));
  EXPECT_USER_ERROR(r, raw);
  EXPECT_NE(r.err.find("position 2 is 9"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.file("o/train-00000.h5")));
  EXPECT_FALSE(fs::exists(dir.file("o/train-00000.h5.tmp")));
  // The failed runs made --out and leave it not even empty: gone.
  EXPECT_FALSE(fs::exists(dir.file("o")));
  // A --out that was there stays, as it was.
  fs::create_directories(dir.file("o"));
  std::ofstream(dir.file("o/notes.txt")) << "mine";
  EXPECT_USER_ERROR(par(dir, cat("prep tokens --out ", out, " --vocab-size 9 --dtype uint8 --input ",
                                 quoted(raw))),
                    raw);
  EXPECT_EQ(slurp(dir.file("o/notes.txt")), "mine");
}

TEST(PrepCliTest, RefusesToOverwriteAndLeavesTheShardIntact) {
  TempDir dir;
  const std::string out = quoted(dir.file("o"));
  ASSERT_EQ(par(dir, cat("prep mirror --out ", out, " --length 7 --examples 4")).rc, 0);
  const std::string shard = dir.file("o/train-00000.h5");
  const std::string before = slurp(shard);
  ASSERT_FALSE(before.empty());
  const ParRun r = par(dir, cat("prep mirror --out ", out, " --length 9 --examples 8 --seed 5"));
  EXPECT_USER_ERROR(r, "--force");
  EXPECT_NE(r.err.find(dir.file("o")), std::string::npos) << r.err;
  EXPECT_EQ(slurp(shard), before);
  ASSERT_EQ(par(dir, cat("prep mirror --force --out ", out, " --length 9 --examples 8 --seed 5")).rc, 0);
  EXPECT_EQ(inspect_shard(shard).num_tokens, 72);
}

}  // namespace
}  // namespace par
