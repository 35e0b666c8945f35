// The parity cases of the bfloat16-storage operations (core/ops.h). Each case checks, on the
// backend it runs on, that the operation is its T operation on the widened bfloat16 values
// with what it stores rounded, bit for bit (the contract the model's bfloat16 storage is
// built on); its outputs are then compared across backends as every case's are, within
// one bfloat16 step where they are stored in bfloat16 (float and double may round a sum
// near a midpoint to its two neighbours).
#include <cmath>
#include <limits>

#include "core/bf16.h"
#include "core/constants.h"
#include "core/error.h"
#include "core/rotary.h"
#include "tests/attention_cases.h"
#include "tests/op_case_run.h"
#include "tests/test_util.h"

namespace par::op_parity {

namespace {

// One bfloat16 step of any value up to the largest, relative to the largest: 2^-7 (the step
// is 2^-7 of the bottom of its binade).
constexpr double kBf16Tol = 0x1p-7;

// The values the bfloat16 bits `b` hold, as a buffer of T on the backend.
template <typename R>
auto* widened(R& r, const uint16_t* b, int64_t n) {
  const std::vector<uint16_t> bits = r.host(b, n);
  std::vector<double> v(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) v[i] = double(bf16_float(bits[i]));
  return r.put(v);
}

// A bfloat16 buffer of the roundings of n normal values of standard deviation `scale`.
template <typename R>
uint16_t* random_bf16(R& r, int64_t n, uint64_t seed, double scale = 1.0) {
  auto* x = r.random(n, seed, scale);
  auto* b = r.raw(std::vector<uint16_t>(size_t(std::max<int64_t>(n, 1)), 0x7FC0));
  r.ops.round_to_bf16(b, x, n);
  return b;
}

template <typename R>
bool same_bits(R& r, const uint16_t* a, const uint16_t* b, int64_t n) {
  return r.host(a, n) == r.host(b, n);
}

template <typename R, typename P>
bool same_values(R& r, const P* a, const P* b, int64_t n) {
  const auto x = r.host(a, n), y = r.host(b, n);
  for (size_t i = 0; i < x.size(); ++i)
    if (!(x[i] == y[i] || (std::isnan(double(x[i])) && std::isnan(double(y[i]))))) return false;
  return true;
}

void rounding_cases(std::vector<OpCase>& t) {
  // Ties go to the even neighbour; past bfloat16's largest finite number (0x1.fep127) a
  // float rounds to infinity; infinities, NaN and signed zeros keep what they are.
  t.push_back(make_case("round_to_bf16 ties and edges", {"round_to_bf16"}, 0, Products::kNone,
                        true, [](auto& r) {
    const double inf = std::numeric_limits<double>::infinity();
    std::vector<double> x = {1.0,          1.0 + 0x1p-8,  1.0 + 3 * 0x1p-8, 1.0 + 0x1p-9,
                             -1.0 - 0x1p-8, -2.5,         0x1.fep127,       0x1.ffp127,
                             0x1.fe8p127,  -0x1.ffp127,   inf,              -inf,
                             0.0,          -0.0,          0x1p-130,         3.0e-39,
                             65504.0,      1e-3};
    // Normal values beyond the edges, an odd count (not a multiple of a vector); last, a NaN
    // (whose payload a backend may choose).
    for (double v : r.normal(100001, 51, 10.0)) x.push_back(v);
    x.push_back(std::nan(""));
    const int64_t n = int64_t(x.size());
    auto* src = r.put(x);
    auto* dst = r.raw(std::vector<uint16_t>(size_t(n), 0x1234));
    r.ops.round_to_bf16(dst, src, n);
    const std::vector<uint16_t> got = r.host(dst, n);
    int64_t wrong = 0;
    for (int64_t i = 0; i + 1 < n; ++i)
      if (got[size_t(i)] != bf16_bits(float(x[size_t(i)]))) ++wrong;
    r.check(wrong == 0, cat(wrong, " of ", n - 1, " roundings differ from the nearest bfloat16"));
    r.check(std::isnan(bf16_float(got.back())), "a NaN did not stay a NaN");
    r.out("bits", dst, n - 1);
  }));
  // n = 0 writes nothing.
  t.push_back(make_case("round_to_bf16 n=0", {"round_to_bf16"}, 0, Products::kNone, true,
                        [](auto& r) {
    auto* src = r.random(4, 52);
    auto* dst = r.raw(std::vector<uint16_t>(4, 0x1234));
    r.ops.round_to_bf16(dst, src, 0);
    r.out("bits", dst, 4);
  }));
}

void rotary_bf16_cases(std::vector<OpCase>& t) {
  for (bool inverse : {false, true})
    for (double fraction : {0.5, 0.0})
      t.push_back(make_case(cat("rotary_bf16", inverse ? " inverse" : "",
                                fraction == 0 ? " no bands" : ""),
                            {"rotary_bf16", "rotary", "round_to_bf16"}, kBf16Tol,
                            Products::kNone, false, [=](auto& r) {
        const int64_t batch = 2, n = 13, heads = 3, head_dim = 10;
        const int64_t count = batch * n * heads * head_dim;
        const RotarySpec spec = make_rotary_spec(head_dim, fraction, 131072.0);
        std::vector<double> cos_t, sin_t;
        make_rotary_tables(spec, 131072 - n, n, cos_t, sin_t);
        auto *cos_b = r.put(cos_t), *sin_b = r.put(sin_t);
        uint16_t* x = random_bf16(r, count, 35);
        // The contract: the T rotary of the widened values, rounded once.
        auto* wide = widened(r, x, count);
        r.ops.rotary(wide, batch, n, heads, head_dim, spec.bands, cos_b, sin_b, inverse);
        uint16_t* want = r.raw(std::vector<uint16_t>(size_t(count), 0));
        r.ops.round_to_bf16(want, wide, count);
        r.ops.rotary_bf16(x, batch, n, heads, head_dim, spec.bands, cos_b, sin_b, inverse);
        r.check(same_bits(r, x, want, count),
                "rotary_bf16 is not the rotary of the widened values, rounded");
        r.out("x", widened(r, x, count), count);
      }));
}

// Whether the values at a and b agree as the contract demands: bit for bit, or (`close`)
// within 2^-7 of the largest (a backend may read keys kept in bfloat16 where they lie,
// which its float32 operation cannot, and its flash attention may then sum in another
// order).
template <typename R, typename P>
bool agree_values(R& r, const P* a, const P* b, int64_t n, bool close) {
  if (!close) return same_values(r, a, b, n);
  const auto x = r.host(a, n), y = r.host(b, n);
  double err = 0, scale = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isinf(double(y[i])) || std::isinf(double(x[i]))) {
      if (x[i] != y[i]) return false;
      continue;
    }
    err = std::max(err, std::abs(double(x[i]) - double(y[i])));
    scale = std::max(scale, std::abs(double(y[i])));
  }
  return err <= 0x1p-7 * scale;
}

