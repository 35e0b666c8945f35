// --position-encoding through the binary: the mirror task, which rotary positions alone
// cannot learn, is learned with absolute positions (configs/mirror.ini) and generated
// greedily with cached decoding; the encoding is recorded in checkpoints and exports, and
// a checkpoint of another encoding is refused like another model.
#include <gtest/gtest.h>

#include <regex>
#include <sstream>

#include "checkpoint/model_file.h"
#include "data/h5.h"
#include "data/prep.h"
#include "tests/par_cli.h"

namespace par {
namespace {

using testing_util::ParRun;
using testing_util::run_par;
using testing_util::slurp;
using testing_util::TempDir;

const std::string kConfigs = testing_util::configs_dir();
std::string q(const std::string& s) { return testing_util::quote(s); }

std::string mirror_data(const TempDir& dir, int64_t length, int64_t examples) {
  MirrorPrepOptions o;
  o.length = length;
  o.examples = examples;
  o.val_examples = 8;
  o.seed = 5;
  o.common.out_dir = dir.file("data");
  std::ostringstream log;
  prep_mirror(o, log);
  return o.common.out_dir;
}

// The value of "key": NUMBER in the last line of par eval's output.
double json_number(const std::string& out, const std::string& key) {
  std::smatch m;
  const std::string last = out.substr(out.rfind('{'));
  if (!std::regex_search(last, m, std::regex("\"" + key + "\": ([0-9.e+-]+)"))) return -1;
  return std::stod(m[1]);
}

std::vector<int32_t> json_ids(const std::string& out, const std::string& key) {
  std::smatch m;
  std::vector<int32_t> ids;
  if (!std::regex_search(out, m, std::regex("\"" + key + "\": \\[([0-9, ]*)\\]"))) return ids;
  std::istringstream in(m[1].str());
  for (std::string t; std::getline(in, t, ',');) ids.push_back(std::stoi(t));
  return ids;
}

// Examples of 512 tokens: 255 random bytes (document positions 1..255), the same reversed
// (256..510), 2 EOS.
TEST(PositionEncodingCli, LearnsTheMirrorTaskWithAbsolutePositions) {
  TempDir dir;
  const std::string data = mirror_data(dir, 512, 2000);
  ParRun r = run_par(dir, cat("train --config ", q(kConfigs + "mirror.ini"), " --data ",
                              q(data + "/train-*.h5"), " --val-data ", q(data + "/val-*.h5"),
                              " --out ", q(dir.file("run")), " --threads 2 --seed 1"));
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_par(dir, cat("eval --checkpoint ", q(dir.file("run")), " --data ",
                       q(data + "/val-*.h5"), " --batch-size 4 --score-positions 256:510"));
  ASSERT_EQ(r.rc, 0) << r.err;
  // 8 examples, 255 mirrored bytes each.
  EXPECT_EQ(json_number(r.out, "tokens"), 8 * 255) << r.out;
  const double accuracy = json_number(r.out, "accuracy");
  RecordProperty("mirrored_half_accuracy", cat(accuracy));
  EXPECT_GE(accuracy, 0.9) << r.out;

  // Greedy generation with cached decoding: given the random half and the first mirrored
  // byte, the next 254 bytes mirror the rest. A model without positions gets 1/256.
  int64_t right = 0, total = 0;
  for (int ex = 0; ex < 3; ++ex) {
    r = run_par(dir, cat("sample --checkpoint ", q(dir.file("run")), " --prompt-shard ",
                         q(data + "/val-00000.h5"), " --prompt-begin ", ex * 512,
                         " --prompt-length 256 --tokens 254 --temperature 0 --format json"));
    ASSERT_EQ(r.rc, 0) << r.err;
    const auto prompt = json_ids(r.out, "prompt"), gen = json_ids(r.out, "generated");
    ASSERT_EQ(prompt.size(), 256u);
    ASSERT_EQ(gen.size(), 254u);
    for (size_t i = 0; i < gen.size(); ++i) right += gen[i] == prompt[253 - i];
    total += 254;
  }
  RecordProperty("greedy_mirror_accuracy", cat(double(right) / double(total)));
  EXPECT_GE(double(right) / double(total), 0.9) << right << " of " << total;
}

TEST(PositionEncodingCli, RecordedInCheckpointsAndExportsAndRefusedAsAnotherModel) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 40);
  const std::string base = cat("train --config ", q(kConfigs + "tiny.ini"), " --data ", q(data),
                               " --threads 1");
  ParRun r = run_par(dir, cat(base, " --steps 2 --out ", q(dir.file("abs")),
                              " --position-encoding absolute"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("pos=absolute"), std::string::npos) << r.err;
  const std::string manifest = slurp(dir.file("abs/checkpoints/step-00000002/manifest.txt"));
  EXPECT_NE(manifest.find(" position_encoding=absolute\n"), std::string::npos) << manifest;
  EXPECT_EQ(read_model_file(dir.file("abs"), false).model.position_encoding,
            PositionEncoding::kAbsolute);

  // Resuming with other positions is another model: refused, the checkpoint untouched.
  const std::string before = testing_util::tree(dir.file("abs/checkpoints"));
  EXPECT_USER_ERROR(run_par(dir, cat(base, " --out ", q(dir.file("abs")),
                                     " --steps 4 --resume auto --position-encoding both")),
                    "different model");
  EXPECT_USER_ERROR(run_par(dir, cat(base, " --out ", q(dir.file("abs")), " --steps 4 --resume auto")),
                    "pos=absolute");
  EXPECT_EQ(testing_util::tree(dir.file("abs/checkpoints")), before);

  // Exports: the attribute where positions are not rotary alone; rotary models' files stay
  // as before (no attribute), and both read back.
  ASSERT_EQ(run_par(dir, cat("export --checkpoint ", q(dir.file("abs")), " --out ",
                             q(dir.file("abs.h5")))).rc, 0);
  ASSERT_EQ(run_par(dir, cat(base, " --steps 2 --out ", q(dir.file("rot")))).rc, 0);
  ASSERT_EQ(run_par(dir, cat("export --checkpoint ", q(dir.file("rot")), " --out ",
                             q(dir.file("rot.h5")))).rc, 0);
  {
    h5::Object a = h5::open_file(dir.file("abs.h5")), b = h5::open_file(dir.file("rot.h5"));
    EXPECT_EQ(h5::read_attribute<std::string>(a.id(), "position_encoding"), "absolute");
    EXPECT_FALSE(h5::has_attribute(b.id(), "position_encoding"));
    EXPECT_EQ(slurp(dir.file("rot/checkpoints/step-00000002/manifest.txt")).find("position_encoding"),
              std::string::npos);
  }
  EXPECT_EQ(read_model_file(dir.file("abs.h5"), false).model.position_encoding,
            PositionEncoding::kAbsolute);
  EXPECT_EQ(read_model_file(dir.file("rot.h5"), false).model.position_encoding,
            PositionEncoding::kRotary);
  // The exported absolute model evaluates and generates.
  r = run_par(dir, cat("eval --checkpoint ", q(dir.file("abs.h5")), " --data ",
                       q(dir.file("data/val-*.h5"))));
  EXPECT_EQ(r.rc, 0) << r.err;
  r = run_par(dir, cat("sample --checkpoint ", q(dir.file("abs.h5")), " --prompt hello --tokens 80",
                       " --format ids"));
  EXPECT_EQ(r.rc, 0) << r.err;

  EXPECT_USER_ERROR(run_par(dir, cat(base, " --out ", q(dir.file("bad")),
                                     " --position-encoding sinusoidal")),
                    "--position-encoding is 'sinusoidal': it must be rotary, absolute or both");
  EXPECT_USER_ERROR(run_par(dir, cat(base, " --out ", q(dir.file("bad")),
                                     " --position-encoding both --d-model 33 --cross-heads 3 --self-heads 3")),
                    "--d-model 33 is odd");
}

}  // namespace
}  // namespace par
