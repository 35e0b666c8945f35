// The bias in cuBLASLt's epilogue (kernels/cuda/lt_linear.h). Anywhere: the layouts it is
// given describe the linear layer (checked by evaluating them as cuBLASLt reads them) and
// the alignments it is told. On a GPU: the epilogue's product against the reference, into
// float32 and into bfloat16, and the backend's linear layers through it.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "core/bf16.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/lt_linear.h"
#include "tests/cuda/cuda_test_util.h"

namespace par {
namespace {

using cuda::ColumnMajorGemm;
using cuda::LtShapes;
using cuda_test::random_vector;

// D = op(first) op(second) + bias (broadcast along D's columns), each matrix read
// column-major as its layout says: element (i, j) of a rows x cols matrix at i + j * ld.
std::vector<double> evaluate(const ColumnMajorGemm& c, const LtShapes& s,
                             const std::vector<double>& first, const std::vector<double>& second,
                             const std::vector<double>& bias) {
  auto at = [](const std::vector<double>& m, uint64_t rows, uint64_t cols, int64_t ld,
               int64_t i, int64_t j) {
    EXPECT_LT(uint64_t(i), rows);
    EXPECT_LT(uint64_t(j), cols);
    EXPECT_GE(uint64_t(ld), rows);
    return m[size_t(i + j * ld)];
  };
  std::vector<double> d(size_t(s.ld_d) * s.d_cols, 0.0);
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) {
      double sum = bias[size_t(i)];
      for (int64_t l = 0; l < c.k; ++l) {
        const double f = c.trans_first ? at(first, s.first_rows, s.first_cols, s.ld_first, l, i)
                                       : at(first, s.first_rows, s.first_cols, s.ld_first, i, l);
        const double g = c.trans_second
                             ? at(second, s.second_rows, s.second_cols, s.ld_second, j, l)
                             : at(second, s.second_rows, s.second_cols, s.ld_second, l, j);
        sum += f * g;
      }
      d[size_t(i + j * s.ld_d)] = sum;
    }
  return d;
}

// The column-major product, w's copy first and x's second, read as cuBLASLt reads it, leaves
// y = x w^T + b in row-major [rows, out].
TEST(LtLinearShapes, TheColumnMajorProductIsTheLinearLayer) {
  for (const auto& [rows, in, out] : {std::tuple<int64_t, int64_t, int64_t>{5, 3, 4},
                                      {1, 7, 2}, {6, 1, 9}}) {
    const ColumnMajorGemm c = cuda::linear_as_column_major(rows, in, out);
    const LtShapes s = cuda::lt_shapes(c);
    std::vector<double> x(static_cast<size_t>(rows * in)), w(static_cast<size_t>(out * in)),
        b(static_cast<size_t>(out));
    for (size_t i = 0; i < x.size(); ++i) x[i] = double(i % 7) - 3 + 0.25 * double(i);
    for (size_t i = 0; i < w.size(); ++i) w[i] = double(i % 5) - 2 - 0.5 * double(i);
    for (size_t i = 0; i < b.size(); ++i) b[i] = 10.0 * double(i + 1);
    const std::vector<double> d = evaluate(c, s, w, x, b);
    EXPECT_EQ(s.d_rows * s.d_cols, uint64_t(rows * out));
    EXPECT_EQ(s.ld_d, out);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o) {
        double want = b[size_t(o)];
        for (int64_t i = 0; i < in; ++i) want += x[size_t(r * in + i)] * w[size_t(o * in + i)];
        EXPECT_EQ(d[size_t(r * out + o)], want) << rows << "x" << in << "->" << out << " at " << r
                                                << ", " << o;
      }
  }
}

TEST(LtLinearShapes, AlignmentIsTheLargestPowerOfTwoUpTo256) {
  auto at = [](uintptr_t a) { return cuda::pointer_alignment(reinterpret_cast<const void*>(a)); };
  EXPECT_EQ(at(0x1000), 256);
  EXPECT_EQ(at(0x300), 256);
  EXPECT_EQ(at(0x1080), 128);
  EXPECT_EQ(at(0x1008), 8);
  EXPECT_EQ(at(0x1002), 2);
  EXPECT_EQ(at(0x1001), 1);
}

class CudaLtLinear : public cuda_test::CudaTest {};

