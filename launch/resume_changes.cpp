#include "launch/resume_changes.h"

#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "launch/cli.h"
#include "launch/text.h"

namespace par {

namespace {

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : " ") + s;
  return out;
}

// Whether two lists of --data patterns name the same shards in the same order, however
// spelled (a glob or its files, relative or absolute paths). Patterns that match nothing
// now are compared as written.
bool same_shards(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  if (a == b) return true;
  const auto files = [](const std::vector<std::string>& patterns) {
    std::vector<std::string> out;
    for (const std::string& p : cli::expand_paths(patterns, "--data")) {
      std::error_code ec;
      const std::filesystem::path c = std::filesystem::weakly_canonical(p, ec);
      out.push_back(ec ? p : c.string());
    }
    return out;
  };
  try {
    return files(a) == files(b);
  } catch (const UserError&) {
    return false;
  }
}

}  // namespace

std::vector<std::string> ini_values(const std::string& ini, const std::string& key) {
  std::vector<std::string> values;
  std::istringstream in(ini);
  std::string line;
  while (std::getline(in, line)) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos && trim(line.substr(0, eq)) == key)
      values.push_back(trim(line.substr(eq + 1)));
  }
  return values;
}

std::vector<std::string> data_stream_changes(const std::string& checkpoint_config,
                                             const RunConfig& now, int64_t step) {
  std::vector<std::string> warnings;
  if (checkpoint_config.empty()) return warnings;
  const std::vector<std::string> data = ini_values(checkpoint_config, "data");
  if (!data.empty() && !same_shards(data, now.data))
    warnings.push_back(cat("--data ", joined(now.data), " differs from that of the run that ",
                           "wrote the checkpoint (", joined(data), "): training goes on over ",
                           "the new data, at example ", step * now.batch_size, " of its order"));
  const std::vector<std::string> batch = ini_values(checkpoint_config, "batch-size");
  if (batch.size() == 1 && batch[0] != std::to_string(now.batch_size)) {
    int64_t before = 0;
    try {
      before = std::stoll(batch[0]);
    } catch (const std::exception&) {
      return warnings;  // not a number: nothing sure to say
    }
    warnings.push_back(cat("--batch-size ", now.batch_size, " differs from that of the run ",
                           "that wrote the checkpoint (", before, "): reading goes on at ",
                           "example ", step * now.batch_size, " of the data's order, where ",
                           "that run had read ", step * before,
                           now.batch_size > before ? " (the examples between are skipped)"
                                                   : " (the examples between are read again)"));
  }
  return warnings;
}

std::string schedule_change(const std::string& checkpoint_config, const OptimizerConfig& now,
                            int64_t step) {
  const std::vector<std::string> steps = ini_values(checkpoint_config, "steps");
  if (now.schedule != "cosine" || steps.size() != 1 || steps[0] == std::to_string(now.total_steps))
    return "";
  OptimizerConfig before = now;
  try {
    before.total_steps = std::stoll(steps[0]);
  } catch (const std::exception&) {
    return "";
  }
  return cat("--steps ", now.total_steps, " differs from that of the run that wrote the "
             "checkpoint (", before.total_steps, "): the cosine schedule now decays over ",
             now.total_steps, " steps, and the learning rate of step ", step + 1, " is ",
             fmt("%.3g", learning_rate(now, step)), " where it was to be ",
             fmt("%.3g", learning_rate(before, step)));
}

std::vector<std::string> schedule_notes(const OptimizerConfig& c, bool min_lr_given) {
  std::vector<std::string> notes;
  // Warm-up's last step reaches --lr (learning_rate): only a longer one falls short.
  if (c.warmup_steps > c.total_steps)
    notes.push_back(cat("--warmup-steps ", c.warmup_steps, " is longer than --steps ",
                        c.total_steps, ": the learning rate never reaches --lr ", fmt("%g", c.lr),
                        c.schedule == "cosine" ? " and never decays" : ""));
  else if (c.warmup_steps == c.total_steps && c.schedule == "cosine")
    notes.push_back(cat("--warmup-steps ", c.warmup_steps, " is as long as --steps: the cosine "
                        "schedule never decays"));
  if (min_lr_given && c.schedule != "cosine")
    notes.push_back(cat("--min-lr is the floor of the cosine schedule: not used by --schedule ",
                        c.schedule));
  return notes;
}

}  // namespace par
