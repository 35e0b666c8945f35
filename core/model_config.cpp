#include "core/model_config.h"

#include <cmath>

#include "core/error.h"

namespace par {

const char* position_encoding_name(PositionEncoding p) {
  switch (p) {
    case PositionEncoding::kRotary: return "rotary";
    case PositionEncoding::kAbsolute: return "absolute";
    case PositionEncoding::kBoth: return "both";
  }
  return "?";
}

PositionEncoding parse_position_encoding(const std::string& name, const std::string& option) {
  for (PositionEncoding p :
       {PositionEncoding::kRotary, PositionEncoding::kAbsolute, PositionEncoding::kBoth})
    if (name == position_encoding_name(p)) return p;
  fail_user(option, " is '", name, "': it must be rotary, absolute or both");
}

void ModelConfig::validate() const {
  auto positive = [](const char* opt, int64_t v) {
    if (v <= 0) fail_user("--", opt, " must be positive (got ", v, ")");
  };
  positive("vocab-size", vocab_size);
  positive("d-model", d_model);
  positive("context-length", context_length);
  positive("num-latents", num_latents);
  positive("cross-heads", cross_heads);
  positive("self-heads", self_heads);
  positive("mlp-factor", mlp_factor);
  if (num_layers < 0) fail_user("--num-layers must be >= 0 (got ", num_layers, ")");
  if (vocab_size < 3)
    fail_user("--vocab-size ", vocab_size, " is too small: ids 0, 1, 2 are PAD, EOS, SOS");
  if (num_latents > context_length)
    fail_user("--num-latents ", num_latents, " is larger than --context-length ",
              context_length, ": the latents sit on the last M of the N inputs (M <= N)");
  if (d_model % cross_heads != 0)
    fail_user("--d-model ", d_model, " does not divide by --cross-heads ", cross_heads,
              ": choose a head count that divides the width");
  if (d_model % self_heads != 0)
    fail_user("--d-model ", d_model, " does not divide by --self-heads ", self_heads,
              ": choose a head count that divides the width");
  if (!(rotary_fraction >= 0 && rotary_fraction <= 1))
    fail_user("--rotary-fraction must be in [0, 1] (got ", rotary_fraction, ")");
  if (!(max_wavelength >= 0) || !std::isfinite(max_wavelength))
    fail_user("--max-wavelength must be a finite number >= 0 (0 means N)");
  if (vocab_size > (int64_t(1) << 31) - 1) fail_user("--vocab-size must fit in int32");
  if (absolute_positions() && d_model % 2 != 0)
    fail_user("--d-model ", d_model, " is odd: --position-encoding ",
              position_encoding_name(position_encoding),
              " adds sines and cosines in two halves of the width, so it must be even");
}

std::string ModelConfig::summary() const {
  return cat("V=", vocab_size, " d=", d_model, " N=", context_length, " M=", num_latents,
             " L=", num_layers, " Hc=", cross_heads, " H=", self_heads, " F=", mlp_factor,
             " rot=", rotary_fraction, " W=", wavelength(),
             absolute_positions() ? cat(" pos=", position_encoding_name(position_encoding)) : "");
}

bool ModelConfig::same_shape(const ModelConfig& o) const {
  return vocab_size == o.vocab_size && d_model == o.d_model &&
         context_length == o.context_length && num_latents == o.num_latents &&
         num_layers == o.num_layers && cross_heads == o.cross_heads &&
         self_heads == o.self_heads && mlp_factor == o.mlp_factor &&
         rotary_fraction == o.rotary_fraction && wavelength() == o.wavelength() &&
         position_encoding == o.position_encoding;
}

}  // namespace par
