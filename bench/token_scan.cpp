// par_token_scan_bench: where decoding's token-table attention (kernels/cpu/token_attention.cpp)
// stands against this CPU's own arithmetic rate, for the question of issue 17: how much of a
// step grows with the number of samples, and how far that part could shrink.
//
// Three figures, each the best of --rounds interleaved rounds (a shared machine drifts):
//   1. the 512-bit multiply-add rate: 12 independent chains in registers (the FP ports'
//      peak; everything below is in units of its cycle, "slots");
//   2. the kernel's arithmetic alone, over one work item's rows in L2: the score of 16 keys
//      for one query-head (16 multiply-adds on the rotary rows, in the kernel's four chains)
//      in a bare loop, and the kernel's bounded scan (score, exponential and sum);
//   3. CpuOps<float>::token_attention_forward on a cpu-131k-like window (--keys keys of
//      random tokens grouped by token, --heads heads of --head-dim, --bands rotary bands,
//      --vocab tokens) for 1 and --samples queries: the extra queries' cost per query-head
//      and 16 keys is the part of a decoding step that each sample adds;
//   4. with --own-keys G: each sample's G own keys (random tokens after the window, grouped
//      per sample), attended in the samples' call over the shared keys
//      (TokenAttentionShape::own_group) against a call of their own (batch = samples).
// All on one thread unless --threads says otherwise (3 only: 1 and 2 are per core).
//   build/bench/par_token_scan_bench [--keys 131072] [--samples 4] [--rounds 5] [--threads 1]
//                                    [--own-keys 0]
#include <immintrin.h>
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
#include "core/rotary.h"
#include "core/token_groups.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/token_scan.h"

namespace po = boost::program_options;

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_ps(), which trips
// -Wmaybe-uninitialized inside its own header wherever they are inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#if defined(__AVX512F__) && defined(__AVX512DQ__)
namespace {

using par::bench::wall_seconds;

// Multiply-adds per second, 12 chains of 512-bit ones in registers.
double fma_rate() {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(1.0f + 1e-3f * float(i));
  const __m512 m = _mm512_set1_ps(0.9999f), c = _mm512_set1_ps(1e-4f);
  const long n = 20'000'000;
  const double t0 = wall_seconds();
  for (long k = 0; k < n; ++k) {
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
    // Keeps the chains in registers and the loop from being folded.
    __asm__ volatile("" : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(a[4]),
                     "+v"(a[5]), "+v"(a[6]), "+v"(a[7]), "+v"(a[8]), "+v"(a[9]), "+v"(a[10]),
                     "+v"(a[11]));
  }
  return 12.0 * double(n) / (wall_seconds() - t0);
}

// Rotary rows of `keys` keys (8 bands) and nq query-heads' coefficients, scores below 0.
struct ScanInput {
  int64_t keys, nq;
  std::vector<float> cs, sn, coef;
  ScanInput(int64_t k, int64_t n)
      : keys(k), nq(n), cs(size_t(8 * k)), sn(cs.size()), coef(size_t(17 * n)) {
    for (int64_t i = 0; i < 8 * keys; ++i) {
      cs[size_t(i)] = float(std::cos(0.001 * double(i)));
      sn[size_t(i)] = float(std::sin(0.001 * double(i)));
    }
    for (size_t i = 0; i < coef.size(); ++i) coef[i] = 0.1f * float(std::sin(double(i)));
    for (int64_t u = 0; u < nq; ++u) coef[size_t(u) * 17] = -2.0f;  // as bounded
  }
};

// Seconds per (query-head, 16 keys) of the score alone: 8 bands' rows of 16 keys in
// registers, each query-head's 17 coefficients broadcast from memory, in the four chains of
// score16 (kernels/cpu/token_scan_avx512.cpp) written out for 8 bands: a change there
// belongs here too, or this stops measuring the kernel's arithmetic.
double bare_score(int nq) {
  const int64_t keys = 2048, reps = 400;
  const ScanInput in(keys, nq);
  std::vector<float> sums(16 * size_t(nq));
  const double t0 = wall_seconds();
  for (int64_t r = 0; r < reps; ++r)
    for (int64_t j = 0; j < keys; j += 16) {
      __m512 rc[8], rs[8];
      for (int b = 0; b < 8; ++b) {
        rc[b] = _mm512_loadu_ps(&in.cs[size_t(b * keys + j)]);
        rs[b] = _mm512_loadu_ps(&in.sn[size_t(b * keys + j)]);
      }
      for (int u = 0; u < nq; ++u) {
        const float* c = &in.coef[size_t(u) * 17];
        auto bc = [&](int i) { return _mm512_set1_ps(c[i]); };
        __m512 a0 = _mm512_fmadd_ps(rc[0], bc(1), bc(0));
        __m512 a1 = _mm512_mul_ps(rc[1], bc(2));
        __m512 a2 = _mm512_mul_ps(rs[0], bc(9));
        __m512 a3 = _mm512_mul_ps(rs[1], bc(10));
        for (int b = 2; b < 8; b += 2) {
          a0 = _mm512_fmadd_ps(rc[b], bc(1 + b), a0);
          a1 = _mm512_fmadd_ps(rc[b + 1], bc(2 + b), a1);
          a2 = _mm512_fmadd_ps(rs[b], bc(9 + b), a2);
          a3 = _mm512_fmadd_ps(rs[b + 1], bc(10 + b), a3);
        }
        const __m512 s = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
        float* acc = &sums[size_t(u) * 16];
        _mm512_storeu_ps(acc, _mm512_add_ps(_mm512_loadu_ps(acc), s));
      }
    }
  const double t = wall_seconds() - t0;
  float keep = 0;
  for (float x : sums) keep += x;
  if (keep == 12345.0f) std::printf(" ");  // the sums are used
  return t / (double(reps) * double(keys / 16) * nq);
}

// The same for the kernel's own bounded scan (par::cpu::scan_token_keys: score, exponential
// and sum) over one work item's keys, its rows in L2.
double kernel_scan(int nq) {
  const int64_t keys = 2048, reps = 400;
  const ScanInput in(keys, nq);
  const std::vector<double> refs(size_t(nq), 0.0);
  std::vector<float> state(32 * size_t(nq));
  std::vector<par::cpu::Partial> out(static_cast<size_t>(nq));
  const par::cpu::ScanKeys k{in.cs.data(), in.sn.data(), keys, 0, keys};
  double keep = 0;
  const double t0 = wall_seconds();
  for (int64_t r = 0; r < reps; ++r) {
    par::cpu::scan_token_keys(8, k, nq, in.coef.data(), refs.data(), state.data(), out.data());
    keep += out[0].sum;
  }
  const double t = wall_seconds() - t0;
  if (keep == 12345.0) std::printf(" ");  // the sums are used
  return t / (double(reps) * double(keys / 16) * nq);
}

// A window of `keys` random tokens grouped by token, and a layer's tables, for
// token_attention_forward.
struct Window {
  int64_t heads, head_dim, vocab;
  par::RotarySpec spec;
  par::TokenGroups<float> groups;
  std::vector<float> key_table, value_table;