template <typename R>
bool agree_bits(R& r, const uint16_t* a, const uint16_t* b, int64_t n, bool close) {
  if (!close) return same_bits(r, a, b, n);
  auto* wa = widened(r, a, n);
  auto* wb = widened(r, b, n);
  return agree_values(r, wa, wb, n, true);
}

// Rotation and rounding in one pass: rotary, then round_to_bf16, bit for bit; the source
// left alone. Heads of 10, and of 9 (a last dimension never rotated).
void rotary_to_bf16_cases(std::vector<OpCase>& t) {
  for (int64_t head_dim : {10, 9})
  for (double fraction : {0.5, 1.0, 0.0})
    t.push_back(make_case(cat("rotary_to_bf16 head ", head_dim, " fraction ", fraction),
                          {"rotary_to_bf16", "rotary", "round_to_bf16"}, kBf16Tol,
                          Products::kNone, false, [=](auto& r) {
      const int64_t batch = 2, n = 13, heads = 3;
      const int64_t count = batch * n * heads * head_dim;
      const RotarySpec spec = make_rotary_spec(head_dim, fraction, 131072.0);
      std::vector<double> cos_t, sin_t;
      make_rotary_tables(spec, 131072 - n, n, cos_t, sin_t);
      auto *cos_b = r.put(cos_t), *sin_b = r.put(sin_t);
      const std::vector<double> x = r.normal(count, 36);
      auto *src = r.put(x), *rotated = r.put(x);
      auto* dst = r.raw(std::vector<uint16_t>(size_t(count), 0x1234));
      r.ops.rotary_to_bf16(dst, src, batch, n, heads, head_dim, spec.bands, cos_b, sin_b);
      r.ops.rotary(rotated, batch, n, heads, head_dim, spec.bands, cos_b, sin_b, false);
      auto* want = r.raw(std::vector<uint16_t>(size_t(count), 0));
      r.ops.round_to_bf16(want, rotated, count);
      r.check(same_bits(r, dst, want, count), "not rotary, then round_to_bf16");
      auto* untouched = r.put(x);
      r.check(same_values(r, src, untouched, count), "the source changed");
      r.out("dst", widened(r, dst, count), count);
    }));
}

