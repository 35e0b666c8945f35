// par_latent_attention_bench: what a decoding step's latent self-attention costs each
// sample, and whether that cost is arithmetic or reading memory (issue 17's question: how
// much of a step grows with the number of samples, and how far that part could shrink).
//
// Each sample's newest latent attends over its own block of M cached latents, one call per
// layer (core/decoder.cpp; kernels/cpu/attention_one_query.cpp): a sample adds the reading
// of its visible rows of K and V, --visible x d x 2 floats, which no other sample shares.
// Three figures, each the best of --rounds interleaved rounds (a shared machine drifts):
//   1. the read rate of memory: --threads threads summing a buffer of --cold-mib MiB;
//   2. CpuOps<float>::attention_forward on 1 and --samples samples with the caches hot
//      (the same ones every call, so they stay in L2 and L3);
//   3. the same with the caches cold (a new set every call, taken in turn from --cold-mib
//      MiB of them, more than L3 holds), as in a step, where the weights, the rotary rows
//      and the other layers' caches pass through L3 between two calls of a layer.
//   build/bench/par_latent_attention_bench [--samples 4] [--visible 192] [--threads 2]
#include <omp.h>

#include <boost/program_options.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "bench/bench_options.h"
#include "bench/wall_clock.h"
#include "kernels/cpu/cpu_ops.h"

namespace po = boost::program_options;

namespace {

using par::bench::wall_seconds;

// Bytes per second, the threads each summing their share of `data` once per pass.
double read_rate(const std::vector<float>& data) {
  const int64_t n = int64_t(data.size());
  float total = 0;
  const double t0 = wall_seconds();
  const int passes = 3;
  for (int p = 0; p < passes; ++p) {
    float sum = 0;
#pragma omp parallel for simd reduction(+ : sum) schedule(static)
    for (int64_t i = 0; i < n; ++i) sum += data[size_t(i)];
    total += sum;
  }
  const double t = wall_seconds() - t0;
  if (total == 12345.0f) std::printf(" ");  // the sums are used
  return double(passes) * double(n) * sizeof(float) / t;
}

// `sets` sets of the caches of `samples` samples (M rows of d each for K and for V), and a
// step's queries and outputs.
struct Caches {
  int64_t samples, M, heads, head_dim, d, sets;
  std::vector<float> k, v, q, o, lse;
  std::vector<int64_t> k_pos, q_pos;

  Caches(int64_t samples_, int64_t M_, int64_t heads_, int64_t head_dim_, int64_t visible,
         int64_t sets_)
      : samples(samples_), M(M_), heads(heads_), head_dim(head_dim_), d(heads_ * head_dim_),
        sets(sets_) {
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    k.resize(size_t(sets * samples * M * d));
    v.resize(k.size());
    for (auto& x : k) x = normal(rng);
    for (auto& x : v) x = normal(rng);
    q.resize(size_t(samples * d));
    for (auto& x : q) x = normal(rng);
    o.resize(q.size());
    lse.resize(size_t(samples * heads));
    // The decoder's block: rows not filled yet at a far position, past every query.
    k_pos.resize(size_t(M));
    for (int64_t j = 0; j < M; ++j) k_pos[size_t(j)] = j < visible ? j : (int64_t(1) << 40);
    q_pos.assign(1, visible - 1);
  }

  // Seconds per call of `batch` samples; cold: set c % sets for call c, else set 0.
  double attend(par::cpu::CpuOps<float>& ops, int64_t batch, bool cold, int calls) {
    par::AttentionShape s{batch, 1, M, heads, head_dim, q_pos.data(), k_pos.data(), nullptr,
                          1.0 / std::sqrt(double(head_dim))};
    const size_t set_floats = size_t(samples * M * d);
    const double t0 = wall_seconds();
    for (int c = 0; c < calls; ++c) {
      const size_t at = cold ? size_t(c % sets) * set_floats : 0;
      ops.attention_forward(s, q.data(), k.data() + at, v.data() + at, o.data(), lse.data());
    }
    return (wall_seconds() - t0) / calls;
  }
};

}  // namespace

