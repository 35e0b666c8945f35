// cuDNN's fused flash attention, forward and backward, as plain data: the tensors and the
// matmul / pointwise / reduction / reshape operations of the graph that cuDNN recognizes
// and runs as one flash-attention kernel (the same graph cudnn-frontend's SDPA node
// builds: Q K^T, scale, padding and causal masks as index comparisons and selects, a
// softmax written as max, exp, sum, log, divide, and the products with V).
//
// Why data: the description is pure C++, so the CPU tests can check it without a GPU --
// its structure, and its meaning, by evaluating it on small shapes against the reference
// attention (tests/cuda/sdpa_graph_interpreter.h). kernels/cuda/cudnn_graph.h turns a
// description into cuDNN backend descriptors. No CUDA or cuDNN header here.
//
// Layouts: Q, O, dQ are [batch, nq, heads*head_dim] rows (the model's layout; "BSHD"),
// K, V, dK, dV [batch, nk, heads*head_dim] (or the first nk rows of [batch, rows, ...]:
// Dims::kv_example_rows); the statistics [batch, heads, nq] (the
// log-sum-exp of the scaled scores, the layout of AttentionShape's lse). Q, K, V, O and the
// gradients are bfloat16; statistics float32; sequence lengths int32 [batch].
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace par::cuda::sdpa {

enum class DType { kFloat, kBF16, kInt32, kBool };

enum class Pointwise {
  kMul, kAdd, kSub, kDiv, kExp, kLog, kIdentity,
  kGenIndex,      // y[idx] = idx[axis]
  kCmpLt, kCmpGe,  // y = x < b, x >= b
  kLogicalAnd,
  kBinarySelect,  // y = t ? x : b
};

enum class Reduce { kMax, kAdd };  // over the dimensions where y has extent 1 and x not

// The tensors a call binds (its variant pack). Everything else is virtual (cuDNN keeps it
// on chip) or a by-value scalar.
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV,
  kSeqLenQ,       // int32 [batch]: queries per example (rows past it are padding)
  kSeqLenKV,      // int32 [batch]: keys per example
  kSoftmaxSum,    // float [batch, heads, nq]: the backward's rowsum(dO * O), scratch
  kDQAccum,       // float [batch, heads, nq, head_dim]: the backward's dQ as cuDNN adds it
                  // up (Dims::deterministic false), zeroed before the call, scratch
  kFirstScalar = 32,   // by-value scalars from here
  kFirstVirtual = 64,  // virtual tensors from here
};

struct Tensor {
  int64_t uid = 0;
  std::string name;
  std::vector<int64_t> dims, strides;
  DType type = DType::kFloat;
  bool is_virtual = false;
  bool by_value = false;
  float value = 0;  // the by-value scalar's value (float32); its dims are all 1
};

struct Op {
  enum class Kind { kMatmul, kPointwise, kReduction, kReshape } kind;
  std::string name;
  Pointwise pointwise = Pointwise::kIdentity;
  Reduce reduce = Reduce::kAdd;
  DType compute = DType::kFloat;
  int64_t axis = -1;  // kGenIndex
  // Pointwise: x, b (second input), t (select predicate) -> y. Matmul: x * b -> y (A, B,
  // C). Reduction and reshape: x -> y. 0 where unused.
  int64_t x = 0, b = 0, t = 0, y = 0;
  // Matmul: per-example extents of m, n, k (uids of int32 [batch, 1, 1, 1]), 0 for none;
  // entries of C outside [m, n] are the padding value when `padded`.
  int64_t m_override = 0, n_override = 0, k_override = 0;
  bool padded = false;
};

struct Graph {
  std::vector<Tensor> tensors;
  std::vector<Op> ops;
  const Tensor& tensor(int64_t uid) const;  // std::logic_error if absent
  // uids the caller must bind (non-virtual, not by value), ascending.
  std::vector<int64_t> bound_uids() const;
};

struct Dims {
  int64_t batch = 1, heads = 1, nq = 0, nk = 0, head_dim = 0;
  double scale = 1.0;
  // Query i sees key j only if j <= i (top-left diagonal), besides the padding: the
  // latent self-attention's mask.
  bool causal = false;
  // cuDNN's version (cudnnGetVersion(), e.g. 91400): the masks' -inf and one workaround
  // follow it as cudnn-frontend does.
  int64_t cudnn_version = 91900;
  // Rows from one example's keys to the next in K, V, dK and dV (0: nk, packed). More
  // where the call reads the first nk keys of the model's own [batch, rows, ld] tensors
  // in place.
  int64_t kv_example_rows = 0;
  // The backward's dQ: true, cuDNN's deterministic kernels, which write every score's
  // gradient to a workspace of deterministic_workspace_bytes() and multiply it by K in a
  // second pass; false, the kernels that add each key block's part of dQ into a float32
  // accumulator (kDQAccum) with atomics, whose order, so dQ's last bits, may change from
  // run to run (cudnn-frontend's default).
  bool deterministic = true;
};

// The workspace of cuDNN 9's deterministic backward: every score's gradient in bfloat16,
// the scores padded to tiles of 64 queries x 128 keys (as cuDNN 9.19's plans for sm_80 and
// sm_90 report; cudnn-frontend sizes the same buffer as B H Sq Skv bf16 values), 4 GiB for
// 16 heads of 1,024 queries over 130,049 keys.
// In double: quadratic in the sequence, it passes int64 for shapes the memory plan is asked
// about and refuses.
inline double deterministic_workspace_bytes(const Dims& d) {
  auto up = [](int64_t n, int64_t to) { return double((n + to - 1) / to * to); };
  return double(d.batch) * double(d.heads) * up(d.nq, 64) * up(d.nk, 128) * 2;
}

// Whether a backward takes the deterministic kernels: where their workspace is at most
// kDeterministicWorkspaceMax (the latent self-attention, small calls), not where it would
// rival the model itself (a long cross-attention), which would also cost two passes over
// it per call.
constexpr int64_t kDeterministicWorkspaceMax = int64_t(256) << 20;
inline bool backward_is_deterministic(const Dims& d, int64_t most = kDeterministicWorkspaceMax) {
  return deterministic_workspace_bytes(d) <= double(most);
}

// O and statistics of softmax(scale * Q K^T + masks) V for the queries i < seq_len_q[b]
// and keys j < seq_len_kv[b] of each example.
Graph describe_forward(const Dims& d);
// dQ, dK, dV from Q, K, V, O, dO and the statistics (which may be merged ones: the
// backward of each part of an attention split over keys); dQ as Dims::deterministic says.
Graph describe_backward(const Dims& d);

// Whether cuDNN's flash attention takes this head size (multiple of 8, at most 128 on
// sm_8x, 256 on sm_9x and later).
bool head_dim_supported(int64_t head_dim, int sm_major);

// Why cuDNN of this version (cudnnGetVersion()) must not run the SDPA graphs, or empty:
// 9.10.0 and 9.10.1 have known bugs in bf16 flash attention, forward and backward, which
// NVIDIA's cudnn-frontend refuses them for.
std::string version_refusal(int64_t cudnn_version);

}  // namespace par::cuda::sdpa