// y = x w^T + b through the epilogue, on bfloat16 x and w: float32 sums of the rounded
// operands plus the bias, against double. Into float32 cuBLASLt must take it; into
// bfloat16 (the values' projection) it may decline, which is then said, and where it takes
// it y is that sum rounded once (within one bfloat16 step of the float32 answer's
// rounding).
TEST_F(CudaLtLinear, BiasInTheEpilogueIsAddedToTheProduct) {
  const int64_t rows = 4160, in = 64, out = 96;
  std::vector<uint16_t> x16, w16;
  for (float v : random_vector<float>(rows * in, 80)) x16.push_back(bf16_bits(v));
  for (float v : random_vector<float>(out * in, 81, 0.2)) w16.push_back(bf16_bits(v));
  const std::vector<float> b = random_vector<float>(out, 82);
  std::vector<double> want(size_t(rows * out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double s = b[size_t(o)];
      for (int64_t i = 0; i < in; ++i)
        s += double(bf16_float(x16[size_t(r * in + i)])) * double(bf16_float(w16[size_t(o * in + i)]));
      want[size_t(r * out + o)] = s;
    }
  double scale = 0;
  for (double v : want) scale = std::max(scale, std::abs(v));

  void *gx, *gw, *gb, *gy, *workspace;
  const size_t workspace_bytes = size_t(32) << 20;
  PAR_CUDA_CHECK(cudaMalloc(&gx, x16.size() * 2));
  PAR_CUDA_CHECK(cudaMalloc(&gw, w16.size() * 2));
  PAR_CUDA_CHECK(cudaMalloc(&gb, b.size() * 4));
  PAR_CUDA_CHECK(cudaMalloc(&gy, size_t(rows * out) * 4));
  PAR_CUDA_CHECK(cudaMalloc(&workspace, workspace_bytes));
  PAR_CUDA_CHECK(cudaMemcpy(gx, x16.data(), x16.size() * 2, cudaMemcpyHostToDevice));
  PAR_CUDA_CHECK(cudaMemcpy(gw, w16.data(), w16.size() * 2, cudaMemcpyHostToDevice));
  PAR_CUDA_CHECK(cudaMemcpy(gb, b.data(), b.size() * 4, cudaMemcpyHostToDevice));
  cuda::LtLinear lt;
  const ColumnMajorGemm c = cuda::linear_as_column_major(rows, in, out);
  for (bool y_bf16 : {false, true}) {
    PAR_CUDA_CHECK(cudaMemset(gy, 0x7F, size_t(rows * out) * 4));
    const bool taken = lt.forward(nullptr, workspace, workspace_bytes, c,
                                  static_cast<const uint16_t*>(gw), static_cast<const uint16_t*>(gx),
                                  gy, y_bf16, static_cast<const float*>(gb));
    if (!y_bf16) {
      EXPECT_TRUE(taken) << "cuBLASLt declined the bias epilogue into float32";
    }
    if (!taken) {
      std::printf("note: cuBLASLt declined the bias epilogue into %s\n",
                  y_bf16 ? "bfloat16" : "float32");
      std::vector<uint8_t> bytes(size_t(rows * out) * 4);
      PAR_CUDA_CHECK(cudaMemcpy(bytes.data(), gy, bytes.size(), cudaMemcpyDeviceToHost));
      EXPECT_EQ(std::count(bytes.begin(), bytes.end(), uint8_t(0x7F)), int64_t(bytes.size()))
          << "a declined call wrote its output";
      continue;
    }
    PAR_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<double> got(size_t(rows * out));
    if (y_bf16) {
      std::vector<uint16_t> y(got.size());
      PAR_CUDA_CHECK(cudaMemcpy(y.data(), gy, y.size() * 2, cudaMemcpyDeviceToHost));
      for (size_t i = 0; i < y.size(); ++i) got[i] = double(bf16_float(y[i]));
    } else {
      std::vector<float> y(got.size());
      PAR_CUDA_CHECK(cudaMemcpy(y.data(), gy, y.size() * 4, cudaMemcpyDeviceToHost));
      for (size_t i = 0; i < y.size(); ++i) got[i] = double(y[i]);
    }
    double err = 0;
    for (size_t i = 0; i < got.size(); ++i) err = std::max(err, std::abs(got[i] - want[i]));
    // Float32 sums of 64 terms: ~1e-6 of the largest; bfloat16 storage adds half a step.
    EXPECT_LE(err, (y_bf16 ? 0x1p-8 : 2e-5) * scale) << (y_bf16 ? "bfloat16" : "float32");
  }
  for (void* p : {gx, gw, gb, gy, workspace}) cudaFree(p);
}

}  // namespace
}  // namespace par
