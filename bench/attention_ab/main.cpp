// The driver of bench/attention_ab.sh: times the fused attention of two source trees
// ("old" and "new") in one process, alternating which goes first in each round (on this
// kind of machine the second of two back-to-back runs is often slower), and prints each
// round's new/old time ratios, their medians, and how far the outputs differ.
//   attention_ab [keys 131072] [threads 2] [rounds 8] [queries 256] [heads 8] [head_dim 32]
//                [old k_block] [new k_block]      (0: each tree's default)
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

extern "C" {
using Entry = void(int64_t, int64_t, int64_t, int64_t, const int64_t*, const int64_t*,
                   const float*, const float*, const float*, const float*, float*, float*,
                   float*, float*, float*, int64_t, double*, double*);
Entry ab_run_old, ab_run_new;
}

namespace {

// 2 MiB-aligned and huge-page backed, as par's own allocations of this size are.
float* buffer(size_t n) {
  const size_t bytes = (n * sizeof(float) + (2u << 20) - 1) / (2u << 20) * (2u << 20);
  void* p = std::aligned_alloc(2u << 20, bytes);
  if (!p) std::abort();
  madvise(p, bytes, MADV_HUGEPAGE);
  return static_cast<float*>(p);
}

void fill(float* x, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    x[i] = float(seed >> 9) * (1.0f / 8388608.0f) - 0.5f;
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Outputs {
  float *o, *lse, *dq, *dk, *dv;
  Outputs(size_t q_size, size_t k_size, size_t lse_size)
      : o(buffer(q_size)), lse(buffer(lse_size)), dq(buffer(q_size)), dk(buffer(k_size)),
        dv(buffer(k_size)) {}
};

double max_rel_diff(const float* a, const float* b, size_t n) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < n; ++i) {
    diff = std::max(diff, double(std::fabs(a[i] - b[i])));
    scale = std::max(scale, double(std::fabs(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

}  // namespace

int main(int argc, char** argv) {
  auto arg = [&](int i, int64_t fallback) { return argc > i ? std::atoll(argv[i]) : fallback; };
  const int64_t nk = arg(1, 131072), threads = arg(2, 2), rounds = arg(3, 8), nq = arg(4, 256),
                heads = arg(5, 8), head_dim = arg(6, 32);
  const int64_t k_block[2] = {arg(7, 0), arg(8, 0)};
  omp_set_num_threads(int(threads));
  const size_t w = size_t(heads * head_dim), q_size = size_t(nq) * w, k_size = size_t(nk) * w;
  std::vector<int64_t> q_pos(static_cast<size_t>(nq)), k_pos(static_cast<size_t>(nk));
  for (int64_t j = 0; j < nk; ++j) k_pos[size_t(j)] = j;
  for (int64_t i = 0; i < nq; ++i) q_pos[size_t(i)] = nk - nq + i;
  float *q = buffer(q_size), *k = buffer(k_size), *v = buffer(k_size), *g = buffer(q_size);
  fill(q, q_size, 1);
  fill(k, k_size, 2);
  fill(v, k_size, 3);
  fill(g, q_size, 4);
  Outputs out[2] = {Outputs(q_size, k_size, size_t(heads * nq)),
                    Outputs(q_size, k_size, size_t(heads * nq))};
  Entry* entry[2] = {ab_run_old, ab_run_new};
  auto run = [&](int side, double* f, double* b) {
    Outputs& o = out[side];
    entry[side](nq, nk, heads, head_dim, q_pos.data(), k_pos.data(), q, k, v, g, o.o, o.lse,
                o.dq, o.dk, o.dv, k_block[side], f, b);
  };

  std::vector<double> fwd[2], bwd[2], fwd_ratio, bwd_ratio;
  for (int side = 0; side < 2; ++side) {  // warm-up: first touches, scratch buffers
    double f, b;
    run(side, &f, &b);
  }
  for (int64_t r = 0; r < rounds; ++r) {
    for (int side_index = 0; side_index < 2; ++side_index) {
      const int side = (r % 2 == 0) ? side_index : 1 - side_index;  // alternate the order
      double f, b;
      run(side, &f, &b);
      fwd[side].push_back(f);
      bwd[side].push_back(b);
    }
    fwd_ratio.push_back(fwd[1].back() / fwd[0].back());
    bwd_ratio.push_back(bwd[1].back() / bwd[0].back());
    std::printf("round %2lld (%s first): forward %7.1f -> %7.1f ms (%.3f)  backward %7.1f -> %7.1f ms (%.3f)\n",
                static_cast<long long>(r), r % 2 == 0 ? "old" : "new", fwd[0].back() * 1e3,
                fwd[1].back() * 1e3, fwd_ratio.back(), bwd[0].back() * 1e3, bwd[1].back() * 1e3,
                bwd_ratio.back());
  }
  std::printf("keys %lld, queries %lld, heads %lld x %lld, %lld threads, %lld rounds, key blocks %lld -> %lld (0: default)\n",
              static_cast<long long>(nk), static_cast<long long>(nq),
              static_cast<long long>(heads), static_cast<long long>(head_dim),
              static_cast<long long>(threads), static_cast<long long>(rounds),
              static_cast<long long>(k_block[0]), static_cast<long long>(k_block[1]));
  std::printf("new/old time, median of the rounds: forward %.3f, backward %.3f\n",
              median(fwd_ratio), median(bwd_ratio));
  std::printf("best times: forward %.1f -> %.1f ms, backward %.1f -> %.1f ms\n",
              *std::min_element(fwd[0].begin(), fwd[0].end()) * 1e3,
              *std::min_element(fwd[1].begin(), fwd[1].end()) * 1e3,
              *std::min_element(bwd[0].begin(), bwd[0].end()) * 1e3,
              *std::min_element(bwd[1].begin(), bwd[1].end()) * 1e3);
  std::printf("largest difference, relative to the largest value: o %.2e, lse %.2e, dq %.2e, dk %.2e, dv %.2e\n",
              max_rel_diff(out[1].o, out[0].o, q_size),
              max_rel_diff(out[1].lse, out[0].lse, size_t(heads * nq)),
              max_rel_diff(out[1].dq, out[0].dq, q_size), max_rel_diff(out[1].dk, out[0].dk, k_size),
              max_rel_diff(out[1].dv, out[0].dv, k_size));
}
