// `par eval`: block evaluation (spec/MODEL.md section 11) of a checkpoint or exported
// model on token shards. The last line of output is one JSON object:
// {"tokens": ..., "loss_nats": ..., "bits_per_token": ...}.
#include <glog/logging.h>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "checkpoint/model_file.h"
#include "core/error.h"
#include "data/dataset.h"
#include "launch/backend.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/memory_plan.h"
#include "launch/options.h"
#include "launch/threads.h"
#include "train/evaluate.h"

namespace par {

int cmd_eval(int argc, char** argv) {
  std::string checkpoint;
  std::vector<std::string> data;
  int64_t max_tokens = 0, batch = 1;
  int threads = 0;
  std::string device = "cpu", precision = "fp32", attention = "auto", score_positions;
  po::options_description opts("Options");
  opts.add_options()
      ("checkpoint", po::value(&checkpoint), "checkpoint directory (or a run directory: its newest checkpoint) or exported model")
      ("data", po::value(&data)->multitoken(), "shards to evaluate: paths or glob patterns (each is one stream)")
      ("max-tokens", po::value(&max_tokens)->default_value(0), "stop once this many targets are scored (in whole blocks, so up to a block more; 0: all)")
      ("batch-size", po::value(&batch)->default_value(1), "blocks per forward pass")
      ("score-positions", po::value(&score_positions), "FIRST:LAST: score only the targets whose position in their document (1-based, counted from the stream's start or the last EOS) lies in [FIRST, LAST], e.g. the copied half of `par prep copy --length 8194` examples (4,096 random bytes, the same again, 2 EOS) is 4097:8192")
      ("threads", po::value(&threads)->default_value(0), "CPU threads (0: $OMP_NUM_THREADS if set, else all cores)")
      ("device", po::value(&device)->default_value(device), "cpu or cuda (the GPU chosen by the launcher's node-local rank, else GPU 0)")
      ("precision", po::value(&precision)->default_value(precision), "matrix products on cuda: fp32, tf32 or bf16")
      ("attention", po::value(&attention)->default_value(attention), kAttentionHelp);
  po::variables_map vm;
  const cli::Command cmd{"eval",
                         "Scores every token of the shards once with block evaluation and prints "
                         "the mean loss; the last line is JSON.",
                         "par eval --checkpoint PATH --data SHARDS [options]"};
  if (!cli::parse(argc, argv, cmd, opts, vm)) return 0;
  if (checkpoint.empty()) fail_user("--checkpoint is required");
  if (data.empty()) fail_user("--data is required: the shards to evaluate");
  if (batch <= 0) fail_user("--batch-size must be positive");
  if (max_tokens < 0) fail_user("--max-tokens must be >= 0");
  if (threads < 0) fail_user("--threads must be >= 0 (0: all cores)");
  ScoredPositions only;
  if (!score_positions.empty()) only = parse_scored_positions(score_positions, "--score-positions");
  warn_threads("eval", apply_threads(threads, 1));

  // Before reading the model: a bad --device, --precision or --attention is reported at
  // once. The same validation as train's (backend_for): the CPU takes only blocked.
  Backend backend = make_local_backend(device, precision, attention);
  const ModelFile file = read_model_file(checkpoint, false);
  const auto shards = cli::expand_paths(data, "--data");
  check_stream_shards(shards, file.model.vocab_size);  // any length: blocks pad
  // The input side as training keeps it on this device (--kv-storage auto's rule).
  const KeyValueStorage storage =
      resolve_key_value_storage("auto", device, precision, attention, 1, file.model);
  LOG(INFO) << "evaluating " << checkpoint << " (step " << file.position.step << ", "
            << file.model.summary() << ") on " << shards.size() << " shard(s), "
            << backend.description << storage_note(storage);

  {
    RunConfig run;
    run.batch_size = batch;
    run.precision = precision;
    run.attention = attention;
    PlanRequest plan = plan_request(file.model, run, backend.cuda);
    plan.kv_bf16 = storage == KeyValueStorage::kBf16;
    plan.training = false;
    require_model_fits(plan, backend, "--batch-size");
  }
  Ops<float>& ops = *backend.ops;
  PerceiverAR<float> model(file.model, ops, batch, {}, storage);
  ops.upload(model.params(), file.params.data(), file.params.size() * sizeof(float));
  const auto t0 = std::chrono::steady_clock::now();
  auto last_log = t0;
  const EvalResult r = evaluate_blocks(
      model, shards, max_tokens,
      [&](int64_t done) {
    const auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last_log).count() < 10) return;
    last_log = now;
    LOG(INFO) << done << " targets scored ("
              << int64_t(double(done) / std::chrono::duration<double>(now - t0).count())
              << " targets/s)";
      },
      nullptr, only);
  // A loss over no target would read as a perfect 0.
  if (r.tokens == 0)
    fail_user("no target was scored",
              only.all() ? std::string(" (the shards hold no target)")
                         : cat(": no target of the shards lies at document positions ",
                               score_positions, " (--score-positions)"));
  char json[256];
  std::snprintf(json, sizeof json,
                "{\"tokens\": %lld, \"loss_nats\": %.6f, \"bits_per_token\": %.6f, "
                "\"accuracy\": %.6f}",
                static_cast<long long>(r.tokens), r.loss_nats, r.bits_per_token(), r.accuracy);
  std::cout << json << std::endl;
  return 0;
}

}  // namespace par
