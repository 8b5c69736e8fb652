// elementwise.cu: the small fused ops of the forward pass: residual add, GELU, the SwiGLU and GeGLU gates,
// soft-capping, RoPE, embedding gather.
//
// Each is one read and one write per element, so each is bound by memory bandwidth, and fusing is what pays:
// silu_mul and gelu_mul read gate and up and write once instead of materialising the activation of gate; rope
// rotates a (B, n, T, hs) strided view of the fused qkv projection in place of copying q and k out first;
// embedding_gather scales the rows as it copies them (Gemma) instead of a second pass over (B, T, C).
//
// Math (NumPy twins in NumpyBackend, same names):
//   residual_add:  out = x + y
//   gelu:          0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))      (GPT-2's "gelu_new")
//   gelu_exact:    0.5 * x * erfc(-x / sqrt(2)), that is 0.5 * x * (1 + erf(x / sqrt(2)))  (Pythia's, Falcon's "gelu")
//                  erfcf rather than 1 + erff: for negative x, 1 + erf keeps only what is left above one float ulp
//                  of erf (6e-8), all of gelu's value from x = -5 down (POSIX's erfc rationale: "the extreme loss of
//                  relative accuracy if erf(x) is ... subtracted from 1.0"); erfc keeps the tail to a few ulp
//   silu_mul:      gate / (1 + exp(-gate)) * up                                  (SwiGLU)
//   gelu_mul:      gelu(gate) * up                                               (Gemma's GeGLU, the same tanh form)
//   softcap:       tanh(x * (1/cap)) * cap                                       (Gemma 2's final-logit soft-capping)
//   rope:          the first r = 2 * half dims of each head rotate in Hugging Face's rotate-half pairing; for
//                  i < half, with c = cos[b, t, i], s = sin[b, t, i]:
//                  y[i] = x[i] * c - x[i + half] * s;   y[i + half] = x[i + half] * c + x[i] * s
//                  and dims r .. hs-1 are copied unchanged (partial rotary, Phi-4-mini: r < hs)
//   embedding_gather: out[r, :] = table[ids[r], :] * scale                       (Gemma: scale = sqrt(C))
//   The float expressions are written in NumPy's evaluation order so both round alike; the launcher rounds 1/cap
//   in double precision and then to float, as the NumPy twin does. gelu_exact is the exception: NumPy has no erf,
//   so its twin computes erfc from a published approximation (NumpyBackend.gelu_exact) and the two agree to ~1e-6.
//
// Thread mapping: a 1-D grid-stride loop: thread g handles elements g, g + gridDim.x * blockDim.x, ...; consecutive
//   threads touch consecutive addresses (coalesced) and any grid size covers any n. Indices are 64-bit: a prefill
//   activation can exceed 2^31 elements. rope's work items are the hs - half outputs of a head that one thread
//   writes: item i < half rotates the pair (i, i + half), item i >= half copies dim i + half.
//
// Memory traffic: residual_add, silu_mul and gelu_mul 12 B/element, gelu, gelu_exact and softcap 8 B, rope 8 B of
//   x/y plus the cos/sin rows (shared by all heads, cached), embedding_gather 8 B (6 with a float16 table: 2 read,
//   4 written) per output element.
//
// Versions (measured results come from `make bench-kernels` on a GPU; none was available when this was written):
//   1. residual_add, gelu, gelu_exact, gelu_mul, silu_mul, softcap, rope, embedding_gather, embedding_gather_f16:
//      scalar grid-stride loops. Idea not yet tried: float4 loads when C is a multiple of 4.
#include "common.cuh"

#define GRID_STRIDE_LOOP(i, n)                                                         \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void residual_add(const float* x, const float* y, float* out, long long n) {
    GRID_STRIDE_LOOP(i, n) out[i] = x[i] + y[i];
}

__device__ inline float gelu_tanh(float v) {
    const float sqrt_2_over_pi = 0.7978845608028654f;
    return 0.5f * v * (1.0f + tanhf(sqrt_2_over_pi * (v + 0.044715f * (v * v * v))));
}

