// Bad input that used to pass silently: each gets a clear refusal (exit 2 and a message
// naming the option) or a documented meaning, and nothing is written.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "data/h5.h"
#include "tests/par_cli.h"

namespace par {
namespace {

namespace fs = std::filesystem;
using namespace testing_util;

// A directory given as --config read as an empty file: the default model trained, exit 0.
TEST(ReliabilityInputs, ConfigThatIsADirectory) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  for (const std::string& cmd : {cat("train --data ", quote(data), " --out ", quote(dir.file("run")),
                                     " --steps 1"),
                                 std::string("bench --steps 1")}) {
    SCOPED_TRACE(cmd);
    const ParRun r = run_par(dir, cat(cmd, " --config ", quote(dir.path)));
    EXPECT_USER_ERROR(r, cat("config file ", dir.path, " (--config) is a directory"));
  }
  EXPECT_FALSE(fs::exists(dir.file("run")));
}

// `config = OTHER.ini` inside a config file was stored and never read, without a word: the
// other file's options silently did not apply. It is said now, and a run's config.ini
// (which held such a line, beside the options it named) no longer has one, and is taken
// back as --config.
TEST(ReliabilityInputs, ConfigInsideAConfigFile) {
  TempDir dir;
  std::ofstream(dir.file("outer.ini")) << "config = " << configs_dir() << "tiny.ini\nsteps = 3\n";
  const ParRun dry = run_par(dir, "train --dry-run --config " + quote(dir.file("outer.ini")));
  EXPECT_EQ(dry.rc, 0) << dry.err;
  EXPECT_NE(dry.err.find("tiny.ini' is not read: a config file does not include others"),
            std::string::npos) << dry.err;
  EXPECT_NE(dry.out.find("d=256"), std::string::npos) << "the defaults, not tiny.ini's model\n"
                                                     << dry.out;
  const std::string data = copy_task_data(dir, 65, 30);
  ASSERT_EQ(run_par(dir, tiny_train_args(data, dir.file("run"), 1)).rc, 0);
  const std::string resolved = slurp(dir.file("run/config.ini"));
  EXPECT_EQ(resolved.find("\nconfig ="), std::string::npos) << resolved;
  const ParRun again = run_par(dir, "train --dry-run --config " + quote(dir.file("run/config.ini")));
  EXPECT_EQ(again.rc, 0) << again.err;
  EXPECT_EQ(again.err.find("warning"), std::string::npos) << again.err;
  EXPECT_NE(again.out.find("d=32"), std::string::npos) << again.out;
}

// Numbers near the int64 limit (a sanitized build's findings): each a clear refusal where
// products of options wrapped around (prep wrote past its buffer, sample read a slice
// outside its shard, eval allocated by an unchecked batch) or a run that does what it says.
TEST(ReliabilityInputs, HugeNumbersDoNotWrapAround) {
  TempDir dir;
  const std::string big = "4611686018427387904", max = "9223372036854775807";
  EXPECT_USER_ERROR(run_par(dir, cat("prep copy --out ", quote(dir.file("x")),
                                     " --length 10 --examples 1 --half ", big)),
                    "--half must be between 1 and --length / 2 = 5");
  EXPECT_USER_ERROR(run_par(dir, cat("prep copy --out ", quote(dir.file("x")),
                                     " --length 4 --examples 3 --val-examples 1125899906842624")),
                    "--val-examples × --length is too large (1125899906842624 × 4)");
  const std::string data = copy_task_data(dir, 65, 30);
  ASSERT_EQ(run_par(dir, tiny_train_args(data, dir.file("run"), 1)).rc, 0);
  const std::string eval = cat("eval --checkpoint ", quote(dir.file("run")), " --data ",
                               quote(dir.file("data/val-*.h5")));
  const ParRun huge_batch = run_par(dir, eval + " --batch-size " + big);
  EXPECT_USER_ERROR(huge_batch,
                    "not enough memory: the model and the activations of --batch-size " + big);
  // The plan is eval's: the kernels' scratch counted (where a machine could size it), no
  // optimizer.
  const ParRun large_batch = run_par(dir, eval + " --batch-size 1073741824");
  EXPECT_USER_ERROR(large_batch, "not enough memory: the model and the activations of --batch-size ");
  EXPECT_NE(large_batch.err.find(", kernel scratch "), std::string::npos) << large_batch.err;
  EXPECT_EQ(large_batch.err.find("Adam"), std::string::npos) << large_batch.err;
  EXPECT_EQ(huge_batch.err.find("Adam"), std::string::npos) << huge_batch.err;
  auto tokens_of = [](const std::string& out) {  // of the JSON line: every target scored
    const size_t at = out.find("\"tokens\": ");
    return at == std::string::npos ? std::string("none") : out.substr(at, out.find(',', at) - at);
  };
  const ParRun all = run_par(dir, eval + " --max-tokens " + max);
  ASSERT_EQ(all.rc, 0) << all.err;
  EXPECT_EQ(tokens_of(all.out), tokens_of(run_par(dir, eval).out));
  const std::string sample = cat("sample --checkpoint ", quote(dir.file("run")), " --prompt-shard ",
                                 quote(dir.file("data/val-00000.h5")));
  EXPECT_USER_ERROR(run_par(dir, sample + " --prompt-length 2 --prompt-count " + big),
                    " is outside ");
  EXPECT_USER_ERROR(run_par(dir, sample + " --prompt-begin " + max + " --prompt-length " + big),
                    " is outside ");
  EXPECT_USER_ERROR(run_par(dir, cat("sample --checkpoint ", quote(dir.file("run")),
                                     " --num-samples 65537 --tokens 1")),
                    "--num-samples 65537 is more than one batch decodes");
  for (const std::string n : {"0", "-5", "-3037000500", "65537"})
    EXPECT_USER_ERROR(run_par(dir, "bench --config " + quote(configs_dir() + "tiny.ini") +
                                       " --steps 1 --gemm-size " + n),
                      "--gemm-size must be between 1 and 65536");
}

// Numbers that meant something else, or ran on to a failure: refused with the option named.
TEST(ReliabilityInputs, OptionValuesThatWereAcceptedSilently) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  const std::string train = tiny_train_args(data, dir.file("run"), 2);
  EXPECT_USER_ERROR(run_par(dir, train + " --clip-norm -1"), "--clip-norm must be >= 0");
  EXPECT_USER_ERROR(run_par(dir, train + " --lr inf"), "--lr must be a finite number");
  EXPECT_USER_ERROR(run_par(dir, train + " --weight-decay nan"), "--weight-decay must be a finite number");
  EXPECT_USER_ERROR(run_par(dir, train + " --max-minutes inf"), "--max-minutes must be a finite number");
  EXPECT_USER_ERROR(run_par(dir, tiny_train_args(data, dir.file("run"), 0)),
                    "--steps must be at least 1");
  EXPECT_FALSE(fs::exists(dir.file("run")));
  ASSERT_EQ(run_par(dir, train).rc, 0);
  EXPECT_USER_ERROR(run_par(dir, cat("eval --checkpoint ", quote(dir.file("run")), " --data ",
                                     quote(dir.file("data/val-*.h5")), " --threads -1")),
                    "--threads must be >= 0");
  const std::string sample = cat("sample --checkpoint ", quote(dir.file("run")));
  EXPECT_USER_ERROR(run_par(dir, sample + " --threads -1"), "--threads must be >= 0");
  EXPECT_USER_ERROR(run_par(dir, sample + " --temperature inf"),
                    "--temperature must be a finite number >= 0 (0: greedy), not inf");
  EXPECT_USER_ERROR(run_par(dir, sample + " --seed 18446744073709551615 --num-samples 2"),
                    "passes 2^64 - 1");
  EXPECT_EQ(run_par(dir, sample + " --seed 18446744073709551614 --num-samples 2 --tokens 2").rc, 0);
  // Spaces around --score-positions' numbers, on either side.
  const std::string eval = cat("eval --checkpoint ", quote(dir.file("run")), " --data ",
                               quote(dir.file("data/val-*.h5")), " --score-positions ");
  EXPECT_EQ(run_par(dir, eval + "' 5:9 '").rc, 0);
  EXPECT_EQ(run_par(dir, eval + "'5 : 9'").rc, 0);
  EXPECT_USER_ERROR(run_par(dir, eval + "'5:9x'"), "'5:9x' is not FIRST:LAST");
  EXPECT_USER_ERROR(run_par(dir, eval + "'1 0:20'"), "'1 0:20' is not FIRST:LAST");
  EXPECT_USER_ERROR(run_par(dir, sample + " --prompt-file " + quote(dir.path)),
                    "is not a regular file");
  EXPECT_USER_ERROR(run_par(dir, sample + " --tokens 100000000000000"),
                    "is more than one run generates (at most 100000000");
  EXPECT_USER_ERROR(run_par(dir, "prep shuffle --out x"), "use bytes, tokens, mirror or copy");
}

