// elementwise.cu: the small fused ops of the forward pass: residual add, GELU, SiLU-gate, RoPE, embedding gather.
//
// Each is one read and one write per element, so each is bound by memory bandwidth, and fusing is what pays:
// silu_mul reads gate and up and writes once instead of materialising silu(gate); rope rotates a (B, n, T, hs)
// strided view of the fused qkv projection in place of copying q and k out first.
//
// Math (NumPy twins in NumpyBackend, same names):
//   residual_add:  out = x + y
//   gelu:          0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))      (GPT-2's "gelu_new")
//   silu_mul:      gate / (1 + exp(-gate)) * up                                  (SwiGLU)
//   rope:          for i < hs/2 (Hugging Face's rotate-half pairing), with c = cos[b, t, i], s = sin[b, t, i]:
//                  y[i] = x[i] * c - x[i + hs/2] * s;   y[i + hs/2] = x[i + hs/2] * c + x[i] * s
//   embedding_gather: out[r, :] = table[ids[r], :]
//   The float expressions are written in NumPy's evaluation order so both round alike.
//
// Thread mapping: a 1-D grid-stride loop: thread g handles elements g, g + gridDim.x * blockDim.x, ...; consecutive
//   threads touch consecutive addresses (coalesced) and any grid size covers any n. Indices are 64-bit: a prefill
//   activation can exceed 2^31 elements.
//
// Memory traffic: residual_add and silu_mul 12 B/element, gelu 8 B, rope 8 B of x/y plus the cos/sin rows (shared
//   by all heads, cached), embedding_gather 8 B (4 with a float16 table) per output element.
//
// Versions (measured results come from `make bench-kernels` on a GPU; none was available when this was written):
//   1. residual_add, gelu, silu_mul, rope, embedding_gather, embedding_gather_f16: scalar grid-stride loops.
//      Idea not yet tried: float4 loads when C is a multiple of 4.
#include "common.cuh"

#define GRID_STRIDE_LOOP(i, n)                                                         \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void residual_add(const float* x, const float* y, float* out, long long n) {
    GRID_STRIDE_LOOP(i, n) out[i] = x[i] + y[i];
}

extern "C" __global__ void gelu(const float* x, float* y, long long n) {
    const float sqrt_2_over_pi = 0.7978845608028654f;
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(sqrt_2_over_pi * (v + 0.044715f * (v * v * v))));
    }
}

extern "C" __global__ void silu_mul(const float* gate, const float* up, float* y, long long n) {
    GRID_STRIDE_LOOP(i, n) {
        const float g = gate[i];
        y[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// x is a (B, n_heads, T, hs) view with element strides (x_sb, x_sh, x_st) and contiguous last axis; y is contiguous.
// cos/sin are contiguous (B, T, hs/2). One thread per rotated pair (i, i + hs/2).
extern "C" __global__ void rope(const float* x, const float* cos_table, const float* sin_table, float* y, int B,
                                int n_heads, int T, int hs, long long x_sb, long long x_sh, long long x_st) {
    const int half = hs / 2;
    const long long n_pairs = (long long)B * n_heads * T * half;
    GRID_STRIDE_LOOP(p, n_pairs) {
        const int i = (int)(p % half);
        const int t = (int)(p / half % T);
        const int h = (int)(p / ((long long)half * T) % n_heads);
        const int b = (int)(p / ((long long)half * T * n_heads));
        const float* src = x + b * x_sb + h * x_sh + t * x_st;
        float* dst = y + (((long long)b * n_heads + h) * T + t) * hs;
        const float c = cos_table[((long long)b * T + t) * half + i];
        const float s = sin_table[((long long)b * T + t) * half + i];
        const float x1 = src[i], x2 = src[i + half];
        dst[i] = x1 * c - x2 * s;
        dst[i + half] = x2 * c + x1 * s;
    }
}

extern "C" __global__ void embedding_gather(const float* table, const long long* ids, float* out, long long n_ids,
                                            int C) {
    GRID_STRIDE_LOOP(i, n_ids * C) out[i] = table[ids[i / C] * C + i % C];
}

// The same gather from a float16 table (the CuPy backend keeps weight matrices in float16), widened to float32.
extern "C" __global__ void embedding_gather_f16(const unsigned short* table, const long long* ids, float* out,
                                                long long n_ids, int C) {
    GRID_STRIDE_LOOP(i, n_ids * C) out[i] = half_bits_to_float(table[ids[i / C] * C + i % C]);
}
