// What a resumed run does differently from the run that wrote its checkpoint, and schedule
// settings that do not do what they say: warnings for the log.
//
// The loader keeps only a batch counter (data/loader.h), so a run resumed with other
// --data or another --batch-size does not fail: it goes on over another stream of
// examples. That may be meant (a curriculum changes its data between phases, as the main
// job does) or a slip (a wrong glob in a requeued job script); either way the log must say
// so, since the losses alone will not. The same holds for a cosine schedule stretched by a
// new --steps.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/optimizer.h"
#include "launch/options.h"

namespace par {

// The values of `key` in INI text (config.ini: "key = value" lines, a key repeated for a
// list), in order; none when the key is absent.
std::vector<std::string> ini_values(const std::string& ini, const std::string& key);

// One warning per change in what the data stream reads (other shards, whatever the
// spelling of their patterns; another batch size), between the options in
// `checkpoint_config` (the checkpoint's config.ini; empty: nothing to compare) and `now`,
// for a run resumed at optimizer step `step`.
std::vector<std::string> data_stream_changes(const std::string& checkpoint_config,
                                             const RunConfig& now, int64_t step);

// A warning when a cosine schedule decays over another --steps than the run that wrote
// the checkpoint: the rate at `step` jumps (up, when a finished run is extended). `now` is
// the resumed run's schedule (total_steps its --steps); empty when nothing changes.
std::string schedule_change(const std::string& checkpoint_config, const OptimizerConfig& now,
                            int64_t step);

// Schedule settings that do not do what they say: a warm-up as long as the run, --min-lr
// given (`min_lr_given`) to a constant schedule.
std::vector<std::string> schedule_notes(const OptimizerConfig& c, bool min_lr_given);

}  // namespace par
