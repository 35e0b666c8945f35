// Timings, not tests (DISABLED_ unless asked for: tools/gpu_check.sh runs them with
// --gtest_also_run_disabled_tests): the rate of a large matrix product in each precision,
// the input-side linear layer and the cross-attention of the ~100M-parameter config
// (N = 131072 keys, M = 1024 latent queries, 16 heads of 64), forward and backward (in
// cuDNN's forward, its keys in chunks or not), and the LayerNorm backward.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "kernels/cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace par {
namespace {

using cuda::MatmulPrecision;
using cuda_test::DeviceArray;

// Fills a device array of n floats with a repeating random pattern (generating hundreds of
// millions of random numbers on the host would dominate the run).
void fill_pattern(Ops<float>& ops, float* x, int64_t n, uint64_t seed) {
  const int64_t block = std::min<int64_t>(n, int64_t(1) << 20);
  const auto host = cuda_test::random_vector<float>(block, seed);
  ops.upload(x, host.data(), size_t(block) * sizeof(float));
  for (int64_t o = block; o < n; o += block) ops.copy(x + o, x, std::min(block, n - o));
}

template <typename F>
double best_ms(Ops<float>& ops, int reps, F&& f) {
  f();  // warm-up: cuBLAS heuristics, scratch allocation
  cuda::cuda_synchronize(ops);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    cuda::cuda_synchronize(ops);
    best = std::min(best, std::chrono::duration<double, std::milli>(
                              std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

TEST(CudaTiming, DISABLED_MatmulRates) {
  PAR_SKIP_WITHOUT_GPU();
  std::printf("device: %s\n", cuda::describe_device(0).c_str());
  struct Mode {
    MatmulPrecision p;
    cuda::Bf16Operands operands;
    const char* name;
  };
  // bf16 twice: float32 operands to cuBLAS (FAST_16BF) and bfloat16 copies (gemm_mapping.h).
  const Mode modes[] = {{MatmulPrecision::kFloat32, cuda::Bf16Operands::kAuto, "fp32"},
                        {MatmulPrecision::kTF32, cuda::Bf16Operands::kAuto, "tf32"},
                        {MatmulPrecision::kBF16, cuda::Bf16Operands::kNever, "bf16 (fp32 operands)"},
                        {MatmulPrecision::kBF16, cuda::Bf16Operands::kAlways, "bf16 (bf16 copies)"}};
  for (const Mode& mode : modes) {
    auto ops = cuda::make_cuda_ops(0, mode.p);
    cuda::set_bf16_operands(*ops, mode.operands);
    const int64_t n = 8192;
    DeviceArray<float> a(*ops, size_t(n * n)), b(*ops, size_t(n * n)), c(*ops, size_t(n * n));
    fill_pattern(*ops, a.get(), n * n, 1);
    fill_pattern(*ops, b.get(), n * n, 2);
    const double ms = best_ms(*ops, 3, [&] {
      ops->gemm(false, false, n, n, n, 1.0f, a.get(), n, b.get(), n, 0.0f, c.get(), n);
    });
    std::printf("timing gemm %lld^3 %s: %.2f ms, %.1f TFLOP/s\n", static_cast<long long>(n),
                mode.name, ms, 2.0 * double(n) * n * n / ms / 1e9);
    // The key/value projection of the 100M config: [131072, 1024] x [2048, 1024]^T + b,
    // forward, and backward (dx and dw; the bias gradient is a column sum in every mode).
    const int64_t rows = 131072, d = 1024, out = 2 * d;
    DeviceArray<float> x(*ops, size_t(rows * d)), w(*ops, size_t(out * d)),
        bias(*ops, size_t(out)), y(*ops, size_t(rows * out)), dx(*ops, size_t(rows * d)),
        dw(*ops, size_t(out * d)), db(*ops, size_t(out));
    fill_pattern(*ops, x.get(), rows * d, 3);
    fill_pattern(*ops, w.get(), out * d, 4);
    const double lin = best_ms(*ops, 3, [&] {
      ops->linear_forward(y.get(), x.get(), w.get(), bias.get(), rows, d, out);
    });
    const double back = best_ms(*ops, 3, [&] {
      ops->linear_backward(dx.get(), false, dw.get(), db.get(), y.get(), x.get(), w.get(), rows,
                           d, out);
    });
    const double f = 2.0 * double(rows) * d * out;
    std::printf("timing linear 131072x1024->2048 %s: forward %.2f ms (%.1f TFLOP/s), "
                "backward %.2f ms (%.1f TFLOP/s)\n",
                mode.name, lin, f / lin / 1e9, back, 2 * f / back / 1e9);
  }
}

// The LayerNorm backward of the 100M config: the latents' [1024, 1024] (about 15 such
// calls a step) and the inputs' [131072, 1024] (one), each with its parameter gradients.
TEST(CudaTiming, DISABLED_LayerNormBackward) {
  PAR_SKIP_WITHOUT_GPU();
  auto ops = cuda::make_cuda_ops(0, MatmulPrecision::kBF16);  // float32 whatever the mode
  const int64_t d = 1024;
  for (int64_t rows : {int64_t(1024), int64_t(131072)}) {
    DeviceArray<float> x(*ops, size_t(rows * d)), dy(*ops, size_t(rows * d)),
        y(*ops, size_t(rows * d)), dx(*ops, size_t(rows * d)), mean(*ops, size_t(rows)),
        rstd(*ops, size_t(rows)), w(*ops, size_t(d)), b(*ops, size_t(d)), dw(*ops, size_t(d)),
        db(*ops, size_t(d));
    fill_pattern(*ops, x.get(), rows * d, 9);
    fill_pattern(*ops, dy.get(), rows * d, 10);
    fill_pattern(*ops, w.get(), d, 11);
    fill_pattern(*ops, b.get(), d, 12);
    ops->layernorm_forward(y.get(), mean.get(), rstd.get(), x.get(), w.get(), b.get(), rows, d,
                           1e-5);
    const double ms = best_ms(*ops, 5, [&] {
      ops->layernorm_backward(dx.get(), false, dw.get(), db.get(), dy.get(), x.get(), mean.get(),
                              rstd.get(), w.get(), rows, d);
    });
    std::printf("timing layernorm_backward %lldx%lld: %.3f ms (%.0f GB/s of x, dy and dx)\n",
                static_cast<long long>(rows), static_cast<long long>(d), ms,
                3.0 * double(rows) * double(d) * 4 / ms / 1e6);
  }
}

TEST(CudaTiming, DISABLED_CrossAttention100M) {
  PAR_SKIP_WITHOUT_GPU();
  const int64_t nq = 1024, nk = 131072, heads = 16, hd = 64, ld = heads * hd;
  for (MatmulPrecision p : {MatmulPrecision::kTF32, MatmulPrecision::kBF16, MatmulPrecision::kFloat32}) {
    auto ops = cuda::make_cuda_ops(0, p);
    DeviceArray<float> q(*ops, size_t(nq * ld)), k(*ops, size_t(nk * ld)), v(*ops, size_t(nk * ld));
    DeviceArray<float> o(*ops, size_t(nq * ld)), lse(*ops, size_t(heads * nq));
    DeviceArray<float> d_o(*ops, size_t(nq * ld)), dq(*ops, size_t(nq * ld));
    DeviceArray<float> dk(*ops, size_t(nk * ld)), dv(*ops, size_t(nk * ld));
    fill_pattern(*ops, q.get(), nq * ld, 5);
    fill_pattern(*ops, k.get(), nk * ld, 6);
    fill_pattern(*ops, v.get(), nk * ld, 7);
    fill_pattern(*ops, d_o.get(), nq * ld, 8);
    std::vector<int64_t> qp(nq), kp(nk);
    for (int64_t i = 0; i < nq; ++i) qp[size_t(i)] = nk - nq + i;
    for (int64_t j = 0; j < nk; ++j) kp[size_t(j)] = j;
    std::vector<uint8_t> keep(static_cast<size_t>(nk)), all(static_cast<size_t>(nk), 1);
    for (int64_t j = 0; j < nk; ++j) keep[size_t(j)] = (j * 2654435761u) % 10 != 0;  // 10% dropped
    DeviceArray<int64_t> gqp(*ops, qp), gkp(*ops, kp);
    DeviceArray<uint8_t> gkeep(*ops, keep), gall(*ops, all);
    // The model's call: contiguous positions (which the cuDNN path needs).
    AttentionShape s{1, nq, nk, heads, hd, gqp.get(), gkp.get(), gkeep.get(), 0.125};
    s.q_pos_first = nk - nq;
    s.k_pos_first = 0;
    // Model FLOPs over all N keys (the masked 10% still cost work in the blocked and fused
    // kernels): 4 N M D per head forward, twice that backward.
    const double f = 4.0 * double(nq) * double(nk) * double(hd) * double(heads);
    auto measure = [&](cuda::AttentionKernel kernel, const AttentionShape& shape,
                       const char* what) {
      cuda::set_attention_kernel(*ops, kernel);
      const double fwd = best_ms(*ops, 3, [&] {
        ops->attention_forward(shape, q.get(), k.get(), v.get(), o.get(), lse.get());
      });
      const double bwd = best_ms(*ops, 3, [&] {
        ops->attention_backward(shape, q.get(), k.get(), v.get(), o.get(), d_o.get(),
                                lse.get(), dq.get(), dk.get(), dv.get());
      });
      std::printf("timing cross-attention M=1024 N=131072 16x64 %s %s: forward %.2f ms "
                  "(%.1f TFLOP/s), backward %.2f ms (%.1f TFLOP/s), both %.2f ms\n",
                  cuda::precision_name(p), what, fwd, f / fwd / 1e9, bwd, 2 * f / bwd / 1e9,
                  fwd + bwd);
    };
    measure(cuda::AttentionKernel::kBlocked, s, "blocked, 10% keys dropped");
    if (p != MatmulPrecision::kFloat32)
      measure(cuda::AttentionKernel::kFused, s, "fused WMMA, 10% keys dropped");
    if (p == MatmulPrecision::kBF16) {
      try {
        AttentionShape every = s;  // every key visible: the work PyTorch's model does
        every.k_keep = gall.get();
        measure(cuda::AttentionKernel::kCudnn, every, "cuDNN, every key");
        measure(cuda::AttentionKernel::kCudnn, s, "cuDNN, 10% keys dropped");
        // The model's keys under --kv-storage bf16 with none masked: read in place, the
        // forward's prefix in 1, 2, 4 and 8 chunks of keys and as chosen
        // (cudnn_key_splits.h); the backward is not split.
        DeviceArray<uint16_t> k16(*ops, size_t(nk * ld)), v16(*ops, size_t(nk * ld));
        DeviceArray<uint16_t> dk16(*ops, size_t(nk * ld)), dv16(*ops, size_t(nk * ld));
        ops->round_to_bf16(k16.get(), k.get(), nk * ld);
        ops->round_to_bf16(v16.get(), v.get(), nk * ld);
        AttentionShape in_place = every;
        in_place.k_keep = nullptr;
        in_place.keeps_every_key = true;
        cuda::set_attention_kernel(*ops, cuda::AttentionKernel::kCudnn);
        for (int64_t splits : {1, 2, 4, 8, 0}) {
          cuda::set_cudnn_key_splits(*ops, splits);
          const double fwd = best_ms(*ops, 3, [&] {
            ops->attention_forward_bf16_kv(in_place, q.get(), k16.get(), v16.get(), o.get(),
                                           lse.get());
          });
          std::printf("timing cross-attention M=1024 N=131072 16x64 bf16 cuDNN, bf16 keys in "
                      "place, %s: forward %.2f ms (%.1f TFLOP/s)\n",
                      splits > 0 ? (std::to_string(splits) + " chunk(s)").c_str()
                                 : "chunks chosen",
                      fwd, f / fwd / 1e9);
        }
        const double bwd = best_ms(*ops, 3, [&] {
          ops->attention_backward_bf16_kv(in_place, q.get(), k16.get(), v16.get(), o.get(),
                                          d_o.get(), lse.get(), dq.get(), dk16.get(),
                                          dv16.get());
        });
        std::printf("timing cross-attention M=1024 N=131072 16x64 bf16 cuDNN, bf16 keys in "
                    "place: backward %.2f ms (%.1f TFLOP/s)\n",
                    bwd, 2 * f / bwd / 1e9);
      } catch (const std::exception& e) {
        std::printf("timing cross-attention %s cuDNN: not run (%s)\n", cuda::precision_name(p),
                    e.what());
      }
    }
    const cuda::MemoryStats m = cuda::memory_stats(*ops);
    std::printf("timing cross-attention %s: peak %.2f GiB\n", cuda::precision_name(p),
                double(m.peak_bytes) / double(int64_t(1) << 30));
  }
}

}  // namespace
}  // namespace par
