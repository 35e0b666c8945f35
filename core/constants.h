// The fixed numbers of the model that every part of par must agree on (spec/MODEL.md):
// the reserved token ids, the byte-level vocabulary, the LayerNorm epsilon and the weight
// of the z-loss. Training, decoding, the kernels, `par prep` and `par sample` take them
// from here, so that none of them can drift from the others.
#pragma once

#include <cstdint>

namespace par {

// Reserved ids (spec/MODEL.md section 1).
inline constexpr int32_t kPadToken = 0;  // never a target, never a visible key
inline constexpr int32_t kEosToken = 1;  // ends a document (and belongs to it)
inline constexpr int32_t kSosToken = 2;  // what decoding starts from when the prompt is empty

// Byte-level data: byte b is id b + kByteOffset, after the reserved ids.
inline constexpr int32_t kByteOffset = 3;
inline constexpr int64_t kByteVocabSize = 256 + kByteOffset;

// LayerNorm's epsilon, in every LayerNorm of the model (spec/MODEL.md section 8).
inline constexpr double kLayerNormEps = 1e-5;
// The weight of the z-loss term, z_loss * lse^2, in the training objective (section 6).
inline constexpr double kZLoss = 1e-4;

}  // namespace par