// The attention cases of tests/attention_cases.h with bfloat16 keys and values; and a
// cross-attention with every key kept, said so (AttentionShape::keeps_every_key), which a
// backend may read in place: there the contract holds on the CPU bit for bit, elsewhere
// within bfloat16's rounding.
void attention_bf16_cases(std::vector<OpCase>& t) {
  std::vector<testing_util::AttentionCase> cases;
  for (const testing_util::AttentionCase& ac : testing_util::attention_cases())
    if (ac.name == "cross" || ac.name == "self_causal" || ac.name == "rows_without_keys" ||
        ac.name == "few_queries_long" || ac.name == "heads_of_64")
      cases.push_back(ac);
  testing_util::AttentionCase all_kept;  // heads_of_64: 2 examples, cuDNN's shapes
  for (const testing_util::AttentionCase& ac : cases)
    if (ac.name == "heads_of_64") all_kept = ac;
  all_kept.name = "every_key_kept";
  all_kept.pad_fraction = 0;
  cases.push_back(all_kept);
  // One query per example over bfloat16 keys in several of the split kernel's blocks of
  // 256 (a decoding step over bf16 caches): read as they lie, the float32 kernel's numbers
  // on the widened ones, bit for bit.
  cases.push_back({"one_query", 3, 1, 1000, 4, 32, 900, 0.2, 0});
  for (const testing_util::AttentionCase& ac : cases) {
    const bool every_key = ac.name == "every_key_kept";
    for (bool backward : {false, true}) {
      const std::string op = backward ? "attention_backward_bf16_kv" : "attention_forward_bf16_kv";
      t.push_back(make_case(cat(op, " ", ac.name), {op, "round_to_bf16"}, kBf16Tol,
                            Products::kAttention, false, [=](auto& r) {
        const bool close = every_key && std::string(r.ops.name()) != "cpu";
        const testing_util::AttentionData d = testing_util::make_attention_data(ac, 41);
        AttentionShape s = d.shape();
        s.q_pos = r.raw(d.q_pos);
        s.k_pos = r.raw(d.k_pos);
        s.k_keep = ac.use_keep ? r.raw(d.keep) : nullptr;
        s.keeps_every_key = every_key;
        auto as_double = [](const std::vector<float>& v) {
          return std::vector<double>(v.begin(), v.end());
        };
        const int64_t nq = int64_t(d.q.size()), nk = int64_t(d.k.size());
        const int64_t stats = s.batch * s.heads * s.nq;
        auto* q = r.put(as_double(d.q));
        auto *kt = r.put(as_double(d.k)), *vt = r.put(as_double(d.v));
        auto* k = r.raw(std::vector<uint16_t>(size_t(nk), 0));
        auto* v = r.raw(std::vector<uint16_t>(size_t(nk), 0));
        r.ops.round_to_bf16(k, kt, nk);
        r.ops.round_to_bf16(v, vt, nk);
        // The contract, through the T operations on the widened keys and values.
        auto *kw = widened(r, k, nk), *vw = widened(r, v, nk);
        auto *o = r.filled(nq, 0), *lse = r.filled(stats, 0);
        auto *o_t = r.filled(nq, 0), *lse_t = r.filled(stats, 0);
        r.ops.attention_forward(s, q, kw, vw, o_t, lse_t);
        if (!backward) {
          r.ops.attention_forward_bf16_kv(s, q, k, v, o, lse);
          r.check(agree_values(r, o, o_t, nq, close) && agree_values(r, lse, lse_t, stats, close),
                  "not attention_forward on the widened keys and values");
          r.product("o", o, nq);
          r.product("lse", lse, stats);
          return;
        }
        auto* d_o = r.put(as_double(d.d_o));
        auto *dq = r.filled(nq, 7), *dq_t = r.filled(nq, 7);
        auto *dk_t = r.filled(nk, 7), *dv_t = r.filled(nk, 7);
        auto* dk = r.raw(std::vector<uint16_t>(size_t(nk), 0x1234));
        auto* dv = r.raw(std::vector<uint16_t>(size_t(nk), 0x1234));
        r.ops.attention_backward(s, q, kw, vw, o_t, d_o, lse_t, dq_t, dk_t, dv_t);
        r.ops.attention_backward_bf16_kv(s, q, k, v, o_t, d_o, lse_t, dq, dk, dv);
        auto* dk_want = r.raw(std::vector<uint16_t>(size_t(nk), 0));
        auto* dv_want = r.raw(std::vector<uint16_t>(size_t(nk), 0));
        r.ops.round_to_bf16(dk_want, dk_t, nk);
        r.ops.round_to_bf16(dv_want, dv_t, nk);
        r.check(agree_values(r, dq, dq_t, nq, close) && agree_bits(r, dk, dk_want, nk, close) &&
                    agree_bits(r, dv, dv_want, nk, close),
                "not attention_backward on the widened keys and values, its dk and dv rounded");
        r.product("dq", dq, nq);
        r.product("dk", widened(r, dk, nk), nk);
        r.product("dv", widened(r, dv, nk), nk);
      }));
    }
  }
}

