// Keyed permutation of window ids (see sample_order.h): a 4-round balanced Feistel network
// on the smallest even power of two >= W, restricted to [0, W) by cycle-walking. The domain
// is under 4W, so a walk takes fewer than 4 steps on average.
#include "data/sample_order.h"

#include "core/error.h"

namespace par {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

constexpr int kRounds = 4;

struct Feistel {
  int half_bits;
  uint64_t mask;
  uint64_t keys[kRounds];

  uint64_t operator()(uint64_t x) const {
    uint64_t l = x >> half_bits, r = x & mask;
    for (int i = 0; i < kRounds; ++i) {
      const uint64_t f = splitmix64(keys[i] ^ r) & mask;
      const uint64_t nl = r;
      r = l ^ f;
      l = nl;
    }
    return (l << half_bits) | r;
  }
};

}  // namespace

int64_t window_of_sample(uint64_t seed, int64_t sample, int64_t num_windows) {
  PAR_ASSERT(sample >= 0 && num_windows >= 1 && num_windows <= (int64_t{1} << 62),
             "sample ", sample, " of ", num_windows, " windows");
  if (num_windows == 1) return 0;
  const uint64_t w = static_cast<uint64_t>(num_windows);
  const uint64_t epoch = static_cast<uint64_t>(sample) / w;
  const uint64_t index = static_cast<uint64_t>(sample) % w;

  Feistel p{};
  p.half_bits = 1;
  while ((uint64_t{1} << (2 * p.half_bits)) < w) ++p.half_bits;
  p.mask = (uint64_t{1} << p.half_bits) - 1;
  // Independent-looking keys per (seed, epoch, round): each epoch is a fresh shuffle.
  const uint64_t base = splitmix64(seed ^ splitmix64(epoch ^ 0x6A09E667F3BCC908ull));
  for (int i = 0; i < kRounds; ++i) p.keys[i] = splitmix64(base + static_cast<uint64_t>(i));

  uint64_t x = index;
  do x = p(x);
  while (x >= w);
  return static_cast<int64_t>(x);
}

}  // namespace par
