// The model configuration's one table (core/model_config.h): every field reaches every
// place that lists the fields (command line, manifest, export attributes, summary,
// same_shape), round trips through each, and the formats stay byte for byte those of the
// files already written (spec/FORMATS.md).
#include <gtest/gtest.h>

#include <type_traits>
#include <variant>
#include <vector>

#include "checkpoint/manifest.h"
#include "checkpoint/model_file.h"
#include "core/param_layout.h"
#include "data/h5.h"
#include "launch/options.h"
#include "tests/temp_dir.h"

namespace par {
namespace {

using testing_util::TempDir;

// A valid configuration whose every field differs from its default.
ModelConfig unusual() {
  return ModelConfig{.vocab_size = 300, .d_model = 48, .context_length = 40, .num_latents = 12,
                     .num_layers = 3, .cross_heads = 3, .self_heads = 6, .mlp_factor = 3,
                     .rotary_fraction = 0.25, .max_wavelength = 1000.5,
                     .position_encoding = PositionEncoding::kBoth};
}

// The field's value in the text form of the manifest and the command line.
std::string text_of(const ModelField& f, const ModelConfig& c) {
  return std::visit(
      [&](auto m) -> std::string {
        if constexpr (std::is_same_v<decltype(m), PositionEncoding ModelConfig::*>)
          return position_encoding_name(c.*m);
        else
          return cat(c.*m);
      },
      f.member);
}

void expect_same_fields(const ModelConfig& a, const ModelConfig& b, const std::string& where) {
  for (const ModelField& f : kModelFields)
    EXPECT_TRUE(f.equal(a, b)) << where << ": " << f.key << " is " << text_of(f, b)
                               << ", expected " << text_of(f, a);
}

// A member added to ModelConfig without a row would be missing from every file and
// option. C++ cannot list a struct's members, but it can weigh them: every member is
// 8 bytes or an enum padded to 8.
TEST(ModelConfigTable, EveryMemberHasARow) {
  size_t bytes = 0;
  for (const ModelField& f : kModelFields)
    bytes += std::visit([](auto m) { return (sizeof(ModelConfig{}.*m) + 7) / 8 * 8; }, f.member);
  EXPECT_EQ(bytes, sizeof(ModelConfig)) << "a member of ModelConfig has no row in kModelFields";
}

TEST(ModelConfigTable, NamesAreUnique) {
  for (const ModelField& f : kModelFields)
    for (const ModelField& g : kModelFields)
      if (&f != &g) {
        EXPECT_STRNE(f.key, g.key);
        EXPECT_STRNE(f.option, g.option);
        EXPECT_STRNE(f.symbol, g.symbol);
      }
}

TEST(ModelConfigTable, EveryFieldRoundTripsThroughTheManifest) {
  Manifest m;
  m.position = {1200, 2400, 7, 3e-4};
  m.model = unusual();
  const std::string text = m.to_text();
  for (const ModelField& f : kModelFields)
    EXPECT_NE(text.find(cat(" ", f.key, "=")), std::string::npos) << f.key << " not in\n" << text;
  const Manifest back = Manifest::parse(text, "manifest.txt");
  expect_same_fields(m.model, back.model, "manifest");
  EXPECT_EQ(back.position.step, 1200);
  EXPECT_EQ(back.position.next_batch, 2400);
  EXPECT_EQ(back.position.seed, 7u);
  EXPECT_EQ(back.position.lr, 3e-4);
}

TEST(ModelConfigTable, EveryFieldRoundTripsThroughAnExport) {
  TempDir dir;
  const ModelConfig c = unusual();
  const std::vector<float> params(size_t(ParamLayout(c).total()), 0.5f);
  write_export(dir.file("m.h5"), c, 9, params.data());
  {
    h5::Object file = h5::open_file(dir.file("m.h5"));
    for (const ModelField& f : kModelFields)
      EXPECT_TRUE(h5::has_attribute(file.id(), f.key)) << f.key;
  }
  expect_same_fields(c, read_model_config(dir.file("m.h5")), "export");
}

TEST(ModelConfigTable, EveryFieldIsAnOptionAndInTheSummary) {
  const ModelConfig want = unusual();
  ModelConfig got;
  const po::options_description opts = model_options(got);
  std::vector<std::string> args{"par"};
  for (const ModelField& f : kModelFields) {
    EXPECT_NE(opts.find_nothrow(f.option, false), nullptr) << f.option;
    args.push_back(cat("--", f.option));
    args.push_back(text_of(f, want));
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  po::variables_map vm;
  po::store(po::parse_command_line(int(argv.size()), argv.data(), opts), vm);
  po::notify(vm);
  expect_same_fields(want, got, "command line");
  const std::string summary = want.summary();
  for (const ModelField& f : kModelFields)
    EXPECT_NE(summary.find(cat(f.symbol, "=", text_of(f, want))), std::string::npos)
        << f.symbol << " not in " << summary;
}

TEST(ModelConfigTable, SameShapeComparesEveryField) {
  const ModelConfig base = unusual();
  EXPECT_TRUE(base.same_shape(base));
  for (const ModelField& f : kModelFields) {
    ModelConfig other = base;
    std::visit(
        [&](auto m) {
          if constexpr (std::is_same_v<decltype(m), PositionEncoding ModelConfig::*>)
            other.*m = PositionEncoding::kAbsolute;
          else
            other.*m = other.*m + 1;
        },
        f.member);
    EXPECT_FALSE(base.same_shape(other)) << f.key;
  }
  // The wavelength is compared as resolved: 0 means N.
  ModelConfig zero = base, explicit_n = base;
  zero.max_wavelength = 0;
  explicit_n.max_wavelength = double(base.context_length);
  EXPECT_TRUE(zero.same_shape(explicit_n));
}

// Files written before the table: the same bytes, and they read back.
TEST(ModelConfigTable, FormatsAreThoseOfExistingFiles) {
  Manifest m;
  m.position = {1200, 2400, 7, 0.0003};
  m.dp = 2;
  m.sp = 2;
  const std::string rotary =
      "par-checkpoint 3\nstep 1200\nnext_batch 2400\nseed 7\nlr 3e-04\nlayout 2 2 1\n"
      "model vocab_size=259 d_model=256 context_length=1024 num_latents=256 num_layers=4 "
      "cross_heads=8 self_heads=8 mlp_factor=4 rotary_fraction=0.5 max_wavelength=1024\n";
  EXPECT_EQ(m.header_text(), rotary);
  m.model.position_encoding = PositionEncoding::kAbsolute;
  m.model.max_wavelength = 131072.5;
  m.model.rotary_fraction = 0.1;
  EXPECT_EQ(m.header_text(),
            "par-checkpoint 3\nstep 1200\nnext_batch 2400\nseed 7\nlr 3e-04\nlayout 2 2 1\n"
            "model vocab_size=259 d_model=256 context_length=1024 num_latents=256 num_layers=4 "
            "cross_heads=8 self_heads=8 mlp_factor=4 rotary_fraction=0.1 "
            "max_wavelength=131072.5 position_encoding=absolute\n");
  // The summary shows numbers as a stream does (6 significant digits), the files exactly.
  EXPECT_EQ(m.model.summary(),
            "V=259 d=256 N=1024 M=256 L=4 Hc=8 H=8 F=4 rot=0.1 W=131072 pos=absolute");
  EXPECT_EQ(ModelConfig{}.summary(), "V=259 d=256 N=1024 M=256 L=4 Hc=8 H=8 F=4 rot=0.5 W=1024");
  // A version-1 manifest, and a model line without the optional key: rotary.
  const Manifest v1 = Manifest::parse("par-checkpoint 1\n" + rotary.substr(rotary.find('\n') + 1),
                                      "manifest.txt");
  EXPECT_EQ(v1.model.position_encoding, PositionEncoding::kRotary);
  EXPECT_EQ(v1.model.max_wavelength, 1024.0);

  // An export of a rotary model has exactly the attributes of spec/FORMATS.md.
  TempDir dir;
  const ModelConfig tiny{.d_model = 8, .context_length = 8, .num_latents = 4, .num_layers = 1,
                         .cross_heads = 2, .self_heads = 2};
  const std::vector<float> params(size_t(ParamLayout(tiny).total()), 0.0f);
  write_export(dir.file("m.h5"), tiny, 3, params.data());
  h5::Object file = h5::open_file(dir.file("m.h5"));
  EXPECT_FALSE(h5::has_attribute(file.id(), "position_encoding"));
  EXPECT_EQ(h5::read_attribute<double>(file.id(), "max_wavelength"), 8.0);
  EXPECT_EQ(h5::read_attribute<int64_t>(file.id(), "vocab_size"), 259);
}

TEST(ModelConfigTable, FieldChecksNameTheOption) {
  auto message = [](auto set) {
    ModelConfig c;
    set(c);
    try {
      c.validate();
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("valid");
  };
  EXPECT_EQ(message([](ModelConfig& c) { c.mlp_factor = 0; }), "--mlp-factor must be positive (got 0)");
  EXPECT_EQ(message([](ModelConfig& c) { c.num_layers = -1; }), "--num-layers must be >= 0 (got -1)");
  EXPECT_EQ(message([](ModelConfig& c) { c.rotary_fraction = 1.5; }),
            "--rotary-fraction must be in [0, 1] (got 1.5)");
  EXPECT_EQ(message([](ModelConfig& c) { c.num_layers = 0; }), "valid");
}

// Buffers are counted in int64 elements: a shape no machine could hold is refused before
// any count can wrap around (a model file's attributes reach eval and sample unplanned).
TEST(ModelConfigTable, ShapesFarTooLargeAreRefused) {
  auto refused = [](auto set, const std::string& what) {
    ModelConfig c;
    set(c);
    try {
      c.validate();
    } catch (const UserError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("far too large for any machine: more than 2^44 elements in " + what),
                std::string::npos) << m;
      return;
    }
    ADD_FAILURE() << "accepted: " << c.summary();
  };
  refused([](ModelConfig& c) { c.context_length = int64_t(1) << 62; }, "one example's inputs");
  refused([](ModelConfig& c) { c.context_length = int64_t(1) << 37; }, "one example's inputs");
  refused([](ModelConfig& c) { c.mlp_factor = int64_t(1) << 62; }, "its largest weight matrix");
  refused([](ModelConfig& c) { c.d_model = int64_t(1) << 23; }, "its largest weight matrix");
  refused([](ModelConfig& c) { c.num_layers = int64_t(1) << 40; }, "its parameters");
  refused([](ModelConfig& c) { c.num_latents = c.context_length = int64_t(1) << 32; },
          "one example's latent activations");
  refused([](ModelConfig& c) {
    c.d_model = c.cross_heads = c.self_heads = 1;
    c.num_layers = 0;
    c.num_latents = c.context_length = int64_t(1) << 30;
    c.vocab_size = (int64_t(1) << 31) - 1;
  }, "one example's logits");
  // A million-token context at d = 8192 is not refused: only sizes past any machine are.
  ModelConfig big;
  big.context_length = int64_t(1) << 20;
  big.d_model = 8192;
  EXPECT_NO_THROW(big.validate());
}

}  // namespace
}  // namespace par
