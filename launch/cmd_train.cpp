// `par train`: trains a model on token shards, logging progress, validating, and writing
// a checkpoint it can resume from.
#include <glog/logging.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>

#include "checkpoint/model_file.h"
#include "core/error.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "kernels/cpu/blas_setup.h"
#include "kernels/cpu/cpu_ops.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/evaluate.h"
#include "launch/options.h"
#include "launch/run_dir.h"
#include "launch/text.h"
#include "launch/train_step.h"

namespace par {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Where training starts: a checkpoint to resume from, or nothing.
std::string resume_path(const RunConfig& run, const RunDir& dir) {
  const std::string latest = dir.checkpoint();
  if (run.resume == "none") {
    if (file_exists(latest))
      fail_user("run directory ", dir.path(), " already holds a checkpoint (", latest,
                "): pass --resume auto to continue that run, or choose another --out");
    return "";
  }
  if (run.resume == "auto") return file_exists(latest) ? latest : "";
  if (!file_exists(run.resume)) fail_user("--resume: no such checkpoint '", run.resume, "'");
  return run.resume;
}

struct Validation {
  std::vector<std::string> shards;
  int64_t tokens = 0;
};

void validate(TrainStep& ts, const Validation& val, int64_t step, RunDir& dir) {
  if (val.shards.empty()) return;
  const auto t0 = Clock::now();
  const EvalResult r = evaluate_blocks(ts.model(), val.shards, val.tokens);
  LOG(INFO) << "validation at step " << step << " | loss " << fmt("%.4f", r.loss_nats) << " | "
            << fmt("%.4f", r.bits_per_token()) << " bits/token | accuracy "
            << fmt("%.4f", r.accuracy) << " | " << r.tokens << " targets | "
            << fmt("%.1f", seconds_since(t0)) << " s";
  dir.metrics(cat("{\"step\": ", step, ", \"val_loss\": ", fmt("%.6f", r.loss_nats),
                  ", \"val_bits_per_token\": ", fmt("%.6f", r.bits_per_token()),
                  ", \"val_accuracy\": ", fmt("%.6f", r.accuracy), ", \"val_tokens\": ", r.tokens,
                  "}"));
}

void save(TrainStep& ts, const ModelConfig& mc, const TrainingPosition& pos, RunDir& dir) {
  const auto t0 = Clock::now();
  const auto params = ts.download(ts.params());
  const auto m = ts.download(ts.adam().m());
  const auto v = ts.download(ts.adam().v());
  write_checkpoint(dir.checkpoint(), mc, pos, params.data(), m.data(), v.data());
  LOG(INFO) << "checkpoint at step " << pos.step << " -> " << dir.checkpoint() << " ("
            << fmt("%.2f", seconds_since(t0)) << " s)";
}

}  // namespace

