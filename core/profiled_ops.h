// An Ops decorator that times every call of the backend it wraps, by op name. `par bench
// --profile` uses it to show where a training step's time goes. The wrapped backend is
// synchronized after each call, so asynchronous (GPU) work is charged to its own op.
#pragma once

#include <chrono>
#include <map>
#include <string>

#include "core/ops.h"

namespace par {

struct OpTime {
  double seconds = 0;
  int64_t calls = 0;
};

template <typename T>
class ProfiledOps final : public Ops<T> {
 public:
  explicit ProfiledOps(Ops<T>& inner) : inner_(inner) {}
  const std::map<std::string, OpTime>& times() const { return times_; }
  void reset() { times_.clear(); }
  const char* name() const override { return inner_.name(); }

  void* allocate(size_t bytes) override { return inner_.allocate(bytes); }
  void deallocate(void* p) override { inner_.deallocate(p); }
  void upload(void* d, const void* s, size_t n) override { timed("upload", [&] { inner_.upload(d, s, n); }); }
  void download(void* d, const void* s, size_t n) override { timed("download", [&] { inner_.download(d, s, n); }); }
  void synchronize() override { inner_.synchronize(); }

  void fill(T* x, int64_t n, T v) override { timed("fill", [&] { inner_.fill(x, n, v); }); }
  void copy(T* d, const T* s, int64_t n) override { timed("copy", [&] { inner_.copy(d, s, n); }); }
  void add(T* y, const T* x, int64_t n) override { timed("add", [&] { inner_.add(y, x, n); }); }
  void scale(T* x, int64_t n, double s) override { timed("scale", [&] { inner_.scale(x, n, s); }); }
  void copy_blocks(T* d, int64_t ds, const T* s, int64_t ss, int64_t b, int64_t c, bool acc) override {
    timed("copy_blocks", [&] { inner_.copy_blocks(d, ds, s, ss, b, c, acc); });
  }
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
            const T* b, int64_t ldb, T beta, T* c, int64_t ldc) override {
    timed("gemm", [&] { inner_.gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); });
  }
  void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t rows, int64_t in,
                      int64_t out) override {
    timed(rows > 4096 ? "linear_forward (inputs)" : "linear_forward (latents)",
          [&] { inner_.linear_forward(y, x, w, b, rows, in, out); });
  }
  void linear_backward(T* dx, bool acc, T* dw, T* db, const T* dy, const T* x, const T* w,
                       int64_t rows, int64_t in, int64_t out) override {
    timed(rows > 4096 ? "linear_backward (inputs)" : "linear_backward (latents)",
          [&] { inner_.linear_backward(dx, acc, dw, db, dy, x, w, rows, in, out); });
  }
  void embedding_forward(T* h, const int32_t* ids, const T* t, int64_t rows, int64_t d) override {
    timed("embedding_forward", [&] { inner_.embedding_forward(h, ids, t, rows, d); });
  }
  void embedding_backward(T* dt, const int32_t* ids, const T* dh, int64_t rows, int64_t d) override {
    timed("embedding_backward", [&] { inner_.embedding_backward(dt, ids, dh, rows, d); });
  }
  void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t rows,
                         int64_t d, double eps) override {
    timed("layernorm_forward", [&] { inner_.layernorm_forward(y, mean, rstd, x, w, b, rows, d, eps); });
  }
  void layernorm_backward(T* dx, bool acc, T* dw, T* db, const T* dy, const T* x, const T* mean,
                          const T* rstd, const T* w, int64_t rows, int64_t d) override {
    timed("layernorm_backward",
          [&] { inner_.layernorm_backward(dx, acc, dw, db, dy, x, mean, rstd, w, rows, d); });
  }
  void rotary(T* x, int64_t batch, int64_t n, int64_t heads, int64_t hd, int64_t bands,
              const T* c, const T* s, bool inverse) override {
    timed("rotary", [&] { inner_.rotary(x, batch, n, heads, hd, bands, c, s, inverse); });
  }
  void sqrelu_forward(T* y, const T* x, int64_t n) override {
    timed("sqrelu", [&] { inner_.sqrelu_forward(y, x, n); });
  }
  void sqrelu_backward(T* dx, const T* dy, const T* x, int64_t n) override {
    timed("sqrelu", [&] { inner_.sqrelu_backward(dx, dy, x, n); });
  }
  void dropout(T* y, const T* x, int64_t batch, int64_t per, double p, const DropoutKey& key,
               uint64_t base) override {
    timed("dropout", [&] { inner_.dropout(y, x, batch, per, p, key, base); });
  }
  void key_keep_mask(uint8_t* keep, const int32_t* tokens, int64_t batch, int64_t n, int64_t stride,
                     double p, const DropoutKey& key, uint64_t base, int64_t pos_base) override {
    timed("key_keep_mask",
          [&] { inner_.key_keep_mask(keep, tokens, batch, n, stride, p, key, base, pos_base); });
  }
  void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o,
                         T* lse) override {
    timed(s.nk > 4096 ? "attention_forward (cross)" : "attention_forward (latents)",
          [&] { inner_.attention_forward(s, q, k, v, o, lse); });
  }
  void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                          const T* d_o, const T* lse, T* dq, T* dk, T* dv) override {
    timed(s.nk > 4096 ? "attention_backward (cross)" : "attention_backward (latents)",
          [&] { inner_.attention_backward(s, q, k, v, o, d_o, lse, dq, dk, dv); });
  }
  bool token_attention_forward(const TokenAttentionShape& s, const T* q, const T* kt,
                               const T* vt, const T* cos, const T* sin, T* o) override {
    bool done = false;
    timed("token_attention_forward",
          [&] { done = inner_.token_attention_forward(s, q, kt, vt, cos, sin, o); });
    return done;
  }
  void attention_merge_scale(T* o, T* lse, const T* m, int64_t b, int64_t nq, int64_t h,
                             int64_t hd) override {
    timed("attention_merge", [&] { inner_.attention_merge_scale(o, lse, m, b, nq, h, hd); });
  }
  void attention_merge_finish(T* o, T* lse, const T* m, int64_t b, int64_t nq, int64_t h,
                              int64_t hd) override {
    timed("attention_merge", [&] { inner_.attention_merge_finish(o, lse, m, b, nq, h, hd); });
  }
  void cross_entropy_forward(T* ce, T* lse, const T* logits, const int32_t* t, int64_t rows,
                             int64_t vocab) override {
    timed("cross_entropy", [&] { inner_.cross_entropy_forward(ce, lse, logits, t, rows, vocab); });
  }
  void cross_entropy_backward(T* d, const T* logits, const T* lse, const int32_t* t, int64_t rows,
                              int64_t vocab, double scale, double z) override {
    timed("cross_entropy",
          [&] { inner_.cross_entropy_backward(d, logits, lse, t, rows, vocab, scale, z); });
  }
  double sum_squares(const T* x, int64_t n) override {
    double r = 0;
    timed("sum_squares", [&] { r = inner_.sum_squares(x, n); });
    return r;
  }
  void adam_update_spans(T* p, T* m, T* v, const T* g, const AdamSpan* spans, int64_t count,
                         const AdamStep& s) override {
    timed("adam_update", [&] { inner_.adam_update_spans(p, m, v, g, spans, count, s); });
  }
  void adam_update(T* p, T* m, T* v, const T* g, int64_t n, const AdamStep& s) override {
    timed("adam_update", [&] { inner_.adam_update(p, m, v, g, n, s); });
  }

 private:
  template <typename F>
  void timed(const char* op, F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    inner_.synchronize();
    OpTime& t = times_[op];
    t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++t.calls;
  }

  Ops<T>& inner_;
  std::map<std::string, OpTime> times_;
};

}  // namespace par
