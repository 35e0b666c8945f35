// par_attention_bench: the CPU attention kernels alone, forward and backward, against a
// square sgemm timed in the same process. The two paths (sgemm per key block, the fused
// AVX-512 kernels) run interleaved for --rounds rounds and the best time of each is kept,
// so a shared machine's drift hits them alike.
//   build/bench/par_attention_bench [--keys 8192] [--queries 256] [--heads 8]
//                                   [--head-dim 32] [--rounds 5] [--threads 1]
//                                   [--k-block 64 128 256]
#include <cblas.h>
#include <omp.h>

#include <boost/program_options.hpp>
#include <cstdio>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench/wall_clock.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/blas_setup.h"
#include "kernels/cpu/cpu_ops.h"

namespace po = boost::program_options;
using par::AttentionShape;
using par::cpu::AttentionBlocking;

namespace {

using par::bench::wall_seconds;

using Buffer = std::vector<float>;

struct Variant {
  std::string name;
  AttentionBlocking blocking;
  double forward = 1e30, backward = 1e30;
};

}  // namespace

int main(int argc, char** argv) {
  par::select_blas_kernels(argv);
  int64_t keys = 8192, queries = 256, heads = 8, head_dim = 32, rounds = 5, threads = 1;
  std::vector<int64_t> k_blocks;
  po::options_description opts("par_attention_bench options");
  opts.add_options()("help", "this text")
      ("keys", po::value(&keys)->default_value(keys), "keys N (the context)")
      ("queries", po::value(&queries)->default_value(queries), "queries M (the latents, the last M positions)")
      ("heads", po::value(&heads)->default_value(heads), "heads")
      ("head-dim", po::value(&head_dim)->default_value(head_dim), "head dimension")
      ("rounds", po::value(&rounds)->default_value(rounds), "interleaved rounds (best kept)")
      ("threads", po::value(&threads)->default_value(threads), "OpenMP and BLAS threads")
      ("k-block", po::value(&k_blocks)->multitoken(), "key block sizes of the fused kernels to compare (default: the shipped one)");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, opts), vm);
  po::notify(vm);
  if (vm.count("help")) {
    std::printf("%s\n", (std::ostringstream() << opts).str().c_str());
    return 0;
  }
  omp_set_num_threads(int(threads));
  openblas_set_num_threads(int(threads));

  const int64_t w = heads * head_dim;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 1);
  auto random = [&](int64_t n) {
    Buffer v(static_cast<size_t>(n));
    for (auto& x : v) x = normal(rng);
    return v;
  };
  Buffer q = random(queries * w), k = random(keys * w), v = random(keys * w),
         g = random(queries * w), o(q.size()), lse(size_t(heads * queries)), dq(q.size()),
         dk(k.size()), dv(v.size());
  std::vector<int64_t> q_pos(static_cast<size_t>(queries)), k_pos(static_cast<size_t>(keys));
  for (int64_t i = 0; i < queries; ++i) q_pos[i] = keys - queries + i;
  for (int64_t j = 0; j < keys; ++j) k_pos[j] = j;
  AttentionShape s;
  s.nq = queries;
  s.nk = keys;
  s.heads = heads;
  s.head_dim = head_dim;
  s.q_pos = q_pos.data();
  s.k_pos = k_pos.data();
  s.scale = 1.0 / std::sqrt(double(head_dim));

  std::vector<Variant> variants(1);
  variants[0].name = "sgemm per key block";
  variants[0].blocking.fused = false;
  if (k_blocks.empty()) k_blocks.push_back(AttentionBlocking{}.k_block);
  for (int64_t kb : k_blocks) {
    Variant x;
    x.blocking.k_block = kb;
    x.name = "fused AVX-512, k_block " + std::to_string(kb);
    variants.push_back(x);
  }
  const int64_t n = 1024;
  Buffer a = random(n * n), b = random(n * n), c(size_t(n * n));
  double gemm = 1e30;
  par::cpu::Workspace ws;
  for (int64_t r = 0; r < rounds; ++r) {
    double t = wall_seconds();
    par::cpu::gemm<float>(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    gemm = std::min(gemm, wall_seconds() - t);
    for (Variant& x : variants) {
      t = wall_seconds();
      par::cpu::attention_forward_blocked<float>(s, q.data(), k.data(), v.data(), o.data(),
                                                 lse.data(), x.blocking, ws);
      x.forward = std::min(x.forward, wall_seconds() - t);
      t = wall_seconds();
      par::cpu::attention_backward_blocked<float>(s, q.data(), k.data(), v.data(), o.data(),
                                                  g.data(), lse.data(), dq.data(), dk.data(),
                                                  dv.data(), x.blocking, ws);
      x.backward = std::min(x.backward, wall_seconds() - t);
    }
  }
  // Products counted as in the model: forward q.k and p.v, backward four (not the recompute).
  const double fwd_flop = 4.0 * double(queries) * double(keys) * double(w);
  const double rate = 2.0 * double(n) * double(n) * double(n) / gemm / 1e9;
  std::printf("N=%ld M=%ld heads=%ld head_dim=%ld, %ld thread(s), best of %ld rounds\n", long(keys),
              long(queries), long(heads), long(head_dim), long(threads), long(rounds));
  std::printf("sgemm %ld^3: %.1f GFLOP/s\n", long(n), rate);
  for (const Variant& x : variants)
    std::printf("%-32s forward %8.2f ms (%.2f of sgemm)   backward %8.2f ms (%.2f of sgemm)\n",
                x.name.c_str(), x.forward * 1e3, fwd_flop / x.forward / 1e9 / rate,
                x.backward * 1e3, 2 * fwd_flop / x.backward / 1e9 / rate);
  return 0;
}