// A value in the INI file that the command line overrides was never read (`steps = fifty`
// trained 3 steps); every value of the file is read now.
TEST(ReliabilityInputs, OverriddenIniValuesAreStillRead) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  const std::string ini = dir.file("run.ini");
  std::ofstream(ini) << "d-model = 32\nsteps = fifty\n";
  EXPECT_USER_ERROR(run_par(dir, cat("train --config ", quote(ini), " --steps 3 --data ",
                                     quote(data), " --out ", quote(dir.file("run")))),
                    "config file " + ini + ": the argument ('fifty') for option 'steps' is invalid");
}

// More threads than the address-space limit (ulimit -v) leaves room for hung inside
// OpenBLAS, retrying its allocation forever; now refused at once, with the number that fits.
TEST(ReliabilityInputs, ThreadsBeyondTheAddressSpaceLimit) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  const std::string run = cat("ulimit -v 8000000; exec timeout -s KILL 60 '", PAR_BINARY,
                              "' train --config ", quote(configs_dir() + "tiny.ini"), " --data ",
                              quote(data), " --out ", quote(dir.file("run")), " --steps 2");
  const ParRun r = run_shell(dir, run + " --threads 64");
  EXPECT_USER_ERROR(r, "--threads 64: every thread takes");
  EXPECT_NE(r.err.find("ulimit -v"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.file("run")));
  EXPECT_EQ(run_shell(dir, run + " --threads 2").rc, 0);
}

