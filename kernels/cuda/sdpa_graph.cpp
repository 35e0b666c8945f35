// The flash-attention graphs of sdpa_graph.h. The operations, their order, the types of
// the intermediate tensors and the masks' forms follow cudnn-frontend's composite SDPA
// nodes (forward and backward, with a padding mask, optionally a top-left causal mask,
// and the deterministic backward), since cuDNN fuses a graph into its flash kernel only
// when it recognizes that pattern.
#include "kernels/cuda/sdpa_graph.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace par::cuda::sdpa {

const Tensor& Graph::tensor(int64_t uid) const {
  for (const Tensor& t : tensors)
    if (t.uid == uid) return t;
  PAR_ASSERT(false, "sdpa graph: no tensor with uid ", uid);
}

std::vector<int64_t> Graph::bound_uids() const {
  std::vector<int64_t> uids;
  for (const Tensor& t : tensors)
    if (!t.is_virtual && !t.by_value) uids.push_back(t.uid);
  std::sort(uids.begin(), uids.end());
  return uids;
}

bool head_dim_supported(int64_t head_dim, int sm_major) {
  const int64_t most = sm_major >= 9 ? 256 : 128;
  return head_dim > 0 && head_dim % 8 == 0 && head_dim <= most;
}

std::string version_refusal(int64_t cudnn_version) {
  if (cudnn_version == 91000 || cudnn_version == 91001)
    return "cuDNN 9.10.0 and 9.10.1 have known bugs in bf16 flash attention (cudnn-frontend "
           "refuses them too): use another cuDNN 9 (PAR_CUDNN_LIBRARY)";
  return "";
}

namespace {

using Dim = std::vector<int64_t>;

// Broadcast of pointwise inputs, right-aligned.
Dim broadcast(const std::vector<Dim>& shapes) {
  size_t rank = 0;
  for (const Dim& s : shapes) rank = std::max(rank, s.size());
  Dim out(rank, 1);
  for (const Dim& s : shapes)
    for (size_t i = 0; i < s.size(); ++i) {
      const size_t o = rank - s.size() + i;
      if (s[i] != 1) {
        PAR_ASSERT(out[o] == 1 || out[o] == s[i], "sdpa graph: shapes do not broadcast");
        out[o] = s[i];
      }
    }
  return out;
}

Dim packed_strides(const Dim& dims) {
  Dim s(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) s[i - 1] = s[i] * dims[i];
  return s;
}

class Builder {
 public:
  explicit Builder(const Dims& d) : d_(d) {}

  void bound(int64_t uid, const char* name, Dim dims, Dim strides, DType type) {
    Tensor t;
    t.uid = uid;
    t.name = name;
    t.dims = std::move(dims);
    t.strides = std::move(strides);
    t.type = type;
    g_.tensors.push_back(std::move(t));
  }

  int64_t scalar(const char* name, float value) {
    Tensor t;
    t.uid = kFirstScalar + scalars_++;
    PAR_ASSERT(t.uid < kFirstVirtual, "sdpa graph: too many scalars");
    t.name = name;
    // A scalar has the rank of the tensors it meets (cuDNN wants equal ranks).
    t.dims = t.strides = {1, 1, 1, 1};
    t.by_value = true;
    t.value = value;
    g_.tensors.push_back(t);
    return t.uid;
  }

  int64_t virt(const std::string& name, Dim dims, Dim strides, DType type = DType::kFloat) {
    Tensor t;
    t.uid = kFirstVirtual + virtuals_++;
    t.name = name;
    t.dims = std::move(dims);
    t.strides = std::move(strides);
    t.type = type;
    t.is_virtual = true;
    g_.tensors.push_back(std::move(t));
    return t.uid;
  }

  // A pointwise operation; y = 0 makes a virtual output of the broadcast shape, with the
  // strides of the first input of that shape (as cudnn-frontend infers them).
  int64_t pointwise(const char* name, Pointwise mode, int64_t x, int64_t b = 0, int64_t t = 0,
                    int64_t y = 0, DType out_type = DType::kFloat,
                    DType compute = DType::kFloat, int64_t axis = -1) {
    if (y == 0) {
      std::vector<const Tensor*> in;
      for (int64_t u : {x, b, t})
        if (u) in.push_back(&g_.tensor(u));
      std::vector<Dim> shapes;
      for (const Tensor* p : in) shapes.push_back(p->dims);
      const Dim dims = broadcast(shapes);
      Dim strides = packed_strides(dims);
      for (const Tensor* p : in)
        if (p->dims == dims) {
          strides = p->strides;
          break;
        }
      y = virt(name, dims, strides, out_type);
    }
    Op op;
    op.kind = Op::Kind::kPointwise;
    op.name = name;
    op.pointwise = mode;
    op.compute = compute;
    op.axis = axis;
    op.x = x, op.b = b, op.t = t, op.y = y;
    g_.ops.push_back(op);
    return y;
  }

