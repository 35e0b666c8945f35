// `par bench` (without --decode): training steps of a config on random tokens, timed on
// every rank of the job, and the report: throughput, model FLOP/s against a plain gemm
// measured in the same process, peak memory against the plan, communication per group.
#pragma once

#include <cstdint>

#include "core/model_config.h"
#include "core/optimizer.h"
#include "launch/job.h"
#include "launch/options.h"

namespace par {

struct BenchOptions {
  int64_t warmup = 1;       // untimed steps first
  int64_t gemm_n = 2048;    // n of the n x n x n yardstick product
  bool gemm_defaulted = true;  // a GPU then gets a bigger one
  bool profile = false;     // the time of each backend op (rank 0)
};

// Collective over the job's ranks (the --dp x --sp x --tp grid of `rc`). Prints the report
// on rank 0; returns the exit status.
int bench_train(Job& job, const ModelConfig& mc, const OptimizerConfig& oc, const RunConfig& rc,
                BenchOptions bench);

}  // namespace par
