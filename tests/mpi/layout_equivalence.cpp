// One parallel layout against one process, under mpirun: for the tiny config with residual
// and cross-attend dropout on, two micro-batches per step, the layout's loss and every
// parameter's gradient (gathered from the ranks' slices) must equal one process's, and so
// must the parameters after a few training steps.
//
//   mpirun -np DP*SP*TP par_mpi_layout_test DP SP TP
//
// Tolerances (float32 arithmetic, the same terms summed in other orders): loss 1e-6
// relative; gradients 1e-5 of the largest gradient entry; parameters after 3 Adam steps
// 1% of the largest possible change (lr x steps = 3e-3): Adam divides each gradient by
// its own magnitude, so a gradient near zero that rounds differently moves its parameter
// by a visible fraction of lr (seen: up to 0.25% of it). Every rank exits with the same
// status.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "core/error.h"
#include "kernels/cpu/cpu_ops.h"
#include "parallel/mpi_environment.h"
#include "parallel/mpi_error.h"
#include "train/train_step.h"

namespace par {
namespace {

ModelConfig tiny() {
  ModelConfig c{.vocab_size = 37, .d_model = 32, .context_length = 32, .num_latents = 8,
                .num_layers = 2, .cross_heads = 4, .self_heads = 2, .mlp_factor = 2};
  return c;
}

struct Outcome {
  std::vector<double> losses;       // steps 0..2
  std::vector<float> first_grads;   // whole model, after step 0's backward (rank 0)
  std::vector<float> final_params;  // whole model, after 3 steps (rank 0)
};

// Trains 3 steps on `grid`; every rank draws the same global batches and keeps its share.
Outcome train(const ModelConfig& mc, const ProcessGrid& grid) {
  TrainingConfig tc;
  tc.micro_batch = 4;  // 2 micro-batches a step
  tc.dropout = 0.1;
  tc.cross_attend_dropout = 0.2;
  tc.seed = 11;
  OptimizerConfig oc;
  oc.lr = 1e-3;
  cpu::CpuOps<float> ops;
  TrainStep ts(mc, oc, tc, ops, grid);
  ts.initialize(tc.seed);
  const int64_t W = mc.context_length + 1, c0 = ts.model().window_begin();
  const int64_t cols = ts.model().window_columns();
  std::mt19937_64 rng(5);
  Outcome out;
  for (int64_t step = 0; step < 3; ++step) {
    std::vector<std::vector<int32_t>> data(2);
    std::vector<const int32_t*> micro;
    for (auto& d : data) {
      for (int64_t b = 0; b < tc.micro_batch; ++b) {
        std::vector<int32_t> w(static_cast<size_t>(W));
        for (auto& t : w) t = int32_t(rng() % 37);  // some PAD inputs and targets
        if (b >= ts.replica_first() && b < ts.replica_first() + ts.replica_batch())
          d.insert(d.end(), w.begin() + c0, w.begin() + c0 + cols);
      }
      micro.push_back(d.data());
    }
    StepResult r = ts.compute_gradients(step, micro);
    if (step == 0) out.first_grads = ts.gather_gradients();
    ts.apply_update(step, r);
    out.losses.push_back(r.loss_nats);
  }
  std::vector<float> m, v;
  ts.gather_state(out.final_params, m, v);
  return out;
}

int run(int argc, char** argv, MpiEnvironment& env) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: par_mpi_layout_test DP SP TP\n");
    return 2;
  }
  const GridShape shape{std::atoi(argv[1]), std::atoi(argv[2]), std::atoi(argv[3])};
  const ProcessGrid grid(env.world(), shape);
  const ModelConfig mc = tiny();
  const Outcome got = train(mc, grid);
  int failures = 0;
  if (grid.world_rank() == 0) {
    const ProcessGrid one;
    const Outcome want = train(mc, one);
    auto fail = [&](const std::string& what) {
      std::fprintf(stderr, "layout (%d,%d,%d): %s\n", shape.dp, shape.sp, shape.tp, what.c_str());
      ++failures;
    };
    for (size_t s = 0; s < want.losses.size(); ++s)
      if (std::abs(got.losses[s] - want.losses[s]) > 1e-6 * std::abs(want.losses[s]))
        fail(cat("loss of step ", s, ": ", got.losses[s], " vs ", want.losses[s]));
    double scale = 0;
    for (float g : want.first_grads) scale = std::max(scale, double(std::abs(g)));
    const ParamLayout full(mc);
    for (const ParamInfo& p : full.params()) {
      double err = 0;
      for (int64_t i = 0; i < p.numel; ++i)
        err = std::max(err, double(std::abs(got.first_grads[size_t(p.offset + i)] -
                                            want.first_grads[size_t(p.offset + i)])));
      if (err > 1e-5 * scale) fail(cat("gradient of ", p.name, " off by ", err, " (largest entry ", scale, ")"));
    }
    double err = 0;
    for (size_t i = 0; i < want.final_params.size(); ++i)
      err = std::max(err, double(std::abs(got.final_params[i] - want.final_params[i])));
    if (err > 0.01 * 3e-3) fail(cat("parameters after 3 steps off by ", err));
    std::printf("layout (%d,%d,%d): losses %.9f %.9f %.9f vs %.9f %.9f %.9f; parameters within "
                "%.2g: %s\n",
                shape.dp, shape.sp, shape.tp, got.losses[0], got.losses[1], got.losses[2],
                want.losses[0], want.losses[1], want.losses[2], err, failures ? "FAILED" : "ok");
  }
  const int64_t worst = grid.world()->all_reduce_value(int64_t(failures), ReduceOp::kMax);
  return worst ? 1 : 0;
}

}  // namespace
}  // namespace par

int main(int argc, char** argv) {
  par::MpiEnvironment env(&argc, &argv);
  try {
    return par::run(argc, argv, env);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "par_mpi_layout_test: %s: %s\n", par::rank_on_host().c_str(), e.what());
    env.abort(1);
  }
}
