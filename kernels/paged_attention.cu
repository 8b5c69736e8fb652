// paged_attention.cu: causal grouped-query attention of a ragged batch whose keys and values live in a paged KV
// cache (nanollm/paged_cache.py), each key found through its sequence's block table (vLLM's PagedAttention).
//
// Math (NumPy twin: NumpyBackend.paged_attention, which gathers each sequence's blocks and calls attention):
//   sequence b holds L = lengths[b] slots; slot j is row j % bs of block block_tables[b, j / bs] of the pools
//   k_pool, v_pool (n_blocks, n_kv, bs, hs). Its T queries are its last T slots: query t sits at slot L - T + t
//   (a decode step: T = 1 and L - 1). Then, as attention.cu:
//   s_j = scale * q[b, h, t] . k_j, soft-capped to softcap * tanh(s_j / softcap) if set, and
//   y[b, h, t] = sum_j softmax_j(s_j) v_j over L - T + t - window < j <= L - T + t (the launcher passes
//   window = the longest L when the model has none); g = nh / n_kv query heads share a k/v head. Unlike attention.cu
//   there is no key mask: a sequence's table holds only its own slots, so a ragged batch has no padding to hide.
//
// Algorithm: attention.cu's online softmax (running max m, sum l, unnormalised output acc per query row, rescaled by
//   alpha = exp(m - m_new) at each tile of 32 keys). What paging adds is one step per tile, the page-table walk:
//   lane j reads the block of slot k0 + j from the table (one int), and when a warp copies key row j into shared
//   memory it takes that block from lane j by __shfl_sync, so each row's address costs one shuffle, not a table read
//   per element. A tile may span several blocks (bs < 32) or part of one (bs > 32): rows are addressed one by one,
//   so any block size works. Keys outside every row's window are not visited: the block walks from the first slot
//   its first row may see to the last slot its last row may see.
//
// Thread mapping: one warp per query row, the g heads of a k/v group folded into the row axis (row = (h % g) * T +
//   t), so the warps of a block share every tile they load. grid = (ceil(g*T / warps), n_kv, B): in a decode step
//   with g <= warps that is one block per (sequence, k/v head), which reads that head's keys once. Inside a tile,
//   lane j scores key j (a dot product over hs against the query row in shared memory); for P.V lane i owns output
//   dims i, i+32, ..., i+32*(DIMS-1) and receives each p_j by __shfl_sync. Copying a tile, warp w copies rows w,
//   w + warps, ...: its 32 lanes read one key row of hs contiguous floats (a coalesced read of a block's row).
//
// Head sizes and shared memory: as attention.cu, a kernel per head-size bucket D = 64, 128, 256 (acc holds D/32
//   floats per lane in registers), and dynamic shared memory of the block's query rows (warps x hs floats) plus one
//   tile of 32 x (hs + 1) floats that K and then V take in turn. The launcher sizes it with attention.cu's rule
//   (kernel_backend.attention_block: within 48 KiB at every head size). `make kernels`: 48 registers per thread
//   in every bucket on sm_80 and sm_90, no spill, no static shared memory.
//
// Memory traffic: q read once, y written once; each visible K/V row read from global memory once per block of the
//   grid that covers its k/v head (once in decode when g <= warps); the table: one int per lane per tile. Keys are
//   read where they lie: no contiguous copy of the sequence is made (what the NumPy twin does).
//
// Versions (measured results come from a GPU; none was available when this was written):
//   1. paged_attention_hs64, paged_attention_hs128, paged_attention_hs256: one query row per warp, 32-key tiles
//      whose rows are found by a page-table walk per tile, K and V taking turns in one shared tile, a kernel per
//      head-size bucket.
//      Ideas not yet tried: split a long sequence's keys into partitions merged afterwards (vLLM's paged_attention
//      v2; attention.cu's attention_decode_split), which a batch of few long sequences needs to fill a GPU; keys
//      and values in float16 (half the bytes a decode step reads).
#include "common.cuh"