void linear_bf16_cases(std::vector<OpCase>& t) {
  struct Shape {
    const char* name;
    int64_t rows, in, out;
  };
  for (Shape sh : {Shape{"67x45x83", 67, 45, 83}, Shape{"tall 4160x64x64", 4160, 64, 64}}) {
    for (bool bias : {true, false})
      t.push_back(make_case(cat("linear_forward_bf16_x ", sh.name, bias ? "" : " no bias"),
                            {"linear_forward_bf16_x", "linear_forward"}, 1e-5,
                            Products::kMatmul, false, [=](auto& r) {
        uint16_t* x = random_bf16(r, sh.rows * sh.in, 16);
        auto* w = r.random(sh.out * sh.in, 17, 0.2);
        auto* b = r.random(sh.out, 18);
        auto *y = r.filled(sh.rows * sh.out, 9), *y_t = r.filled(sh.rows * sh.out, 9);
        r.ops.linear_forward_bf16_x(y, x, w, bias ? b : nullptr, sh.rows, sh.in, sh.out);
        r.ops.linear_forward(y_t, widened(r, x, sh.rows * sh.in), w, bias ? b : nullptr, sh.rows,
                             sh.in, sh.out);
        r.check(same_values(r, y, y_t, sh.rows * sh.out),
                "not linear_forward on the widened input");
        r.product("y", y, sh.rows * sh.out);
      }));
    // Stored in bfloat16: linear_forward_bf16_x, rounded. A GPU rounds the sums plus the
    // bias of its own product (cuBLASLt's epilogue), which may pick another algorithm than
    // the float32 output's: a sum near a midpoint may round to its other neighbour.
    for (bool bias : {true, false})
      t.push_back(make_case(cat("linear_forward_to_bf16 ", sh.name, bias ? "" : " no bias"),
                            {"linear_forward_to_bf16", "linear_forward_bf16_x", "round_to_bf16"},
                            kBf16Tol, Products::kMatmul, false, [=](auto& r) {
        const bool close = std::string(r.ops.name()) != "cpu";
        const int64_t n = sh.rows * sh.out;
        uint16_t* x = random_bf16(r, sh.rows * sh.in, 16);
        auto* w = r.random(sh.out * sh.in, 17, 0.2);
        auto* b = r.random(sh.out, 18);
        auto *staging = r.filled(n, 9), *y_t = r.filled(n, 9);
        auto* y = r.raw(std::vector<uint16_t>(size_t(n), 0x1234));
        r.ops.linear_forward_to_bf16(y, staging, x, w, bias ? b : nullptr, sh.rows, sh.in, sh.out);
        r.ops.linear_forward_bf16_x(y_t, x, w, bias ? b : nullptr, sh.rows, sh.in, sh.out);
        auto* want = r.raw(std::vector<uint16_t>(size_t(n), 0));
        r.ops.round_to_bf16(want, y_t, n);
        r.check(agree_bits(r, y, want, n, close), "not linear_forward_bf16_x, rounded");
        r.product("y", widened(r, y, n), n);
      }));
    for (int mode : {0, 1, 2})
      t.push_back(make_case(cat("linear_backward_bf16 ", sh.name,
                                mode == 0 ? "" : mode == 1 ? " accumulate" : " dw only"),
                            {"linear_backward_bf16", "linear_backward"}, 1e-5,
                            Products::kMatmul, false, [=](auto& r) {
        const int64_t rows = sh.rows, in = sh.in, out = sh.out;
        uint16_t* x = random_bf16(r, rows * in, 19);
        auto* w = r.random(out * in, 20, 0.2);
        uint16_t* dy = random_bf16(r, rows * out, 21);
        auto *xw = widened(r, x, rows * in), *dyw = widened(r, dy, rows * out);
        auto *dx = r.random(rows * in, 22), *dx_t = r.random(rows * in, 22);
        auto *dw = r.random(out * in, 23), *dw_t = r.random(out * in, 23);
        auto *db = r.random(out, 24), *db_t = r.random(out, 24);
        r.ops.linear_backward_bf16(mode == 2 ? nullptr : dx, mode == 1, dw,
                                   mode == 2 ? nullptr : db, dy, x, w, rows, in, out);
        r.ops.linear_backward(mode == 2 ? nullptr : dx_t, mode == 1, dw_t,
                              mode == 2 ? nullptr : db_t, dyw, xw, w, rows, in, out);
        r.check(same_values(r, dx, dx_t, rows * in) && same_values(r, dw, dw_t, out * in) &&
                    same_values(r, db, db_t, out),
                "not linear_backward on the widened input and output gradient");
        r.product("dx", dx, rows * in);
        r.product("dw", dw, out * in);
        r.out("db", db, out);
      }));
  }
}

