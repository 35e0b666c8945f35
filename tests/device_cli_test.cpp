// --device, --precision and --attention on the commands that compute (eval, sample,
// bench; train's are in the same RunConfig as bench's): bad values are one clear user
// error, and --device cuda says why it cannot run where it cannot (a build without the CUDA
// backend, or no visible GPU). The backend is chosen before any file is read, so the
// checkpoint and data named in commands() need not exist.
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
    // Checked before the device is opened, so a build or machine without CUDA gives the
    // same message for an unknown kernel.
    EXPECT_USER_ERROR(run_par(dir, c + " --attention bogus"),
                      "--attention must be auto, blocked, fused or cudnn (got 'bogus')");
    EXPECT_USER_ERROR(run_par(dir, c + " --device cuda --attention magic"),
                      "--attention must be auto, blocked, fused or cudnn");
    EXPECT_USER_ERROR(run_par(dir, c + " --attention fused"), "is for --device cuda");
    EXPECT_USER_ERROR(run_par(dir, c + " --attention cudnn"), "is for --device cuda");
    // cuDNN's flash attention is bf16: asking for it in another precision is refused
    // before any device is opened.
    EXPECT_USER_ERROR(run_par(dir, c + " --device cuda --precision tf32 --attention cudnn"),
                      "--attention cudnn needs --precision bf16");
    // par's fused kernels run on tensor cores: in fp32 they would never run.
    EXPECT_USER_ERROR(run_par(dir, c + " --device cuda --precision fp32 --attention fused"),
                      "--attention fused needs --precision tf32 or bf16");
  }
}

// --cuda-graphs of the commands that decode.
TEST(DeviceCli, BadCudaGraphsIsAUserError) {
  TempDir dir;
  for (const std::string& c : {commands()[1], commands()[2] + " --decode 4"}) {
    SCOPED_TRACE(c);
    EXPECT_USER_ERROR(run_par(dir, c + " --cuda-graphs maybe"),
                      "--cuda-graphs must be on or off (got 'maybe')");
  }
}

// par bench --decode counts the steps: given as captures by default (the CPU replays none),
// run as given with --cuda-graphs off.
TEST(DeviceCli, DecodeBenchCountsCapturedSteps) {
  TempDir dir;
  const std::string bench = commands()[2] + " --decode 12";
  const testing_util::ParRun on = run_par(dir, bench);
  ASSERT_EQ(on.rc, 0) << on.err;
  EXPECT_NE(on.out.find("\"steps_replayed\": 0, \"steps_captured\": "), std::string::npos)
      << on.out;
  EXPECT_EQ(on.out.find("\"steps_captured\": 0,"), std::string::npos) << on.out;
  // The text says nothing of graphs where the backend replays none.
  EXPECT_EQ(on.out.find("replayed, "), std::string::npos) << on.out;
  // The one-time costs are paid by an untimed decode first, and said.
  EXPECT_NE(on.out.find("            warm-up:  "), std::string::npos) << on.out;
  EXPECT_LT(on.out.find("warm-up:  "), on.out.find("cached:   ")) << on.out;
  const testing_util::ParRun off = run_par(dir, bench + " --cuda-graphs off");
  ASSERT_EQ(off.rc, 0) << off.err;
  EXPECT_NE(off.out.find("\"steps_replayed\": 0, \"steps_captured\": 0,"), std::string::npos)
      << off.out;
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

// eval and sample of a small exported model (random weights) on copy-task shards: the
// argument lists of both, to which a test appends the options it checks.
class LocalBackendRun : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string model = quote(dir_.file("model.h5"));
    testing_util::write_small_model(dir_.file("model.h5"));
    const std::string data = testing_util::copy_task_data(dir_, 65, 8);
    commands_ = {cat("eval --checkpoint ", model, " --data ", quote(data)),
                 cat("sample --checkpoint ", model,
                     " --prompt abc --tokens 5 --temperature 0 --format ids")};
  }
  // Command c with each of `options` gives the output it gives without them.
  void expect_same_output(const std::string& c, const std::vector<std::string>& options) {
    SCOPED_TRACE(c);
    const testing_util::ParRun plain = run_par(dir_, c);
    ASSERT_EQ(plain.rc, 0) << plain.err;
    EXPECT_FALSE(plain.out.empty());
    for (const std::string& o : options) {
      const testing_util::ParRun with = run_par(dir_, c + " " + o);
      ASSERT_EQ(with.rc, 0) << o << ": " << with.err;
      EXPECT_EQ(with.out, plain.out) << o;
    }
  }
  TempDir dir_;
  std::vector<std::string> commands_;
};

// --cuda-graphs off is accepted on the CPU, where there are no graphs: the same tokens.
TEST_F(LocalBackendRun, CudaGraphsOffChangesNothingOnTheCpu) {
  expect_same_output(commands_[1], {"--cuda-graphs off"});  // sample
}

// As in train, --attention blocked (and auto, the default) is accepted on the CPU and
// changes nothing there (the CPU has one attention): the same output as without it.
TEST_F(LocalBackendRun, AttentionBlockedIsAcceptedOnTheCpu) {
  for (const std::string& c : commands_)
    expect_same_output(c, {"--device cpu --attention blocked", "--device cpu --attention auto"});
}

// On a GPU the kernel choice reaches the CUDA backend: its description in the log says
// so (eval logs it with the model, sample as "backend: ...").
TEST_F(LocalBackendRun, AttentionChoiceReachesTheCudaBackend) {
#ifdef PAR_HAVE_CUDA
  if (cuda_device_count() == 0) GTEST_SKIP() << "no GPU is visible";
  for (const std::string& c : commands_) {
    SCOPED_TRACE(c);
    const testing_util::ParRun fused =
        run_par(dir_, c + " --device cuda --precision bf16 --attention fused");
    ASSERT_EQ(fused.rc, 0) << fused.err;
    EXPECT_NE(fused.err.find("attention: par's fused WMMA kernels"), std::string::npos)
        << fused.err;
    const testing_util::ParRun blocked =
        run_par(dir_, c + " --device cuda --precision bf16 --attention blocked");
    ASSERT_EQ(blocked.rc, 0) << blocked.err;
    EXPECT_NE(blocked.err.find("attention: par's blocked kernels"), std::string::npos)
        << blocked.err;
    // The default in bf16: cuDNN where it is found (the GPU machines have it).
    const testing_util::ParRun automatic = run_par(dir_, c + " --device cuda --precision bf16");
    ASSERT_EQ(automatic.rc, 0) << automatic.err;
    EXPECT_NE(automatic.err.find("flash attention"), std::string::npos) << automatic.err;
  }
#else
  GTEST_SKIP() << "built without the CUDA backend";
#endif
}

}  // namespace
}  // namespace par
