// --device and --precision on the commands that compute (eval, sample, bench): bad values
// are one clear user error, and --device cuda says why it cannot run where it cannot (a
// build without the CUDA backend, or no visible GPU). The backend is chosen before any
// file is read, so the checkpoint and data named here need not exist.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "launch/backend.h"
#include "tests/par_cli.h"
#include "tests/temp_dir.h"

namespace par {
namespace {

using testing_util::quote;
using testing_util::TempDir;
using testing_util::run_par;

// Each command with the arguments it needs before it gets to the backend.
std::vector<std::string> commands() {
  return {"eval --checkpoint missing-model --data missing-shard.h5",
          "sample --checkpoint missing-model",
          cat("bench --config ", quote(testing_util::configs_dir() + "tiny.ini"))};
}

TEST(DeviceCli, BadDeviceOrPrecisionIsAUserError) {
  TempDir dir;
  for (const std::string& c : commands()) {
    SCOPED_TRACE(c);
    EXPECT_USER_ERROR(run_par(dir, c + " --device tpu"), "--device must be cpu or cuda");
    EXPECT_USER_ERROR(run_par(dir, c + " --device cuda --precision fp16"),
                      "--precision must be fp32, tf32 or bf16");
    EXPECT_USER_ERROR(run_par(dir, c + " --device cpu --precision bf16"),
                      "is for --device cuda");
  }
  // Only the commands with run options (train, bench) choose the attention kernels.
  const std::string bench = commands().back();
  EXPECT_USER_ERROR(run_par(dir, bench + " --device cuda --attention magic"),
                    "--attention must be blocked or fused");
  EXPECT_USER_ERROR(run_par(dir, bench + " --attention fused"), "is for --device cuda");
}

TEST(DeviceCli, CudaWithoutBackendOrGpuSaysWhy) {
#ifdef PAR_HAVE_CUDA
  ASSERT_TRUE(cuda_built());
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is visible: --device cuda can run here";
  const std::string why = "no GPU is visible";
#else
  ASSERT_FALSE(cuda_built());
  const std::string why = "built without the CUDA backend";
#endif
  TempDir dir;
  for (const std::string& c : commands()) {
    SCOPED_TRACE(c);
    EXPECT_USER_ERROR(run_par(dir, c + " --device cuda --precision bf16"), why);
  }
}

}  // namespace
}  // namespace par
