// Which OpenBLAS kernels par runs with: the choice rule, and that the real binary applies it.
#include "kernels/cpu/blas_setup.h"

#include <gtest/gtest.h>

#include <regex>
#include <string>

#include "tests/par_cli.h"

namespace par {
namespace {

std::string core_or_keep(const char* current, bool avx512, bool avx2) {
  const char* better = better_blas_core(current, avx512, avx2);
  return better ? better : current;
}

TEST(BlasSetup, FallbackKernelsAreReplacedByTheBestTheCpuRuns) {
  for (const char* core : {"Prescott", "Core2", "Nehalem", "Sandybridge"}) {
    EXPECT_EQ(core_or_keep(core, true, true), "SkylakeX") << core;
    EXPECT_EQ(core_or_keep(core, false, true), "Haswell") << core;
    EXPECT_EQ(better_blas_core(core, false, false), nullptr) << core;
  }
}

TEST(BlasSetup, OpenBlasOwnChoiceForAKnownCpuIsKept) {
  for (const char* core : {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"}) {
    EXPECT_EQ(better_blas_core(core, true, true), nullptr) << core;
    EXPECT_EQ(better_blas_core(core, false, true), nullptr) << core;
  }
  EXPECT_EQ(better_blas_core(nullptr, true, true), nullptr);
}

TEST(BlasSetup, WarnsOfKernelsWithoutAvx512OnAnAvx512Cpu) {
  const std::string chosen = blas_kernel_warning("Haswell", true, "Haswell");
  EXPECT_NE(chosen.find("OPENBLAS_CORETYPE=Haswell chose them): unset it"), std::string::npos) << chosen;
  const std::string own = blas_kernel_warning("Zen", true, nullptr);
  EXPECT_NE(own.find("Zen kernels"), std::string::npos) << own;
  EXPECT_NE(own.find("set OPENBLAS_CORETYPE=SkylakeX"), std::string::npos) << own;
  for (const char* core : {"SkylakeX", "Cooperlake", "SapphireRapids"})
    EXPECT_EQ(blas_kernel_warning(core, true, core), "") << core;
  EXPECT_EQ(blas_kernel_warning("Haswell", false, "Haswell"), "");
  EXPECT_EQ(blas_kernel_warning(nullptr, true, nullptr), "");
}

// The core `par bench` reports, from its "cpu (OpenBLAS x, core NAME, ...)" line; `err`
// gets its standard error.
std::string reported_core(const testing_util::TempDir& dir, const std::string& env,
                          std::string* err = nullptr) {
  const auto r = testing_util::run_shell(
      dir, cat("env -u OPENBLAS_CORETYPE -u PAR_KEEP_BLAS_CORE ", env, " '", PAR_BINARY,
               "' bench --steps 1 --config ",
               testing_util::quote(testing_util::configs_dir() + "tiny.ini")));
  EXPECT_EQ(r.rc, 0) << r.err;
  if (err) *err = r.err;
  std::smatch m;
  EXPECT_TRUE(std::regex_search(r.out, m, std::regex("core ([A-Za-z0-9]+),"))) << r.out;
  return m.size() > 1 ? m[1].str() : "";
}

TEST(BlasSetup, ParRunsTheBetterCoreForThisCpu) {
  testing_util::TempDir dir;
  const std::string own = reported_core(dir, "PAR_KEEP_BLAS_CORE=1");
  ASSERT_FALSE(own.empty());
  const bool avx512 = cpu_has_avx512(), avx2 = cpu_has_avx2();
  std::string err;
  const std::string chosen = reported_core(dir, "", &err);
  EXPECT_EQ(chosen, core_or_keep(own.c_str(), avx512, avx2)) << "OpenBLAS's own choice here: " << own;
  EXPECT_EQ(err.find("OpenBLAS runs its") != std::string::npos,
            !blas_kernel_warning(chosen.c_str(), avx512, nullptr).empty()) << err;
  // An explicit choice is the user's, with a warning in the log where it is slower than
  // what the CPU runs.
  if (avx2) {
    EXPECT_EQ(reported_core(dir, "OPENBLAS_CORETYPE=Haswell", &err), "Haswell");
    EXPECT_EQ(err.find("OpenBLAS runs its Haswell kernels") != std::string::npos, avx512) << err;
  }
}

}  // namespace
}  // namespace par
