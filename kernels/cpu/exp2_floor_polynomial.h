// The polynomial of 2^f on [0, 1) shared by exp2_16_floor (kernels/cpu/exp2_avx512.h) and
// exp2_8_floor (kernels/cpu/exp2_avx2.h), so that the two give the same bits.
#pragma once

namespace par::cpu {

// Degree 5, minimax-like by iterated weighted least squares of the relative error, with
// p(0) = 1 and p(1) = 2, so integers are exact from both sides; relative error 9.2e-8 in
// exact arithmetic. Coefficients from the highest degree down (Horner's rule).
inline constexpr float kExp2FloorPolynomial[] = {
    1.8793182680383325e-3f, 8.990995585918427e-3f, 5.581867694854736e-2f,
    2.40159273147583e-1f,   6.931517124176025e-1f, 1.0f};

}  // namespace par::cpu
