// Rotary position embedding of a range of rows on the CPU.
#pragma once

#include <cstdint>

namespace par::cpu {

// For rows r in [begin, end) of x ([rows][heads * head_dim]), row r at table row r % n:
// each head's pairs (x[2k], x[2k+1]), k < bands, turn by the angle whose cosine and sine
// are cos_table[(r % n) * bands + k] and sin_table[...] (backwards when inverse); the
// rest of each head is left as it is.
template <typename T>
void rotary_rows(T* x, int64_t begin, int64_t end, int64_t n, int64_t heads, int64_t head_dim,
                 int64_t bands, const T* cos_table, const T* sin_table, bool inverse);

}  // namespace par::cpu
