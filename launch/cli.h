// Command-line and config-file parsing shared by every `par` subcommand.
//
// Each subcommand describes its options with Boost.Program_options; parse() turns
// argv (plus, for commands that take --config, an INI file) into a variables_map and
// turns every parsing problem into a UserError that names the option and says where to
// look. Values given on the command line override the config file.
#pragma once

#include <boost/program_options.hpp>
#include <functional>
#include <initializer_list>
#include <set>
#include <string>
#include <vector>

namespace par::cli {

namespace po = boost::program_options;

struct Command {
  std::string name;     // "train"
  std::string summary;  // one line for `par --help`
  std::string usage;    // "par train --config FILE [options]"
  // What --help lists, where not every option parsed is the command's own (bench reads
  // train's configs, whose training-only options it takes and ignores); null: all.
  const po::options_description* shown = nullptr;
  std::string epilog = {};  // printed after the options (exit statuses, environment)
};

// Returns false when --help was given (usage already printed to stdout): the caller
// exits 0. `config_option` names the option holding an INI file path ("" = none).
// on_command_line: where given, the options the command line set (not the config file).
bool parse(int argc, char** argv, const Command& cmd, const po::options_description& opts,
           po::variables_map& vm,
           const po::positional_options_description* positional = nullptr,
           const std::string& config_option = "",
           std::set<std::string>* on_command_line = nullptr);

// "--a, --b": the options of `names` that `chosen` picks, in order ("" if none), for
// messages about options given but of no use.
std::string options_among(std::initializer_list<const char*> names,
                          const std::function<bool(const std::string&)>& chosen);

// Expands shard paths and glob patterns in order, without duplicates. A pattern that
// matches nothing, or a path that does not exist, is a UserError naming it.
std::vector<std::string> expand_paths(const std::vector<std::string>& patterns,
                                      const std::string& option_name);

}  // namespace par::cli
