// sampling.cu: logits -> one token id per row: temperature, top-k, softmax, top-p, min-p and the draw in one kernel.
//
// Math (NumPy twin: NumpyBackend.sample, which is nanollm.sampling's filtered_probs + draw row by row, or the argmax
// at temperature 0; this kernel must return the same token):
//   greedy (temperature 0): the first index of the largest logit. So is a temperature too small for float32: when
//     max(logits) * (1/temperature) is not finite (nanollm.sampling.overflowed: softmax would be NaN there, and its
//     T -> 0 limit is the argmax).
//   z = logits * (1/temperature)                         (the reciprocal rounded to float32 first, as NumPy does)
//   top-k: keep z_i >= kth, kth = the k-th largest z counted with multiplicity; ties with kth are all kept.
//   softmax: prob_i = exp(z_i - max z) / sum_j exp(z_j - max z) over the kept z (the others have prob 0).
//   top-p: keep prob_i >= tau, tau = the largest probability value whose "mass at or above it" reaches p
//          (equivalently the probability at which the descending cumulative sum first reaches p; ties kept).
//   min-p: of those, keep prob_i >= min_p * (the largest prob), the largest prob being exp(0) / sum = 1 / sum
//          (the largest z survives every filter); min_p arrives rounded to float32 and the product is float32, as
//          NumPy computes `min_p * probs.max()` for a Python float min_p. min_p = 0 keeps everything.
//   draw: the first index i (in vocabulary order) whose cumulative kept mass exceeds u * total mass, in float64.
//
// No sort. Both thresholds are found by bisection on bits: ordered_key (common.cuh) maps floats to unsigned ints in
//   the same order, and "the largest key t such that weight(keys >= t) >= target" is built one bit at a time from
//   the top, each step one block reduction over the row (32 steps). Weight is a count for top-k (target k) and
//   probability mass for top-p (target p). The result is always the key of an element of the row, so kth and tau
//   are exact values of the row, and the comparisons z_i >= kth, prob_i >= tau are the reference's comparisons.
//
// Tie rule and where the kernel may differ from NumPy:
//   * equal logits: top-k and top-p keep every member of a tie, on both sides; the draw walks the vocabulary in
//     index order, so among equal candidates the lower index owns the lower slice of [0, 1). Exact agreement.
//   * float32 rounding: the softmax sum (and the top-p mass) is added in a different order than NumPy's, so a
//     probability can differ by an ulp or so. The token can then differ only when u * total lies within that
//     rounding of a cumulative boundary, p within it of a partial mass of the sorted probabilities, or a
//     probability within it of the min-p threshold min_p * max prob.
//   * rows containing +inf, or entirely -inf, are undefined (NumPy gives NaN probabilities too). A row holding a NaN
//     never reaches the kernel: KernelBackend.sample refuses it with the twin's ValueError.
//
// Thread mapping: one block per row; threads stride over the vocabulary for the reductions (coalesced). For the
//   draw each thread takes a contiguous span of ceil(V / threads) ids; thread 0 adds the span sums in order (one
//   float64 per thread), and the one thread whose span holds the crossing walks it.
//
// Memory traffic: nothing is written but the id. Values are recomputed from the logits at every pass instead of
//   being stored: ~1 (max) + 32 (top-k bisection) + 1 (sum) + 32 (top-p bisection) + 1 (draw) reads of the row,
//   which for a 128k vocabulary (512 KB) stay in L2, plus one read for the overflow check. Greedy is one read.
//   min-p costs no pass: its threshold comes from the sum.
//
// Versions (measured results come from `make bench-kernels` on a GPU; none was available when this was written):
//   1. sample_rows: 1-bit bisection for both thresholds; min-p as a third test in the draw. Idea not yet tried:
//      8-bit radix select (a 256-bin histogram per pass: 4 passes instead of 32), skipping top-p bisection when
//      top-k already left few tokens.
#include "common.cuh"

#define MAX_SAMPLE_THREADS 1024

struct SampleRow {
    const float* logits;
    int V;
    float inv_temperature;
    unsigned int kth_key;  // ordered_key of the k-th largest z; 0 keeps every z
    float max_z;
    float sum;             // sum of exp(z - max_z) over the kept z
    unsigned int tau_key;  // ordered_key of the top-p threshold tau; 0 keeps every prob
    float min_prob;        // the min-p threshold min_p * (1 / sum); 0 keeps every prob
};

__device__ inline float z_at(const SampleRow& s, int i) { return s.logits[i] * s.inv_temperature; }

// the softmax probability after top-k (0 for a filtered token), recomputed identically at every pass
__device__ inline float prob_at(const SampleRow& s, int i) {
    const float z = z_at(s, i);
    return ordered_key(z) >= s.kth_key ? expf(z - s.max_z) / s.sum : 0.0f;
}

// the probability the draw walks: prob_at after top-p and min-p (0 for a filtered token)
__device__ inline float kept_prob(const SampleRow& s, int i) {
    const float p = prob_at(s, i);
    return ordered_key(p) >= s.tau_key && p >= s.min_prob ? p : 0.0f;
}