int cmd_train(int argc, char** argv) {
  ModelConfig mc;
  OptimizerConfig oc;
  RunConfig rc;
  po::options_description opts;
  opts.add(run_options(rc)).add(model_options(mc)).add(optimizer_options(oc));
  po::variables_map vm;
  const cli::Command cmd{"train", "Trains a Perceiver AR model on token shards (see README.md).",
                         "par train --config FILE --data SHARDS --out DIR [options]"};
  if (!cli::parse(argc, argv, cmd, opts, vm, nullptr, "config")) return 0;
  rc.validate();
  mc.validate();
  oc.total_steps = rc.steps;
  oc.validate();
  if (rc.data.empty()) fail_user("--data is required: the training shards (see `par prep`)");
  if (rc.out.empty()) fail_user("--out is required: the run directory for logs and checkpoints");
  set_threads(rc.threads);

  // Everything the user gave is checked before anything is written.
  const Dataset train(cli::expand_paths(rc.data, "--data"), mc.context_length, mc.vocab_size);
  Validation val;
  if (!rc.val_data.empty()) {
    val.shards = cli::expand_paths(rc.val_data, "--val-data");
    const Dataset check(val.shards, mc.context_length, mc.vocab_size);
    val.tokens = rc.eval_tokens;
  }
  RunDir dir(rc.out);
  const std::string from = resume_path(rc, dir);
  std::unique_ptr<ModelFile> resumed;
  if (!from.empty()) {
    resumed = std::make_unique<ModelFile>(read_model_file(from, true));
    require_same_model(mc, resumed->model, from);
  }

  LOG(INFO) << "par train | model " << mc.summary() << " | "
            << ParamLayout(mc).num_parameters() << " parameters";
  LOG(INFO) << "data: " << train.num_shards() << " shard(s), " << train.num_windows()
            << " windows of " << mc.context_length + 1 << " tokens | batch " << rc.batch_size
            << " = " << rc.accum_steps << " x " << rc.micro_batch() << " | " << current_threads()
            << " threads | BLAS: " << blas_description();

  cpu::CpuOps<float> ops;
  TrainStep ts(mc, oc, rc, ops);
  TrainingPosition pos;
  pos.seed = rc.seed;
  pos.config_text = to_ini(vm);
  if (resumed) {
    ts.load(*resumed);
    pos.step = resumed->position.step;
    if (resumed->position.seed != rc.seed)
      LOG(WARNING) << "--seed " << rc.seed << " differs from the checkpoint's "
                   << resumed->position.seed << ": data order and dropout change from here on";
    LOG(INFO) << "resumed from " << from << " at step " << pos.step;
    resumed.reset();
  } else {
    ts.initialize(rc.seed);
  }
  dir.write_config(pos.config_text);
  if (pos.step >= rc.steps) {
    LOG(INFO) << "already trained " << pos.step << " steps (--steps " << rc.steps
              << "): nothing to do";
    return 0;
  }

  LoaderOptions lo;
  lo.global_batch = rc.micro_batch();
  lo.count = rc.micro_batch();
  lo.seed = derive_seed(rc.seed, kDataStream);
  lo.prefetch = 2 * rc.accum_steps;
  Loader loader(train, lo, pos.step * rc.accum_steps);

  const int64_t N = mc.context_length;
  const double tokens_per_step = double(rc.batch_size) * double(N);
  double interval_s = 0, interval_loss = 0;
  int64_t interval_steps = 0, interval_targets = 0;
  std::vector<Batch> batches(size_t(rc.accum_steps));
  std::vector<const int32_t*> micro(size_t(rc.accum_steps));
  for (int64_t step = pos.step; step < rc.steps; ++step) {
    const auto t0 = Clock::now();
    for (int64_t k = 0; k < rc.accum_steps; ++k) {
      batches[size_t(k)] = loader.next();
      micro[size_t(k)] = batches[size_t(k)].tokens.data();
    }
    const StepResult r = ts.run(step, micro);
    const double dt = seconds_since(t0);
    if (!std::isfinite(r.objective))
      throw std::runtime_error(cat("loss is not finite at step ", step,
                                   ": lower --lr or check the data"));
    pos.step = step + 1;
    pos.next_batch = loader.next_batch_index();
    interval_s += dt;
    interval_loss += r.loss_nats;
    interval_targets += r.valid;
    ++interval_steps;
    if (pos.step % rc.log_every == 0 || pos.step == rc.steps) {
      const double loss = interval_loss / double(interval_steps);
      const double ms = 1e3 * interval_s / double(interval_steps);
      const double tps = tokens_per_step * double(interval_steps) / interval_s;
      LOG(INFO) << "step " << pos.step << "/" << rc.steps << " | loss " << fmt("%.4f", loss)
                << " | " << fmt("%.4f", loss / std::log(2.0)) << " bits/token | lr "
                << fmt("%.3g", r.opt.lr) << " | grad norm " << fmt("%.3f", r.opt.grad_norm)
                << " | " << fmt("%.0f", tps) << " tokens/s | " << fmt("%.1f", ms) << " ms/step";
      dir.metrics(cat("{\"step\": ", pos.step, ", \"loss\": ", exact(loss),
                      ", \"bits_per_token\": ", fmt("%.6f", loss / std::log(2.0)),
                      ", \"lr\": ", fmt("%.6g", r.opt.lr), ", \"grad_norm\": ",
                      fmt("%.6g", r.opt.grad_norm), ", \"tokens_per_s\": ", fmt("%.1f", tps),
                      ", \"targets_per_s\": ", fmt("%.1f", double(interval_targets) / interval_s),
                      ", \"ms_per_step\": ", fmt("%.2f", ms), "}"));
      interval_s = interval_loss = 0;
      interval_steps = interval_targets = 0;
    }
    const bool last = pos.step == rc.steps;
    if (rc.eval_every > 0 && pos.step % rc.eval_every == 0 && !last)
      validate(ts, val, pos.step, dir);
    if ((rc.checkpoint_every > 0 && pos.step % rc.checkpoint_every == 0) || last)
      save(ts, mc, pos, dir);
  }
  validate(ts, val, pos.step, dir);
  LOG(INFO) << "done: " << pos.step << " steps; checkpoint " << dir.checkpoint();
  return 0;
}

}  // namespace par