#define TILE_KEYS 32  // keys per tile: one per lane
#define MAX_HEAD_DIM 256  // the largest head-size bucket, paged_attention_hs256

// What the kernel is given: the queries, the pools, the tables and the rule that says which scores count, and how.
struct PagedArgs {
    const float *q, *k_pool, *v_pool;  // q (B, nh, T, hs) contiguous; pools (n_blocks, n_kv, bs, hs) contiguous
    const int *block_tables, *lengths;  // (B, max_blocks): the pool block of each bs slots; (B,): slots held
    int nh, n_kv, T, hs, bs, max_blocks;
    int window;                          // query t (slot L - T + t) sees slots L - T + t - window < j <= L - T + t
    float scale, softcap, inv_softcap;   // s = dot * scale; then s = tanh(s * inv_softcap) * softcap if softcap != 0
};

// Copy the rows of slots k0 .. k0+31 of one pool into tile (TILE_KEYS, hs + 1); a slot at or past key_end gives
// zeros. lane_block is the pool block of this lane's slot k0 + lane: row j's comes from lane j by a shuffle.
__device__ void load_tile(const float* pool, const PagedArgs& a, int kv_head, int k0, int key_end, int lane_block,
                          float* tile) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    for (int j = warp; j < TILE_KEYS; j += warps) {  // the same j for every lane of the warp: the shuffle is safe
        const int block = __shfl_sync(FULL_MASK, lane_block, j);
        const int slot = k0 + j;
        const float* row = pool + (((long long)block * a.n_kv + kv_head) * a.bs + slot % a.bs) * a.hs;
        for (int d = lane; d < a.hs; d += WARP_SIZE) tile[j * (a.hs + 1) + d] = slot < key_end ? row[d] : 0.0f;
    }
}

template <int DIMS>
__device__ void paged_attend(const PagedArgs& a, float* y) {
    NANOLLM_DYNAMIC_SHARED(float, smem);
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    const int hs = a.hs, stride = hs + 1, g = a.nh / a.n_kv, rows = g * a.T;
    const int b = blockIdx.z, kv_head = blockIdx.y, row0 = blockIdx.x * warps, row = row0 + warp;
    const bool valid = row < rows;  // false for the spare warps of the last block: they compute on zeros
    const int h = kv_head * g + (valid ? row / a.T : 0), t = valid ? row % a.T : 0;
    const int first_slot = a.lengths[b] - a.T;  // the slot of query 0
    const int last_key = valid ? first_slot + t : -1, first_key = first_slot + t - a.window + 1;
    // the block's rows cover queries t_min .. t_max: all of 0 .. T-1 if they wrap into the next head
    const int row_last = min(row0 + warps, rows) - 1;
    const bool wraps = row0 / a.T != row_last / a.T;
    const int t_min = wraps ? 0 : row0 % a.T, t_max = wraps ? a.T - 1 : row_last % a.T;
    const int key_begin = max(0, first_slot + t_min - a.window + 1), key_end = first_slot + t_max + 1;

    float* q_row = smem + warp * hs;  // (warps, hs): this warp's query row
    float* tile = smem + warps * hs;  // (TILE_KEYS, hs + 1): the K tile, then the V tile
    const float* q_src = a.q + (((long long)b * a.nh + h) * a.T + t) * hs;
    for (int d = lane; d < hs; d += WARP_SIZE) q_row[d] = valid ? q_src[d] : 0.0f;
    const int* table = a.block_tables + (long long)b * a.max_blocks;

    float m = -INFINITY, l = 0.0f, acc[DIMS];
#pragma unroll
    for (int r = 0; r < DIMS; ++r) acc[r] = 0.0f;
    for (int k0 = key_begin; k0 < key_end; k0 += TILE_KEYS) {
        const int slot = k0 + lane;
        const int lane_block = slot < key_end ? table[slot / a.bs] : 0;  // the page-table walk of this tile
        __syncthreads();  // every warp is done with the previous V tile (and the query rows are written)
        load_tile(a.k_pool, a, kv_head, k0, key_end, lane_block, tile);
        __syncthreads();

        float s = -INFINITY;
        if (slot < key_end && slot >= first_key && slot <= last_key) {
            float dot = 0.0f;
            for (int d = 0; d < hs; ++d) dot += q_row[d] * tile[lane * stride + d];
            s = dot * a.scale;
            if (a.softcap != 0.0f) s = tanhf(s * a.inv_softcap) * a.softcap;
        }
        const float m_new = fmaxf(m, warp_max(s));
        // the guards keep -inf - (-inf) = NaN out while a row has seen no visible key
        const float p = s == -INFINITY ? 0.0f : expf(s - m_new);
        const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
        l = l * alpha + warp_sum(p);
        m = m_new;

        __syncthreads();  // every warp has read its K rows: the V tile may overwrite them
        load_tile(a.v_pool, a, kv_head, k0, key_end, lane_block, tile);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < DIMS; ++r) acc[r] *= alpha;
        for (int j = 0; j < TILE_KEYS; ++j) {
            const float p_j = __shfl_sync(FULL_MASK, p, j);
#pragma unroll
            for (int r = 0; r < DIMS; ++r) {
                const int d = lane + r * WARP_SIZE;
                if (d < hs) acc[r] += p_j * tile[j * stride + d];
            }
        }
    }
    if (!valid) return;
    float* out = y + (((long long)b * a.nh + h) * a.T + t) * hs;
    const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;  // a query that sees no key gets 0, as the NumPy softmax
