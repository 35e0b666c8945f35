// The shape of a Perceiver AR model (spec/MODEL.md notation in the comments).
//
// These are the numbers that make two checkpoints compatible; training-only settings
// (dropout, learning rate, ...) live elsewhere.
#pragma once

#include <cstdint>
#include <string>

namespace par {

// How positions enter the model (spec/MODEL.md section 13): rotary encodings of relative
// offsets in every attention (sections 2-3), sinusoidal absolute encodings of each input's
// position in its document added to the input embedding, or both.
enum class PositionEncoding { kRotary, kAbsolute, kBoth };

const char* position_encoding_name(PositionEncoding p);  // "rotary", "absolute", "both"
// UserError naming `option` unless `name` is one of the three names.
PositionEncoding parse_position_encoding(const std::string& name, const std::string& option);

struct ModelConfig {
  int64_t vocab_size = 259;      // V
  int64_t d_model = 256;         // d
  int64_t context_length = 1024; // N
  int64_t num_latents = 256;     // M
  int64_t num_layers = 4;        // L
  int64_t cross_heads = 8;       // Hc
  int64_t self_heads = 8;        // H
  int64_t mlp_factor = 4;        // F
  double rotary_fraction = 0.5;
  double max_wavelength = 0;     // 0 means "the context length N"
  PositionEncoding position_encoding = PositionEncoding::kRotary;

  double wavelength() const {
    return max_wavelength > 0 ? max_wavelength : static_cast<double>(context_length);
  }
  int64_t cross_head_dim() const { return d_model / cross_heads; }
  int64_t self_head_dim() const { return d_model / self_heads; }
  int64_t mlp_width() const { return mlp_factor * d_model; }
  bool absolute_positions() const { return position_encoding != PositionEncoding::kRotary; }
  // The fraction of each head that rotary rotates: none with absolute positions alone.
  double applied_rotary_fraction() const {
    return position_encoding == PositionEncoding::kAbsolute ? 0.0 : rotary_fraction;
  }

  // Throws UserError naming the offending option (by its command-line name).
  void validate() const;
  // One line, for logs: "V=259 d=256 N=131072 M=256 L=4 Hc=8 H=8 F=4 rot=0.5 W=131072"
  // (then " pos=absolute" or " pos=both" where positions are not rotary alone).
  std::string summary() const;
  bool same_shape(const ModelConfig& o) const;
};

}  // namespace par
