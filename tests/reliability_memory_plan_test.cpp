// The memory plan: computed before anything is allocated, from the code that allocates;
// runs that cannot fit are refused with exit 2 and advice before anything is written;
// `par train --dry-run`; the cgroup limit; and the plan against the measured peak of
// `par bench` on a few configs and layouts.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "core/decoder.h"
#include "core/model.h"
#include "kernels/cpu/cpu_ops.h"
#include "launch/host_memory.h"
#include "launch/decode_memory_plan.h"
#include "launch/memory_plan.h"
#include "tests/par_cli.h"
#include "tests/thread_communicator.h"

namespace par {
namespace {

namespace fs = std::filesystem;
using namespace testing_util;

const std::string kTiny = testing_util::configs_dir() + "tiny.ini";

// The plan of the model's memory is what its constructor allocates, for any number of
// layers (the plan extrapolates past two), batch and layout.
TEST(ReliabilityMemoryPlan, ModelPlanIsWhatTheModelAllocates) {
  cpu::CpuOps<float> ops;
  ModelConfig c{.vocab_size = 300, .d_model = 48, .context_length = 96, .num_latents = 40,
                .cross_heads = 4, .self_heads = 2, .mlp_factor = 3, .rotary_fraction = 0.5};
  for (int64_t layers : {0, 1, 2, 3, 7})
    for (int64_t batch : {1, 3})
      for (const auto& [sp, tp] : {std::pair{1, 1}, std::pair{2, 1}, std::pair{1, 2}, std::pair{4, 2}}) {
        SCOPED_TRACE(cat("L=", layers, " B=", batch, " sp=", sp, " tp=", tp));
        c.num_layers = layers;
        testing_util::ThreadGroup sp_group(sp), tp_group(tp);
        testing_util::ThreadCommunicator spc(sp_group, sp - 1), tpc(tp_group, 0);
        const PerceiverAR<float> model(c, ops, batch, ModelGroups{DeviceGroup(spc), DeviceGroup(tpc), HostGroup(spc)});
        const ModelMemory m = PerceiverAR<float>::memory(c, batch, sp, tp);
        EXPECT_EQ(double(model.memory_bytes()), m.total());
        EXPECT_EQ(m.param_elements, double(model.layout().total()));
      }
}

// What each input position costs in the activations: without tensor parallelism four
// [N, d] tensors (the keys and values and their gradients, which also hold the embeddings,
// LN_kv's output and their gradients in turn), with 2 tensor-parallel ranks three (LN_kv's
// output keeps its own), plus its id, keep byte, position, LN statistics and rotary rows.
TEST(ReliabilityMemoryPlan, EachInputPositionHoldsFourTensorRowsWithoutTensorParallelism) {
  ModelConfig c{.vocab_size = 259, .d_model = 256, .context_length = 8192, .num_latents = 256,
                .num_layers = 2, .cross_heads = 8, .self_heads = 8, .mlp_factor = 4,
                .rotary_fraction = 0.5};
  const double d = 256, bands = double(make_rotary_spec(c.cross_head_dim(),
                                                          c.applied_rotary_fraction(),
                                                          c.wavelength()).bands);
  ASSERT_GT(bands, 0);
  for (const auto& [tp, rows] : {std::pair{1, 4.0}, std::pair{2, 3.0}}) {
    SCOPED_TRACE(cat("tp=", tp));
    c.context_length = 8192;
    const double small = PerceiverAR<float>::memory(c, 1, 1, tp).activations;
    c.context_length = 16384;
    const double large = PerceiverAR<float>::memory(c, 1, 1, tp).activations;
    const double per_position = (large - small) / 8192;
    EXPECT_EQ(per_position, 4 * (rows * d + 2 + 2 * bands) + 4 + 1 + 8);
  }
}

// The bytes of the device item whose name begins with `what` in r's plan, -1 if none.
double device_item(const PlanRequest& r, const std::string& what) {
  for (const MemoryItem& i : plan_memory(r).device)
    if (i.what.rfind(what, 0) == 0) return i.bytes;
  return -1.0;
}

// configs/gpu-100m-131k.ini's model on one GPU, as planned for it.
PlanRequest gpu_100m_request() {
  PlanRequest r;
  r.model = ModelConfig{.vocab_size = 259, .d_model = 1024, .context_length = 131072,
                        .num_latents = 1024, .num_layers = 6, .cross_heads = 16,
                        .self_heads = 16, .mlp_factor = 4};
  r.cuda = true;
  return r;
}

// A bf16 run on the GPU plans the backend's bfloat16 copies of the large products'
// operands: for gpu-100m-131k's shapes, the key and value projections over N inputs
// (forward: x into one slot, w into the other; backward: dy and x), and none for fp32 or
// for the latents' products of one example.
TEST(ReliabilityMemoryPlan, PlansTheBf16CopiesOfTheInputSide) {
  PlanRequest r = gpu_100m_request();
  auto copies = [&] { return device_item(r, "bf16 operand copies"); };
  EXPECT_EQ(copies(), -1.0) << "fp32 and tf32 convert nothing";
  r.bf16_products = true;
  const double N = 131072, d = 1024;
  EXPECT_EQ(copies(), (N * d + N * d) * 2 * 9 / 8);
  r.sp = 4;  // each rank projects its quarter of the inputs
  EXPECT_EQ(copies(), (N / 4 * d + N / 4 * d) * 2 * 9 / 8);
}

// The backward's reductions over the input side (embedding backward, LayerNorm partials,
// bias column partials) and cuBLAS's workspace: about 104 MiB at gpu-100m-131k, most of it
// the embedding backward's partial sums (a row of d floats per 16 rows), so it grows with
// the rank's share of the context.
TEST(ReliabilityMemoryPlan, PlansTheReductionScratch) {
  PlanRequest r = gpu_100m_request();
  auto scratch = [&] { return device_item(r, "reduction scratch"); };
  const double mib = 1 << 20, whole = scratch();
  EXPECT_GT(whole, 90 * mib);
  EXPECT_LT(whole, 120 * mib);
  // The embedding's partial sums alone: (2 N / 32 + 1) rows of d floats.
  EXPECT_GT(whole - 32 * mib, (2.0 * 131072 / 32) * 1024 * 4);
  // An eighth of the context: the embedding's part an eighth, the LayerNorm's chunks no
  // fewer than 1,024 (so about 8 MiB at both), cuBLAS's 32 MiB the same.
  r.sp = 8;
  EXPECT_LT(scratch() - 32 * mib, (whole - 32 * mib) / 4);
  EXPECT_GT(scratch() - 32 * mib, (whole - 32 * mib) / 8);
}

// Keys and values in bfloat16 (--kv-storage, bf16 by default with cuDNN's attention):
// 768 MiB less activations at gpu-100m-131k, and no scratch to widen them where cuDNN and
// the bf16 products read them as they are; where they meet float32 paths (--kv-storage
// bf16 with fp32 products: attention and projections off bf16), the widened copies are
// planned: four [N, d] float tensors for the attention's backward.
TEST(ReliabilityMemoryPlan, PlansKeysAndValuesInBf16) {
  PlanRequest r = gpu_100m_request();
  r.bf16_products = r.cudnn_attention = true;
  auto item = [&](const std::string& what) { return device_item(r, what); };
  const double tensor = 131072.0 * 1024 * 4;
  const double fp32 = item("activations");
  EXPECT_EQ(item("widened keys and values"), -1.0);
  r.kv_bf16 = true;
  EXPECT_NEAR(fp32 - item("activations"), 1.5 * tensor, 1024);
  EXPECT_EQ(item("widened keys and values"), 0.0);
  r.bf16_products = r.cudnn_attention = false;
  EXPECT_EQ(item("widened keys and values"), 4 * tensor * 9 / 8);

  // From the options: auto is bf16 only where cuDNN's attention reads them and the bf16
  // products take them as they lie: not under tensor parallelism, not for heads cuDNN
  // does not take.
  RunConfig run;
  run.device = "cuda";
  run.precision = "bf16";
  EXPECT_TRUE(plan_request(r.model, run, true).kv_bf16);
  run.tp = 2;
  EXPECT_FALSE(plan_request(r.model, run, true).kv_bf16);
  run.tp = 1;
  ModelConfig odd_heads = r.model;
  odd_heads.cross_heads = 8;  // heads of 128: taken
  EXPECT_TRUE(plan_request(odd_heads, run, true).kv_bf16);
  odd_heads.cross_heads = 4;  // heads of 256: not on every GPU
  EXPECT_FALSE(plan_request(odd_heads, run, true).kv_bf16);
  odd_heads.d_model = 1020;  // heads of 255
  odd_heads.cross_heads = 4;
  EXPECT_FALSE(plan_request(odd_heads, run, true).kv_bf16);
  run.attention = "blocked";
  EXPECT_FALSE(plan_request(r.model, run, true).kv_bf16);
  run.kv_storage = "bf16";
  EXPECT_TRUE(plan_request(r.model, run, true).kv_bf16);
  run = RunConfig{};
  run.device = "cuda";
  run.precision = "tf32";
  EXPECT_FALSE(plan_request(r.model, run, true).kv_bf16);
  run.kv_storage = "fp32";
  run.precision = "bf16";
  EXPECT_FALSE(plan_request(r.model, run, true).kv_bf16);
}

// A forward pass refused for its batch names the largest batch that fits the same budget:
// one more example would be refused. (That holds by the search's construction; what this
// checks is that the search and its message reach the user, and the case where no batch
// helps.)
TEST(ReliabilityMemoryPlan, RefusedBatchNamesTheLargestThatFits) {
  Backend cpu = make_local_backend("cpu", "fp32", "auto");
  PlanRequest r;
  r.model = small_model_config();
  r.training = false;
  r.runtime_bytes = double(resident_bytes());
  auto refusal = [&] {
    try {
      require_model_fits(r, cpu, "--batch-size");
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("none");
  };
  r.micro_batch = int64_t(1) << 40;
  const std::string message = refusal();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(message, m, std::regex("; at most --batch-size (\\d+) would fit$")))
      << message;
  const int64_t fits = std::stoll(m[1]);
  ASSERT_GT(fits, 1);
  r.micro_batch = fits;
  EXPECT_NO_THROW(require_model_fits(r, cpu, "--batch-size"));
  r.micro_batch = fits + 1;
  EXPECT_THROW(require_model_fits(r, cpu, "--batch-size"), UserError);
  // A model that does not fit with one example says so.
  r.model.d_model = 1 << 16;
  r.model.mlp_factor = 64;
  r.micro_batch = 2;
  EXPECT_NE(refusal().find("; the model itself does not fit this process"), std::string::npos)
      << refusal().substr(0, 600);
}

// Decoding on a GPU plans the scratch of the paths its full passes and refills take:
// cuDNN's attention and the bf16 operand copies where the options run them, as much as a
// forward pass of that many windows holds in a training run's plan. (That the decoder's
// passes take those paths, only a GPU run shows: gpu_check.sh's decode bench against its
// measured peak.) 16 samples of
// gpu-100m-131k (bench --decode 1000 --num-samples 16 in tools/gpu_check.sh) fit an
// 80 GiB GPU.
TEST(ReliabilityMemoryPlan, DecodingOnAGpuPlansThePathsItTakes) {
  const PlanRequest model = gpu_100m_request();
  DecodePlanRequest r;
  r.model = model.model;
  r.samples = 16;
  r.tokens = 1000;
  r.decoder = [&](int64_t k) {
    return Decoder<float>::memory(r.model, true, TokenTables::kAuto, k, KeyValueStorage::kBf16,
                                  r.model.context_length, r.tokens);
  };
  r.params_bytes = double(ParamLayout(r.model).total()) * sizeof(float);
  auto item = [&](const std::string& what) {
    for (const MemoryItem& i : plan_decoder_memory(r, r.samples, true).device)
      if (i.what == what) return i.bytes;
    return -1.0;
  };
  PlanRequest forward = model;
  forward.micro_batch = r.samples;
  forward.training = false;
  const double blocked = item("attention scratch");
  EXPECT_EQ(blocked, device_item(forward, "attention scratch"));
  EXPECT_EQ(item("bf16 operand copies"), -1.0);

  r.cudnn_attention = r.bf16_products = forward.cudnn_attention = forward.bf16_products = true;
  EXPECT_GT(item("attention scratch"), blocked);
  EXPECT_EQ(item("attention scratch"), device_item(forward, "attention scratch"));
  EXPECT_GT(item("bf16 operand copies"), 0.0);
  EXPECT_EQ(item("bf16 operand copies"), device_item(forward, "bf16 operand copies"));
  EXPECT_LT(plan_decoder_memory(r, r.samples, true).device_bytes(), 70.0 * (1 << 30));

  EXPECT_TRUE(plans_cudnn_attention(true, "bf16", "auto"));
  EXPECT_TRUE(plans_cudnn_attention(true, "bf16", "cudnn"));
  EXPECT_FALSE(plans_cudnn_attention(true, "bf16", "blocked"));
  EXPECT_FALSE(plans_cudnn_attention(true, "tf32", "auto"));
  EXPECT_FALSE(plans_cudnn_attention(false, "bf16", "auto"));
}

// Far too large for this machine: exit 2 with the estimate, at once, without a run
// directory. (Before the plan: std::bad_alloc and exit 1 after creating the directory, or
// memory climbing for minutes; the address-space limit here bounds that.)
TEST(ReliabilityMemoryPlan, RunsThatCannotFitAreRefusedBeforeAnything) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 30);
  const std::string out = dir.file("run");
  for (const std::string& extra : {std::string("--d-model 1000000"),
                                   std::string("--batch-size 1000000000"),
                                   std::string("--num-layers 1000000000")}) {
    SCOPED_TRACE(extra);
    const ParRun r = run_shell(dir, cat("ulimit -v 4000000; '", PAR_BINARY, "' train --config ",
                                        quote(kTiny), " --data ", quote(data), " --out ",
                                        quote(out), " --threads 1 ", extra));
    EXPECT_USER_ERROR(r, "not enough memory: each rank needs an estimated");
    EXPECT_NE(r.err.find("but may have"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out)) << "the refused run created its directory";
  }
  EXPECT_USER_ERROR(run_shell(dir, cat("ulimit -v 4000000; '", PAR_BINARY,
                                       "' bench --config ", quote(kTiny),
                                       " --context-length 100000000000 --threads 1")),
                    "not enough memory");
  // Past any machine (sizes int64 could wrap): refused by the model's own check.
  const ParRun far = run_par(dir, cat("train --config ", quote(kTiny), " --data ", quote(data),
                                      " --out ", quote(out), " --d-model 10000000"));
  EXPECT_USER_ERROR(far, "the model is far too large for any machine: more than 2^44 elements");
  EXPECT_FALSE(fs::exists(out));
}

