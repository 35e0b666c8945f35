// The CPU backend's float LayerNorm backward, whose dw and db sum blocks of 8 rows in float
// before adding them in double, against the same op in double: a row count that leaves a
// partial block and splits over 1 to 3 threads, dx both written and accumulated.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::cast;
using testing_util::max_rel_err;

TEST(CpuLayerNorm, FloatBackwardMatchesDouble) {
  const int64_t rows = 1003, d = 256;
  const auto x = testing_util::random_vector<double>(rows * d, 41, 2.0);
  const auto dy = testing_util::random_vector<double>(rows * d, 42);
  const auto w = testing_util::random_vector<double>(d, 43), b = testing_util::random_vector<double>(d, 44);
  const auto dx0 = testing_util::random_vector<double>(rows * d, 45);

  // The reference in double: statistics, then dx (accumulated onto dx0), dw and db.
  cpu::CpuOps<double> dops;
  std::vector<double> y(static_cast<size_t>(rows * d)), mu(static_cast<size_t>(rows)),
      rs(static_cast<size_t>(rows));
  dops.layernorm_forward(y.data(), mu.data(), rs.data(), x.data(), w.data(), b.data(), rows, d,
                         1e-5);
  std::vector<double> want_dx = dx0, want_dw(size_t(d), 0.0), want_db(size_t(d), 0.0);
  dops.layernorm_backward(want_dx.data(), true, want_dw.data(), want_db.data(), dy.data(),
                          x.data(), mu.data(), rs.data(), w.data(), rows, d);
  // The rows' terms of dw and db really are spread: no single row dominates the sums.
  ASSERT_GT(*std::max_element(want_dw.begin(), want_dw.end()), 1.0);

  cpu::CpuOps<float> ops;
  const auto xf = cast<float>(x), dyf = cast<float>(dy), wf = cast<float>(w), bf = cast<float>(b);
  std::vector<float> yf(y.size()), muf(mu.size()), rsf(rs.size());
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE(testing::Message() << threads << " threads");
    omp_set_num_threads(threads);
    ops.layernorm_forward(yf.data(), muf.data(), rsf.data(), xf.data(), wf.data(), bf.data(),
                          rows, d, 1e-5f);
    std::vector<float> dx = cast<float>(dx0), dw(size_t(d), 0.0f), db(size_t(d), 0.0f);
    ops.layernorm_backward(dx.data(), true, dw.data(), db.data(), dyf.data(), xf.data(),
                           muf.data(), rsf.data(), wf.data(), rows, d);
    EXPECT_LE(max_rel_err(dx, want_dx), 1e-5) << "dx";
    EXPECT_LE(max_rel_err(dw, want_dw), 1e-5) << "dw";
    EXPECT_LE(max_rel_err(db, want_db), 1e-5) << "db";
    // Written rather than accumulated: the same gradient without dx0.
    std::vector<float> dx_new(dx.size(), 123.0f);
    std::fill(dw.begin(), dw.end(), 0.0f);
    std::fill(db.begin(), db.end(), 0.0f);
    ops.layernorm_backward(dx_new.data(), false, dw.data(), db.data(), dyf.data(), xf.data(),
                           muf.data(), rsf.data(), wf.data(), rows, d);
    std::vector<double> want_new(want_dx.size());
    for (size_t i = 0; i < want_new.size(); ++i) want_new[i] = want_dx[i] - dx0[i];
    EXPECT_LE(max_rel_err(dx_new, want_new), 1e-5) << "dx written";
    EXPECT_LE(max_rel_err(dw, want_dw), 1e-5) << "dw, second call";
  }
  omp_set_num_threads(saved);
}

}  // namespace
}  // namespace par
