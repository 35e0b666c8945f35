// The AVX-512 intrinsics of the CPU kernels (attention, dropout, rotary, linear layers on
// few rows), where the build targets them.
//
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which trips
// -Wmaybe-uninitialized inside its own header wherever they are inlined (and
// -Wuninitialized in the horizontal sums, _mm512_reduce_add_*). The pragmas below silence
// those warnings for the rest of the file that includes this one.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
