// Where the input side of the model keeps its keys and values and their gradients
// ([B, N/sp, d/tp] each, the model's largest tensors), and LN_kv's output (the projections'
// operand): in the model's element type, or in bfloat16 (the Ops `_bf16` operations),
// which halves them. In bfloat16 LN_kv's output, the rotated keys and the values are
// rounded once as they are made, and the keys' and values' gradients as the attention's
// backward makes them; the rest of the step is unchanged (PerceiverAR, core/model.h).
// `--kv-storage` of par train and par bench (launch/options.h).
#pragma once

namespace par {

enum class KeyValueStorage { kNative, kBf16 };

}  // namespace par
