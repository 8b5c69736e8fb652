// replay_cpu.cpp: a decode step's kernel calls, recorded once and replayed from C: the cpu backend's answer to the
// Python between its kernels (nanollm/backends/recording.py records the calls; nanollm/replayed_step.py decides
// when a step may be replayed). The CPU's CUDA graph: capture the launches of one step, then launch them all at once.
//
// Why: a GPT-2 decode step makes ~100 kernel calls, and the Python around them (the forward pass, the backend's
// checks, ctypes' conversion of each argument) takes ~1.2 ms a step with the caches cold (0.55 ms when they are warm:
// streaming 495 MB of weights evicts the interpreter's own data), 12% of a step at ~60 GB/s. Every decode step of a
// cache makes the same calls on the same buffers; what changes is read from memory the backend owns: each sequence's
// length, which says where write_slots puts the keys and how many slots attention reads (and, in a paged pool's step,
// the block tables). So the calls are kept as a table, `Call` below, one row per call, its arguments in the kernel's
// order: integers and addresses in a[], the floats in f[] (the C calling convention passes them in other registers);
// this file calls each row's kernel with them. No NumPy twin: tests/test_replayed_step.py compares a replayed step with
// the same step run from Python, bit for bit.

extern "C" {
void linear_panels(const float* x, const float* panels, const float* bias, float* y, long long rows, long long K,
                   long long N, const float* next_panels, long long next_K, long long next_N);
void attention_cached(const float* q, const float* k, const float* v, float* out, const int* tables,
                      long long table_width, const int* lengths, long long B, long long nh, long long T,
                      long long n_kv, long long hs, long long bs, long long block_stride, long long head_stride,
                      long long slot_stride, float scale, float softcap, long long window);
void layer_norm_rows(const float* x, const float* w, const float* b, float* y, long long rows, long long C, float eps);
void rms_norm_rows(const float* x, const float* w, float* y, long long rows, long long C, float eps);
void rope_rows(const float* x, const float* cos, const float* sin, float* y, long long B, long long n, long long T,
               long long hs, long long half, long long sb, long long sn, long long st);
void gelu_rows(const float* x, float* y, long long n);
void gelu_exact_rows(const float* x, float* y, long long n);
void silu_mul_rows(const float* gate, const float* up, float* y, long long n);
void gelu_mul_rows(const float* gate, const float* up, float* y, long long n);
void add_rows(const float* a, const float* b, float* y, long long n);
void softcap_rows(const float* x, float* y, long long n, float cap);
void write_slots(const float* src, long long sb, long long sn, long long st, float* dst, const int* tables,
                 long long table_width, const int* lengths, long long B, long long n, long long T, long long hs,
                 long long bs, long long block_stride, long long head_stride, long long slot_stride);
}

// The kernels a call may name, in the order of KERNELS in nanollm/backends/recording.py.
enum Kernel : long long {
    LINEAR, ATTENTION, LAYER_NORM, RMS_NORM, ROPE, GELU, GELU_EXACT, SILU_MUL, GELU_MUL, ADD, SOFTCAP, WRITE_SLOTS
};

struct Call {        // one kernel call; recording.py's CALL is the same layout
    long long kernel;
    long long a[20];  // the integer and address arguments, in order
    float f[2];       // the float arguments, in order
};

extern "C" void replay_calls(const Call* calls, long long n) {
    for (long long i = 0; i < n; i++) {
        const long long* a = calls[i].a;
        const float* f = calls[i].f;
        auto in = [a](int j) { return (const float*)a[j]; };
        auto out = [a](int j) { return (float*)a[j]; };
        auto ints = [a](int j) { return (const int*)a[j]; };
        switch (calls[i].kernel) {
        case LINEAR: linear_panels(in(0), in(1), in(2), out(3), a[4], a[5], a[6], in(7), a[8], a[9]); break;
        case ATTENTION:
            attention_cached(in(0), in(1), in(2), out(3), ints(4), a[5], ints(6), a[7], a[8], a[9], a[10], a[11], a[12],
                             a[13], a[14], a[15], f[0], f[1], a[16]);
            break;
        case LAYER_NORM: layer_norm_rows(in(0), in(1), in(2), out(3), a[4], a[5], f[0]); break;
        case RMS_NORM: rms_norm_rows(in(0), in(1), out(2), a[3], a[4], f[0]); break;
        case ROPE: rope_rows(in(0), in(1), in(2), out(3), a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11]); break;
        case GELU: gelu_rows(in(0), out(1), a[2]); break;
        case GELU_EXACT: gelu_exact_rows(in(0), out(1), a[2]); break;
        case SILU_MUL: silu_mul_rows(in(0), in(1), out(2), a[3]); break;
        case GELU_MUL: gelu_mul_rows(in(0), in(1), out(2), a[3]); break;
        case ADD: add_rows(in(0), in(1), out(2), a[3]); break;
        case SOFTCAP: softcap_rows(in(0), out(1), a[2], f[0]); break;
        case WRITE_SLOTS:
            write_slots(in(0), a[1], a[2], a[3], out(4), ints(5), a[6], ints(7), a[8], a[9], a[10], a[11], a[12], a[13],
                        a[14], a[15]);
            break;
        }
    }
}
