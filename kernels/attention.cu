// attention.cu: causal grouped-query attention that never materialises the T x S score matrix.
//
// Math (NumPy twin: NumpyBackend.attention):
//   s_j = scale * q[b, h, t] . k[b, h/g, j]                      (scale: 1/sqrt(hs) unless the model says otherwise)
//   s_j = softcap * tanh(s_j / softcap)                          (Gemma 2's attention-logit soft-capping, if set)
//   y[b, h, t] = sum_j softmax_j(s_j) v[b, h/g, j]
//   over the visible keys: q_start + t - window < j <= q_start + t (causal, and a sliding window of `window` slots)
//   with key_mask[b, j] true; g = nh / n_kv query heads share a k/v head. Without a window the launcher passes the
//   NumPy twin's rule, window = S (clamped to q_start + T, past which no window hides anything). A query that sees no
//   key at all gets y = 0 (the NumPy softmax of an all -inf row is 0).
//
// Algorithm: the online softmax of FlashAttention (Dao et al. 2022; Milakov & Gimelshein 2018). Keys arrive in
//   tiles of 32; each query keeps a running max m, a running sum l of exp(score - m) and an unnormalised output acc.
//   A tile with max m_tile rescales the old state by alpha = exp(m - m_new), m_new = max(m, m_tile):
//       l = l * alpha + sum_j exp(s_j - m_new);   acc = acc * alpha + sum_j exp(s_j - m_new) v_j
//   and at the end y = acc / l. Scores only ever live in registers, one tile at a time.
//   A block walks only the keys some row of it can see: from the oldest slot inside the window of its first query
//   to the causal limit of its last one, so a sliding window skips whole tiles instead of masking them key by key.
//   Decode (T = 1) has too few queries to fill a GPU, so it also splits the keys into chunks, one block each, and
//   a second kernel merges the chunks' (m, l, acc) with the same rescaling (flash-decoding, Dao et al. 2023). The
//   launcher lays the chunks over the window only (key_begin = its first slot): the chunks before it never start.
//
// Thread mapping: one warp per query row. The g query heads of a k/v group are folded into the row axis
//   (row = (h % g) * T + t), so a block's warps share every K/V tile they load: with grouped-query or multi-query
//   heads one tile serves g heads. grid = (ceil(g*T / warps per block), n_kv, B [x chunks for decode]).
//   Inside a tile, lane j scores key j (a full dot product over hs against the query row in shared memory), then
//   for the P.V product lane i owns output dims i, i+32, ..., i+32*(DIMS-1) and receives each p_j by __shfl_sync.
//
// Head sizes: acc lives in registers, DIMS = D/32 floats per lane, and a register array needs its size at compile
//   time. Each kernel is compiled for three buckets D = 64, 128, 256 (the _hs<D> suffix; the launcher takes the
//   smallest D >= hs). The registers barely differ between buckets (`make kernels`: 47-48 on sm_80, 48-56 on sm_90;
//   the dot-product loop and the indices dominate, and none spills), but the P.V loop does: one kernel for D = 256
//   would run 8 steps per key at hs = 64 of which 6 are predicated off.
//
// Shared memory (dynamic): the block's query rows (warps x hs floats) and ONE tile of 32 x (hs+1) floats that the K
//   tile and then the V tile take in turn. K rows are padded by one float: lane j reads K[j][d] for the same d, and
//   stride hs+1 puts the 32 lanes in 32 different banks (V is read along d by consecutive lanes, padding or not).
//   Why one tile for both: with a K tile and a V tile side by side, hs = 256 at 4 warps needs 4,096 + 32,896 +
//   32,768 = 69,760 bytes, over the 49,152 (48 KiB) a block gets without opting in to more
//   (cudaFuncAttributeMaxDynamicSharedMemorySize), and even with the opt-in only 2 such blocks fit on an A100 SM
//   (164 KiB), 3 on an H100 (228 KiB). Taking turns costs two more __syncthreads per tile and keeps hs = 256 at
//   4,096 + 32,896 = 36,992 bytes (4 blocks per A100 SM, 6 per H100; hs = 128: 2,048 + 16,512 = 18,560). The
//   launcher also caps the warps per block so that warps * hs + 32 * (hs + 1) floats stay within 48 KiB
//   (at hs = 256: 15 warps), so no launch needs the opt-in.
//
// Memory traffic: q read once, y written once; each K/V tile inside a block's key range is read from global memory
//   once per block, so K and V are read ceil(g*T / warps) / g times per query head instead of T times as a naive
//   kernel would. FLOPs: 4 * T * S_visible * hs per head (QK^T and PV), half that under the causal mask in prefill.
//   With a window a block reads only window + (its last t - its first t) keys, whatever S is (a block whose rows
//   wrap into the next head counts t from 0 to T-1).
//
// Versions (measured results come from `make bench-kernels` on a GPU; none was available when this was written):
//   1. (superseded by 2, no longer in this file) attention_prefill, attention_decode_split: hs <= 128 only, a K
//      tile and a V tile side by side, no scale, soft-cap or window options.
//   2. attention_prefill_hs64, attention_prefill_hs128, attention_prefill_hs256, attention_decode_split_hs64,
//      attention_decode_split_hs128, attention_decode_split_hs256 + attention_decode_combine: one query row per warp,
//      32-key tiles, K and V taking turns in one shared tile, a kernel per head-size bucket, keys outside the
//      window skipped by whole tiles and chunks.
//      Idea not yet tried: several query rows per warp (more reuse of each K/V tile per load), tensor-core MMA for
//      the two products, K/V tiles double-buffered with cp.async.
#include "common.cuh"

