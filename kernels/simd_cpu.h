// simd_cpu.h: what the cpu backend's kernels (kernels/*_cpu.cpp) share: the vector of 16 floats they compute with,
// and exp16, sixteen exponentials at once.
//
// The vectors are GCC/Clang vector extensions (`vector_size(64)`: 16 floats), which the compiler maps to the
// machine's own width (one AVX-512 register, two AVX2 registers, four NEON registers), so the sources have no
// intrinsics. `aligned(4)` lets a vector load/store any float address: NumPy guarantees no more.
//
// Why an exp of our own: the C library's expf is scalar, and a loop calling it ran 6x slower than NumPy's (which
// uses the vector units), both in activations_cpu.cpp's SiLU and GELU (tanh(u) = 1 - 2 / (exp(2u) + 1)) and in
// attention_cpu.cpp's softmax weights (measured there: a prefill's attention 0.67 -> 0.55 ms a GPT-2 layer).
//
// exp16: x = k ln2 + r with k = round(x / ln2) and |r| <= ln2 / 2, so exp(x) = 2^k exp(r); exp(r) is its Taylor
// series to r^7 (the first term left out, r^8/8!, is below 6e-9 on that range: float32 rounding, not the series,
// sets the error, a few ulp), and 2^k is written straight into a float's exponent bits. ln2 is split in a high part
// exact in float32 and a low part (Cody and Waite) so that r keeps its precision. Beyond exp's float32 range the
// result is 0 (x < -87.3) or inf (x > 88.7); NaN stays NaN. Against NumPy's results: within 1e-6 relative
// (tests/test_cpu_backend.py: the kernel tests' FLOAT32_RTOL, and 4 ulp of float64 over [-87, 87]).

#pragma once

#include <cmath>

typedef float vec16 __attribute__((vector_size(64), aligned(4)));
typedef int ivec16 __attribute__((vector_size(64), aligned(4)));

static inline vec16 exp16(vec16 x) {
    const float hi = 88.72f, lo = -87.33f;  // exp(hi) is float32's largest finite value, exp(lo) its smallest normal
    vec16 clamped = x > hi ? hi : x;
    clamped = clamped < lo ? lo : clamped;
    vec16 k = clamped * 1.44269504f + 12582912.0f - 12582912.0f;  // round(x / ln2): 1.5 * 2^23 drops the fraction
    vec16 r = clamped - k * 0.693359375f - k * -2.12194440e-4f;   // x - k ln2, ln2 = 0.693359375 - 2.12194440e-4
    vec16 p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720
                     + r * (1.0f / 5040)))))));
    ivec16 bits = (__builtin_convertvector(k, ivec16) + 127) << 23;  // 2^k as a float's bits
    vec16 y = p * (vec16)bits;                                        // (vec16) of an int vector: the same bits
    y = x > hi ? INFINITY : y;
    return x < lo ? 0.0f : y;  // NaN fails both tests and stays NaN
}
