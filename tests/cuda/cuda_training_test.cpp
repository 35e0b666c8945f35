// Training on the GPU in bf16 reaches what float32 reaches: a small model learns the copy
// task (32 random tokens, then the same 32 again) from the same data and seed in each
// precision, and the loss on the copied half ends as low in bf16 as in fp32. In bf16 the
// attention runs on cuDNN (the cross-attention's prefix and the causal self-attention;
// heads of 32) and the products on bf16 tensor cores: the whole mixed-precision path.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/init.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cudnn_api.h"
#include "tests/cuda/cuda_test_util.h"

namespace par {
namespace {

using cuda::MatmulPrecision;

ModelConfig copy_config() {
  ModelConfig c;
  c.d_model = 64;
  c.context_length = 64;
  c.num_latents = 32;  // the latents sit on the copied half
  c.num_layers = 1;
  c.cross_heads = 2;
  c.self_heads = 2;
  c.mlp_factor = 2;
  return c;
}

// A batch of windows [r_0 .. r_31, r_0 .. r_31, EOS]: latent i (position 32 + i) predicts
// r_{i+1}, a copy of a token 31 positions back (the last one EOS).
std::vector<int32_t> copy_batch(int64_t batch, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> byte(3, 258);
  std::vector<int32_t> w;
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int32_t> r(32);
    for (auto& t : r) t = byte(rng);
    w.insert(w.end(), r.begin(), r.end());
    w.insert(w.end(), r.begin(), r.end());
    w.push_back(1);
  }
  return w;
}

// Trains `steps` steps and returns the mean loss (nats) on 8 held-out batches' copied tokens.
double train_copy(MatmulPrecision precision, int steps,
                  KeyValueStorage storage = KeyValueStorage::kNative) {
  const ModelConfig cfg = copy_config();
  const int64_t batch = 16;
  auto ops = cuda::make_cuda_ops(0, precision);
  PerceiverAR<float> model(cfg, *ops, batch, {}, storage);
  OptimizerConfig oc;
  oc.lr = 3e-3;
  oc.warmup_steps = 50;
  Adam<float> adam(oc, model.layout(), *ops);
  std::vector<float> p;
  init_parameters(model.layout(), 1, p);
  ops->upload(model.params(), p.data(), p.size() * sizeof(float));
  std::mt19937_64 rng(2);
  for (int s = 0; s < steps; ++s) {
    const auto w = copy_batch(batch, rng);
    ForwardContext ctx;
    ctx.training = true;
    ctx.seed = 3;
    ctx.step = uint32_t(s);
    const LossSums loss = model.forward(w.data(), batch, ctx);
    model.zero_grads();
    model.backward(1.0 / double(loss.valid));
    adam.step(model.params(), model.grads(), s);
  }
  std::mt19937_64 held_out(99);
  double sum = 0;
  int64_t n = 0;
  for (int k = 0; k < 8; ++k) {
    const auto w = copy_batch(batch, held_out);
    const LossSums l = model.forward(w.data(), batch, ForwardContext{});
    const auto ce = model.ce();
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < 31; ++i) {  // the 31 copied tokens (the last target is EOS)
        sum += ce[size_t(b * cfg.num_latents + i)];
        ++n;
      }
    EXPECT_GT(l.valid, 0);
  }
  return sum / double(n);
}

TEST(CudaTraining, Bf16LearnsTheCopyTaskAsFp32Does) {
  PAR_SKIP_WITHOUT_GPU();
  ASSERT_NE(cuda::cudnn_api(), nullptr) << "no cuDNN: " << cuda::cudnn_unavailable_reason();
  const int steps = 1500;
  const double fp32 = train_copy(MatmulPrecision::kFloat32, steps);
  const double bf16 = train_copy(MatmulPrecision::kBF16, steps);
  // And with the input side in bfloat16 (what --kv-storage auto gives bf16 runs); the copy
  // windows have no PAD, so cuDNN reads the keys and values in place.
  const double bf16_kv = train_copy(MatmulPrecision::kBF16, steps, KeyValueStorage::kBf16);
  RecordProperty("copied_loss_fp32", std::to_string(fp32));
  RecordProperty("copied_loss_bf16", std::to_string(bf16));
  RecordProperty("copied_loss_bf16_kv", std::to_string(bf16_kv));
  std::printf("copy task after %d steps: loss on the copied half %.4f nats (fp32), %.4f (bf16), "
              "%.4f (bf16, keys and values in bf16); a random token: %.2f\n", steps, fp32, bf16,
              bf16_kv, std::log(256.0));
  // fp32 learned the copy (a model that had not: ln 256 = 5.5 nats; the CPU reaches 0.15
  // after these 1500 steps), and bf16 as well, within bf16's noise.
  EXPECT_LT(fp32, 0.5);
  EXPECT_LE(bf16, std::max(1.25 * fp32, fp32 + 0.1));
  EXPECT_LE(bf16_kv, std::max(1.25 * fp32, fp32 + 0.1));
}

}  // namespace
}  // namespace par
