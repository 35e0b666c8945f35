// ProcessGrid: for every shape that fits the job (on a block of the world when the shape
// needs fewer ranks, so a 4-rank job also checks the 2-rank shapes), each rank's
// coordinates follow the documented order and every group has the right size, rank and
// members (checked by gathering world ranks over the group itself). A shape whose product
// is not the job's size is a UserError naming --dp/--sp/--tp.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "core/error.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_error.h"
#include "parallel/process_grid.h"
#include "tests/mpi/mpi_test_util.h"

namespace par {
namespace {

using testing::expect_all_ranks_ok;
using testing::Failures;

std::string show(const GridShape& s) { return cat("(", s.dp, ",", s.sp, ",", s.tp, ")"); }

// The group's members as grid world ranks, in group rank order.
std::vector<int64_t> members(Communicator& group, int world_rank) {
  std::vector<int64_t> out(size_t(group.size()));
  int64_t me = world_rank;
  group.all_gather(&me, out.data(), 1, DataType::kInt64);
  return out;
}

void check_group(Communicator& group, const ProcessGrid& g, const char* name, int want_rank,
                 const std::vector<int64_t>& want_members, Failures& f) {
  const std::string where = cat(show(g.shape()), " ", g.describe(), " group ", name);
  f.check(group.size() == int(want_members.size()), where, ": size ", group.size(), ", want ",
          want_members.size());
  f.check(group.rank() == want_rank, where, ": rank ", group.rank(), ", want ", want_rank);
  if (group.size() != int(want_members.size())) return;
  std::vector<int64_t> got = members(group, g.world_rank());
  if (got != want_members) {
    std::string a, b;
    for (auto x : got) a += cat(" ", x);
    for (auto x : want_members) b += cat(" ", x);
    f.fail(where, ": members", a, ", want", b);
  }
  // And the group computes: the sum of its members' world ranks.
  int64_t sum = 0;
  for (auto x : want_members) sum += x;
  f.check(group.all_reduce_value<int64_t>(g.world_rank()) == sum, where, ": all_reduce");
}

void check_grid(const ProcessGrid& g, MPI_Comm block, Failures& f) {
  const GridShape s = g.shape();
  const int w = g.world_rank();
  const std::string where = cat(show(s), " ", g.describe());
  int block_rank = 0, block_size = 0;
  MPI_Comm_rank(block, &block_rank);
  MPI_Comm_size(block, &block_size);
  f.check(w == block_rank && g.world_size() == block_size, where, ": world rank/size");
  f.check(s.rank_of(g.dp_rank(), g.sp_rank(), g.tp_rank()) == w, where,
          ": coordinates do not give back the world rank");
  f.check(w == (g.dp_rank() * s.sp + g.sp_rank()) * s.tp + g.tp_rank(), where,
          ": rank order is not tp fastest, then sp, then dp");
  f.check(g.host() == host_name(), where, ": host ", g.host());

  std::vector<int64_t> world, dp, sp, tp, dp_sp;
  for (int q = 0; q < g.world_size(); ++q) world.push_back(q);
  for (int d = 0; d < s.dp; ++d) dp.push_back(s.rank_of(d, g.sp_rank(), g.tp_rank()));
  for (int q = 0; q < s.sp; ++q) sp.push_back(s.rank_of(g.dp_rank(), q, g.tp_rank()));
  for (int t = 0; t < s.tp; ++t) tp.push_back(s.rank_of(g.dp_rank(), g.sp_rank(), t));
  for (int d = 0; d < s.dp; ++d) {
    for (int q = 0; q < s.sp; ++q) dp_sp.push_back(s.rank_of(d, q, g.tp_rank()));
  }
  check_group(*g.world(), g, "world", w, world, f);
  check_group(*g.dp(), g, "dp", g.dp_rank(), dp, f);
  check_group(*g.sp(), g, "sp", g.sp_rank(), sp, f);
  check_group(*g.tp(), g, "tp", g.tp_rank(), tp, f);
  check_group(*g.dp_sp(), g, "dp_sp", g.dp_rank() * s.sp + g.sp_rank(), dp_sp, f);

  // local_rank: how many ranks before this one share its host (hosts gathered as bytes).
  constexpr int64_t kName = 64;
  std::vector<uint8_t> name(kName, 0), names(size_t(kName * g.world_size()));
  std::memcpy(name.data(), g.host().data(), std::min<size_t>(g.host().size(), kName - 1));
  g.world()->all_gather(name.data(), names.data(), kName, DataType::kUInt8);
  int before = 0;
  for (int q = 0; q < w; ++q) {
    before += std::memcmp(names.data() + q * kName, name.data(), kName) == 0;
  }
  f.check(g.local_rank() == before, where, ": local_rank ", g.local_rank(), ", want ", before);
}

TEST(ProcessGrid, GroupsOfEveryShapeThatFits) {
  const int n = testing::world_size(), r = testing::world_rank();
  const std::vector<GridShape> shapes = {{1, 1, 1}, {2, 1, 1}, {1, 2, 1}, {1, 1, 2},
                                         {2, 2, 1}, {1, 2, 2}, {2, 1, 2}, {4, 1, 1},
                                         {1, 4, 1}, {1, 1, 4}, {2, 2, 2}};
  std::string tested;
  for (const GridShape& s : shapes) {
    const int p = int(s.size());
    if (p > n || n % p != 0) continue;
    // Consecutive blocks of p ranks, each its own grid.
    MPI_Comm block = MPI_COMM_NULL;
    check_mpi(MPI_Comm_split(MPI_COMM_WORLD, r / p, r, &block), "MPI_Comm_split");
    Failures f;
    {
      ProcessGrid g(block, s);
      check_grid(g, block, f);
    }
    MPI_Comm_free(&block);
    expect_all_ranks_ok(f, cat("grid ", show(s)));
    tested += cat(" ", show(s));
  }
  if (r == 0) std::cout << "[ shapes   ] " << n << " ranks:" << tested << "\n";
}

TEST(ProcessGrid, WrongProductIsAUserError) {
  const int n = testing::world_size();
  Failures f;
  struct Case {
    GridShape shape;
    std::vector<std::string> words;
  };
  const std::vector<Case> cases = {
      {{2, 2, n}, {cat("--dp 2 x --sp 2 x --tp ", n, " = ", 4 * n, " ranks"),
                   cat("but the job has ", n)}},
      {{n + 1, 1, 1}, {cat("--dp ", n + 1, " x --sp 1 x --tp 1 = ", n + 1, " ranks"),
                       cat("the job has ", n), cat("mpirun -np ", n + 1)}},
      {{n, 0, 1}, {"--sp 0", "at least 1"}}};
  for (const Case& c : cases) {
    try {
      ProcessGrid g(MPI_COMM_WORLD, c.shape);
      f.fail(show(c.shape), ": no error");
    } catch (const UserError& e) {
      const std::string m = e.what();
      for (const auto& w : c.words) {
        f.check(m.find(w) != std::string::npos, show(c.shape), ": '", w, "' not in: ", m);
      }
    }
  }
  expect_all_ranks_ok(f, "wrong grid shapes");
}

TEST(ProcessGrid, SingleProcessGridNeedsNoMpi) {
  ProcessGrid g;
  Failures f;
  f.check(g.world_size() == 1 && g.world_rank() == 0 && g.local_rank() == 0, "ranks");
  f.check(g.shape().dp == 1 && g.shape().sp == 1 && g.shape().tp == 1, "shape");
  for (Communicator* c : {&*g.world(), &*g.dp(), &*g.sp(), &*g.tp(), &*g.dp_sp()}) {
    f.check(c->size() == 1 && c->rank() == 0, "group size");
    float x[3] = {1, 2, 3}, y[3] = {};
    c->all_reduce(x, y, 3, DataType::kFloat32, ReduceOp::kSum);
    f.check(y[0] == 1 && y[1] == 2 && y[2] == 3, "all_reduce copies");
  }
  expect_all_ranks_ok(f, "single-process grid");
}

}  // namespace
}  // namespace par
