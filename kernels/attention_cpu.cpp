// attention_cpu.cpp: one decode step's attention on the CPU, the cpu backend's (nanollm/backends/cpu_backend.py).
//
// Why: at a decode step each sequence's one query reads every key and value it has, so a batch's attention reads the
// whole KV cache: 8 GPT-2 sequences of 160 tokens read 94 MB a step, a fifth of the weights' 495 MB. NumPy does it as one
// small matrix product per sequence and key/value head on one core (OpenBLAS does not thread products this small),
// and the paged cache first copies each sequence's blocks into one array. Here every (sequence, key/value head) is one
// task, the tasks are shared among OpenMP threads, and the keys are read where they lie. A task attends for all the
// query heads that share its key/value head (grouped-query attention: 3 in the Llama shape, 7 in Qwen2.5-0.5B), so
// each key and value is read from memory once, not once per query head; groups larger than MAX_GROUP (multi-query
// models: Falcon-7B's 71 heads share one) are split among several tasks.
//
// NumPy twins: NumpyBackend.attention with T = 1 and NumpyBackend.paged_attention with T = 1
// (nanollm/backends/numpy_backend.py); tests/test_cpu_backend.py compares them.
//
// Where the keys lie, one description for both caches. Slot j of sequence b is row j % bs of block
// tables[b * table_width + j / bs]; a block holds n_kv heads of bs slots of hs floats, at
//     k + block * block_stride + head * head_stride + (j % bs) * slot_stride     (in floats; v the same)
//   paged pool (n_blocks, n_kv, bs, hs):      the table is the sequence's block table
//   KVCache buffer (B, n_kv, max_len, hs):    row b is one block of max_len slots, its table [b]
//
// The math, for query head h of sequence b, whose length is L (its query is its slot L - 1) and whose key/value
// head is h / (nh / n_kv) (grouped-query attention, as Hugging Face's repeat_kv):
//     s_j = scale * q . k_j   (then softcap * tanh(s_j / softcap) when softcap > 0: Gemma 2)
//     out = sum_j softmax(s)_j v_j   over j in [L - window, L) (window 0: every slot, 0 .. L-1)
// as an online softmax taken a chunk of keys at a time (flash-decoding's form): the scores of CHUNK keys are computed
// into a small local array, then the running maximum m, the running sum l of exp(s - m) and the running weighted sum
// of values are brought up to date once for the chunk, rescaled by exp(m_old - m_new) when its maximum is larger
// (Milakov and Gimelshein 2018). Nothing of length L is stored, and the branch and rescale are paid once per chunk
// instead of once per key. Float32 throughout.
//
// What made the first version of this file slow (35 us for the Llama shape's 12 heads over 130 keys, 15 us now, in
// cache): finding slot j's block by j / bs and j % bs, two 64-bit divisions per key (tens of cycles each), and a
// maximum test per key. Here the slots are walked with a block counter and an offset in it, and the queries
// (pre-multiplied by the scale) and the value sums are small local arrays, in the core's first-level cache.

#include <cmath>

typedef float vec16 __attribute__((vector_size(64), aligned(4)));  // 16 floats, as in linear_cpu.cpp
typedef float vec8 __attribute__((vector_size(32), aligned(4)));
typedef float vec4 __attribute__((vector_size(16), aligned(4)));

constexpr long long CHUNK = 32;           // keys scored before the running sums are updated
constexpr long long MAX_GROUP = 8;        // query heads one task attends for
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

extern "C" void attention_decode(const float* q, const float* k, const float* v, float* out, const int* tables,
                                 long long table_width, const int* lengths, long long B, long long nh,
                                 long long n_kv, long long hs, long long bs, long long block_stride,
                                 long long head_stride, long long slot_stride, float scale, float softcap,
                                 long long window) {
    long long group = nh / n_kv;                            // query heads per key/value head
    long long parts = (group + MAX_GROUP - 1) / MAX_GROUP;  // tasks per (sequence, key/value head)
    long long tasks = B * n_kv * parts;
    #pragma omp parallel for schedule(dynamic, 1) if (tasks > 1)
    for (long long task = 0; task < tasks; task++) {
        long long b = task / (n_kv * parts), kv_head = task / parts % n_kv, part = task % parts;
        long long h0 = kv_head * group + part * MAX_GROUP;   // this task's first query head
        long long G = group - part * MAX_GROUP < MAX_GROUP ? group - part * MAX_GROUP : MAX_GROUP;
        const float* q0 = q + (b * nh + h0) * hs;            // q (B, nh, 1, hs): the task's G query rows
        float qs[MAX_GROUP][MAX_HEAD_DIM], acc[MAX_GROUP][MAX_HEAD_DIM];  // scaled queries, running value sums
        float m[MAX_GROUP], l[MAX_GROUP];                    // running maximum and sum of exp(s - m), per head
        for (long long g = 0; g < G; g++) {
            for (long long d = 0; d < hs; d++) qs[g][d] = q0[g * hs + d] * scale, acc[g][d] = 0.0f;
            m[g] = -INFINITY, l[g] = 0.0f;
        }
        long long L = lengths[b];
        long long first = window > 0 && L > window ? L - window : 0;
        const int* table = tables + b * table_width;
        const long long head_offset = kv_head * head_stride;
        long long block = first / bs, offset = first % bs;  // where slot j lies, advanced with j: no division per key
        for (long long j0 = first; j0 < L; j0 += CHUNK) {
            long long n = L - j0 < CHUNK ? L - j0 : CHUNK;
            const float* vs[CHUNK];  // the chunk's value rows, found while scoring its keys
            float s[MAX_GROUP][CHUNK];
            for (long long i = 0; i < n; i++) {
                long long at = table[block] * block_stride + head_offset + offset * slot_stride;
                if (++offset == bs) offset = 0, block++;
                vs[i] = v + at;
                for (long long g = 0; g < G; g++) {
                    float si = dot(qs[g], k + at, hs);
                    s[g][i] = softcap > 0.0f ? softcap * std::tanh(si / softcap) : si;  // Gemma 2
                }
            }
            for (long long g = 0; g < G; g++) {
                float chunk_max = -INFINITY;
                for (long long i = 0; i < n; i++) chunk_max = s[g][i] > chunk_max ? s[g][i] : chunk_max;
                if (chunk_max > m[g]) {  // a new maximum: the sums so far are rescaled to it (exp(-inf) = 0 at first)
                    float shrink = std::exp(m[g] - chunk_max);
                    l[g] *= shrink;
                    for (long long d = 0; d < hs; d++) acc[g][d] *= shrink;
                    m[g] = chunk_max;
                }
                for (long long i = 0; i < n; i++) {
                    s[g][i] = std::exp(s[g][i] - m[g]);  // the score becomes its weight
                    l[g] += s[g][i];
                }
            }
            for (long long i = 0; i < n; i++)
                for (long long g = 0; g < G; g++) {
                    float p = s[g][i];
                    const float* vi = vs[i];
                    for (long long d = 0; d < hs; d++) acc[g][d] += p * vi[d];
                }
        }
        float* o0 = out + (b * nh + h0) * hs;  // out (B, nh, 1, hs)
        for (long long g = 0; g < G; g++)
            for (long long d = 0; d < hs; d++) o0[g * hs + d] = acc[g][d] / l[g];
    }
}