#define TILE_KEYS 32  // keys per tile: one per lane
#define MAX_HEAD_DIM 256  // the largest head-size bucket, attention_*_hs256 (Gemma's head size)

// What every attention kernel is given: the q/k/v views and the rule that says which scores count, and how.
struct AttentionArgs {
    const float *q, *k, *v;          // q (B, nh, T, hs) with strides (q_sb, q_sh, q_st, 1);
    const unsigned char* key_mask;   // k, v (B, n_kv, S, hs) with strides (kv_sb, kv_sh, hs, 1); mask (B, S) bytes
    long long q_sb, q_sh, q_st, kv_sb, kv_sh;
    int nh, n_kv, T, S, hs;
    int q_start, window;             // query t (slot q_start + t) sees slots q_start + t - window < j <= q_start + t
    float scale, softcap, inv_softcap;  // s = dot * scale; then s = tanh(s * inv_softcap) * softcap if softcap != 0
};

// The online-softmax state of one query row, spread over the 32 lanes of its warp (lane i holds dims i + 32*r).
template <int DIMS>
struct RowState {
    float m = -INFINITY;  // running max of the scores seen
    float l = 0.0f;       // running sum of exp(score - m)
    float acc[DIMS] = {};  // running sum of exp(score - m) * v
};

// Where a block's rows are and what they see; the same for the prefill and the decode kernels.
struct RowBlock {
    int b, kv_head, row, h, t;  // this warp's row: query head h, position t
    bool valid;                 // false for the spare warps of the last block
    int first_key, last_key;    // the window of this row: slots first_key .. last_key (empty for a spare warp)
    int block_key_begin;        // the first key any row of the block may see
    int block_key_end;          // one past the last key any row of the block may see
};

__device__ inline RowBlock locate_rows(const AttentionArgs& a, int b) {
    RowBlock rb;
    const int g = a.nh / a.n_kv, rows = g * a.T, warps = blockDim.x / WARP_SIZE;
    const int row0 = blockIdx.x * warps;
    const int row_last = min(row0 + warps, rows) - 1;
    rb.b = b;
    rb.kv_head = blockIdx.y;
    rb.row = row0 + threadIdx.x / WARP_SIZE;
    rb.valid = rb.row < rows;
    rb.h = rb.kv_head * g + (rb.valid ? rb.row / a.T : 0);
    rb.t = rb.valid ? rb.row % a.T : 0;
    rb.last_key = rb.valid ? a.q_start + rb.t : -1;
    rb.first_key = a.q_start + rb.t - a.window + 1;
    // the block's rows cover t_min .. t_max: all of 0 .. T-1 if they wrap into the next head
    const bool wraps = row0 / a.T != row_last / a.T;
    const int t_min = wraps ? 0 : row0 % a.T, t_max = wraps ? a.T - 1 : row_last % a.T;
    rb.block_key_begin = max(0, a.q_start + t_min - a.window + 1);
    rb.block_key_end = min(a.S, a.q_start + t_max + 1);
    return rb;
}

