// Document positions and the sinusoidal table of spec/MODEL.md section 13 (see the header).
#include "core/absolute_positions.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace par {

void document_positions(const int32_t* tokens, int64_t n, int64_t carry, int32_t* out) {
  int64_t p = carry;
  for (int64_t j = 0; j < n; ++j) {
    const int32_t t = tokens[j];
    p = t == kPadToken ? 0 : p + 1;
    if (p > INT32_MAX)
      fail_user("a document longer than ", INT32_MAX,
                " tokens: absolute positions need an EOS at least that often");
    out[j] = int32_t(p);
    if (t == kEosToken) p = 0;
  }
}

int64_t carry_after(const int32_t* tokens, int64_t n, int64_t carry) {
  for (int64_t j = 0; j < n; ++j) {
    const int32_t t = tokens[j];
    carry = t == kPadToken || t == kEosToken ? 0 : carry + 1;
  }
  return carry;
}

template <typename T>
void position_encoding_rows(int64_t first, int64_t count, int64_t d, std::vector<T>& out) {
  const int64_t half = d / 2;
  std::vector<double> c(static_cast<size_t>(half));
  for (int64_t k = 0; k < half; ++k)  // k = 0 needs no division (and d = 2 has only it)
    c[size_t(k)] = k == 0 ? 1.0 : std::exp(-double(k) * std::log(10000.0) / double(half - 1));
  out.assign(static_cast<size_t>(count * d), T(0));
  for (int64_t i = 0; i < count; ++i) {
    T* row = out.data() + i * d;
    for (int64_t k = 0; k < half; ++k) {
      const double a = double(first + i) * c[size_t(k)];
      row[k] = T(std::sin(a));
      row[half + k] = T(std::cos(a));
    }
  }
}

template <typename T>
PositionTable<T>::~PositionTable() {
  if (table_) ops_.deallocate(table_);
}

template <typename T>
void PositionTable<T>::reserve(int64_t max_position) {
  if (max_position < rows_) return;
  const int64_t rows = grown_rows(rows_, max_position);
  std::vector<T> host;
  position_encoding_rows(0, rows, d_, host);
  if (table_) ops_.deallocate(table_);
  table_ = static_cast<T*>(ops_.allocate(host.size() * sizeof(T)));
  ops_.upload(table_, host.data(), host.size() * sizeof(T));
  rows_ = rows;
}

template <typename T>
void PositionTable<T>::add(T* h, const int32_t* positions, int64_t rows, int32_t* ids,
                           T* scratch) {
  if (rows == 0) return;
  upload_ids(positions, rows, ids);
  add_uploaded(h, rows, ids, scratch);
}

template <typename T>
void PositionTable<T>::upload_ids(const int32_t* positions, int64_t rows, int32_t* ids) {
  if (rows == 0) return;
  reserve(*std::max_element(positions, positions + rows));
  ops_.upload(ids, positions, size_t(rows) * sizeof(int32_t));
}

template <typename T>
void PositionTable<T>::add_uploaded(T* h, int64_t rows, const int32_t* ids, T* scratch) {
  ops_.embedding_forward(scratch, ids, table_, rows, d_);
  ops_.add(h, scratch, rows * d_);
}

template void position_encoding_rows<float>(int64_t, int64_t, int64_t, std::vector<float>&);
template void position_encoding_rows<double>(int64_t, int64_t, int64_t, std::vector<double>&);
template class PositionTable<float>;
template class PositionTable<double>;

}  // namespace par
