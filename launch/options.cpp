#include "launch/options.h"

#include <omp.h>

#include <boost/any.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <type_traits>
#include <variant>

#include "core/error.h"
#include "core/model.h"
#include "launch/text.h"

namespace par {

po::options_description model_options(ModelConfig& c) {
  po::options_description o("Model (spec/MODEL.md)");
  for (const ModelField& f : kModelFields) {
    std::visit(
        [&](auto m) {
          auto& v = c.*m;
          if constexpr (std::is_same_v<decltype(m), PositionEncoding ModelConfig::*>) {
            const std::string option = cat("--", f.option);
            o.add_options()(f.option,
                            po::value<std::string>()
                                ->default_value(position_encoding_name(v))
                                ->notifier([&v, option](const std::string& name) {
                                  v = parse_position_encoding(name, option);
                                }),
                            f.help);
          } else {
            o.add_options()(f.option, po::value(&v)->default_value(v), f.help);
          }
        },
        f.member);
  }
  return o;
}

po::options_description optimizer_options(OptimizerConfig& c) {
  po::options_description o("Optimizer (Adam/AdamW)");
  o.add_options()
      ("lr", po::value(&c.lr)->default_value(c.lr, exact(c.lr)), "peak learning rate")
      ("min-lr", po::value(&c.min_lr)->default_value(c.min_lr, exact(c.min_lr)), "final learning rate of the cosine schedule")
      ("warmup-steps", po::value(&c.warmup_steps)->default_value(c.warmup_steps), "steps of linear warm-up from 0")
      ("schedule", po::value(&c.schedule)->default_value(c.schedule), "after warm-up: constant | cosine (decays to --min-lr at --steps)")
      ("beta1", po::value(&c.beta1)->default_value(c.beta1, exact(c.beta1)), "Adam beta1")
      ("beta2", po::value(&c.beta2)->default_value(c.beta2, exact(c.beta2)), "Adam beta2")
      ("adam-eps", po::value(&c.eps)->default_value(c.eps, exact(c.eps)), "Adam epsilon")
      ("weight-decay", po::value(&c.weight_decay)->default_value(c.weight_decay, exact(c.weight_decay)), "decoupled weight decay on matrices and the embedding (AdamW); 0 = Adam")
      ("clip-norm", po::value(&c.clip_norm)->default_value(c.clip_norm, exact(c.clip_norm)), "clip gradients to this global norm (0: off)");
  return o;
}

void RunConfig::validate() const {
  if (steps < 1) fail_user("--steps must be at least 1 (the total, counting the steps of the run resumed from)");
  if (batch_size <= 0) fail_user("--batch-size must be positive");
  if (accum_steps <= 0) fail_user("--accum-steps must be positive");
  if (batch_size % accum_steps != 0)
    fail_user("--batch-size ", batch_size, " does not divide into --accum-steps ", accum_steps,
              " micro-batches");
  if (!(dropout >= 0 && dropout < 1)) fail_user("--dropout must be in [0, 1)");
  if (!(cross_attend_dropout >= 0 && cross_attend_dropout < 1))
    fail_user("--cross-attend-dropout must be in [0, 1)");
  if (log_every <= 0) fail_user("--log-every must be positive");
  if (eval_every < 0 || checkpoint_every < 0 || eval_tokens < 0)
    fail_user("--eval-every, --eval-tokens and --checkpoint-every must be >= 0");
  if (keep_checkpoints < 1) fail_user("--keep-checkpoints must be at least 1");
  if (threads < 0) fail_user("--threads must be >= 0");
  if (dp < 1 || sp < 1 || tp < 1) fail_user("--dp, --sp and --tp must be at least 1");
  if (!(max_minutes >= 0) || !std::isfinite(max_minutes))
    fail_user("--max-minutes must be a finite number >= 0 (0: no limit)");
  if (!(checkpoint_minutes >= 0) || !std::isfinite(checkpoint_minutes))
    fail_user("--checkpoint-minutes must be a finite number >= 0 (0: off)");
  if (!(collective_timeout >= 0) || !std::isfinite(collective_timeout))
    fail_user("--collective-timeout must be a finite number of seconds >= 0 (0: no limit)");
  if (kv_storage != "auto" && kv_storage != "bf16" && kv_storage != "fp32")
    fail_user("--kv-storage must be auto, bf16 or fp32 (got '", kv_storage, "')");
  if (kv_storage == "bf16" && device != "cuda")
    fail_user("--kv-storage bf16 is for --device cuda: the CPU keeps the keys and values in fp32");
}

std::string storage_note(KeyValueStorage storage) {
  return storage == KeyValueStorage::kBf16 ? " | keys and values in bf16" : "";
}

std::string RunConfig::storage_note(const ModelConfig& model) const {
  return par::storage_note(key_value_storage(model));
}

KeyValueStorage RunConfig::key_value_storage(const ModelConfig& model) const {
  return resolve_key_value_storage(kv_storage, device, precision, attention, tp, model);
}

KeyValueStorage resolve_key_value_storage(const std::string& kv_storage,
                                          const std::string& device,
                                          const std::string& precision,
                                          const std::string& attention, int tp,
                                          const ModelConfig& model) {
  if (kv_storage == "bf16") return KeyValueStorage::kBf16;
  if (kv_storage == "fp32") return KeyValueStorage::kNative;
  // cuDNN takes heads that are a multiple of 8 up to 128 on every GPU it runs on
  // (kernels/cuda/sdpa_graph.h, head_dim_supported: 256 from sm_90).
  const int64_t head = model.cross_head_dim();
  const bool cudnn_reads_them = device == "cuda" && precision == "bf16" &&
                                (attention == "auto" || attention == "cudnn") &&
                                head % 8 == 0 && head <= 128;
  return cudnn_reads_them && tp == 1 ? KeyValueStorage::kBf16 : KeyValueStorage::kNative;
}

KeyValueStorage decoding_cache_storage(const std::string& kv_storage, const std::string& device,
                                       const std::string& precision,
                                       const std::string& attention, int64_t samples,
                                       const ModelConfig& model) {
  if (kv_storage == "bf16") return KeyValueStorage::kBf16;
  if (kv_storage == "fp32") return KeyValueStorage::kNative;
  // Several samples' step over the shared cache takes the kernel for a few queries where it
  // covers the call (kernels/cuda: decode_queries_cover): at most 16 queries, at least
  // 1,024 keys, and their scores, queries and sums in 48 KiB of shared memory (bounded here
  // by the widest of its layouts).
  const int64_t head = model.cross_head_dim();
  const bool queries_kernel = samples <= 16 && model.context_length >= 1024 &&
                              samples * (head + 258 + std::max<int64_t>(128, head)) * 4 <= 48 * 1024;
  // (Every --attention but blocked gives decoding steps to the split kernels.)
  const bool split_kernel = attention != "blocked" && (samples == 1 || queries_kernel);
  return device == "cuda" && precision == "bf16" && split_kernel && model.d_model % 2 == 0
             ? KeyValueStorage::kBf16
             : KeyValueStorage::kNative;
}

void RunConfig::validate_layout(const ModelConfig& model) const {
  if (micro_batch() % dp != 0)
    fail_user("a micro-batch of ", micro_batch(), " examples (--batch-size ", batch_size,
              " / --accum-steps ", accum_steps, ") does not divide over --dp ", dp,
              " data-parallel replicas");
  par::validate_layout(model, sp, tp);
}

const char* const kAttentionHelp =
    "attention kernels on cuda: auto (cuDNN's flash attention with --precision bf16 where "
    "cuDNN is found and takes the call, blocked elsewhere; the log says which), blocked "
    "(cuBLAS per key block, any precision), fused (par's WMMA kernels, tf32 and bf16), or "
    "cudnn (cuDNN for every call but decoding steps, else an error); on cpu auto or blocked "
    "(the CPU picks its own kernels: fused AVX-512 ones where the build and the head width "
    "allow)";

const char* const kCudaGraphsHelp =
    "on or off: give each decoding step to the GPU as one CUDA graph (recorded once, then "
    "replayed while the step's shapes hold; re-recorded at refills and every M tokens), so "
    "the GPU runs the step's small kernels back to back, or launch its kernels one by one; "
    "the same tokens either way; nothing to do on cpu";

bool parse_cuda_graphs(const std::string& value) {
  if (value == "on") return true;
  if (value == "off") return false;
  fail_user("--cuda-graphs must be on or off (got '", value, "')");
}

po::options_description run_options(RunConfig& c) {
  po::options_description o("Run");
  o.add_options()
      ("config", po::value(&c.config), "INI file of options (see configs/); command-line options override it")
      ("data", po::value(&c.data)->multitoken(), "training shards: paths or glob patterns (repeatable)")
      ("val-data", po::value(&c.val_data)->multitoken(), "validation shards: paths or glob patterns")
      ("out", po::value(&c.out), "run directory: train.log, metrics.jsonl, config.ini, checkpoints/")
      ("steps", po::value(&c.steps)->default_value(c.steps), "optimizer steps to train (in total, counting resumed ones)")
      ("batch-size", po::value(&c.batch_size)->default_value(c.batch_size), "examples per optimizer step")
      ("accum-steps", po::value(&c.accum_steps)->default_value(c.accum_steps), "micro-batches per step (gradient accumulation)")
      ("dropout", po::value(&c.dropout)->default_value(c.dropout, exact(c.dropout)), "residual dropout")
      ("cross-attend-dropout", po::value(&c.cross_attend_dropout)->default_value(c.cross_attend_dropout, exact(c.cross_attend_dropout)), "probability of dropping each input position from the cross-attention")
      ("seed", po::value(&c.seed)->default_value(c.seed), "seed of initialization, data order and dropout")
      ("log-every", po::value(&c.log_every)->default_value(c.log_every), "log progress every K steps")
      ("eval-every", po::value(&c.eval_every)->default_value(c.eval_every), "validate every K steps (0: at the end only)")
      ("eval-tokens", po::value(&c.eval_tokens)->default_value(c.eval_tokens), "targets scored per validation (in whole blocks, so up to a block more; 0: the whole validation set)")
      ("score-positions", po::value(&c.score_positions), "FIRST:LAST: validation scores only the targets whose position in their document (1-based, counted from the stream's start or the last EOS) lies in [FIRST, LAST], as par eval --score-positions")
      ("checkpoint-every", po::value(&c.checkpoint_every)->default_value(c.checkpoint_every), "write a checkpoint (OUT/checkpoints/step-N) every K steps, and always at the end (0: no step count; --checkpoint-minutes still applies)")
      ("checkpoint-minutes", po::value(&c.checkpoint_minutes)->default_value(c.checkpoint_minutes), "also write one once this many minutes have passed since the last (or the start), so that a crash or a lost node costs at most that much (0: off)")
      ("keep-checkpoints", po::value(&c.keep_checkpoints)->default_value(c.keep_checkpoints), "complete checkpoints to keep (the newest is never removed)")
      ("resume", po::value(&c.resume)->default_value(c.resume), "none | auto (continue from the newest complete checkpoint in OUT, if any) | PATH of a checkpoint directory")
      ("threads", po::value(&c.threads)->default_value(c.threads), "CPU threads per rank (0: $OMP_NUM_THREADS if set, else the node's CPUs shared among its ranks)")
      ("max-minutes", po::value(&c.max_minutes)->default_value(c.max_minutes), "stop cleanly after this many minutes of wall time: checkpoint, then exit 75 (\"requeue me\"); 0: no limit")
      ("device", po::value(&c.device)->default_value(c.device), "cpu or cuda (one GPU per rank, chosen by the node-local rank)")
      ("precision", po::value(&c.precision)->default_value(c.precision), "matrix products on cuda: fp32, tf32 or bf16 (weights and optimizer state stay fp32)")
      ("attention", po::value(&c.attention)->default_value(c.attention), kAttentionHelp)
      ("kv-storage", po::value(&c.kv_storage)->default_value(c.kv_storage), "where the input side keeps its keys and values and their gradients (the largest tensors: 4 of batch x context x d): auto (bf16 with --device cuda --precision bf16, cuDNN's attention, --tp 1 and a cross-attention head size that cuDNN takes, fp32 elsewhere), bf16 (half the memory; rounded once as they are made; cuda only) or fp32; the conditions in full, and the decoder's cross caches (par bench --decode, par sample), are in docs/gpu.md")
      ("collective-timeout", po::value(&c.collective_timeout)->default_value(c.collective_timeout), "seconds one collective may wait for the other ranks before this rank ends with an error saying what it waited for (a hung rank, GPU, storage or network; under mpirun or srun the launcher then ends the job); 0: wait for ever")
      ("dp", po::value(&c.dp)->default_value(c.dp), "data-parallel replicas (each takes a share of every batch)")
      ("sp", po::value(&c.sp)->default_value(c.sp), "sequence-parallel ranks (each holds a slice of the context)")
      ("tp", po::value(&c.tp)->default_value(c.tp), "tensor-parallel ranks (each holds a share of the heads and MLPs)");
  return o;
}

int current_threads() { return omp_get_max_threads(); }

std::string to_ini(const po::variables_map& vm) {
  std::ostringstream os;
  for (const auto& [name, value] : vm) {
    // The file the options came from: they are all here, and a config file is not read
    // from a config file (cli.cpp).
    if (name == "config") continue;
    const boost::any& v = value.value();
    if (auto p = boost::any_cast<std::vector<std::string>>(&v)) {
      for (const auto& item : *p) os << name << " = " << item << "\n";  // repeated keys
      continue;
    }
    os << name << " = ";
    if (auto p = boost::any_cast<int64_t>(&v)) os << *p;
    else if (auto p = boost::any_cast<uint64_t>(&v)) os << *p;
    else if (auto p = boost::any_cast<int>(&v)) os << *p;
    else if (auto p = boost::any_cast<double>(&v)) os << exact(*p);
    else if (auto p = boost::any_cast<bool>(&v)) os << (*p ? "true" : "false");
    else if (auto p = boost::any_cast<std::string>(&v)) os << *p;
    os << "\n";
  }
  return os.str();
}

}  // namespace par