// Runs the online softmax of every row of the block over keys [key_begin, key_end). Every thread of the block
// must call it (it contains barriers); spare warps compute on zeros and write nothing.
template <int DIMS>
__device__ void attend_keys(const AttentionArgs& a, const RowBlock& rb, int key_begin, int key_end,
                            RowState<DIMS>& st) {
    NANOLLM_DYNAMIC_SHARED(float, smem);
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    const int hs = a.hs, stride = hs + 1;
    float* q_row = smem + warp * hs;      // (warps, hs): this warp's row
    float* tile = smem + warps * hs;      // (TILE_KEYS, hs + 1): the K tile, then the V tile

    const float* q_src = a.q + rb.b * a.q_sb + rb.h * a.q_sh + rb.t * a.q_st;
    for (int d = lane; d < hs; d += WARP_SIZE) q_row[d] = rb.valid ? q_src[d] : 0.0f;
    const float* k_src = a.k + rb.b * a.kv_sb + rb.kv_head * a.kv_sh;  // (S, hs) with row stride hs
    const float* v_src = a.v + rb.b * a.kv_sb + rb.kv_head * a.kv_sh;
    const unsigned char* mask_row = a.key_mask + (long long)rb.b * a.S;

    for (int k0 = key_begin; k0 < key_end; k0 += TILE_KEYS) {
        __syncthreads();  // every warp is done with the previous V tile (and the query rows are written)
        for (int e = threadIdx.x; e < TILE_KEYS * hs; e += blockDim.x) {
            const int j = e / hs, d = e % hs;
            tile[j * stride + d] = k0 + j < key_end ? k_src[(long long)(k0 + j) * hs + d] : 0.0f;
        }
        __syncthreads();

        const int key = k0 + lane;
        float s = -INFINITY;
        if (key < key_end && key >= rb.first_key && key <= rb.last_key && mask_row[key]) {
            float dot = 0.0f;
            for (int d = 0; d < hs; ++d) dot += q_row[d] * tile[lane * stride + d];
            s = dot * a.scale;
            if (a.softcap != 0.0f) s = tanhf(s * a.inv_softcap) * a.softcap;
        }
        const float m_new = fmaxf(st.m, warp_max(s));
        // the guards keep -inf - (-inf) = NaN out while a row has seen no visible key
        const float p = s == -INFINITY ? 0.0f : expf(s - m_new);
        const float alpha = st.m == -INFINITY ? 0.0f : expf(st.m - m_new);
        st.l = st.l * alpha + warp_sum(p);
        st.m = m_new;

        __syncthreads();  // every warp has read its K rows: the V tile may overwrite them
        for (int e = threadIdx.x; e < TILE_KEYS * hs; e += blockDim.x) {
            const int j = e / hs, d = e % hs;
            tile[j * stride + d] = k0 + j < key_end ? v_src[(long long)(k0 + j) * hs + d] : 0.0f;
        }
        __syncthreads();

#pragma unroll
        for (int r = 0; r < DIMS; ++r) st.acc[r] *= alpha;
        for (int j = 0; j < TILE_KEYS; ++j) {
            const float p_j = __shfl_sync(FULL_MASK, p, j);
#pragma unroll
            for (int r = 0; r < DIMS; ++r) {
                const int d = lane + r * WARP_SIZE;
                if (d < hs) st.acc[r] += p_j * tile[j * stride + d];
            }
        }
    }
}

template <int DIMS>
__device__ void prefill(const AttentionArgs& a, float* y) {
    const RowBlock rb = locate_rows(a, blockIdx.z);
    RowState<DIMS> st;
    attend_keys(a, rb, rb.block_key_begin, rb.block_key_end, st);
    if (!rb.valid) return;
    float* out = y + (((long long)rb.b * a.nh + rb.h) * a.T + rb.t) * a.hs;
    const float inv_l = st.l > 0.0f ? 1.0f / st.l : 0.0f;
    const int lane = threadIdx.x % WARP_SIZE;
#pragma unroll
    for (int r = 0; r < DIMS; ++r) {
        const int d = lane + r * WARP_SIZE;
        if (d < a.hs) out[d] = st.acc[r] * inv_l;
    }
}

