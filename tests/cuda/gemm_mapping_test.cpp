// The row-major to column-major mapping of the CUDA backend's matrix products
// (kernels/cuda/gemm_mapping.h), checked on the CPU: the mapped product, evaluated with
// BLAS's column-major definition, must be the row-major product. Runs without a GPU.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cuda/gemm_mapping.h"
#include "tests/cuda/cuda_test_util.h"

namespace par {
namespace {

using cuda::ColumnMajorGemm;
using cuda::RowMajorGemm;

// BLAS sgemm semantics: column-major, element (i, j) of a matrix X with leading dimension
// ld at X[i + j*ld]; op(X) = X or X^T.
void column_major_reference(const ColumnMajorGemm& g) {
  for (int64_t bt = 0; bt < g.batch; ++bt) {
    const float* a = g.first + bt * g.stride_first;
    const float* b = g.second + bt * g.stride_second;
    float* c = g.c + bt * g.stride_c;
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < g.n; ++j) {
        double s = 0;
        for (int64_t l = 0; l < g.k; ++l) {
          const float av = g.trans_first ? a[l + i * g.ld_first] : a[i + l * g.ld_first];
          const float bv = g.trans_second ? b[j + l * g.ld_second] : b[l + j * g.ld_second];
          s += double(av) * double(bv);
        }
        float& out = c[i + j * g.ldc];
        out = float(g.alpha * s + (g.beta == 0 ? 0.0 : double(g.beta) * double(out)));
      }
  }
}

// The row-major definition itself.
void row_major_reference(const RowMajorGemm& g) {
  for (int64_t bt = 0; bt < g.batch; ++bt) {
    const float* a = g.a + bt * g.stride_a;
    const float* b = g.b + bt * g.stride_b;
    float* c = g.c + bt * g.stride_c;
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < g.n; ++j) {
        double s = 0;
        for (int64_t l = 0; l < g.k; ++l) {
          const float av = g.trans_a ? a[l * g.lda + i] : a[i * g.lda + l];
          const float bv = g.trans_b ? b[j * g.ldb + l] : b[l * g.ldb + j];
          s += double(av) * double(bv);
        }
        float& out = c[i * g.ldc + j];
        out = float(g.alpha * s + (g.beta == 0 ? 0.0 : double(g.beta) * double(out)));
      }
  }
}

TEST(GemmMapping, ColumnMajorEvaluationIsTheRowMajorProduct) {
  int checked = 0;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int64_t batch : {1, 3}) {
        const int64_t m = 5, n = 7, k = 4;
        RowMajorGemm g;
        g.trans_a = ta;
        g.trans_b = tb;
        g.m = m, g.n = n, g.k = k;
        // Leading dimensions wider than the rows, as for one head of [rows, heads*dim].
        g.lda = (ta ? m : k) + 3;
        g.ldb = (tb ? k : n) + 2;
        g.ldc = n + 1;
        const int64_t a_rows = ta ? k : m, b_rows = tb ? n : k;
        g.stride_a = a_rows * g.lda + 1;
        g.stride_b = b_rows * g.ldb + 2;
        g.stride_c = m * g.ldc + 5;
        g.alpha = 0.75f;
        g.beta = 0.5f;
        g.batch = batch;
        ASSERT_TRUE(cuda::leading_dimensions_valid(g));
        const auto a = cuda_test::random_vector<float>(g.stride_a * batch, 1);
        const auto b = cuda_test::random_vector<float>(g.stride_b * batch, 2);
        const auto c0 = cuda_test::random_vector<float>(g.stride_c * batch, 3);
        std::vector<float> want = c0, got = c0;
        g.a = a.data();
        g.b = b.data();
        g.c = want.data();
        row_major_reference(g);
        g.c = got.data();
        column_major_reference(cuda::to_column_major(g));
        EXPECT_TRUE(cuda_test::close(got, want, 1e-6))
            << "trans_a " << ta << " trans_b " << tb << " batch " << batch;
        ++checked;
      }
  EXPECT_EQ(checked, 8);
}

TEST(GemmMapping, LeadingDimensionChecks) {
  RowMajorGemm g;
  g.m = 4, g.n = 6, g.k = 3;
  g.lda = 3, g.ldb = 6, g.ldc = 6;
  EXPECT_TRUE(cuda::leading_dimensions_valid(g));
  g.ldc = 5;
  EXPECT_FALSE(cuda::leading_dimensions_valid(g));
  g.ldc = 6;
  g.trans_a = true;  // A stored [k, m]: needs lda >= m
  EXPECT_FALSE(cuda::leading_dimensions_valid(g));
  g.lda = 4;
  EXPECT_TRUE(cuda::leading_dimensions_valid(g));
}

