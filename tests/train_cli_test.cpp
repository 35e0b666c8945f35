// `par train`, `par eval` and `par export` end to end through the binary: learning the
// copy task, bit-identical resume, the exported format, and bad input; and
// --position-encoding: the mirror task, which rotary positions alone cannot learn, learned
// with absolute positions (configs/mirror.ini) and generated greedily with cached
// decoding; the encoding recorded in checkpoints and exports, and a checkpoint of another
// encoding refused like another model.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <regex>
#include <sstream>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/model_file.h"
#include "core/model.h"
#include "data/dataset.h"
#include "data/h5.h"
#include "data/prep.h"
#include "data/shard.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/par_cli.h"

namespace par {
namespace {

using testing_util::ParRun;
using testing_util::run_par;
using testing_util::slurp;
using testing_util::TempDir;

const std::string kConfigs = testing_util::configs_dir();
std::string q(const std::string& s) { return testing_util::quote(s); }

// Copy-task (or, reversed, mirror-task) shards of E-token examples in dir/name.
std::string make_copy_data(const TempDir& dir, const std::string& name, int64_t length,
                           int64_t examples, bool reverse = false) {
  MirrorPrepOptions o;
  o.length = length;
  o.examples = examples;
  o.val_examples = examples / 10;
  o.seed = 7;
  o.reverse = reverse;
  o.common.out_dir = dir.file(name);
  std::ostringstream log;
  prep_mirror(o, log);
  return o.common.out_dir;
}

std::vector<std::string> logged_losses(const std::string& metrics) {
  return testing_util::logged_losses(metrics);
}

TEST(TrainCli, ResumeContinuesBitIdentically) {
  TempDir dir;
  const std::string data = make_copy_data(dir, "data", 65, 300);
  // tiny.ini has residual and cross-attend dropout on; two micro-batches per step.
  const std::string common = cat("train --config ", q(kConfigs + "tiny.ini"), " --data ",
                                 q(data + "/train-*.h5"), " --log-every 1 --threads 2 --seed 3",
                                 " --accum-steps 2");
  ParRun r = run_par(dir, cat(common, " --out ", q(dir.file("whole")), " --steps 8"));
  ASSERT_EQ(r.rc, 0) << r.err;
  // Each step's line says how long the rest will take; the last one has nothing left.
  EXPECT_TRUE(std::regex_search(r.err, std::regex(R"(step 7/8 \| .* ms/step \| ETA [0-9]+ s\n)")))
      << r.err;
  EXPECT_TRUE(std::regex_search(r.err, std::regex(R"(step 8/8 \| .* ms/step\n)"))) << r.err;
  r = run_par(dir, cat(common, " --out ", q(dir.file("split")), " --steps 4"));
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_par(dir, cat(common, " --out ", q(dir.file("split")), " --steps 8 --resume auto"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("resumed from"), std::string::npos) << r.err;

  const auto whole = logged_losses(dir.file("whole/metrics.jsonl"));
  const auto split = logged_losses(dir.file("split/metrics.jsonl"));
  ASSERT_EQ(whole.size(), 8u);
  EXPECT_EQ(split, whole) << "losses after the resume differ from the uninterrupted run";
  const ModelFile a = read_model_file(dir.file("whole"), true);
  const ModelFile b = read_model_file(dir.file("split"), true);
  EXPECT_EQ(a.position.step, 8);
  EXPECT_EQ(b.position.step, 8);
  EXPECT_EQ(a.position.next_batch, b.position.next_batch);
  EXPECT_TRUE(a.params == b.params) << "final parameters differ";
  EXPECT_TRUE(a.adam_m == b.adam_m && a.adam_v == b.adam_v) << "optimizer state differs";
  // And training really moved the parameters.
  const ModelFile first = read_model_file(dir.file("split"), false);
  EXPECT_NE(first.params, std::vector<float>(first.params.size(), 0.0f));
}

using testing_util::json_ids;

// The copy task (configs/copy-tiny.ini): the loss on the copied half of held-out examples
// falls far below the 8 bits (ln 256 nats) of a random byte.
TEST(TrainCli, LearnsTheCopyTask) {
  TempDir dir;
  const std::string data = make_copy_data(dir, "data", 64, 2000);
  const ParRun r = run_par(dir, cat("train --config ", q(kConfigs + "copy-tiny.ini"), " --data ",
                                    q(data + "/train-*.h5"), " --out ", q(dir.file("run")),
                                    " --threads 2 --seed 1"));
  ASSERT_EQ(r.rc, 0) << r.err;
  const ModelFile f = read_model_file(dir.file("run"), false);
  const ModelConfig& c = f.model;
  cpu::CpuOps<float> ops;
  const Dataset val({data + "/val-00000.h5"}, c.context_length, c.vocab_size);
  PerceiverAR<float> model(c, ops, 1);
  ops.upload(model.params(), f.params.data(), f.params.size() * sizeof(float));
  // Windows start every N = 64 tokens: exactly at example starts. Latent i predicts
  // position 33 + i; positions 31..61 repeat positions 0..30.
  const int64_t N = c.context_length, M = c.num_latents;
  double ce_copy = 0;
  int64_t n_copy = 0;
  std::vector<int32_t> w(size_t(N + 1));
  for (int64_t k = 0; k < val.num_windows(); ++k) {
    val.read_window(k, 0, N + 1, w.data());
    model.forward(w.data(), 1, ForwardContext{});
    const auto ce = model.ce();
    for (int64_t i = 0; i < M; ++i) {
      const int64_t target_pos = N - M + i + 1;
      if (target_pos >= 31 && target_pos <= 61) {
        ce_copy += ce[size_t(i)];
        ++n_copy;
      }
    }
  }
  ASSERT_GT(n_copy, 1000);
  const double mean = ce_copy / double(n_copy);
  RecordProperty("copied_half_loss_nats", std::to_string(mean));
  EXPECT_LT(mean, 1.0) << "loss on the copied half: " << mean << " nats (a random byte: "
                       << std::log(256.0) << ")";

  // Greedy generation with cached decoding: given an example's first 32 tokens (its random
  // half and the first copied one), the next 30 repeat tokens 1..30. A model that had not
  // learned the copy gets 1/256 of them.
  int64_t right = 0, total = 0;
  for (int ex = 0; ex < 5; ++ex) {
    const ParRun s = run_par(dir, cat("sample --checkpoint ", q(dir.file("run")), " --prompt-shard ",
                                      q(data + "/val-00000.h5"), " --prompt-begin ", ex * 64,
                                      " --prompt-length 32 --tokens 30 --temperature 0 --format json"));
    ASSERT_EQ(s.rc, 0) << s.err;
    const auto prompt = json_ids(s.out, "prompt"), gen = json_ids(s.out, "generated");
    ASSERT_EQ(prompt.size(), 32u) << s.out;
    ASSERT_EQ(gen.size(), 30u) << s.out;
    for (size_t i = 0; i < 30; ++i) right += gen[i] == prompt[i + 1];
    total += 30;
  }
  RecordProperty("greedy_copy_accuracy", cat(double(right) / double(total)));
  EXPECT_GE(double(right) / double(total), 0.9) << right << " of " << total << " copied";
}

TEST(TrainCli, EvalPrintsJsonAndExportWritesThePublicFormat) {
  TempDir dir;
  const std::string data = make_copy_data(dir, "data", 65, 100);
  ParRun r = run_par(dir, cat("train --config ", q(kConfigs + "tiny.ini"), " --data ",
                              q(data + "/train-*.h5"), " --out ", q(dir.file("run")),
                              " --steps 3"));
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_par(dir, cat("eval --checkpoint ", q(dir.file("run")), " --data ",
                       q(data + "/val-*.h5"), " --batch-size 3"));
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string last = r.out.substr(r.out.rfind('{'));
  // 10 examples of 65 tokens, one stream: every token after the first is scored.
  EXPECT_NE(last.find("\"tokens\": 649,"), std::string::npos) << last;
  EXPECT_TRUE(std::regex_search(last, std::regex("\"loss_nats\": [0-9.]+, \"bits_per_token\": [0-9.]+")))
      << last;

  const std::string exported = dir.file("model.h5");
  r = run_par(dir, cat("export --checkpoint ", q(dir.file("run")), " --out ",
                       q(exported)));
  ASSERT_EQ(r.rc, 0) << r.err;
  h5::Object file = h5::open_file(exported);
  EXPECT_EQ(h5::read_attribute<std::string>(file.id(), "format"), "par-model-1");
  EXPECT_EQ(h5::read_attribute<int64_t>(file.id(), "step"), 3);
  EXPECT_EQ(h5::read_attribute<int64_t>(file.id(), "d_model"), 32);
  EXPECT_EQ(h5::read_attribute<int64_t>(file.id(), "context_length"), 64);
  EXPECT_EQ(h5::read_attribute<double>(file.id(), "max_wavelength"), 64.0);
  const ModelFile ckpt = read_model_file(dir.file("run"), false);
  const ParamLayout layout(ckpt.model);
  EXPECT_EQ(h5::list_names(h5::open_group(file.id(), "params").id()).size(), layout.params().size());
  for (const ParamInfo& p : layout.params()) {
    ASSERT_EQ(h5::dataset_shape(file.id(), "params/" + p.name), p.shape) << p.name;
    EXPECT_TRUE(h5::has_checksums(file.id(), "params/" + p.name)) << p.name;
    const auto v = h5::read_dataset<float>(file.id(), "params/" + p.name);
    EXPECT_TRUE(std::equal(v.begin(), v.end(), ckpt.params.begin() + p.offset)) << p.name;
  }
  // Export refuses to overwrite.
  const std::string before = slurp(exported);
  EXPECT_USER_ERROR(run_par(dir, cat("export --checkpoint ", q(dir.file("run")),
                                     " --out ", q(exported))),
                    "exists");
  EXPECT_EQ(slurp(exported), before);
  // A directory, or a record of a run, is no file for the weights, even with --force.
  std::filesystem::create_directories(dir.file("outdir"));
  EXPECT_USER_ERROR(run_par(dir, cat("export --force --checkpoint ", q(dir.file("run")),
                                     " --out ", q(dir.file("outdir")))),
                    cat("--out ", dir.file("outdir"), " is a directory: give the path of the "
                        "file to write"));
  const std::string log = slurp(dir.file("run/train.log"));
  EXPECT_USER_ERROR(run_par(dir, cat("export --force --checkpoint ", q(dir.file("run")),
                                     " --out ", q(dir.file("run/train.log")))),
                    "is a record of the run in");
  EXPECT_EQ(slurp(dir.file("run/train.log")), log);
}

// --position-encoding.

// The value of "key": NUMBER in the last line of par eval's output.
double json_number(const std::string& out, const std::string& key) {
  std::smatch m;
  const std::string last = out.substr(out.rfind('{'));
  if (!std::regex_search(last, m, std::regex("\"" + key + "\": ([0-9.e+-]+)"))) return -1;
  return std::stod(m[1]);
}

// Examples of 512 tokens: 255 random bytes (document positions 1..255), the same reversed
// (256..510), 2 EOS.
TEST(TrainCli, LearnsTheMirrorTaskWithAbsolutePositions) {
  TempDir dir;
  const std::string data = make_copy_data(dir, "data", 512, 2000, true);
  ParRun r = run_par(dir, cat("train --config ", q(kConfigs + "mirror.ini"), " --data ",
                              q(data + "/train-*.h5"), " --val-data ", q(data + "/val-*.h5"),
                              " --out ", q(dir.file("run")), " --threads 2 --seed 1"));
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_par(dir, cat("eval --checkpoint ", q(dir.file("run")), " --data ",
                       q(data + "/val-*.h5"), " --batch-size 4 --score-positions 256:510",
                       " --max-tokens 4096"));
  ASSERT_EQ(r.rc, 0) << r.err;
  // 4096 scored targets, a block (256 targets) at a time: each example's first block scores
  // 2 mirrored bytes, its second 253; 16 examples score 4080, the 17th's blocks reach 4335.
  EXPECT_EQ(json_number(r.out, "tokens"), 16 * 255 + 2 + 253) << r.out;
  const double accuracy = json_number(r.out, "accuracy");
  RecordProperty("mirrored_half_accuracy", cat(accuracy));
  EXPECT_GE(accuracy, 0.9) << r.out;
  // Positions no document reaches: nothing scored is an error, not a loss of 0.
  EXPECT_USER_ERROR(run_par(dir, cat("eval --checkpoint ", q(dir.file("run")), " --data ",
                                     q(data + "/val-*.h5"), " --score-positions 600:700")),
                    "no target was scored: no target of the shards lies at document positions "
                    "600:700");

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

// Validation that scores nothing (positions past every document) warns and records no
// loss: a loss of 0 over no target read as perfect in the log and the plots.
TEST(TrainCli, ValidationThatScoresNothingRecordsNoLoss) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 40);
  const ParRun r = run_par(dir, cat("train --config ", q(kConfigs + "tiny.ini"), " --data ",
                                    q(data), " --val-data ", q(data), " --out ",
                                    q(dir.file("run")), " --threads 1 --steps 2 --eval-every 1",
                                    " --score-positions 1000:2000"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("validation at step 1: no target was scored (none lies at document "
                       "positions 1000:2000, --score-positions); nothing recorded"),
            std::string::npos)
      << r.err;
  const std::string metrics = slurp(dir.file("run/metrics.jsonl"));
  EXPECT_NE(metrics.find("\"loss\""), std::string::npos) << metrics;
  EXPECT_EQ(metrics.find("val_loss"), std::string::npos) << metrics;
}

// --max-tokens counts scored targets under --score-positions, PAD targets not among them:
// on copy examples whose uncopied bytes are PAD (--keep 4), --max-tokens 16 scored 4 and
// --max-tokens 1 nothing (an error then) while PAD targets counted.
TEST(TrainCli, EvalBudgetCountsScoredTargetsOnly) {
  TempDir dir;
  ASSERT_EQ(run_par(dir, cat("prep copy --out ", q(dir.file("d")), " --length 64 --half 32 ",
                             "--keep 4 --examples 40 --val-examples 20")).rc, 0);
  ASSERT_EQ(run_par(dir, cat("train --config ", q(kConfigs + "tiny.ini"), " --data ",
                             q(dir.file("d/train-*.h5")), " --out ", q(dir.file("run")),
                             " --steps 2 --threads 1")).rc, 0);
  const std::string eval = cat("eval --checkpoint ", q(dir.file("run")), " --data ",
                               q(dir.file("d/val-*.h5")), " --score-positions 1:4");
  ParRun r = run_par(dir, eval);
  ASSERT_EQ(r.rc, 0) << r.err;
  const double all = json_number(r.out, "tokens");
  EXPECT_GT(all, 64) << r.out;
  for (int budget : {1, 16, 64}) {
    r = run_par(dir, cat(eval, " --max-tokens ", budget));
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_GE(json_number(r.out, "tokens"), budget) << r.out;
    EXPECT_LT(json_number(r.out, "tokens"), all) << r.out;
  }
}

// Validation's options without --val-data were ignored without a word.
TEST(TrainCli, ValidationOptionsWithoutValidationDataWarn) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 30);
  const std::string base = cat("train --config ", q(kConfigs + "tiny.ini"), " --data ", q(data),
                               " --threads 1 --steps 1 --out ");
  ParRun r = run_par(dir, cat(base, q(dir.file("a")), " --eval-every 2 --score-positions 1:9"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("--eval-every, --score-positions given, but no --val-data: no "
                       "validation runs"),
            std::string::npos)
      << r.err;
  r = run_par(dir, cat(base, q(dir.file("b"))));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err.find("no validation runs"), std::string::npos) << r.err;
  // A config's validation settings are for its runs with validation data: not a mistake.
  r = run_par(dir, cat("train --config ", q(kConfigs + "copy-8k.ini"), " --data ", q(data),
                       " --threads 1 --steps 1 --context-length 64 --out ", q(dir.file("c"))));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err.find("no validation runs"), std::string::npos) << r.err;
}

