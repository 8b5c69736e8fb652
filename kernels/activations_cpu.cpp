// activations_cpu.cpp: the MLP's activations and the residual add on the CPU, the cpu backend's
// (nanollm/backends/cpu_backend.py). The same math as gelu, gelu_exact, silu_mul, gelu_mul and residual_add in
// kernels/elementwise.cu; NumPy twins: NumpyBackend.gelu, .gelu_exact, .silu_mul, .gelu_mul, .add;
// tests/test_cpu_backend.py compares them.
//
//   gelu:      0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))     (GPT-2's tanh form)
//   gelu_exact: x * Phi(x), Phi the normal distribution's CDF                (Pythia's, Falcon's "gelu")
//   silu_mul:  gate / (1 + exp(-gate)) * up                                 (SwiGLU: Llama, Qwen, Mistral, ...)
//   gelu_mul:  gelu(gate) * up                                              (GeGLU: Gemma)
//   softcap:   tanh(x * (1/cap)) * cap                                      (Gemma 2's final logits)
//
// Why compiled: NumPy computes these in 5 to 8 passes over the array (each an in-place step), fast per element (its
// exp and tanh use the vector units) but 12-17 us a call at a decode step, and in a prefill the passes stream the
// (T, 3072) array through memory again and again. One pass here, 16 elements at a time, with exp16
// (kernels/simd_cpu.h: the C library's expf is scalar, and a loop of it ran 6x slower than NumPy); tanh comes from
// it (tanh16, below).

#include <algorithm>

#include "pool_cpu.h"
#include "simd_cpu.h"

// Below this many elements, one thread: waking the other costs more. Measured for GELU: 12288 elements (a batch of
// 4) took 9.9 us on one thread, 6.8 on two; 3072 (one row) 4.9 either way.
constexpr long long PARALLEL_ELEMENTS = 1 << 13;

// tanh(u) = 1 - 2 / (exp(2u) + 1), except near 0, where that subtraction cancels: its error stays near 1e-7 while
// tanh(u) shrinks with u (at u = 1e-5, a relative error of 1e-2, and Gemma 2's softcap keeps tanh's relative error).
// There, for |u| < 1/4, tanh's Taylor series to u^9, whose next term is under 1e-8 of tanh(u).
static inline vec16 tanh16(vec16 u) {
    vec16 u2 = u * u;
    vec16 series = u * (1.0f + u2 * (-1.0f / 3 + u2 * (2.0f / 15 + u2 * (-17.0f / 315 + u2 * (62.0f / 2835)))));
    return u2 < 0.0625f ? series : 1.0f - 2.0f / (exp16(2.0f * u) + 1.0f);
}

static inline vec16 gelu16(vec16 x) {
    vec16 u = 0.7978845608f * (x + 0.044715f * x * x * x);  // sqrt(2/pi) (x + 0.044715 x^3)
    return 0.5f * x * (1.0f + tanh16(u));
}

static inline vec16 silu16(vec16 x) { return x / (1.0f + exp16(-x)); }

// The exact GELU, x Phi(x) (Pythia's and Falcon's "gelu"), computed as its NumPy twin does (NumpyBackend.gelu_exact
// says why and how well): h = Phi(-|x|) = t exp(P(t)) exp(-x^2 / 2) / 2 with t = 1 / (1 + |x| / (2 sqrt 2)) and P
// Numerical Recipes' erfc polynomial; Phi(x) = 1 - h for x >= 0, h for x < 0 (no 1 - (1 - h): no cancellation).
static inline vec16 gelu_exact16(vec16 x) {
    static const float c[10] = {-1.26551223f, 1.00002368f, 0.37409196f, 0.09678418f, -0.18628806f,
                                0.27886807f,  -1.13520398f, 1.48851587f, -0.82215223f, 0.17087277f};  // ERFC_COEFFS
    ivec16 negative = x < 0.0f;
    vec16 t = 1.0f / (1.0f + (negative ? -x : x) * 0.35355339059327373f);  // 0.5 / sqrt(2)
    vec16 p = t * c[9];
    for (int i = 8; i >= 1; i--) p = (p + c[i]) * t;
    vec16 h = exp16(p + c[0]) * t * exp16(x * x * -0.5f) * 0.5f;
    return (negative ? h : 1.0f - h) * x;
}

// y[i] = f(a[i]) * (b ? b[i] : 1) for i < n, 16 at a time; the last n % 16 through a zero-padded vector.
template <class F>
static void apply(F f, const float* a, const float* b, float* y, long long n) {
    long long full = n / 16 * 16;
    for_each_static(n > PARALLEL_ELEMENTS, full / 16, [&](long long chunk) {
        long long i = chunk * 16;
        vec16 out = f(*(const vec16*)(a + i));
        *(vec16*)(y + i) = b ? out * *(const vec16*)(b + i) : out;
    });
    if (full < n) {
        vec16 va = {}, vb = {};
        for (long long i = full; i < n; i++) va[i - full] = a[i], vb[i - full] = b ? b[i] : 1.0f;
        vec16 out = f(va) * vb;
        for (long long i = full; i < n; i++) y[i] = out[i - full];
    }
}

extern "C" void gelu_rows(const float* x, float* y, long long n) { apply(gelu16, x, nullptr, y, n); }
extern "C" void gelu_exact_rows(const float* x, float* y, long long n) { apply(gelu_exact16, x, nullptr, y, n); }
extern "C" void silu_mul_rows(const float* gate, const float* up, float* y, long long n) {
    apply(silu16, gate, up, y, n);
}
extern "C" void gelu_mul_rows(const float* gate, const float* up, float* y, long long n) {
    apply(gelu16, gate, up, y, n);
}

// Gemma 2's final-logit soft-capping, y = tanh(x * (1/cap)) * cap. 1/cap is rounded in double, then to float, as
// the twin (NumpyBackend.softcap) does.
extern "C" void softcap_rows(const float* x, float* y, long long n, float cap) {
    float inverse = (float)(1.0 / (double)cap);
    apply([=](vec16 v) { return tanh16(v * inverse) * cap; }, x, nullptr, y, n);
}

// The residual add, y = a + b. NumPy's x + y is one pass too; compiled so that every op of a decode step is a kernel
// call, which a recorded step (kernels/replay_cpu.cpp) can replay without Python.
extern "C" void add_rows(const float* a, const float* b, float* y, long long n) {
    constexpr long long SPAN = 1 << 14;  // elements a thread adds at a time
    for_each_static(n > PARALLEL_ELEMENTS, (n + SPAN - 1) / SPAN, [&](long long chunk) {
        long long end = std::min(n, (chunk + 1) * SPAN);
        for (long long i = chunk * SPAN; i < end; i++) y[i] = a[i] + b[i];
    });
}
