// What a resumed run reads differently from the run that wrote its checkpoint.
//
// The loader keeps only a batch counter (data/loader.h), so a run resumed with other
// --data or another --batch-size does not fail: it goes on over another stream of
// examples. That may be meant (a curriculum changes its data between phases, as the main
// job does) or a slip (a wrong glob in a requeued job script); either way the log must say
// so, since the losses alone will not.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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

}  // namespace par
