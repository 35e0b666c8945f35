// GoogleTest entry point: the same BLAS kernel selection as the par binary, so tests run
// the kernels users get.
#include <gtest/gtest.h>

#include "kernels/cpu/blas_setup.h"

int main(int argc, char** argv) {
  par::select_blas_kernels(argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