// --dry-run prints the plan and whether it fits, needs neither data nor a run directory,
// and writes nothing; the startup log of a real run has the same estimate.
TEST(ReliabilityMemoryPlan, DryRunPrintsThePlan) {
  TempDir dir;
  ParRun r = run_par(dir, cat("train --config ", quote(kTiny), " --dry-run --threads 1"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("memory per rank (estimate):\nhost "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("activations of 8 example(s)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("fits: the run can start"), std::string::npos) << r.out;
  r = run_par(dir, cat("train --config ", quote(kTiny), " --dry-run --d-model 1000000"));
  EXPECT_USER_ERROR(r, "not enough memory");
  EXPECT_NE(r.out.find("memory per rank (estimate)"), std::string::npos) << r.out;
  // A layout of several ranks, planned alone (a login node): one rank's plan, smaller than
  // one process's where the context is split, on this machine's memory.
  auto activations = [](const std::string& out) {
    const size_t at = out.find("activations of ");
    return at == std::string::npos ? std::string() : out.substr(at, out.find(',', at) - at);
  };
  const ParRun one = run_par(dir, cat("train --config ", quote(kTiny), " --dry-run --threads 1 "
                                      "--context-length 4096 --num-latents 64"));
  ASSERT_EQ(one.rc, 0) << one.err;
  const ParRun sp4 = run_par(dir, cat("train --config ", quote(kTiny), " --dry-run --threads 1 "
                                      "--context-length 4096 --num-latents 64 --sp 4"));
  ASSERT_EQ(sp4.rc, 0) << sp4.err;
  EXPECT_NE(sp4.out.find("dp 1 x sp 4 x tp 1"), std::string::npos) << sp4.out;
  EXPECT_NE(sp4.out.find("memory per rank (estimate; planned alone: one of the 4 ranks, on a "
                         "node like this one"),
            std::string::npos)
      << sp4.out;
  EXPECT_NE(activations(sp4.out), activations(one.out)) << one.out << sp4.out;
  EXPECT_NE(sp4.out.find("fits: the run can start"), std::string::npos) << sp4.out;
  // Without --dry-run, a layout of several ranks still needs its ranks.
  EXPECT_USER_ERROR(run_par(dir, cat("train --config ", quote(kTiny), " --sp 2 --data x --out ",
                                     quote(dir.file("nope")))),
                    "but this is one process");

  const std::string data = testing_util::copy_task_data(dir, 65, 30);
  r = run_par(dir, cat("train --config ", quote(kTiny), " --data ", quote(data), " --out ",
                       quote(dir.file("run")), " --steps 1 --threads 1"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(slurp(dir.file("run/train.log")).find("memory per rank (estimate): host "),
            std::string::npos);
}

// A dry run for GPUs where there is none (a cluster's login node): the device's plan with
// why it is not checked, exit 0; the host's side is still checked, and options that name no
// backend are still errors.
TEST(ReliabilityMemoryPlan, DryRunForGpusPlansWithoutAGpu) {
  TempDir dir;
  const std::string gpu = cat("train --config ", quote(kTiny), " --dry-run --threads 1 --device cuda");
  ParRun r = run_par(dir, cat(gpu, " --precision bf16"));
  if (r.out.find("no GPU here") == std::string::npos)
    GTEST_SKIP() << "a GPU is visible here: the dry run checks it (" << r.out << r.err << ")";
  ASSERT_EQ(r.rc, 0) << r.err;
  const size_t device = r.out.find("\ndevice ");
  ASSERT_NE(device, std::string::npos) << r.out;
  EXPECT_NE(r.out.find("parameters and gradients", device), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(", not checked: --device cuda: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("fits on this host; the GPU's side is not checked"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("fits: the run can start"), std::string::npos) << r.out;
  // The CPU kernels' scratch is not the host's to hold for a GPU run, in any precision.
  r = run_par(dir, cat(gpu, " --precision fp32"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out.find("kernel scratch"), std::string::npos) << r.out;
  EXPECT_NE(run_par(dir, cat("train --config ", quote(kTiny), " --dry-run --threads 1")).out.find("kernel scratch"),
            std::string::npos);
  EXPECT_USER_ERROR(run_par(dir, cat(gpu, " --precision fp16")), "--precision must be");
  EXPECT_USER_ERROR(run_par(dir, cat(gpu, " --attention cudnn")), "needs --precision bf16");
  // Keys and values in bf16 by default with cuDNN's attention, said on the layout line.
  r = run_par(dir, cat(gpu, " --precision bf16"));
  EXPECT_NE(r.out.find("| keys and values in bf16\n"), std::string::npos) << r.out;
  r = run_par(dir, cat(gpu, " --precision bf16 --kv-storage fp32"));
  EXPECT_EQ(r.out.find("keys and values in bf16"), std::string::npos) << r.out;
  EXPECT_USER_ERROR(run_par(dir, cat(gpu, " --kv-storage half")),
                    "--kv-storage must be auto, bf16 or fp32 (got 'half')");
  EXPECT_USER_ERROR(run_par(dir, cat("train --config ", quote(kTiny), " --dry-run --kv-storage bf16")),
                    "--kv-storage bf16 is for --device cuda");
  EXPECT_USER_ERROR(run_par(dir, cat(gpu, " --batch-size 1000000000")), "not enough memory");
  // Only a dry run goes on without a GPU.
  const std::string data = testing_util::copy_task_data(dir, 65, 30);
  EXPECT_USER_ERROR(run_par(dir, cat("train --config ", quote(kTiny), " --device cuda --data ",
                                     quote(data), " --out ", quote(dir.file("run")), " --steps 1")),
                    "--device cuda");
  EXPECT_FALSE(fs::exists(dir.file("run")));
}

// What would fit, from the plan itself: a budget between the plan of the layout asked for
// and that of twice the sequence parallelism suggests the latter, and the micro-batch that
// fits the budget.
TEST(ReliabilityMemoryPlan, AdviceNamesWhatWouldFit) {
  PlanRequest r;
  r.model.context_length = 8192;
  r.model.num_latents = 256;
  r.micro_batch = 4;
  r.accum_steps = 1;
  r.runtime_bytes = 20e6;
  r.checkpoints = true;
  const double asked = plan_memory(r).host_bytes();
  PlanRequest sp2 = r, half = r;
  sp2.sp = 2;
  half.micro_batch = 2;
  MemoryBudget b;
  b.host = std::max(plan_memory(sp2).host_bytes(), plan_memory(half).host_bytes()) * 1.001;
  b.host_source = "a test's budget";
  ASSERT_LT(b.host, asked);
  try {
    require_fits(r, RunShape{8, 1, 2}, b);
    FAIL() << "a plan over budget was accepted";
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(format_bytes(asked)), std::string::npos) << m;
    EXPECT_NE(m.find(cat("may have ", format_bytes(b.host), ", a test's budget")), std::string::npos) << m;
    EXPECT_NE(m.find("--accum-steps 2 (the same batch in micro-batches of 4)"), std::string::npos) << m;
    // Two ranks where one was cannot share the node's memory (each holds the replicated
    // state): they need twice the nodes.
    EXPECT_NE(m.find("--sp 2 (4 ranks, on 2 times the nodes this job has: ranks on one node "
                     "share its memory)"),
              std::string::npos)
        << m;
  }
  // Where the host's memory is ample and the GPU's is short: more ranks fit on the nodes
  // the job has while the node has GPUs to spare (8 GPUs, 2 ranks), and need more nodes
  // where the node's ranks would share its GPUs (2 GPUs).
  r.cuda = sp2.cuda = half.cuda = true;
  const double one_gpu =
      std::max(plan_memory(sp2).device_bytes(), plan_memory(half).device_bytes()) * 1.001;
  ASSERT_LT(one_gpu, plan_memory(r).device_bytes());
  for (const int gpus : {8, 2}) {
    SCOPED_TRACE(cat(gpus, " GPUs"));
    MemoryBudget gpu = memory_budget(2, int64_t(one_gpu), gpus);
    gpu.host = 100 * asked;
    try {
      require_fits(r, RunShape{8, 1, 2}, gpu);
      FAIL() << "a plan over the GPU's budget was accepted";
    } catch (const UserError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("not enough GPU memory"), std::string::npos) << m;
      EXPECT_NE(m.find(gpus == 8 ? "--sp 2 (4 ranks, on the nodes this job has)"
                                 : "--sp 2 (4 ranks, on 2 times the nodes this job has"),
                std::string::npos)
          << m;
    }
  }
  r.cuda = false;
  b.host = asked;
  EXPECT_NO_THROW(require_fits(r, RunShape{8, 1, 2}, b));
}

// The loader's batches grow with the micro-batch (and with the accumulation steps, which
// keep the batch): where they are what does not fit (a GPU run's host side), a smaller
// batch is named, not "one example would not fit", and that batch fits.
TEST(ReliabilityMemoryPlan, AdviceShrinksTheDataBatchesWithTheMicroBatch) {
  TempDir dir;
  const std::string gpu = cat("train --config ", quote(kTiny), " --dry-run --threads 1 "
                              "--device cuda --precision bf16");
  if (run_par(dir, gpu).out.find("no GPU here") == std::string::npos)
    GTEST_SKIP() << "a GPU is visible here: the dry run checks its side too";
  const ParRun r = run_par(dir, gpu + " --batch-size 1073741824");
  EXPECT_USER_ERROR(r, "not enough memory: each rank needs an estimated ");
  EXPECT_NE(r.err.find(" of host memory"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("data batches "), std::string::npos) << r.err;
  std::smatch advice;
  ASSERT_TRUE(std::regex_search(r.err, advice, std::regex("would fit: --batch-size (\\d+)")))
      << r.err;
  // The advice is the largest batch that fits this run's budget exactly; another process's
  // runtime differs by a little (a batch of 12 million here is at the limit to 0.01%).
  const int64_t advised = std::stoll(advice[1]);
  const ParRun followed = run_par(dir, cat(gpu, " --batch-size ", advised / 100 * 99));
  ASSERT_EQ(followed.rc, 0) << followed.err;
  EXPECT_NE(followed.out.find("fits on this host"), std::string::npos) << followed.out;
  // Near the int64 limit the advice still counts (in double: its accumulation steps go up
  // to the whole batch; a sanitized build checks that nothing wraps).
  const ParRun huge = run_par(dir, gpu + " --batch-size 4611686018427387904");
  EXPECT_USER_ERROR(huge, "not enough memory: each rank needs an estimated ");
  EXPECT_NE(huge.err.find("would fit: --batch-size "), std::string::npos) << huge.err;
}

// cgroup v2 and v1 hierarchies as /proc shows them: the tightest limit from the process's
// cgroup up to the mount point counts; "max" and v1's "unlimited" do not.
TEST(ReliabilityMemoryPlan, ReadsTheCgroupLimit) {
  TempDir dir;
  auto write = [&](const std::string& rel, const std::string& text) {
    fs::create_directories(fs::path(dir.file(rel)).parent_path());
    std::ofstream(dir.file(rel)) << text;
  };
  const std::string v2 = dir.file("v2"), v1 = dir.file("v1");
  write("v2/memory.max", "max\n");
  write("v2/job/memory.max", "3221225472\n");
  write("v2/job/step/memory.max", "max\n");
  write("v1/memory.limit_in_bytes", "9223372036854771712\n");
  write("v1/batch/memory.limit_in_bytes", "1073741824\n");
  write("cgroup.v2", "0::/job/step\n");
  write("cgroup.v1", "4:memory:/batch\n3:cpu,cpuacct:/\n");
  write("mountinfo",
        cat("30 1 0:26 / ", v2, " rw - cgroup2 cgroup2 rw\n",
            "31 1 0:27 / ", v1, " rw,relatime - cgroup cgroup rw,memory\n"));
  CgroupLimit l = cgroup_memory_limit(dir.file("cgroup.v2"), dir.file("mountinfo"));
  EXPECT_EQ(l.bytes, int64_t(3) << 30);
  EXPECT_EQ(l.file, v2 + "/job/memory.max");
  l = cgroup_memory_limit(dir.file("cgroup.v1"), dir.file("mountinfo"));
  EXPECT_EQ(l.bytes, int64_t(1) << 30);
  EXPECT_EQ(l.file, v1 + "/batch/memory.limit_in_bytes");
  write("cgroup.none", "0::/\n");
  EXPECT_EQ(cgroup_memory_limit(dir.file("cgroup.none"), dir.file("mountinfo")).bytes, 0);
}

// A real memory cgroup of 1 GiB (where this test may make one: root, a writable cgroup
// file system): a model that needs more is refused with the cgroup's limit in the message,
// instead of being killed by the kernel; a tiny one trains.
TEST(ReliabilityMemoryPlan, RefusesWhatItsCgroupCannotHold) {
  // A child of this process's cgroup in a hierarchy whose children get a memory limit.
  std::string cg, limit_file;
  for (const MemoryCgroup& mine : memory_cgroups()) {
    const std::string child = cat(mine.dir, "/par_test_", getpid());
    std::error_code ec;
    if (!fs::create_directory(child, ec)) continue;
    if (fs::exists(child + "/" + mine.limit_file)) {
      cg = child;
      limit_file = child + "/" + mine.limit_file;
      break;
    }
    ::rmdir(child.c_str());
  }
  if (cg.empty())
    GTEST_SKIP() << "cannot make a memory cgroup here (needs root and a writable cgroup file "
                    "system with the memory controller)";
  struct Remove {
    std::string path;
    ~Remove() { ::rmdir(path.c_str()); }
  } remove{cg};
  std::ofstream(limit_file) << (int64_t(1) << 30) << "\n";
  TempDir probe;
  const ParRun moved = run_shell(probe, cat("sh -c 'echo $$ > ", cg, "/cgroup.procs && cat ",
                                            limit_file, "'"));
  if (moved.rc != 0 || moved.out != cat(int64_t(1) << 30, "\n"))
    GTEST_SKIP() << "cannot run a process in a memory cgroup of 1 GiB here: " << moved.err;
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 30);
  auto in_cgroup = [&](const std::string& args) {
    return run_shell(dir, cat("sh -c 'echo $$ > ", cg, "/cgroup.procs && exec \"$0\" \"$@\"' '",
                              PAR_BINARY, "' ", args));
  };
  const ParRun big = in_cgroup(cat("train --config ", quote(kTiny), " --data ", quote(data),
                                   " --out ", quote(dir.file("big")), " --d-model 3072 --threads 1"));
  EXPECT_USER_ERROR(big, "not enough memory");
  EXPECT_NE(big.err.find(cat("may have 1.00 GiB, the cgroup limit 1.00 GiB (", limit_file, ")")),
            std::string::npos) << big.err;
  EXPECT_FALSE(fs::exists(dir.file("big")));
  const ParRun tiny = in_cgroup(cat("train --config ", quote(kTiny), " --data ", quote(data),
                                    " --out ", quote(dir.file("tiny")), " --steps 2 --threads 1"));
  EXPECT_EQ(tiny.rc, 0) << tiny.err;
}

// The plan against what `par bench` measures (its peak resident memory, the largest rank's),
// on one process and under mpirun with sequence, tensor and data parallelism: within 15%.
TEST(ReliabilityMemoryPlan, PlanMatchesTheMeasuredPeakOfBench) {
  TempDir dir;
  const std::string base = cat("bench --config ", quote(testing_util::configs_dir() + "cpu-131k.ini"),
                               " --context-length 6144 --steps 1 --warmup 0 --gemm-size 256");
  struct Case {
    int ranks;
    std::string args;
  };
  for (const Case& c : {Case{1, " --threads 2"}, Case{1, " --threads 1 --batch-size 2"},
                        Case{2, " --sp 2 --threads 1"}, Case{2, " --tp 2 --threads 1"},
                        Case{2, " --dp 2 --batch-size 2 --threads 1"}}) {
    SCOPED_TRACE(c.args);
    const ParRun r = c.ranks == 1 ? run_par(dir, base + c.args)
                                  : run_shell(dir, testing_util::mpirun(c.ranks, base + c.args));
    ASSERT_EQ(r.rc, 0) << r.err;
    std::smatch peak, planned;
    ASSERT_TRUE(std::regex_search(r.out, peak, std::regex("\"peak_rss_mib_max\": ([0-9.]+)")));
    ASSERT_TRUE(std::regex_search(r.out, planned, std::regex("\"planned_host_mib\": ([0-9.]+)")));
    const double measured = std::stod(peak[1]), plan = std::stod(planned[1]);
    RecordProperty(cat("plan_vs_peak", c.args), cat(plan, " / ", measured));
    EXPECT_GT(plan, 90) << "too small a case to test the plan";
    EXPECT_LT(std::abs(plan - measured), 0.15 * measured) << "planned " << plan << " MiB, peak "
                                                           << measured << " MiB";
  }
}

// The same for decoding (bench --decode, what par sample plans too): one sample and
// several, whose own caches grow as they generate. The estimate is printed before decoding.
TEST(ReliabilityMemoryPlan, DecodePlanMatchesTheMeasuredPeakOfBench) {
  TempDir dir;
  const std::string base = cat("bench --config ", quote(testing_util::configs_dir() + "cpu-131k.ini"),
                               " --context-length 16384 --threads 1 --decode 16");
  for (const char* samples : {" --num-samples 1", " --num-samples 8"}) {
    SCOPED_TRACE(samples);
    const ParRun r = run_par(dir, base + samples);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.err.find("memory (estimate): host "), std::string::npos) << r.err;
    std::smatch peak, planned;
    ASSERT_TRUE(std::regex_search(r.out, peak, std::regex("\"peak_rss_mib\": ([0-9.]+)")));
    ASSERT_TRUE(std::regex_search(r.out, planned, std::regex("\"planned_host_mib\": ([0-9.]+)")));
    const double measured = std::stod(peak[1]), plan = std::stod(planned[1]);
    RecordProperty(cat("decode_plan_vs_peak", samples), cat(plan, " / ", measured));
    EXPECT_GT(plan, 90) << "too small a case to test the plan";
    EXPECT_LT(std::abs(plan - measured), 0.15 * measured) << "planned " << plan << " MiB, peak "
                                                           << measured << " MiB";
  }
}

}  // namespace
}  // namespace par
