// MpiCommunicator collectives, checked against results known exactly: integer-valued inputs
// (exact in float and double whatever the summation order) that depend on the rank and the
// element, every DataType, sum and max, in place and out of place, counts that do not divide
// by the group size, counts above 2^16, and pieces forced small to exercise the splitting
// that counts above 2^31 need. Floating-point all-reduce of random data must give the same
// bits on every rank, every run, and equal the documented rank-order fold.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_error.h"
#include "tests/mpi/mpi_test_util.h"

namespace par {
namespace {

using testing::expect_all_ranks_ok;
using testing::Failures;

// The groups every test runs on: the whole world, the world in reverse order (group rank
// differs from world rank), and the even/odd halves (size 1 groups with 2 ranks).
struct Group {
  std::string name;
  std::unique_ptr<MpiCommunicator> comm;
};

std::vector<Group> make_groups() {
  MpiCommunicator world(MPI_COMM_WORLD);
  const int r = world.rank();
  std::vector<Group> out;
  out.push_back({"world", std::make_unique<MpiCommunicator>(MPI_COMM_WORLD)});
  out.push_back({"reversed", world.split(0, world.size() - 1 - r)});
  out.push_back({"halves", world.split(r % 2, r)});
  return out;
}

// How the work is cut: the defaults, tiny pieces with the all-to-all path for every
// floating-point all-reduce, and one piece with the gather-everything path.
struct Tuning {
  std::string name;
  int64_t chunk_bytes;
  int64_t gather_all_bytes;
};

const std::vector<Tuning>& tunings() {
  static const std::vector<Tuning> t = {{"default", int64_t(64) << 20, int64_t(64) << 10},
                                        {"small-pieces", int64_t(32) << 10, 0},
                                        {"gather-all", int64_t(64) << 20, int64_t(1) << 40}};
  return t;
}

void apply(MpiCommunicator& comm, const Tuning& t) {
  comm.set_chunk_bytes(t.chunk_bytes);
  comm.set_gather_all_bytes(t.gather_all_bytes);
}

const char* op_name(ReduceOp op) { return op == ReduceOp::kSum ? "sum" : "max"; }

template <typename T>
const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  else if constexpr (std::is_same_v<T, double>) return "float64";
  else if constexpr (std::is_same_v<T, int64_t>) return "int64";
  else return "uint8";
}

// Rank r's input at element i. Floats are small integers (exact sums), int64 values need
// more than 32 bits, uint8 sums wrap.
template <typename T>
T pattern(int r, int64_t i) {
  if constexpr (std::is_floating_point_v<T>) {
    return T((i * 7 + int64_t(r) * 13) % 201 - 100);
  } else if constexpr (std::is_same_v<T, int64_t>) {
    return (int64_t(r) + 1) * (int64_t(1) << 40) - i * 3 + int64_t(r) * (i % 5);
  } else {
    return uint8_t((i * 7 + int64_t(r) * 31 + 5) & 0xff);
  }
}

template <typename T>
T reduced(int group_size, int64_t i, ReduceOp op) {
  T acc = pattern<T>(0, i);
  for (int q = 1; q < group_size; ++q) {
    T x = pattern<T>(q, i);
    acc = op == ReduceOp::kSum ? T(acc + x) : (x > acc ? x : acc);
  }
  return acc;
}

template <typename T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <typename T>
std::string show(T x) {
  if constexpr (std::is_same_v<T, uint8_t>) return std::to_string(int(x));
  else return cat(x);
}

const std::vector<int64_t> kCounts = {0, 1, 3, 5, 1001, 70001};

template <typename T>
void check_all_reduce(MpiCommunicator& comm, const std::string& where, Failures& f) {
  const int p = comm.size(), r = comm.rank();
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
    for (int64_t n : kCounts) {
      for (bool in_place : {false, true}) {
        std::vector<T> send(static_cast<size_t>(n)), recv(size_t(n), T(77));
        for (int64_t i = 0; i < n; ++i) send[size_t(i)] = pattern<T>(r, i);
        const std::vector<T> original = send;
        T* out = in_place ? send.data() : recv.data();
        comm.all_reduce(send.data(), out, n, data_type_of<T>(), op);
        int64_t bad = 0;
        for (int64_t i = 0; i < n; ++i) {
          T want = reduced<T>(p, i, op);
          if (!same_bits(out[i], want) && bad++ == 0) {
            f.fail(where, " all_reduce ", type_name<T>(), " ", op_name(op), " n=", n,
                   in_place ? " in place" : "", ": element ", i, " is ", show(out[i]),
                   ", want ", show(want));
          }
        }
        if (!in_place && send != original) {
          f.fail(where, " all_reduce ", type_name<T>(), " n=", n, " modified its input");
        }
      }
    }
  }
}