  int64_t matmul(const char* name, int64_t a, int64_t b, int64_t c, int64_t m_override,
                 int64_t n_override, int64_t k_override, bool padded = false) {
    Op op;
    op.kind = Op::Kind::kMatmul;
    op.name = name;
    op.x = a, op.b = b, op.y = c;
    op.m_override = m_override, op.n_override = n_override, op.k_override = k_override;
    op.padded = padded;
    g_.ops.push_back(op);
    return c;
  }

  int64_t reduce(const char* name, Reduce mode, int64_t x, int64_t y) {
    Op op;
    op.kind = Op::Kind::kReduction;
    op.name = name;
    op.reduce = mode;
    op.x = x, op.y = y;
    g_.ops.push_back(op);
    return y;
  }

  int64_t reshape(const char* name, int64_t x, int64_t y) {
    Op op;
    op.kind = Op::Kind::kReshape;
    op.name = name;
    op.x = x, op.y = y;
    g_.ops.push_back(op);
    return y;
  }

  // Older cuDNN prefers the lowest float to -inf as the masked score.
  float masked() const {
    return d_.cudnn_version < 91000 ? std::numeric_limits<float>::lowest()
                                    : -std::numeric_limits<float>::infinity();
  }

  // Scores outside [seq_len_q, seq_len_kv] of their example become masked().
  int64_t padding_mask(int64_t s, const char* tag) {
    const std::string t(tag);
    const int64_t row = pointwise(("gen_row_" + t).c_str(), Pointwise::kGenIndex, s, 0, 0, 0,
                                  DType::kInt32, DType::kInt32, 2);
    const int64_t col = pointwise(("gen_col_" + t).c_str(), Pointwise::kGenIndex, s, 0, 0, 0,
                                  DType::kInt32, DType::kInt32, 3);
    const int64_t row_in = pointwise(("row_lt_sq_" + t).c_str(), Pointwise::kCmpLt, row,
                                     kSeqLenQ, 0, 0, DType::kBool, DType::kBool);
    const int64_t col_in = pointwise(("col_lt_skv_" + t).c_str(), Pointwise::kCmpLt, col,
                                     kSeqLenKV, 0, 0, DType::kBool, DType::kBool);
    const int64_t both = pointwise(("and_" + t).c_str(), Pointwise::kLogicalAnd, row_in, col_in,
                                   0, 0, DType::kBool, DType::kBool);
    return pointwise(("select_" + t).c_str(), Pointwise::kBinarySelect, s,
                     scalar("masked", masked()), both);
  }

  // Query i sees key j only if i >= j (the diagonal band's right bound 0, top-left).
  int64_t causal_mask(int64_t s) {
    const int64_t row = pointwise("gen_row_causal", Pointwise::kGenIndex, s, 0, 0, 0,
                                  DType::kInt32, DType::kFloat, 2);
    const int64_t col = pointwise("gen_col_causal", Pointwise::kGenIndex, s, 0, 0, 0,
                                  DType::kInt32, DType::kFloat, 3);
    const int64_t keep = pointwise("row_ge_col", Pointwise::kCmpGe, row, col, 0, 0,
                                   DType::kBool, DType::kBool);
    return pointwise("select_causal", Pointwise::kBinarySelect, s, scalar("masked", masked()),
                     keep);
  }