// A run resumed over other data goes on, and its log says so; resumed over the same, not.
TEST(TrainCli, ResumingOverOtherDataWarns) {
  TempDir dir;
  const std::string data = make_copy_data(dir, "a", 65, 30);
  const std::string other = make_copy_data(dir, "b", 65, 40);
  const std::string base = cat("train --config ", q(kConfigs + "tiny.ini"),
                               " --threads 1 --resume auto --out ", q(dir.file("run")));
  ParRun r = run_par(dir, cat(base, " --data ", q(data + "/train-*.h5"), " --steps 1"));
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_par(dir, cat(base, " --data ", q(data + "/train-*.h5"), " --steps 2"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("resumed from"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("differs from that of the run"), std::string::npos) << r.err;
  r = run_par(dir, cat(base, " --data ", q(other + "/train-*.h5"), " --steps 3"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find(cat("--data ", other, "/train-*.h5 differs from that of the run that "
                           "wrote the checkpoint (", data, "/train-*.h5): training goes on")),
            std::string::npos)
      << r.err;
}

// Windows do not cross shards: shards cut small against the context lose their tails, and
// the log says how much; shards long enough for their windows say nothing.
TEST(TrainCli, ShardsThatLoseMuchOfTheirDataToWindowsWarn) {
  TempDir dir;
  const std::string base = cat("train --config ", q(kConfigs + "tiny.ini"),
                               " --threads 1 --steps 1 --data ");
  // 100-token examples, one per shard: one window of 65 tokens each, 35 tokens in none.
  ParRun r = run_par(dir, cat("prep copy --out ", q(dir.file("short")),
                              " --length 100 --examples 10 --shard-tokens 150"));
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_par(dir, cat(base, q(dir.file("short/train-*.h5")), " --out ", q(dir.file("a"))));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("350 of the data's 1000 tokens (35%) lie in no window and are never "
                       "read: windows of N+1 = 65 tokens do not cross shards, and 10 shard(s) "
                       "hold 10 windows"),
            std::string::npos)
      << r.err;
  r = run_par(dir, cat("prep copy --out ", q(dir.file("long")), " --length 100 --examples 10"));
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_par(dir, cat(base, q(dir.file("long/train-*.h5")), " --out ", q(dir.file("b"))));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err.find("never read"), std::string::npos) << r.err;
}

TEST(TrainCli, RecordedInCheckpointsAndExportsAndRefusedAsAnotherModel) {
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
  // Into a new --out, the refused start leaves no directory (it held only its lock file).
  EXPECT_USER_ERROR(run_par(dir, cat(base, " --out ", q(dir.file("new")), " --steps 4 --resume ",
                                     q(dir.file("abs")))),
                    "different model");
  EXPECT_FALSE(std::filesystem::exists(dir.file("new")));

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

class TrainBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = make_copy_data(dir_, "data", 65, 50);
    base_ = cat("train --config ", q(kConfigs + "tiny.ini"), " --steps 2 --out ",
                q(dir_.file("run")));
  }
  ParRun train(const std::string& data, const std::string& extra = "") {
    return run_par(dir_, cat(base_, " --data ", q(data), " ", extra));
  }
  // A shard of 200 tokens 5 that claims vocab_size 259 (no max_token) but holds `value` at
  // `position`: found only when that window is read.
  std::string shard_holding(const std::string& name, int32_t value, size_t position) {
    const std::string path = dir_.file(name);
    std::vector<int32_t> t(200, 5);
    t[position] = value;
    h5::Object f = h5::create_file(path);
    h5::write_attribute<std::string>(f.id(), "format", "par-tokens-1");
    h5::write_attribute<int64_t>(f.id(), "vocab_size", 259);
    h5::write_dataset<int32_t>(f.id(), "tokens", t.data(), {200});
    return path;
  }
  TempDir dir_;
  std::string data_, base_;
};

