#include "launch/cli.h"

#include <glob.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "parallel/mpi_environment.h"

namespace par::cli {

namespace {

void print_help(const Command& cmd, const po::options_description& opts) {
  std::cout << "usage: " << cmd.usage << "\n\n" << cmd.summary << "\n\n"
            << (cmd.shown ? *cmd.shown : opts) << "\n"
            << (cmd.epilog.empty() ? "" : cmd.epilog + "\n");
}

// Boost reads "-3" into an unsigned option as 2^64 - 3 without a word (a seed of
// 18446744073709551613): refuse a sign on every unsigned option instead.
void refuse_negative_unsigned(const po::parsed_options& parsed, const po::options_description& opts,
                              const std::string& where) {
  for (const po::option& o : parsed.options) {
    const po::option_description* d = opts.find_nothrow(o.string_key, false);
    if (!d || !dynamic_cast<const po::typed_value<uint64_t>*>(d->semantic().get())) continue;
    for (const std::string& v : o.value) {
      const size_t first = v.find_first_not_of(" \t");
      if (first != std::string::npos && v[first] == '-')
        fail_user(where, "--", o.string_key, " must be zero or more, not ", v);
    }
  }
}

// What a config file says, less the byte-order mark that some editors put first (it would
// read as part of the first option's name, invisibly).
std::string config_text(std::ifstream& in) {
  std::ostringstream os;
  os << in.rdbuf();
  std::string text = os.str();
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);
  return text;
}

}  // namespace

bool parse(int argc, char** argv, const Command& cmd, const po::options_description& opts,
           po::variables_map& vm, const po::positional_options_description* positional,
           const std::string& config_option, std::set<std::string>* on_command_line) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      print_help(cmd, opts);
      return false;
    }
  }
  const std::string hint = cat(" (see `par ", cmd.name, " --help`)");
  try {
    // Like main()'s argv: the parser skips argv[0] (here the subcommand's name).
    auto parser = po::command_line_parser(argc, argv).options(opts);
    if (positional) parser.positional(*positional);
    const po::parsed_options parsed = parser.run();
    refuse_negative_unsigned(parsed, opts, "");
    po::store(parsed, vm);
    if (on_command_line)
      for (const auto& [name, value] : vm)
        if (!value.defaulted()) on_command_line->insert(name);
  } catch (const po::unknown_option& e) {
    fail_user("unknown option ", e.get_option_name(), hint);
  } catch (const po::error& e) {
    fail_user(e.what(), hint);
  }
  if (!config_option.empty() && vm.count(config_option)) {
    const std::string path = vm[config_option].as<std::string>();
    // A directory opens like a file and reads as empty: it would silently mean "defaults".
    struct stat st{};
    if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
      fail_user("config file ", path, " (--", config_option, ") is ",
                S_ISDIR(st.st_mode) ? "a directory" : "not a regular file",
                ": give an INI file (see configs/)");
    std::ifstream in(path);
    if (!in) fail_user("cannot read config file ", path, " (--", config_option, ")");
    try {
      std::istringstream text(config_text(in));
      auto parsed = po::parse_config_file(text, opts, /*allow_unregistered=*/false);
      refuse_negative_unsigned(parsed, opts, cat("config file ", path, ": "));
      // Config files do not include others: such a line was stored and never read. Said,
      // not refused: the config.ini of runs of earlier versions holds one (with the named
      // file's options already beside it), and is meant to be given again.
      for (const po::option& o : parsed.options)
        if (o.string_key == config_option && MpiEnvironment::launcher_world_rank() <= 0)
          std::fprintf(stderr, "par %s: warning: config file %s: '%s = %s' is not read: a "
                       "config file does not include others (copy the options you need into "
                       "it)\n", cmd.name.c_str(), path.c_str(), config_option.c_str(),
                       o.value.empty() ? "" : o.value[0].c_str());
      std::erase_if(parsed.options,
                    [&](const po::option& o) { return o.string_key == config_option; });
      // store() skips what the command line already set, without reading its value: read
      // every value of the file on its own first, so that a bad one is an error anyway.
      po::variables_map whole_file;
      po::store(parsed, whole_file);
      po::store(parsed, vm);
    } catch (const po::unknown_option& e) {
      fail_user("config file ", path, ": unknown option '", e.get_option_name(), "'", hint);
    } catch (const po::error& e) {
      fail_user("config file ", path, ": ", e.what(), hint);
    }
  }
  try {
    po::notify(vm);
  } catch (const po::error& e) {
    fail_user(e.what(), hint);
  }
  return true;
}

std::string options_among(std::initializer_list<const char*> names,
                          const std::function<bool(const std::string&)>& chosen) {
  std::string list;
  for (const char* name : names)
    if (chosen(name)) list += cat(list.empty() ? "" : ", ", "--", name);
  return list;
}

std::vector<std::string> expand_paths(const std::vector<std::string>& patterns,
                                      const std::string& option_name) {
  std::vector<std::string> out;
  std::set<std::string> seen;  // files, however spelled: each is read once
  for (const std::string& p : patterns) {
    std::vector<std::string> matches;
    struct stat literal{};
    // A file whose name holds a pattern's characters ("shard [2].h5") is itself first.
    if (p.find_first_of("*?[") != std::string::npos && ::stat(p.c_str(), &literal) != 0) {
      glob_t g{};
      const int rc = ::glob(p.c_str(), 0, nullptr, &g);
      if (rc == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i) matches.emplace_back(g.gl_pathv[i]);
      globfree(&g);
      if (matches.empty()) fail_user(option_name, ": pattern '", p, "' matches no file");
    } else {
      struct stat st{};
      if (::stat(p.c_str(), &st) != 0) fail_user(option_name, ": no such file '", p, "'");
      matches.push_back(p);
    }
    for (auto& m : matches) {
      std::error_code ec;
      const std::filesystem::path file = std::filesystem::weakly_canonical(m, ec);
      if (seen.insert(ec ? m : file.string()).second) out.push_back(m);
    }
  }
  return out;
}

}  // namespace par::cli
