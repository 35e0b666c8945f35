// tools/gpu_check.sh, the one script a GPU session runs, on a bundle of stand-ins for par
// and par_cuda_tests that print what the real ones print: every part of the script (the
// test tally, the targets and the bench table) must come out right before the minutes of
// a GPU machine are spent on it. A stand-in writes its arguments to calls.txt.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "tests/par_cli.h"

namespace par {
namespace {

namespace fs = std::filesystem;
using testing_util::ParRun;
using testing_util::quote;
using testing_util::run_shell;
using testing_util::slurp;
using testing_util::TempDir;

// par bench as the GPU prints it: a profile when asked, then the JSON line; decoding with
// 16 samples at 12,000 tokens/s in all, the training step at 10 ms with the cross-attention
// at 7 ms of it; N = 1,048,576 fails (exit 3) to show how a failed run is reported.
constexpr const char* kPar = R"SH(#!/usr/bin/env bash
echo "par $*" >> "$CALLS"
# As par's option parser: an option given twice is an error.
twice=$(printf '%s\n' "$@" | grep -- '^--' | sort | uniq -d | head -1)
if [ -n "$twice" ]; then echo "par bench: error: option '${twice#--}' cannot be specified more than once" >&2; exit 2; fi
args=" $* "
# (a plan built on its second try, after a refusal for want of memory: the try is stripped too)
echo "I1205 19:00:00.000000  4242 backend.cpp:81] attention cross: cuDNN 9.14.0 flash attention, keys read in place; plan built in 412 ms (try 2)" >&2
case "$args" in *" --context-length 1048576 "*) echo "par bench: error: out of memory" >&2; exit 3 ;; esac
if [[ "$args" == *" --profile "* ]]; then
  echo "profile     ms/step  share  calls/step  op"
  echo "               3.00   30.0%           6  attention_forward (cross)"
  echo "               4.00   40.0%           6  attention_backward (cross)"
fi
if [[ "$args" == *" --decode "* ]]; then
  k=1; [[ "$args" == *" --num-samples 16 "* ]] && k=16
  rate=$((k == 16 ? 12000 : 2500))
  [[ "$args" == *" --position-encoding absolute "* ]] && rate=1800
  [[ "$args" == *" --position-encoding absolute --kv-storage fp32 "* ]] && rate=1200
  echo "{\"cached_tokens_per_s\": $rate, \"cached_tokens_per_s_per_sample\": $((k == 16 ? 750 : 2500)), \"speedup\": 120.5, \"refills\": 1, \"steps_replayed\": 990, \"steps_captured\": 9, \"peak_device_mib\": $((k == 16 ? 9216 : 2048)), \"planned_device_mib\": $((k == 16 ? 10240 : 1536))}"
elif [[ "$args" == *" --kv-storage fp32 "* ]]; then
  echo "{\"ms_per_step\": 12.5, \"input_tokens_per_s\": 10485760, \"gflops\": 320000, \"peak_share\": 0.32, \"peak_device_mib\": 4096, \"attention_ms\": 7.0, \"parameters\": 89726211}"
else
  echo "{\"ms_per_step\": 10.0, \"input_tokens_per_s\": 13107200, \"gflops\": 400000, \"peak_share\": 0.40, \"peak_device_mib\": 3584, \"attention_ms\": 7.0, \"parameters\": 89726211}"
fi
)SH";

// par_cuda_tests: three suites, one of them parameterized, one failing when FAIL_ONE is set;
// a suite of DISABLED_ tests only, which gets no process of its own; the timing runs.
constexpr const char* kTests = R"SH(#!/usr/bin/env bash
echo "par_cuda_tests $*" >> "$CALLS"
case " $* " in
  *" --gtest_list_tests "*)
    echo "par_cuda_tests: GPU 0 is a stand-in"
    printf 'CudaStubA.\n  Passes\nCudaStubOff.\n  DISABLED_Slow\nCudaStubB.\n  Passes\n'
    printf 'Cases/CudaStubP.\n  Passes/0  # GetParam() = 1\n' ;;
  *"--gtest_filter=CudaStubA.*"*) echo "[       OK ] CudaStubA.Passes (2 ms)" ;;
  *"--gtest_filter=Cases/CudaStubP.*"*) echo "[       OK ] Cases/CudaStubP.Passes/0 (2 ms)" ;;
  *"--gtest_filter=CudaStubB.*"*)
    if [ -n "${FAIL_ONE:-}" ]; then
      echo "stub_test.cpp:1: Failure"; echo "[  FAILED  ] CudaStubB.Passes (3 ms)"; exit 1
    fi
    echo "[       OK ] CudaStubB.Passes (3 ms)" ;;
  *"--gtest_filter=CudaTiming.*"*) echo "timing linear 8192^3 bf16: 1.40 ms" ;;
