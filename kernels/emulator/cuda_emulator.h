// cuda_emulator.h: the CUDA built-ins, written in plain C++ so that an unmodified .cu file compiles on the CPU.
//
// How the CPU emulator works (the Python side is kernels/emulator/__init__.py, the scheduler is cuda_emulator.cpp
// beside this file):
//   1. The Python side compiles a .cu file with the host C++ compiler, `g++ -include cuda_emulator.h
//      -DNANOLLM_EMULATOR`, so every name the kernel uses from CUDA (threadIdx, __syncthreads, __shfl_xor_sync,
//      atomicAdd, ...) comes from this header instead of from nvcc.
//   2. Every CUDA thread of a block becomes a *fiber*: a function call with its own stack that can pause in the
//      middle (at __syncthreads, a shuffle, ...) and be resumed later. All fibers of a block take turns on one OS
//      thread, so there is never a data race inside the emulator, and a barrier is just "pause until every thread
//      of the block has paused here too". Blocks run one after another.
//   3. The scheduler (cuda_emulator.cpp) notices when no thread can make progress any more -- half the block waits
//      at a __syncthreads the other half skipped, say -- and fails the launch with a DeadlockError instead of
//      hanging.
//
// Rules a kernel must follow to run under both nvcc and the emulator:
//   * Dynamic shared memory is declared with the macro NANOLLM_DYNAMIC_SHARED(type, name) *inside the kernel body*:
//         NANOLLM_DYNAMIC_SHARED(float, smem);   // then use smem[i] as usual
//     Here it gives `type* name` pointing at this block's dynamic buffer (the `shared_mem` bytes of the launch);
//     the nvcc/NVRTC side (kernels/common.cuh, not this file) defines it as `extern __shared__ type name[]`.
//     A plain `extern __shared__` declaration cannot be emulated and the Python side rejects it with a clear message.
//   * `static __shared__` memory becomes a `static thread_local` variable. That is exactly "one copy per block"
//     because all threads of a block run on one OS thread and blocks on the same OS thread run one after another
//     (a launch from another Python thread gets its own copies). Like on a GPU, its contents are undefined when a
//     block starts: the previous block's values are still there, so a kernel must write before it reads.
//   * Kernels are `extern "C" __global__ void name(...)` so CuPy finds them by name and the emulator's generated
//     launcher can call them.
//   * Every thread of a block must reach the same __syncthreads(); a thread that returned early never arrives,
//     which is undefined behaviour in CUDA and a DeadlockError here.
//   * A warp collective (__shfl_*_sync, __ballot_sync, __syncwarp, ...) waits until every lane named in its mask
//     has called a collective with the same mask. Reading a lane that is not taking part, or that does not exist
//     because the block is not a multiple of 32 threads, returns all-ones bits (NaN for a float, -1 for an int),
//     the emulator's way of making an undefined value visible.
//   * printf works (it is the host's printf). A spin loop on a plain variable that another thread must change
//     never ends here, because a fiber only gives up the CPU at a sync point, a failed atomicCAS or __nanosleep.
//
// What is not emulated: lanes of a warp do not run in lockstep (as on Volta and later GPUs, so "warp-synchronous"
// code without __syncwarp breaks here too); out-of-bounds memory accesses are not checked (they corrupt or crash
// the Python process); only the names defined below exist -- no __half (pass float16 data as unsigned short
// bits), textures, cooperative groups or dynamic parallelism. Under NVRTC, FLT_MAX needs <cfloat>, which NVRTC
// may not find: kernels that want to compile everywhere spell it as a literal or define it themselves.
#ifndef NANOLLM_CUDA_EMULATOR_H
#define NANOLLM_CUDA_EMULATOR_H

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>

// ---------------------------------------------------------------------------------------------------------------
// Qualifiers: on the CPU every function is a host function and there is one kind of memory.
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// `static` gives one copy shared by every fiber of the block; `thread_local` keeps concurrent launches from
// different OS threads apart. See the rules above.
#define __shared__ static thread_local
#define NANOLLM_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(nanollm_emu::dynamic_shared_memory())

