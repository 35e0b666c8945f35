// The shape of a Perceiver AR model (spec/MODEL.md notation in the comments).
//
// These are the numbers that make two checkpoints compatible; training-only settings
// (dropout, learning rate, ...) live elsewhere.
#pragma once

#include <cstdint>
#include <string>

namespace par {

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

  double wavelength() const {
    return max_wavelength > 0 ? max_wavelength : static_cast<double>(context_length);
  }
  int64_t cross_head_dim() const { return d_model / cross_heads; }
  int64_t self_head_dim() const { return d_model / self_heads; }
  int64_t mlp_width() const { return mlp_factor * d_model; }

  // Throws UserError naming the offending option (by its command-line name).
  void validate() const;
  // One line, for logs: "V=259 d=256 N=131072 M=256 L=4 Hc=8 H=8 F=4 rot=0.5 W=131072".
  std::string summary() const;
  bool same_shape(const ModelConfig& o) const;
};

}  // namespace par
