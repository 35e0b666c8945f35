// What one training step needs of a run's options: the few numbers that change its
// result, so that the engine (train/train_step.h) does not depend on the command line's
// whole RunConfig (launch/options.h, which makes one with RunConfig::training(model)).
#pragma once

#include <cstdint>

#include "core/key_value_storage.h"

namespace par {

struct TrainingConfig {
  int64_t micro_batch = 1;          // examples of each micro-batch, over all replicas
  double dropout = 0.1;             // residual dropout
  double cross_attend_dropout = 0;  // input positions dropped from the cross-attention
  uint64_t seed = 0;                // --seed, from which the dropout stream is derived
  KeyValueStorage kv_storage = KeyValueStorage::kNative;  // the input side's keys and values
};

}  // namespace par
