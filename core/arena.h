// Carving one allocation into typed pieces: the activation arena of PerceiverAR and the
// work space of Decoder are each sized by a first pass over their buffers without memory,
// then carved by a second pass over the same code with it, so the size and the layout
// cannot disagree.
#pragma once

#include <cmath>
#include <cstddef>

namespace par {

// Pieces start 64-byte aligned. Without a base it only sizes. Sizes are counted in floating
// point (exact below 2^53 bytes), so that planning a config far too large to allocate gives
// a huge size, not a wrapped-around one (PerceiverAR::memory plans with it).
struct Carver {
  char* base = nullptr;
  double used = 0;  // bytes
  template <typename U>
  U* take(double n) {
    const double off = std::ceil(used / 64) * 64;
    used = off + n * double(sizeof(U));
    return base ? reinterpret_cast<U*>(base + size_t(off)) : nullptr;
  }
};

}  // namespace par