esac
exit 0
)SH";

// bench/torch_reference.py: its JSON lines, torch.compile failing.
constexpr const char* kTorch = R"SH(#!/usr/bin/env bash
echo "torch_reference $*" >> "$CALLS"
echo '{"what": "environment", "torch": "2.11.0", "gpu": "stand-in"}'
echo '{"what": "train_eager", "ms_per_step": 40.0, "ms_per_step_mean": 41.0, "peak_device_mib": 3686.4, "parameters": 89726211}'
echo '{"what": "attention_flash_attention", "forward_ms": 2.16, "forward_backward_ms": 7.32}'
echo '{"what": "attention_cudnn_attention", "error": "RuntimeError: No available kernel"}'
echo '{"what": "train_compiled", "error": "skipped: less than half of --budget left for compiling"}'
)SH";

class GpuCheck : public ::testing::Test {
 protected:
  void SetUp() override {
    const fs::path b = fs::path(dir_.path) / "par-gpu-bundle";
    fs::create_directories(b / "bin");
    fs::create_directories(b / "lib");
    std::ofstream(b / "MANIFEST") << "par-gpu-bundle stand-in\n";
    std::ofstream(dir_.file("torch_reference")) << kTorch;
    fs::permissions(dir_.file("torch_reference"), fs::perms::owner_all);
    for (const auto& [name, text] : {std::pair{"par", kPar}, std::pair{"par_cuda_tests", kTests}}) {
      std::ofstream(b / "bin" / name) << text;
      fs::permissions(b / "bin" / name, fs::perms::owner_all);
    }
    const ParRun r = run_shell(dir_, cat("tar -C ", quote(dir_.path), " -cJf ",
                                         quote(archive()), " par-gpu-bundle"));
    ASSERT_EQ(r.rc, 0) << r.err;
  }
  std::string archive() const { return dir_.file("bundle.tar.xz"); }
  ParRun check(const std::string& env) {
    return run_shell(dir_, cat("env CALLS=", quote(dir_.file("calls.txt")), " CHECK_OUT=",
                               quote(dir_.file("logs")), " GPU_CONFIGS=configs/gpu-100m-131k.ini",
                               " PRECISIONS='bf16 fp32' TORCH_REFERENCE=",
                               quote(dir_.file("torch_reference")), " ", env, " bash ",
                               quote(std::string(PAR_SOURCE_DIR) + "/tools/gpu_check.sh"), " ",
                               quote(archive())));
  }
  TempDir dir_;
};

