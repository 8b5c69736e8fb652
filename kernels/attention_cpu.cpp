// attention_cpu.cpp: attention over the KV cache on the CPU, the cpu backend's (nanollm/backends/cpu_backend.py):
// a decode step's one query per sequence, and a prefill's T.
//
// Why: at a decode step each sequence's one query reads every key and value it has, so a batch's attention reads the
// whole KV cache: 8 GPT-2 sequences of 160 tokens read 94 MB a step, a fifth of the weights' 495 MB. NumPy does it as
// one small matrix product per sequence and key/value head on one core (OpenBLAS does not thread products this
// small), and the paged cache first copies each sequence's blocks into one array. In a prefill NumPy makes the whole
// (T, S) score matrix of every head, masks it and takes its softmax in several passes, again on one core: 12% of a
// GPT-2 prefill of 128 tokens. Here the work is cut into tasks, shared among the pool's threads (kernels/pool_cpu.h)
// as they come free, with the keys read where they lie.
//
// A task is up to MAX_ROWS query rows of one sequence that read the same key/value head: the query heads of its
// group (grouped-query attention: 3 in the Llama shape, 7 in Qwen2.5-0.5B; Hugging Face's repeat_kv) at one or more
// positions, position-major: (t, h0), (t, h0+1), ..., (t+1, h0), ... So each key and value a task reads from memory
// serves all its rows (a decode step reads the cache once per group, not once per query head; a prefill reads each
// key once per 8 rows), and a group too large for one task (multi-query models: Falcon-7B's 71 heads share one) is
// split among several. In a paged pool's decode step a task takes the rows of several key/value heads (see
// attention_cached): a block holds its heads one after another, and such a task reads it front to back.
//
// NumPy twins: NumpyBackend.attention (no key mask) and NumpyBackend.paged_attention
// (nanollm/backends/numpy_backend.py); tests/test_cpu_backend.py compares them.
//
// Where the keys lie, one description for both caches. Slot j of sequence b is row j % bs of block
// tables[b * table_width + j / bs]; a block holds n_kv heads of bs slots of hs floats, at
//     k + block * block_stride + head * head_stride + (j % bs) * slot_stride     (in floats; v the same)
//   paged pool (n_blocks, n_kv, bs, hs):      the table is the sequence's block table
//   KVCache buffer (B, n_kv, max_len, hs):    row b is one block of max_len slots, its table [b]
//   a pass's own keys (no cache):             the same, with the strides of the q/k/v projection's view
//
// The math, for the query of head h at position t of sequence b, whose length is L (its T queries are its last T
// slots, so this one is slot L - T + t and sees the L_t = L - T + t + 1 slots up to it) and whose key/value head is
// h / (nh / n_kv):
//     s_j = scale * q . k_j   (then softcap * tanh(s_j / softcap) when softcap > 0: Gemma 2)
//     out = sum_j softmax(s)_j v_j   over j in [L_t - window, L_t) (window 0: every slot, 0 .. L_t - 1)
// as an online softmax taken a chunk of keys at a time (flash attention's form): the scores of CHUNK keys are
// computed into a small local array, then each row's running maximum m, running sum l of exp(s - m) and running
// weighted sum of values are brought up to date once for the chunk, rescaled by exp(m_old - m_new) when its maximum
// is larger (Milakov and Gimelshein 2018). Nothing of length L is stored, and the branch and rescale are paid once
// per chunk instead of once per key. A key a row may not see (after its own slot, or before its window) scores -inf
// and weighs 0. Float32 throughout.
//
// What made the first version of this file slow (35 us for the Llama shape's 12 heads over 130 keys, 15 us now, in
// cache): finding slot j's block by j / bs and j % bs, two 64-bit divisions per key (tens of cycles each), and a
// maximum test per key. Here the slots are walked with a block counter and an offset in it, and the queries
// (pre-multiplied by the scale) and the value sums are small local arrays, in the core's first-level cache.

#include <cstring>

#include "pool_cpu.h"
#include "simd_cpu.h"

typedef float vec8 __attribute__((vector_size(32), aligned(4)));
typedef float vec4 __attribute__((vector_size(16), aligned(4)));

constexpr long long CHUNK = 32;           // keys scored before the running sums are updated
constexpr long long MAX_ROWS = 8;         // query rows one task attends for
constexpr long long MAX_HEAD_DIM = 512;  // the local arrays' size; larger heads go to the NumPy twin (cpu_backend.py)

