// The microbenchmarks' command line: parsed, --help answered, a bad option said once.
#pragma once

#include <boost/program_options.hpp>
#include <cstdio>
#include <exception>
#include <iostream>

namespace par::bench {

// Parses argv into vm. Returns -1 to go on, else the exit status: 0 after --help (which
// prints `about` and the options), 2 after a bad option (said on stderr as "name: error").
inline int parse_options(int argc, char** argv,
                         const boost::program_options::options_description& opts,
                         boost::program_options::variables_map& vm, const char* name,
                         const char* about) {
  namespace po = boost::program_options;
  try {
    po::store(po::parse_command_line(argc, argv, opts), vm);
    po::notify(vm);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", name, e.what());
    return 2;
  }
  if (vm.count("help")) {
    std::printf("%s: %s\n", name, about);
    std::cout << opts;
    return 0;
  }
  return -1;
}

}  // namespace par::bench
