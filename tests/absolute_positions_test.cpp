// Absolute positions (spec/MODEL.md section 13): the document-position rule, the
// sinusoidal rows, the growing table, a shard's document index, and the model: with
// absolute (or both) positions it computes exactly what a model without them computes from
// the embedding E[x_j] + P[p_j], EOS restarting the count and the carry continuing it.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/absolute_positions.h"
#include "core/model.h"
#include "data/dataset.h"
#include "data/document_index.h"
#include "data/shard.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/temp_dir.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::random_vector;
using testing_util::TempDir;

std::vector<int32_t> positions_of(const std::vector<int32_t>& tokens, int64_t carry) {
  std::vector<int32_t> p(tokens.size());
  document_positions(tokens.data(), int64_t(tokens.size()), carry, p.data());
  return p;
}

TEST(AbsolutePositions, DocumentPositionsRestartAfterEosAndPad) {
  //                            a  b  EOS c  d  PAD PAD e  EOS EOS f
  const std::vector<int32_t> t{5, 6, 1,  7, 8, 0,  0,  9, 1,  1,  4};
  EXPECT_EQ(positions_of(t, 0), (std::vector<int32_t>{1, 2, 3, 1, 2, 0, 0, 1, 2, 1, 1}));
  // A window that starts inside a document continues its count.
  EXPECT_EQ(positions_of(t, 40), (std::vector<int32_t>{41, 42, 43, 1, 2, 0, 0, 1, 2, 1, 1}));
  // Cutting a stream anywhere and carrying the count over gives the same positions.
  std::mt19937_64 rng(1);
  std::vector<int32_t> s(300);
  for (auto& x : s) x = int32_t(rng() % 9 == 0 ? rng() % 2 : 3 + rng() % 50);
  const auto whole = positions_of(s, 0);
  for (int64_t cut : {1, 17, 150, 299}) {
    const int64_t carry = carry_after(s.data(), cut, 0);
    std::vector<int32_t> rest(s.begin() + cut, s.end());
    const auto tail = positions_of(rest, carry);
    EXPECT_TRUE(std::equal(tail.begin(), tail.end(), whole.begin() + cut)) << "cut " << cut;
  }
}

TEST(AbsolutePositions, SinusoidRowsFollowTheSpec) {
  const int64_t d = 8, half = 4;
  std::vector<double> rows;
  position_encoding_rows(3, 2, d, rows);  // positions 3 and 4
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t k = 0; k < half; ++k) {
      const double c = std::pow(10000.0, -double(k) / double(half - 1));  // 1 ... 1e-4
      EXPECT_NEAR(rows[size_t(i * d + k)], std::sin(double(3 + i) * c), 1e-15);
      EXPECT_NEAR(rows[size_t(i * d + half + k)], std::cos(double(3 + i) * c), 1e-15);
    }
  std::vector<float> f;
  position_encoding_rows(100000, 1, d, f);  // formed in double, rounded once
  EXPECT_EQ(f[1], float(std::sin(100000.0 * std::pow(10000.0, -1.0 / 3.0))));
}

TEST(AbsolutePositions, TableGrowsForLongerDocuments) {
  cpu::CpuOps<double> ops;
  const int64_t d = 6;
  PositionTable<double> table(ops, d);
  std::vector<double> h(3 * d, 0.5), scratch(3 * d);
  std::vector<int32_t> ids(3);
  for (std::vector<int32_t> pos : {std::vector<int32_t>{0, 1, 2}, {7, 1000, 3}}) {
    std::fill(h.begin(), h.end(), 0.5);
    table.add(h.data(), pos.data(), 3, ids.data(), scratch.data());
    EXPECT_GT(table.capacity(), *std::max_element(pos.begin(), pos.end()));
    for (int64_t r = 0; r < 3; ++r) {
      std::vector<double> want;
      position_encoding_rows(pos[size_t(r)], 1, d, want);
      for (int64_t k = 0; k < d; ++k) EXPECT_EQ(h[size_t(r * d + k)], 0.5 + want[size_t(k)]);
    }
  }
}

TEST(AbsolutePositions, DocumentIndexGivesTheCarryOfEveryIndex) {
  TempDir dir;
  std::mt19937_64 rng(2);
  std::vector<int32_t> s(5000);
  for (auto& x : s) x = int32_t(rng() % 300 == 0 ? rng() % 2 : 3 + rng() % 200);
  s[0] = 1;  // an empty first document
  const std::string path = dir.file("s.h5");
  write_shard(path, s.data(), int64_t(s.size()), 259);
  const ShardReader reader(path);
  const DocumentIndex index(reader, 259);
  const auto pos = positions_of(s, 0);
  EXPECT_EQ(index.carry_before(0), 0);
  for (int64_t i = 1; i < int64_t(s.size()); ++i)
    ASSERT_EQ(index.carry_before(i), s[size_t(i - 1)] <= 1 ? 0 : pos[size_t(i - 1)]) << i;
  // The data set's windows (every N = 64 tokens) get the same through Dataset.
  const Dataset data({path}, 64, 259);
  for (int64_t w : {0, 5, 77})
    for (int64_t col : {0, 1, 32, 64})
      EXPECT_EQ(data.position_carry(w, col), index.carry_before(w * 64 + col));
}