// Chunk c = blockIdx.z % n_chunks covers keys [key_begin + c * chunk_len, key_begin + (c+1) * chunk_len) and
// writes its unnormalised state: part_acc (B, n_chunks, nh, T, hs) and part_ml (B, n_chunks, nh, T, 2) = (m, l).
// A chunk whose keys no row may see (masked, or outside every row's window) writes m = -inf, l = 0, acc = 0.
template <int DIMS>
__device__ void decode_split(const AttentionArgs& a, float* part_acc, float* part_ml, int key_begin, int chunk_len,
                             int n_chunks) {
    const int b = blockIdx.z / n_chunks, c = blockIdx.z % n_chunks;
    const RowBlock rb = locate_rows(a, b);
    RowState<DIMS> st;
    const int chunk_begin = key_begin + c * chunk_len;
    attend_keys(a, rb, max(chunk_begin, rb.block_key_begin), min(chunk_begin + chunk_len, rb.block_key_end), st);
    if (!rb.valid) return;
    const long long row = (((long long)b * n_chunks + c) * a.nh + rb.h) * a.T + rb.t;
    const int lane = threadIdx.x % WARP_SIZE;
#pragma unroll
    for (int r = 0; r < DIMS; ++r) {
        const int d = lane + r * WARP_SIZE;
        if (d < a.hs) part_acc[row * a.hs + d] = st.acc[r];
    }
    if (lane == 0) {
        part_ml[row * 2] = st.m;
        part_ml[row * 2 + 1] = st.l;
    }
}

// The kernels: one thin entry point per head-size bucket D, each running its template for D / 32 dims per lane.
// q, k, v, key_mask and the scalars up to inv_softcap are AttentionArgs' fields.

// Prefill: grid (ceil(g*T / warps), n_kv, B); y is contiguous (B, nh, T, hs).
extern "C" __global__ void attention_prefill_hs64(const float* q, const float* k, const float* v,
                                                  const unsigned char* key_mask, float* y, long long q_sb,
                                                  long long q_sh, long long q_st, long long kv_sb, long long kv_sh,
                                                  int nh, int n_kv, int T, int S, int hs, int q_start, int window,
                                                  float scale, float softcap, float inv_softcap) {
    const AttentionArgs a = {q, k, v, key_mask, q_sb, q_sh, q_st, kv_sb, kv_sh, nh, n_kv, T, S, hs, q_start, window,
                             scale, softcap, inv_softcap};
    prefill<64 / WARP_SIZE>(a, y);
}

extern "C" __global__ void attention_prefill_hs128(const float* q, const float* k, const float* v,
                                                   const unsigned char* key_mask, float* y, long long q_sb,
                                                   long long q_sh, long long q_st, long long kv_sb, long long kv_sh,
                                                   int nh, int n_kv, int T, int S, int hs, int q_start, int window,
                                                   float scale, float softcap, float inv_softcap) {
    const AttentionArgs a = {q, k, v, key_mask, q_sb, q_sh, q_st, kv_sb, kv_sh, nh, n_kv, T, S, hs, q_start, window,
                             scale, softcap, inv_softcap};
    prefill<128 / WARP_SIZE>(a, y);
}

extern "C" __global__ void attention_prefill_hs256(const float* q, const float* k, const float* v,
                                                   const unsigned char* key_mask, float* y, long long q_sb,
                                                   long long q_sh, long long q_st, long long kv_sb, long long kv_sh,
                                                   int nh, int n_kv, int T, int S, int hs, int q_start, int window,
                                                   float scale, float softcap, float inv_softcap) {
    const AttentionArgs a = {q, k, v, key_mask, q_sb, q_sh, q_st, kv_sb, kv_sh, nh, n_kv, T, S, hs, q_start, window,
                             scale, softcap, inv_softcap};
    prefill<MAX_HEAD_DIM / WARP_SIZE>(a, y);
}

