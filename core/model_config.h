// The shape of a Perceiver AR model (spec/MODEL.md notation in the comments).
//
// These are the numbers that make two checkpoints compatible; training-only settings
// (dropout, learning rate, ...) live elsewhere.
//
// Every field is one row of kModelFields below, and everything that lists the fields is
// made from that table: the command-line options (launch/options.cpp), the manifest's
// model line (checkpoint/manifest.cpp), the attributes of exported models
// (checkpoint/model_file.cpp), the summary line, the per-field checks of validate() and
// same_shape(). A new field is a member, a row, and the code that uses it; give it a
// default that means "as before" and mark it optional, so that files of models without
// it stay byte for byte as they were and older files read with the default.
#pragma once

#include <cstdint>
#include <string>
#include <variant>

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
  // The configuration as files record it and same_shape compares it: the defaults that
  // depend on other fields filled in (max_wavelength 0 becomes N).
  ModelConfig resolved() const;

  // Throws UserError naming the offending option (by its command-line name).
  void validate() const;
  // One line, for logs: "V=259 d=256 N=131072 M=256 L=4 Hc=8 H=8 F=4 rot=0.5 W=131072"
  // (then " pos=absolute" or " pos=both" where positions are not rotary alone).
  std::string summary() const;
  bool same_shape(const ModelConfig& o) const;
};

// What one field must satisfy by itself; relations between fields are validate()'s.
enum class FieldCheck { kNone, kPositive, kNonNegative, kUnitInterval };

// One field of ModelConfig, with its names in every place that lists it.
struct ModelField {
  const char* key;     // the manifest's model line and the export's attribute
  const char* option;  // the command line and INI files (without "--")
  const char* symbol;  // the summary line
  const char* help;    // the option's help
  std::variant<int64_t ModelConfig::*, double ModelConfig::*, PositionEncoding ModelConfig::*>
      member;
  FieldCheck check = FieldCheck::kNone;
  // Recorded (in files and the summary) only where it differs from the default; absent
  // means the default.
  bool optional = false;

  bool at_default(const ModelConfig& c) const;
  bool recorded(const ModelConfig& c) const { return !optional || !at_default(c); }
  bool equal(const ModelConfig& a, const ModelConfig& b) const;
};

inline constexpr ModelField kModelFields[] = {
    {"vocab_size", "vocab-size", "V", "vocabulary size V (259 for bytes)",
     &ModelConfig::vocab_size, FieldCheck::kPositive},
    {"d_model", "d-model", "d", "model width d", &ModelConfig::d_model, FieldCheck::kPositive},
    {"context_length", "context-length", "N", "input tokens per example N",
     &ModelConfig::context_length, FieldCheck::kPositive},
    {"num_latents", "num-latents", "M",
     "latents M (M <= N), each predicting one of the last M targets", &ModelConfig::num_latents,
     FieldCheck::kPositive},
    {"num_layers", "num-layers", "L", "latent self-attention layers L", &ModelConfig::num_layers,
     FieldCheck::kNonNegative},
    {"cross_heads", "cross-heads", "Hc", "cross-attention heads (must divide d)",
     &ModelConfig::cross_heads, FieldCheck::kPositive},
    {"self_heads", "self-heads", "H", "self-attention heads (must divide d)",
     &ModelConfig::self_heads, FieldCheck::kPositive},
    {"mlp_factor", "mlp-factor", "F", "MLP widening factor F", &ModelConfig::mlp_factor,
     FieldCheck::kPositive},
    {"rotary_fraction", "rotary-fraction", "rot",
     "fraction of each head's dims that rotary rotates", &ModelConfig::rotary_fraction,
     FieldCheck::kUnitInterval},
    {"max_wavelength", "max-wavelength", "W", "longest rotary wavelength (0: the context length)",
     &ModelConfig::max_wavelength},
    {"position_encoding", "position-encoding", "pos",
     "rotary (relative offsets in every attention), absolute (sinusoidal encodings of each "
     "input's position in its document, added to the embedding; no rotary) or both "
     "(spec/MODEL.md section 13)",
     &ModelConfig::position_encoding, FieldCheck::kNone, /*optional=*/true},
};

}  // namespace par