  Window(int64_t keys, int64_t h, int64_t dh, int64_t bands, int64_t v)
      : heads(h), head_dim(dh), vocab(v) {
    spec = par::make_rotary_spec(dh, 2.0 * double(bands) / double(dh), double(keys));
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> token(0, int32_t(v - 1));
    std::vector<int32_t> tokens(static_cast<size_t>(keys));
    for (auto& t : tokens) t = token(rng);
    groups = par::group_tokens<float>(tokens.data(), keys, 0, v, spec);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    key_table.resize(size_t(v * h * dh));
    value_table.resize(key_table.size());
    for (auto& x : key_table) x = normal(rng);
    for (auto& x : value_table) x = normal(rng);
  }

  // Each of `samples` samples' own keys: `own` random tokens after the window, grouped in
  // a block per sample (TokenAttentionShape::own_group's layout).
  par::TokenGroupBlocks<float> own_keys;
  void add_own_keys(int64_t samples, int64_t own) {
    std::mt19937 rng(13);
    std::uniform_int_distribution<int32_t> token(0, int32_t(vocab - 1));
    std::vector<std::vector<int32_t>> tokens(static_cast<size_t>(samples));
    for (auto& seq : tokens)
      for (int64_t i = 0; i < own; ++i) seq.push_back(token(rng));
    own_keys = par::group_tokens_in_blocks<float>(tokens, groups.keys(), vocab, spec);
  }

  // Seconds per call with nq queries; with own keys (add_own_keys), each query a sample's:
  // in the same call (merged), or in a second call of their own.
  enum class Own { kNone, kMerged, kCallOfTheirOwn };
  double attend(par::cpu::CpuOps<float>& ops, int64_t nq, int rounds, Own own = Own::kNone) const {
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> q(size_t(nq * heads * head_dim)), o(q.size()), lse(size_t(nq * heads));
    for (auto& x : q) x = normal(rng);
    par::TokenAttentionShape s;
    s.nq = nq;
    s.heads = heads;
    s.head_dim = head_dim;
    s.bands = spec.bands;
    s.vocab = vocab;
    s.group = groups.group.data();
    s.pos = groups.pos.data();
    s.stride = groups.stride;
    s.scale = 1.0 / std::sqrt(double(head_dim));
    par::TokenAttentionShape alone = s;  // the own keys' call of their own
    alone.nq = 1;
    alone.batch = nq;
    alone.group = own_keys.group.data();
    alone.pos = own_keys.pos.data();
    alone.stride = own_keys.stride;
    if (own == Own::kMerged) {
      s.own_group = own_keys.group.data();
      s.own_pos = own_keys.pos.data();
      s.own_stride = own_keys.stride;
      s.own_cos = own_keys.cos.data();
      s.own_sin = own_keys.sin.data();
    }
    std::vector<float> o2(o.size()), lse2(lse.size());
    double best = 1e30;
    for (int r = 0; r < rounds; ++r) {
      const double t0 = wall_seconds();
      const int calls = 20;
      for (int c = 0; c < calls; ++c) {
        ops.token_attention_forward(s, q.data(), key_table.data(), value_table.data(),
                                    groups.cos.data(), groups.sin.data(), o.data(), lse.data());
        if (own == Own::kCallOfTheirOwn)
          ops.token_attention_forward(alone, q.data(), key_table.data(), value_table.data(),
                                      own_keys.cos.data(), own_keys.sin.data(), o2.data(),
                                      lse2.data());
      }
      best = std::min(best, (wall_seconds() - t0) / calls);
    }
    return best;
  }
};

}  // namespace

