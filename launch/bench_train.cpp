#include "launch/bench_train.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/counting_communicator.h"
#include "core/flops.h"
#include "core/param_layout.h"
#include "core/profiled_ops.h"
#include "launch/backend.h"
#include "launch/gpu_peaks.h"
#include "launch/host_memory.h"
#include "launch/memory_plan.h"
#include "launch/threads.h"
#include "train/train_step.h"

namespace par {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// GFLOP/s of a plain n x n x n matrix product through the backend's own gemm (BLAS sgemm
// on the CPU, cuBLAS in the chosen precision on a GPU), best of a few runs.
double gemm_rate(Ops<float>& ops, int64_t n) {
  // Drawn once: at n = 8192 each draw took about 0.4 s, and the rate is measured between
  // every two steps.
  static std::vector<float> host;
  if (host.size() != static_cast<size_t>(n * n)) {
    host.resize(static_cast<size_t>(n * n));
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(-1, 1);
    for (auto& x : host) x = u(rng);
  }
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

// One step's micro-batches of random tokens: every rank draws the same global batch and
// keeps its share (its replica's examples, its columns of each window).
struct Batches {
  std::vector<std::vector<int32_t>> data;
  std::vector<const int32_t*> micro;
  std::vector<int64_t> carry_c0;
  std::vector<const int64_t*> carry;
};

void draw_batches(const ModelConfig& mc, const RunConfig& rc, TrainStep& ts, Batches& out) {
  const int64_t W = mc.context_length + 1, mb = rc.micro_batch();
  const int64_t c0 = ts.model().window_begin(), cols = ts.model().window_columns();
  std::mt19937_64 rng(rc.seed);
  std::uniform_int_distribution<int32_t> tok(3, int32_t(mc.vocab_size - 1));
  out.data.assign(size_t(rc.accum_steps), {});
  std::vector<int32_t> window(static_cast<size_t>(W));
  for (auto& d : out.data) {
    for (int64_t b = 0; b < mb; ++b) {
      for (auto& t : window) t = tok(rng);
      if (b < ts.replica_first() || b >= ts.replica_first() + ts.replica_batch()) continue;
      d.insert(d.end(), window.begin() + c0, window.begin() + c0 + cols);
    }
    out.micro.push_back(d.data());
  }
  // Random tokens hold no EOS: each window is one document from its first column, so with
  // absolute positions this rank's first column continues from position c0.
  out.carry_c0.assign(size_t(ts.replica_batch()), c0);
  if (mc.absolute_positions()) out.carry.assign(out.micro.size(), out.carry_c0.data());
}

// This rank's times over the timed steps.
struct Timing {
  double total = 0, best = 1e30;  // seconds: all steps, the fastest
  double forward = 0, backward = 0, reduce = 0, optimizer = 0;
  int64_t targets = 0;
  double gemm_gflops = 0;  // the best yardstick measured between the steps
};

// The memory and traffic figures of the report.
struct Usage {
  double peak_mib = 0, peak_max_mib = 0;  // resident: rank 0's, the largest rank's
  double dev_mib = 0, dev_max_mib = 0;    // device (GPU backends)
  std::vector<double> comm_bytes;         // per step, this rank, by group (kGroupNames)
};

void print_report(const ModelConfig& mc, const RunConfig& rc, const ProcessGrid& grid,
                  const Backend& backend, const Timing& t, double step_s, const Usage& u,
                  const MemoryPlan& plan, int64_t gemm_n, const ProfiledOps<float>& profiled,
                  bool profile) {
  const double n = double(rc.steps);
  const double mean_s = t.total / n;
  const double flops = train_flops_per_example(mc) * double(rc.batch_size);
  const double gflops = flops / step_s / 1e9;
  const double inputs_per_s = double(rc.batch_size * mc.context_length) / step_s;
  const double targets_per_s = double(t.targets) / n / step_s;
  // On a known GPU: the share of the card's dense rate in this precision the step reaches.
  const std::optional<DensePeak> peak =
      backend.cuda ? dense_peak(backend.description, rc.precision) : std::nullopt;
  const double peak_share = peak ? gflops / 1e3 / (peak->tflops * grid.world_size()) : 0;

  std::printf("model       %s | batch %lld | %d rank(s) (dp %d, sp %d, tp %d) x %d threads | %s%s\n",
              mc.summary().c_str(), static_cast<long long>(rc.batch_size), grid.world_size(),
              rc.dp, rc.sp, rc.tp, current_threads(), backend.description.c_str(),
              rc.storage_note(mc).c_str());
  // On a GPU the phases are the host's time to queue them, each ending where something
  // first waits for the device (the loss, the gradient norm): --profile says where the
  // device's time goes.
  std::printf("step        %.1f ms best, %.1f ms mean of %lld (rank 0 mean%s: forward %.1f, backward "
              "%.1f, gradient sums %.1f, optimizer %.1f)\n",
              1e3 * step_s, 1e3 * mean_s, static_cast<long long>(rc.steps),
              backend.cuda ? ", as queued" : "", 1e3 * t.forward / n, 1e3 * t.backward / n,
              1e3 * t.reduce / n, 1e3 * t.optimizer / n);
  std::printf("throughput  %.0f input tokens/s | %.0f targets/s\n", inputs_per_s, targets_per_s);
  std::printf("compute     %.2f model GFLOP/step | %.1f GFLOP/s achieved | gemm %lld^3 (all ranks): %.1f GFLOP/s | ratio %.2f\n",
              flops / 1e9, gflops, static_cast<long long>(gemm_n), t.gemm_gflops,
              gflops / t.gemm_gflops);
  if (peak)
    std::printf("            %.1f%% of the dense %s peak of %d %s (%.1f TFLOP/s each)\n",
                100 * peak_share, rc.precision.c_str(), grid.world_size(), peak->card.c_str(),
                peak->tflops);
  std::printf("memory      peak resident %.0f MiB (rank 0), %.0f MiB (largest rank) | planned %.0f MiB\n",
              u.peak_mib, u.peak_max_mib, plan.host_bytes() / (1 << 20));
  if (backend.cuda)
    std::printf("            peak device %.0f MiB (rank 0), %.0f MiB (largest rank) | planned %.0f MiB\n",
                u.dev_mib, u.dev_max_mib, plan.device_bytes() / (1 << 20));
  if (grid.world_size() > 1) {
    std::printf("comm        per step, rank 0 (payload):");
    for (size_t i = 0; i < u.comm_bytes.size(); ++i)
      if (u.comm_bytes[i] > 0)
        std::printf(" %s %.3f MiB", ProcessGrid::name(ProcessGrid::kGroupNames[i]),
                    u.comm_bytes[i] / (1 << 20));
    std::printf("\n");
  }
  double attention_ms = 0;  // the attention ops alone, per step (with --profile)
  for (const auto& [op, ot] : profiled.times())
    if (op.rfind("attention_forward", 0) == 0 || op.rfind("attention_backward", 0) == 0)
      attention_ms += 1e3 * ot.seconds / n;
  if (profile) {
    std::vector<std::pair<std::string, OpTime>> rows(profiled.times().begin(), profiled.times().end());
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    std::printf("profile     ms/step  share  calls/step  op\n");
    for (const auto& [op, ot] : rows)
      std::printf("            %7.1f  %4.1f%%  %10.0f  %s\n", 1e3 * ot.seconds / n,
                  100 * ot.seconds / t.total, double(ot.calls) / n, op.c_str());
  }
  const std::vector<double>& c = u.comm_bytes;
  std::printf("{\"context_length\": %lld, \"batch\": %lld, \"ranks\": %d, \"dp\": %d, \"sp\": %d, \"tp\": %d, "
              "\"ms_per_step\": %.2f, \"ms_per_step_mean\": %.2f, \"input_tokens_per_s\": %.1f, "
              "\"targets_per_s\": %.1f, \"model_gflop_per_step\": %.4f, \"gflops\": %.2f, "
              "\"sgemm_gflops\": %.2f, \"ratio_to_sgemm\": %.4f, \"peak_rss_mib\": %.1f, "
              "\"peak_rss_mib_max\": %.1f, \"peak_device_mib\": %.1f, \"planned_host_mib\": %.1f, "
              "\"planned_device_mib\": %.1f, \"peak_share\": %.4f, \"attention_ms\": %.2f, "
              "\"threads\": %d, \"parameters\": %lld, \"comm_bytes\": {\"world\": %.0f, "
              "\"dp\": %.0f, \"sp\": %.0f, \"tp\": %.0f, \"dp_sp\": %.0f}}\n",
              static_cast<long long>(mc.context_length), static_cast<long long>(rc.batch_size),
              grid.world_size(), rc.dp, rc.sp, rc.tp, 1e3 * step_s, 1e3 * mean_s, inputs_per_s,
              targets_per_s, flops / 1e9, gflops, t.gemm_gflops, gflops / t.gemm_gflops,
              u.peak_mib, u.peak_max_mib, u.dev_max_mib, plan.host_bytes() / (1 << 20),
              plan.device_bytes() / (1 << 20), peak_share, attention_ms, current_threads(),
              static_cast<long long>(ParamLayout(mc).num_parameters()), c[0],
              c[1], c[2], c[3], c[4]);
}

}  // namespace

int bench_train(Job& job, const ModelConfig& mc, const OptimizerConfig& oc, const RunConfig& rc,
                BenchOptions bench) {
  job.watch_collectives(rc.collective_timeout);
  ProcessGrid grid;
  job.agree([&] { grid = job.make_grid(GridShape{rc.dp, rc.sp, rc.tp}); });
  const std::string thread_warning = apply_threads(rc.threads, job.local_size());
  const bool rank0 = grid.world_rank() == 0;
  if (rank0) warn_threads("bench", thread_warning);
  // Count what each group carries, to report the communication volume per step: the host
  // groups (in kGroupNames order), and on GPUs the communicators attached for the model's
  // buffers (NCCL, below), into their groups' totals.
  std::vector<std::pair<size_t, CountingCommunicator*>> counters;  // (group, its counter)
  auto counted = [&](size_t group, std::unique_ptr<Communicator> c) -> std::unique_ptr<Communicator> {
    auto counting = std::make_unique<CountingCommunicator>(std::move(c));
    counters.emplace_back(group, counting.get());
    return counting;
  };
  size_t next_group = 0;
  grid.decorate([&](std::unique_ptr<Communicator> c) { return counted(next_group++, std::move(c)); });

  Backend backend;
  job.agree([&] { backend = make_backend(rc.device, rc.precision, grid, rc.attention); });
  job.agree([&] { connect_backend(backend, grid, rc.collective_timeout); });
  grid.decorate_device([&](ProcessGrid::GroupName g, std::unique_ptr<Communicator> c) {
    return counted(size_t(g), std::move(c));
  });
  if (bench.gemm_defaulted && backend.cuda) bench.gemm_n = 8192;  // a GPU needs a bigger product
  // The memory each rank needs, before anything is allocated: the same plan as training's,
  // with the benchmark's own batches and yardstick instead of a loader and checkpoints.
  PlanRequest request = plan_request(mc, rc, backend.cuda);
  request.gemm_n = bench.gemm_n;
  request.data_bytes = [](const PlanRequest& t) {
    return double(t.accum_steps) * double(t.micro_batch) *
           double(t.model.context_length / t.sp + 1) * sizeof(int32_t);
  };
  const MemoryBudget budget = memory_budget(backend, job.local_size());
  const MemoryPlan plan = plan_memory(request);
  if (rank0) std::fprintf(stderr, "memory per rank (estimate): %s\n", describe(plan, budget).c_str());
  job.agree([&] { require_fits(request, RunShape{rc.batch_size, rc.accum_steps, rc.dp}, budget); });

  // The machine's sgemm rate: the best of measurements before, between and after the
  // steps. On a shared or throttling machine one measurement alone can be far off. On a
  // GPU on a backend of its own, so that its 3 n^2 floats (768 MiB at n = 8192) and its
  // bf16 copies stay out of the peak device memory the report gives for the step.
  Backend yardstick_backend;
  if (backend.cuda)
    yardstick_backend = make_backend(rc.device, rc.precision, grid, rc.attention);
  Ops<float>& yardstick = backend.cuda ? *yardstick_backend.ops : *backend.ops;
  Timing t;
  t.gemm_gflops = gemm_rate(yardstick, bench.gemm_n);
  ProfiledOps<float> profiled(*backend.ops);
  Ops<float>& ops = bench.profile ? static_cast<Ops<float>&>(profiled) : *backend.ops;
  TrainStep ts(mc, oc, rc.training(mc), ops, grid);
  ts.initialize(rc.seed);
  Batches batches;
  draw_batches(mc, rc, ts, batches);
  for (int64_t s = 0; s < bench.warmup; ++s) ts.run(s, batches.micro, batches.carry);
  profiled.reset();
  for (auto& [g, c] : counters) c->reset();
  for (int64_t s = 0; s < rc.steps; ++s) {
    grid.world()->barrier();
    const auto t0 = Clock::now();
    const StepResult r = ts.run(bench.warmup + s, batches.micro, batches.carry);
    // A step ends with the optimizer's kernels queued on a GPU: the step is done when they are.
    ops.synchronize();
    const double dt = since(t0);
    t.total += dt;
    t.best = std::min(t.best, dt);
    // Interleaved with the steps, so the best sgemm and the best step sample the same
    // stretch of machine time.
    t.gemm_gflops = std::max(t.gemm_gflops, gemm_rate(yardstick, bench.gemm_n));
    t.forward += r.forward_s;
    t.backward += r.backward_s;
    t.reduce += r.reduce_s;
    t.optimizer += r.optimizer_s;
    t.targets += r.valid;
  }
  // Rates use the fastest step and the fastest sgemm: on a shared machine the least
  // disturbed measurement of each is the one that says what the code does.
  Usage u;  // per step, this rank, by group (before the summary's own)
  u.comm_bytes.assign(std::size(ProcessGrid::kGroupNames), 0.0);
  for (auto& [g, c] : counters) u.comm_bytes[g] += double(c->bytes()) / double(rc.steps);
  const double step_s = grid.world()->all_reduce_value(t.best, ReduceOp::kMax);
  // The yardstick for a job is the machine's rate: every rank's sgemm, measured while the
  // others run theirs (interleaved with the steps), summed.
  t.gemm_gflops = grid.world()->all_reduce_value(t.gemm_gflops, ReduceOp::kSum);
  u.peak_mib = double(peak_resident_bytes()) / (1 << 20);
  u.peak_max_mib = grid.world()->all_reduce_value(u.peak_mib, ReduceOp::kMax);
  // Device memory (GPU backends): what this rank's backend held at most, all ranks' largest.
  u.dev_mib = double(device_peak_bytes(backend)) / (1 << 20);
  u.dev_max_mib = grid.world()->all_reduce_value(u.dev_mib, ReduceOp::kMax);
  if (rank0)
    print_report(mc, rc, grid, backend, t, step_s, u, plan, bench.gemm_n, profiled, bench.profile);
  return 0;
}

}  // namespace par
