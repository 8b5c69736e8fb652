// attention_cpu.cpp: one decode step's attention on the CPU, the cpu backend's (nanollm/backends/cpu_backend.py).
//
// Why: at a decode step each sequence's one query reads every key and value it has, so a batch's attention reads the
// whole KV cache: 8 GPT-2 sequences of 160 tokens read 80 MB a step, a sixth of the weights. NumPy does it as one
// small matrix product per sequence and key/value head on one core (OpenBLAS does not thread products this small),
// and the paged cache first copies each sequence's blocks into one array. Here every (sequence, query head) is one
// task, the tasks are shared among OpenMP threads, and the keys are read where they lie.
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
// as an online softmax: one pass over the keys keeps the running maximum m, the running sum l of exp(s - m), and
// the running weighted sum of values, rescaled by exp(m_old - m_new) whenever the maximum grows (Milakov and
// Gimelshein 2018), so nothing of length L is stored. Float32 throughout.

#include <cmath>

// q . k in 16 independent running sums: one sum would chain every add on the one before (the compiler may not
// reorder float additions), 16 side by side fill a vector register and the adds run in parallel.
static inline float dot(const float* a, const float* b, long long n) {
    float part[16] = {};
    long long d = 0;
    for (; d + 16 <= n; d += 16)
        for (int i = 0; i < 16; i++) part[i] += a[d + i] * b[d + i];
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += part[i];
    for (; d < n; d++) s += a[d] * b[d];
    return s;
}

extern "C" void attention_decode(const float* q, const float* k, const float* v, float* out, const int* tables,
                                 long long table_width, const int* lengths, long long B, long long nh,
                                 long long n_kv, long long hs, long long bs, long long block_stride,
                                 long long head_stride, long long slot_stride, float scale, float softcap,
                                 long long window) {
    long long group = nh / n_kv;  // query heads per key/value head
    #pragma omp parallel for schedule(dynamic, 1)
    for (long long task = 0; task < B * nh; task++) {
        long long b = task / nh, h = task % nh;
        const float* qh = q + task * hs;  // q (B, nh, 1, hs)
        float* acc = out + task * hs;     // out (B, nh, 1, hs): the weighted sum of values, built in place
        for (long long d = 0; d < hs; d++) acc[d] = 0.0f;
        long long L = lengths[b];
        long long first = window > 0 && L > window ? L - window : 0;
        long long head_offset = (h / group) * head_stride;
        float m = -INFINITY, l = 0.0f;
        for (long long j = first; j < L; j++) {
            long long at = tables[b * table_width + j / bs] * block_stride + head_offset + (j % bs) * slot_stride;
            const float* kj = k + at;
            const float* vj = v + at;
            float s = dot(qh, kj, hs) * scale;
            if (softcap > 0.0f) s = softcap * std::tanh(s / softcap);
            if (s > m) {  // a new maximum: what was summed so far is rescaled to it
                float shrink = std::exp(m - s);  // exp(-inf) = 0 at the first key
                l *= shrink;
                for (long long d = 0; d < hs; d++) acc[d] *= shrink;
                m = s;
            }
            float p = std::exp(s - m);
            l += p;
            for (long long d = 0; d < hs; d++) acc[d] += p * vj[d];
        }
        for (long long d = 0; d < hs; d++) acc[d] /= l;
    }
}
