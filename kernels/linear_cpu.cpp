// linear_cpu.cpp: y = x @ W + b on the CPU, the matrix product of the "cpu" backend (nanollm/backends/cpu_backend.py).
//
// Why a kernel of our own, when NumPy calls OpenBLAS: a decode step is a few rows (one per sequence of the batch)
// times every weight matrix, so its speed is how fast the weights stream from memory. OpenBLAS's matrix-vector
// product does not stream a small matrix at the memory's speed, and its matrix product of 2 to 16 rows runs at about
// a third of that (it copies, "packs", the weights into its own layout on every call). So on a 2-core machine a batch
// of 8 sequences cost 2.5 times a batch of 1, though both read the same bytes (`make bench`). The fix is the one
// every CPU engine makes (llama.cpp, for one): store each matrix once, at load, in the layout the product wants, and
// compute several rows from each weight while it is in a register.
//
// The layout, "panels": W (K, N) is cut into column panels of PANEL = 32 columns, and each panel is stored as a
// contiguous (K, 32) block (the last one padded with zeros). NumPy twin: `pack` in cpu_backend.py.
//
//     W (K, N) row-major        panels (ceil(N/32), K, 32)
//     [ p0 | p1 | p2 ... ]  ->  p0: row 0 cols 0..31, row 1 cols 0..31, ...   then p1, ...
//
// The loop: each thread takes whole panels. For a panel and a group of GROUP = 8 rows of x, the 32 columns of each row are two 16-float vectors of accumulators (16 registers in all); every step k loads
// the panel's 32 weights of row k once (two vector loads from one contiguous stream, which the hardware prefetcher
// follows) and multiplies them into all 8 rows (16 fused multiply-adds). So up to 8 rows cost one read of the
// weights; more rows take the next group while the panel (K x 128 bytes: 96 KiB for K = 768) is still in the cache.
// Past a few rows the product is bound by arithmetic, not memory: 8 rows make 16 FLOP of each 4-byte weight, and 2
// cores at ~215 GFLOP/s peak keep up with ~50 GB/s only at nearly full FMA rate (`make bench` records what is
// reached).
//
// The vectors are vec16 (kernels/simd_cpu.h): 16 floats, mapped by the compiler to the machine's own vector width.
//
// Threads: the pool of kernels/pool_cpu.h, one per core, only when the product is large enough to pay for waking
// them (a tiny model runs on one thread, so it never gets slower when batched). Each thread starts with a fixed share
// of the first three quarters of the panels, read as one long stretch (a thread reading one stretch of memory is
// read faster than one hopping between short ones: the hardware prefetcher follows a stream), then the last quarter
// goes two panels at a time to whichever thread is free: on a busy machine one thread may lose its core for a while,
// and a split fixed to the end would make every product wait for it. The fixed shares are also what the pool's idle
// worker reads ahead while the caller runs alone between two products: the caller names the matrix the next product
// will read (the backend remembers the order of the last step's products), and the worker prefetches its share's
// start.
//
// Sums are float32, in k order within each column: a different order from BLAS's, so results agree with NumPy's
// x @ W to float32 rounding (tests/test_cpu_backend.py states the tolerance), not bit for bit.

#include "pool_cpu.h"
#include "simd_cpu.h"

constexpr long long PANEL = 32;        // columns per panel: two vectors of 16
constexpr int GROUP = 8;               // rows of x per pass over a panel: 2 x 8 = 16 accumulator vectors
constexpr long long PARALLEL_MACS = 1 << 18;  // below this many multiply-adds, one thread (waking more costs more)
constexpr long long TAIL_CHUNK = 2;   // panels a thread takes at a time from the shared last quarter

// The panels split in fixed shares, one per thread (the first three quarters); the rest go to whoever is free.
static inline long long fixed_panels(long long n_panels) { return n_panels * 3 / 4; }

// One panel times R rows of x (R <= GROUP), written to those rows of y. R is a template parameter so that the
// compiler unrolls the row loop and keeps all 2R accumulators in registers; with R known only at run time it kept
// them on the stack, and every multiply-add paid a load and a store (measured: 40% of the machine's FMA rate).
template <int R>
static void panel_times_rows(const float* w, const float* xs, const float* bias, float* y, long long K, long long N,
                             long long col, long long width) {
    vec16 lo[R] = {}, hi[R] = {};  // columns 0..15 and 16..31 of each row's result
    for (long long k = 0; k < K; k++) {
        vec16 w_lo = *(const vec16*)(w + k * PANEL);
        vec16 w_hi = *(const vec16*)(w + k * PANEL + 16);
        for (int r = 0; r < R; r++) {
            float xk = xs[r * K + k];
            lo[r] += xk * w_lo;
            hi[r] += xk * w_hi;
        }
    }
    for (int r = 0; r < R; r++) {
        float tile[PANEL];
        *(vec16*)tile = lo[r];
        *(vec16*)(tile + 16) = hi[r];
        float* out = y + r * N + col;
        for (long long j = 0; j < width; j++) out[j] = bias ? tile[j] + bias[col + j] : tile[j];
    }
}

typedef void (*PanelTimesRows)(const float*, const float*, const float*, float*, long long, long long, long long,
                               long long);
static const PanelTimesRows BY_ROWS[GROUP + 1] = {nullptr, panel_times_rows<1>, panel_times_rows<2>,
                                                  panel_times_rows<3>, panel_times_rows<4>, panel_times_rows<5>,
                                                  panel_times_rows<6>, panel_times_rows<7>, panel_times_rows<8>};

// x (rows, K), panels (ceil(N/32), K, 32), bias (N,) or null, y (rows, N): all float32, C order. next_panels
// (next_K, next_N): the matrix the next product will read (null: unknown), which idle workers read ahead.
extern "C" void linear_panels(const float* x, const float* panels, const float* bias, float* y,
                              long long rows, long long K, long long N, const float* next_panels, long long next_K,
                              long long next_N) {
    Pool& pool = Pool::get();
    if (next_panels != nullptr)  // its fixed shares, one panel (next_K x 32 floats) an item
        pool.read_ahead(next_panels, fixed_panels((next_N + PANEL - 1) / PANEL), next_K * PANEL * 4);
    long long n_panels = (N + PANEL - 1) / PANEL, fixed = fixed_panels(n_panels);
    auto panel = [&](long long p) {
        long long col = p * PANEL;                           // the panel's first column of W
        long long width = N - col < PANEL ? N - col : PANEL;  // the last panel may be narrower
        for (long long r0 = 0; r0 < rows; r0 += GROUP) {     // GROUP rows of x at a time
            int n_rows = rows - r0 < GROUP ? (int)(rows - r0) : GROUP;
            BY_ROWS[n_rows](panels + p * K * PANEL, x + r0 * K, bias, y + r0 * N, K, N, col, width);
        }
    };
    std::atomic<long long> next{fixed};  // the shared rest: TAIL_CHUNK panels at a time, to whoever is free
    pool.run(rows * K * N > PARALLEL_MACS, [&](int t, int threads) {
        long long begin, end;
        share_of(fixed, t, threads, begin, end);
        for (long long p = begin; p < end; p++) panel(p);
        take_chunks(next, n_panels, TAIL_CHUNK, panel);
    });
}
