// The model against golden vectors computed in float64 by an independent implementation
// of spec/MODEL.md (tests/data/golden-tiny.h5, copied from shared/testdata): logits,
// per-target ce and lse, the objective, and the gradient of every parameter, for three
// cases covering PAD keys and targets, M = N, full-width rotary with max_wavelength != N,
// and a single rotary band.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/model.h"
#include "data/h5.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::max_rel_err;

const std::string kGolden = std::string(PAR_TESTDATA_DIR) + "/golden-tiny.h5";

ModelConfig read_config(hid_t g) {
  ModelConfig c;
  c.vocab_size = h5::read_attribute<int64_t>(g, "vocab_size");
  c.d_model = h5::read_attribute<int64_t>(g, "d_model");
  c.context_length = h5::read_attribute<int64_t>(g, "context_length");
  c.num_latents = h5::read_attribute<int64_t>(g, "num_latents");
  c.num_layers = h5::read_attribute<int64_t>(g, "num_layers");
  c.cross_heads = h5::read_attribute<int64_t>(g, "cross_heads");
  c.self_heads = h5::read_attribute<int64_t>(g, "self_heads");
  c.mlp_factor = h5::read_attribute<int64_t>(g, "mlp_factor");
  c.rotary_fraction = h5::read_attribute<double>(g, "rotary_fraction");
  c.max_wavelength = h5::read_attribute<double>(g, "max_wavelength");
  return c;
}

template <typename T>
void check_golden(const std::string& name, double tol) {
  SCOPED_TRACE(name);
  h5::Object file = h5::open_file(kGolden);
  h5::Object g = h5::open_group(file.id(), name);
  const ModelConfig cfg = read_config(g.id());
  const auto windows = h5::read_dataset<int32_t>(g.id(), "windows");
  const int64_t W = cfg.context_length + 1, B = int64_t(windows.size()) / W;
  ASSERT_EQ(B * W, int64_t(windows.size()));

  cpu::CpuOps<T> ops;
  PerceiverAR<T> model(cfg, ops, B);
  std::vector<T> params(size_t(model.layout().total()), T(0));
  for (const ParamInfo& p : model.layout().params()) {
    ASSERT_EQ(h5::dataset_shape(g.id(), "params/" + p.name), p.shape) << p.name;
    const auto v = h5::read_dataset<double>(g.id(), "params/" + p.name);
    for (int64_t i = 0; i < p.numel; ++i) params[size_t(p.offset + i)] = T(v[size_t(i)]);
  }
  ops.upload(model.params(), params.data(), params.size() * sizeof(T));

  const LossSums sums = model.forward(windows.data(), B, ForwardContext{});
  EXPECT_EQ(sums.valid, h5::read_attribute<int64_t>(g.id(), "valid_targets"));
  const double objective = h5::read_attribute<double>(g.id(), "objective");
  const double mean_ce = h5::read_attribute<double>(g.id(), "mean_ce");
  EXPECT_NEAR(sums.objective / double(sums.valid), objective, tol * std::abs(objective));
  EXPECT_NEAR(sums.ce / double(sums.valid), mean_ce, tol * std::abs(mean_ce));
  EXPECT_LE(max_rel_err(model.logits(), h5::read_dataset<double>(g.id(), "logits")), tol) << "logits";
  // The reference lists ce for PAD targets too; they are not part of the loss and the
  // model reports 0 for them, so only valid targets are compared.
  auto ce_ref = h5::read_dataset<double>(g.id(), "ce");
  auto ce = model.ce();
  const int64_t M = cfg.num_latents, N = cfg.context_length;
  int64_t pad_targets = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < M; ++i)
      if (windows[size_t(b * W + N - M + i + 1)] == 0) {
        EXPECT_EQ(ce[size_t(b * M + i)], T(0));
        ce_ref[size_t(b * M + i)] = 0;
        ++pad_targets;
      }
  EXPECT_EQ(sums.valid + pad_targets, B * M);
  EXPECT_LE(max_rel_err(ce, ce_ref), tol) << "ce";
  EXPECT_LE(max_rel_err(model.lse(), h5::read_dataset<double>(g.id(), "lse")), tol) << "lse";

  model.zero_grads();
  model.backward(1.0 / double(sums.valid));
  std::vector<T> grads(params.size());
  ops.download(grads.data(), model.grads(), grads.size() * sizeof(T));
  int checked = 0;
  for (const ParamInfo& p : model.layout().params()) {
    const auto ref = h5::read_dataset<double>(g.id(), "grads/" + p.name);
    ASSERT_EQ(int64_t(ref.size()), p.numel) << p.name;
    std::vector<T> mine(grads.begin() + p.offset, grads.begin() + p.offset + p.numel);
    EXPECT_LE(max_rel_err(mine, ref), tol) << "grad of " << p.name;
    ++checked;
  }
  EXPECT_EQ(checked, int(model.layout().params().size()));
  EXPECT_EQ(int64_t(h5::list_names(h5::open_group(g.id(), "grads").id()).size()), checked);
}

// float32: 1e-5 relative is float32 rounding accumulated through a few layers (see
// shared/testdata/README.md); a wrong term is off by far more.
TEST(GoldenVectors, Float32) {
  for (const char* c : {"case0", "case1", "case2"}) check_golden<float>(c, 2e-5);
}

// float64: the same mathematics in the same precision as the reference, so agreement
// must be near double rounding.
TEST(GoldenVectors, Float64) {
  for (const char* c : {"case0", "case1", "case2"}) check_golden<double>(c, 1e-10);
}

}  // namespace
}  // namespace par