// a . b over n floats: 16 products side by side in one vector (a single running sum would chain every add on the one
// before, as float additions may not be reordered), then the 16 summed as a tree of halves (4 vector adds, not 15
// dependent scalar ones), then the tail.
static inline float dot(const float* a, const float* b, long long n) {
    vec16 part = {};
    long long d = 0;
    for (; d + 16 <= n; d += 16) part += *(const vec16*)(a + d) * *(const vec16*)(b + d);
    vec8 p8 = __builtin_shufflevector(part, part, 0, 1, 2, 3, 4, 5, 6, 7)
            + __builtin_shufflevector(part, part, 8, 9, 10, 11, 12, 13, 14, 15);
    vec4 p4 = __builtin_shufflevector(p8, p8, 0, 1, 2, 3) + __builtin_shufflevector(p8, p8, 4, 5, 6, 7);
    float s = (p4[0] + p4[2]) + (p4[1] + p4[3]);
    for (; d < n; d++) s += a[d] * b[d];
    return s;
}

// acc[0 .. hs) += sum_i p[i] v[at[i] .. at[i] + hs) for the n value rows of a chunk, in order of i: the sums are held
// in registers (four vectors) across the chunk, not stored and loaded again for each row (each row's adds then
// waited for the store of the one before: a quarter of a decode step's attention, in cache).
static inline void add_weighted(float* acc, const float* v, const long long* at, const float* p, long long n,
                                long long hs) {
    long long d = 0;
    for (; d + 64 <= hs; d += 64) {
        vec16 a0 = *(vec16*)(acc + d), a1 = *(vec16*)(acc + d + 16), a2 = *(vec16*)(acc + d + 32),
              a3 = *(vec16*)(acc + d + 48);
        for (long long i = 0; i < n; i++) {
            const float* vi = v + at[i] + d;
            a0 += p[i] * *(const vec16*)vi, a1 += p[i] * *(const vec16*)(vi + 16);
            a2 += p[i] * *(const vec16*)(vi + 32), a3 += p[i] * *(const vec16*)(vi + 48);
        }
        *(vec16*)(acc + d) = a0, *(vec16*)(acc + d + 16) = a1, *(vec16*)(acc + d + 32) = a2;
        *(vec16*)(acc + d + 48) = a3;
    }
    for (; d + 16 <= hs; d += 16) {
        vec16 a0 = *(vec16*)(acc + d);
        for (long long i = 0; i < n; i++) a0 += p[i] * *(const vec16*)(v + at[i] + d);
        *(vec16*)(acc + d) = a0;
    }
    for (; d < hs; d++)
        for (long long i = 0; i < n; i++) acc[d] += p[i] * v[at[i] + d];
}

