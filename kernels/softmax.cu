// softmax.cu: fused softmax over the rows of a matrix.
//
// Math (NumPy twin: NumpyBackend.softmax):
//   y_j = exp(x_j - max x) / sum_j' exp(x_j' - max x)
//   The max is subtracted so exp never overflows (exp(88.7) is already inf in float32); everything is float32.
//   A row with no finite column (max = -inf: every key masked) is defined as all zeros, where the naive formula
//   gives 0/0 = NaN.
//   Masking and scaling happen before this kernel, in the caller's x (-inf for a hidden column); attention.cu does
//   its own, fused into the score tiles, and does not call this kernel.
//
// Thread mapping: one block per row (gridDim.x = rows); the block's threads stride over the columns
//   (thread i reads columns i, i + blockDim.x, ...), so consecutive threads read consecutive floats (coalesced).
//
// Memory traffic: the row is read three times (max, sum, write pass) and written once: 16 bytes per element with
//   float32. For rows up to a few thousand floats the second and third reads hit L1/L2, so DRAM sees ~8 B/element.
//
// Versions (measured results come from `make bench-kernels` on a GPU; none was available when this was written):
//   1. softmax_rows: three passes, block reductions through warp shuffles. Correct for any row length.
//      Ideas not yet tried: an online (max, sum) single pass to save one read (as in the decode attention kernel),
//      keeping a short row in registers between passes.
#include "common.cuh"

extern "C" __global__ void softmax_rows(const float* x, float* y, int rows, int cols) {
    __shared__ float scratch[WARP_SIZE];
    const int r = blockIdx.x;
    if (r >= rows) return;  // uniform across the block: no thread of it reaches a barrier
    const float* row = x + (long long)r * cols;
    float* out = y + (long long)r * cols;

    float m = -INFINITY;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, row[j]);
    m = block_max(m, scratch);
    // A fully masked row: exp(-inf - 0) = 0 everywhere. An +inf logit gives inf/inf = NaN, as NumPy does.
    if (!isfinite(m)) m = 0.0f;

    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += expf(row[j] - m);
    s = block_sum(s, scratch);
    const float denom = s > 0.0f ? s : 1.0f;  // divide (not multiply by 1/s) to round exactly as NumPy does

    for (int j = threadIdx.x; j < cols; j += blockDim.x) out[j] = expf(row[j] - m) / denom;
}
