#include "core/model_config.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

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

bool ModelField::at_default(const ModelConfig& c) const {
  return equal(c, ModelConfig{});
}

bool ModelField::equal(const ModelConfig& a, const ModelConfig& b) const {
  return std::visit([&](auto m) { return a.*m == b.*m; }, member);
}

ModelConfig ModelConfig::resolved() const {
  ModelConfig c = *this;
  c.max_wavelength = wavelength();
  return c;
}

namespace {

void check_field(const ModelField& f, const ModelConfig& c) {
  std::visit(
      [&](auto m) {
        const auto v = c.*m;
        if constexpr (!std::is_same_v<decltype(v), const PositionEncoding>) {
          if (f.check == FieldCheck::kPositive && v <= 0)
            fail_user("--", f.option, " must be positive (got ", v, ")");
          if (f.check == FieldCheck::kNonNegative && v < 0)
            fail_user("--", f.option, " must be >= 0 (got ", v, ")");
          if (f.check == FieldCheck::kUnitInterval && !(v >= 0 && v <= 1))
            fail_user("--", f.option, " must be in [0, 1] (got ", v, ")");
        }
      },
      f.member);
}

// Buffers are sized in int64 elements, an example's or a sample's at a time times the
// batch: a shape whose pieces pass 2^44 elements (64 TiB in float32, past any machine) is
// refused here, so that no count of a piece wraps around (the batches are bounded where
// they are given: train's and eval's by their memory plans, sample's by --num-samples). A
// model file's attributes reach the decoder and eval this way too.
void check_size(const ModelConfig& c) {
  constexpr double kFar = 0x1p44;
  const double d = double(c.d_model), N = double(c.context_length), M = double(c.num_latents),
               L = double(c.num_layers), F = double(c.mlp_factor), V = double(c.vocab_size);
  auto refuse = [&](const char* what, const std::string& options) {
    fail_user("the model is far too large for any machine: more than 2^44 elements in ", what,
              " (", options, ")");
  };
  if (std::max(F, V / d) * d * d > kFar)
    refuse("its largest weight matrix", cat("--d-model ", c.d_model, ", --mlp-factor ", c.mlp_factor,
                                           ", --vocab-size ", c.vocab_size));
  if ((2 * V + (L + 1) * (4 + 2 * F) * d) * d > kFar)
    refuse("its parameters", cat("--num-layers ", c.num_layers, ", --d-model ", c.d_model,
                                 ", --mlp-factor ", c.mlp_factor, ", --vocab-size ", c.vocab_size));
  if ((N + M) * d > kFar)
    refuse("one example's inputs", cat("--context-length ", c.context_length, ", --num-latents ",
                                       c.num_latents, ", --d-model ", c.d_model));
  if (M * V > kFar)
    refuse("one example's logits", cat("--num-latents ", c.num_latents, ", --vocab-size ", c.vocab_size));
  if ((L + 1) * M * d * (F + 8) > kFar)
    refuse("one example's latent activations",
           cat("--num-layers ", c.num_layers, ", --num-latents ", c.num_latents, ", --d-model ",
               c.d_model, ", --mlp-factor ", c.mlp_factor));
}

// A field's value as the summary line shows it.
std::string shown(const ModelField& f, const ModelConfig& c) {
  return std::visit(
      [&](auto m) -> std::string {
        if constexpr (std::is_same_v<decltype(c.*m), const PositionEncoding&>)
          return position_encoding_name(c.*m);
        else
          return cat(c.*m);
      },
      f.member);
}

}  // namespace

void ModelConfig::validate() const {
  for (const ModelField& f : kModelFields) check_field(f, *this);
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
  if (!(max_wavelength >= 0) || !std::isfinite(max_wavelength))
    fail_user("--max-wavelength must be a finite number >= 0 (0 means N)");
  if (vocab_size > (int64_t(1) << 31) - 1) fail_user("--vocab-size must fit in int32");
  if (absolute_positions() && d_model % 2 != 0)
    fail_user("--d-model ", d_model, " is odd: --position-encoding ",
              position_encoding_name(position_encoding),
              " adds sines and cosines in two halves of the width, so it must be even");
  check_size(*this);
}

std::string ModelConfig::summary() const {
  const ModelConfig c = resolved();
  std::string out;
  for (const ModelField& f : kModelFields)
    if (f.recorded(c)) out += cat(out.empty() ? "" : " ", f.symbol, "=", shown(f, c));
  return out;
}

bool ModelConfig::same_shape(const ModelConfig& o) const {
  const ModelConfig a = resolved(), b = o.resolved();
  for (const ModelField& f : kModelFields)
    if (!f.equal(a, b)) return false;
  return true;
}

}  // namespace par