  // The bound tensors both directions share: Q, K^T, the sequence lengths, the statistics.
  void common_inputs() {
    const int64_t B = d_.batch, H = d_.heads, Sq = d_.nq, Skv = d_.nk, D = d_.head_dim;
    const int64_t ld = H * D;
    PAR_ASSERT(B > 0 && H > 0 && Sq > 0 && Skv > 0 && D > 0, "sdpa graph: empty shape");
    bound(kQ, "Q", {B, H, Sq, D}, {Sq * ld, D, ld, 1}, DType::kBF16);
    // cuDNN takes the first product's right operand transposed: K^T as [B, H, D, Skv].
    bound(kK, "K^T", {B, H, D, Skv}, {kv_stride(), D, 1, ld}, DType::kBF16);
    bound(kSeqLenQ, "seq_len_q", {B, 1, 1, 1}, {1, 1, 1, 1}, DType::kInt32);
    bound(kSeqLenKV, "seq_len_kv", {B, 1, 1, 1}, {1, 1, 1, 1}, DType::kInt32);
    bound(kStats, "stats", {B, H, Sq, 1}, {H * Sq, Sq, 1, 1}, DType::kFloat);
  }

  // From one example's keys (values, their gradients) to the next.
  int64_t kv_stride() const {
    return (d_.kv_example_rows > 0 ? d_.kv_example_rows : d_.nk) * d_.heads * d_.head_dim;
  }
  Dim score_dims() const { return {d_.batch, d_.heads, d_.nq, d_.nk}; }
  Dim score_strides() const {
    return {d_.heads * d_.nq * d_.nk, d_.nq * d_.nk, d_.nk, 1};
  }
  // [B, H, nk, nq] over the scores' memory: their transpose, for the products with P^T.
  Dim transposed_dims() const { return {d_.batch, d_.heads, d_.nk, d_.nq}; }
  Dim transposed_strides() const {
    return {d_.heads * d_.nq * d_.nk, d_.nq * d_.nk, 1, d_.nk};
  }
  Dim row_stat_dims() const { return {d_.batch, d_.heads, d_.nq, 1}; }
  Dim row_stat_strides() const { return {d_.heads * d_.nq, d_.nq, 1, 1}; }

  const Dims& dims() const { return d_; }
  Graph take() { return std::move(g_); }

 private:
  Dims d_;
  Graph g_;
  int64_t scalars_ = 0, virtuals_ = 0;
};

}  // namespace

Graph describe_forward(const Dims& d) {
  Builder g(d);
  g.common_inputs();
  const int64_t B = d.batch, H = d.heads, Sq = d.nq, Skv = d.nk, D = d.head_dim, ld = H * D;
  g.bound(kV, "V", {B, H, Skv, D}, {g.kv_stride(), D, ld, 1}, DType::kBF16);
  g.bound(kO, "O", {B, H, Sq, D}, {Sq * ld, D, ld, 1}, DType::kBF16);

  int64_t s = g.matmul("Q*K^T", kQ, kK, g.virt("S", g.score_dims(), g.score_strides()),
                       kSeqLenQ, kSeqLenKV, 0, /*padded=*/true);
  s = g.pointwise("scale", Pointwise::kMul, s, g.scalar("scale", float(d.scale)));
  s = g.padding_mask(s, "padding");
  if (d.causal) s = g.causal_mask(s);

  // Softmax, with its statistics max + log(sum) written out for the backward.
  const int64_t max = g.reduce("max", Reduce::kMax, s,
                               g.virt("max", g.row_stat_dims(), g.row_stat_strides()));
  const int64_t shifted = g.pointwise("sub_max", Pointwise::kSub, s, max);
  const int64_t e = g.pointwise("exp", Pointwise::kExp, shifted);
  const int64_t sum = g.reduce("sum", Reduce::kAdd, e,
                               g.virt("sum", g.row_stat_dims(), g.row_stat_strides()));
  const int64_t log_sum = g.pointwise("log", Pointwise::kLog, sum);
  g.pointwise("stats", Pointwise::kAdd, max, log_sum, 0, kStats);
  // The probabilities in the operands' type: the second product's A.
  const int64_t p = g.pointwise("probs", Pointwise::kDiv, e, sum, 0, 0, DType::kBF16);
  g.matmul("P*V", p, kV, kO, kSeqLenQ, 0, kSeqLenKV);
  return g.take();
}

