// kernels/cuda/device_wait.h on a real stream, held up by a host function that sleeps
// (standing in for an NCCL kernel waiting for a peer): without communicators a wait is a
// plain synchronize; with one, a reported failure or a timeout aborts it and throws, and a
// healthy wait returns once the work is done. Skips without a GPU.
#include "kernels/cuda/device_wait.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "tests/cuda/cuda_test_util.h"

namespace par {
namespace {

struct Hold {
  double seconds;
  std::atomic<bool> done{false};
};

void CUDART_CB sleep_then_mark(void* p) {
  auto* h = static_cast<Hold*>(p);
  std::this_thread::sleep_for(std::chrono::duration<double>(h->seconds));
  h->done = true;
}

class DeviceWaitTest : public cuda_test::CudaTest {
 protected:
  void SetUp() override {
    cuda_test::CudaTest::SetUp();
    if (IsSkipped()) return;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
  }
  void TearDown() override {
    cuda::set_wait_timeout(0);
    if (stream_) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
  }
  void hold(Hold& h) { ASSERT_EQ(cudaLaunchHostFunc(stream_, sleep_then_mark, &h), cudaSuccess); }
  // The error of a wait that should fail ("" if it returned).
  std::string wait_error(const char* what) {
    try {
      cuda::wait_for_stream(stream_, what);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  }
  cudaStream_t stream_ = nullptr;
};

TEST_F(DeviceWaitTest, WithoutCommunicatorsItWaitsForTheWork) {
  Hold h{0.05};
  hold(h);
  cuda::wait_for_stream(stream_, "test");
  EXPECT_TRUE(h.done);
}

TEST_F(DeviceWaitTest, AHealthyCommunicatorWaitsForTheWork) {
  int checks = 0;
  bool aborted = false;
  const int handle = cuda::add_wait_watch(
      {[&] { ++checks; return std::string(); }, [&] { aborted = true; }});
  Hold h{0.1};
  hold(h);
  cuda::wait_for_stream(stream_, "test");
  cuda::remove_wait_watch(handle);
  EXPECT_TRUE(h.done);
  EXPECT_FALSE(aborted);
  EXPECT_GE(checks, 2);  // asked every 10 ms while the work ran
}

TEST_F(DeviceWaitTest, AFailureAbortsTheCommunicatorsAndSaysWhy) {
  bool aborted = false;
  const int handle = cuda::add_wait_watch(
      {[] { return std::string("peer 1 is gone"); }, [&] { aborted = true; }});
  Hold h{0.5};
  hold(h);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string error = wait_error("download");
  EXPECT_NE(error.find("waiting for the GPU (download): peer 1 is gone"), std::string::npos)
      << error;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 0.4);
  EXPECT_TRUE(aborted);
  EXPECT_FALSE(h.done);  // it gave up before the work ended
  cuda::remove_wait_watch(handle);  // already forgotten by the abort: harmless
  cudaStreamSynchronize(stream_);   // h outlives the host function
}

TEST_F(DeviceWaitTest, PastTheTimeoutItAbortsAndSaysSo) {
  bool aborted = false;
  const int handle =
      cuda::add_wait_watch({[] { return std::string(); }, [&] { aborted = true; }});
  cuda::set_wait_timeout(0.1);
  Hold h{1.0};
  hold(h);
  const std::string error = wait_error("synchronize");
  EXPECT_NE(error.find("took more than --collective-timeout 0.1 s"), std::string::npos) << error;
  EXPECT_TRUE(aborted);
  EXPECT_FALSE(h.done);
  cuda::remove_wait_watch(handle);
  cudaStreamSynchronize(stream_);  // h outlives the host function
}

}  // namespace
}  // namespace par
