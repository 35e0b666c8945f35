// par_mpi_probe: a small MPI program for the tests that need whole mpirun jobs.
//
//   par_mpi_probe layout [--dp D --sp S --tp T]
//       Builds the grid, checks exact collectives over the world and every group, and has
//       rank 0 print one line per rank, in rank order:
//         layout rank R host H local_rank L dp D sp S tp T
//       then "probe: collectives ok" (exit 0) or the failures (exit 1).
//   par_mpi_probe throw --rank R --at N
//       Every rank loops over collectives; rank R throws at iteration N. main() prints the
//       rank-tagged error and aborts the job (MpiEnvironment::abort, exit status 3).
//   par_mpi_probe kill --rank R --at N
//       The same, but rank R sends itself SIGKILL: the job must still end, not hang.
#include <mpi.h>

#include <array>
#include <csignal>
#include <cstring>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_environment.h"
#include "parallel/mpi_error.h"
#include "parallel/process_grid.h"

namespace par {
namespace {

struct Args {
  std::string mode;
  GridShape shape{0, 1, 1};  // dp 0: all ranks data parallel
  int rank = 1;
  int at = 20;
};

Args parse(int argc, char** argv) {
  Args a;
  if (argc < 2) fail_user("usage: par_mpi_probe layout|throw|kill [options]");
  a.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (i + 1 >= argc) fail_user("option ", k, " needs a value");
    int v = std::stoi(argv[++i]);
    if (k == "--dp") a.shape.dp = v;
    else if (k == "--sp") a.shape.sp = v;
    else if (k == "--tp") a.shape.tp = v;
    else if (k == "--rank") a.rank = v;
    else if (k == "--at") a.at = v;
    else fail_user("unknown option ", k);
  }
  if (a.mode != "layout" && a.mode != "throw" && a.mode != "kill") {
    fail_user("unknown mode ", a.mode);
  }
  return a;
}

// Sum over the group of (member world rank + 1) * (i + 1): exact, and wrong if any member
// is missing or counted twice.
int64_t check_sum(Communicator& c, int world_rank, const char* name, int64_t want_ranks_sum) {
  const int64_t n = 10007;
  std::vector<double> x(n);
  for (int64_t i = 0; i < n; ++i) x[size_t(i)] = double(world_rank + 1) * double(i + 1);
  c.all_reduce(x.data(), x.data(), n, DataType::kFloat64, ReduceOp::kSum);
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    bad += x[size_t(i)] != double(want_ranks_sum + c.size()) * double(i + 1);
  }
  if (bad) std::cerr << cat("probe: ", rank_on_host(), ": group ", name, " wrong sums\n");
  return bad;
}

int layout(MpiEnvironment& env, GridShape shape) {
  if (shape.dp == 0) shape.dp = env.world_size() / (shape.sp * shape.tp);
  ProcessGrid g(env.world(), shape);
  const GridShape s = g.shape();
  const int w = g.world_rank();
  auto ranks_sum = [&](auto&& member) {
    int64_t sum = 0;
    for (int q = 0; q < g.world_size(); ++q) sum += member(q) ? q : 0;
    return sum;
  };
  auto coords = [&](int q) {
    return std::array<int, 3>{q / (s.sp * s.tp), (q / s.tp) % s.sp, q % s.tp};
  };
  const auto me = coords(w);
  int64_t bad = 0;
  bad += check_sum(*g.world(), w, "world", ranks_sum([](int) { return true; }));
  bad += check_sum(*g.dp(), w, "dp", ranks_sum([&](int q) {
                     auto c = coords(q);
                     return c[1] == me[1] && c[2] == me[2];
                   }));
  bad += check_sum(*g.sp(), w, "sp", ranks_sum([&](int q) {
                     auto c = coords(q);
                     return c[0] == me[0] && c[2] == me[2];
                   }));
  bad += check_sum(*g.tp(), w, "tp", ranks_sum([&](int q) {
                     auto c = coords(q);
                     return c[0] == me[0] && c[1] == me[1];
                   }));
  bad += check_sum(*g.dp_sp(), w, "dp_sp", ranks_sum([&](int q) { return coords(q)[2] == me[2]; }));

  // One fixed-size line per rank, gathered as bytes so rank 0 prints them in order.
  constexpr int64_t kLine = 160;
  std::vector<uint8_t> line(kLine, 0), lines(size_t(kLine * g.world_size()));
  std::string text = cat("layout rank ", w, " host ", g.host(), " local_rank ", g.local_rank(),
                         " dp ", g.dp_rank(), " sp ", g.sp_rank(), " tp ", g.tp_rank());
  std::memcpy(line.data(), text.data(), std::min<size_t>(text.size(), kLine - 1));
  g.world()->all_gather(line.data(), lines.data(), kLine, DataType::kUInt8);
  const int64_t total_bad = g.world()->all_reduce_value<int64_t>(bad);
  if (w == 0) {
    for (int q = 0; q < g.world_size(); ++q) {
      std::cout << reinterpret_cast<const char*>(lines.data() + q * kLine) << "\n";
    }
    std::cout << (total_bad == 0 ? "probe: collectives ok" : "probe: collectives FAILED")
              << std::endl;
  }
  return total_bad == 0 ? 0 : 1;
}

void fail_in_loop(MpiEnvironment& env, const Args& a) {
  MpiCommunicator world(env.world());
  std::vector<float> x(4096, 1.0f);
  for (int it = 0;; ++it) {
    if (env.world_rank() == a.rank && it == a.at) {
      if (a.mode == "kill") std::raise(SIGKILL);
      throw std::runtime_error(cat("injected failure at iteration ", it));
    }
    world.all_reduce(x.data(), x.data(), int64_t(x.size()), DataType::kFloat32, ReduceOp::kMax);
    world.barrier();
  }
}

}  // namespace
}  // namespace par

int main(int argc, char** argv) {
  par::MpiEnvironment env(&argc, &argv);
  try {
    par::Args a = par::parse(argc, argv);
    if (a.mode == "layout") return par::layout(env, a.shape);
    par::fail_in_loop(env, a);
  } catch (const std::exception& e) {
    // The other ranks are blocked in a collective: only an abort ends the job.
    // One write for the whole line: mpirun relays each write apart, and its abort banner
    // can otherwise land in the middle of the line.
    std::cerr << par::cat("par_mpi_probe: ", par::rank_on_host(), ": error: ", e.what(), "\n")
              << std::flush;
    env.abort(3);
  }
  return 0;
}
