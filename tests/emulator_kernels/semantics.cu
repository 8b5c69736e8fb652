// Small kernels that pin down the semantics of the CPU emulator (tests/test_emulator.py). Each one is valid CUDA:
// the test also compiles this file with nvcc (through kernels/build.py) when nvcc is installed.
#ifndef NANOLLM_EMULATOR
#include <cfloat>  // FLT_MAX (the emulator's header already includes it)
#define NANOLLM_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// ---- barriers and shared memory --------------------------------------------------------------------------------

// out[block b, thread t] = x[block b, thread blockDim.x-1-t]: each value crosses threads through shared memory.
extern "C" __global__ void block_reverse(const float* __restrict__ x, float* __restrict__ out) {
    __shared__ float buffer[1024];
    const int t = threadIdx.x;
    const long long base = (long long)blockIdx.x * blockDim.x;
    buffer[t] = x[base + t];
    __syncthreads();
    out[base + t] = buffer[blockDim.x - 1 - t];
}

// Shared-memory tree reduction: sums[b] = sum of x over block b. blockDim.x must be a power of two.
extern "C" __global__ void tree_sum(const int* x, int* sums) {
    __shared__ int partial[1024];
    const int t = threadIdx.x;
    partial[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) partial[t] += partial[t + stride];
        __syncthreads();
    }
    if (t == 0) sums[blockIdx.x] = partial[0];
}

// Every thread writes its block's id into the block's shared array; after the barrier each thread counts how many
// entries hold its own block id. matches[b * blockDim.x + t] must equal blockDim.x.
extern "C" __global__ void shared_is_per_block(int* matches) {
    __shared__ int owner[1024];
    const int t = threadIdx.x;
    owner[t] = blockIdx.x;
    __syncthreads();
    int count = 0;
    for (int i = 0; i < blockDim.x; ++i) count += owner[i] == (int)blockIdx.x;
    matches[blockIdx.x * blockDim.x + t] = count;
}

// Dynamic shared memory of n ints (n * 4 bytes given at launch): fill with 3*i, then out[i] = shared[n-1-i].
extern "C" __global__ void dynamic_reverse(int* out, int n) {
    NANOLLM_DYNAMIC_SHARED(int, shared);
    for (int i = threadIdx.x; i < n; i += blockDim.x) shared[i] = 3 * i;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[blockIdx.x * n + i] = shared[n - 1 - i];
}

// __syncthreads_count / _and / _or of the predicate flags[t] != 0, written by thread 0.
extern "C" __global__ void barrier_votes(const int* flags, int* out) {
    const int p = flags[threadIdx.x];
    const int count = __syncthreads_count(p);
    const int all = __syncthreads_and(p);
    const int any = __syncthreads_or(p);
    if (threadIdx.x == 0) {
        out[0] = count;
        out[1] = all;
        out[2] = any;
    }
}

// 40 KiB of static shared memory: with the default 48 KiB limit, at most 8 KiB of dynamic memory may be added.
extern "C" __global__ void big_static_shared(float* out) {
    __shared__ float big[10240];
    big[threadIdx.x] = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = big[threadIdx.x];
}

// ---- warp collectives ----------------------------------------------------------------------------------------

// One warp. Lanes named in `mask` call the shuffle chosen by `op` (0 idx, 1 up, 2 down, 3 xor) on the value
// values[lane]; the others do not take part and write 12345.
extern "C" __global__ void shuffle(const int* values, int* out, int op, unsigned mask, int operand, int width) {
    const int lane = threadIdx.x;
    int result = 12345;
    if (mask >> lane & 1u) {
        const int v = values[lane];
        if (op == 0) result = __shfl_sync(mask, v, operand, width);
        if (op == 1) result = __shfl_up_sync(mask, v, (unsigned)operand, width);
        if (op == 2) result = __shfl_down_sync(mask, v, (unsigned)operand, width);
        if (op == 3) result = __shfl_xor_sync(mask, v, operand, width);
    }
    out[lane] = result;
}

// Shuffles move 8-byte values too: out[lane] = values[lane ^ 1] as a double and as a long long.
extern "C" __global__ void shuffle_wide(const double* values, double* out, const long long* ivalues, long long* iout) {
    const int lane = threadIdx.x;
    out[lane] = __shfl_xor_sync(0xffffffffu, values[lane], 1);
    iout[lane] = __shfl_xor_sync(0xffffffffu, ivalues[lane], 1);
}

// Butterfly sum over each warp of a block: every lane gets its warp's total.
extern "C" __global__ void warp_sum(const float* x, float* out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    out[i] = v;
}

// Lanes in `mask` vote with predicate flags[lane] != 0: out[3*lane + 0..2] = ballot, any, all; others write -7.
extern "C" __global__ void votes(const int* flags, unsigned* out, unsigned mask) {
    const int lane = threadIdx.x;
    unsigned ballot = 0xfffffff9u, any = 0xfffffff9u, all = 0xfffffff9u;
    if (mask >> lane & 1u) {
        const int p = flags[lane] != 0;
        ballot = __ballot_sync(mask, p);
        any = __any_sync(mask, p);
        all = __all_sync(mask, p);
        __syncwarp(mask);
    }
    out[3 * lane + 0] = ballot;
    out[3 * lane + 1] = any;
    out[3 * lane + 2] = all;
}

