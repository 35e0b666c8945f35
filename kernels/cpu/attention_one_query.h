// Attention forward of one query per example: decoding's latent self-attention (each
// sample's new latent over its cached latents) and each sample's own cross-attention
// entries, which grow to thousands past the context. attention_forward_blocked calls it for
// the shapes it supports unless AttentionBlocking::one_query is off.
#pragma once

#include "core/ops.h"
#include "kernels/cpu/workspace.h"

namespace par::cpu {

// One query per example (nq == 1), over any number of keys, taken kOneQueryChunkKeys at a
// time (the scratch a thread needs).
constexpr int64_t kOneQueryChunkKeys = 4096;
bool one_query_attention_supported(const AttentionShape& s);

// Bytes of each working thread's Workspace (kAttention) for a call of this shape.
template <typename T>
double one_query_attention_scratch_bytes(const AttentionShape& s);

// The contract of Ops::attention_forward (core/ops.h) for the supported shapes.
template <typename T>
void one_query_attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v,
                                 T* o, T* lse, Workspace& ws);

}  // namespace par::cpu