TEST_F(TrainBadInput, MissingShard) {
  EXPECT_USER_ERROR(train(dir_.file("nope.h5")), "nope.h5");
}

TEST_F(TrainBadInput, CorruptShard) {
  const std::string bad = dir_.file("corrupt.h5");
  std::ofstream(bad) << std::string(5000, 'x');
  EXPECT_USER_ERROR(train(bad), "corrupt.h5");
}

TEST_F(TrainBadInput, ShardWithoutTokens) {
  const std::string bad = dir_.file("notokens.h5");
  {
    h5::Object f = h5::create_file(bad);
    h5::write_attribute<std::string>(f.id(), "format", "par-tokens-1");
    h5::write_attribute<int64_t>(f.id(), "vocab_size", 259);
  }
  EXPECT_USER_ERROR(train(bad), "/tokens");
}

TEST_F(TrainBadInput, TokenOutsideTheVocabulary) {
  const std::string bad = shard_holding("badtoken.h5", 300, 150);
  const ParRun r = train(bad, "--batch-size 3");
  EXPECT_USER_ERROR(r, "badtoken.h5");
  EXPECT_NE(r.err.find("300"), std::string::npos) << r.err;
}

// Validation shards are read only when validation runs: one that fails then (here an id
// outside the vocabulary, in a shard without max_token) ends the run with its error, but
// the last step's checkpoint is already committed.
TEST_F(TrainBadInput, ValidationShardThatFailsAtTheEndKeepsTheLastCheckpoint) {
  const std::string bad = shard_holding("badval.h5", 300, 10);
  const ParRun r = train(data_ + "/train-*.h5", cat("--val-data ", q(bad)));
  EXPECT_USER_ERROR(r, "badval.h5");
  EXPECT_TRUE(std::filesystem::exists(dir_.file("run/checkpoints/step-00000002/manifest.txt")))
      << r.err;
}