// ---------------------------------------------------------------------------------------------------------------
// Thread and block coordinates.
struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

constexpr int warpSize = 32;

// CUDA's vector types (vector_types.h): plain structs, aligned like on the GPU so a float4 load stays one unit.
struct __attribute__((aligned(8))) float2 { float x, y; };
struct float3 { float x, y, z; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

namespace nanollm_emu {

// What the scheduler knows about the thread that is running right now; cuda_emulator.cpp keeps these up to date.
struct LaunchCoordinates {
    dim3 grid_dim;
    dim3 block_dim;
    uint3 block_idx;
};
extern thread_local const LaunchCoordinates* current_launch;
extern thread_local const uint3* current_thread_idx;

// The sync points. Each one pauses the calling fiber and returns when the scheduler releases it.
enum class BarrierKind { plain, count, all, any };
int block_barrier(BarrierKind kind, int predicate);

enum class WarpOp { syncwarp, shfl_idx, shfl_up, shfl_down, shfl_xor, ballot, any, all, reduce_add, reduce_min,
                    reduce_max };
// `bits` holds the caller's value (up to 8 bytes); `operand` is the source lane, delta or lane mask; `is_signed`
// tells the integer reductions how to compare.
std::uint64_t warp_collective(WarpOp op, unsigned mask, std::uint64_t bits, int operand, int width, bool is_signed);

// Called after a failed atomicCAS and by __nanosleep: lets the other threads of the block run, so a spin lock can
// be released.
void spin_yield();

void* dynamic_shared_memory();

template <typename T>
T exchange(WarpOp op, unsigned mask, T value, int operand, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp shuffles move up to 8 bytes");
    std::uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    bits = warp_collective(op, mask, bits, operand, width, false);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

}  // namespace nanollm_emu

// In CUDA these are read-only variables; here each is a reference to the scheduler's copy for the current fiber.
#define threadIdx (*nanollm_emu::current_thread_idx)
#define blockIdx (nanollm_emu::current_launch->block_idx)
#define blockDim (nanollm_emu::current_launch->block_dim)
#define gridDim (nanollm_emu::current_launch->grid_dim)

// ---------------------------------------------------------------------------------------------------------------
// Block and warp synchronisation.
inline void __syncthreads() { nanollm_emu::block_barrier(nanollm_emu::BarrierKind::plain, 0); }
inline int __syncthreads_count(int predicate) {
    return nanollm_emu::block_barrier(nanollm_emu::BarrierKind::count, predicate);
}
inline int __syncthreads_and(int predicate) {
    return nanollm_emu::block_barrier(nanollm_emu::BarrierKind::all, predicate);
}
inline int __syncthreads_or(int predicate) {
    return nanollm_emu::block_barrier(nanollm_emu::BarrierKind::any, predicate);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    nanollm_emu::warp_collective(nanollm_emu::WarpOp::syncwarp, mask, 0, 0, warpSize, false);
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    return nanollm_emu::exchange(nanollm_emu::WarpOp::shfl_idx, mask, var, src_lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return nanollm_emu::exchange(nanollm_emu::WarpOp::shfl_up, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return nanollm_emu::exchange(nanollm_emu::WarpOp::shfl_down, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    return nanollm_emu::exchange(nanollm_emu::WarpOp::shfl_xor, mask, var, lane_mask, width);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
    return static_cast<unsigned>(
        nanollm_emu::warp_collective(nanollm_emu::WarpOp::ballot, mask, predicate != 0, 0, warpSize, false));
}
inline int __any_sync(unsigned mask, int predicate) {
    return static_cast<int>(
        nanollm_emu::warp_collective(nanollm_emu::WarpOp::any, mask, predicate != 0, 0, warpSize, false));
}
inline int __all_sync(unsigned mask, int predicate) {
    return static_cast<int>(
        nanollm_emu::warp_collective(nanollm_emu::WarpOp::all, mask, predicate != 0, 0, warpSize, false));
}
// sm_80 integer warp reductions.
inline int __reduce_add_sync(unsigned mask, int value) {
    return static_cast<int>(nanollm_emu::warp_collective(nanollm_emu::WarpOp::reduce_add, mask,
                                                         static_cast<std::uint32_t>(value), 0, warpSize, true));
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned value) {
    return static_cast<unsigned>(
        nanollm_emu::warp_collective(nanollm_emu::WarpOp::reduce_add, mask, value, 0, warpSize, false));
}
inline int __reduce_min_sync(unsigned mask, int value) {
    return static_cast<int>(nanollm_emu::warp_collective(nanollm_emu::WarpOp::reduce_min, mask,
                                                         static_cast<std::uint32_t>(value), 0, warpSize, true));
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned value) {
    return static_cast<unsigned>(
        nanollm_emu::warp_collective(nanollm_emu::WarpOp::reduce_min, mask, value, 0, warpSize, false));
}
inline int __reduce_max_sync(unsigned mask, int value) {
    return static_cast<int>(nanollm_emu::warp_collective(nanollm_emu::WarpOp::reduce_max, mask,
                                                         static_cast<std::uint32_t>(value), 0, warpSize, true));
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned value) {
    return static_cast<unsigned>(
        nanollm_emu::warp_collective(nanollm_emu::WarpOp::reduce_max, mask, value, 0, warpSize, false));
}

// Memory fences order this thread's writes; with one OS thread per block they only have to stop the compiler
// from moving loads and stores across them.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
// On a GPU __nanosleep suspends the calling thread for about `ns` nanoseconds; here it lets the other threads of
// the block run, which is what a kernel that sleeps while polling is waiting for.
inline void __nanosleep(unsigned ns) { (void)ns; nanollm_emu::spin_yield(); }

// ---------------------------------------------------------------------------------------------------------------
// Atomics. The GCC/Clang __atomic built-ins are real hardware atomics, so they stay correct even if blocks ever run
// on several OS threads. CUDA's atomics return the old value, like fetch_add.
namespace nanollm_emu {
template <typename T, typename Update>
T atomic_update(T* address, Update update) {
    // Compare-and-swap loop on the bit pattern: works for float and double, which have no atomic add in C++17.
    using Bits = typename std::conditional<sizeof(T) == 4, std::uint32_t, std::uint64_t>::type;
    Bits* word = reinterpret_cast<Bits*>(address);
    Bits expected = __atomic_load_n(word, __ATOMIC_RELAXED);
    for (;;) {
        T old_value;
        std::memcpy(&old_value, &expected, sizeof(T));
        T new_value = update(old_value);
        Bits desired;
        std::memcpy(&desired, &new_value, sizeof(T));
        if (__atomic_compare_exchange_n(word, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return old_value;
    }
}
}  // namespace nanollm_emu

inline int atomicAdd(int* address, int value) { return __atomic_fetch_add(address, value, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* address, unsigned value) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* address, float value) {
    return nanollm_emu::atomic_update(address, [value](float old) { return old + value; });
}
inline double atomicAdd(double* address, double value) {
    return nanollm_emu::atomic_update(address, [value](double old) { return old + value; });
}
inline int atomicSub(int* address, int value) { return __atomic_fetch_sub(address, value, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned* address, unsigned value) {
    return __atomic_fetch_sub(address, value, __ATOMIC_RELAXED);
}

template <typename T>
inline T nanollm_atomic_max(T* address, T value) {
    return nanollm_emu::atomic_update(address, [value](T old) { return old < value ? value : old; });
}
template <typename T>
inline T nanollm_atomic_min(T* address, T value) {
    return nanollm_emu::atomic_update(address, [value](T old) { return value < old ? value : old; });
}
inline int atomicMax(int* address, int value) { return nanollm_atomic_max(address, value); }
inline unsigned atomicMax(unsigned* address, unsigned value) { return nanollm_atomic_max(address, value); }
inline long long atomicMax(long long* address, long long value) { return nanollm_atomic_max(address, value); }
inline int atomicMin(int* address, int value) { return nanollm_atomic_min(address, value); }
inline unsigned atomicMin(unsigned* address, unsigned value) { return nanollm_atomic_min(address, value); }
inline long long atomicMin(long long* address, long long value) { return nanollm_atomic_min(address, value); }

inline int atomicExch(int* address, int value) { return __atomic_exchange_n(address, value, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* address, unsigned value) {
    return __atomic_exchange_n(address, value, __ATOMIC_RELAXED);
}
inline unsigned long long atomicExch(unsigned long long* address, unsigned long long value) {
    return __atomic_exchange_n(address, value, __ATOMIC_RELAXED);
}
inline float atomicExch(float* address, float value) {
    return nanollm_emu::atomic_update(address, [value](float) { return value; });
}

inline int atomicAnd(int* address, int value) { return __atomic_fetch_and(address, value, __ATOMIC_RELAXED); }
inline unsigned atomicAnd(unsigned* address, unsigned value) {
    return __atomic_fetch_and(address, value, __ATOMIC_RELAXED);
}
inline int atomicOr(int* address, int value) { return __atomic_fetch_or(address, value, __ATOMIC_RELAXED); }
inline unsigned atomicOr(unsigned* address, unsigned value) {
    return __atomic_fetch_or(address, value, __ATOMIC_RELAXED);
}
inline int atomicXor(int* address, int value) { return __atomic_fetch_xor(address, value, __ATOMIC_RELAXED); }
inline unsigned atomicXor(unsigned* address, unsigned value) {
    return __atomic_fetch_xor(address, value, __ATOMIC_RELAXED);
}
// atomicInc/atomicDec wrap around at `limit`, as CUDA defines them.
inline unsigned atomicInc(unsigned* address, unsigned limit) {
    return nanollm_emu::atomic_update(address, [limit](unsigned old) { return old >= limit ? 0u : old + 1; });
}
inline unsigned atomicDec(unsigned* address, unsigned limit) {
    return nanollm_emu::atomic_update(
        address, [limit](unsigned old) { return (old == 0 || old > limit) ? limit : old - 1; });
}

// A failed compare-and-swap usually means "someone else holds the lock": give the other fibers a turn.
template <typename T>
inline T nanollm_atomic_cas(T* address, T compare, T value) {
    T expected = compare;
    if (!__atomic_compare_exchange_n(address, &expected, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        nanollm_emu::spin_yield();
    }
    return expected;  // the old value, whether or not the swap happened
}
inline int atomicCAS(int* address, int compare, int value) { return nanollm_atomic_cas(address, compare, value); }
inline unsigned atomicCAS(unsigned* address, unsigned compare, unsigned value) {
    return nanollm_atomic_cas(address, compare, value);
}
inline unsigned long long atomicCAS(unsigned long long* address, unsigned long long compare,
                                    unsigned long long value) {
    return nanollm_atomic_cas(address, compare, value);
}

// ---------------------------------------------------------------------------------------------------------------
// Math. The plain names (expf, logf, sqrtf, tanhf, fmaxf, ...) and INFINITY / FLT_MAX come from <cmath> and
// <cfloat>. CUDA's fast intrinsics trade accuracy for speed on the GPU; here they are the accurate functions, so
// the emulator is at least as precise as the hardware.
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;

inline float __expf(float x) { return expf(x); }
inline float __exp2f(float x) { return exp2f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }  // round half to even
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(floorf(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(ceilf(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned u) { float x; std::memcpy(&x, &u, 4); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
template <typename T>
inline T __ldg(const T* p) { return *p; }

// CUDA device code has overloaded min/max for every arithmetic type; host C++ only has std::min/std::max.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

#endif  // NANOLLM_CUDA_EMULATOR_H
