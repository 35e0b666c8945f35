// Scratch memory of the CPU kernels: buffers a kernel keeps from call to call (so that a
// training step allocates nothing), one per kernel family ("slot") and OpenMP thread,
// grown when a call needs more. A Workspace belongs to the backend object (CpuOps) and
// allocates as CpuOps::allocate does, so the backend can say what it holds
// (CpuOps::scratch_bytes) and the memory plan (launch/memory_plan.cpp) counts the same
// bytes: each kernel lays out its buffers with one function that both sizes them for the
// plan and carves them for the call (core/arena.h).
//
// A kernel calls prepare(threads) before its parallel region; inside it, each thread asks
// only for its own buffers. One Workspace serves one host thread at a time, as its CpuOps.
// Header-only, so that bench/attention_ab.sh can compile a kernel file alone.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "core/arena.h"

namespace par::cpu {

// Allocations of 8 MiB and more (the activation arena, parameters, gradients, optimizer
// state) ask for transparent huge pages. Attention reads each head's keys as 128-byte
// pieces of rows 1 KiB apart, so with 4 KiB pages every fourth row costs a TLB miss; where
// THP is set to "madvise" (Debian's default) no page is huge unless asked for.
inline void* host_allocate(size_t bytes) {
  constexpr size_t kHugePage = size_t(2) << 20, kHugeMin = 4 * kHugePage;
  const size_t align = bytes >= kHugeMin ? kHugePage : 64;
  const size_t rounded = (std::max<size_t>(bytes, 1) + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (!p) throw std::bad_alloc();
  // Advice only: where THP is off the pages stay small, which is correct, only slower.
  if (align == kHugePage) madvise(p, rounded, MADV_HUGEPAGE);
  return p;
}

inline void host_free(void* p) { std::free(p); }

// The kernel families: their buffers never share memory.
enum class ScratchSlot : int {
  kKeptKeys,      // attention: the kept keys of each example (the calling thread)
  kAttention,     // attention: per-thread key blocks, scores and accumulators
  kTallLinear,    // tall linear layers: every thread's partial weight gradients (caller)
  kPairedLinear,  // paired linear backward: per-thread bias-gradient sums
  kLayerNorm,     // LayerNorm backward: per-thread block sums
  kWidened,       // bfloat16 operands widened to T (cpu_ops_bf16.cpp; the calling thread)
  kTokenParts,    // token-table attention: its work items' partial softmaxes (the caller)
  kCount
};

class Workspace {
 public:
  Workspace() = default;
  ~Workspace() {
    for (auto& slots : buffers_)
      for (Buffer& b : slots) host_free(b.p);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // Room for threads [0, threads): outside any parallel region, before the kernel's.
  void prepare(int threads) {
    if (int(buffers_.size()) < threads) buffers_.resize(size_t(threads));
  }

  // Thread `thread`'s buffer of `slot`, at least `bytes` long, 64-byte aligned. What a
  // kernel wrote there before may be gone; a grown buffer starts as zeros.
  char* get(ScratchSlot slot, int thread, double bytes) {
    Buffer& b = buffers_[size_t(thread)][size_t(slot)];
    if (double(b.bytes) < bytes) {
      host_free(b.p);
      b.p = nullptr;
      held_ -= int64_t(b.bytes);
      b.bytes = 0;
      const size_t want = size_t(bytes);
      b.p = static_cast<char*>(host_allocate(want));
      std::memset(b.p, 0, want);
      b.bytes = want;
      held_ += int64_t(want);
    }
    return b.p;
  }

  // Carves thread `thread`'s buffer of `slot` with layout(Carver&), which takes its pieces
  // in order; the same function sized it first.
  template <typename Layout>
  void carve(ScratchSlot slot, int thread, Layout&& layout) {
    Carver sizing;
    layout(sizing);
    Carver real{get(slot, thread, sizing.used), 0};
    layout(real);
  }

  // Bytes held now, over all slots and threads.
  int64_t bytes() const { return held_.load(); }

 private:
  struct Buffer {
    char* p = nullptr;
    size_t bytes = 0;
  };
  std::vector<std::array<Buffer, size_t(ScratchSlot::kCount)>> buffers_;
  std::atomic<int64_t> held_{0};
};

// The bytes a layout takes (its sizing pass): what a kernel asks of its slot, for the plan.
template <typename Layout>
double layout_bytes(Layout&& layout) {
  Carver sizing;
  layout(sizing);
  return sizing.used;
}

}  // namespace par::cpu
