// The plugin's guard against a build from another par (kernels/cuda/backend_plugin.h):
// the hash covers every operation's signature, so adding, removing or changing one (what
// would misroute Ops<float>'s virtual calls across the boundary) changes it.
#include <gtest/gtest.h>

#include <string>

#include "kernels/cuda/backend_plugin.h"

namespace par {
namespace {

#define PAR_COUNT_OP(ret, name, params, args) +1
constexpr int kOps = 0 PAR_OPS_METHODS(PAR_COUNT_OP);
#undef PAR_COUNT_OP

TEST(PluginInterface, TheHashCoversEveryOperationsSignature) {
  const std::string s(cuda_plugin::kOpsSignatures);
  int entries = 0;
  for (char c : s) entries += c == ';';
  EXPECT_EQ(entries, kOps);
  EXPECT_NE(s.find("void synchronize();"), std::string::npos) << s.substr(0, 400);
  EXPECT_NE(s.find("void* allocate(size_t bytes);"), std::string::npos) << s.substr(0, 400);
  // The hash is of the whole string: one character more or less changes it.
  constexpr uint64_t h = cuda_plugin::ops_interface_hash();
  static_assert(h != 0);
  auto fnv = [](const std::string& t) {
    uint64_t x = 14695981039346656037ull;
    for (char c : t) x = (x ^ uint64_t(uint8_t(c))) * 1099511628211ull;
    return x;
  };
  EXPECT_EQ(fnv(s), h);
  EXPECT_NE(fnv(s + " "), h);
  EXPECT_NE(fnv(s.substr(0, s.size() - 1)), h);
}

}  // namespace
}  // namespace par
