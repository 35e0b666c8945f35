// The cases of the parity table (tests/op_cases.h): every operation of core/ops.h, on odd
// sizes (not multiples of a warp or a vector), batch > 1, both values of every flag, PAD
// and dropped keys, rows that see no key, and the edge sizes (0, 1) where an operation
// takes them.
#include "tests/op_cases.h"

#include "tests/op_case_run.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>

#include "core/constants.h"
#include "core/error.h"
#include "core/philox.h"
#include "core/rotary.h"
#include "core/token_groups.h"
#include "tests/attention_cases.h"
#include "tests/test_util.h"

namespace par::op_parity {

namespace {

void memory_cases(std::vector<OpCase>& t) {
  t.push_back(make_case("memory round trip", {"allocate", "upload", "synchronize", "download",
                                              "deallocate"},
                        0, Products::kNone, true, [](auto& r) {
    std::vector<uint8_t> bytes(1000003);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = uint8_t(i * 7919u >> 3);
    void* p = r.ops.allocate(bytes.size());
    r.ops.upload(p, bytes.data(), bytes.size());
    r.ops.synchronize();
    std::vector<uint8_t> back(bytes.size());
    r.ops.download(back.data(), p, back.size());
    r.check(back == bytes, "the bytes downloaded differ from those uploaded");
    r.ops.deallocate(p);
    void* empty = r.ops.allocate(0);  // a valid pointer, as for any size
    r.check(empty != nullptr, "allocate(0) gave null");
    r.ops.deallocate(empty);
    r.ops.deallocate(nullptr);
    r.value("bytes", double(back.size()));
  }));
}

void elementwise_cases(std::vector<OpCase>& t) {
  const int64_t n = 10007;
  t.push_back(make_case("fill", {"fill"}, 0, Products::kNone, true, [=](auto& r) {
    using T = ValueOf<decltype(r)>;
    T* x = r.random(n, 1);
    r.ops.fill(x, n, T(2.5));
    r.ops.fill(x + 7, 0, T(-1));  // nothing
    r.out("x", x, n);
  }));
  t.push_back(make_case("copy", {"copy"}, 0, Products::kNone, true, [=](auto& r) {
    auto* x = r.random(n, 2);
    auto* y = r.random(n, 3);
    r.ops.copy(y, x, n - 5);
    r.out("y", y, n);
  }));
  t.push_back(make_case("add", {"add"}, 1e-7, Products::kNone, true, [=](auto& r) {
    auto* x = r.random(n, 4);
    auto* y = r.random(n, 5);
    r.ops.add(y, x, n);
    r.out("y", y, n);
  }));
  t.push_back(make_case("scale", {"scale"}, 1e-7, Products::kNone, true, [=](auto& r) {
    auto* x = r.random(n, 6);
    r.ops.scale(x, n, -0.37);
    r.out("x", x, n);
  }));
  // A step captured three times: twice under one key (CUDA: recorded, then the kept graph
  // updated in place), then under another; each capture's work runs, in order.
  t.push_back(make_case("begin_capture end_capture", {"begin_capture", "end_capture"}, 1e-7,
                        Products::kNone, true, [=](auto& r) {
    auto* x = r.random(n, 61);
    auto* y = r.random(n, 62);
    auto* z = r.filled(n, 0);
    for (int round = 0; round < 3; ++round) {
      r.ops.begin_capture();
      r.ops.add(y, x, n);
      r.ops.copy(z, y, n);
      r.ops.scale(z, n, 0.5);
      r.ops.end_capture(round < 2 ? 7 : 8);
    }
    r.out("y", y, n);
    r.out("z", z, n);
  }));
  // A capture whose work failed, discarded; the same work then given as it is. The work is
  // idempotent: the CPU has run it once already, CUDA has launched none of it.
  t.push_back(make_case("abort_capture", {"abort_capture"}, 1e-7, Products::kNone, true,
                        [=](auto& r) {
    auto* x = r.random(n, 65);
    auto* z = r.filled(n, 0);
    r.ops.abort_capture();  // without a capture: nothing to do
    for (int round = 0; round < 2; ++round) {
      if (round == 0) r.ops.begin_capture();
      r.ops.copy(z, x, n);
      r.ops.scale(z, n, 0.5);
      if (round == 0) r.ops.abort_capture();
    }
    r.out("z", z, n);
  }));
  // A step captured once and replayed (where the backend keeps captures), else given again:
  // a replay runs the captured work on what the buffers hold now, so y gains x each round.
  t.push_back(make_case("replay_capture", {"replays_captures", "replay_capture"}, 1e-7,
                        Products::kNone, true, [=](auto& r) {
    auto* x = r.random(n, 63);
    auto* y = r.random(n, 64);
    auto* z = r.filled(n, 0);
    const bool keeps = r.ops.replays_captures();
    int replays = 0;
    for (int round = 0; round < 4; ++round) {
      if (round > 0 && r.ops.replay_capture(9)) {
        ++replays;
        continue;
      }
      r.ops.begin_capture();
      r.ops.add(y, x, n);
      r.ops.copy(z, y, n);
      r.ops.scale(z, n, 0.5);
      r.ops.end_capture(9);
    }
    EXPECT_EQ(replays, keeps ? 3 : 0);
    r.out("y", y, n);
    r.out("z", z, n);
  }));
  // 3 blocks of 101 elements between strides 130 and 117.
  for (bool acc : {false, true})
    t.push_back(make_case(acc ? "copy_blocks accumulate" : "copy_blocks", {"copy_blocks"}, 1e-7,
                          Products::kNone, true, [=](auto& r) {
      const int64_t batch = 3, count = 101, ds = 130, ss = 117;
      auto* src = r.random(batch * ss, 7);
      auto* dst = r.random(batch * ds, 8);
      r.ops.copy_blocks(dst, ds, src, ss, batch, count, acc);
      r.out("dst", dst, batch * ds);
    }));
  // 3 blocks of 40 elements into row 2 (rows of 13) of blocks 130 apart, from blocks 41 apart;
  // the row is in backend memory.
  t.push_back(make_case("copy_blocks_to_row", {"copy_blocks_to_row"}, 1e-7, Products::kNone,
                        true, [=](auto& r) {
    const int64_t batch = 3, count = 40, ds = 130, ss = 41, width = 13, row = 2;
    auto* src = r.random(batch * ss, 17);
    auto* dst = r.random(batch * ds, 18);
    r.ops.copy_blocks_to_row(dst, ds, r.raw(std::vector<int64_t>{row}), width, src, ss, batch,
                             count);
    r.out("dst", dst, batch * ds);
  }));
  t.push_back(make_case("sqrelu_forward", {"sqrelu_forward"}, 1e-7, Products::kNone, true,
                        [](auto& r) {
    const int64_t m = 4099;
    auto* x = r.random(m, 9);
    auto* y = r.filled(m, 7);
    r.ops.sqrelu_forward(y, x, m);
    r.out("y", y, m);
  }));
  t.push_back(make_case("sqrelu_backward", {"sqrelu_backward"}, 1e-7, Products::kNone, true,
                        [](auto& r) {
    const int64_t m = 4099;
    auto* x = r.random(m, 10);
    auto* dy = r.random(m, 11);
    auto* dx = r.filled(m, 7);
    r.ops.sqrelu_backward(dx, dy, x, m);
    r.out("dx", dx, m);
  }));
}

void matmul_cases(std::vector<OpCase>& t) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      t.push_back(make_case(cat("gemm", ta ? " A^T" : "", tb ? " B^T" : ""), {"gemm"}, 1e-5,
                            Products::kMatmul, false, [=](auto& r) {
        using T = ValueOf<decltype(r)>;
        const int64_t m = 37, n = 53, k = 29;
        const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
        auto* a = r.random((ta ? k : m) * lda, 12);
        auto* b = r.random((tb ? n : k) * ldb, 13);
        auto* c = r.random(m * ldc, 14);
        r.ops.gemm(ta, tb, m, n, k, T(0.75), a, lda, b, ldb, T(0.25), c, ldc);
        r.product("c", c, m * ldc);
      }));
  t.push_back(make_case("gemm k=0", {"gemm"}, 0, Products::kNone, true, [](auto& r) {
    using T = ValueOf<decltype(r)>;
    auto* c = r.random(4 * 6, 15);
    r.ops.gemm(false, false, 4, 6, 0, T(1), c, 1, c, 6, T(0.5), c, 6);  // C = beta C
    r.out("c", c, 4 * 6);
  }));
  // Latent-sized, few-row (decoding's K samples: the CPU's kernel for 1 to 16 rows) and
  // tall (the CPU's row-chunked kernels: rows >= 8 max(in, out) and rows * in * out >= 2^24)
  // layers.
  struct Shape {
    const char* name;
    int64_t rows, in, out;
  };
  for (Shape sh : {Shape{"67x45x83", 67, 45, 83}, Shape{"few 5x45x83", 5, 45, 83},
                   Shape{"tall 4160x64x64", 4160, 64, 64}}) {
    for (bool bias : {true, false})
      t.push_back(make_case(cat("linear_forward ", sh.name, bias ? "" : " no bias"),
                            {"linear_forward"}, 1e-5, Products::kMatmul, false, [=](auto& r) {
        auto* x = r.random(sh.rows * sh.in, 16);
        auto* w = r.random(sh.out * sh.in, 17, 0.2);
        auto* b = r.random(sh.out, 18);
        auto* y = r.filled(sh.rows * sh.out, 9);
        r.ops.linear_forward(y, x, w, bias ? b : nullptr, sh.rows, sh.in, sh.out);
        r.product("y", y, sh.rows * sh.out);
      }));
    // All gradients (written or added), and the weight gradient alone.
    for (int mode : {0, 1, 2})
      t.push_back(make_case(cat("linear_backward ", sh.name,
                                mode == 0 ? "" : mode == 1 ? " accumulate" : " dw only"),
                            {"linear_backward"}, 1e-5, Products::kMatmul, false, [=](auto& r) {
        const int64_t rows = sh.rows, in = sh.in, out = sh.out;
        auto* x = r.random(rows * in, 19);
        auto* w = r.random(out * in, 20, 0.2);
        auto* dy = r.random(rows * out, 21);
        auto* dx = r.random(rows * in, 22);
        auto* dw = r.random(out * in, 23);
        auto* db = r.random(out, 24);
        r.ops.linear_backward(mode == 2 ? nullptr : dx, mode == 1, dw, mode == 2 ? nullptr : db,
                              dy, x, w, rows, in, out);
        r.product("dx", dx, rows * in);
        r.product("dw", dw, out * in);
        r.out("db", db, out);  // a float32 column sum on every backend, not a product
      }));
  }
}

void embedding_cases(std::vector<OpCase>& t) {
  t.push_back(make_case("embedding_forward", {"embedding_forward"}, 0, Products::kNone, true,
                        [](auto& r) {
    const int64_t V = 37, d = 70, rows = 1001;
    std::vector<int32_t> ids(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i) ids[size_t(i)] = int32_t((i * 13 + i / 7) % V);
    auto* table = r.random(V * d, 25);
    auto* h = r.filled(rows * d, 3);
    r.ops.embedding_forward(h, r.raw(ids), table, rows, d);
    r.out("h", h, rows * d);
  }));
  // Ids spread over the vocabulary, one id for everything (a segment of thousands of rows),
  // a mix, one row; added onto a non-zero table.
  const int64_t V = 41;
  std::vector<std::pair<std::string, std::vector<int32_t>>> id_sets;
  {
    std::vector<int32_t> spread(1500), same(5000, 7), mixed(3333);
    for (size_t i = 0; i < spread.size(); ++i) spread[i] = int32_t((i * 31 + 5) % V);
    for (size_t i = 0; i < mixed.size(); ++i) mixed[i] = i % 3 == 0 ? int32_t(i % V) : 2;
    id_sets = {{"spread", spread}, {"one id", same}, {"mixed", mixed}, {"one row", {40}}};
  }
  for (const auto& [name, ids] : id_sets)
    t.push_back(make_case(cat("embedding_backward ", name), {"embedding_backward"}, 1e-5,
                          Products::kNone, false, [ids = ids, V](auto& r) {
      const int64_t d = 70, rows = int64_t(ids.size());
      auto* dh = r.random(rows * d, 26);
      auto* table = r.random(V * d, 27);
      r.ops.embedding_backward(table, r.raw(ids), dh, rows, d);
      r.out("dtable", table, V * d);
    }));
}

void norm_and_rotary_cases(std::vector<OpCase>& t) {
  struct Shape {
    int64_t rows, d;
  };
  for (Shape sh : {Shape{333, 300}, Shape{7, 8}, Shape{130, 1024}, Shape{65, 33}}) {
    // Inputs with a non-zero mean, weights near 1.
    auto inputs = [sh](auto& r) {
      std::vector<double> x = r.normal(sh.rows * sh.d, 28, 2.0), w = r.normal(sh.d, 29, 0.3);
      for (double& v : x) v = double(float(v + 0.5));
      for (double& v : w) v = double(float(v + 1.0));
      return std::pair(r.put(x), r.put(w));
    };
    t.push_back(make_case(cat("layernorm_forward ", sh.rows, "x", sh.d), {"layernorm_forward"},
                          1e-5, Products::kNone, false, [=](auto& r) {
      const auto [x, w] = inputs(r);
      auto* b = r.random(sh.d, 30);
      auto *y = r.filled(sh.rows * sh.d, 0), *mean = r.filled(sh.rows, 0);
      auto* rstd = r.filled(sh.rows, 0);
      r.ops.layernorm_forward(y, mean, rstd, x, w, b, sh.rows, sh.d, kLayerNormEps);
      r.out("y", y, sh.rows * sh.d);
      r.out("mean", mean, sh.rows);
      r.out("rstd", rstd, sh.rows);
    }));
    for (bool acc : {false, true})
      t.push_back(make_case(cat("layernorm_backward ", sh.rows, "x", sh.d, acc ? " accumulate" : ""),
                            {"layernorm_backward"}, 1e-5, Products::kNone, false, [=](auto& r) {
        const int64_t n = sh.rows * sh.d;
        const auto [x, w] = inputs(r);
        auto* b = r.random(sh.d, 30);
        auto *y = r.filled(n, 0), *mean = r.filled(sh.rows, 0), *rstd = r.filled(sh.rows, 0);
        r.ops.layernorm_forward(y, mean, rstd, x, w, b, sh.rows, sh.d, kLayerNormEps);
        auto *dy = r.random(n, 31), *dx = r.random(n, 32);
        auto *dw = r.random(sh.d, 33), *db = r.random(sh.d, 34);
        r.ops.layernorm_backward(dx, acc, dw, db, dy, x, mean, rstd, w, sh.rows, sh.d);
        r.out("dx", dx, n);
        r.out("dw", dw, sh.d);
        r.out("db", db, sh.d);
      }));
  }
  // Rows at the end of a 131072-token context (large angles), half the head rotated; and
  // no rotary at all.
  for (bool inverse : {false, true})
    for (double fraction : {0.5, 0.0})
      t.push_back(make_case(cat("rotary", inverse ? " inverse" : "", fraction == 0 ? " no bands" : ""),
                            {"rotary"}, 1e-6, Products::kNone, false, [=](auto& r) {
        const int64_t batch = 2, n = 13, heads = 3, head_dim = 10;
        const RotarySpec spec = make_rotary_spec(head_dim, fraction, 131072.0);
        std::vector<double> cos_t, sin_t;
        make_rotary_tables(spec, 131072 - n, n, cos_t, sin_t);
        auto* x = r.random(batch * n * heads * head_dim, 35);
        r.ops.rotary(x, batch, n, heads, head_dim, spec.bands, r.put(cos_t), r.put(sin_t),
                     inverse);
        r.out("x", x, batch * n * heads * head_dim);
      }));
}

void dropout_cases(std::vector<OpCase>& t) {
  const DropoutKey key{0x1234567890abcdefull, 17, DropSite::layer_mlp(2)};
  for (double p : {0.0, 0.1, 0.5})
    for (bool in_place : {false, true})
      t.push_back(make_case(cat("dropout p=", p, in_place ? " in place" : ""), {"dropout"}, 1e-7,
                            Products::kNone, true, [=](auto& r) {
        const int64_t batch = 3, per = 1001;  // not a multiple of a Philox draw's 4 lanes
        auto* x = r.random(batch * per, 36);
        auto* y = in_place ? x : r.filled(batch * per, 7);
        r.ops.dropout(y, x, batch, per, p, key, 5);
        r.out("y", y, batch * per);
      }));
  for (double p : {0.0, 0.25})
    t.push_back(make_case(cat("key_keep_mask p=", p), {"key_keep_mask"}, 0, Products::kNone,
                          true, [=](auto& r) {
      const int64_t batch = 2, n = 777, stride = 800;
      std::vector<int32_t> tokens(static_cast<size_t>(batch * stride));
      for (size_t i = 0; i < tokens.size(); ++i)
        tokens[i] = (i * 2654435761u) % 11 < 2 ? kPadToken : int32_t(3 + i % 50);
      auto* keep = r.raw(std::vector<uint8_t>(size_t(batch * n), 7));
      r.ops.key_keep_mask(keep, r.raw(tokens), batch, n, stride, p,
                          DropoutKey{99, 4, DropSite::kCrossAttend}, 3, 1000);
      r.out("keep", keep, batch * n);
    }));
}

// The attention cases of tests/attention_cases.h; with the positions' first values unknown
// to the backend as well as known (AttentionShape::q_pos_first, k_pos_first).
void attention_cases(std::vector<OpCase>& t) {
  for (const testing_util::AttentionCase& ac : testing_util::attention_cases())
    for (bool backward : {false, true})
      for (bool known_first : {true, false}) {
        if (!known_first && ac.name != "cross" && ac.name != "self_causal") continue;
        const std::string op = backward ? "attention_backward" : "attention_forward";
        t.push_back(make_case(cat(op, " ", ac.name, known_first ? "" : " positions unknown"),
                              {op}, 3e-5, Products::kAttention, false, [=](auto& r) {
          const testing_util::AttentionData d = testing_util::make_attention_data(ac, 41);
          AttentionShape s = d.shape();
          s.q_pos = r.raw(d.q_pos);
          s.k_pos = r.raw(d.k_pos);
          s.k_keep = ac.use_keep ? r.raw(d.keep) : nullptr;
          if (!known_first) s.q_pos_first = s.k_pos_first = AttentionShape::kUnknownPosition;
          auto as_double = [](const std::vector<float>& v) {
            return std::vector<double>(v.begin(), v.end());
          };
          auto *q = r.put(as_double(d.q)), *k = r.put(as_double(d.k)), *v = r.put(as_double(d.v));
          const int64_t nq = int64_t(d.q.size()), nk = int64_t(d.k.size());
          const int64_t stats = s.batch * s.heads * s.nq;
          auto *o = r.filled(nq, 0), *lse = r.filled(stats, 0);
          r.ops.attention_forward(s, q, k, v, o, lse);
          if (!backward) {
            r.product("o", o, nq);
            r.product("lse", lse, stats);
            return;
          }
          auto* d_o = r.put(as_double(d.d_o));
          auto *dq = r.filled(nq, 7), *dk = r.filled(nk, 7), *dv = r.filled(nk, 7);
          r.ops.attention_backward(s, q, k, v, o, d_o, lse, dq, dk, dv);
          r.product("dq", dq, nq);
          r.product("dk", dk, nk);
          r.product("dv", dv, nk);
        }));
      }
}

// Queries over keys and values looked up by token (decoding's cross-attention), grouped
// by token, some PAD (left out of the groups), some before the first visible position. A
// backend without the kernel, or not sized for the shape, declines and must leave o alone.
struct TokenCase {
  std::string name;
  int64_t n = 300, nq = 1, heads = 2, head_dim = 16, vocab = 40;
  int64_t hidden = 100;    // keys before the first visible position, in per mille of n
  int64_t dominant = -1;   // a token that holds most keys (several work items), or none
  int64_t early_only = -1; // a token whose keys all precede the first visible position
  bool first_in_memory = false;  // first_position_at (and a wrong first_position)
};

// Keys at positions 1000 + j: every 9th PAD, else spread over the vocabulary, or 3 in 5
// of them `dominant`; `early_only` only among the hidden keys.
std::vector<int32_t> token_case_keys(const TokenCase& c, int64_t hidden) {
  std::vector<int32_t> tokens(static_cast<size_t>(c.n));
  for (int64_t j = 0; j < c.n; ++j) {
    int32_t t = int32_t((j * 17 + 3) % c.vocab);
    if (c.dominant >= 0 && j % 5 < 3) t = int32_t(c.dominant);
    if (t == c.early_only && j >= hidden) t = int32_t((t + 1) % c.vocab);
    if (c.early_only >= 0 && j == 0) t = int32_t(c.early_only);
    tokens[size_t(j)] = j % 9 == 4 ? kPadToken : t;
  }
  return tokens;
}

void token_attention_cases(std::vector<OpCase>& t) {
  std::vector<TokenCase> cases;
  for (int64_t n : {int64_t(300), int64_t(1)})
    for (int64_t nq : {int64_t(1), int64_t(3)})
      cases.push_back(TokenCase{cat("n=", n, " nq=", nq), n, nq, 2, 16, 40, n == 1 ? 0 : 100});
  // A token of 3000 keys (several work items), the first visible position inside groups,
  // a token whose keys are all hidden.
  cases.push_back(TokenCase{"n=5000 one token dominant", 5000, 3, 2, 16, 40, 100, 7, 11});
  // The same with the first visible position read from backend memory.
  cases.push_back(
      TokenCase{"n=5000 first position in memory", 5000, 3, 2, 16, 40, 100, 7, 11, true});
  // gpu-100m-131k's heads: 64 wide, half rotated, 16 bands; its vocabulary (most tokens
  // without a key here).
  cases.push_back(TokenCase{"n=3000 16 bands", 3000, 2, 4, 64, 259, 100, 5, 9});
  // 72 query-heads: several tiles of them, the last partial; 8 bands.
  cases.push_back(TokenCase{"n=2000 72 query-heads", 2000, 24, 3, 32, 40, 10, 3});
  // 6 bands: no kernel specialized for them. 5 and 1: the scores' sums by pairs of bands
  // with one band left over, and with no pair at all.
  cases.push_back(TokenCase{"n=700 6 bands", 700, 2, 2, 24, 40, 50});
  cases.push_back(TokenCase{"n=700 5 bands", 700, 2, 2, 20, 40, 50});
  cases.push_back(TokenCase{"n=300 1 band", 300, 2, 2, 4, 40, 50});
  // Every key before the first visible position.
  cases.push_back(TokenCase{"n=500 all hidden", 500, 2, 2, 16, 40, 1000});
  // 4400 query-heads: more than a GPU kernel may be sized for (it may decline).
  cases.push_back(TokenCase{"n=64 4400 query-heads", 64, 1100, 4, 8, 40, 100});
  for (const TokenCase& tc : cases) {
    t.push_back(make_case(cat("token_attention_forward ", tc.name), {"token_attention_forward"},
                          1e-5, Products::kNone, false, [=](auto& r) {
      const TokenCase& c = tc;
      const int64_t width = c.heads * c.head_dim, V = c.vocab, first = 1000;
      const int64_t hidden = c.n * c.hidden / 1000;
      const RotarySpec spec = make_rotary_spec(c.head_dim, 0.5, 4096.0);
      const std::vector<int32_t> tokens = token_case_keys(c, hidden);
      const TokenGroups<double> g = group_tokens<double>(tokens.data(), c.n, first, V, spec);
      TokenAttentionShape s{c.nq, c.heads, c.head_dim, spec.bands, V, r.raw(g.group), r.raw(g.pos),
                            g.stride, first + hidden, 1.0 / std::sqrt(double(c.head_dim))};
      if (c.first_in_memory) {
        s.first_position_at = r.raw(std::vector<int64_t>{s.first_position});
        s.first_position = 0;  // every key: a backend that read this would disagree
      }
      auto* o = r.filled(c.nq * width, 7);
      auto* lse = r.filled(c.nq * c.heads, 7);
      const bool done = r.ops.token_attention_forward(s, r.random(c.nq * width, 42), r.random(V * width, 43),
                                                      r.random(V * width, 44), r.put(g.cos),
                                                      r.put(g.sin), o, lse);
      r.result.declined = !done;
      const auto got = r.host(o, c.nq * width);
      if (!done) {
        r.check(std::all_of(got.begin(), got.end(), [](auto x) { return x == 7; }),
                "token_attention_forward declined but wrote o");
        return;
      }
      if (hidden >= c.n) {
        const auto l = r.host(lse, c.nq * c.heads);
        r.check(std::all_of(got.begin(), got.end(), [](auto x) { return x == 0; }) &&
                    std::all_of(l.begin(), l.end(), [](auto x) { return x == -INFINITY; }),
                "a query that sees no key must get o = 0 and lse = -inf");
      }
      r.out("o", o, c.nq * width);
      r.out("lse", lse, c.nq * c.heads);
    }));
    t.back().gpu_may_decline = tc.nq * tc.heads > 4096;  // kTokenMaxQueryHeads, kernels/cuda
  }
  // Each query also sees keys of its own (decoding's samples over their generated keys),
  // after the shared ones; query 1's all PAD, token 5 only among the own keys. A backend
  // that says it takes no such call must decline it without a write.
  t.push_back(make_case("token_attention_forward own keys",
                        {"token_attention_takes_own_keys", "token_attention_forward"}, 1e-5,
                        Products::kNone, false, [=](auto& r) {
    const TokenCase c{"own", 300, 3, 2, 16, 40, 100};
    const int64_t width = c.heads * c.head_dim, V = c.vocab, first = 1000, m = 250;
    const RotarySpec spec = make_rotary_spec(c.head_dim, 0.5, 4096.0);
    std::vector<int32_t> shared = token_case_keys(c, 0);
    for (int32_t& x : shared) x = x == 5 ? 6 : x;
    const TokenGroups<double> g = group_tokens<double>(shared.data(), c.n, first, V, spec);
    std::vector<std::vector<int32_t>> own_tokens(static_cast<size_t>(c.nq));
    for (int64_t i = 0; i < c.nq; ++i)
      for (int64_t j = 0; j < m; ++j)
        own_tokens[size_t(i)].push_back(i == 1 ? kPadToken : int32_t((j * 7 + i * 3) % 11));
    const TokenGroupBlocks<double> own =
        group_tokens_in_blocks<double>(own_tokens, first + c.n, V, spec);
    TokenAttentionShape s{c.nq, c.heads, c.head_dim, spec.bands, V, r.raw(g.group), r.raw(g.pos),
                          g.stride, first + 30, 1.0 / std::sqrt(double(c.head_dim))};
    s.own_group = r.raw(own.group);
    s.own_pos = r.raw(own.pos);
    s.own_stride = own.stride;
    s.own_cos = r.put(own.cos);
    s.own_sin = r.put(own.sin);
    const bool takes = r.ops.token_attention_takes_own_keys();
    auto* o = r.filled(c.nq * width, 7);
    auto* lse = r.filled(c.nq * c.heads, 7);
    const bool done = r.ops.token_attention_forward(
        s, r.random(c.nq * width, 42), r.random(V * width, 43), r.random(V * width, 44),
        r.put(g.cos), r.put(g.sin), o, lse);
    r.result.declined = !done;
    if (!done) {
      const auto got = r.host(o, c.nq * width);
      r.check(std::all_of(got.begin(), got.end(), [](auto x) { return x == 7; }),
              "token_attention_forward declined own keys but wrote o");
      return;
    }
    r.check(takes, "token_attention_forward took own keys, which its backend says it does not");
    r.out("o", o, c.nq * width);
    r.out("lse", lse, c.nq * c.heads);
  }));
  t.back().gpu_may_decline = true;  // the GPU takes no own keys (token_attention_takes_own_keys)
}

void merge_and_loss_cases(std::vector<OpCase>& t) {
  // Partial attention of one rank against the group's maxima; some slices saw no key.
  for (bool finish : {false, true}) {
    const std::string op = finish ? "attention_merge_finish" : "attention_merge_scale";
    t.push_back(make_case(op, {op}, 1e-6, Products::kNone, false, [=](auto& r) {
      const int64_t batch = 2, nq = 9, heads = 3, hd = 5;
      const int64_t stats = batch * heads * nq, n = batch * nq * heads * hd;
      std::vector<double> lse = r.normal(stats, 45), lse_max = r.normal(stats, 46);
      for (int64_t i = 0; i < stats; ++i) {
        if (i % 5 == 0) lse[size_t(i)] = finish ? 0.0 : -INFINITY;  // weight 0 / no key
        lse_max[size_t(i)] = std::max(lse_max[size_t(i)], lse[size_t(i)]);
        if (finish) lse[size_t(i)] = std::abs(lse[size_t(i)]);  // summed weights
      }
      auto *o = r.random(n, 47), *l = r.put(lse), *m = r.put(lse_max);
      if (finish) r.ops.attention_merge_finish(o, l, m, batch, nq, heads, hd);
      else r.ops.attention_merge_scale(o, l, m, batch, nq, heads, hd);
      r.out("o", o, n);
      r.out("lse", l, stats);
    }));
  }
  // Two parts of 12 rows laid out differently (2 examples of 6 queries against 12 of one,
  // and the other way), with rows where one part or both saw no key.
  for (bool swap : {false, true})
    t.push_back(make_case(cat("attention_merge_pair", swap ? " swapped" : ""),
                          {"attention_merge_pair"}, 1e-6, Products::kNone, false, [=](auto& r) {
      const int64_t heads = 3, hd = 5, rows = 12, stats = rows * heads, n = rows * heads * hd;
      const int64_t b1 = swap ? 12 : 2, q1 = rows / b1, b2 = swap ? 2 : 12, q2 = rows / b2;
      std::vector<double> l1 = r.normal(stats, 49, 3.0), l2 = r.normal(stats, 50, 3.0);
      // Entry i of each layout is the lse of a (row, head); the same entry index in both
      // names different pairs, so -inf lands on: some rows in a, others in b, a few in both.
      for (int64_t i = 0; i < stats; ++i) {
        if (i % 5 == 1 || i % 11 == 0) l1[size_t(i)] = -INFINITY;
        if (i % 7 == 2 || i % 11 == 0) l2[size_t(i)] = -INFINITY;
      }
      auto *o = r.random(n, 51), *o2 = r.random(n, 52);
      auto *la = r.put(l1), *lb = r.put(l2);
      r.ops.attention_merge_pair(o, la, b1, q1, o2, lb, b2, q2, heads, hd);
      r.out("o", o, n);
      r.out("lse", la, stats);
      r.out("o2", o2, n);
    }));
  // Rows with PAD targets; the backward with the z-loss.
  for (bool backward : {false, true}) {
    const std::string op = backward ? "cross_entropy_backward" : "cross_entropy_forward";
    t.push_back(make_case(op, {op}, 1e-6, Products::kNone, false, [=](auto& r) {
      const int64_t rows = 50, vocab = 259;
      std::vector<int32_t> targets(static_cast<size_t>(rows));
      for (int64_t i = 0; i < rows; ++i)
        targets[size_t(i)] = i % 7 == 3 ? kPadToken : int32_t((i * 37) % vocab);
      auto* logits = r.random(rows * vocab, 48, 3.0);
      auto* tg = r.raw(targets);
      auto *ce = r.filled(rows, 7), *lse = r.filled(rows, 7);
      r.ops.cross_entropy_forward(ce, lse, logits, tg, rows, vocab);
      if (!backward) {
        r.out("ce", ce, rows);
        r.out("lse", lse, rows);
        return;
      }
      auto* dl = r.filled(rows * vocab, 5);
      r.ops.cross_entropy_backward(dl, logits, lse, tg, rows, vocab, 1.0 / 43, kZLoss);
      r.out("dlogits", dl, rows * vocab);
    }));
  }
}

// The choice of core/token_choice.h over rows of logits (ids and u in host memory), with
// ties among the logits: greedy, temperature, top-k, top-p, and both limits at once.
void sampling_cases(std::vector<OpCase>& t) {
  struct Setting {
    const char* name;
    SamplingOptions opts;
  };
  const Setting settings[] = {{"greedy", {0.0, 0, 1.0}},
                              {"temperature 0.7", {0.7, 0, 1.0}},
                              {"top-k 5", {1.0, 5, 1.0}},
                              {"top-p 0.9", {1.0, 0, 0.9}},
                              {"top-k 40 top-p 0.5", {1.3, 40, 0.5}}};
  for (const Setting& s : settings)
    t.push_back(make_case(cat("sample_tokens ", s.name), {"sample_tokens"}, 0, Products::kNone,
                          true, [=](auto& r) {
      const int64_t rows = 37, vocab = 259;
      std::vector<double> logits = r.normal(rows * vocab, 54, 2.0);
      for (int64_t i = 0; i < rows * vocab; i += 11) logits[size_t(i)] = 1.5;  // ties
      std::vector<double> u(static_cast<size_t>(rows));
      for (int64_t i = 0; i < rows; ++i) u[size_t(i)] = (double(i) + 0.5) / double(rows);
      std::vector<int32_t> ids(static_cast<size_t>(rows), -1);
      r.ops.sample_tokens(ids.data(), r.put(logits), rows, vocab, s.opts, u.data());
      r.result.values.push_back({"ids", std::vector<double>(ids.begin(), ids.end()), false});
    }));
}

void optimizer_cases(std::vector<OpCase>& t) {
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(1000003), int64_t(3) << 20})
    t.push_back(make_case(cat("sum_squares n=", n), {"sum_squares"}, 1e-12, Products::kNone,
                          false, [=](auto& r) {
      r.value("sum", r.ops.sum_squares(r.random(n, 49), n));
    }));
  // In float, 1 - beta2 is 1 - 0.999f = 0.00099998713: the second moment is off by 1.3e-5
  // of itself from the first step on, so the tolerance is above that.
  const double adam_tol = 3e-5;
  t.push_back(make_case("adam_update", {"adam_update"}, adam_tol, Products::kNone, false, [=](auto& r) {
    const int64_t n = 5003;
    auto *p = r.random(n, 50), *g = r.random(n, 51, 0.1), *m = r.filled(n, 0), *v = r.filled(n, 0);
    for (const AdamStep& a : adam_steps()) r.ops.adam_update(p, m, v, g, n, a);
    r.out("param", p, n);
    r.out("m", m, n);
    r.out("v", v, n);
  }));
  // 300 spans (more than one launch's table on the GPU), with and without decay, and gaps
  // between them that must keep their values.
  t.push_back(make_case("adam_update_spans", {"adam_update_spans"}, adam_tol, Products::kNone, false,
                        [=](auto& r) {
    const int64_t n = 4099;
    std::vector<AdamSpan> spans;
    for (int64_t k = 0; k < 300; ++k) spans.push_back(AdamSpan{k * 13, k * 13 + 11, k % 3 != 0});
    const std::vector<double> p0 = r.normal(n, 52);
    auto *p = r.put(p0), *g = r.random(n, 53, 0.1), *m = r.filled(n, 0), *v = r.filled(n, 0);
    for (const AdamStep& a : adam_steps())
      r.ops.adam_update_spans(p, m, v, g, spans.data(), int64_t(spans.size()), a);
    const auto got = r.host(p, n);
    for (int64_t k = 0; k < 300; ++k)
      for (int64_t i = k * 13 + 11; i < k * 13 + 13 && i < n; ++i)
        r.check(double(got[size_t(i)]) == double(float(p0[size_t(i)])),
                cat("element ", i, " between spans changed"));
    r.out("param", p, n);
    r.out("m", m, n);
    r.out("v", v, n);
  }));
}

