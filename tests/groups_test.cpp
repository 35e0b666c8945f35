// Groups typed by memory (core/groups.h) and the process grid's one description of them
// (parallel/process_grid.h): host and device groups do not mix, an empty group is this
// rank alone, and the grid hands the model the backend's groups where a backend attached
// them and the host ones otherwise.
#include <gtest/gtest.h>

#include <memory>
#include <type_traits>

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

}  // namespace
}  // namespace par
