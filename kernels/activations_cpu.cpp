// activations_cpu.cpp: the MLP's activations on the CPU, the cpu backend's (nanollm/backends/cpu_backend.py). The same
// math as gelu, silu_mul and gelu_mul in kernels/elementwise.cu; NumPy twins: NumpyBackend.gelu, .silu_mul, .gelu_mul;
// tests/test_cpu_backend.py compares them.
//
//   gelu:      0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))     (GPT-2's tanh form)
//   silu_mul:  gate / (1 + exp(-gate)) * up                                 (SwiGLU: Llama, Qwen, Mistral, ...)
//   gelu_mul:  gelu(gate) * up                                              (GeGLU: Gemma)
//
// Why compiled: NumPy computes these in 5 to 8 passes over the array (each an in-place step), fast per element (its
// exp and tanh use the vector units) but 12-17 us a call at a decode step, and in a prefill the passes stream the
// (T, 3072) array through memory again and again. One pass here, 16 elements at a time, with exp16
// (kernels/simd_cpu.h: the C library's expf is scalar, and a loop of it ran 6x slower than NumPy); tanh comes from
// it: tanh(u) = 1 - 2 / (exp(2u) + 1).

#include "pool_cpu.h"
#include "simd_cpu.h"

constexpr long long PARALLEL_ELEMENTS = 1 << 16;  // below this many elements, one thread (waking more costs more)

static inline vec16 gelu16(vec16 x) {
    vec16 u = 0.7978845608f * (x + 0.044715f * x * x * x);  // sqrt(2/pi) (x + 0.044715 x^3)
    vec16 tanh_u = 1.0f - 2.0f / (exp16(2.0f * u) + 1.0f);
    return 0.5f * x * (1.0f + tanh_u);
}

static inline vec16 silu16(vec16 x) { return x / (1.0f + exp16(-x)); }

// y[i] = f(a[i]) * (b ? b[i] : 1) for i < n, 16 at a time; the last n % 16 through a zero-padded vector.
template <vec16 (*f)(vec16)>
static void apply(const float* a, const float* b, float* y, long long n) {
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

extern "C" void gelu_rows(const float* x, float* y, long long n) { apply<gelu16>(x, nullptr, y, n); }
extern "C" void silu_mul_rows(const float* gate, const float* up, float* y, long long n) { apply<silu16>(gate, up, y, n); }
extern "C" void gelu_mul_rows(const float* gate, const float* up, float* y, long long n) { apply<gelu16>(gate, up, y, n); }