std::vector<OpCase> make_table() {
  std::vector<OpCase> t;
  memory_cases(t);
  elementwise_cases(t);
  matmul_cases(t);
  embedding_cases(t);
  norm_and_rotary_cases(t);
  dropout_cases(t);
  attention_cases(t);
  bf16_storage_cases(t);
  sampling_cases(t);
  token_attention_cases(t);
  merge_and_loss_cases(t);
  optimizer_cases(t);
  return t;
}

template <typename T>
Outputs run_recorded(const OpCase& c, Ops<T>& ops,
                     const std::function<Outputs(Ops<T>&)>& body) {
  RecordingOps<T> recording(ops);
  Outputs out = body(recording);
  const auto& called = recording.called();
  for (const std::string& op : c.ops)
    if (std::find(called.begin(), called.end(), op) == called.end())
      out.problems.push_back(cat("the case names ", op, " but does not call it"));
  return out;
}

}  // namespace

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> table = make_table();
  return table;
}

std::vector<AdamStep> adam_steps() {
  std::vector<AdamStep> steps;
  for (int64_t t = 1; t <= 3; ++t) {
    AdamStep a;
    a.lr = 1e-2;
    a.weight_decay = t == 2 ? 0.1 : 0.0;
    a.t = t;
    a.grad_scale = 0.7;
    steps.push_back(a);
  }
  return steps;
}

