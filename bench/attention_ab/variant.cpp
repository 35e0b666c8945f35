// One side of bench/attention_ab.sh: the fused CPU attention of one source tree, compiled
// with `-Dpar=<name>` so that two trees' kernels can live in one program, behind a C entry
// point named by -DAB_ENTRY. Its inputs are built once per process and shared by both
// sides through the caller.
#include "kernels/cpu/attention_avx512.cpp"

#include <omp.h>

#include <chrono>

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

// The cross-attention of cpu-131k's shape: nq latent queries at the last positions over
// nk keys, heads x head_dim. Buffers are the caller's (q, k, v, dO in; the rest out);
// k_block 0 keeps the tree's default key block.
extern "C" void AB_ENTRY(int64_t nq, int64_t nk, int64_t heads, int64_t head_dim,
                         const int64_t* q_pos, const int64_t* k_pos, const float* q,
                         const float* k, const float* v, const float* d_o, float* o,
                         float* lse, float* dq, float* dk, float* dv, int64_t k_block,
                         double* forward_s, double* backward_s) {
  par::AttentionShape s;
  s.batch = 1;
  s.nq = nq;
  s.nk = nk;
  s.heads = heads;
  s.head_dim = head_dim;
  s.q_pos = q_pos;
  s.k_pos = k_pos;
  s.scale = 1.0 / std::sqrt(double(head_dim));
  par::cpu::AttentionBlocking blocking;
  if (k_block > 0) blocking.k_block = k_block;
  // Trees from before kernels/cpu/workspace.h (attention_ab.sh defines AB_NO_WORKSPACE for
  // them) kept their scratch in thread_local buffers.
#ifndef AB_NO_WORKSPACE
  static par::cpu::Workspace ws;
#define AB_SCRATCH , ws
#else
#define AB_SCRATCH
#endif
  auto t = std::chrono::steady_clock::now();
  par::cpu::attention_forward_fused(s, q, k, v, o, lse, blocking AB_SCRATCH);
  *forward_s = seconds_since(t);
  t = std::chrono::steady_clock::now();
  par::cpu::attention_backward_fused(s, q, k, v, o, d_o, lse, dq, dk, dv, blocking AB_SCRATCH);
  *backward_s = seconds_since(t);
}