Graph describe_backward(const Dims& d) {
  Builder g(d);
  g.common_inputs();
  const int64_t B = d.batch, H = d.heads, Sq = d.nq, Skv = d.nk, D = d.head_dim, ld = H * D;
  // The backward takes V transposed too ([B, H, D, Skv]), for dP = dO V^T.
  g.bound(kV, "V^T", {B, H, D, Skv}, {g.kv_stride(), D, 1, ld}, DType::kBF16);
  g.bound(kO, "O", {B, H, Sq, D}, {Sq * ld, D, ld, 1}, DType::kBF16);
  g.bound(kDO, "dO", {B, H, Sq, D}, {Sq * ld, D, ld, 1}, DType::kBF16);
  g.bound(kDQ, "dQ", {B, H, Sq, D}, {Sq * ld, D, ld, 1}, DType::kBF16);
  g.bound(kDK, "dK", {B, H, Skv, D}, {g.kv_stride(), D, ld, 1}, DType::kBF16);
  g.bound(kDV, "dV", {B, H, Skv, D}, {g.kv_stride(), D, ld, 1}, DType::kBF16);
  g.bound(kSoftmaxSum, "softmax_sum", g.row_stat_dims(), g.row_stat_strides(), DType::kFloat);

  // delta = rowsum(dO * O), the softmax backward's subtrahend.
  const int64_t prod = g.pointwise("dO*O", Pointwise::kMul, kDO, kO, 0,
                                   g.virt("dO*O", {B, H, Sq, D}, {H * Sq * D, Sq * D, ld, 1}));
  const int64_t rowsum = g.reduce("rowsum", Reduce::kAdd, prod,
                                  g.virt("rowsum", g.row_stat_dims(), g.row_stat_strides()));
  g.pointwise("softmax_sum", Pointwise::kMul, rowsum, g.scalar("one", 1.0f), 0, kSoftmaxSum);

  // P = exp(scale * Q K^T - stats), masked.
  int64_t s = g.matmul("Q*K^T", kQ, kK, g.virt("S", g.score_dims(), g.score_strides()),
                       kSeqLenQ, kSeqLenKV, 0);
  s = g.pointwise("scale", Pointwise::kMul, s, g.scalar("scale", float(d.scale)));
  s = g.padding_mask(s, "padding");
  s = g.pointwise("sub_stats", Pointwise::kSub, s, kStats);
  // cuDNN 9.0-9.9 needs the padding applied again once the statistics are subtracted.
  if (d.cudnn_version >= 90000 && d.cudnn_version < 91000) s = g.padding_mask(s, "padding2");
  if (d.causal) s = g.causal_mask(s);
  const int64_t p = g.pointwise("exp", Pointwise::kExp, s);

  // dV = P^T dO.
  const int64_t p_t = g.reshape(
      "P^T", p, g.virt("P^T", g.transposed_dims(), g.transposed_strides(), DType::kBF16));
  g.matmul("P^T*dO", p_t, kDO, kDV, kSeqLenKV, 0, kSeqLenQ);

  // dS = scale * P (dO V^T - delta).
  int64_t ds = g.matmul("dO*V^T", kDO, kV, g.virt("dP", g.score_dims(), g.score_strides()),
                        kSeqLenQ, kSeqLenKV, 0);
  ds = g.pointwise("sub_softmax_sum", Pointwise::kSub, ds, kSoftmaxSum);
  ds = g.pointwise("mul_probs", Pointwise::kMul, ds, p);
  ds = g.pointwise("scale_dS", Pointwise::kMul, ds, g.scalar("scale", float(d.scale)));

  // dK = dS^T Q.
  const int64_t ds_t = g.reshape(
      "dS^T", ds, g.virt("dS^T", g.transposed_dims(), g.transposed_strides(), DType::kBF16));
  g.matmul("dS^T*Q", ds_t, kQ, kDK, kSeqLenKV, 0, kSeqLenQ);

  // dQ = dS K. Straight into dQ: the deterministic kernels (no float accumulator updated
  // by atomics), so that a run repeats its bits. Through a float32 accumulator in global
  // memory and an identity into dQ: the kernels that add into it with atomics.
  const int64_t k = g.reshape("K", kK, g.virt("K", {B, H, Skv, D}, {g.kv_stride(), D, ld, 1}));
  if (d.deterministic) {
    g.matmul("dS*K", ds, k, kDQ, kSeqLenQ, 0, kSeqLenKV);
  } else {
    g.bound(kDQAccum, "dQ_accum", {B, H, Sq, D}, {H * Sq * D, Sq * D, D, 1}, DType::kFloat);
    g.matmul("dS*K", ds, k, kDQAccum, kSeqLenQ, 0, kSeqLenKV);
    g.pointwise("identity_dQ", Pointwise::kIdentity, kDQAccum, 0, 0, kDQ);
  }
  return g.take();
}

}  // namespace par::cuda::sdpa
