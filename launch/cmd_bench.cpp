// `par bench`: times training steps of a config on random tokens and reports throughput,
// model FLOP/s, peak memory, and the rate of a plain sgemm measured in the same process
// (the yardstick for how well the step uses the machine); with --decode, generation
// instead. The options are here; launch/bench_train.h and launch/bench_decode.h measure.
#include <cstdio>
#include <set>
#include <string>

#include "checkpoint/model_file.h"
#include "core/decoder.h"
#include "core/error.h"
#include "launch/backend.h"
#include "launch/bench_decode.h"
#include "launch/bench_train.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/host_memory.h"
#include "launch/job.h"
#include "launch/decode_memory_plan.h"
#include "launch/memory_plan.h"
#include "launch/options.h"
#include "launch/threads.h"

namespace par {

namespace {

// Train's options that a bench on random tokens has no use for: a config may set them (they
// are read), the help leaves them out, and the command line's are said to be unused.
constexpr std::initializer_list<const char*> kTrainOnly = {
    "data", "val-data", "out", "resume", "log-every", "eval-every", "eval-tokens",
    "score-positions", "checkpoint-every", "checkpoint-minutes", "keep-checkpoints",
    "max-minutes"};
// What --decode does not use: it times generation on one process.
constexpr std::initializer_list<const char*> kTrainingBenchOnly = {
    "steps", "warmup", "gemm-size", "accum-steps", "dp", "sp", "tp"};

bool among(std::initializer_list<const char*> names, const std::string& name) {
  for (const char* n : names)
    if (name == n) return true;
  return false;
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  Job job("bench", &argc, &argv);
  ModelConfig mc;
  OptimizerConfig oc;
  RunConfig rc;
  BenchOptions b;
  int64_t decode = 0, samples = 1;
  std::string cuda_graphs = "on", checkpoint;
  bool step_capture = true, help = false;
  job.agree([&] {
    rc.steps = 3;  // the bench's default (--help shows it); a config's training length is not
    po::options_description opts, shown;
    const po::options_description run = run_options(rc);
    po::options_description run_shown("Run");
    for (const auto& o : run.options()) {
      if (among(kTrainOnly, o->long_name())) continue;
      if (o->long_name() == "steps")  // the bench's own meaning; the value parses as train's
        run_shown.add_options()("steps", po::value<int64_t>()->default_value(rc.steps),
                                "timed steps (after the untimed --warmup ones)");
      else
        run_shown.add(o);
    }
    opts.add(run).add(model_options(mc)).add(optimizer_options(oc));
    shown.add(run_shown).add(model_options(mc)).add(optimizer_options(oc));
    po::options_description bench("Benchmark");
    bench.add_options()
        ("warmup", po::value(&b.warmup)->default_value(b.warmup), "untimed steps first")
        ("gemm-size", po::value(&b.gemm_n)->default_value(b.gemm_n), "n of the n x n x n reference sgemm")
        ("profile", po::bool_switch(&b.profile), "also print the time of each backend op (timed steps, rank 0)")
        ("decode", po::value(&decode)->default_value(0), "instead of training: time generating this many tokens with cached decoding after a full-context prompt, and a few with uncached decoding (one process)")
        ("num-samples", po::value(&samples)->default_value(samples), "with --decode: decode this many samples of the prompt together (one batch); rates count every sample's tokens")
        ("checkpoint", po::value(&checkpoint), "with --decode: the model and its trained weights from this checkpoint directory, run directory or exported model, instead of a config's model with fresh weights")
        ("cuda-graphs", po::value(&cuda_graphs)->default_value(cuda_graphs), kCudaGraphsHelp);
    opts.add(bench);
    shown.add(bench);
    po::variables_map vm;
    const cli::Command cmd{"bench",
                           "Times training steps (forward, backward, Adam) of a config on random "
                           "tokens; --steps sets the timed steps (default 3 here). Under mpirun, "
                           "times the --dp x --sp x --tp layout.",
                           "par bench [--config FILE] [--steps K] [options]", &shown};
    std::set<std::string> given;
    help = !cli::parse(argc, argv, cmd, opts, vm, nullptr, "config", &given);
    if (help) return;
    // A config's training length (its steps) is not the bench's.
    if (!given.count("steps")) rc.steps = 3;
    // Train's options that a bench on random tokens has no use for: said, not silently
    // dropped (a config may set them; only the command line's are mentioned).
    const std::string unused =
        cli::options_among(kTrainOnly, [&](const std::string& o) { return given.count(o) > 0; });
    if (!unused.empty() && job.world_rank() == 0)
      std::fprintf(stderr, "par bench: warning: %s: train's option(s), not used by the bench (it "
                   "times steps on random tokens and writes nothing)\n", unused.c_str());
    if (decode < 0) fail_user("--decode must be a number of tokens to generate (0: time training)");
    if (b.warmup < 0) fail_user("--warmup must be 0 or more untimed steps");
    // 65536: 16 GiB per float32 operand, three of them; n itself is BLAS's int.
    if (b.gemm_n < 1 || b.gemm_n > 65536)
      fail_user("--gemm-size must be between 1 and 65536 (the n of an n x n x n product), not ",
                b.gemm_n);
    const std::string not_decoding = cli::options_among(
        kTrainingBenchOnly, [&](const std::string& o) { return given.count(o) > 0; });
    if (decode > 0 && !not_decoding.empty() && job.world_rank() == 0)
      std::fprintf(stderr, "par bench: warning: %s: not used with --decode (it times generation "
                   "on one process)\n", not_decoding.c_str());
    b.gemm_defaulted = vm["gemm-size"].defaulted();
    if (!checkpoint.empty()) {
      const po::options_description model = model_options(mc);
      for (const auto& o : model.options())
        if (vm.count(o->long_name()) && !vm[o->long_name()].defaulted())
          fail_user("--", o->long_name(), " is a model option: with --checkpoint the model is "
                    "the checkpoint's (leave out the model options, and a --config that sets them)");
    }
    if (rc.steps <= 0) fail_user("--steps must be positive for a benchmark");
    rc.validate();
    mc.validate();
    oc.validate();
    rc.validate_layout(mc);
  });
  if (help) return 0;
  job.agree([&] {
    if (samples < 1) fail_user("--num-samples must be at least 1");
    if (samples > kMaxDecodeSamples)
      fail_user("--num-samples ", samples, " is more than one batch decodes (at most ",
                kMaxDecodeSamples, ")");
    if (samples > 1 && decode <= 0) fail_user("--num-samples needs --decode (it counts samples of generation)");
    if (!checkpoint.empty() && decode <= 0) fail_user("--checkpoint needs --decode (training is timed on fresh weights)");
    step_capture = parse_cuda_graphs(cuda_graphs);
  });
  if (decode <= 0) return bench_train(job, mc, oc, rc, b);
  job.agree([&] {
    if (job.world_size() > 1) fail_user("--decode runs on one process (generation needs no grid)");
  });
  warn_threads("bench", apply_threads(rc.threads, 1));
  Backend backend;
  ModelFile trained;
  MemoryPlan decode_plan;
  job.agree([&] {
    backend = make_local_backend(rc.device, rc.precision, rc.attention);
    if (!checkpoint.empty()) {
      trained = read_model_file(checkpoint, false);
      mc = trained.model;
    }
    // Its decoders, one after the other: the timed one of K samples (its warm-up the same,
    // its prompt at most the context), and one uncached sample, whose caches stay float32
    // where the cached decoder's are bfloat16. The larger is planned.
    DecodePlanRequest plan;
    plan.model = mc;
    plan.samples = samples;
    plan.tokens = decode;
    plan.decoder = [&](int64_t k) {
      auto memory = [&](bool cached, int64_t K) {
        return Decoder<float>::memory(mc, cached, TokenTables::kAuto, K,
                                      decoding_cache_storage(rc.kv_storage, rc.device,
                                                             rc.precision, rc.attention, K, mc),
                                      mc.context_length, decode);
      };
      const DecoderMemory timed = memory(true, k), uncached = memory(false, 1);
      return timed.total() >= uncached.total() ? timed : uncached;
    };
    plan.params_bytes = double(ParamLayout(mc).total()) * sizeof(float);
    // Fresh weights are made on the host after this plan; a checkpoint's are read already.
    plan.host_weights_bytes = checkpoint.empty() ? plan.params_bytes : 0;
    plan.threads = current_threads();
    plan.cudnn_attention = plans_cudnn_attention(backend.cuda, rc.precision, rc.attention);
    plan.bf16_products = plans_bf16_products(backend.cuda, rc.precision);
    plan.runtime_bytes = double(resident_bytes());
    decode_plan = require_decoder_fits(plan, backend);
    std::fprintf(stderr, "memory (estimate): %s\n",
                 describe(decode_plan, memory_budget(backend, 1)).c_str());
  });
  if (!checkpoint.empty())
    std::printf("weights     %s (step %lld)\n", trained.path.c_str(),
                static_cast<long long>(trained.position.step));
  return bench_decode(mc, rc, decode, samples, checkpoint.empty() ? nullptr : &trained.params,
                      backend, decode_plan, b.profile, step_capture);
}

}  // namespace par
