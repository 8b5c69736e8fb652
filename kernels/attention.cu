// attention.cu: causal grouped-query attention that never materialises the T x S score matrix.
//
// Math (NumPy twin: NumpyBackend.attention):
//   y[b, h, t] = sum_j softmax_j(q[b, h, t] . k[b, h/g, j] / sqrt(hs)) v[b, h/g, j]
//   over the visible keys j <= q_start + t with key_mask[b, j] true; g = nh / n_kv query heads share a k/v head.
//   A query that sees no key at all gets y = 0 (the NumPy softmax of an all -inf row is 0).
//
// Algorithm: the online softmax of FlashAttention (Dao et al. 2022; Milakov & Gimelshein 2018). Keys arrive in
//   tiles of 32; each query keeps a running max m, a running sum l of exp(score - m) and an unnormalised output acc.
//   A tile with max m_tile rescales the old state by alpha = exp(m - m_new), m_new = max(m, m_tile):
//       l = l * alpha + sum_j exp(s_j - m_new);   acc = acc * alpha + sum_j exp(s_j - m_new) v_j
//   and at the end y = acc / l. Scores only ever live in registers, one tile at a time.
//   Decode (T = 1) has too few queries to fill a GPU, so it also splits the keys into chunks, one block each, and
//   a second kernel merges the chunks' (m, l, acc) with the same rescaling (flash-decoding, Dao et al. 2023).
//
// Thread mapping: one warp per query row. The g query heads of a k/v group are folded into the row axis
//   (row = (h % g) * T + t), so a block's warps share every K/V tile they load: with grouped-query or multi-query
//   heads one tile serves g heads. grid = (ceil(g*T / warps per block), n_kv, B [x chunks for decode]).
//   Inside a tile, lane j scores key j (a full dot product over hs against the query row in shared memory), then
//   for the P.V product lane i owns output dims i, i+32, i+64, i+96 and receives each p_j by __shfl_sync.
//
// Shared memory (dynamic): the block's query rows (warps x hs), one K tile 32 x (hs+1) and one V tile 32 x hs floats.
//   K rows are padded by one float: lane j reads K[j][d] for the same d, and stride hs+1 puts the 32 lanes in 32
//   different banks. V is read along d by consecutive lanes, so it needs no padding. hs <= 128:
//   4 warps at hs = 128 use 2 KB + 16.5 KB + 16 KB.
//
// Memory traffic: q read once, y written once; each K/V tile is read from global memory once per block, so K and V
//   are read ceil(g*T / warps) / g times per query head instead of T times as a naive kernel would.
//   FLOPs: 4 * T * S_visible * hs per head (QK^T and PV), half that under the causal mask in prefill.
//
// Versions (measured results come from `make bench-kernels` on a GPU; none was available when this was written):
//   1. attention_prefill, attention_decode_split + attention_decode_combine: one query row per warp, 32-key tiles.
//      Idea not yet tried: several query rows per warp (more reuse of each K/V tile per load), tensor-core MMA for
//      the two products, K/V tiles double-buffered with cp.async.
#include "common.cuh"

#define TILE_KEYS 32  // keys per tile: one per lane
#define MAX_HEAD_DIM 128
#define DIMS_PER_LANE (MAX_HEAD_DIM / WARP_SIZE)

// The online-softmax state of one query row, spread over the 32 lanes of its warp (lane i holds dims i + 32*r).
struct RowState {
    float m;  // running max of the scores seen
    float l;  // running sum of exp(score - m)
    float acc[DIMS_PER_LANE];  // running sum of exp(score - m) * v
};

// Where a block's rows are and what they see; the same for the prefill and the decode kernels.
struct RowBlock {
    int b, kv_head, row, h, t;  // this warp's row: query head h, position t
    bool valid;                 // false for the spare warps of the last block
    int last_key;               // the last key slot this row may see (causal): q_start + t
    int block_key_end;          // one past the last key any row of the block may see
};

