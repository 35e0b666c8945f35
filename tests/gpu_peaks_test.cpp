// The dense peak table par bench divides by (launch/gpu_peaks.h): the cards by the names
// the CUDA backend's device description carries, longer names before their prefixes.
#include <gtest/gtest.h>

#include "launch/gpu_peaks.h"

namespace par {
namespace {

TEST(GpuPeaks, KnownCardsByPrecision) {
  const std::string h200 =
      "cuda:0 (NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB, driver 13.0, runtime 13.0)), bf16";
  ASSERT_TRUE(dense_peak(h200, "bf16").has_value());
  EXPECT_EQ(dense_peak(h200, "bf16")->card, "H200");
  EXPECT_DOUBLE_EQ(dense_peak(h200, "bf16")->tflops, 989.4);
  EXPECT_DOUBLE_EQ(dense_peak(h200, "tf32")->tflops, 494.7);
  EXPECT_DOUBLE_EQ(dense_peak(h200, "fp32")->tflops, 66.9);
  // The PCIe H100 is slower than the SXM one its name contains.
  EXPECT_DOUBLE_EQ(dense_peak("NVIDIA H100 PCIe", "bf16")->tflops, 756.0);
  EXPECT_DOUBLE_EQ(dense_peak("NVIDIA H100 80GB HBM3", "bf16")->tflops, 989.4);
  EXPECT_EQ(dense_peak("NVIDIA GH200 480GB", "bf16")->card, "GH200");
  EXPECT_DOUBLE_EQ(dense_peak("NVIDIA A100-SXM4-80GB", "tf32")->tflops, 156.0);
  // The NVL H200 (PCIe, lower power) is slower than the SXM one its name contains.
  EXPECT_EQ(dense_peak("NVIDIA H200 NVL", "bf16")->card, "H200 NVL");
  EXPECT_DOUBLE_EQ(dense_peak("NVIDIA H200 NVL", "bf16")->tflops, 835.0);
}

TEST(GpuPeaks, UnknownCardOrPrecision) {
  EXPECT_FALSE(dense_peak("NVIDIA GeForce RTX 4090", "bf16").has_value());
  EXPECT_FALSE(dense_peak("NVIDIA H200", "fp8").has_value());
  EXPECT_FALSE(dense_peak("cpu (OpenBLAS 0.3.21)", "fp32").has_value());
}

}  // namespace
}  // namespace par
