// The flash-attention graphs through cuDNN itself, without a GPU: cuDNN creates and
// finalizes every tensor and operation descriptor and the operation graph of each graph
// par uses (forward and backward, with and without the causal mask, the model's shapes
// and small ones), so a wrong attribute or an operation cuDNN does not accept fails here
// rather than on a GPU machine. Choosing an engine needs a device (the GPU tests).
// Skips, saying why, where cuDNN cannot be loaded.
#include <gtest/gtest.h>

#include "kernels/cuda/cudnn_api.h"
#include "kernels/cuda/cudnn_graph.h"
#include "kernels/cuda/sdpa_graph.h"

namespace par {
namespace {

namespace sdpa = cuda::sdpa;

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
  // The 100M config's cross-attention (one example, 16 heads of 64, 1024 queries over
  // the 130049 keys all of them see), its latent self-attention (causal), and small ones.
  const sdpa::Dims shapes[] = {
      {1, 16, 1024, 130049, 64, 0.125, false, api_->version},
      {1, 16, 1024, 1024, 64, 0.125, true, api_->version},
      {2, 3, 37, 264, 16, 0.25, false, api_->version},
      {3, 2, 45, 45, 16, 0.25, true, api_->version},
      {1, 1, 20, 90, 128, 0.088, false, api_->version},
  };
  for (const sdpa::Dims& d : shapes) {
    SCOPED_TRACE(::testing::Message() << d.batch << "x" << d.heads << "x" << d.nq << "x" << d.nk
                                      << "x" << d.head_dim << (d.causal ? " causal" : ""));
    EXPECT_NO_THROW(cuda::CudnnGraph(*api_, sdpa::describe_forward(d), nullptr));
    EXPECT_NO_THROW(cuda::CudnnGraph(*api_, sdpa::describe_backward(d), nullptr));
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
