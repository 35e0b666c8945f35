// Block evaluation (train/evaluate.h) against spec/MODEL.md section 11 computed here target
// by target: each target t[x] (x >= 1, not PAD) is predicted in block b = (x-1) / M, whose
// window holds t[bM - (N-M) .. bM + M] with PAD where the stream has none, by latent
// x - 1 - bM; a forward pass per block, batch 1, and the cross-entropy taken from the
// logits. Streams of every kind: many blocks, shorter than a window (which training cannot
// use but evaluation scores), one token (nothing to score), PAD inside.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/constants.h"
#include "core/model.h"
#include "data/shard.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/decoder_model.h"
#include "tests/par_cli.h"
#include "tests/temp_dir.h"
#include "train/evaluate.h"

namespace par {
namespace {

struct Totals {
  double ce = 0, correct = 0;
  int64_t targets = 0;
};

// Section 11 for one stream, with a model of batch 1.
void score_stream(PerceiverAR<double>& model, const ModelConfig& c, const std::vector<int32_t>& t,
                  Totals& sum) {
  const int64_t N = c.context_length, M = c.num_latents, V = c.vocab_size;
  const int64_t S = int64_t(t.size());
  for (int64_t x = 1; x < S; ++x) {
    if (t[size_t(x)] == kPadToken) continue;
    const int64_t b = (x - 1) / M;
    std::vector<int32_t> w(size_t(N + 1), kPadToken);
    for (int64_t j = 0; j <= N; ++j) {
      const int64_t i = b * M - (N - M) + j;
      if (i >= 0 && i < S) w[size_t(j)] = t[size_t(i)];
    }
    model.forward(w.data(), 1, {});
    const std::vector<double> logits = model.logits();
    const int64_t latent = x - 1 - b * M;
    const double* z = logits.data() + latent * V;
    const double top = *std::max_element(z, z + V);
    double sum_exp = 0;
    for (int64_t v = 0; v < V; ++v) sum_exp += std::exp(z[v] - top);
    sum.ce += top + std::log(sum_exp) - z[t[size_t(x)]];
    sum.correct += std::max_element(z, z + V) - z == t[size_t(x)];
    ++sum.targets;
  }
}

TEST(BlockEval, EveryTargetOnceWithTheContextOfItsBlock) {
  ModelConfig c = testing_util::small_decoder_config();
  c.context_length = 16;
  c.num_latents = 4;
  cpu::CpuOps<double> cpu;
  const std::vector<double> p = testing_util::small_decoder_params<double>(c, 17);
  PerceiverAR<double> batched(c, cpu, 3), single(c, cpu, 1);
  for (PerceiverAR<double>* m : {&batched, &single})
    cpu.upload(m->params(), p.data(), p.size() * sizeof(double));

  std::mt19937_64 rng(9);
  auto stream = [&](int64_t n) {
    std::vector<int32_t> t(static_cast<size_t>(n), 0);
    for (auto& v : t) v = int32_t(3 + rng() % 16);
    return t;
  };
  std::vector<std::vector<int32_t>> streams = {stream(41), stream(7), stream(1), stream(30)};
  streams[3][5] = streams[3][6] = kPadToken;  // PAD targets are not scored
  streams[3][17] = kEosToken;
  testing_util::TempDir dir;
  std::vector<std::string> shards;
  Totals want;
  for (size_t k = 0; k < streams.size(); ++k) {
    shards.push_back(dir.file(cat("s", k, ".h5")));
    write_shard(shards.back(), streams[k].data(), int64_t(streams[k].size()), c.vocab_size);
    score_stream(single, c, streams[k], want);
  }
  ASSERT_EQ(want.targets, 40 + 6 + 0 + 27);

  const EvalResult got = evaluate_blocks(batched, shards, 0);
  EXPECT_EQ(got.tokens, want.targets);
  EXPECT_NEAR(got.loss_nats, want.ce / double(want.targets), 1e-12);
  EXPECT_NEAR(got.accuracy, want.correct / double(want.targets), 1e-12);
  // The short stream alone: 6 targets in 2 blocks, the second right-padded.
  Totals short_only;
  score_stream(single, c, streams[1], short_only);
  const EvalResult alone = evaluate_blocks(batched, {shards[1]}, 0);
  EXPECT_EQ(alone.tokens, 6);
  EXPECT_NEAR(alone.loss_nats, short_only.ce / 6.0, 1e-12);
}

// par eval and train's validation take a shard shorter than a window (training cannot use
// it; evaluation pads its blocks): every target after the first is scored.
TEST(BlockEval, ShardsShorterThanAWindowAreEvaluated) {
  testing_util::TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 30);
  std::vector<int32_t> t(30, 0);
  for (size_t i = 0; i < t.size(); ++i) t[i] = int32_t(3 + i % 50);
  write_shard(dir.file("short.h5"), t.data(), 30, 259);
  ASSERT_EQ(testing_util::run_par(dir, testing_util::tiny_train_args(data, dir.file("run"), 1) +
                                           " --val-data " + testing_util::quote(dir.file("short.h5")))
                .rc,
            0);
  const testing_util::ParRun r = testing_util::run_par(
      dir, cat("eval --checkpoint ", testing_util::quote(dir.file("run")), " --data ",
               testing_util::quote(dir.file("short.h5"))));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("{\"tokens\": 29,"), std::string::npos) << r.out;
  EXPECT_NE(testing_util::slurp(dir.file("run/metrics.jsonl")).find("\"val_tokens\": 29}"),
            std::string::npos);
}

}  // namespace
}  // namespace par