// A diverged run is the user's setting, not par's bug: exit 2, naming the checkpoint of the
// last finite state to roll back to, and no checkpoint of the diverged one.
TEST(TrainCli, DivergedLossNamesTheLastCheckpoint) {
  TempDir dir;
  const std::string data = make_copy_data(dir, "data", 65, 50);
  const std::string base = cat("train --config ", q(kConfigs + "tiny.ini"), " --threads 1 --data ",
                               q(data + "/train-*.h5"), " --out ", q(dir.file("run")));
  ASSERT_EQ(run_par(dir, base + " --steps 2").rc, 0);
  // A checkpoint every step: a save is in flight when the loss turns, of the very weights
  // it came from.
  const ParRun r = run_par(dir, base + " --clip-norm 0 --warmup-steps 0 --checkpoint-every 1 "
                                       "--keep-checkpoints 1 --steps 40 --lr 1e30 --resume auto");
  EXPECT_USER_ERROR(r, "is not finite at step ");
  EXPECT_NE(r.err.find(": training diverged; lower --lr (1e+30 at this step)"), std::string::npos)
      << r.err;
  const std::string last = latest_checkpoint(dir.file("run"));
  ASSERT_FALSE(last.empty());
  EXPECT_NE(r.err.find(cat("The last checkpoint, ", last, ", is intact: roll back to it with "
                           "--resume ", last)),
            std::string::npos)
      << r.err;
  // Nothing of the diverged state was kept: the named checkpoint resumes, at a sane rate,
  // with finite losses.
  const std::string diverged_at = r.err.substr(r.err.find("is not finite at step ") + 22);
  const int64_t bad_step = std::stoll(diverged_at);
  EXPECT_EQ(last, checkpoint_dir(dir.file("run"), bad_step - 2)) << r.err;
  EXPECT_FALSE(std::filesystem::exists(checkpoint_dir(dir.file("run"), bad_step - 1)));
  const ParRun again = run_par(dir, cat(base, " --steps ", bad_step + 2, " --resume ", q(last)));
  EXPECT_EQ(again.rc, 0) << again.err;
  for (const std::string& loss : logged_losses(dir.file("run/metrics.jsonl")))
    EXPECT_TRUE(std::isfinite(std::stod(loss))) << loss;
}