#pragma unroll
    for (int r = 0; r < DIMS; ++r) {
        const int d = lane + r * WARP_SIZE;
        if (d < hs) out[d] = acc[r] * inv_l;
    }
}

// The kernels: one thin entry point per head-size bucket D, each running the template for D / 32 dims per lane.
// grid (ceil(g*T / warps), n_kv, B); y is contiguous (B, nh, T, hs). The arguments are PagedArgs' fields.
extern "C" __global__ void paged_attention_hs64(const float* q, const float* k_pool, const float* v_pool,
                                                const int* block_tables, const int* lengths, float* y, int nh,
                                                int n_kv, int T, int hs, int bs, int max_blocks, int window,
                                                float scale, float softcap, float inv_softcap) {
    const PagedArgs a = {q, k_pool, v_pool, block_tables, lengths, nh, n_kv, T, hs, bs, max_blocks, window, scale,
                         softcap, inv_softcap};
    paged_attend<64 / WARP_SIZE>(a, y);
}

extern "C" __global__ void paged_attention_hs128(const float* q, const float* k_pool, const float* v_pool,
                                                 const int* block_tables, const int* lengths, float* y, int nh,
                                                 int n_kv, int T, int hs, int bs, int max_blocks, int window,
                                                 float scale, float softcap, float inv_softcap) {
    const PagedArgs a = {q, k_pool, v_pool, block_tables, lengths, nh, n_kv, T, hs, bs, max_blocks, window, scale,
                         softcap, inv_softcap};
    paged_attend<128 / WARP_SIZE>(a, y);
}

extern "C" __global__ void paged_attention_hs256(const float* q, const float* k_pool, const float* v_pool,
                                                 const int* block_tables, const int* lengths, float* y, int nh,
                                                 int n_kv, int T, int hs, int bs, int max_blocks, int window,
                                                 float scale, float softcap, float inv_softcap) {
    const PagedArgs a = {q, k_pool, v_pool, block_tables, lengths, nh, n_kv, T, hs, bs, max_blocks, window, scale,
                         softcap, inv_softcap};
    paged_attend<MAX_HEAD_DIM / WARP_SIZE>(a, y);
}