// Decode, step 1: grid (ceil(g*T / warps), n_kv, B * n_chunks), blockIdx.z = b * n_chunks + c.
extern "C" __global__ void attention_decode_split_hs64(const float* q, const float* k, const float* v,
                                                       const unsigned char* key_mask, float* part_acc, float* part_ml,
                                                       long long q_sb, long long q_sh, long long q_st, long long kv_sb,
                                                       long long kv_sh, int nh, int n_kv, int T, int S, int hs,
                                                       int q_start, int window, float scale, float softcap,
                                                       float inv_softcap, int key_begin, int chunk_len, int n_chunks) {
    const AttentionArgs a = {q, k, v, key_mask, q_sb, q_sh, q_st, kv_sb, kv_sh, nh, n_kv, T, S, hs, q_start, window,
                             scale, softcap, inv_softcap};
    decode_split<64 / WARP_SIZE>(a, part_acc, part_ml, key_begin, chunk_len, n_chunks);
}

extern "C" __global__ void attention_decode_split_hs128(const float* q, const float* k, const float* v,
                                                        const unsigned char* key_mask, float* part_acc, float* part_ml,
                                                        long long q_sb, long long q_sh, long long q_st, long long kv_sb,
                                                        long long kv_sh, int nh, int n_kv, int T, int S, int hs,
                                                        int q_start, int window, float scale, float softcap,
                                                        float inv_softcap, int key_begin, int chunk_len, int n_chunks) {
    const AttentionArgs a = {q, k, v, key_mask, q_sb, q_sh, q_st, kv_sb, kv_sh, nh, n_kv, T, S, hs, q_start, window,
                             scale, softcap, inv_softcap};
    decode_split<128 / WARP_SIZE>(a, part_acc, part_ml, key_begin, chunk_len, n_chunks);
}

extern "C" __global__ void attention_decode_split_hs256(const float* q, const float* k, const float* v,
                                                        const unsigned char* key_mask, float* part_acc, float* part_ml,
                                                        long long q_sb, long long q_sh, long long q_st, long long kv_sb,
                                                        long long kv_sh, int nh, int n_kv, int T, int S, int hs,
                                                        int q_start, int window, float scale, float softcap,
                                                        float inv_softcap, int key_begin, int chunk_len, int n_chunks) {
    const AttentionArgs a = {q, k, v, key_mask, q_sb, q_sh, q_st, kv_sb, kv_sh, nh, n_kv, T, S, hs, q_start, window,
                             scale, softcap, inv_softcap};
    decode_split<MAX_HEAD_DIM / WARP_SIZE>(a, part_acc, part_ml, key_begin, chunk_len, n_chunks);
}

// Decode, step 2: grid (nh * T, B), one thread per output dim d (blockDim.x >= hs). Merges the chunks:
//   M = max_c m_c;  L = sum_c l_c exp(m_c - M);  y = sum_c acc_c exp(m_c - M) / L  (0 when no key was visible).
extern "C" __global__ void attention_decode_combine(const float* part_acc, const float* part_ml, float* y, int nh,
                                                   int T, int hs, int n_chunks) {
    const int b = blockIdx.y, ht = blockIdx.x, d = threadIdx.x;
    if (d >= hs) return;
    const long long rows_per_chunk = (long long)nh * T;
    float M = -INFINITY;
    for (int c = 0; c < n_chunks; ++c) M = fmaxf(M, part_ml[(((long long)b * n_chunks + c) * rows_per_chunk + ht) * 2]);
    float L = 0.0f, acc = 0.0f;
    if (M != -INFINITY) {
        for (int c = 0; c < n_chunks; ++c) {
            const long long row = ((long long)b * n_chunks + c) * rows_per_chunk + ht;
            const float m_c = part_ml[row * 2];
            if (m_c == -INFINITY) continue;  // a chunk with no visible key contributes nothing
            const float w = expf(m_c - M);
            L += part_ml[row * 2 + 1] * w;
            acc += part_acc[row * hs + d] * w;
        }
    }
    y[((long long)b * rows_per_chunk + ht) * hs + d] = L > 0.0f ? acc / L : 0.0f;
}