TEST_F(TrainBadInput, ShardShorterThanAWindow) {
  const std::string bad = dir_.file("short.h5");
  std::vector<int32_t> t(30, 5);
  write_shard(bad, t.data(), 30, 259);
  EXPECT_USER_ERROR(train(bad), "short.h5");
}

TEST_F(TrainBadInput, WidthNotDivisibleByHeads) {
  EXPECT_USER_ERROR(train(data_ + "/train-00000.h5", "--d-model 30 --cross-heads 4"),
                    "--d-model 30 does not divide by --cross-heads 4");
}

TEST_F(TrainBadInput, MoreLatentsThanInputs) {
  EXPECT_USER_ERROR(train(data_ + "/train-00000.h5", "--num-latents 100"), "--num-latents 100");
}

TEST_F(TrainBadInput, UnknownOption) {
  EXPECT_USER_ERROR(train(data_ + "/train-00000.h5", "--learning-rate 3"), "--learning-rate");
  const std::string cfg = dir_.file("bad.ini");
  std::ofstream(cfg) << "d-model = 32\nwidth = 7\n";
  EXPECT_USER_ERROR(run_par(dir_, cat("train --config ", q(cfg), " --data ",
                                      q(data_ + "/train-00000.h5"), " --out ", q(dir_.file("r")))),
                    "width");
}