// q (B, nh, T, hs), out (B, nh, T, hs), tables (B, table_width), lengths (B,); k, v as described in the header.
extern "C" void attention_cached(const float* q, const float* k, const float* v, float* out, const int* tables,
                                 long long table_width, const int* lengths, long long B, long long nh, long long T,
                                 long long n_kv, long long hs, long long bs, long long block_stride,
                                 long long head_stride, long long slot_stride, float scale, float softcap,
                                 long long window) {
    // A sequence's query rows, key/value head after key/value head: (kv, t, g) is head kv * group + g at position t.
    // A task takes up to MAX_ROWS of them: a tile of one head's rows, or, where a block holds its heads one after
    // another (a paged pool) and a head's rows are few (a decode step), several whole heads, so that it reads each
    // block front to back instead of a piece of each (16 slots: 4 KiB at GPT-2's heads, after which the hardware's
    // prefetcher starts over). A paged batch of 8 GPT-2 sequences of 150 tokens, cold: 420 -> 340 us a layer.
    long long group = nh / n_kv, per_head = T * group;  // query heads per key/value head; rows per key/value head
    long long heads = 1;                                // key/value heads a task takes
    if (head_stride == bs * slot_stride && per_head <= MAX_ROWS) {
        long long parts = (n_kv + MAX_ROWS / per_head - 1) / (MAX_ROWS / per_head);  // tasks a sequence needs
        heads = (n_kv + parts - 1) / parts;                                           // as even as they can be
    }
    long long tiles = (per_head + MAX_ROWS - 1) / MAX_ROWS;  // tasks per key/value head's rows (1 if heads > 1)
    long long per_sequence = (n_kv + heads - 1) / heads * tiles, tasks = B * per_sequence;
    for_each_dynamic(tasks > 1, tasks, 1, [&](long long task) {
        long long b = task / per_sequence, kv0 = task % per_sequence / tiles * heads, tile = task % tiles;
        long long w0 = tile * MAX_ROWS, wn = per_head - w0 < MAX_ROWS ? per_head - w0 : MAX_ROWS;  // a head's rows
        long long R = (n_kv - kv0 < heads ? n_kv - kv0 : heads) * wn;
        const float* q_row[MAX_ROWS];
        float* out_row[MAX_ROWS];
        long long head_at[MAX_ROWS];                // where row r's key/value head lies in a block
        long long first[MAX_ROWS], last[MAX_ROWS];  // the slots row r sees: first[r] .. last[r] - 1
        float qs[MAX_ROWS][MAX_HEAD_DIM], acc[MAX_ROWS][MAX_HEAD_DIM];  // scaled queries, running value sums
        float m[MAX_ROWS], l[MAX_ROWS];                                 // running maximum and sum of exp(s - m)
        long long lo = lengths[b], hi = 0;  // the slots any row sees
        for (long long r = 0; r < R; r++) {
            long long kv = kv0 + r / wn, w = w0 + r % wn, t = w / group, h = kv * group + w % group;
            q_row[r] = q + ((b * nh + h) * T + t) * hs;
            out_row[r] = out + ((b * nh + h) * T + t) * hs;
            head_at[r] = kv * head_stride;
            last[r] = lengths[b] - T + t + 1;
            first[r] = window > 0 && last[r] > window ? last[r] - window : 0;
            lo = first[r] < lo ? first[r] : lo, hi = last[r] > hi ? last[r] : hi;
            for (long long d = 0; d < hs; d++) qs[r][d] = q_row[r][d] * scale, acc[r][d] = 0.0f;
            m[r] = -INFINITY, l[r] = 0.0f;
        }
        const int* table = tables + b * table_width;
        long long block = lo / bs, offset = lo % bs;  // where slot j lies, advanced with j: no division per key
        for (long long j0 = lo; j0 < hi; j0 += CHUNK) {
            long long n = hi - j0 < CHUNK ? hi - j0 : CHUNK;
            long long at[CHUNK];  // where the chunk's slots lie in a block's head 0
            for (long long i = 0; i < n; i++) {
                at[i] = table[block] * block_stride + offset * slot_stride;
                if (++offset == bs) offset = 0, block++;
            }
            for (long long r = 0; r < R; r++) {  // row after row: a head's keys of the chunk, then the next head's
                const float* kr = k + head_at[r];
                float s[CHUNK];  // the row's scores of the chunk, then their weights
                for (long long i = 0; i < CHUNK; i++) {
                    if (i >= n || j0 + i < first[r] || j0 + i >= last[r]) {
                        s[i] = -INFINITY;  // past the last key, or a slot this row may not see: no weight
                        continue;
                    }
                    float si = dot(qs[r], kr + at[i], hs);
                    s[i] = softcap > 0.0f ? softcap * std::tanh(si / softcap) : si;  // Gemma 2
                }
                float chunk_max = -INFINITY;
                for (long long i = 0; i < n; i++) chunk_max = s[i] > chunk_max ? s[i] : chunk_max;
                if (chunk_max == -INFINITY) continue;  // nothing this row sees: it adds nothing (exp(-inf - -inf) NaN)
                if (chunk_max > m[r]) {  // a new maximum: the sums so far are rescaled to it (exp(-inf) = 0 at first)
                    float shrink = std::exp(m[r] - chunk_max);
                    l[r] *= shrink;
                    for (long long d = 0; d < hs; d++) acc[r][d] *= shrink;
                    m[r] = chunk_max;
                }
                for (long long c = 0; c < CHUNK; c += 16)  // each score becomes its weight (0 for an unseen slot)
                    *(vec16*)(s + c) = exp16(*(vec16*)(s + c) - m[r]);
                for (long long i = 0; i < n; i++) l[r] += s[i];
                add_weighted(acc[r], v + head_at[r], at, s, n, hs);
            }
        }
        for (long long r = 0; r < R; r++)
            for (long long d = 0; d < hs; d++) out_row[r][d] = acc[r][d] / l[r];
    });
}

// write_slots: a pass's keys (or values) into the cache, at the slots attention reads them from, found as attention
// finds them (the header: tables, block size, strides). src (B, n, T, hs) is read through its strides (sb, sn, st)
// in floats (a view of the q/k/v projection, or rope's output); its row (b, h, t) is the key of head h at slot
// lengths[b] - T + t of sequence b: the sequence's last T slots, as attention's queries are. No tables: sequence b is
// block b (a KVCache layer's (B, n_kv, max_len, hs) buffer, block_stride its row's). No lengths: T (slots 0 .. T-1:
// a plain strided copy, which cpu_backend.py's _c_order makes of a view). Both are read from memory, not passed: a
// recorded decode step (kernels/replay_cpu.cpp) writes where they say at each step. NumPy twins:
// NumpyBackend.write_slots and NumpyBackend.paged_write.
extern "C" void write_slots(const float* src, long long sb, long long sn, long long st, float* dst, const int* tables,
                            long long table_width, const int* lengths, long long B, long long n, long long T,
                            long long hs, long long bs, long long block_stride, long long head_stride,
                            long long slot_stride) {
    for (long long b = 0; b < B; b++)
        for (long long t = 0; t < T; t++) {
            long long j = (lengths ? lengths[b] : T) - T + t;  // the slot
            long long block = tables ? tables[b * table_width + j / bs] : b;
            float* row = dst + block * block_stride + (j % bs) * slot_stride;
            for (long long h = 0; h < n; h++)
                std::memcpy(row + h * head_stride, src + b * sb + h * sn + t * st, hs * 4);
        }
}