__device__ inline RowBlock locate_rows(int nh, int n_kv, int T, int S, int q_start, int b) {
    RowBlock rb;
    const int g = nh / n_kv, rows = g * T, warps = blockDim.x / WARP_SIZE;
    const int row0 = blockIdx.x * warps;
    const int row_last = min(row0 + warps, rows) - 1;
    rb.b = b;
    rb.kv_head = blockIdx.y;
    rb.row = row0 + threadIdx.x / WARP_SIZE;
    rb.valid = rb.row < rows;
    rb.h = rb.kv_head * g + (rb.valid ? rb.row / T : 0);
    rb.t = rb.valid ? rb.row % T : 0;
    rb.last_key = rb.valid ? q_start + rb.t : -1;
    // the largest t among the block's rows: T-1 if the rows wrap into the next head, else the last row's t
    const int t_max = (row0 / T != row_last / T) ? T - 1 : row_last % T;
    rb.block_key_end = min(S, q_start + t_max + 1);
    return rb;
}

// Runs the online softmax of every row of the block over keys [key_begin, key_end). Every thread of the block
// must call it (it contains barriers); spare warps compute on zeros and write nothing.
__device__ void attend_keys(const float* q, const float* k, const float* v, const unsigned char* key_mask,
                            long long q_sb, long long q_sh, long long q_st, long long kv_sb, long long kv_sh, int S,
                            int hs, float scale, const RowBlock& rb, int key_begin, int key_end, RowState& st) {
    NANOLLM_DYNAMIC_SHARED(float, smem);
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    float* q_rows = smem;                               // (warps, hs)
    float* k_tile = q_rows + warps * hs;                // (TILE_KEYS, hs + 1)
    float* v_tile = k_tile + TILE_KEYS * (hs + 1);      // (TILE_KEYS, hs)
    float* q_row = q_rows + warp * hs;

    const float* q_src = q + rb.b * q_sb + rb.h * q_sh + rb.t * q_st;
    for (int d = lane; d < hs; d += WARP_SIZE) q_row[d] = rb.valid ? q_src[d] : 0.0f;
    const float* k_src = k + rb.b * kv_sb + rb.kv_head * kv_sh;  // (S, hs) with row stride hs
    const float* v_src = v + rb.b * kv_sb + rb.kv_head * kv_sh;
    const unsigned char* mask_row = key_mask + (long long)rb.b * S;

    for (int k0 = key_begin; k0 < key_end; k0 += TILE_KEYS) {
        __syncthreads();  // every warp is done with the previous tile (and the query rows are written)
        for (int e = threadIdx.x; e < TILE_KEYS * hs; e += blockDim.x) {
            const int j = e / hs, d = e % hs;
            const bool inside = k0 + j < key_end;
            k_tile[j * (hs + 1) + d] = inside ? k_src[(long long)(k0 + j) * hs + d] : 0.0f;
            v_tile[j * hs + d] = inside ? v_src[(long long)(k0 + j) * hs + d] : 0.0f;
        }
        __syncthreads();

        const int key = k0 + lane;
        float s = -INFINITY;
        if (key < key_end && key <= rb.last_key && mask_row[key]) {
            float dot = 0.0f;
            for (int d = 0; d < hs; ++d) dot += q_row[d] * k_tile[lane * (hs + 1) + d];
            s = dot * scale;
        }
        const float m_new = fmaxf(st.m, warp_max(s));
        // the guards keep -inf - (-inf) = NaN out while a row has seen no visible key
        const float p = s == -INFINITY ? 0.0f : expf(s - m_new);
        const float alpha = st.m == -INFINITY ? 0.0f : expf(st.m - m_new);
        st.l = st.l * alpha + warp_sum(p);
#pragma unroll
        for (int r = 0; r < DIMS_PER_LANE; ++r) st.acc[r] *= alpha;
        for (int j = 0; j < TILE_KEYS; ++j) {
            const float p_j = __shfl_sync(FULL_MASK, p, j);
#pragma unroll
            for (int r = 0; r < DIMS_PER_LANE; ++r) {
                const int d = lane + r * WARP_SIZE;
                if (d < hs) st.acc[r] += p_j * v_tile[j * hs + d];
            }
        }
        st.m = m_new;
    }
}