TEST_F(TrainBadInput, CheckpointOfAnotherModelIsRefusedAndKept) {
  ASSERT_EQ(train(data_ + "/train-00000.h5").rc, 0);
  const std::string run = dir_.file("run/checkpoints");
  const std::string before = testing_util::tree(run);
  ASSERT_NE(before.find("manifest.txt"), std::string::npos) << before;
  EXPECT_USER_ERROR(train(data_ + "/train-00000.h5", "--d-model 64 --resume auto"),
                    "different model");
  // Without --resume, an existing run is not overwritten either.
  EXPECT_USER_ERROR(train(data_ + "/train-00000.h5"), "--resume auto");
  EXPECT_EQ(testing_util::tree(run), before) << "the checkpoint was modified";
  // An exported model is not a checkpoint to resume from.
  ASSERT_EQ(run_par(dir_, cat("export --checkpoint ", q(dir_.file("run")), " --out ",
                              q(dir_.file("model.h5")))).rc, 0);
  EXPECT_USER_ERROR(run_par(dir_, cat("train --config ", q(kConfigs + "tiny.ini"), " --data ",
                                      q(data_ + "/train-00000.h5"), " --out ",
                                      q(dir_.file("other")), " --resume ",
                                      q(dir_.file("model.h5")))),
                    "model.h5");
  // A file that is not HDF5 is a clear error too.
  const std::string broken = dir_.file("broken.h5");
  std::ofstream(broken) << "not a model";
  EXPECT_USER_ERROR(run_par(dir_, cat("eval --checkpoint ", q(broken), " --data ",
                                      q(data_ + "/val-*.h5"))),
                    "broken.h5");
}

}  // namespace
}  // namespace par
