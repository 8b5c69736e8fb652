// norms_cpu.cpp: LayerNorm (GPT-2) and RMSNorm (Llama) over the last axis on the CPU, the cpu backend's
// (nanollm/backends/cpu_backend.py). The same math as kernels/norms.cu, for the same reason as there; NumPy twins:
// NumpyBackend.layer_norm, NumpyBackend.rms_norm; tests/test_cpu_backend.py compares them.
//
//   layer_norm: mean = sum(x)/C; var = sum((x - mean)^2)/C; y = (x - mean) * (1 / sqrt(var + eps)) * w + b
//   rms_norm:   ms = sum(x^2)/C; y = x * (1 / sqrt(ms + eps)) * w
//
// Why compiled, when NumPy does each in a few calls: at a decode step a norm is one row of 768 numbers, a
// microsecond of arithmetic, and NumPy's five or six calls on it cost ~10-20 us of overhead; a model makes 25 of them
// a step (GPT-2: 0.5 ms of a 12 ms step). Here it is one call. In a prefill the rows are shared among the cores.
//
// Sums are float32 in 16 running parts side by side (one vector register), added at the end: a different order
// from NumPy's pairwise sum, as accurate (each part sums C/16 numbers), so the two agree to float32 rounding.

#include <cmath>

#include "pool_cpu.h"

constexpr long long PARALLEL_ELEMENTS = 1 << 15;  // below this many elements in all, one thread (waking more costs more)

// The sum of f(x[j]) over j < C in 16 running parts (see the header).
template <typename F>
static inline float row_sum(const float* x, long long C, F f) {
    float part[16] = {};
    long long j = 0;
    for (; j + 16 <= C; j += 16)
        for (int i = 0; i < 16; i++) part[i] += f(x[j + i]);
    for (int i = 0; j < C; j++, i++) part[i] += f(x[j]);
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += part[i];
    return s;
}

// x (rows, C), w (C,), b (C,), y (rows, C): float32, C order.
extern "C" void layer_norm_rows(const float* x, const float* w, const float* b, float* y, long long rows, long long C,
                                float eps) {
    for_each_static(rows * C > PARALLEL_ELEMENTS, rows, [&](long long r) {
        const float* row = x + r * C;
        float* out = y + r * C;
        float mean = row_sum(row, C, [](float v) { return v; }) / (float)C;
        float var = row_sum(row, C, [mean](float v) { return (v - mean) * (v - mean); }) / (float)C;  // two passes
        float inv_std = 1.0f / std::sqrt(var + eps);
        for (long long j = 0; j < C; j++) out[j] = (row[j] - mean) * inv_std * w[j] + b[j];
    });
}

extern "C" void rms_norm_rows(const float* x, const float* w, float* y, long long rows, long long C, float eps) {
    for_each_static(rows * C > PARALLEL_ELEMENTS, rows, [&](long long r) {
        const float* row = x + r * C;
        float* out = y + r * C;
        float inv_rms = 1.0f / std::sqrt(row_sum(row, C, [](float v) { return v * v; }) / (float)C + eps);
        for (long long j = 0; j < C; j++) out[j] = row[j] * inv_rms * w[j];
    });
}
