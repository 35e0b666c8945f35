// The flash-attention graphs through cuDNN itself, without a GPU: cuDNN creates and
// finalizes every tensor and operation descriptor and the operation graph of each graph
// par uses (forward and backward, with and without the causal mask, the model's shapes
// and small ones), so a wrong attribute or an operation cuDNN does not accept fails here
// rather than on a GPU machine. Choosing an engine needs a device (the GPU tests).
// Skips, saying why, where cuDNN cannot be loaded.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cudnn_api.h"
#include "kernels/cuda/cudnn_graph.h"
#include "kernels/cuda/cudnn_plans.h"
#include "kernels/cuda/sdpa_graph.h"

namespace par {
namespace {

namespace sdpa = cuda::sdpa;

// The shapes par builds graphs for: the 100M config's cross-attention (one example, 16
// heads of 64, 1024 queries over the 130049 keys all of them see), its latent
// self-attention (causal), and small ones of the tests; each backward deterministic or not
// as par chooses (the cross-attention's adds dQ with atomics), and one small one of each.
std::vector<sdpa::Dims> shapes(int64_t version) {
  std::vector<sdpa::Dims> all = {{1, 16, 1024, 130049, 64, 0.125, false, version},
                                 {1, 16, 1024, 1024, 64, 0.125, true, version},
                                 {2, 3, 37, 264, 16, 0.25, false, version},
                                 {3, 2, 45, 45, 16, 0.25, true, version},
                                 {1, 1, 20, 90, 128, 0.088, false, version}};
  for (sdpa::Dims& d : all) d.deterministic = sdpa::backward_is_deterministic(d);
  sdpa::Dims atomic = all[2];
  atomic.deterministic = false;
  all.push_back(atomic);
  return all;
}

class CudnnGraphTest : public ::testing::Test {
 protected:
  void SetUp() override {
    api_ = cuda::cudnn_api();
    if (!api_) GTEST_SKIP() << "cuDNN is not available: " << cuda::cudnn_unavailable_reason();
  }
  const cuda::CudnnApi* api_ = nullptr;
};

TEST_F(CudnnGraphTest, LoadsVersion9) {
  EXPECT_GE(api_->version, 90000);
  EXPECT_FALSE(api_->path.empty());
  EXPECT_EQ(api_->version_string().substr(0, 2), "9.");
}

TEST_F(CudnnGraphTest, BuildsEveryAttentionGraphWithoutADevice) {
  for (const sdpa::Dims& d : shapes(api_->version)) {
    SCOPED_TRACE(::testing::Message() << d.batch << "x" << d.heads << "x" << d.nq << "x" << d.nk
                                      << "x" << d.head_dim << (d.causal ? " causal" : "")
                                      << (d.deterministic ? "" : " atomic dQ"));
    EXPECT_NO_THROW(cuda::CudnnGraph(*api_, sdpa::describe_forward(d), nullptr));
    EXPECT_NO_THROW(cuda::CudnnGraph(*api_, sdpa::describe_backward(d), nullptr));
  }
}

// Plans for real devices without them: for each device whose cuDNN properties a GPU run
// recorded (tests/data/cudnn/*.json, written by tools/gpu_check.sh), cuDNN's heuristics must
// offer an engine for every graph -- the check that cuDNN recognizes the graphs as flash
// attention -- and, on a GPU machine, its plan must build (the attention engines compile
// their kernels and load them through the driver, so without a GPU no plan builds).
// Skips where no recording exists yet.
TEST_F(CudnnGraphTest, BuildsPlansForRecordedDevices) {
  if (api_->version < 90800) GTEST_SKIP() << "cuDNN " << api_->version_string() << " < 9.8";
  std::vector<std::pair<std::string, std::string>> devices;  // (name, JSON)
  const std::filesystem::path dir = std::filesystem::path(PAR_TESTDATA_DIR) / "cudnn";
  if (std::filesystem::is_directory(dir))
    for (const auto& e : std::filesystem::directory_iterator(dir))
      if (e.path().extension() == ".json") {
        std::ifstream in(e.path());
        std::stringstream text;
        text << in.rdbuf();
        devices.emplace_back(e.path().filename().string(), text.str());
      }
  // On a GPU machine, its own device too.
  if (cuda::device_count() > 0)
    devices.emplace_back("this device", cuda::cudnn_device_properties_json(*api_, 0));
  if (devices.empty())
    GTEST_SKIP() << "no recorded device properties in " << dir
                 << " (tools/gpu_check.sh on a GPU writes cudnn-device.json)";
  for (const auto& [name, json] : devices) {
    SCOPED_TRACE(name);
    const cuda::CudnnDescriptor device = cuda::cudnn_device_properties(*api_, json);
    for (const sdpa::Dims& d : shapes(api_->version))
      for (bool backward : {false, true}) {
        SCOPED_TRACE(::testing::Message() << (backward ? "backward " : "forward ") << d.nq
                                          << "x" << d.nk << (d.causal ? " causal" : "")
                                          << (d.deterministic ? "" : " atomic dQ"));
        cuda::CudnnGraph g(*api_, backward ? sdpa::describe_backward(d) : sdpa::describe_forward(d),
                           nullptr);
        if (cuda::device_count() > 0) {
          EXPECT_NO_THROW(g.build_plan(nullptr, device.get()));
        } else {
          try {
            g.build_plan(nullptr, device.get());
          } catch (const cuda::CudnnError&) {  // the support checks need a driver
          }
        }
        EXPECT_GT(g.engines_offered(), 0);
        if (g.has_plan()) std::printf("%s: %s\n", name.c_str(), g.engine().c_str());
      }
  }
}

// On a GPU: writes the device's cuDNN properties where PAR_CUDNN_DEVICE_JSON says (what
// the test above replays); run by tools/gpu_check.sh.
TEST(CudnnDeviceProperties, DISABLED_Record) {
  const char* out = std::getenv("PAR_CUDNN_DEVICE_JSON");
  if (!out || !*out) GTEST_SKIP() << "PAR_CUDNN_DEVICE_JSON names no file";
  if (cuda::device_count() == 0) GTEST_SKIP() << "no GPU";
  const cuda::CudnnApi* api = cuda::cudnn_api();
  ASSERT_NE(api, nullptr) << cuda::cudnn_unavailable_reason();
  const std::string json = cuda::cudnn_device_properties_json(*api, 0);
  ASSERT_FALSE(json.empty());
  std::ofstream(out) << json;
  std::printf("recorded cuDNN %s device properties of %s in %s\n", api->version_string().c_str(),
              cuda::describe_device(0).c_str(), out);
}

// The plans' keeping (cudnn_plans.h), which needs no GPU: each thread makes a graph once per
// shape and device and hands the same entry out after, another thread makes its own.
// Without a device every entry is cuDNN's refusal (no handle), which is kept the same way
// so that a refused shape is not tried again; on a GPU they are plans.
TEST_F(CudnnGraphTest, EachThreadMakesAShapeOncePerDevice) {
  const bool gpu = cuda::device_count() > 0;
  sdpa::Dims d{2, 3, 37, 264, 16, 0.25, false, api_->version};
  sdpa::Dims other = d;
  other.nk = 265;
  cuda::CudnnPlans& plans = cuda::CudnnPlans::of_this_thread(*api_, 0);
  EXPECT_EQ(&plans, &cuda::CudnnPlans::of_this_thread(*api_, 0));
  const int64_t built = cuda::CudnnPlans::built();
  EXPECT_EQ(plans.find(false, d), nullptr);
  bool made = false;
  const cuda::CudnnPlans::Entry& e = plans.get(false, d, &made);
  EXPECT_TRUE(made);
  EXPECT_EQ(e.graph != nullptr, gpu) << e.refusal;
  EXPECT_EQ(e.refusal.empty(), gpu) << e.refusal;
  EXPECT_EQ(cuda::CudnnPlans::built(), built + (gpu ? 1 : 0));
  EXPECT_EQ(&plans.get(false, d, &made), &e);
  EXPECT_FALSE(made);
  EXPECT_EQ(plans.find(false, d), &e);
  // A new backend drops the refusals for want of memory only (none here).
  plans.forget_transient();
  EXPECT_EQ(plans.find(false, d), &e);
  EXPECT_FALSE(e.transient);
  // Another direction, shape or device is another entry.
  EXPECT_EQ(plans.find(true, d), nullptr);
  EXPECT_EQ(plans.find(false, other), nullptr);
  EXPECT_NE(&plans.get(false, other, &made), &e);
  EXPECT_TRUE(made);
  cuda::CudnnPlans& device1 = cuda::CudnnPlans::of_this_thread(*api_, 1);
  EXPECT_NE(&device1, &plans);
  EXPECT_EQ(device1.find(false, d), nullptr);

  const cuda::CudnnPlans* theirs = nullptr;
  bool they_made = false;
  const cuda::CudnnPlans::Entry* their_entry = nullptr;
  std::thread([&] {
    cuda::CudnnPlans& p = cuda::CudnnPlans::of_this_thread(*api_, 0);
    theirs = &p;
    EXPECT_EQ(p.find(false, d), nullptr) << "a new thread sees another's entries";
    their_entry = &p.get(false, d, &they_made);
  }).join();
  EXPECT_NE(theirs, &plans);
  EXPECT_TRUE(they_made);
  EXPECT_NE(their_entry, &e);
}

// Which refusals are for want of memory (tried again later); cuDNN's refusal of a graph
// is kept.
TEST(CudnnRefusal, OnlyMemoryRunningOutIsTransient) {
  for (const char* t : {"cudnnCreate: CUDNN_STATUS_ALLOC_FAILED",
                        "cuDNN has no engine for this graph (2 engine configs tried):\n  engine "
                        "config 0 (mode 0): CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED",
                        "CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED",
                        "finalizing an execution plan: CUDNN_STATUS_EXECUTION_FAILED (CUDA error: "
                        "out of memory)",
                        "cudaErrorMemoryAllocation"})
    EXPECT_TRUE(cuda::cudnn_refusal_is_transient(t)) << t;
  for (const char* t :
       {"cuDNN has no engine for this graph (0 engine configs tried):\n  heuristics mode 0: "
        "no engine (none offered)",
        "cuDNN: cannot select device 0: no CUDA-capable device is detected",
        "CUDNN_STATUS_NOT_SUPPORTED (head dimension 20 is not a multiple of 8)", ""})
    EXPECT_FALSE(cuda::cudnn_refusal_is_transient(t)) << t;
}

// A refusal for want of memory is tried again within one backend, each time after twice
// as many calls up to the longest wait; a refusal of the graph itself never is.
TEST_F(CudnnGraphTest, ARefusalForWantOfMemoryIsTriedAgainLessAndLessOften) {
  using Plans = cuda::CudnnPlans;
  Plans& plans = Plans::of_this_thread(*api_, 0);
  // Shapes no other test of this thread uses: entries outlive the test.
  const sdpa::Dims d{1, 2, 24, 777, 16, 0.25, false, api_->version};
  sdpa::Dims kept = d;
  kept.nk = 778;
  struct Lift {
    ~Lift() { Plans::refuse_builds_for_tests(""); }
  } lift;
  Plans::refuse_builds_for_tests("finalizing an execution plan: CUDNN_STATUS_ALLOC_FAILED");
  // Counts the calls up to the next one that tries to build again.
  const auto calls_to_next_try = [&](int64_t most) {
    for (int64_t n = 1; n <= most; ++n) {
      bool made = false;
      const Plans::Entry& e = plans.get(false, d, &made);
      EXPECT_EQ(e.graph, nullptr);
      if (made) return n;
    }
    return int64_t(-1);
  };
  EXPECT_EQ(calls_to_next_try(1), 1);
  const Plans::Entry* e = plans.find(false, d);
  ASSERT_NE(e, nullptr);
  EXPECT_TRUE(e->transient);
  EXPECT_EQ(e->tries, 1);
  EXPECT_EQ(e->retry_wait, Plans::kFirstRetryAfter);
  int64_t wait = Plans::kFirstRetryAfter;
  for (int tries = 2; tries <= 14; ++tries) {
    ASSERT_EQ(calls_to_next_try(Plans::kLongestRetryWait + 1), wait) << "try " << tries;
    wait = std::min(2 * wait, Plans::kLongestRetryWait);
    e = plans.find(false, d);
    EXPECT_EQ(e->tries, tries);
    EXPECT_EQ(e->retry_wait, wait);
  }
  EXPECT_EQ(wait, Plans::kLongestRetryWait);
  // A new backend tries at once.
  plans.forget_transient();
  EXPECT_EQ(plans.find(false, d), nullptr);
  EXPECT_EQ(calls_to_next_try(1), 1);
  EXPECT_EQ(plans.find(false, d)->tries, 1);

  // Once memory is found, the entry is what cuDNN makes of the graph: a plan on a GPU, a
  // kept refusal (no device) here; either way it is not tried again.
  Plans::refuse_builds_for_tests("");
  bool made = false;
  for (int64_t n = 0; n < Plans::kFirstRetryAfter; ++n) plans.get(false, d, &made);
  EXPECT_TRUE(made);
  e = plans.find(false, d);
  EXPECT_FALSE(e->transient);
  EXPECT_EQ(e->tries, 2);
  for (int64_t n = 0; n < 2 * Plans::kLongestRetryWait; ++n) {
    plans.get(false, d, &made);
    ASSERT_FALSE(made) << n;
  }

  Plans::refuse_builds_for_tests("CUDNN_STATUS_NOT_SUPPORTED (no engine for this graph)");
  EXPECT_TRUE(plans.get(false, kept, &made).refusal.find("NOT_SUPPORTED") != std::string::npos);
  EXPECT_TRUE(made);
  EXPECT_FALSE(plans.find(false, kept)->transient);
  for (int64_t n = 0; n < 2 * Plans::kLongestRetryWait; ++n) {
    plans.get(false, kept, &made);
    ASSERT_FALSE(made) << n;
  }
}

// A malformed graph is refused with a message naming the piece, not accepted silently.
TEST_F(CudnnGraphTest, RefusesAMalformedGraph) {
  sdpa::Graph g = sdpa::describe_forward({1, 2, 8, 16, 16, 0.25, false, api_->version});
  for (sdpa::Tensor& t : g.tensors)
    if (t.uid == sdpa::kV) t.dims[3] = 24;  // V's head size no longer matches O's
  try {
    cuda::CudnnGraph graph(*api_, g, nullptr);
    FAIL() << "cuDNN accepted a product of mismatched shapes";
  } catch (const cuda::CudnnError& e) {
    EXPECT_NE(std::string(e.what()).find("P*V"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace par
