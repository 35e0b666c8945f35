// launch/cli.h's parse: what Boost would read wrongly without a word is refused or repaired
// (a sign on an unsigned option, a config file's byte-order mark).
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "launch/cli.h"
#include "tests/par_cli.h"

namespace par {
namespace {

namespace po = boost::program_options;

struct Parsed {
  uint64_t seed = 7;
  int64_t steps = 1;
};

// Parses `args` (after the command's name) with a --seed (unsigned), a --steps (signed)
// and a --config.
Parsed parse(std::vector<std::string> args) {
  Parsed p;
  po::options_description opts;
  opts.add_options()("seed", po::value(&p.seed)->default_value(p.seed), "")(
      "steps", po::value(&p.steps)->default_value(p.steps), "")("config", po::value<std::string>(), "");
  args.insert(args.begin(), "train");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  po::variables_map vm;
  cli::parse(int(argv.size()), argv.data(), cli::Command{"train", "", ""}, opts, vm, nullptr,
             "config");
  return p;
}

void expect_refused(const std::vector<std::string>& args, const std::string& part) {
  try {
    parse(args);
    ADD_FAILURE() << "accepted: " << part;
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(CliParse, ASignOnAnUnsignedOptionIsRefused) {
  expect_refused({"--seed", "-3"}, "--seed must be zero or more, not -3");
  expect_refused({"--seed=-1"}, "--seed must be zero or more, not -1");
  EXPECT_EQ(parse({"--seed", "18446744073709551615"}).seed, 18446744073709551615ull);
  EXPECT_EQ(parse({"--steps", "-2"}).steps, -2);  // signed: the option's own check decides
  testing_util::TempDir dir;
  std::ofstream(dir.file("neg.ini")) << "steps = 3\nseed = -4\n";
  expect_refused({"--config", dir.file("neg.ini")},
                 cat("config file ", dir.file("neg.ini"), ": --seed must be zero or more, not -4"));
}

TEST(CliParse, AConfigFilesByteOrderMarkIsSkipped) {
  testing_util::TempDir dir;
  std::ofstream(dir.file("bom.ini")) << "\xEF\xBB\xBFseed = 11\nsteps = 5\n";
  const Parsed p = parse({"--config", dir.file("bom.ini")});
  EXPECT_EQ(p.seed, 11u);
  EXPECT_EQ(p.steps, 5);
}

// Shard patterns: a file named with a pattern's characters is taken as named, and a file
// given twice, however spelled (./, a pattern that matches it again), is read once.
TEST(CliParse, ShardPathsNameEachFileOnce) {
  testing_util::TempDir dir;
  for (const char* name : {"a.h5", "shard [2].h5", "shard 2.h5"}) std::ofstream(dir.file(name)) << "x";
  using V = std::vector<std::string>;
  EXPECT_EQ(cli::expand_paths({dir.file("shard [2].h5")}, "--data"), V{dir.file("shard [2].h5")});
  EXPECT_EQ(cli::expand_paths({dir.file("a.h5"), dir.path + "/./a.h5", dir.file("*.h5")}, "--data"),
            (V{dir.file("a.h5"), dir.file("shard 2.h5"), dir.file("shard [2].h5")}));
  try {
    cli::expand_paths({dir.file("b*.h5")}, "--data");
    ADD_FAILURE() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("matches no file"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace par
