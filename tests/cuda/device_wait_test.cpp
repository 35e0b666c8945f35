// kernels/cuda/device_wait.h on a real stream, held up by a host function that sleeps
// (standing in for an NCCL kernel waiting for a peer): without communicators a wait is a
// plain synchronize; with one, a reported failure or a timeout aborts every communicator,
// all at once, and throws, and a healthy wait returns once the work is done (these skip
// without a GPU). And without any wait: a failure nobody deals with ends the process.
#include "kernels/cuda/device_wait.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "tests/cuda/cuda_test_util.h"

namespace par {
namespace {

// A registration that ends with the test, whatever happens in it.
class Watched {
 public:
  explicit Watched(cuda::WaitWatch w) : handle_(cuda::add_wait_watch(std::move(w))) {}
  ~Watched() { cuda::remove_wait_watch(handle_); }
  Watched(const Watched&) = delete;
  Watched& operator=(const Watched&) = delete;

 private:
  int handle_;
};

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
  std::atomic<int> checks{0};
  std::atomic<bool> aborted{false};
  {
    Watched w({[&] { ++checks; return std::string(); }, [&] { aborted = true; }});
    Hold h{0.1};
    hold(h);
    cuda::wait_for_stream(stream_, "test");
    EXPECT_TRUE(h.done);
  }
  EXPECT_FALSE(aborted);
  EXPECT_GE(checks, 2);  // asked every 10 ms while the work ran
}

TEST_F(DeviceWaitTest, AFailureAbortsTheCommunicatorsAndSaysWhy) {
  std::atomic<bool> aborted{false};
  Watched w({[] { return std::string("peer 1 is gone"); }, [&] { aborted = true; }});
  Hold h{0.5};
  hold(h);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string error = wait_error("download");
  EXPECT_NE(error.find("waiting for the GPU (download): peer 1 is gone"), std::string::npos)
      << error;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 0.4);
  EXPECT_TRUE(aborted);
  EXPECT_FALSE(h.done);  // it gave up before the work ended
  cudaStreamSynchronize(stream_);  // h outlives the host function
}

TEST_F(DeviceWaitTest, PastTheTimeoutItAbortsAndSaysSo) {
  std::atomic<bool> aborted{false};
  Watched w({[] { return std::string(); }, [&] { aborted = true; }});
  cuda::set_wait_timeout(0.1);
  Hold h{1.0};
  hold(h);
  const std::string error = wait_error("synchronize");
  EXPECT_NE(error.find("took more than --collective-timeout 0.1 s"), std::string::npos) << error;
  EXPECT_TRUE(aborted);
  EXPECT_FALSE(h.done);
  cudaStreamSynchronize(stream_);  // h outlives the host function
}

// A download into pageable memory returns from cudaMemcpyAsync only once the stream's
// earlier work is done: the backend must poll before it copies, or a hung collective ahead
// of the copy holds the rank where no poll sees it (here the copy would wait out the hold
// and the wait after it find nothing left to wait for). The same for a large upload.
TEST_F(DeviceWaitTest, ADownloadBehindHungWorkSeesTheFailure) {
  auto ops = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  const std::vector<float> big(size_t(1) << 16, 1.0f);  // 256 KiB: not a staged upload
  void* d = ops->allocate(big.size() * sizeof(float));
  ops->synchronize();
  const auto st = static_cast<cudaStream_t>(cuda::cuda_stream(*ops));
  for (const bool download : {true, false}) {
    std::atomic<bool> aborted{false};
    Watched w({[] { return std::string("peer 1 is gone"); }, [&] { aborted = true; }});
    Hold h{0.8};
    ASSERT_EQ(cudaLaunchHostFunc(st, sleep_then_mark, &h), cudaSuccess);
    std::vector<float> back(big.size());
    const auto t0 = std::chrono::steady_clock::now();
    std::string error;
    try {
      if (download)
        ops->download(back.data(), d, back.size() * sizeof(float));
      else
        ops->upload(d, big.data(), big.size() * sizeof(float));
    } catch (const std::exception& e) {
      error = e.what();
    }
    const char* what = download ? "waiting for the GPU (download): peer 1 is gone"
                                : "waiting for the GPU (upload): peer 1 is gone";
    EXPECT_NE(error.find(what), std::string::npos) << error;
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 0.6);
    EXPECT_TRUE(aborted);
    EXPECT_FALSE(h.done);
    cudaStreamSynchronize(st);  // h outlives the host function
  }
  ops->deallocate(d);
}