TEST_F(GpuCheck, PrintsTheTestsTheTargetsAndTheBenchTable) {
  const ParRun r = check("");
  EXPECT_EQ(r.rc, 0) << r.out << r.err;
  const std::string summary = slurp(dir_.file("logs/summary.txt"));
  EXPECT_EQ(summary, r.out.substr(r.out.find("== par GPU check")));
  for (const char* line : {
           "tests:  3 passed, 0 failed, 0 skipped",
           "timing: linear 8192^3 bf16: 1.40 ms",
           "  N=131072 step                             10.00 ms   target <= 12 ms   met",
           "  N=131072 peak device memory                3.50 GiB  target <= 4 GiB   met",
           "  N=131072 model rate                       400.0 TFLOP/s, 40.0% of the card's dense bf16 peak",
           "  N=131072, keys and values in fp32         12.50 ms, 4.00 GiB peak (--kv-storage fp32)",
           "  cross-attention forward + backward         7.00 ms   target <= 8 ms    met",
           "  N=1048576: failed (exit 3): par bench: error: out of memory",
           "  decode, 1 sample, tokens/s              2500.00      target >= 2000    met",
           "  decode, cached / uncached                120.50 x    target >= 50x     met",
           "  decode, 1 sample, steps                     990 replayed, 9 recorded (CUDA graphs)",
           "  decode, 1 sample, no graphs              2500.0 tokens/s (--cuda-graphs off)",
           "  decode, 16 samples, tokens/s in all    12000.00      target >= 10000   met",
           "  decode, 16 samples, long                12000.0 tokens/s in all (4,000 tokens each: own keys as rows)",
           "  decode without tables, bf16 caches       1800.0 tokens/s (absolute positions; fp32 caches: 1200.0, 1.50x)",
           "  decode memory, 1 sample                    2.00 GiB peak, 1.50 GiB planned: PLAN TOO LOW",
           "  decode memory, 16 samples                  9.00 GiB peak, 10.00 GiB planned: within the plan",
           "--- the backend's paths (the targets' logs)\n",
           " attention cross: cuDNN 9.14.0 flash attention, keys read in place\n",
           "--- profile-n131k-profile",
           "yardstick: PyTorch 2.11.0, the same model on this GPU with every key visible",
           "  parameters                           PyTorch 89726211, par 89726211\n",
           "  PyTorch step, eager                       40.00 ms, peak 3.60 GiB",
           "    par's step time / this                   0.25 x (par 10.00 ms)",
           "  PyTorch step, torch.compile          skipped: less than half of --budget left for compiling",
           "  attention alone, FlashAttention-2          2.16 ms forward, 7.32 ms forward + backward",
           "  attention alone, cuDNN, a bool mask  RuntimeError: No available kernel",
       })
    EXPECT_NE(summary.find(line), std::string::npos) << "missing: " << line << "\n" << summary;
  // bf16 with both attentions, fp32 with the first only.
  for (const char* row : {"gpu-100m-131k.ini            bf16/auto          10.0     13107200     400.0    40.0   3584 MiB      7.00",
                          "gpu-100m-131k.ini            bf16/blocked",
                          "gpu-100m-131k.ini            fp32/auto"})
    EXPECT_NE(summary.find(row), std::string::npos) << "missing: " << row << "\n" << summary;
  EXPECT_EQ(summary.find("fp32/blocked"), std::string::npos) << summary;
  // The plans' build times: out of the paths' lines (each said once), summed on their own.
  EXPECT_EQ(summary.find("keys read in place; plan built"), std::string::npos) << summary;
  std::smatch built;
  ASSERT_TRUE(std::regex_search(summary, built, std::regex(R"(  cuDNN plans built: (\d+), ([0-9.]+) s in all, the longest 412 ms\n)")))
      << summary;
  EXPECT_GT(std::stoi(built[1]), 1);
  EXPECT_NEAR(std::stod(built[2]), 0.412 * std::stoi(built[1]), 0.05) << built[0];
  EXPECT_EQ(summary.find("backend.cpp:81]"), std::string::npos) << "the log prefix stays: " << summary;
  // What the targets ran: PyTorch's work (no key dropout), in bf16.
  const std::string calls = slurp(dir_.file("calls.txt"));
  EXPECT_NE(calls.find("--precision bf16 --cross-attend-dropout 0 --steps 5 --warmup 2 --decode 1000 --num-samples 16"),
            std::string::npos) << calls;
  EXPECT_NE(calls.find("--decode 1000 --cuda-graphs off"), std::string::npos) << calls;
  EXPECT_NE(calls.find("--warmup 2 --kv-storage fp32"), std::string::npos) << calls;
  EXPECT_NE(calls.find("--decode 300 --position-encoding absolute --kv-storage fp32"), std::string::npos)
      << calls;
  EXPECT_NE(calls.find("torch_reference --budget "), std::string::npos) << calls;
  // The timing runs before the tests; no process for a suite with no test enabled.
  EXPECT_LT(calls.find("CudaTiming"), calls.find("CudaStub")) << calls;
  EXPECT_EQ(calls.find("CudaStubOff"), std::string::npos) << calls;
  // What comes back: the summary and one archive of every log (the device tool brings back
  // at most 8 files), which holds the tests' and the benches' logs.
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir_.file("logs"))) out.push_back(e.path().filename());
  std::sort(out.begin(), out.end());
  EXPECT_EQ(out, (std::vector<std::string>{"logs.tar.gz", "summary.txt"}));
  const ParRun listing = run_shell(dir_, cat("tar -tzf ", quote(dir_.file("logs/logs.tar.gz"))));
  for (const char* log : {"logs/tests.log", "logs/timing.log", "logs/bench.log", "logs/torch.log",
                          "logs/targets.txt", "logs/bench.tsv", "logs/torch.jsonl"})
    EXPECT_NE(listing.out.find(log), std::string::npos) << log << " not in\n" << listing.out;
  // The suites run several at a time, each into its own log; tests.log holds them whole, in
  // the order they started: the parameterized GPU suites first, then the last listed first.
  const ParRun tests_log = run_shell(dir_, cat("tar -xzOf ", quote(dir_.file("logs/logs.tar.gz")), " logs/tests.log"));
  const size_t p = tests_log.out.find("Cases/CudaStubP.Passes/0"), b = tests_log.out.find("CudaStubB.Passes"),
               a = tests_log.out.find("CudaStubA.Passes");
  EXPECT_TRUE(p < b && b < a && a != std::string::npos) << tests_log.out;
}

