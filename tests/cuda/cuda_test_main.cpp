// GoogleTest entry point of par_cuda_tests: the same BLAS kernel selection as the par
// binary (the CPU backend is the reference), and one line saying which GPU runs the tests
// or why they skip. Standard output is line-buffered.
#include <gtest/gtest.h>

#include <cstdio>

#include "kernels/cpu/blas_setup.h"
#include "kernels/cuda/cuda_ops.h"

int main(int argc, char** argv) {
  // Line by line, also into a file (tools/gpu_check.sh's logs): a run stopped at its time
  // limit keeps every line it printed, the timing runs' among them.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  par::select_blas_kernels(argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (par::cuda::device_count() > 0)
    std::printf("par_cuda_tests: GPU 0 is %s\n", par::cuda::describe_device(0).c_str());
  else
    std::printf("par_cuda_tests: no CUDA device visible (%s): the GPU tests will skip\n",
                par::cuda::no_device_reason().c_str());
  return RUN_ALL_TESTS();
}
