// Groups typed by memory (core/groups.h) and the process grid's one description of them
// (parallel/process_grid.h): host and device groups do not mix, an empty group is this
// rank alone, and the grid hands the model the backend's groups where a backend attached
// them and the host ones otherwise.
#include <gtest/gtest.h>

#include <memory>
#include <type_traits>
#include <vector>

#include "core/counting_communicator.h"
#include "core/groups.h"
#include "parallel/process_grid.h"

namespace par {
namespace {

static_assert(!std::is_convertible_v<HostGroup, DeviceGroup>);
static_assert(!std::is_convertible_v<DeviceGroup, HostGroup>);
static_assert(!std::is_constructible_v<DeviceGroup, HostGroup>);
static_assert(!std::is_constructible_v<HostGroup, DeviceGroup>);
// Saying which memory a communicator carries is explicit.
static_assert(!std::is_convertible_v<Communicator&, DeviceGroup>);
static_assert(std::is_constructible_v<DeviceGroup, Communicator&>);

TEST(Groups, AnEmptyGroupIsThisRankAlone) {
  const DeviceGroup g;
  EXPECT_EQ(g.rank(), 0);
  EXPECT_EQ(g.size(), 1);
  float x[2] = {1, 2}, y[2] = {};
  g->all_reduce(x, y, 2, DataType::kFloat32, ReduceOp::kSum);
  EXPECT_EQ(y[0], 1);
  EXPECT_EQ(y[1], 2);
}

TEST(Groups, DeviceGroupsAreTheHostOnesUnlessABackendAttachedItsOwn) {
  using G = ProcessGrid::GroupName;
  ProcessGrid grid;
  for (const G g : ProcessGrid::kGroupNames)
    EXPECT_EQ(&*grid.device_group(g), &*grid.host_group(g)) << ProcessGrid::name(g);
  auto own = std::make_unique<CountingCommunicator>(std::make_unique<SelfCommunicator>());
  Communicator* attached = own.get();
  grid.attach_device_group(G::kTp, std::move(own));
  EXPECT_EQ(&*grid.device_group(G::kTp), attached);
  EXPECT_NE(&*grid.host_group(G::kTp), attached);
  EXPECT_EQ(&*grid.device_group(G::kSp), &*grid.host_group(G::kSp));
  const ModelGroups m = grid.model_groups();
  EXPECT_EQ(&*m.tp, attached);
  EXPECT_EQ(&*m.sp, &*grid.device_group(G::kSp));
  EXPECT_EQ(&*m.sp_host, &*grid.sp());
}

// par bench counts a GPU run's traffic where it goes: the attached groups are decorated,
// each with its name, and the model's groups are then the decorated ones.
TEST(Groups, AttachedDeviceGroupsCanBeDecorated) {
  using G = ProcessGrid::GroupName;
  ProcessGrid grid;
  grid.attach_device_group(G::kSp, std::make_unique<SelfCommunicator>());
  grid.attach_device_group(G::kDpSp, std::make_unique<SelfCommunicator>());
  std::vector<G> seen;
  CountingCommunicator* sp = nullptr;
  grid.decorate_device([&](G g, std::unique_ptr<Communicator> c) -> std::unique_ptr<Communicator> {
    seen.push_back(g);
    auto counting = std::make_unique<CountingCommunicator>(std::move(c));
    if (g == G::kSp) sp = counting.get();
    return counting;
  });
  EXPECT_EQ(seen, (std::vector<G>{G::kSp, G::kDpSp}));
  ASSERT_NE(sp, nullptr);
  EXPECT_EQ(&*grid.model_groups().sp, sp);
  EXPECT_EQ(&*grid.device_group(G::kTp), &*grid.host_group(G::kTp)) << "not attached: not decorated";
}

}  // namespace
}  // namespace par
