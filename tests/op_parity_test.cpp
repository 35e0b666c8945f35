// The parity table of the Ops contract (tests/op_cases.h) on the CPU: every operation of
// core/ops.h has a case, every case calls the operations it names, and for every case the
// CPU in float agrees with the CPU in double and repeats its own results bit for bit. The
// CUDA half is tests/cuda/cuda_op_parity_test.cpp.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "kernels/cpu/cpu_ops.h"
#include "tests/op_cases.h"

namespace par::op_parity {

// GoogleTest prints a case as its name.
inline void PrintTo(const OpCase& c, std::ostream* os) { *os << c.name; }

namespace {

void expect_no_problems(const Outputs& out, const char* backend) {
  for (const std::string& p : out.problems) ADD_FAILURE() << backend << ": " << p;
}

TEST(OpParity, EveryOperationHasACase) {
  std::set<std::string> covered;
  for (const OpCase& c : op_cases()) covered.insert(c.ops.begin(), c.ops.end());
  std::string missing;
  for (const std::string& op : listed_operations())
    if (!covered.count(op)) missing += (missing.empty() ? "" : ", ") + op;
  EXPECT_TRUE(missing.empty())
      << "operations of core/ops.h (PAR_OPS_METHODS) without a case in tests/op_cases.cpp: "
      << missing;
}

TEST(OpParity, CasesNameListedOperations) {
  const std::vector<std::string> listed = listed_operations();
  const std::set<std::string> names(listed.begin(), listed.end());
  EXPECT_EQ(names.size(), listed.size()) << "an operation is listed twice";
  for (const OpCase& c : op_cases()) {
    EXPECT_FALSE(c.ops.empty()) << c.name;
    for (const std::string& op : c.ops)
      EXPECT_TRUE(names.count(op)) << c.name << " names " << op << ", not an operation";
  }
}

class CpuOpParity : public ::testing::TestWithParam<OpCase> {};

TEST_P(CpuOpParity, FloatAgreesWithDoubleAndRepeatsItself) {
  const OpCase& c = GetParam();
  cpu::CpuOps<double> cpu64;
  cpu::CpuOps<float> cpu32;
  const Outputs want = run_case(c, cpu64);
  const Outputs got = run_case(c, cpu32);
  expect_no_problems(want, "cpu double");
  expect_no_problems(got, "cpu float");
  EXPECT_FALSE(want.declined || got.declined) << "the CPU backend has every kernel";
  EXPECT_TRUE(agree(got, want, c.tol, c.tol));
  EXPECT_TRUE(identical(run_case(c, cpu32), got)) << "a second run on the CPU in float";
}

INSTANTIATE_TEST_SUITE_P(Cases, CpuOpParity, ::testing::ValuesIn(op_cases()),
                         [](const ::testing::TestParamInfo<OpCase>& info) {
                           return test_name(info.param.name);
                         });

}  // namespace
}  // namespace par::op_parity