extern "C" __global__ void gelu(const float* x, float* y, long long n) {
    GRID_STRIDE_LOOP(i, n) y[i] = gelu_tanh(x[i]);
}

// x * Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2. erfcf is within 4 ulp on the GPU (CUDA C++ Programming Guide,
// single-precision function table); the emulator's is the host's libm.
extern "C" __global__ void gelu_exact(const float* x, float* y, long long n) {
    const float minus_sqrt_half = -0.7071067811865476f;
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        y[i] = 0.5f * v * erfcf(minus_sqrt_half * v);
    }
}

extern "C" __global__ void silu_mul(const float* gate, const float* up, float* y, long long n) {
    GRID_STRIDE_LOOP(i, n) {
        const float g = gate[i];
        y[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void gelu_mul(const float* gate, const float* up, float* y, long long n) {
    GRID_STRIDE_LOOP(i, n) y[i] = gelu_tanh(gate[i]) * up[i];
}

// inv_cap = 1/cap rounded to float by the launcher (not 1.0f / cap here: that would round cap first).
extern "C" __global__ void softcap(const float* x, float* y, long long n, float cap, float inv_cap) {
    GRID_STRIDE_LOOP(i, n) y[i] = tanhf(x[i] * inv_cap) * cap;
}

// x is a (B, n_heads, T, hs) view with element strides (x_sb, x_sh, x_st) and contiguous last axis; y is contiguous.
// cos/sin are contiguous (B, T, half) with 2 * half <= hs. One thread per work item: hs - half of them per head.
extern "C" __global__ void rope(const float* x, const float* cos_table, const float* sin_table, float* y, int B,
                                int n_heads, int T, int hs, int half, long long x_sb, long long x_sh, long long x_st) {
    const int items = hs - half;  // half rotated pairs, then hs - 2 * half copied dims
    const long long n_items = (long long)B * n_heads * T * items;
    GRID_STRIDE_LOOP(p, n_items) {
        const int i = (int)(p % items);
        const int t = (int)(p / items % T);
        const int h = (int)(p / ((long long)items * T) % n_heads);
        const int b = (int)(p / ((long long)items * T * n_heads));
        const float* src = x + b * x_sb + h * x_sh + t * x_st;
        float* dst = y + (((long long)b * n_heads + h) * T + t) * hs;
        if (i >= half) {  // past the rotated dims: pass through
            dst[i + half] = src[i + half];
            continue;
        }
        const float c = cos_table[((long long)b * T + t) * half + i];
        const float s = sin_table[((long long)b * T + t) * half + i];
        const float x1 = src[i], x2 = src[i + half];
        dst[i] = x1 * c - x2 * s;
        dst[i + half] = x2 * c + x1 * s;
    }
}

// Scale 1 copies the bits, as the NumPy twin skips its multiply then: a GPU multiply by 1 would still turn every
// NaN into the one canonical NaN (losing a float16 NaN's sign, which test_half_to_float_every_bit_pattern checks).
__device__ inline float scaled(float v, float scale) { return scale == 1.0f ? v : v * scale; }

extern "C" __global__ void embedding_gather(const float* table, const long long* ids, float* out, long long n_ids,
                                            int C, float scale) {
    GRID_STRIDE_LOOP(i, n_ids * C) out[i] = scaled(table[ids[i / C] * C + i % C], scale);
}

// The same gather from a float16 table (the CuPy backend keeps weight matrices in float16), widened to float32
// before the scale, as NumPy promotes float16 rows times a float32 scale.
extern "C" __global__ void embedding_gather_f16(const unsigned short* table, const long long* ids, float* out,
                                                long long n_ids, int C, float scale) {
    GRID_STRIDE_LOOP(i, n_ids * C) out[i] = scaled(half_bits_to_float(table[ids[i / C] * C + i % C]), scale);
}