ModelConfig config(PositionEncoding pe) {
  ModelConfig c;
  c.vocab_size = 40;  // more than N + 1: every window below holds distinct tokens
  c.d_model = 12;
  c.context_length = 16;
  c.num_latents = 6;
  c.num_layers = 2;
  c.cross_heads = 2;
  c.self_heads = 3;
  c.mlp_factor = 2;
  c.position_encoding = pe;
  return c;
}

// Absolute positions are E[x] + P[p] at the input: a model without them whose embedding
// table holds E[x_j] + P[p_j] at each token of the window (all distinct, so each row
// serves one position) gives the same logits, bit for bit in double.
void check_equals_embedding_shift(PositionEncoding pe, double rotary_fraction) {
  const ModelConfig c = config(pe);
  ModelConfig plain = c;
  plain.position_encoding = PositionEncoding::kRotary;
  plain.rotary_fraction = rotary_fraction;
  cpu::CpuOps<double> ops;
  const int64_t B = 2, N = c.context_length, d = c.d_model;
  auto params = random_vector<double>(ParamLayout(c).total(), 3, 0.4);
  // Window 0 starts a document; window 1 continues one (carry 9) and has an EOS inside.
  std::vector<int32_t> w(size_t(B * (N + 1)));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j <= N; ++j) w[size_t(b * (N + 1) + j)] = int32_t(3 + j + b);
  w[size_t(N + 1 + 5)] = kEosToken;
  const int64_t carry[2] = {0, 9};
  PerceiverAR<double> model(c, ops, B);
  ops.upload(model.params(), params.data(), params.size() * sizeof(double));
  ForwardContext ctx;
  ctx.position_carry = carry;
  const LossSums s = model.forward(w.data(), B, ctx);
  const auto logits = model.logits();

  const ParamLayout plain_layout(plain);
  const ParamInfo* embed = plain_layout.find("embed.weight");
  for (int64_t b = 0; b < B; ++b) {
    auto shifted = params;
    const auto pos = positions_of(std::vector<int32_t>(w.begin() + b * (N + 1), w.begin() + b * (N + 1) + N), carry[b]);
    if (b == 1) {
      EXPECT_EQ(pos[6], 1) << "the count restarts after the EOS";
    }
    for (int64_t j = 0; j < N; ++j) {
      std::vector<double> row;
      position_encoding_rows(pos[size_t(j)], 1, d, row);
      for (int64_t k = 0; k < d; ++k)
        shifted[size_t(embed->offset + w[size_t(b * (N + 1) + j)] * d + k)] += row[size_t(k)];
    }
    // Window b twice, as a batch of B: the reference's matrix products then have the row
    // counts of the model's (a row's sums may round differently in a product of another
    // size: the CPU takes those of up to 16 rows with its own kernel, larger ones with BLAS).
    std::vector<int32_t> twice;
    for (int64_t k = 0; k < B; ++k)
      twice.insert(twice.end(), w.begin() + b * (N + 1), w.begin() + (b + 1) * (N + 1));
    PerceiverAR<double> ref(plain, ops, B);
    ops.upload(ref.params(), shifted.data(), shifted.size() * sizeof(double));
    ref.forward(twice.data(), B, ForwardContext{});
    const auto want = ref.logits();
    const int64_t per = c.num_latents * c.vocab_size;
    EXPECT_TRUE(std::equal(want.begin(), want.begin() + per, logits.begin() + b * per))
        << "example " << b;
  }
  EXPECT_GT(s.valid, 0);
}

TEST(AbsolutePositions, AbsoluteIsTheEmbeddingPlusPWithoutRotary) {
  check_equals_embedding_shift(PositionEncoding::kAbsolute, 0.0);
}
TEST(AbsolutePositions, BothIsTheEmbeddingPlusPWithRotary) {
  check_equals_embedding_shift(PositionEncoding::kBoth, 0.5);
}

TEST(AbsolutePositions, OddWidthIsRefused) {
  ModelConfig c = config(PositionEncoding::kAbsolute);
  c.d_model = 9;
  c.cross_heads = c.self_heads = 3;
  EXPECT_THROW(c.validate(), UserError);
  c.position_encoding = PositionEncoding::kRotary;
  EXPECT_NO_THROW(c.validate());
  EXPECT_THROW(parse_position_encoding("sinusoidal", "--position-encoding"), UserError);
  EXPECT_EQ(parse_position_encoding("both", "x"), PositionEncoding::kBoth);
}

}  // namespace
}  // namespace par
