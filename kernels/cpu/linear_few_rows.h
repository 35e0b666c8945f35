// The linear layer on a few rows: decoding's latent layers, one row per sample (the
// latent of each sample's new token), against weights of a few hundred KiB to a few MiB.
#pragma once

#include <cstdint>

namespace par::cpu {

// Whether y = x w^T + b of this many rows goes through few_rows_linear_forward: 1 to 16
// rows (false where the build has neither AVX-512 nor AVX2).
bool is_few_rows_linear(int64_t rows);

// y = x w^T + b (b may be null) where is_few_rows_linear(rows), reading w once per 8 rows.
// Row r of y depends on row r of x alone, by the same arithmetic whatever `rows` and the
// thread count are.
template <typename T>
void few_rows_linear_forward(T* y, const T* x, const T* w, const T* b, int64_t rows,
                             int64_t in, int64_t out);

}  // namespace par::cpu