// LN with its output rounded: the T LayerNorm, rounded once; mean and rstd its own.
void layernorm_bf16_cases(std::vector<OpCase>& t) {
  for (int64_t d : {300, 1024})
    t.push_back(make_case(cat("layernorm_forward_bf16 133x", d),
                          {"layernorm_forward_bf16", "layernorm_forward", "round_to_bf16"},
                          kBf16Tol, Products::kNone, false, [=](auto& r) {
      const int64_t rows = 133, n = rows * d;
      std::vector<double> x = r.normal(n, 28, 2.0), w = r.normal(d, 29, 0.3);
      for (double& v : x) v = double(float(v + 0.5));
      for (double& v : w) v = double(float(v + 1.0));
      auto *xb = r.put(x), *wb = r.put(w), *b = r.random(d, 30);
      auto* y = r.raw(std::vector<uint16_t>(size_t(n), 0x1234));
      auto *mean = r.filled(rows, 0), *rstd = r.filled(rows, 0);
      auto *y_t = r.filled(n, 0), *mean_t = r.filled(rows, 0), *rstd_t = r.filled(rows, 0);
      r.ops.layernorm_forward_bf16(y, mean, rstd, xb, wb, b, rows, d, kLayerNormEps);
      r.ops.layernorm_forward(y_t, mean_t, rstd_t, xb, wb, b, rows, d, kLayerNormEps);
      auto* want = r.raw(std::vector<uint16_t>(size_t(n), 0));
      r.ops.round_to_bf16(want, y_t, n);
      r.check(same_bits(r, y, want, n) && same_values(r, mean, mean_t, rows) &&
                  same_values(r, rstd, rstd_t, rows),
              "not layernorm_forward, its output rounded");
      r.out("y", widened(r, y, n), n);
      r.out("mean", mean, rows);
      r.out("rstd", rstd, rows);
    }));
}