TEST(MpiCollectives, AllReduceSumAndMaxExact) {
  for (auto& g : make_groups()) {
    for (const auto& t : tunings()) {
      apply(*g.comm, t);
      Failures f;
      const std::string where = cat(g.name, "/", t.name);
      check_all_reduce<float>(*g.comm, where, f);
      check_all_reduce<double>(*g.comm, where, f);
      check_all_reduce<int64_t>(*g.comm, where, f);
      check_all_reduce<uint8_t>(*g.comm, where, f);
      expect_all_ranks_ok(f, cat("all_reduce on ", where));
    }
  }
}

TEST(MpiCollectives, AllReduceValueHelper) {
  MpiCommunicator world(MPI_COMM_WORLD);
  Failures f;
  const int p = world.size(), r = world.rank();
  f.check(world.all_reduce_value<int64_t>(r + 1) == int64_t(p) * (p + 1) / 2, "int64 sum");
  f.check(world.all_reduce_value<double>(r, ReduceOp::kMax) == p - 1, "double max");
  f.check(world.all_reduce_value<float>(0.5f) == 0.5f * p, "float sum");
  expect_all_ranks_ok(f, "all_reduce_value");
}

// Three forms: out of place; recv == send (result at the start); recv == send + rank * n.
template <typename T>
void check_reduce_scatter(MpiCommunicator& comm, const std::string& where, Failures& f) {
  const int p = comm.size(), r = comm.rank();
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
    for (int64_t n : {int64_t(0), int64_t(1), int64_t(3), int64_t(1001), int64_t(17000)}) {
      for (int form = 0; form < 3; ++form) {
        std::vector<T> send(size_t(n * p)), recv(size_t(n), T(77));
        for (int64_t i = 0; i < n * p; ++i) send[size_t(i)] = pattern<T>(r, i);
        T* out = form == 0 ? recv.data() : form == 1 ? send.data() : send.data() + r * n;
        comm.reduce_scatter(send.data(), out, n, data_type_of<T>(), op);
        int64_t bad = 0;
        for (int64_t i = 0; i < n; ++i) {
          T want = reduced<T>(p, r * n + i, op);
          if (!same_bits(out[i], want) && bad++ == 0) {
            f.fail(where, " reduce_scatter ", type_name<T>(), " ", op_name(op), " n=", n,
                   " form ", form, ": element ", i, " is ", show(out[i]), ", want ",
                   show(want));
          }
        }
      }
    }
  }
}

TEST(MpiCollectives, ReduceScatterExact) {
  for (auto& g : make_groups()) {
    for (const auto& t : tunings()) {
      apply(*g.comm, t);
      Failures f;
      const std::string where = cat(g.name, "/", t.name);
      check_reduce_scatter<float>(*g.comm, where, f);
      check_reduce_scatter<double>(*g.comm, where, f);
      check_reduce_scatter<int64_t>(*g.comm, where, f);
      check_reduce_scatter<uint8_t>(*g.comm, where, f);
      expect_all_ranks_ok(f, cat("reduce_scatter on ", where));
    }
  }
}

// Three forms: out of place; send == recv (input at the start); send == recv + rank * n.
template <typename T>
void check_all_gather(MpiCommunicator& comm, const std::string& where, Failures& f) {
  const int p = comm.size(), r = comm.rank();
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(3), int64_t(1001), int64_t(17000)}) {
    for (int form = 0; form < 3; ++form) {
      std::vector<T> send(static_cast<size_t>(n)), recv(size_t(n * p), T(77));
      for (int64_t i = 0; i < n; ++i) send[size_t(i)] = pattern<T>(r, i);
      const T* in = send.data();
      if (form > 0) {
        T* at = form == 1 ? recv.data() : recv.data() + r * n;
        std::copy(send.begin(), send.end(), at);
        in = at;
      }
      comm.all_gather(in, recv.data(), n, data_type_of<T>());
      int64_t bad = 0;
      for (int q = 0; q < p; ++q) {
        for (int64_t i = 0; i < n; ++i) {
          T got = recv[size_t(q * n + i)], want = pattern<T>(q, i);
          if (!same_bits(got, want) && bad++ == 0) {
            f.fail(where, " all_gather ", type_name<T>(), " n=", n, " form ", form,
                   ": rank ", q, "'s element ", i, " is ", show(got), ", want ", show(want));
          }
        }
      }
    }
  }
}