// So does a scratch buffer that must grow: cudaFree waits for the device as such a copy
// does, and would never end behind a hung collective.
TEST_F(DeviceWaitTest, AScratchBufferThatGrowsBehindHungWorkSeesTheFailure) {
  auto ops = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  const int64_t n = int64_t(1) << 22;
  cuda_test::DeviceArray<float> big(*ops, std::vector<float>(size_t(n), 1.0f));
  ops->sum_squares(big.get(), 1000);  // its scratch buffer, small
  const auto st = static_cast<cudaStream_t>(cuda::cuda_stream(*ops));
  {
    std::atomic<bool> aborted{false};
    Watched w({[] { return std::string("peer 1 is gone"); }, [&] { aborted = true; }});
    Hold h{0.8};
    ASSERT_EQ(cudaLaunchHostFunc(st, sleep_then_mark, &h), cudaSuccess);
    const auto t0 = std::chrono::steady_clock::now();
    std::string error;
    try {
      ops->sum_squares(big.get(), n);  // the buffer grows
    } catch (const std::exception& e) {
      error = e.what();
    }
    EXPECT_NE(error.find("waiting for the GPU (a scratch buffer that grows): peer 1 is gone"),
              std::string::npos) << error;
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 0.6);
    EXPECT_TRUE(aborted);
    cudaStreamSynchronize(st);  // h outlives the host function
  }
}

// One communicator's abort waits for the device, so for the kernels of every other one:
// aborted one after another, each waiting for the next, they would never end. Here each
// abort returns only once the other has begun.
TEST_F(DeviceWaitTest, TheCommunicatorsAreAbortedAllAtOnce) {
  std::atomic<int> begun{0};
  std::atomic<int> ended{0};
  auto abort = [&] {
    ++begun;
    const auto t0 = std::chrono::steady_clock::now();
    while (begun < 2 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5))
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (begun == 2) ++ended;
  };
  Watched a({[] { return std::string("peer 1 is gone"); }, abort});
  Watched b({[] { return std::string(); }, abort});
  Hold h{0.2};
  hold(h);
  EXPECT_NE(wait_error("download").find("peer 1 is gone"), std::string::npos);
  EXPECT_EQ(ended, 2);
  cudaStreamSynchronize(stream_);
}

// Nothing here needs a GPU: the registry's own thread finds a failure that no wait deals
// with (the main thread could be blocked in a kernel launch) and ends the process after a
// grace of 5 s, saying why.
TEST(DeviceWaitWatcherDeathTest, AFailureLeftAloneEndsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        cuda::add_wait_watch({[] { return std::string("peer 3 is gone"); }, [] {}});
        std::this_thread::sleep_for(std::chrono::seconds(20));
      },
      testing::ExitedWithCode(1),
      "par: .*: peer 3 is gone \\(seen while no wait for the GPU was in progress\\); ending this rank");
}

TEST(DeviceWaitWatcher, AHealthyCommunicatorIsLeftAlone) {
  std::atomic<int> checks{0};
  {
    Watched w({[&] { ++checks; return std::string(); }, [] { ADD_FAILURE() << "aborted"; }});
    std::this_thread::sleep_for(std::chrono::milliseconds(450));
  }
  EXPECT_GE(checks, 3);  // looked every 0.1 s
  const int after = checks;
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  EXPECT_EQ(checks, after);  // and no more once it is gone
}

}  // namespace
}  // namespace par
