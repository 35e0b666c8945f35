// The graph interpreter of sdpa_graph_interpreter.h.
#include "tests/cuda/sdpa_graph_interpreter.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>

namespace par::cuda_test {

namespace sdpa = cuda::sdpa;

double round_bf16(double x) {
  float f = float(x);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7F800000u) == 0x7F800000u) return f;  // inf, NaN
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  std::memcpy(&f, &u, 4);
  return f;
}

namespace {

using Index = std::vector<int64_t>;

Index packed(const Index& dims) {
  Index s(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) s[i - 1] = s[i] * dims[i];
  return s;
}

int64_t count(const Index& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// A tensor's memory and how its logical index addresses it.
struct Value {
  Index dims, strides;
  std::shared_ptr<std::vector<double>> mem;
  sdpa::DType type = sdpa::DType::kFloat;

  int64_t offset(const Index& idx) const {
    int64_t o = 0;
    for (size_t k = 0; k < idx.size(); ++k) o += idx[k] * strides[k];
    return o;
  }
  // Reads with right-aligned broadcasting from an index of a (possibly) higher rank.
  double get(const Index& idx) const {
    int64_t o = 0;
    const size_t shift = idx.size() - dims.size();
    for (size_t k = 0; k < dims.size(); ++k)
      o += (dims[k] == 1 ? 0 : idx[shift + k]) * strides[k];
    return (*mem)[size_t(o)];
  }
  void set(const Index& idx, double v) const {
    switch (type) {
      case sdpa::DType::kBF16: v = round_bf16(v); break;
      case sdpa::DType::kFloat: v = double(float(v)); break;
      case sdpa::DType::kBool: v = v != 0 ? 1 : 0; break;
      case sdpa::DType::kInt32: break;
    }
    (*mem)[size_t(offset(idx))] = v;
  }
};

// Calls f(index) for every index of dims, in row-major order.
template <typename F>
void for_each(const Index& dims, F f) {
  const int64_t n = count(dims);
  Index idx(dims.size(), 0);
  for (int64_t e = 0; e < n; ++e) {
    f(idx);
    for (size_t k = dims.size(); k-- > 0;) {
      if (++idx[k] < dims[k]) break;
      idx[k] = 0;
    }
  }
}

double apply(sdpa::Pointwise p, double x, double b, double t, const Index& idx, int64_t axis) {
  using P = sdpa::Pointwise;
  switch (p) {
    case P::kMul: return x * b;
    case P::kAdd: return x + b;
    case P::kSub: return x - b;
    case P::kDiv: return x / b;
    case P::kExp: return std::exp(x);
    case P::kLog: return std::log(x);
    case P::kIdentity: return x;
    case P::kGenIndex: return double(idx[size_t(axis)]);
    case P::kCmpLt: return x < b;
    case P::kCmpGe: return x >= b;
    case P::kLogicalAnd: return x != 0 && b != 0;
    case P::kBinarySelect: return t != 0 ? x : b;
  }
  return 0;
}

}  // namespace

void interpret(const sdpa::Graph& graph, std::map<int64_t, std::vector<double>>& bound) {
  std::map<int64_t, Value> values;
  for (const sdpa::Tensor& t : graph.tensors) {
    Value v;
    v.dims = t.dims;
    v.type = t.type;
    if (t.by_value) {
      v.strides = t.strides;
      v.mem = std::make_shared<std::vector<double>>(1, double(t.value));
    } else if (t.is_virtual) {
      // Kept row-major whatever strides are declared; a reshape checks what it needs.
      v.strides = packed(t.dims);
      v.mem = std::make_shared<std::vector<double>>(size_t(count(t.dims)), 0.0);
    } else {
      auto it = bound.find(t.uid);
      if (it == bound.end()) throw std::invalid_argument("interpret: unbound tensor " + t.name);
      v.strides = t.strides;
      int64_t span = 1;
      for (size_t k = 0; k < t.dims.size(); ++k) span += (t.dims[k] - 1) * t.strides[k];
      if (int64_t(it->second.size()) < span)
        throw std::invalid_argument("interpret: array of " + t.name + " too small");
      // Alias the caller's array, so that outputs land there.
      v.mem = std::shared_ptr<std::vector<double>>(&it->second, [](std::vector<double>*) {});
    }
    values[t.uid] = v;
  }

  for (const sdpa::Op& op : graph.ops) {
    Value& y = values.at(op.y);
    switch (op.kind) {
      case sdpa::Op::Kind::kPointwise: {
        const Value& x = values.at(op.x);
        const Value* b = op.b ? &values.at(op.b) : nullptr;
        const Value* t = op.t ? &values.at(op.t) : nullptr;
        for_each(y.dims, [&](const Index& idx) {
          y.set(idx, apply(op.pointwise, x.get(idx), b ? b->get(idx) : 0, t ? t->get(idx) : 0,
                           idx, op.axis));
        });
        break;
      }
      case sdpa::Op::Kind::kMatmul: {
        const Value& a = values.at(op.x);
        const Value& b = values.at(op.b);
        const size_t r = y.dims.size();
        const int64_t K = a.dims[r - 1];
        auto extent = [&](int64_t uid, const Index& idx, int64_t full) {
          return uid ? int64_t(values.at(uid).get(Index{idx[0], 0, 0, 0})) : full;
        };
        for_each(y.dims, [&](const Index& idx) {
          const int64_t m = idx[r - 2], n = idx[r - 1];
          const int64_t ms = extent(op.m_override, idx, y.dims[r - 2]);
          const int64_t ns = extent(op.n_override, idx, y.dims[r - 1]);
          const int64_t ks = extent(op.k_override, idx, K);
          double sum = 0;  // the padding value, outside the overridden extents
          if (m < ms && n < ns) {
            Index ia = idx, ib = idx;
            for (int64_t k = 0; k < ks; ++k) {
              ia[r - 1] = k;
              ib[r - 2] = k;
              ib[r - 1] = n;
              sum += a.get(ia) * b.get(ib);
            }
          }
          y.set(idx, sum);
        });
        break;
      }
      case sdpa::Op::Kind::kReduction: {
        const Value& x = values.at(op.x);
        const bool is_max = op.reduce == sdpa::Reduce::kMax;
        std::vector<double> acc(size_t(count(y.dims)),
                                is_max ? -std::numeric_limits<double>::infinity() : 0.0);
        const Index ys = packed(y.dims);
        for_each(x.dims, [&](const Index& idx) {
          int64_t o = 0;
          for (size_t k = 0; k < idx.size(); ++k) o += (y.dims[k] == 1 ? 0 : idx[k]) * ys[k];
          const double v = x.get(idx);
          double& a = acc[size_t(o)];
          a = is_max ? std::max(a, v) : a + v;
        });
        for_each(y.dims, [&](const Index& idx) {
          int64_t o = 0;
          for (size_t k = 0; k < idx.size(); ++k) o += idx[k] * ys[k];
          y.set(idx, acc[size_t(o)]);
        });
        break;
      }
      case sdpa::Op::Kind::kReshape: {
        // A view: the output addresses the input's memory through its own strides, which
        // is meaningful only where the input's memory follows its declared strides.
        const Value& x = values.at(op.x);
        const sdpa::Tensor& xt = graph.tensor(op.x);
        if (x.strides != xt.strides)
          throw std::invalid_argument("interpret: reshape of " + xt.name +
                                      ", whose declared strides are not row-major");
        const sdpa::Tensor& yt = graph.tensor(op.y);
        y.strides = yt.strides;
        // A change of type (float scores viewed as bf16 operands) rounds a copy: the
        // float scores stay in use elsewhere.
        if (y.type == x.type) {
          y.mem = x.mem;
        } else {
          y.mem = std::make_shared<std::vector<double>>(*x.mem);
          if (y.type == sdpa::DType::kBF16)
            for (double& v : *y.mem) v = round_bf16(v);
        }
        break;
      }
    }
  }
}

}  // namespace par::cuda_test
