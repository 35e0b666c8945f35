// `par train`: trains a model on token shards, logging progress, validating, and writing
// a checkpoint it can resume from. One process, or an MPI job of dp x sp x tp ranks.
#include <glog/logging.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/model_file.h"
#include "core/error.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "kernels/cpu/blas_setup.h"
#include "kernels/cpu/cpu_ops.h"
#include "launch/backend.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/host_memory.h"
#include "launch/job.h"
#include "launch/memory_plan.h"
#include "launch/options.h"
#include "launch/resume_changes.h"
#include "launch/resume_source.h"
#include "launch/run_dir.h"
#include "launch/run_lock.h"
#include "launch/sample_output.h"
#include "launch/stop_request.h"
#include "launch/text.h"
#include "launch/threads.h"
#include "launch/version.h"
#include "train/evaluate.h"
#include "train/train_step.h"

namespace par {

namespace {

using Clock = std::chrono::steady_clock;

constexpr double kUnreadShareToWarn = 0.1;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Batches the loader queues ahead per accumulation step: a step's micro-batches are read
// while the one before it computes.
constexpr int64_t kPrefetchPerAccumStep = 2;

// The loader of a rank that reads examples [first, first + count) of each micro-batch and
// columns [col_begin, col_begin + cols) of each window.
LoaderOptions loader_options(const RunConfig& rc, bool positions, int64_t first, int64_t count,
                             int64_t col_begin, int64_t cols) {
  LoaderOptions lo;
  lo.positions = positions;
  lo.global_batch = rc.micro_batch();
  lo.first = first;
  lo.count = count;
  lo.col_begin = col_begin;
  lo.col_end = col_begin + cols;
  lo.seed = derive_seed(rc.seed, kDataStream);
  lo.prefetch = kPrefetchPerAccumStep * rc.accum_steps;
  return lo;
}

// What this rank will allocate, planned before anything is: the model, its optimizer,
// copies of the state for checkpoints, and the loader (sized for a rank holding the
// latents, the one reading a column more).
PlanRequest train_plan_request(const ModelConfig& mc, const RunConfig& rc, bool cuda) {
  PlanRequest r = plan_request(mc, rc, cuda);
  r.checkpoints = true;
  // One batch, as the loader sizes it, times the batches queued and held: in double, for the
  // advice tries accumulation steps up to the whole batch.
  r.data_bytes = [rc](const PlanRequest& t) {
    RunConfig run = rc;
    run.accum_steps = 1;
    LoaderOptions one = loader_options(run, t.model.absolute_positions(), 0, t.micro_batch, 0,
                                       t.model.context_length / t.sp + 1);
    one.prefetch = 0;
    const double accum = double(t.accum_steps);
    return Loader::memory_bytes(one, 0) * (double(kPrefetchPerAccumStep) * accum + 1 + accum);
  };
  return r;
}

// Windows do not cross shards, so each shard's tail after its last whole window is never
// read. Shards cut small against the context (par prep --shard-tokens) lose much of the
// data this way without any error; say so when it is a noticeable share.
std::string unread_data_warning(const Dataset& data) {
  const int64_t total = data.num_tokens(), lost = data.unread_tokens();
  if (double(lost) < kUnreadShareToWarn * double(total)) return "";
  return cat(lost, " of the data's ", total, " tokens (", fmt("%.0f", 100.0 * lost / total),
             "%) lie in no window and are never read: windows of N+1 = ",
             data.context_length() + 1, " tokens do not cross shards, and ", data.num_shards(),
             " shard(s) hold ", data.num_windows(), " windows; prep the data in fewer, longer ",
             "shards (par prep --shard-tokens, many times the context length)");
}

// Everything a run needs, set up (and checked) on every rank before training starts.
struct Setup {
  ModelConfig model;
  OptimizerConfig opt;
  RunConfig run;
  std::string config_text;
  std::unique_ptr<Dataset> train;
  std::vector<std::string> val_shards;
  ScoredPositions scored;
  std::vector<std::string> resume_from;  // checkpoint directories to try in order
  std::vector<std::string> resume_warnings;
};

void validate(TrainStep& ts, const Setup& s, int64_t step, RunDir* dir) {
  if (s.val_shards.empty()) return;
  const auto t0 = Clock::now();
  const EvalResult r =
      evaluate_blocks(ts.model(), s.val_shards, s.run.eval_tokens, {}, &ts.grid(), s.scored);
  if (r.tokens == 0) {
    // A loss over no target would read as a perfect 0 in the log and the plots.
    LOG(WARNING) << "validation at step " << step << ": no target was scored"
                 << (s.scored.all() ? std::string(" (the validation shards hold none)")
                                    : cat(" (none lies at document positions ",
                                          s.run.score_positions, ", --score-positions)"))
                 << "; nothing recorded";
    return;
  }
  LOG(INFO) << "validation at step " << step << " | loss " << fmt("%.4f", r.loss_nats) << " | "
            << fmt("%.4f", r.bits_per_token()) << " bits/token | accuracy "
            << fmt("%.4f", r.accuracy) << " | " << r.tokens << " targets | "
            << fmt("%.1f", seconds_since(t0)) << " s";
  if (dir)
    dir->metrics(cat("{\"step\": ", step, ", \"val_loss\": ", fmt("%.6f", r.loss_nats),
                     ", \"val_bits_per_token\": ", fmt("%.6f", r.bits_per_token()),
                     ", \"val_accuracy\": ", fmt("%.6f", r.accuracy), ", \"val_tokens\": ",
                     r.tokens, "}"));
}

// Commits a checkpoint whose files are written (wait: until they are).
void commit(CheckpointSaver& saver, bool wait) {
  const std::string done = saver.finish(wait);
  if (!done.empty())
    LOG(INFO) << "checkpoint -> " << done << " (written in "
              << fmt("%.2f", saver.last_write_seconds()) << " s)";
}

// Starts a checkpoint: training pauses only to copy its state; the files are written in
// the background and committed at a later step boundary.
void save(TrainStep& ts, CheckpointSaver& saver, const Setup& s, const TrainingPosition& pos) {
  commit(saver, true);  // one save at a time
  const auto t0 = Clock::now();
  std::vector<float> params, m, v;
  ts.snapshot(params, m, v);
  saver.start(s.model, ts.model().layout(), std::move(params), std::move(m), std::move(v), pos,
              s.config_text);
  LOG(INFO) << "checkpoint of step " << pos.step << " started: training paused "
            << fmt("%.3f", seconds_since(t0)) << " s to copy its state";
}

// Returns the exit status: 0, or kExitRequeue when stopped early with a checkpoint.
int train(Setup& s, const ProcessGrid& grid, Backend& backend, RunDir* dir, const StopRequest& stop) {
  const ModelConfig& mc = s.model;
  const RunConfig& rc = s.run;
  TrainStep ts(mc, s.opt, rc.training(mc), *backend.ops, grid);
  TrainingPosition pos;
  pos.seed = rc.seed;
  std::string resumed_dir;
  // Warnings every rank would give alike are said once, by rank 0 (a job of 512 ranks
  // would otherwise print 512 copies).
  const bool speaker = grid.world_rank() == 0;
  if (speaker)
    for (const std::string& w : s.resume_warnings) LOG(WARNING) << w;
  // The newest candidate whose every piece reads back with its checksum, on every rank
  // (each reads other pieces); with --resume auto, older ones when it is damaged.
  for (size_t i = 0; i < s.resume_from.size(); ++i) {
    const std::string& dir = s.resume_from[i];
    std::string error;
    Manifest m;
    try {
      m = ts.load_checkpoint(dir);
      require_same_model(mc, m.model, dir);
    } catch (const UserError& e) {
      error = e.what();
    }
    if (grid.world()->all_reduce_value(int64_t(error.empty() ? 0 : 1), ReduceOp::kSum) > 0) {
      // Rank 0 says it for the job; a rank that found the damage itself names it.
      const bool found = !error.empty();
      if (!found) error = "a piece another rank reads";
      if (i + 1 == s.resume_from.size()) fail_user(error);
      if (found || speaker) LOG(WARNING) << damaged_checkpoint_warning(dir, error, s.resume_from[i + 1]);
      continue;
    }
    pos.step = m.position.step;
    resumed_dir = dir;
    LOG(INFO) << "resumed from " << dir << " at step " << pos.step
              << " (written by dp " << m.dp << " x sp " << m.sp << " x tp " << m.tp << ")";
    if (speaker) {
      if (m.position.seed != rc.seed)
        LOG(WARNING) << "--seed " << rc.seed << " differs from the checkpoint's "
                     << m.position.seed << ": data order and dropout change from here on";
      const std::string config = read_checkpoint_config(dir);
      for (const std::string& w : data_stream_changes(config, rc, pos.step)) LOG(WARNING) << w;
      if (const std::string w = schedule_change(config, s.opt, pos.step); !w.empty())
        LOG(WARNING) << w;
    }
    break;
  }
  if (s.resume_from.empty()) {
    ts.initialize(rc.seed);
    if (rc.resume == "auto")
      LOG(INFO) << "--resume auto: no checkpoint in " << checkpoints_root(rc.out)
                << " yet: starting at step 0";
  }
  if (!s.resume_from.empty() && pos.step < rc.steps) set_aside_newer(grid, rc.out, pos.step);
  if (pos.step >= rc.steps) {
    LOG(INFO) << "already trained " << pos.step << " steps (--steps " << rc.steps
              << "): nothing to do";
    return 0;
  }
  // Where this run's rows begin, and what a step is worth in tokens from here on: a
  // resumed run's earlier rows past this step belong to an abandoned line (a rollback), and
  // --batch-size may differ from the last run's (tools/plot_runs.py reads both).
  if (dir)
    dir->metrics(cat("{\"step\": ", pos.step, ", \"event\": \"start\", \"resumed_from\": ",
                     s.resume_from.empty() ? std::string("null") : json_quote(resumed_dir),
                     ", \"batch_size\": ", rc.batch_size, ", \"context_length\": ",
                     mc.context_length, "}"));
  // A stop asked for while the run was starting: nothing new to save.
  if (const StopRequest::Reason early = stop.agreed(*grid.world()).reason;
      early != StopRequest::kNone) {
    if (speaker) {
      LOG(WARNING) << "stopping before the first step because of " << StopRequest::describe(early)
                   << "; exit status " << kExitRequeue << ": run again with --resume auto to continue";
      StopRequest::record_stop(pos.step);
    }
    return kExitRequeue;
  }
  // (More than int holds keeps them all, as that many would.)
  CheckpointSaver saver(grid, rc.out, int(std::min<int64_t>(rc.keep_checkpoints, INT_MAX)));

  const LoaderOptions lo =
      loader_options(rc, mc.absolute_positions(), ts.replica_first(), ts.replica_batch(),
                     ts.model().window_begin(), ts.model().window_columns());
  Loader loader(*s.train, lo, pos.step * rc.accum_steps);

  const double tokens_per_step = double(rc.batch_size) * double(mc.context_length);
  double interval_s = 0, interval_loss = 0;
  int64_t interval_steps = 0, interval_targets = 0;
  auto last_save = Clock::now();  // for --checkpoint-minutes
  std::vector<Batch> batches(size_t(rc.accum_steps));
  std::vector<const int32_t*> micro(size_t(rc.accum_steps));
  std::vector<const int64_t*> carry(lo.positions ? size_t(rc.accum_steps) : 0);
  for (int64_t step = pos.step; step < rc.steps; ++step) {
    const auto t0 = Clock::now();
    for (int64_t k = 0; k < rc.accum_steps; ++k) {
      batches[size_t(k)] = loader.next();
      micro[size_t(k)] = batches[size_t(k)].tokens.data();
      if (lo.positions) carry[size_t(k)] = batches[size_t(k)].carry.data();
    }
    const StepResult r = ts.run(step, micro, carry);
    const double dt = seconds_since(t0);
    if (!std::isfinite(r.objective)) {
      // The run diverged (the same loss on every rank): a setting, not a bug. A save in
      // flight of the weights this loss came from (those after `step` steps) is dropped; one
      // of earlier weights led to a finite loss, and is committed as any other.
      if (saver.pending() && saver.pending_step() == step)
        saver.abandon();
      else
        commit(saver, true);
      const std::string last = latest_checkpoint(rc.out);
      fail_user("loss is not finite at step ", step + 1, ": training diverged; lower --lr (",
                fmt("%g", learning_rate(s.opt, step)), " at this step), keep --clip-norm on, or ",
                "check the data. ", last.empty() ? std::string("No checkpoint was written")
                                                 : cat("The last checkpoint, ", last, ", is intact: "
                                                       "roll back to it with --resume ", last));
    }
    pos.step = step + 1;
    pos.next_batch = loader.next_batch_index();
    pos.lr = learning_rate(s.opt, step);
    interval_s += dt;
    interval_loss += r.loss_nats;
    interval_targets += r.valid;
    ++interval_steps;
    const bool last = pos.step == rc.steps;
    // The clock of --checkpoint-minutes is rank 0's, so that every rank takes the same
    // decision; it is asked with the stop.
    const StopRequest::Agreement agreed =
        last ? StopRequest::Agreement{}
             : stop.agreed(*grid.world(), rc.checkpoint_minutes > 0 &&
                                              seconds_since(last_save) >= 60 * rc.checkpoint_minutes);
    const StopRequest::Reason reason = agreed.reason;
    // A stop logs the steps since the last line too: a segment of a requeued job shorter
    // than --log-every would otherwise leave no trace of its progress and throughput.
    if (pos.step % rc.log_every == 0 || last || reason != StopRequest::kNone) {
      const double loss = interval_loss / double(interval_steps);
      const double ms = 1e3 * interval_s / double(interval_steps);
      const double tps = tokens_per_step * double(interval_steps) / interval_s;
      LOG(INFO) << "step " << pos.step << "/" << rc.steps << " | loss " << fmt("%.4f", loss)
                << " | " << fmt("%.4f", loss / std::log(2.0)) << " bits/token | lr "
                << fmt("%.3g", r.opt.lr) << " | grad norm " << fmt("%.3f", r.opt.grad_norm)
                << " | " << fmt("%.0f", tps) << " tokens/s | " << fmt("%.1f", ms) << " ms/step"
                // At this interval's pace; validation and checkpoints come on top.
                << (pos.step < rc.steps
                        ? cat(" | ETA ", duration_text(1e-3 * ms * double(rc.steps - pos.step)))
                        : std::string());
      if (dir)
        dir->metrics(cat("{\"step\": ", pos.step, ", \"loss\": ", exact(loss),
                         ", \"bits_per_token\": ", fmt("%.6f", loss / std::log(2.0)),
                         ", \"lr\": ", fmt("%.6g", r.opt.lr), ", \"grad_norm\": ",
                         fmt("%.6g", r.opt.grad_norm), ", \"tokens_per_s\": ", fmt("%.1f", tps),
                         ", \"targets_per_s\": ",
                         fmt("%.1f", double(interval_targets) / interval_s),
                         ", \"ms_per_step\": ", fmt("%.2f", ms), "}"));
      interval_s = interval_loss = 0;
      interval_steps = interval_targets = 0;
    }
    if (saver.pending()) commit(saver, false);
    if (reason != StopRequest::kNone) {
      if (speaker)
        LOG(WARNING) << "stopping after step " << pos.step << " because of "
                     << StopRequest::describe(reason) << ": writing a checkpoint";
      save(ts, saver, s, pos);
      commit(saver, true);
      if (speaker) {
        LOG(WARNING) << "stopped early at step " << pos.step << "/" << rc.steps
                     << "; exit status " << kExitRequeue << ": run again with --resume auto to continue";
        StopRequest::record_stop(pos.step);
      }
      return kExitRequeue;
    }
    if (rc.eval_every > 0 && pos.step % rc.eval_every == 0 && !last)
      validate(ts, s, pos.step, dir);
    if ((rc.checkpoint_every > 0 && pos.step % rc.checkpoint_every == 0) || last ||
        agreed.rank0_flag) {
      save(ts, saver, s, pos);
      last_save = Clock::now();
    }
    if (dir) dir->check();  // a log line that could not be written ends the run
  }
  // The last checkpoint is committed first: validation data that fails to read (a shard
  // of another tool's, read only now) must not cost the run its result.
  commit(saver, true);
  validate(ts, s, pos.step, dir);
  LOG(INFO) << "done: " << pos.step << " steps; checkpoint " << checkpoint_dir(rc.out, pos.step);
  return 0;
}

// "vm [ranks 0,1; local 0,1], node2 [ranks 2,3; local 0,1]": where the ranks run.
std::string describe_hosts(const ProcessGrid& grid) {
  constexpr int kName = 64;
  std::vector<uint8_t> mine(kName + 8, 0), all(size_t(grid.world_size()) * (kName + 8));
  std::snprintf(reinterpret_cast<char*>(mine.data()), kName, "%s", grid.host().c_str());
  const int64_t local = grid.local_rank();
  std::memcpy(mine.data() + kName, &local, 8);
  grid.world()->all_gather(mine.data(), all.data(), kName + 8, DataType::kUInt8);
  std::vector<std::string> hosts;
  std::map<std::string, std::pair<std::string, std::string>> ranks;  // host -> (ranks, locals)
  for (int r = 0; r < grid.world_size(); ++r) {
    const uint8_t* e = all.data() + size_t(r) * (kName + 8);
    const std::string host(reinterpret_cast<const char*>(e));
    int64_t l = 0;
    std::memcpy(&l, e + kName, 8);
    if (!ranks.count(host)) hosts.push_back(host);
    auto& [rs, ls] = ranks[host];
    rs += cat(rs.empty() ? "" : ",", r);
    ls += cat(ls.empty() ? "" : ",", l);
  }
  std::string out;
  for (const auto& h : hosts)
    out += cat(out.empty() ? "" : ", ", h, " [ranks ", ranks[h].first, "; local ", ranks[h].second, "]");
  return cat(hosts.size(), " host(s): ", out);
}

}  // namespace

int cmd_train(int argc, char** argv) {
  // First of all, before MPI starts and data is read: a stop signal is never fatal.
  StopRequest stop;
  Job job("train", &argc, &argv);
  // Rank 0 speaks for the job; the others report only warnings and errors.
  if (job.world_rank() != 0) FLAGS_minloglevel = google::GLOG_WARNING;
  Setup s;
  po::variables_map vm;
  bool help = false, dry_run = false;
  job.agree([&] {
    po::options_description opts;
    opts.add(run_options(s.run)).add(model_options(s.model)).add(optimizer_options(s.opt));
    const cli::Command cmd{"train",
                           "Trains a Perceiver AR model on token shards (see README.md). Under "
                           "mpirun, --dp x --sp x --tp must equal the number of ranks.",
                           "par train [--config FILE] --data SHARDS --out DIR [options]",
                           nullptr,
                           "Exit status: 0 trained to --steps; 75 stopped early with a checkpoint "
                           "(a stop signal, --max-minutes): run it again with --resume auto; 2 "
                           "bad input, options or data, a diverged loss, or a failed write (the "
                           "message says which); 1 an internal error or a lost rank; 130 a "
                           "second Ctrl-C (no checkpoint).\nEnvironment: PAR_STOP_FILE (rank 0 "
                           "writes \"75 step N\" there when it stops with a checkpoint, for "
                           "launch scripts), OMP_NUM_THREADS (stands for --threads 0)."};
    po::options_description plan("Planning");
    plan.add_options()
        ("dry-run", po::bool_switch(&dry_run), "print the memory each rank needs (and whether it fits) without training; --data and --out are not needed");
    opts.add(plan);
    std::set<std::string> given;  // on the command line
    help = !cli::parse(argc, argv, cmd, opts, vm, nullptr, "config", &given);
    if (help) return;
    s.run.validate();
    s.model.validate();
    s.opt.total_steps = s.run.steps;
    s.opt.validate();
    s.run.validate_layout(s.model);
    if (!s.run.score_positions.empty())
      s.scored = parse_scored_positions(s.run.score_positions, "--score-positions");
    stop.set_time_limit(s.run.max_minutes);
    if (dry_run) return;
    if (s.run.data.empty()) fail_user("--data is required: the training shards (see `par prep`)");
    if (s.run.out.empty())
      fail_user("--out is required: the run directory for logs and checkpoints");
    refuse_inside_checkpoint(s.run.out, "--out");
    refuse_inside_run_checkpoints(s.run.out, "--out");
    if (s.run.val_data.empty() && job.world_rank() == 0) {
      // Only the command line's: a config's validation settings serve its runs that have
      // validation data, and a run without (a warm-up, say) need not hear of them.
      const std::string unused = cli::options_among(
          {"eval-every", "eval-tokens", "score-positions"},
          [&](const std::string& o) { return given.count(o) > 0; });
      if (!unused.empty())
        LOG(WARNING) << unused << " given, but no --val-data: no validation runs";
    }
    if (job.world_rank() == 0)
      for (const std::string& w : schedule_notes(s.opt, given.count("min-lr") > 0))
        LOG(WARNING) << w;
  });
  if (help) return 0;
  job.watch_collectives(s.run.collective_timeout);
  ProcessGrid grid;
  const GridShape layout{s.run.dp, s.run.sp, s.run.tp};
  // A dry run of a layout of several ranks, started alone (from a login node, planning a
  // job): one process plans one rank of the layout, on this machine's memory.
  const bool plan_alone = dry_run && !job.distributed() && layout.size() > 1;
  job.agree([&] { grid = job.make_grid(plan_alone ? GridShape{1, 1, 1} : layout); });

  // Everything the user gave is checked, on every rank, before anything is written.
  std::unique_ptr<RunLock> lock;  // outlives the run directory's files
  std::unique_ptr<RunDir> dir;
  Backend backend;
  // A dry run for GPUs on a machine without one (a cluster's login node) still plans the
  // memory, with the device's side unchecked: why there is no GPU here, else empty.
  std::string no_gpu;
  job.agree([&] {
    check_backend_options(s.run.device, s.run.precision, s.run.attention);
    try {
      backend = make_backend(s.run.device, s.run.precision, grid, s.run.attention);
    } catch (const UserError& e) {
      if (!dry_run || s.run.device != "cuda") throw;
      no_gpu = e.what();
    }
  });
  // A dry run only plans: no device communicators (ranks could differ in having a GPU).
  if (!dry_run) job.agree([&] { connect_backend(backend, grid, s.run.collective_timeout); });
  std::string thread_warning, memory_plan;
  // The memory each rank needs, before anything is allocated or written.
  job.agree([&] { thread_warning = apply_threads(s.run.threads, job.local_size()); });
  // What the processes hold already differs a little from rank to rank: the plan counts the
  // most, the same on every rank, so that a run that does not fit says so once for all.
  const double runtime = double(grid.world()->all_reduce_value(resident_bytes(), ReduceOp::kMax));
  job.agree([&] {
    PlanRequest request = train_plan_request(s.model, s.run, backend.cuda || !no_gpu.empty());
    request.runtime_bytes = runtime;
    MemoryBudget budget = no_gpu.empty() ? memory_budget(backend, job.local_size())
                                         : memory_budget(job.local_size(), -1, 1);
    if (!no_gpu.empty()) {
      budget.device_unchecked = true;
      budget.device_source = no_gpu;
    }
    const std::string plan = describe(plan_memory(request), budget);
    if (dry_run && grid.world_rank() == 0)
      std::cout << "par train --dry-run: " << s.model.summary() << " | batch " << s.run.batch_size
                << " = " << s.run.accum_steps << " x " << s.run.micro_batch() << " examples | dp "
                << s.run.dp << " x sp " << s.run.sp << " x tp " << s.run.tp << " | "
                << current_threads() << " thread(s) per rank | "
                << (no_gpu.empty() ? backend.description : cat("cuda, ", s.run.precision, " matrix products (no GPU here)"))
                << s.run.storage_note(s.model) << "\nmemory per rank (estimate"
                << (plan_alone ? cat("; planned alone: one of the ", layout.size(), " ranks, on a "
                                     "node like this one (ranks that share a node share its "
                                     "memory)")
                               : std::string())
                << "):\n" << plan << std::endl;
    memory_plan = plan;
    require_fits(request, RunShape{s.run.batch_size, s.run.accum_steps, s.run.dp}, budget);
  });
  if (dry_run) {
    if (grid.world_rank() == 0)
      std::cout << (no_gpu.empty() ? "fits: the run can start"
                                   : "fits on this host; the GPU's side is not checked: no GPU here")
                << std::endl;
    return 0;
  }
  job.agree([&] {
    s.train = std::make_unique<Dataset>(cli::expand_paths(s.run.data, "--data"),
                                        s.model.context_length, s.model.vocab_size);
    if (!s.run.val_data.empty()) {
      s.val_shards = cli::expand_paths(s.run.val_data, "--val-data");
      check_stream_shards(s.val_shards, s.model.vocab_size);  // any length: blocks pad
    }
  });
  // One run per directory: rank 0 locks it before any rank reads its checkpoints, and
  // holds the lock until it exits.
  job.agree([&] {
    if (grid.world_rank() == 0) lock = std::make_unique<RunLock>(s.run.out);
  });
  job.agree([&] {
    s.resume_from = resume_candidates(s.run, s.run.out);
    choose_resume(s.resume_from, s.model, s.resume_warnings);
    refuse_other_run_behind(s.run, s.resume_from);
    s.config_text = to_ini(vm);
    if (grid.world_rank() == 0) {
      dir = std::make_unique<RunDir>(s.run.out, lock.get());
      dir->write_config(s.config_text);
    }
  });

  LOG(INFO) << "par train (" << version() << ") | model " << s.model.summary() << " | "
            << ParamLayout(s.model).num_parameters() << " parameters";
  LOG(INFO) << "layout: " << grid.world_size() << " rank(s) = dp " << s.run.dp << " x sp "
            << s.run.sp << " x tp " << s.run.tp << " | " << current_threads()
            << " thread(s) per rank | " << backend.description << s.run.storage_note(s.model);
  LOG(INFO) << "memory per rank (estimate): " << memory_plan;
  if (!thread_warning.empty() && grid.world_rank() == 0) LOG(WARNING) << thread_warning;
  if (grid.world_size() > 1) {
    const std::string hosts = describe_hosts(grid);
    LOG(INFO) << "ranks on " << hosts;
  }
  LOG(INFO) << "data: " << s.train->num_shards() << " shard(s), " << s.train->num_windows()
            << " windows of " << s.model.context_length + 1 << " tokens | batch "
            << s.run.batch_size << " = " << s.run.accum_steps << " x " << s.run.micro_batch()
            << " examples";
  if (grid.world_rank() == 0)
    if (const std::string w = unread_data_warning(*s.train); !w.empty()) LOG(WARNING) << w;
  try {
    const int status = train(s, grid, backend, dir.get(), stop);
    if (dir) dir->check();
    return status;
  } catch (const UserError& e) {
    if (dir) dir->record_fatal(cat("par train: error: ", e.what()));
    job.fail(e, 2);
  } catch (const std::exception& e) {
    if (dir) dir->record_fatal(cat("par train: internal error: ", e.what()));
    job.fail(e, 1);
  }
}

}  // namespace par