// weight of the elements whose key is >= t: a count (top-k: keys of z) or a mass (top-p: keys of prob)
__device__ inline float weight_at_or_above(const SampleRow& s, unsigned int t, bool by_mass, float* scratch) {
    float w = 0.0f;
    for (int i = threadIdx.x; i < s.V; i += blockDim.x) {
        if (by_mass) {
            const float p = prob_at(s, i);
            if (ordered_key(p) >= t) w += p;
        } else if (ordered_key(z_at(s, i)) >= t) {
            w += 1.0f;  // counts stay exact in float32 up to 2^24, far above any vocabulary
        }
    }
    return block_sum(w, scratch);
}

// The largest key t with weight(keys >= t) >= target, built from the top bit down; 0 when even t = 0 falls short.
__device__ unsigned int bisect_threshold(const SampleRow& s, double target, bool by_mass, float* scratch) {
    unsigned int t = 0;
    for (int bit = 31; bit >= 0; --bit) {
        const unsigned int candidate = t | (1u << bit);
        if ((double)weight_at_or_above(s, candidate, by_mass, scratch) >= target) t = candidate;
    }
    return t;
}

__device__ void argmax_row(const float* row, int V, long long* out) {
    __shared__ float warp_best[WARP_SIZE];
    __shared__ int warp_index[WARP_SIZE];
    float best = -INFINITY;
    int index = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        if (row[i] > best || (row[i] == best && i < index)) best = row[i], index = i;
    // the lower index wins a tie, so the result is the first maximum, as np.argmax
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(FULL_MASK, best, offset);
        const int other_index = __shfl_xor_sync(FULL_MASK, index, offset);
        if (other > best || (other == best && other_index < index)) best = other, index = other_index;
    }
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    if (lane == 0) warp_best[warp] = best, warp_index[warp] = index;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)blockDim.x / WARP_SIZE; ++w)
            if (warp_best[w] > best || (warp_best[w] == best && warp_index[w] < index))
                best = warp_best[w], index = warp_index[w];
        *out = index;
    }
}

// logits (B, V) float32, uniforms (B,) float64 in [0, 1), out (B,) int64. grid = B, blockDim.x <= 1024.
// greedy != 0 ignores the other settings; top_k = 0 or >= V disables top-k; top_p >= 1 disables top-p;
// min_p = 0 disables min-p.
extern "C" __global__ void sample_rows(const float* logits, const double* uniforms, long long* out, int V,
                                       int greedy, float inv_temperature, int top_k, double top_p, float min_p) {
    __shared__ float scratch[WARP_SIZE];
    __shared__ double span_start[MAX_SAMPLE_THREADS + 1];
    const int b = blockIdx.x;
    SampleRow s;
    s.logits = logits + (long long)b * V;
    s.V = V;
    if (greedy) {
        argmax_row(s.logits, V, out + b);
        return;
    }
    s.inv_temperature = inv_temperature;

    // z = logits / T past float32's range (T ~ 1e-45, or ~1e-38 with logits of a few units): greedy, the T -> 0
    // limit. Decided on the largest raw logit, so the NaN of 0 * inf never enters a comparison.
    float largest = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) largest = fmaxf(largest, s.logits[i]);
    largest = block_max(largest, scratch);  // every thread holds it: the whole block takes the same branch
    if (largest > -INFINITY && !isfinite(largest * inv_temperature)) {
        argmax_row(s.logits, V, out + b);
        return;
    }

    // top-k threshold, then the softmax over what it keeps (the maximum is always kept)
    s.kth_key = 0;
    if (top_k > 0 && top_k < V) s.kth_key = bisect_threshold(s, (double)top_k, false, scratch);
    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, z_at(s, i));
    s.max_z = block_max(m, scratch);
    s.sum = 1.0f;  // prob_at divides by it: summing the unnormalised exps first
    float e = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) e += prob_at(s, i);
    s.sum = block_sum(e, scratch);

    // p stays a double: NumPy's searchsorted compares the float32 cumulative mass with p in float64
    s.tau_key = top_p < 1.0 ? bisect_threshold(s, top_p, true, scratch) : 0u;
    s.min_prob = min_p * (1.0f / s.sum);  // prob_at of the largest z: expf(0) / sum, divided as NumPy divides

    // the draw: this thread's contiguous span of ids and its kept mass, in float64 like the reference's cumsum
    const int span = (V + blockDim.x - 1) / blockDim.x;
    const int begin = min(V, (int)threadIdx.x * span), end = min(V, begin + span);
    double mass = 0.0;
    for (int i = begin; i < end; ++i) mass += kept_prob(s, i);
    span_start[threadIdx.x + 1] = mass;
    __syncthreads();
    if (threadIdx.x == 0) {  // in order, so every thread sees the same boundaries: span_start[t+1] = start + mass
        span_start[0] = 0.0;
        for (int t = 1; t <= (int)blockDim.x; ++t) span_start[t] += span_start[t - 1];
        out[b] = V - 1;  // u * total == total can only come from rounding; the reference clamps to V-1 too
    }
    __syncthreads();
    const double target = uniforms[b] * span_start[blockDim.x];
    const double start = span_start[threadIdx.x];
    if (start <= target && start + mass > target) {  // exactly one thread's span holds the crossing
        double partial = 0.0;
        for (int i = begin; i < end; ++i) {
            partial += kept_prob(s, i);
            if (start + partial > target) {
                out[b] = i;
                break;
            }
        }
    }
}
