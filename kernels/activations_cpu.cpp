// activations_cpu.cpp: the MLP's activations on the CPU, the cpu backend's (nanollm/backends/cpu_backend.py). The same
// math as gelu, silu_mul and gelu_mul in kernels/elementwise.cu; NumPy twins: NumpyBackend.gelu, .silu_mul, .gelu_mul;
// tests/test_cpu_backend.py compares them.
//
//   gelu:      0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))     (GPT-2's tanh form)
//   silu_mul:  gate / (1 + exp(-gate)) * up                                 (SwiGLU: Llama, Qwen, Mistral, ...)
//   gelu_mul:  gelu(gate) * up                                              (GeGLU: Gemma)
//
// Why compiled, and why with an exp of our own: NumPy computes these in 5 to 8 passes over the array (each an
// in-place step), fast per element (its exp and tanh use the vector units) but 12-17 us a call at a decode step, and
// in a prefill the passes stream the (T, 3072) array through memory again and again. One pass here. But the C
// library's expf and tanhf are scalar: a loop calling them ran 6x slower than NumPy (measured), so exp16 below
// computes 16 exponentials at once, and tanh comes from it: tanh(u) = 1 - 2 / (exp(2u) + 1).
//
// exp16: x = k ln2 + r with k = round(x / ln2) and |r| <= ln2 / 2, so exp(x) = 2^k exp(r); exp(r) is its Taylor
// series to r^7 (the first term left out, r^8/8!, is below 6e-9 on that range: float32 rounding, not the series,
// sets the error, a few ulp), and 2^k is written straight into a float's exponent bits. ln2 is split in a high part
// exact in float32 and a low part (Cody and Waite) so that r keeps its precision. Beyond exp's float32 range the
// result is 0 (x < -87.3) or inf (x > 88.7); NaN stays NaN. Against NumPy's results: within 1e-6 relative
// (tests/test_cpu_backend.py checks the kernel tests' FLOAT32_RTOL).

#include <cmath>

typedef float vec16 __attribute__((vector_size(64), aligned(4)));  // 16 floats, as in linear_cpu.cpp
typedef int ivec16 __attribute__((vector_size(64), aligned(4)));

constexpr long long PARALLEL_ELEMENTS = 1 << 16;  // below this many elements, one thread (waking more costs more)

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
    #pragma omp parallel for if (n > PARALLEL_ELEMENTS)
    for (long long i = 0; i < full; i += 16) {
        vec16 out = f(*(const vec16*)(a + i));
        *(vec16*)(y + i) = b ? out * *(const vec16*)(b + i) : out;
    }
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