// `par prep` records the largest id (max_token); training checks it when it opens a shard,
// so a shard whose ids leave its vocabulary is refused before anything is written (it was
// found only when its window was read, in the middle of training).
TEST(ReliabilityInputs, IdsOutsideTheVocabularyAreFoundAtOpen) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  const std::string shard = dir.file("data/train-00000.h5");
  {
    h5::Object f = h5::open_file(shard);
    const auto tokens = h5::read_dataset<int32_t>(f.id(), "tokens");
    EXPECT_EQ(h5::read_attribute<int64_t>(f.id(), "max_token"),
              *std::max_element(tokens.begin(), tokens.end()));
  }
  const std::string bad = dir.file("bad.h5");
  {
    std::vector<int32_t> t(2000, 5);
    t[1900] = 300;  // in the last window but one, read late in training
    h5::Object f = h5::create_file(bad);
    h5::write_attribute<std::string>(f.id(), "format", "par-tokens-1");
    h5::write_attribute<int64_t>(f.id(), "vocab_size", 259);
    h5::write_attribute<int64_t>(f.id(), "max_token", 300);
    h5::write_dataset<int32_t>(f.id(), "tokens", t.data(), {2000});
  }
  const ParRun r = run_par(dir, tiny_train_args(bad, dir.file("run"), 100) + " --batch-size 1");
  EXPECT_USER_ERROR(r, cat("shard ", bad, " holds ids up to 300 (its max_token attribute)"));
  EXPECT_FALSE(fs::exists(dir.file("run"))) << "training started before the shard was checked";
}

// A shard's own vocab_size bounds its ids for every reader: training, evaluation and
// sample's prompts (eval and sample read them against the model's, larger, vocabulary).
TEST(ReliabilityInputs, TheShardsOwnVocabularyBoundsItsIdsEverywhere) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  ASSERT_EQ(run_par(dir, tiny_train_args(data, dir.file("run"), 1)).rc, 0);
  const std::string bad = dir.file("small-vocab.h5");
  {
    std::vector<int32_t> t(200, 5);
    t[20] = t[84] = t[148] = 205;  // one in each window; no max_token: found when read
    h5::Object f = h5::create_file(bad);
    h5::write_attribute<std::string>(f.id(), "format", "par-tokens-1");
    h5::write_attribute<int64_t>(f.id(), "vocab_size", 200);
    h5::write_dataset<int32_t>(f.id(), "tokens", t.data(), {200});
  }
  const std::string outside = "is 205, outside the vocabulary [0, 200)";
  EXPECT_USER_ERROR(run_par(dir, tiny_train_args(bad, dir.file("other"), 2) + " --batch-size 1"),
                    outside);
  EXPECT_USER_ERROR(run_par(dir, cat("eval --checkpoint ", quote(dir.file("run")), " --data ",
                                     quote(bad))),
                    outside);
  EXPECT_USER_ERROR(run_par(dir, cat("sample --checkpoint ", quote(dir.file("run")),
                                     " --prompt-shard ", quote(bad),
                                     " --prompt-begin 0 --prompt-length 40 --tokens 1")),
                    outside);
}

// The error that ends a run is the last line of its train.log too (it was only on stderr).
TEST(ReliabilityInputs, TrainLogRecordsTheFatalError) {
  TempDir dir;
  const std::string bad = dir.file("bad.h5");
  {
    std::vector<int32_t> t(2000, 5);
    t[1900] = 300;  // no max_token attribute: found when its window is read
    h5::Object f = h5::create_file(bad);
    h5::write_attribute<std::string>(f.id(), "format", "par-tokens-1");
    h5::write_attribute<int64_t>(f.id(), "vocab_size", 259);
    h5::write_dataset<int32_t>(f.id(), "tokens", t.data(), {2000});
  }
  const ParRun r = run_par(dir, tiny_train_args(bad, dir.file("run"), 1000) + " --batch-size 1");
  EXPECT_USER_ERROR(r, "is 300, outside the vocabulary");
  const std::string log = slurp(dir.file("run/train.log"));
  const std::string last = log.substr(log.rfind('\n', log.size() - 2) + 1);
  EXPECT_EQ(last.rfind("par train: error: ", 0), 0u) << last;
  EXPECT_NE(last.find("is 300, outside the vocabulary"), std::string::npos) << last;
}

}  // namespace
}  // namespace par
