// Ops::sample_tokens on the GPU (kernels/cuda/sampling.cu) chooses the CPU's token
// (choose_token, core/token_choice.h) for the same uniform numbers: every case of
// tests/sampling_cases.h (ties, -0 and +0, top-p boundaries reached exactly, u = 0 and the
// largest u below 1, vocabularies up to 50257, several rows at once), and 4096 rows of
// random logits in one call. Skips without a GPU.
#include <gtest/gtest.h>

#include "kernels/cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/sampling_cases.h"

namespace par {
namespace {

using cuda_test::DeviceArray;

// The GPU's ids for one case against the CPU's, row by row; returns how many rows.
int64_t expect_cpu_choice(Ops<float>& gpu, const testing_util::SamplingCase& c) {
  DeviceArray<float> logits(gpu, c.logits);
  std::vector<int32_t> got(static_cast<size_t>(c.rows), -1);
  gpu.sample_tokens(got.data(), logits.get(), c.rows, c.vocab, c.opts, c.u.data());
  for (int64_t r = 0; r < c.rows; ++r) {
    const int32_t want =
        choose_token(c.logits.data() + r * c.vocab, c.vocab, c.opts, c.u[size_t(r)]);
    EXPECT_EQ(got[size_t(r)], want) << c.describe() << ", row " << r << ", u " << c.u[size_t(r)];
  }
  return c.rows;
}

class CudaSamplingTest : public cuda_test::CudaTest {};

TEST_F(CudaSamplingTest, ChoosesTheCpuTokenForTheSameUniformNumbers) {
  auto gpu = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  int64_t rows = 0;
  for (const auto& c : testing_util::sampling_cases(50257)) {
    rows += expect_cpu_choice(*gpu, c);
    if (::testing::Test::HasFailure()) break;  // one case's messages are enough
  }
  EXPECT_GT(rows, 5000);
}

TEST_F(CudaSamplingTest, ManyRowsInOneCall) {
  auto gpu = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kBF16);  // sampling is float32
  std::mt19937_64 rng(99);
  for (const SamplingOptions& o : {SamplingOptions{0.8, 40, 0.9}, SamplingOptions{1.0, 0, 0.95},
                                   SamplingOptions{1.3, 0, 1.0}, SamplingOptions{0.0, 0, 1.0}}) {
    testing_util::SamplingCase c;
    c.rows = 4096;
    c.vocab = 259;
    c.logits = testing_util::sampling_logits(0, c.rows * c.vocab, rng);
    c.opts = o;
    for (int64_t r = 0; r < c.rows; ++r) c.u.push_back(uniform_from_bits(rng()));
    expect_cpu_choice(*gpu, c);
  }
}

}  // namespace
}  // namespace par