// LN_kv of the embeddings without them (2 examples of 301 ids, 305 apart): the embedding
// rows gathered, then the LayerNorm, bit for bit, forward (rounded) and backward.
void embedding_layernorm_cases(std::vector<OpCase>& t) {
  for (bool backward : {false, true}) {
    const std::string op =
        backward ? "embedding_layernorm_backward" : "embedding_layernorm_forward_bf16";
    t.push_back(make_case(cat(op, " 2x301"),
                          {op, "embedding_forward", backward ? "layernorm_backward"
                                                              : "layernorm_forward_bf16"},
                          backward ? 1e-5 : kBf16Tol, Products::kNone, false, [=](auto& r) {
      const int64_t batch = 2, n = 301, stride = 305, V = 37, d = 96, rows = batch * n;
      std::vector<int32_t> ids(size_t(batch * stride), -1);  // the gaps: not ids
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t j = 0; j < n; ++j) ids[size_t(b * stride + j)] = int32_t((j * 7 + b) % V);
      const std::vector<double> table = r.normal(V * d, 37, 2.0);
      std::vector<double> w = r.normal(d, 38, 0.3);
      for (double& v : w) v = double(float(v + 1.0));
      auto *gids = r.raw(ids), *gtable = r.put(table), *gw = r.put(w), *gb = r.random(d, 39);
      auto* h = r.filled(rows * d, 0);
      for (int64_t b = 0; b < batch; ++b)
        r.ops.embedding_forward(h + b * n * d, gids + b * stride, gtable, n, d);
      auto *mean = r.filled(rows, 0), *rstd = r.filled(rows, 0);
      auto *mean_t = r.filled(rows, 0), *rstd_t = r.filled(rows, 0);
      auto* y = r.raw(std::vector<uint16_t>(size_t(rows * d), 0x1234));
      auto* y_t = r.raw(std::vector<uint16_t>(size_t(rows * d), 0));
      if (!backward) {
        r.ops.embedding_layernorm_forward_bf16(y, mean, rstd, gids, batch, n, stride, gtable, gw,
                                               gb, d, kLayerNormEps);
        r.ops.layernorm_forward_bf16(y_t, mean_t, rstd_t, h, gw, gb, rows, d, kLayerNormEps);
        r.check(same_bits(r, y, y_t, rows * d) && same_values(r, mean, mean_t, rows) &&
                    same_values(r, rstd, rstd_t, rows),
                "not the LayerNorm of the gathered embeddings");
        r.out("y", widened(r, y, rows * d), rows * d);
        r.out("mean", mean, rows);
        r.out("rstd", rstd, rows);
        return;
      }
      r.ops.layernorm_forward_bf16(y_t, mean, rstd, h, gw, gb, rows, d, kLayerNormEps);
      auto* dy = r.random(rows * d, 40);
      auto *dx = r.random(rows * d, 41), *dx_t = r.random(rows * d, 42);
      auto *dw = r.random(d, 43), *db = r.random(d, 44);
      auto *dw_t = r.random(d, 43), *db_t = r.random(d, 44);
      r.ops.embedding_layernorm_backward(dx, dw, db, dy, gids, batch, n, stride, gtable, mean,
                                         rstd, gw, d);
      r.ops.layernorm_backward(dx_t, false, dw_t, db_t, dy, h, mean, rstd, gw, rows, d);
      r.check(same_values(r, dx, dx_t, rows * d) && same_values(r, dw, dw_t, d) &&
                  same_values(r, db, db_t, d),
              "not the LayerNorm backward of the gathered embeddings");
      r.out("dx", dx, rows * d);
      r.out("dw", dw, d);
      r.out("db", db, d);
    }));
  }
}

}  // namespace

void bf16_storage_cases(std::vector<OpCase>& t) {
  rounding_cases(t);
  rotary_bf16_cases(t);
  rotary_to_bf16_cases(t);
  attention_bf16_cases(t);
  linear_bf16_cases(t);
  layernorm_bf16_cases(t);
  embedding_layernorm_cases(t);
}

}  // namespace par::op_parity
