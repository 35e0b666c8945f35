// The NCCL communicator in a group of one (this machine may have a single GPU, and NCCL
// does not put two ranks on one device): every collective, every in-place form, device
// and host buffers, each data type, and the ordering with the backend's stream (data
// written by a kernel just before a collective is what it reduces). The multi-rank
// behaviour is NCCL's own; what is par's -- argument mapping, in-place handling, stream
// ordering, staging -- is the same code at any size. Skips without a GPU.
#include <gtest/gtest.h>

#include <numeric>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/nccl_communicator.h"
#include "tests/cuda/cuda_test_util.h"

namespace par {
namespace {

using cuda_test::bitwise_equal;
using cuda_test::DeviceArray;

class NcclTest : public cuda_test::CudaTest {
 protected:
  void SetUp() override {
    cuda_test::CudaTest::SetUp();
    if (IsSkipped()) return;
    ops_ = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
    comm_ = make_nccl_communicator(nccl_unique_id(), 0, 1, cuda::cuda_stream(*ops_));
  }
  std::unique_ptr<Ops<float>> ops_;
  std::unique_ptr<Communicator> comm_;
};

TEST_F(NcclTest, AllReduceOnDeviceFollowsTheComputeStream) {
  ASSERT_EQ(comm_->rank(), 0);
  ASSERT_EQ(comm_->size(), 1);
  const int64_t n = 100003;
  DeviceArray<float> x(*ops_, size_t(n), 1.0f), y(*ops_, size_t(n), 0.0f);
  ops_->fill(x.get(), n, 3.5f);  // queued on the compute stream just before
  comm_->all_reduce(x.get(), y.get(), n, DataType::kFloat32, ReduceOp::kSum);
  ops_->scale(y.get(), n, 2.0);  // queued after: must see the collective's result
  EXPECT_TRUE(bitwise_equal(y.host(), std::vector<float>(size_t(n), 7.0f)));
  comm_->all_reduce(x.get(), x.get(), n, DataType::kFloat32, ReduceOp::kMax);  // in place
  EXPECT_TRUE(bitwise_equal(x.host(), std::vector<float>(size_t(n), 3.5f)));
}

TEST_F(NcclTest, HostBuffersAreStaged) {
  std::vector<int64_t> v(1000);
  std::iota(v.begin(), v.end(), -500);
  const auto want = v;
  comm_->all_reduce(v.data(), v.data(), int64_t(v.size()), DataType::kInt64, ReduceOp::kSum);
  EXPECT_EQ(v, want);
  EXPECT_EQ(comm_->all_reduce_value(2.25), 2.25);
  EXPECT_EQ(comm_->all_reduce_value(int64_t(-7), ReduceOp::kMax), -7);
  std::vector<uint8_t> bytes(77, 200), out(77, 0);
  comm_->all_reduce(bytes.data(), out.data(), 77, DataType::kUInt8, ReduceOp::kSum);
  EXPECT_EQ(out, bytes);
  std::vector<float> b(33, 1.5f);
  comm_->broadcast(b.data(), 33, DataType::kFloat32, 0);
  EXPECT_EQ(b, std::vector<float>(33, 1.5f));
}

TEST_F(NcclTest, ReduceScatterAllGatherAndBroadcastOnDevice) {
  const int64_t n = 4097;
  const auto data = cuda_test::random_vector<float>(n, 3);
  // reduce_scatter: disjoint, MPI's in-place form (recv == send) and NCCL's (the same for
  // rank 0 of a group of one).
  DeviceArray<float> s(*ops_, data), r(*ops_, size_t(n));
  comm_->reduce_scatter(s.get(), r.get(), n, DataType::kFloat32, ReduceOp::kSum);
  EXPECT_TRUE(bitwise_equal(r.host(), data)) << "reduce_scatter";
  comm_->reduce_scatter(s.get(), s.get(), n, DataType::kFloat32, ReduceOp::kSum);
  EXPECT_TRUE(bitwise_equal(s.host(), data)) << "reduce_scatter in place";
  // all_gather: disjoint and in place.
  DeviceArray<float> g(*ops_, size_t(n));
  comm_->all_gather(s.get(), g.get(), n, DataType::kFloat32);
  EXPECT_TRUE(bitwise_equal(g.host(), data)) << "all_gather";
  comm_->all_gather(g.get(), g.get(), n, DataType::kFloat32);
  EXPECT_TRUE(bitwise_equal(g.host(), data)) << "all_gather in place";
  comm_->broadcast(g.get(), n, DataType::kFloat32, 0);
  EXPECT_TRUE(bitwise_equal(g.host(), data)) << "broadcast";
  // Doubles and bytes on the device.
  DeviceArray<double> d(*ops_, std::vector<double>(9, 0.125));
  comm_->all_reduce(d.get(), d.get(), 9, DataType::kFloat64, ReduceOp::kSum);
  EXPECT_EQ(d.host(), std::vector<double>(9, 0.125));
  DeviceArray<uint8_t> u(*ops_, std::vector<uint8_t>(5, 250));
  comm_->all_reduce(u.get(), u.get(), 5, DataType::kUInt8, ReduceOp::kMax);
  EXPECT_EQ(u.host(), std::vector<uint8_t>(5, 250));
  comm_->barrier();
}

TEST_F(NcclTest, RejectsPartialOverlap) {
  DeviceArray<float> x(*ops_, 100);
  EXPECT_THROW(comm_->all_reduce(x.get(), x.get() + 1, 50, DataType::kFloat32, ReduceOp::kSum),
               std::logic_error);
}

}  // namespace
}  // namespace par
