// The polynomials of 2^f shared by the AVX-512 exponentials (kernels/cpu/exp2_avx512.h) and
// their AVX2 twins (kernels/cpu/exp2_avx2.h), so that the two give the same bits.
// Coefficients from the highest degree down (Horner's rule).
#pragma once

namespace par::cpu {

// exp2_16 and exp2_8, on f in [-1/2, 1/2]: minimax (relative error 1.7e-8 in exact
// arithmetic), fitted by Remez exchange; its constant term rounds to 1 in float.
inline constexpr float kExp2Polynomial[] = {
    1.5789363885412958e-4f, 1.339230863449595e-3f, 9.617029882908003e-3f,
    5.550347527550911e-2f,  2.4022658646335704e-1f, 6.931471971852183e-1f, 1.0f};

// exp2_16_short and exp2_8_short, on [-1/2, 1/2], one degree lower: least squares of the
// relative error on Chebyshev nodes, constant term 1 (relative error 1.0e-7 with its float
// coefficients).
inline constexpr float kExp2ShortPolynomial[] = {
    1.3218672510344547e-3f, 9.671697938666934e-3f, 5.5508929523716756e-2f,
    2.402223800273587e-1f,  6.931468559417268e-1f, 1.0f};

// exp2_16_floor and exp2_8_floor, on f in [0, 1): degree 5, minimax-like by iterated
// weighted least squares of the relative error, with p(0) = 1 and p(1) = 2, so integers
// are exact from both sides; relative error 9.2e-8 in exact arithmetic.
inline constexpr float kExp2FloorPolynomial[] = {
    1.8793182680383325e-3f, 8.990995585918427e-3f, 5.581867694854736e-2f,
    2.40159273147583e-1f,   6.931517124176025e-1f, 1.0f};

}  // namespace par::cpu
