// The parity table of the Ops contract (tests/op_cases.h) on the GPU: every case on the
// CUDA backend in fp32, and the cases with matrix products in tf32 and bf16 too, against
// the CPU in double; cases marked gpu_bitwise must equal the CPU in float bit for bit (in
// fp32), and every case must repeat its results bit for bit. The contract lets a backend
// decline token attention; CUDA may only where a case says so (more query-heads than its
// kernel is sized for), and the case then checks that it did nothing. Each test skips
// without a GPU.
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/op_cases.h"

namespace par::op_parity {
namespace {

using cuda::MatmulPrecision;

struct GpuCase {
  MatmulPrecision precision;
  const OpCase* c;
};

// GoogleTest prints a parameter as the case's name and precision.
void PrintTo(const GpuCase& g, std::ostream* os) {
  *os << g.c->name << " (" << cuda::precision_name(g.precision) << ")";
}

std::vector<GpuCase> gpu_cases() {
  std::vector<GpuCase> v;
  for (const OpCase& c : op_cases()) {
    v.push_back({MatmulPrecision::kFloat32, &c});
    if (c.products != Products::kNone)
      for (MatmulPrecision p : {MatmulPrecision::kTF32, MatmulPrecision::kBF16}) v.push_back({p, &c});
  }
  return v;
}

// The tolerance of a case's products in `p` (tests/cuda/cuda_test_util.h), at least the
// case's own.
double product_tol(const OpCase& c, MatmulPrecision p) {
  const double t = c.products == Products::kAttention ? cuda_test::attention_tol(p)
                                                      : cuda_test::matmul_tol(p);
  return std::max(c.tol, t);
}

class CudaOpParity : public ::testing::TestWithParam<GpuCase> {
 protected:
  void SetUp() override { PAR_SKIP_WITHOUT_GPU(); }
};

TEST_P(CudaOpParity, AgreesWithTheCpu) {
  const OpCase& c = *GetParam().c;
  const MatmulPrecision p = GetParam().precision;
  cpu::CpuOps<double> cpu64;
  const std::unique_ptr<Ops<float>> gpu = cuda::make_cuda_ops(0, p);
  const Outputs want = run_case(c, cpu64);
  const Outputs got = run_case(c, *gpu);
  for (const std::string& problem : got.problems) ADD_FAILURE() << "cuda: " << problem;
  EXPECT_TRUE(identical(run_case(c, *gpu), got)) << "a second run on the GPU";
  if (got.declined) {  // beyond the kernel's sizing; the case checked that nothing was written
    EXPECT_TRUE(c.gpu_may_decline) << "the GPU declined a shape its kernel should take";
    return;
  }
  EXPECT_TRUE(agree(got, want, c.tol, product_tol(c, p)));
  if (c.gpu_bitwise && p == MatmulPrecision::kFloat32) {
    cpu::CpuOps<float> cpu32;
    EXPECT_TRUE(identical(got, run_case(c, cpu32))) << "against the CPU in float";
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaOpParity, ::testing::ValuesIn(gpu_cases()),
                         [](const ::testing::TestParamInfo<GpuCase>& info) {
                           return test_name(info.param.c->name) + "_" +
                                  cuda::precision_name(info.param.precision);
                         });

}  // namespace
}  // namespace par::op_parity
