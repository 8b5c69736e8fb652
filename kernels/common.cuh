// common.cuh: the helpers every kernel in nanollm shares.
//
// What is here, and why it is shared:
//   * NANOLLM_DYNAMIC_SHARED(type, name): declares the block's dynamic shared memory (the size is chosen at launch).
//     nvcc and NVRTC spell it `extern __shared__ type name[]`; the CPU emulator (emulator/cuda_emulator.h, built with
//     -DNANOLLM_EMULATOR) defines its own version, so kernels use the macro and never the raw spelling.
//   * warp_sum / warp_max: a butterfly reduction with __shfl_xor_sync; after log2(32) = 5 steps every lane holds the
//     result, so no lane has to broadcast it afterwards.
//   * block_sum / block_max: warp reduce -> one partial per warp in shared memory -> every warp reduces the partials.
//     Every thread returns the block's result. The caller passes a __shared__ scratch of at least 32 floats
//     (one slot per warp: a block has at most 1024 threads = 32 warps).
//   * ordered_key: maps a float to an unsigned int whose unsigned order is the float order, so "find the k-th
//     largest value" becomes a bisection over 32 bits (kernels/sampling.cu).
//   * half_bits_to_float: IEEE binary16 -> float32 from the raw bits, written out so the same code runs on the
//     GPU and in the emulator (which has no __half type); used for float16 embedding tables.
//
// Rules the helpers rely on (checked by the launchers in nanollm/backends/kernel_backend.py):
//   blockDim.x is a multiple of 32, so every warp is full and the full mask 0xffffffff is always correct;
//   every thread of the block calls block_* (they contain __syncthreads).
#pragma once

#ifndef NANOLLM_EMULATOR
#define NANOLLM_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// NVRTC (what CuPy compiles with) has no host headers, so the C macros INFINITY and NAN are undefined there;
// nvcc and the emulator get them from <cmath>. Build them from their IEEE-754 bit patterns where missing.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#ifndef NAN
#define NAN __int_as_float(0x7fffffff)
#endif

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

__device__ inline float warp_sum(float v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ inline float warp_max(float v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// The first __syncthreads protects scratch: a previous block_* call may still be reading it in another warp.
__device__ inline float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int n_warps = blockDim.x / WARP_SIZE;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_sum(lane < n_warps ? scratch[lane] : 0.0f);
}

__device__ inline float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int n_warps = blockDim.x / WARP_SIZE;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_max(lane < n_warps ? scratch[lane] : -INFINITY);
}

// Floats compare like their bit patterns read as sign-magnitude integers. Flipping the sign bit of positives and
// every bit of negatives turns that into plain unsigned order: -inf < -1 < -0 = +0 < 1 < +inf. -0.0 is folded
// into +0.0 first, because the float comparison -0.0 >= 0.0 is true and the key order must agree with it.
__device__ inline unsigned int ordered_key(float f) {
    if (f == 0.0f) f = 0.0f;
    const unsigned int bits = __float_as_uint(f);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ inline float key_to_float(unsigned int key) {
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// binary16: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits. Subnormals (exponent 0) are mantissa * 2^-24.
__device__ inline float half_bits_to_float(unsigned short h) {
    const unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    const unsigned int exponent = (h >> 10) & 0x1fu;
    const unsigned int mantissa = h & 0x3ffu;
    float magnitude;
    if (exponent == 0) {
        magnitude = (float)mantissa * 5.9604644775390625e-08f;  // 2^-24
    } else if (exponent == 31) {
        magnitude = mantissa ? NAN : INFINITY;
    } else {  // rebias the exponent from 15 to 127 and widen the mantissa from 10 to 23 bits
        magnitude = __uint_as_float(((exponent + 112u) << 23) | (mantissa << 13));
    }
    return __uint_as_float(sign | __float_as_uint(magnitude));
}