std::vector<std::string> listed_operations() {
  std::vector<std::string> names;
#define PAR_OPS_NAME(ret, op, params, args) names.push_back(#op);
  PAR_OPS_METHODS(PAR_OPS_NAME)
#undef PAR_OPS_NAME
  return names;
}

Outputs run_case(const OpCase& c, Ops<float>& ops) { return run_recorded(c, ops, c.run_float); }
Outputs run_case(const OpCase& c, Ops<double>& ops) { return run_recorded(c, ops, c.run_double); }

::testing::AssertionResult agree(const Outputs& got, const Outputs& want, double tol,
                                 double product_tol) {
  if (got.values.size() != want.values.size())
    return ::testing::AssertionFailure() << got.values.size() << " outputs, want "
                                         << want.values.size();
  std::ostringstream report;
  bool ok = true;
  for (size_t k = 0; k < want.values.size(); ++k) {
    const Outputs::Value &g = got.values[k], &w = want.values[k];
    if (g.name != w.name || g.data.size() != w.data.size()) {
      report << "output " << k << " is " << g.name << " [" << g.data.size() << "], want "
             << w.name << " [" << w.data.size() << "]; ";
      ok = false;
      continue;
    }
    const ::testing::AssertionResult r =
        testing_util::close(g.data, w.data, w.product ? product_tol : tol);
    if (!r) {
      report << w.name << ": " << r.message() << "; ";
      ok = false;
    }
  }
  if (ok) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << report.str();
}

::testing::AssertionResult identical(const Outputs& a, const Outputs& b) {
  if (a.values.size() != b.values.size())
    return ::testing::AssertionFailure() << "different outputs";
  for (size_t k = 0; k < a.values.size(); ++k) {
    const auto &x = a.values[k].data, &y = b.values[k].data;
    if (x.size() != y.size() ||
        (!x.empty() && std::memcmp(x.data(), y.data(), x.size() * sizeof(double)) != 0)) {
      size_t first = 0;
      while (first < std::min(x.size(), y.size()) &&
             std::memcmp(&x[first], &y[first], sizeof(double)) == 0)
        ++first;
      return ::testing::AssertionFailure() << a.values[k].name << " differs in its bits, first at "
                                           << first;
    }
  }
  return ::testing::AssertionSuccess();
}

std::string test_name(const std::string& case_name) {
  std::string s;
  for (char c : case_name) s += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return s;
}

}  // namespace par::op_parity