int run(int argc, char** argv) {
  int64_t keys = 131072, samples = 4, heads = 8, head_dim = 32, bands = 8, vocab = 259;
  int64_t own_keys = 0;
  int rounds = 5, threads = 1;
  po::options_description opts("par_token_scan_bench options");
  opts.add_options()("help", "this text")(
      "keys", po::value(&keys)->default_value(keys), "keys in the window")(
      "samples", po::value(&samples)->default_value(samples), "queries of the second call")(
      "heads", po::value(&heads)->default_value(heads), "cross-attention heads")(
      "head-dim", po::value(&head_dim)->default_value(head_dim), "head width")(
      "bands", po::value(&bands)->default_value(bands), "rotary bands (pairs) per head")(
      "vocab", po::value(&vocab)->default_value(vocab), "tokens")(
      "rounds", po::value(&rounds)->default_value(rounds), "interleaved rounds, best kept")(
      "threads", po::value(&threads)->default_value(threads), "threads of the kernel call")(
      "own-keys", po::value(&own_keys)->default_value(own_keys),
      "each sample's own keys (0: none), attended in the samples' call and in one of their own");
  po::variables_map vm;
  if (const int rc = par::bench::parse_options(argc, argv, opts, vm, "par_token_scan_bench",
                                          "the token-table attention against the CPU's "
                                          "multiply-add rate");
      rc >= 0)
    return rc;
  if (bands != 8 || head_dim < 16 || samples < 2) {
    std::fprintf(stderr, "par_token_scan_bench: error: the bare loops assume 8 bands, "
                         "--head-dim >= 16 and --samples >= 2\n");
    return 2;
  }
  omp_set_num_threads(threads);
  Window window(keys, heads, head_dim, bands, vocab);
  if (own_keys > 0) window.add_own_keys(samples, own_keys);
  par::cpu::CpuOps<float> ops;
  double rate = 0, bare = 1e30, bare_exp = 1e30, one = 1e30, many = 1e30;
  double merged = 1e30, their_own = 1e30;
  using Own = Window::Own;
  for (int r = 0; r < rounds; ++r) {
    rate = std::max(rate, fma_rate());
    bare = std::min(bare, bare_score(int(heads * samples)));
    bare_exp = std::min(bare_exp, kernel_scan(int(heads * samples)));
    one = std::min(one, window.attend(ops, 1, 1));
    many = std::min(many, window.attend(ops, samples, 1));
    if (own_keys > 0) {
      merged = std::min(merged, window.attend(ops, samples, 1, Own::kMerged));
      their_own = std::min(their_own, window.attend(ops, samples, 1, Own::kCallOfTheirOwn));
    }
  }
  const double vectors = double(keys) / 16;  // per query-head
  const double extra = (many - one) / (double(samples - 1) * double(heads) * vectors);
  auto slots = [&](double seconds) { return seconds * rate; };  // multiply-add slots
  std::printf("512-bit multiply-adds: %.2f G/s on one core\n", rate / 1e9);
  std::printf("per query-head and 16 keys, in multiply-add slots (16 of them are the score's):\n");
  std::printf("  bare loop, score only             %6.1f\n", slots(bare));
  std::printf("  kernel's scan, score, exp and sum  %6.1f\n", slots(bare_exp));
  std::printf("  token_attention_forward, each query after the first  %6.1f  (%d thread%s)\n",
              slots(extra) * threads, threads, threads == 1 ? "" : "s, per thread");
  std::printf("token_attention_forward: %.3f ms with 1 query, %.3f ms with %ld (%.3f ms a query "
              "more)\n",
              one * 1e3, many * 1e3, long(samples), (many - one) / double(samples - 1) * 1e3);
  if (own_keys > 0)
    std::printf("with %ld own keys a sample: %.3f ms in the samples' call, %.3f ms in a call "
                "of their own (%.3f and %.3f ms more than none)\n",
                long(own_keys), merged * 1e3, their_own * 1e3, (merged - many) * 1e3,
                (their_own - many) * 1e3);
  return 0;
}

int main(int argc, char** argv) { return run(argc, argv); }
#else
int main() {
  std::fprintf(stderr, "par_token_scan_bench: error: built without AVX-512 (the kernel's fast "
                       "path and the bare loops need it)\n");
  return 2;
}
#endif
