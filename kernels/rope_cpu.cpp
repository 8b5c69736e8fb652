// rope_cpu.cpp: rotary position embedding on the CPU, the cpu backend's (nanollm/backends/cpu_backend.py). The same
// math as rope in kernels/elementwise.cu; NumPy twin: NumpyBackend.rope; tests/test_cpu_backend.py compares them.
//
// For each head row of hs numbers at (b, head, t), with c = cos[b, t, i] and s = sin[b, t, i], i < half:
//     y[i] = x[i] * c - x[i + half] * s;   y[i + half] = x[i + half] * c + x[i] * s
// (Hugging Face's rotate-half pairing) and dims 2 * half .. hs - 1 are copied unchanged (partial rotary).
//
// Why compiled: at a decode step a head row is 64 or 128 numbers and NumPy's seven calls per rope cost ~15 us, twice
// a layer (queries and keys): a quarter of a millisecond a Llama step. The queries and keys arrive as views of the
// fused q/k/v projection (heads not adjacent), so the kernel reads x through its strides instead of a copy.

#include "pool_cpu.h"

constexpr long long PARALLEL_ELEMENTS = 1 << 15;  // below this many elements in all, one thread

// x (B, n, T, hs) at element strides (sb, sn, st), the last axis contiguous; cos, sin (B, T, half); y (B, n, T, hs)
// contiguous. float32.
extern "C" void rope_rows(const float* x, const float* cos, const float* sin, float* y, long long B, long long n,
                          long long T, long long hs, long long half, long long sb, long long sn, long long st) {
    for_each_static(B * n * T * hs > PARALLEL_ELEMENTS, B * n, [&](long long bh) {  // one (sequence, head) each
        long long b = bh / n, h = bh % n;
        for (long long t = 0; t < T; t++) {
            const float* row = x + b * sb + h * sn + t * st;
            const float* c = cos + (b * T + t) * half;
            const float* s = sin + (b * T + t) * half;
            float* out = y + ((b * n + h) * T + t) * hs;
            for (long long i = 0; i < half; i++) {
                out[i] = row[i] * c[i] - row[i + half] * s[i];
                out[i + half] = row[i + half] * c[i] + row[i] * s[i];
            }
            for (long long i = 2 * half; i < hs; i++) out[i] = row[i];
        }
    });
}