__device__ inline void init_state(RowState& st) {
    st.m = -INFINITY;
    st.l = 0.0f;
#pragma unroll
    for (int r = 0; r < DIMS_PER_LANE; ++r) st.acc[r] = 0.0f;
}

// q: (B, nh, T, hs) view with element strides (q_sb, q_sh, q_st); k, v: (B, n_kv, S, hs) views with strides
// (kv_sb, kv_sh, hs, 1) (slots 0..S-1 of a larger KV cache); key_mask: (B, S) bytes; y: contiguous (B, nh, T, hs).
extern "C" __global__ void attention_prefill(const float* q, const float* k, const float* v,
                                             const unsigned char* key_mask, float* y, long long q_sb, long long q_sh,
                                             long long q_st, long long kv_sb, long long kv_sh, int nh, int n_kv,
                                             int T, int S, int hs, int q_start, float scale) {
    const RowBlock rb = locate_rows(nh, n_kv, T, S, q_start, blockIdx.z);
    RowState st;
    init_state(st);
    attend_keys(q, k, v, key_mask, q_sb, q_sh, q_st, kv_sb, kv_sh, S, hs, scale, rb, 0, rb.block_key_end, st);
    if (!rb.valid) return;
    float* out = y + (((long long)rb.b * nh + rb.h) * T + rb.t) * hs;
    const float inv_l = st.l > 0.0f ? 1.0f / st.l : 0.0f;
    const int lane = threadIdx.x % WARP_SIZE;
#pragma unroll
    for (int r = 0; r < DIMS_PER_LANE; ++r) {
        const int d = lane + r * WARP_SIZE;
        if (d < hs) out[d] = st.acc[r] * inv_l;
    }
}

// Decode, step 1: blockIdx.z = b * n_chunks + c; the block covers keys [c * chunk_len, (c+1) * chunk_len) and
// writes its unnormalised state: part_acc (B, n_chunks, nh, T, hs) and part_ml (B, n_chunks, nh, T, 2) = (m, l).
extern "C" __global__ void attention_decode_split(const float* q, const float* k, const float* v,
                                                  const unsigned char* key_mask, float* part_acc, float* part_ml,
                                                  long long q_sb, long long q_sh, long long q_st, long long kv_sb,
                                                  long long kv_sh, int nh, int n_kv, int T, int S, int hs, int q_start,
                                                  float scale, int chunk_len, int n_chunks) {
    const int b = blockIdx.z / n_chunks, c = blockIdx.z % n_chunks;
    const RowBlock rb = locate_rows(nh, n_kv, T, S, q_start, b);
    RowState st;
    init_state(st);
    const int key_begin = c * chunk_len, key_end = min(key_begin + chunk_len, rb.block_key_end);
    attend_keys(q, k, v, key_mask, q_sb, q_sh, q_st, kv_sb, kv_sh, S, hs, scale, rb, key_begin, key_end, st);
    if (!rb.valid) return;
    const long long row = (((long long)b * n_chunks + c) * nh + rb.h) * T + rb.t;
    const int lane = threadIdx.x % WARP_SIZE;
#pragma unroll
    for (int r = 0; r < DIMS_PER_LANE; ++r) {
        const int d = lane + r * WARP_SIZE;
        if (d < hs) part_acc[row * hs + d] = st.acc[r];
    }
    if (lane == 0) {
        part_ml[row * 2] = st.m;
        part_ml[row * 2 + 1] = st.l;
    }
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
