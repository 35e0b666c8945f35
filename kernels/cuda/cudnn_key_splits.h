// Into how many chunks of keys the cuDNN forward of a long prefix is split, each chunk one
// element of a single call's batch, the chunks' results merged in log-sum-exp form.
//
// Why: a flash-attention forward gives each (example, head, tile of queries) one thread
// block, which walks every key. The cross-attention has few queries over very many keys:
// gpu-100m-131k's is 1 example x 16 heads x 8 tiles of 128 queries = 128 blocks over
// 130,049 keys each, one block for each of an H100's 132 SMs where the kernels are made to
// run two or more per SM, each bound by its long walk. Splitting the keys (as
// flash-decoding does for one query, and FlashAttention's num_splits for few) makes S times
// as many blocks with walks S times shorter. Where the blocks already fill the GPU it
// changes nothing but a small merge, so the automatic choice stops at three blocks per SM.
//
// The chunks are read where the keys lie: chunk c of example b is batch element b*S + c
// at rows [c*C, (c+1)*C) of the example's nk rows, so the batch's stride is C rows, which
// needs C = nk / S exactly (bfloat16 keys read in place, none masked). Each chunk's key
// count (its padding mask) stops at the prefix's end; no chunk may be empty. Queries,
// outputs and statistics are the chunks' own (the queries repeated S times).
// Header-only, so that the CPU tests check it.
#pragma once

#include <cstdint>

namespace par::cuda {

struct KeySplit {
  int64_t splits = 1;  // chunks per example (1: not split)
  int64_t chunk = 0;   // rows per chunk, nk / splits
};

// The most chunks the automatic choice makes, and the fewest keys it leaves a chunk.
constexpr int64_t kMaxKeySplits = 16;
constexpr int64_t kMinChunkKeys = 4096;
// The automatic choice's target: thread blocks per SM, counting tiles of 128 queries.
constexpr int64_t kKeySplitBlocksPerSm = 3;

// The most SMs the automatic choice counts (a card with more is taken to have these), so
// that the memory plan, made where no GPU may be seen, bounds the chunks it makes.
constexpr int64_t kPlanSmCount = 160;

// The split of a forward of `batch` examples x `heads` heads, `rows` queries over the first
// `keys` of an example's `nk` rows. requested: 0 chooses (doubling the chunks while the
// blocks fall short of kKeySplitBlocksPerSm per SM of sm_count, at most kPlanSmCount, and
// chunks keep kMinChunkKeys), 1 never splits, S > 1 asks for S chunks (at most
// kMaxKeySplits). A count that does not divide nk, or that would leave a chunk empty, is
// halved (a request too) until it does.
inline KeySplit forward_key_split(int64_t requested, int64_t batch, int64_t heads, int64_t rows,
                                  int64_t nk, int64_t keys, int64_t sm_count) {
  int64_t s = requested < kMaxKeySplits ? requested : kMaxKeySplits;
  if (s <= 0) {
    const int64_t blocks = batch * heads * ((rows + 127) / 128);
    if (sm_count > kPlanSmCount) sm_count = kPlanSmCount;
    s = 1;
    while (s < kMaxKeySplits && blocks * s < kKeySplitBlocksPerSm * sm_count &&
           nk / (2 * s) >= kMinChunkKeys)
      s *= 2;
  }
  if (batch <= 0 || heads <= 0 || rows <= 0 || keys <= 0 || keys > nk) return {};
  for (; s > 1; s /= 2)
    if (nk % s == 0 && (s - 1) * (nk / s) < keys) return {s, nk / s};
  return {};
}

}  // namespace par::cuda
