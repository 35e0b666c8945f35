// Helpers of the CUDA tests: skipping without a GPU, device arrays through the Ops
// interface, comparisons relative to a tensor's largest entry, and the tolerance of each
// matrix-product precision.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tests/test_util.h"

#include "core/ops.h"
#include "kernels/cuda/cuda_ops.h"

namespace par::cuda {
// GoogleTest prints a precision parameter as its name.
inline void PrintTo(MatmulPrecision p, std::ostream* os) { *os << precision_name(p); }
}  // namespace par::cuda

namespace par::cuda_test {

using cuda::MatmulPrecision;

inline bool have_gpu() { return cuda::device_count() > 0; }

#define PAR_SKIP_WITHOUT_GPU()                                                           \
  do {                                                                                   \
    if (!::par::cuda_test::have_gpu())                                                   \
      GTEST_SKIP() << "no CUDA device visible (" << ::par::cuda::no_device_reason()      \
                   << "): this test needs a GPU";                                        \
  } while (0)

// Skips every test of a suite without a GPU.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override { PAR_SKIP_WITHOUT_GPU(); }
};

// The same, for suites run once per matrix-product precision.
class CudaPrecisionTest : public ::testing::TestWithParam<MatmulPrecision> {
 protected:
  void SetUp() override { PAR_SKIP_WITHOUT_GPU(); }
  std::unique_ptr<Ops<float>> make_ops() const { return cuda::make_cuda_ops(0, GetParam()); }
};

inline std::string precision_test_name(const ::testing::TestParamInfo<MatmulPrecision>& info) {
  return cuda::precision_name(info.param);
}

#define PAR_ALL_PRECISIONS                                                                \
  ::testing::Values(::par::cuda::MatmulPrecision::kFloat32,                               \
                    ::par::cuda::MatmulPrecision::kTF32, ::par::cuda::MatmulPrecision::kBF16), \
      ::par::cuda_test::precision_test_name

// Tolerances of a single matrix product (or an op built on a few), relative to the largest
// entry of the expected tensor (near-zero entries would make per-entry relative errors
// meaningless):
// - fp32: both backends round in float32, in different orders: ~1e-6 expected, 1e-5 allowed.
// - tf32: each input rounded to an 11-bit significand (relative error up to 2^-11 = 4.9e-4);
//   random-sign sums keep the result's error near that: 2e-3 allowed.
// - bf16: 8-bit significands (2^-8 = 3.9e-3 per input): 1.5e-2 allowed.
// x rounded as the tensor cores round an operand in precision p: tf32 keeps 10 stored
// mantissa bits, bf16 7, both round-to-nearest-even; fp32 is left alone.
inline float round_to(float x, MatmulPrecision p) {
  if (p == MatmulPrecision::kFloat32) return x;
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7F800000u) == 0x7F800000u) return x;  // inf, NaN
  const int drop = p == MatmulPrecision::kBF16 ? 16 : 13;
  const uint32_t half = (1u << (drop - 1)) - 1, lsb = (u >> drop) & 1u;
  u = (u + half + lsb) & ~((1u << drop) - 1u);
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

inline double matmul_tol(MatmulPrecision p) {
  switch (p) {
    case MatmulPrecision::kFloat32: return 1e-5;
    case MatmulPrecision::kTF32: return 2e-3;
    case MatmulPrecision::kBF16: return 1.5e-2;
  }
  return 0;
}

// Attention chains two products with an exp between them (and the backward five): twice
// to three times a single product's tolerance.
inline double attention_tol(MatmulPrecision p) {
  switch (p) {
    case MatmulPrecision::kFloat32: return 3e-5;
    case MatmulPrecision::kTF32: return 5e-3;
    case MatmulPrecision::kBF16: return 4e-2;
  }
  return 0;
}

using ::par::testing_util::random_vector;  // the CPU tests' inputs, the same draws

// An array in a backend's memory, freed with it.
template <typename T>
class DeviceArray {
 public:
  DeviceArray(Ops<float>& ops, const std::vector<T>& init) : ops_(ops), n_(init.size()) {
    p_ = static_cast<T*>(ops_.allocate(std::max<size_t>(n_, 1) * sizeof(T)));
    if (n_) ops_.upload(p_, init.data(), n_ * sizeof(T));
  }
  DeviceArray(Ops<float>& ops, size_t n, T value = T(0))
      : DeviceArray(ops, std::vector<T>(n, value)) {}
  ~DeviceArray() { ops_.deallocate(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() { return p_; }
  const T* get() const { return p_; }
  size_t size() const { return n_; }
  std::vector<T> host() const {
    std::vector<T> out(n_);
    if (n_) ops_.download(out.data(), p_, n_ * sizeof(T));
    return out;
  }
  void set(const std::vector<T>& v) {
    ASSERT_EQ(v.size(), n_);
    if (n_) ops_.upload(p_, v.data(), n_ * sizeof(T));
  }

 private:
  Ops<float>& ops_;
  size_t n_;
  T* p_ = nullptr;
};

using testing_util::close;

inline ::testing::AssertionResult bitwise_equal(const std::vector<float>& a,
                                                const std::vector<float>& b) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << "size " << a.size() << " vs " << b.size();
  if (!a.empty() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0)
    return ::testing::AssertionSuccess();
  if (a.empty()) return ::testing::AssertionSuccess();
  size_t diffs = 0, first = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0 && diffs++ == 0) first = i;
  return ::testing::AssertionFailure() << diffs << " of " << a.size()
                                       << " entries differ in their bits, first at " << first
                                       << " (" << a[first] << " vs " << b[first] << ")";
}

}  // namespace par::cuda_test