// The compact copy of an operand, as kern::matrix_to_bf16 makes it (without the rounding).
std::vector<float> compact(const float* src, const cuda::StoredOperand& o) {
  std::vector<float> r;
  for (int64_t i = 0; i < o.rows; ++i)
    for (int64_t j = 0; j < o.cols; ++j) r.push_back(src[i * o.ld + j]);
  return r;
}

// The product over compact copies of its operands (what the bf16 path multiplies) is the
// product itself, for every transpose and leading dimensions wider than the rows.
TEST(GemmMapping, CompactOperandsGiveTheSameProduct) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      RowMajorGemm g;
      g.trans_a = ta;
      g.trans_b = tb;
      g.m = 6, g.n = 5, g.k = 7;
      g.lda = (ta ? g.m : g.k) + 4;
      g.ldb = (tb ? g.k : g.n) + 3;
      g.ldc = g.n;
      g.alpha = 1.5f;
      const cuda::StoredOperand sa = cuda::stored_a(g), sb = cuda::stored_b(g);
      EXPECT_EQ(sa.rows * sa.cols, g.m * g.k);
      EXPECT_EQ(sb.rows * sb.cols, g.k * g.n);
      const auto a = cuda_test::random_vector<float>(sa.rows * g.lda, 4);
      const auto b = cuda_test::random_vector<float>(sb.rows * g.ldb, 5);
      std::vector<float> want(size_t(g.m * g.n)), got(want.size());
      g.a = a.data();
      g.b = b.data();
      g.c = want.data();
      row_major_reference(g);
      const auto ca = compact(a.data(), sa), cb = compact(b.data(), sb);
      RowMajorGemm h = cuda::with_compact_operands(g);
      ASSERT_TRUE(cuda::leading_dimensions_valid(h));
      h.a = ca.data();
      h.b = cb.data();
      h.c = got.data();
      column_major_reference(cuda::to_column_major(h));
      EXPECT_TRUE(cuda_test::close(got, want, 1e-6)) << "trans_a " << ta << " trans_b " << tb;
    }
}

// Which products convert: those with many multiply-adds per converted element.
TEST(GemmMapping, Bf16OperandsPayForTheInputSideOnly) {
  auto product = [](int64_t m, int64_t n, int64_t k, bool ta) {
    RowMajorGemm g;
    g.trans_a = ta;
    g.trans_b = !ta;
    g.m = m, g.n = n, g.k = k;
    g.lda = ta ? m : k;
    g.ldb = ta ? n : k;
    g.ldc = n;
    return g;
  };
  const int64_t N = 131072, d = 1024, M = 1024;
  // gpu-100m-131k's key (or value) projection, y = x w^T: [N, d] x [d, d]^T.
  EXPECT_TRUE(cuda::bf16_operands_pay(product(N, d, d, false)));
  // Its backward: dx and dw share dy's copy: 2 N d d multiply-adds over dy and x [N, d]
  // and w [d, d].
  EXPECT_TRUE(cuda::bf16_operands_pay(2 * N * d * d, 2 * N * d + d * d));
  // An 8192^3 product.
  EXPECT_TRUE(cuda::bf16_operands_pay(product(8192, 8192, 8192, false)));
  // A latent layer's projection of one example: M rows.
  EXPECT_FALSE(cuda::bf16_operands_pay(product(M, 3 * d, d, false)));
  EXPECT_FALSE(cuda::bf16_operands_pay(product(M, 4 * d, d, false)));
  // Of a batch of 8: 8 M rows.
  EXPECT_TRUE(cuda::bf16_operands_pay(product(8 * M, 3 * d, d, false)));
  // A decoding step: one row.
  EXPECT_FALSE(cuda::bf16_operands_pay(product(1, 4 * d, d, false)));
  // A thin product over many rows (d = 64): few multiply-adds per element.
  EXPECT_FALSE(cuda::bf16_operands_pay(product(N, 64, 64, false)));
  // Batched products never.
  RowMajorGemm batched = product(8192, 8192, 8192, false);
  batched.batch = 2;
  EXPECT_FALSE(cuda::bf16_operands_pay(batched));
}

}  // namespace
}  // namespace par
