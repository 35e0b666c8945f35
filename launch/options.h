// The options of training-related subcommands, bound to the config structs they fill.
// Every option can appear in an INI config file (`name = value`, `#` comments) and on the
// command line (`--name value`); the command line wins.
#pragma once

#include <boost/program_options.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/optimizer.h"
#include "train/training_config.h"

namespace par {

namespace po = boost::program_options;

po::options_description model_options(ModelConfig& c);
po::options_description optimizer_options(OptimizerConfig& c);

// What a training run does besides the model and the optimizer.
struct RunConfig {
  std::string config;                // --config (INI file)
  std::vector<std::string> data;     // shard paths or glob patterns
  std::vector<std::string> val_data;
  std::string out;                   // run directory
  int64_t steps = 1000;
  int64_t batch_size = 8;            // examples per optimizer step (all micro-batches)
  int64_t accum_steps = 1;           // micro-batches per step
  double dropout = 0.1;
  double cross_attend_dropout = 0.0;
  uint64_t seed = 0;
  int64_t log_every = 10;
  int64_t eval_every = 0;            // 0: validate only at the end (if --val-data)
  int64_t eval_tokens = 65536;       // targets per periodic validation (0: whole set)
  std::string score_positions;       // FIRST:LAST: validation scores only those (train/evaluate.h)
  int64_t checkpoint_every = 0;      // 0: only at the end
  double checkpoint_minutes = 60;    // also once this long has passed since the last (0: off)
  int64_t keep_checkpoints = 3;      // complete checkpoints kept in OUT/checkpoints
  std::string resume = "none";       // none | auto | PATH of a checkpoint directory
  int threads = 0;                   // 0: all cores
  int dp = 1, sp = 1, tp = 1;        // the process grid (world = dp x sp x tp ranks)
  double max_minutes = 0;            // stop with a checkpoint after this long (0: no limit)
  std::string device = "cpu";        // cpu | cuda
  std::string precision = "fp32";    // matrix products on cuda: fp32 | tf32 | bf16
  std::string attention = "auto";    // attention kernels on cuda: auto | blocked | fused | cudnn
  std::string kv_storage = "auto";   // the input side's keys and values: auto | bf16 | fp32
  double collective_timeout = 1800;  // seconds one collective may wait (0: for ever)

  int64_t micro_batch() const { return batch_size / accum_steps; }
  // What a training step takes of these options.
  TrainingConfig training(const ModelConfig& model) const {
    return TrainingConfig{micro_batch(), dropout, cross_attend_dropout, seed,
                          key_value_storage(model)};
  }
  // --kv-storage resolved for `model`: auto is bf16 where cuDNN's attention reads the keys
  // and values and the projections' products run on bf16 operands as they lie (--device
  // cuda --precision bf16, --attention auto or cudnn, cross-attention heads cuDNN takes on
  // any GPU, no tensor parallelism: split d/tp wide, the projections are too narrow for
  // bf16 products and the input side's d-wide tensors outweigh what bf16 saves), fp32
  // elsewhere.
  KeyValueStorage key_value_storage(const ModelConfig& model) const;
  // " | keys and values in bf16" where they are, for the logs' layout lines; "" otherwise.
  std::string storage_note(const ModelConfig& model) const;
  void validate() const;
  // UserError unless the model and the batch fit the --dp/--sp/--tp layout.
  void validate_layout(const ModelConfig& model) const;
};

po::options_description run_options(RunConfig& c);

// --kv-storage (auto, bf16 or fp32) resolved for a run of `model` (RunConfig's rule; par
// eval, whose forward passes keep the same input side, takes auto).
KeyValueStorage resolve_key_value_storage(const std::string& kv_storage,
                                          const std::string& device,
                                          const std::string& precision,
                                          const std::string& attention, int tp,
                                          const ModelConfig& model);
// " | keys and values in bf16" where they are, for the logs' layout lines; "" otherwise.
std::string storage_note(KeyValueStorage storage);
// The cross caches of cached decoding (core/decoder.h) for --kv-storage (auto, bf16 or
// fp32; par sample takes auto): auto is bf16 where a step's attention is the split kernels,
// which round float32 keys and values to bf16 as they read them anyway (the same numbers,
// half the bytes): --device cuda --precision bf16, --attention auto or fused, one sample or
// as many as the kernel for several queries over the shared cache takes (at most 16, with
// a context of 1,024 or more; else the bfloat16 keys would be widened back to float32
// every step, which costs more than it saves), an even d_model; fp32 elsewhere.
KeyValueStorage decoding_cache_storage(const std::string& kv_storage, const std::string& device,
                                       const std::string& precision,
                                       const std::string& attention, int64_t samples,
                                       const ModelConfig& model);

// The help of --attention, one text for every command that takes it (train and bench
// through run_options, eval and sample with their own options), so they cannot drift.
extern const char* const kAttentionHelp;

// --cuda-graphs of the commands that decode (sample, bench --decode): its help, and its
// value ("on" or "off"; UserError otherwise) as whether decoding steps are captured
// (Decoder::set_step_capture).
extern const char* const kCudaGraphsHelp;
bool parse_cuda_graphs(const std::string& value);

// Threads per rank in effect (see launch/threads.h for how they are chosen).
int current_threads();

// The resolved options as INI text (what the run actually used), for the run directory
// and checkpoints.
std::string to_ini(const po::variables_map& vm);

}  // namespace par
