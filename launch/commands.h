// The subcommands of `par`. Each takes argv with argv[0] = the subcommand's name and
// returns the process exit status. UserError escaping from one is reported by main().
#pragma once

#include <string>

namespace par {

int cmd_prep(int argc, char** argv);
// Whether `word` names one of prep's modes (bytes, tokens, mirror, copy): main() names the
// mode in prep's errors.
bool is_prep_mode(const std::string& word);
int cmd_train(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_export(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_sample(int argc, char** argv);

}  // namespace par
