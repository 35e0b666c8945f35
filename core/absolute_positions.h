// Absolute sinusoidal position encodings (spec/MODEL.md section 13): with
// position-encoding absolute or both, input j's embedding becomes E[x_j] + P[p_j], p_j the
// 1-based position of the input in its document.
//
// Positions follow from the tokens and one number, the "carry": the position of the token
// just before the first one given (0 when there is none, or when it is an EOS or a PAD).
// Then p = carry + 1, p + 1, ...; the token after an EOS starts again at 1 (EOS belongs to
// the document it ends), a PAD takes p = 0 (so the token after it starts at 1: a stream's
// first token, after block evaluation's left padding, counts from 1). Whoever cuts a window
// or a sequence-parallel slice out of a stream supplies the carry of its first column.
//
// The encodings are added on the backend by gathering rows of a table of P (an embedding
// lookup with positions as ids), grown when a longer document than any before needs it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/constants.h"
#include "core/ops.h"

namespace par {

// out[j] = the document position of tokens[j] (see above), for j < n.
void document_positions(const int32_t* tokens, int64_t n, int64_t carry, int32_t* out);
// The carry after tokens[0..n): the position of the last one, or 0 if it is an EOS or PAD.
int64_t carry_after(const int32_t* tokens, int64_t n, int64_t carry);

// P[p] for p in [first, first + count): rows of d, sin(p c_k) in the first half and
// cos(p c_k) in the second, c_k = exp(-k ln(10000) / (d/2 - 1)); formed in double, rounded
// once to T.
template <typename T>
void position_encoding_rows(int64_t first, int64_t count, int64_t d, std::vector<T>& out);

// The table of P in backend memory, and the addition of its rows to embeddings.
template <typename T>
class PositionTable {
 public:
  PositionTable(Ops<T>& ops, int64_t d) : ops_(ops), d_(d) {}
  ~PositionTable();
  PositionTable(const PositionTable&) = delete;
  PositionTable& operator=(const PositionTable&) = delete;

  // h[r] += P[positions[r]] for r < rows. positions: host; ids: backend memory for `rows`
  // int32; scratch: backend memory for [rows, d].
  void add(T* h, const int32_t* positions, int64_t rows, int32_t* ids, T* scratch);
  // add's first half: the table grown to the positions, which go into ids.
  void upload_ids(const int32_t* positions, int64_t rows, int32_t* ids);
  // add's second half: with the positions already in ids (backend memory).
  void add_uploaded(T* h, int64_t rows, const int32_t* ids, T* scratch);
  int64_t capacity() const { return rows_; }
  // The rows a table of `rows` grows to when asked for `max_position` (beyond it): at least
  // half again, so a document that keeps lengthening (generation) costs a rebuild only now
  // and then. (Decoder::memory plans by it.)
  static int64_t grown_rows(int64_t rows, int64_t max_position) {
    return std::max(max_position + 1, rows + rows / 2);
  }
  const T* table() const { return table_; }  // moves when the table grows

 private:
  void reserve(int64_t max_position);

  Ops<T>& ops_;
  int64_t d_;
  int64_t rows_ = 0;  // positions 0 .. rows_-1 are in the table
  T* table_ = nullptr;
};

}  // namespace par
