// norms.cu: LayerNorm (GPT-2) and RMSNorm (Llama) over the last axis.
//
// Math (NumPy twins: NumpyBackend.layer_norm, NumpyBackend.rms_norm):
//   layer_norm: mean = sum(x)/C; var = sum((x - mean)^2)/C; y = (x - mean) * rsqrt(var + eps) * w + b
//   rms_norm:   ms = sum(x^2)/C; y = x * rsqrt(ms + eps) * w
//   The variance is computed from (x - mean) in a second pass, not as E[x^2] - mean^2: the one-pass formula
//   cancels catastrophically when |mean| >> std (a residual stream with a large offset).
//   1/sqrt is computed as 1.0f / sqrtf(...) (correctly rounded) rather than rsqrtf (approximate), to match NumPy.
//
// Thread mapping: one block per row (gridDim.x = rows), threads stride over the C columns (coalesced).
//
// Memory traffic: LayerNorm reads x three times (mean, variance, write pass; the re-reads of a C-wide row come
//   from L1/L2), reads w and b once per row (cached across rows) and writes y once: ~8 B/element from DRAM.
//
// Versions (measured results come from `make bench-kernels` on a GPU; none was available when this was written):
//   1. layer_norm_rows, rms_norm_rows: block reductions through warp shuffles, any C.
#include "common.cuh"

extern "C" __global__ void layer_norm_rows(const float* x, const float* w, const float* b, float* y, int rows, int C,
                                           float eps) {
    __shared__ float scratch[WARP_SIZE];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* row = x + (long long)r * C;
    float* out = y + (long long)r * C;

    float s = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) s += row[j];
    const float mean = block_sum(s, scratch) / (float)C;

    float v = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        const float d = row[j] - mean;
        v += d * d;
    }
    const float inv_std = 1.0f / sqrtf(block_sum(v, scratch) / (float)C + eps);

    for (int j = threadIdx.x; j < C; j += blockDim.x) out[j] = (row[j] - mean) * inv_std * w[j] + b[j];
}

extern "C" __global__ void rms_norm_rows(const float* x, const float* w, float* y, int rows, int C, float eps) {
    __shared__ float scratch[WARP_SIZE];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* row = x + (long long)r * C;
    float* out = y + (long long)r * C;

    float s = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) s += row[j] * row[j];
    const float inv_rms = 1.0f / sqrtf(block_sum(s, scratch) / (float)C + eps);

    for (int j = threadIdx.x; j < C; j += blockDim.x) out[j] = row[j] * inv_rms * w[j];
}