TEST(MpiCollectives, AllGatherExact) {
  for (auto& g : make_groups()) {
    for (const auto& t : tunings()) {
      apply(*g.comm, t);
      Failures f;
      const std::string where = cat(g.name, "/", t.name);
      check_all_gather<float>(*g.comm, where, f);
      check_all_gather<double>(*g.comm, where, f);
      check_all_gather<int64_t>(*g.comm, where, f);
      check_all_gather<uint8_t>(*g.comm, where, f);
      expect_all_ranks_ok(f, cat("all_gather on ", where));
    }
  }
}

template <typename T>
void check_broadcast(MpiCommunicator& comm, const std::string& where, Failures& f) {
  const int p = comm.size(), r = comm.rank();
  // The last rank and a middle one: never only rank 0, which hides root mix-ups.
  for (int root : {p - 1, p / 2}) {
    for (int64_t n : {int64_t(0), int64_t(1), int64_t(1001), int64_t(70001)}) {
      std::vector<T> buf(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) buf[size_t(i)] = pattern<T>(r == root ? 99 : r, i + 1);
      comm.broadcast(buf.data(), n, data_type_of<T>(), root);
      int64_t bad = 0;
      for (int64_t i = 0; i < n; ++i) {
        T want = pattern<T>(99, i + 1);
        if (!same_bits(buf[size_t(i)], want) && bad++ == 0) {
          f.fail(where, " broadcast ", type_name<T>(), " n=", n, " root ", root, ": element ",
                 i, " is ", show(buf[size_t(i)]), ", want ", show(want));
        }
      }
    }
  }
}

TEST(MpiCollectives, BroadcastFromNonZeroRoot) {
  for (auto& g : make_groups()) {
    for (const auto& t : tunings()) {
      apply(*g.comm, t);
      Failures f;
      const std::string where = cat(g.name, "/", t.name);
      check_broadcast<float>(*g.comm, where, f);
      check_broadcast<double>(*g.comm, where, f);
      check_broadcast<int64_t>(*g.comm, where, f);
      check_broadcast<uint8_t>(*g.comm, where, f);
      expect_all_ranks_ok(f, cat("broadcast on ", where));
    }
  }
}

TEST(MpiCollectives, BarrierWaitsForTheLastRank) {
  MpiCommunicator world(MPI_COMM_WORLD);
  world.barrier();
  // The last rank arrives 300 ms late; nobody may leave the barrier before it arrives.
  const double late = 0.3;
  const bool last = world.rank() == world.size() - 1;
  const double t0 = MPI_Wtime();
  if (last) std::this_thread::sleep_for(std::chrono::duration<double>(late));
  world.barrier();
  const double waited = MPI_Wtime() - t0;
  Failures f;
  if (world.size() > 1) {
    f.check(waited >= late * 0.9, "left the barrier after ", waited, " s, before the last rank ",
            "arrived (", late, " s)");
  }
  expect_all_ranks_ok(f, "barrier");
}

