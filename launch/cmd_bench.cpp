// `par bench`: times training steps of a config on random tokens and reports throughput,
// model FLOP/s, peak memory, and the rate of a plain sgemm measured in the same process
// (the yardstick for how well the step uses the machine).
#include <glog/logging.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>

#include "core/error.h"
#include "core/counting_communicator.h"
#include "core/init.h"
#include "core/flops.h"
#include "core/profiled_ops.h"
#include "launch/backend.h"
#include "launch/bench_decode.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/gpu_peaks.h"
#include "launch/host_memory.h"
#include "launch/job.h"
#include "launch/memory_plan.h"
#include "launch/options.h"
#include "launch/threads.h"
#include "launch/train_step.h"

namespace par {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// GFLOP/s of a plain n x n x n matrix product through the backend's own gemm (BLAS sgemm
// on the CPU, cuBLAS in the chosen precision on a GPU), best of a few runs.
double gemm_rate(Ops<float>& ops, int64_t n) {
  std::vector<float> host(static_cast<size_t>(n * n));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& x : host) x = u(rng);
  const size_t bytes = host.size() * sizeof(float);
  float* a = static_cast<float*>(ops.allocate(bytes));
  float* b = static_cast<float*>(ops.allocate(bytes));
  float* c = static_cast<float*>(ops.allocate(bytes));
  ops.upload(a, host.data(), bytes);
  ops.upload(b, host.data(), bytes);
  ops.gemm(false, false, n, n, n, 1.f, a, n, b, n, 0.f, c, n);
  ops.synchronize();
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    const auto t = Clock::now();
    ops.gemm(false, false, n, n, n, 1.f, a, n, b, n, 0.f, c, n);
    ops.synchronize();
    best = std::min(best, since(t));
  }
  ops.deallocate(c);
  ops.deallocate(b);
  ops.deallocate(a);
  return 2.0 * double(n) * double(n) * double(n) / best / 1e9;
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  Job job("bench", &argc, &argv);
  ModelConfig mc;
  OptimizerConfig oc;
  RunConfig rc;
  int64_t warmup = 1, gemm_n = 2048, decode = 0;
  bool profile = false, help = false, gemm_defaulted = true;
  job.agree([&] {
    po::options_description opts;
    opts.add(run_options(rc)).add(model_options(mc)).add(optimizer_options(oc));
    po::options_description bench("Benchmark");
    bench.add_options()
        ("warmup", po::value(&warmup)->default_value(warmup), "untimed steps first")
        ("gemm-size", po::value(&gemm_n)->default_value(gemm_n), "n of the n x n x n reference sgemm")
        ("profile", po::bool_switch(&profile), "also print the time of each backend op (timed steps, rank 0)")
        ("decode", po::value(&decode)->default_value(0), "instead of training: time generating this many tokens with cached decoding after a full-context prompt, and a few with uncached decoding (one process)");
    opts.add(bench);
    po::variables_map vm;
    const cli::Command cmd{"bench",
                           "Times training steps (forward, backward, Adam) of a config on random "
                           "tokens; --steps sets the timed steps (default 3 here). Under mpirun, "
                           "times the --dp x --sp x --tp layout.",
                           "par bench --config FILE [--steps K] [options]"};
    help = !cli::parse(argc, argv, cmd, opts, vm, nullptr, "config");
    if (help) return;
    if (vm["steps"].defaulted()) rc.steps = 3;  // a config's training length is not the bench's
    gemm_defaulted = vm["gemm-size"].defaulted();
    if (rc.steps <= 0) fail_user("--steps must be positive for a benchmark");
    rc.validate();
    mc.validate();
    oc.validate();
    rc.validate_layout(mc);
  });
  if (help) return 0;
  if (decode > 0) {
    job.agree([&] {
      if (job.world_size() > 1) fail_user("--decode runs on one process (generation needs no grid)");
    });
    warn_threads("bench", apply_threads(rc.threads, 1));
    Backend backend;
    job.agree([&] { backend = make_local_backend(rc.device, rc.precision, rc.attention); });
    return bench_decode(mc, rc, decode, *backend.ops, profile, backend.description);
  }
  ProcessGrid grid;
  job.agree([&] { grid = job.make_grid(GridShape{rc.dp, rc.sp, rc.tp}); });
  const std::string thread_warning = apply_threads(rc.threads, job.local_size());
  const bool rank0 = grid.world_rank() == 0;
  if (rank0) warn_threads("bench", thread_warning);
  // Count what each group carries, to report the communication volume per step.
  std::vector<CountingCommunicator*> counters;
  grid.decorate([&](std::unique_ptr<Communicator> c) -> std::unique_ptr<Communicator> {
    auto counting = std::make_unique<CountingCommunicator>(std::move(c));
    counters.push_back(counting.get());
    return counting;
  });
  const char* const kGroupNames[] = {"world", "dp", "sp", "tp", "dp_sp"};

  // The machine's sgemm rate: the best of measurements before, between and after the
  // steps. On a shared or throttling machine one measurement alone can be far off.
  Backend backend;
  job.agree([&] { backend = make_backend(rc.device, rc.precision, grid, rc.attention); });
  job.agree([&] { connect_backend(backend, grid); });
  if (gemm_defaulted && backend.cuda) gemm_n = 8192;  // a GPU needs a bigger product to be busy
  // The memory each rank needs, before anything is allocated: the same plan as training's,
  // with the benchmark's own batches and yardstick instead of a loader and checkpoints.
  PlanRequest request = plan_request(mc, rc, backend.cuda);
  request.gemm_n = gemm_n;
  request.data_bytes = double(rc.accum_steps) * double(request.micro_batch) *
                       double(mc.context_length / rc.sp + 1) * sizeof(int32_t);
  const MemoryBudget budget = memory_budget(backend, job.local_size());
  const MemoryPlan plan = plan_memory(request);
  if (rank0) std::fprintf(stderr, "memory per rank (estimate): %s\n", describe(plan, budget).c_str());
  job.agree([&] { require_fits(request, RunShape{rc.batch_size, rc.accum_steps, rc.dp}, budget); });
  double gemm_gflops = gemm_rate(*backend.ops, gemm_n);
  ProfiledOps<float> profiled(*backend.ops);
  Ops<float>& ops = profile ? static_cast<Ops<float>&>(profiled) : *backend.ops;
  TrainStep ts(mc, oc, rc, ops, grid);
  ts.initialize(rc.seed);
  // Every rank draws the same global batch and keeps its share: its replica's examples,
  // its columns of each window.
  const int64_t W = mc.context_length + 1, mb = rc.micro_batch();
  const int64_t c0 = ts.model().window_begin(), cols = ts.model().window_columns();
  std::mt19937_64 rng(rc.seed);
  std::uniform_int_distribution<int32_t> tok(3, int32_t(mc.vocab_size - 1));
  std::vector<std::vector<int32_t>> data(size_t(rc.accum_steps));
  std::vector<const int32_t*> micro;
  std::vector<int32_t> window(static_cast<size_t>(W));
  for (auto& d : data) {
    for (int64_t b = 0; b < mb; ++b) {
      for (auto& t : window) t = tok(rng);
      if (b < ts.replica_first() || b >= ts.replica_first() + ts.replica_batch()) continue;
      d.insert(d.end(), window.begin() + c0, window.begin() + c0 + cols);
    }
    micro.push_back(d.data());
  }
  // Random tokens hold no EOS: each window is one document from its first column, so with
  // absolute positions this rank's first column continues from position c0.
  const std::vector<int64_t> carry_c0(size_t(ts.replica_batch()), c0);
  std::vector<const int64_t*> carry;
  if (mc.absolute_positions()) carry.assign(micro.size(), carry_c0.data());
  for (int64_t s = 0; s < warmup; ++s) ts.run(s, micro, carry);
  profiled.reset();
  for (auto* c : counters) c->reset();
  double total = 0, fwd = 0, bwd = 0, red = 0, opt = 0, best = 1e30;
  int64_t targets = 0;
  for (int64_t s = 0; s < rc.steps; ++s) {
    grid.world()->barrier();
    const auto t = Clock::now();
    const StepResult r = ts.run(warmup + s, micro, carry);
    const double dt = since(t);
    total += dt;
    best = std::min(best, dt);
    // Interleaved with the steps, so the best sgemm and the best step sample the same
    // stretch of machine time.
    gemm_gflops = std::max(gemm_gflops, gemm_rate(*backend.ops, gemm_n));
    fwd += r.forward_s;
    bwd += r.backward_s;
    red += r.reduce_s;
    opt += r.optimizer_s;
    targets += r.valid;
  }
  // Rates use the fastest step and the fastest sgemm: on a shared machine the least
  // disturbed measurement of each is the one that says what the code does.
  std::vector<double> comm_bytes;  // per step, this rank, by group (before the summary's own)
  for (auto* c : counters) comm_bytes.push_back(double(c->bytes()) / double(rc.steps));
  const double step_s = grid.world()->all_reduce_value(best, ReduceOp::kMax);
  // The yardstick for a job is the machine's rate: every rank's sgemm, measured while the
  // others run theirs (interleaved with the steps), summed.
  gemm_gflops = grid.world()->all_reduce_value(gemm_gflops, ReduceOp::kSum);
  const double mean_s = total / double(rc.steps);
  const double flops = train_flops_per_example(mc) * double(rc.batch_size);
  const double gflops = flops / step_s / 1e9;
  const double inputs_per_s = double(rc.batch_size * mc.context_length) / step_s;
  const double targets_per_s = double(targets) / double(rc.steps) / step_s;
  const double peak_mib = double(peak_resident_bytes()) / (1 << 20);
  const double peak_max_mib = grid.world()->all_reduce_value(peak_mib, ReduceOp::kMax);
  // Device memory (GPU backends): what this rank's backend held at most, all ranks' largest.
  const double dev_mib = double(device_peak_bytes(backend)) / (1 << 20);
  const double dev_max_mib = grid.world()->all_reduce_value(dev_mib, ReduceOp::kMax);
  const double n = double(rc.steps);
  if (!rank0) return 0;
  // On a known GPU: the share of the card's dense rate in this precision the step reaches.
  const std::optional<DensePeak> peak =
      backend.cuda ? dense_peak(backend.description, rc.precision) : std::nullopt;
  const double peak_share = peak ? gflops / 1e3 / (peak->tflops * grid.world_size()) : 0;

  std::printf("model       %s | batch %lld | %d rank(s) (dp %d, sp %d, tp %d) x %d threads | %s\n",
              mc.summary().c_str(), static_cast<long long>(rc.batch_size), grid.world_size(),
              rc.dp, rc.sp, rc.tp, current_threads(), backend.description.c_str());
  std::printf("step        %.1f ms best, %.1f ms mean of %lld (rank 0 mean: forward %.1f, backward "
              "%.1f, gradient sums %.1f, optimizer %.1f)\n",
              1e3 * step_s, 1e3 * mean_s, static_cast<long long>(rc.steps), 1e3 * fwd / n,
              1e3 * bwd / n, 1e3 * red / n, 1e3 * opt / n);
  std::printf("throughput  %.0f input tokens/s | %.0f targets/s\n", inputs_per_s, targets_per_s);
  std::printf("compute     %.2f model GFLOP/step | %.1f GFLOP/s achieved | gemm %lld^3 (all ranks): %.1f GFLOP/s | ratio %.2f\n",
              flops / 1e9, gflops, static_cast<long long>(gemm_n), gemm_gflops, gflops / gemm_gflops);
  if (peak)
    std::printf("            %.1f%% of the dense %s peak of %d %s (%.1f TFLOP/s each)\n",
                100 * peak_share, rc.precision.c_str(), grid.world_size(), peak->card.c_str(),
                peak->tflops);
  std::printf("memory      peak resident %.0f MiB (rank 0), %.0f MiB (largest rank) | planned %.0f MiB\n",
              peak_mib, peak_max_mib, plan.host_bytes() / (1 << 20));
  if (backend.cuda)
    std::printf("            peak device %.0f MiB (rank 0), %.0f MiB (largest rank) | planned %.0f MiB\n",
                dev_mib, dev_max_mib, plan.device_bytes() / (1 << 20));
  if (grid.world_size() > 1) {
    std::printf("comm        per step, rank 0 (payload):");
    for (size_t i = 0; i < comm_bytes.size(); ++i)
      if (comm_bytes[i] > 0) std::printf(" %s %.3f MiB", kGroupNames[i], comm_bytes[i] / (1 << 20));
    std::printf("\n");
  }
  double attention_ms = 0;  // the attention ops alone, per step (with --profile)
  for (const auto& [op, t] : profiled.times())
    if (op.rfind("attention_forward", 0) == 0 || op.rfind("attention_backward", 0) == 0)
      attention_ms += 1e3 * t.seconds / n;
  if (profile) {
    std::vector<std::pair<std::string, OpTime>> rows(profiled.times().begin(), profiled.times().end());
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    std::printf("profile     ms/step  share  calls/step  op\n");
    for (const auto& [op, t] : rows)
      std::printf("            %7.1f  %4.1f%%  %10.0f  %s\n", 1e3 * t.seconds / n,
                  100 * t.seconds / total, double(t.calls) / n, op.c_str());
  }
  std::printf("{\"context_length\": %lld, \"batch\": %lld, \"ranks\": %d, \"dp\": %d, \"sp\": %d, \"tp\": %d, "
              "\"ms_per_step\": %.2f, \"ms_per_step_mean\": %.2f, \"input_tokens_per_s\": %.1f, "
              "\"targets_per_s\": %.1f, \"model_gflop_per_step\": %.4f, \"gflops\": %.2f, "
              "\"sgemm_gflops\": %.2f, \"ratio_to_sgemm\": %.4f, \"peak_rss_mib\": %.1f, "
              "\"peak_rss_mib_max\": %.1f, \"peak_device_mib\": %.1f, \"planned_host_mib\": %.1f, "
              "\"planned_device_mib\": %.1f, \"peak_share\": %.4f, \"attention_ms\": %.2f, "
              "\"threads\": %d, \"comm_bytes\": {\"world\": %.0f, "
              "\"dp\": %.0f, \"sp\": %.0f, \"tp\": %.0f, \"dp_sp\": %.0f}}\n",
              static_cast<long long>(mc.context_length), static_cast<long long>(rc.batch_size),
              grid.world_size(), rc.dp, rc.sp, rc.tp, 1e3 * step_s, 1e3 * mean_s, inputs_per_s,
              targets_per_s, flops / 1e9, gflops, gemm_gflops, gflops / gemm_gflops, peak_mib,
              peak_max_mib, dev_max_mib, plan.host_bytes() / (1 << 20),
              plan.device_bytes() / (1 << 20), peak_share, attention_ms, current_threads(),
              comm_bytes[0], comm_bytes[1], comm_bytes[2],
              comm_bytes[3], comm_bytes[4]);
  return 0;
}

}  // namespace par