// ---- atomics ---------------------------------------------------------------------------------------------------

// Every thread of every block adds its own value to one counter of each kind and raises the maximum.
extern "C" __global__ void atomic_totals(const int* ints, const float* floats, int* int_total, float* float_total,
                                         int* maximum, unsigned* unsigned_total) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(int_total, ints[i]);
    atomicAdd(float_total, floats[i]);
    atomicMax(maximum, ints[i]);
    atomicAdd(unsigned_total, 1u);
}

// A spin lock made of atomicCAS/atomicExch protects a plain read-modify-write of `counter`. The holder sleeps inside
// the critical section so that other threads really find the lock taken and must spin.
extern "C" __global__ void spin_lock_counter(int* lock, int* counter) {
    while (atomicCAS(lock, 0, 1) != 0) {
    }
    const int seen = *(volatile int*)counter;
    __nanosleep(100);
    *(volatile int*)counter = seen + 1;
    __threadfence();
    atomicExch(lock, 0);
}

// Thread 0 takes the lock and then waits at a barrier the spinning threads never reach: a GPU hangs here.
extern "C" __global__ void lock_held_across_barrier(int* lock) {
    if (threadIdx.x == 0) {
        atomicCAS(lock, 0, 1);
        __syncthreads();
        atomicExch(lock, 0);
    } else {
        while (atomicCAS(lock, 0, 1) != 0) {
        }
        atomicExch(lock, 0);
        __syncthreads();
    }
}

// ---- coordinates and arguments -------------------------------------------------------------------------------

// Every thread of a 3-D grid of 3-D blocks writes its coordinates at its global linear index.
extern "C" __global__ void coordinates(int* out) {
    const int tx = threadIdx.x + blockIdx.x * blockDim.x;
    const int ty = threadIdx.y + blockIdx.y * blockDim.y;
    const int tz = threadIdx.z + blockIdx.z * blockDim.z;
    const int width = gridDim.x * blockDim.x, height = gridDim.y * blockDim.y;
    int* o = out + 6 * ((tz * height + ty) * width + tx);
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x;  o[4] = blockIdx.y;  o[5] = blockIdx.z;
}

// Scalars of each supported type reach the kernel unchanged.
extern "C" __global__ void echo_scalars(int i, unsigned u, float f, long long l, double d, int* ints, float* floats,
                                        long long* longs, double* doubles, unsigned* unsigneds) {
    ints[0] = i;
    unsigneds[0] = u;
    floats[0] = f;
    longs[0] = l;
    doubles[0] = d;
}

// ---- kernels that break CUDA's rules -----------------------------------------------------------------------------

// Half the block skips the barrier: undefined behaviour in CUDA, a DeadlockError in the emulator.
extern "C" __global__ void divergent_barrier(float* out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Lanes 0-15 shuffle with the full mask while lanes 16-31 wait at the block barrier: neither can complete.
extern "C" __global__ void shuffle_against_barrier(float* out) {
    float v = out[threadIdx.x];
    if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else __syncthreads();
    out[threadIdx.x] = v;
}

// The mask names lanes 16-31, which have already returned.
extern "C" __global__ void shuffle_with_exited_lane(float* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, out[threadIdx.x], 1);
}

// A lane calls a shuffle with a mask that leaves out its own lane.
extern "C" __global__ void mask_without_self(float* out) {
    out[threadIdx.x] = __shfl_xor_sync(0xfffffffeu, out[threadIdx.x], 1);
}

// ---- math built-ins ---------------------------------------------------------------------------------------------

// out[10 * i + k] = the k-th float function of x[i] (and y[i]); iout[4 * i + k] = the integer ones.
extern "C" __global__ void math_builtins(const float* x, const float* y, float* out, int* iout, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float a = x[i], b = y[i];
    float* o = out + 10 * i;
    o[0] = expf(a) - __expf(a);
    o[1] = __expf(a);
    o[2] = logf(fabsf(a)) + __logf(fabsf(b));
    o[3] = sqrtf(fabsf(a)) * rsqrtf(fabsf(b));
    o[4] = tanhf(a);
    o[5] = fmaxf(a, b) - fminf(a, b);
    o[6] = __fdividef(a, b);
    o[7] = powf(fabsf(a), b);
    o[8] = fmaxf(-FLT_MAX, -INFINITY);
    o[9] = (float)__float2int_rn(4.0f * a);
    int* io = iout + 4 * i;
    io[0] = isinf(a / 0.0f) + 2 * isnan(sqrtf(-1.0f - fabsf(a)));
    io[1] = min(i, 3) + max(i, 3);
    io[2] = __float2int_rn(2.5f) + __float2int_rn(-0.5f) * 10;  // round half to even: 2 + 0
    io[3] = __popc((unsigned)i) + 100 * (__float_as_int(1.0f) == 0x3f800000);
}