// Random (inexact) floating-point data: the all-reduce must equal the rank-order fold
// (((x0 op x1) op x2) ...) bit for bit on every rank, for every way of cutting the work, and
// repeat with the same bits.
template <typename T>
void check_bitwise(MpiCommunicator& comm, const std::string& where, Failures& f) {
  const int p = comm.size(), r = comm.rank();
  auto input = [](int rank, int64_t n, uint32_t seed) {
    std::mt19937_64 gen(seed * 1000003u + uint32_t(rank));
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    std::vector<T> v(static_cast<size_t>(n));
    // Mixed magnitudes make the order of additions visible in the last bits.
    for (auto& x : v) x = T(u(gen) * std::pow(10.0, double(int(u(gen) * 6))));
    return v;
  };
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
    for (int64_t n : {int64_t(3), int64_t(1000), int64_t(70001)}) {
      const uint32_t seed = uint32_t(n) + (op == ReduceOp::kSum ? 0u : 7u);
      std::vector<T> want = input(0, n, seed);
      for (int q = 1; q < p; ++q) {
        std::vector<T> x = input(q, n, seed);
        for (int64_t i = 0; i < n; ++i) {
          T& a = want[size_t(i)];
          T b = x[size_t(i)];
          a = op == ReduceOp::kSum ? T(a + b) : (b > a || b != b) ? b : a;
        }
      }
      const std::vector<T> mine = input(r, n, seed);
      std::vector<T> first(static_cast<size_t>(n)), second = mine;
      comm.all_reduce(mine.data(), first.data(), n, data_type_of<T>(), op);
      comm.all_reduce(second.data(), second.data(), n, data_type_of<T>(), op);
      const std::string what =
          cat(where, " ", type_name<T>(), " ", op_name(op), " n=", n, ": ");
      f.check(std::memcmp(first.data(), want.data(), size_t(n) * sizeof(T)) == 0, what,
              "differs from the rank-order fold");
      f.check(std::memcmp(first.data(), second.data(), size_t(n) * sizeof(T)) == 0, what,
              "a second run gave other bits");
      // Every rank of the group holds the same bits (compared as bytes, via all_gather).
      std::vector<uint8_t> all(size_t(n) * sizeof(T) * size_t(p));
      comm.all_gather(first.data(), all.data(), n * int64_t(sizeof(T)), DataType::kUInt8);
      for (int q = 0; q < p; ++q) {
        f.check(std::memcmp(all.data() + size_t(q) * size_t(n) * sizeof(T), first.data(),
                            size_t(n) * sizeof(T)) == 0,
                what, "group rank ", q, " has other bits than group rank ", r);
      }
    }
  }
}

TEST(MpiCollectives, FloatAllReduceIsBitwiseIdenticalAndDeterministic) {
  for (auto& g : make_groups()) {
    for (const auto& t : tunings()) {
      apply(*g.comm, t);
      Failures f;
      const std::string where = cat(g.name, "/", t.name);
      check_bitwise<float>(*g.comm, where, f);
      check_bitwise<double>(*g.comm, where, f);
      expect_all_ranks_ok(f, cat("bitwise all_reduce on ", where));
    }
  }
}

TEST(MpiCollectives, ErrorsNameTheCallTheRankAndTheHost) {
  Failures f;
  const std::string where = cat("rank ", testing::world_rank(), " on host ", host_name());
  try {
    check_mpi(MPI_ERR_COUNT, "MPI_Fake");
    f.fail("check_mpi did not throw");
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    f.check(m.find("MPI_Fake failed on " + where) != std::string::npos, "message: ", m);
    f.check(m.find("MPI_ERR_COUNT") != std::string::npos, "no MPI error string in: ", m);
  }
  // A real failing call: MPI returns the error (MPI_ERRORS_RETURN) instead of aborting.
  try {
    MpiCommunicator bad(MPI_COMM_NULL);
    f.fail("MpiCommunicator(MPI_COMM_NULL) did not throw");
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    f.check(m.find("MPI_Comm_dup failed on " + where) != std::string::npos, "message: ", m);
  }
  expect_all_ranks_ok(f, "error messages");
}

TEST(MpiCollectives, SplitGroupsHaveTheRightMembers) {
  MpiCommunicator world(MPI_COMM_WORLD);
  const int w = world.rank();
  // Ranks 0, 3, 6, ... with color 0 and so on; keys reverse the order inside each group.
  auto g = world.split(w % 3, -w);
  std::vector<int64_t> members(size_t(g->size()));
  int64_t me = w;
  g->all_gather(&me, members.data(), 1, DataType::kInt64);
  std::vector<int64_t> want;
  for (int q = world.size() - 1; q >= 0; --q) {
    if (q % 3 == w % 3) want.push_back(q);
  }
  Failures f;
  f.check(members == want, "split(", w % 3, ") members differ");
  expect_all_ranks_ok(f, "split");
}

}  // namespace
}  // namespace par