int run(int argc, char** argv) {
  int64_t samples = 4, latents = 256, visible = 192, heads = 8, head_dim = 32, cold_mib = 256;
  int rounds = 5, threads = 2;
  po::options_description opts("par_latent_attention_bench options");
  opts.add_options()("help", "this text")(
      "samples", po::value(&samples)->default_value(samples), "samples of the second call")(
      "latents", po::value(&latents)->default_value(latents), "rows of each sample's cache")(
      "visible", po::value(&visible)->default_value(visible),
      "rows filled (a step sees 129 to 256, 192 on average, on cpu-131k)")(
      "heads", po::value(&heads)->default_value(heads), "self-attention heads")(
      "head-dim", po::value(&head_dim)->default_value(head_dim), "head width")(
      "cold-mib", po::value(&cold_mib)->default_value(cold_mib),
      "MiB of cache sets the cold calls take in turn, and of the read-rate buffer")(
      "rounds", po::value(&rounds)->default_value(rounds), "interleaved rounds, best kept")(
      "threads", po::value(&threads)->default_value(threads), "threads");
  po::variables_map vm;
  if (const int rc = par::bench::parse_options(
          argc, argv, opts, vm, "par_latent_attention_bench",
          "decoding's latent self-attention per sample, with its caches hot and cold, against "
          "the memory's read rate");
      rc >= 0)
    return rc;
  if (samples < 2 || visible < 1 || visible > latents || cold_mib < 1) {
    std::fprintf(stderr, "par_latent_attention_bench: error: needs --samples >= 2, "
                         "1 <= --visible <= --latents and --cold-mib >= 1\n");
    return 2;
  }
  omp_set_num_threads(threads);
  const int64_t set_bytes = samples * latents * heads * head_dim * 2 * int64_t(sizeof(float));
  const int64_t sets = std::max<int64_t>(2, (cold_mib << 20) / set_bytes);
  Caches caches(samples, latents, heads, head_dim, visible, sets);
  std::vector<float> buffer(size_t(cold_mib << 20) / sizeof(float), 1.0f);
  par::cpu::CpuOps<float> ops;
  const int calls = int(std::max<int64_t>(200, 4 * sets));
  double rate = 0, hot1 = 1e30, hotK = 1e30, cold1 = 1e30, coldK = 1e30;
  for (int r = 0; r < rounds; ++r) {
    rate = std::max(rate, read_rate(buffer));
    hot1 = std::min(hot1, caches.attend(ops, 1, false, calls));
    hotK = std::min(hotK, caches.attend(ops, samples, false, calls));
    cold1 = std::min(cold1, caches.attend(ops, 1, true, calls));
    coldK = std::min(coldK, caches.attend(ops, samples, true, calls));
  }
  // What each sample reads, and what it adds to a call.
  const double bytes = double(visible * heads * head_dim * 2) * sizeof(float);
  const double hot_each = (hotK - hot1) / double(samples - 1);
  const double cold_each = (coldK - cold1) / double(samples - 1);
  std::printf("memory read rate: %.1f GB/s on %d thread%s\n", rate / 1e9, threads,
              threads == 1 ? "" : "s");
  std::printf("one call (one layer), %ld rows of K and V visible (%.0f KiB a sample), us:\n",
              long(visible), bytes / 1024);
  std::printf("  caches hot:  1 sample %7.2f, %ld samples %7.2f, each sample more %6.2f\n",
              hot1 * 1e6, long(samples), hotK * 1e6, hot_each * 1e6);
  std::printf("  caches cold: 1 sample %7.2f, %ld samples %7.2f, each sample more %6.2f "
              "(%.1f GB/s)\n",
              cold1 * 1e6, long(samples), coldK * 1e6, cold_each * 1e6, bytes / cold_each / 1e9);
  std::printf("  reading a sample's rows at the read rate: %.2f\n", bytes / rate * 1e6);
  return 0;
}

int main(int argc, char** argv) { return run(argc, argv); }