// The stages before the targets stop short of the budget's last RESERVE seconds: with none
// left, the tests and timing runs are skipped and say so, and the targets still run.
TEST_F(GpuCheck, TheTestsLeaveTheTargetsTheirTime) {
  const ParRun r = check("BUDGET=400 RESERVE=400");
  EXPECT_NE(r.out.find("out of time before"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("N=131072 step"), std::string::npos) << r.out;
  const std::string calls = slurp(dir_.file("calls.txt"));
  EXPECT_EQ(calls.find("CudaTiming"), std::string::npos) << calls;
}

// SKIP_TESTS: no test suite runs (a check of the measurements alone), the summary says so,
// and the timing runs and the targets do run.
TEST_F(GpuCheck, SkipTestsRunsTheRest) {
  const ParRun r = check("SKIP_TESTS=1");
  EXPECT_EQ(r.rc, 1) << "the tests did not run: not a pass";
  EXPECT_NE(r.out.find("not run (SKIP_TESTS)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("N=131072 step"), std::string::npos) << r.out;
  const std::string calls = slurp(dir_.file("calls.txt"));
  EXPECT_EQ(calls.find("CudaStubA"), std::string::npos) << calls;
  EXPECT_NE(calls.find("CudaTiming"), std::string::npos) << calls;
}

// The bundle's commit is checked before anything runs: another commit than EXPECT_COMMIT,
// none at all, or a tree with local changes stops the check with status 2 (ALLOW_STALE=1
// checks it anyway).
TEST_F(GpuCheck, AStaleBundleStopsTheCheckBeforeItRuns) {
  ParRun r = check("EXPECT_COMMIT=0123456789abcdef0123456789abcdef01234567");
  EXPECT_EQ(r.rc, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("the bundle names no commit"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_.file("calls.txt"))) << "nothing runs";
  const auto repack = [&](const std::string& manifest) {
    std::ofstream(fs::path(dir_.path) / "par-gpu-bundle" / "MANIFEST") << manifest;
    const ParRun t = run_shell(dir_, cat("tar -C ", quote(dir_.path), " -cJf ", quote(archive()), " par-gpu-bundle"));
    ASSERT_EQ(t.rc, 0) << t.err;
  };
  repack("par GPU bundle, made now on here from 89abcde01\n"
         "commit: 89abcde0123456789abcdef0123456789abcdef0\ntree: clean\n");
  r = check("EXPECT_COMMIT=0123456789abcdef0123456789abcdef01234567");
  EXPECT_EQ(r.rc, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("the bundle was built from 89abcde01234, EXPECT_COMMIT is 0123456789ab"), std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(dir_.file("calls.txt"))) << "nothing runs";
  r = check("EXPECT_COMMIT=89abcde");  // a short commit will do
  EXPECT_EQ(r.rc, 0) << r.out << r.err;
  repack("par GPU bundle, made now on here from 89abcde01 (with local changes)\n"
         "commit: 89abcde0123456789abcdef0123456789abcdef0\ntree: local changes (2 files)\n");
  r = check("EXPECT_COMMIT=89abcde0123456789abcdef0123456789abcdef0");
  EXPECT_EQ(r.rc, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("the bundle was built from a tree with local changes"), std::string::npos) << r.err;
  r = check("EXPECT_COMMIT=89abcde0123456789abcdef0123456789abcdef0 ALLOW_STALE=1");
  EXPECT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("(ALLOW_STALE: checked anyway)"), std::string::npos) << r.out;
}

// Without PyTorch (as here), the yardstick says so and exits 3, and the check goes on.
TEST_F(GpuCheck, TheYardstickSaysWhenPyTorchIsMissing) {
  const std::string script = cat(PAR_SOURCE_DIR, "/bench/torch_reference.py");
  // Compiled into the test's directory: nothing is written into the source tree.
  ParRun r = run_shell(dir_, cat("python3 -c 'import py_compile, sys; py_compile.compile(sys.argv[1], "
                                 "cfile=sys.argv[2], doraise=True)' ",
                                 quote(script), " ", quote(dir_.file("torch_reference.pyc"))));
  ASSERT_EQ(r.rc, 0) << r.err;
  if (run_shell(dir_, "python3 -c 'import torch'").rc == 0) GTEST_SKIP() << "PyTorch is installed here";
  r = run_shell(dir_, cat("cd ", quote(PAR_SOURCE_DIR), " && python3 ", quote(script), " --budget 10"));
  EXPECT_EQ(r.rc, 3) << r.out << r.err;
  EXPECT_NE(r.err.find("torch_reference: PyTorch is not installed here"), std::string::npos) << r.err;
  r = check(cat("TORCH_REFERENCE=", quote(cat("python3 ", script, " --config configs/gpu-100m-131k.ini"))));
  EXPECT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("yardstick: PyTorch not measured (exit 3: torch_reference: PyTorch is not installed here"),
            std::string::npos) << r.out;
}

// The stand-in's JSON keys are the real par bench's (here on the CPU): the check reads no
// key that par does not write.
TEST_F(GpuCheck, TheStandInPrintsTheKeysOfTheRealBench) {
  const std::string tiny = quote(testing_util::configs_dir() + "tiny.ini");
  const ParRun train = testing_util::run_par(dir_, cat("bench --config ", tiny, " --threads 1 --steps 2 --warmup 1"));
  ASSERT_EQ(train.rc, 0) << train.err;
  const ParRun decode = testing_util::run_par(dir_, cat("bench --config ", tiny, " --threads 1 --decode 20"));
  ASSERT_EQ(decode.rc, 0) << decode.err;
  const std::string stand_in = kPar;
  const std::regex key("\\\\\"([a-z_0-9]+)\\\\\": ");
  int keys = 0;
  for (std::sregex_iterator k(stand_in.begin(), stand_in.end(), key), end; k != end; ++k, ++keys) {
    const std::string name = cat("\"", (*k)[1].str(), "\": ");
    const bool decoding = name.find("cached_") != std::string::npos ||
                          name.find("speedup") != std::string::npos ||
                          name.find("refills") != std::string::npos ||
                          name.find("steps_") != std::string::npos;
    const std::string& real = decoding ? decode.out : train.out;
    EXPECT_NE(real.find(name), std::string::npos) << name << " is not in\n" << real;
  }
  // 7 of them twice (the step with keys and values in fp32), and the device memory's peak
  // and plan again in the decode line.
  EXPECT_EQ(keys, 22);
}

// A failing test makes the exit status 1 and shows the failure; the measurements still run.
TEST_F(GpuCheck, AFailingTestFailsTheCheckAndIsShown) {
  const ParRun r = check("FAIL_ONE=1");
  EXPECT_EQ(r.rc, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("tests:  2 passed, 1 failed, 0 skipped"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[  FAILED  ] CudaStubB.Passes (3 ms)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("stub_test.cpp:1: Failure"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("N=131072 step"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace par
