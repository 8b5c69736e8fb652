"""Kernel speed on a GPU: `make bench-kernels` (python -m tests.bench.bench_kernels).

For each kernel at a model-like size: the time per launch (CUDA events, median of repeats after a warm-up), the
bytes it must move at least, the achieved GB/s against the GPU's peak memory bandwidth, TFLOP/s for attention
against the FP32 peak, and the time the NumPy reference takes on the CPU for the same op. Bytes count each input
read once and each output written once: the floor any implementation pays, so GB/s reads as "fraction of the
roofline", not as what the cache hierarchy actually served.

The last line sums the table up (the median kernel's share of the peak, and the two ends): `make gpu-check` shows it
as this stage's key figures. Without CuPy or without a visible GPU it prints why and exits 0 (the emulator is for
correctness, not speed).
"""
import sys
import time

import numpy as np

from nanollm.backends.numpy_backend import NumpyBackend

# FP32 lanes per SM by compute capability (CUDA C++ Programming Guide, "Arithmetic Instructions" throughput table).
FP32_PER_SM = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128, (9, 0): 128}


def gpu_or_reason():
    """(the cupy_backend module, None) when a GPU is usable, else (None, why not)."""
    try:
        from nanollm.backends import cupy_backend  # CuPy is optional: without it this import is an ImportError
    except ImportError:
        return None, "CuPy is not installed (pip install nanollm[gpu])"
    if cupy_backend.gpu_count() == 0:
        return None, "CuPy sees no CUDA GPU"
    return cupy_backend, None


def peaks(cupy) -> tuple[str, float, float]:
    """(device name, peak GB/s, peak FP32 TFLOP/s) from the device attributes (0 where the driver omits one)."""
    device = cupy.cuda.Device()
    attrs = device.attributes
    props = cupy.cuda.runtime.getDeviceProperties(device.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    mem_khz, bus_bits = attrs.get("MemoryClockRate", 0), attrs.get("GlobalMemoryBusWidth", 0)
    gbps = 2 * mem_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate
    cc = (attrs.get("ComputeCapabilityMajor", 0), attrs.get("ComputeCapabilityMinor", 0))
    lanes = FP32_PER_SM.get(cc, 128)
    tflops = 2 * lanes * attrs.get("MultiProcessorCount", 0) * attrs.get("ClockRate", 0) * 1e3 / 1e12  # FMA = 2
    return name, gbps, tflops


def time_gpu(cupy, fn, repeats=20) -> float:
    """Median seconds per call, timed with CUDA events around each call after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return float(np.median(times))


def time_cpu(fn, repeats=3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def cases(rng):
    """(name, op, args, keyword args, bytes moved, flops) at sizes of a 1B-parameter Llama (C 2048, 32/8 heads of
    64), plus what the newer families add: Gemma 2's head size 256 with soft-capping and a sliding window, Phi-4-mini's
    partial rotary (3/4 of each head), GeGLU, final-logit soft-capping and the scaled embedding."""
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    B, T, C, H, V, nh, n_kv, hs, S = 1, 512, 2048, 8192, 32000, 32, 8, 64, 2048
    x, w = f(B, T, C), f(C)
    cos, sin = f(B, T, hs // 2), f(B, T, hs // 2)
    r = 3 * hs // 4  # Phi-4-mini's partial_rotary_factor
    g_nh, g_kv, g_hs, window = 8, 4, 256, 1024  # Gemma-2-2B's attention (its window is 4096; 1024 shows the skip)
    ids = rng.integers(0, V, size=(8, T))
    return [
        ("embedding x sqrt(C)", "embedding", (f(V, C), ids, C**0.5), {}, 2 * ids.size * C * 4 + ids.nbytes, 0),
        ("rms_norm", "rms_norm", (x, w, 1e-5), {}, 2 * x.nbytes + w.nbytes, 0),
        ("layer_norm", "layer_norm", (x, w, w, 1e-5), {}, 2 * x.nbytes + 2 * w.nbytes, 0),
        ("residual_add", "add", (x, x), {}, 3 * x.nbytes, 0),
        ("gelu", "gelu", (f(B, T, H),), {}, 2 * B * T * H * 4, 0),
        ("silu_mul", "silu_mul", (f(B, T, H), f(B, T, H)), {}, 3 * B * T * H * 4, 0),
        ("gelu_mul", "gelu_mul", (f(B, T, H), f(B, T, H)), {}, 3 * B * T * H * 4, 0),
        ("softcap logits", "softcap", (f(8, V), 30.0), {}, 2 * 8 * V * 4, 0),
        ("rope", "rope", (f(B, nh, T, hs), cos, sin), {}, 2 * B * nh * T * hs * 4 + 2 * cos.nbytes, 0),
        ("rope partial 3/4", "rope", (f(B, nh, T, hs), f(B, T, r // 2), f(B, T, r // 2)), {},
         2 * B * nh * T * hs * 4 + 2 * B * T * r // 2 * 4, 0),
        ("softmax", "softmax", (f(B * nh, T, T),), {}, 2 * B * nh * T * T * 4, 0),
        ("attention prefill", "attention", (f(B, nh, T, hs), f(B, n_kv, T, hs), f(B, n_kv, T, hs), 0), {},
         (2 * B * nh * T * hs + 2 * B * n_kv * T * hs) * 4, 2 * B * nh * T * T * hs),  # causal: half of 4*T*T*hs
        ("attention decode", "attention", (f(8, nh, 1, hs), f(8, n_kv, S, hs), f(8, n_kv, S, hs), S - 1), {},
         (2 * 8 * nh * hs + 2 * 8 * n_kv * S * hs) * 4, 4 * 8 * nh * S * hs),
        ("attn prefill hs=256", "attention", (f(B, g_nh, T, g_hs), f(B, g_kv, T, g_hs), f(B, g_kv, T, g_hs), 0),
         dict(softcap=50.0), (2 * B * g_nh * T * g_hs + 2 * B * g_kv * T * g_hs) * 4, 2 * B * g_nh * T * T * g_hs),
        ("attn decode window", "attention", (f(8, g_nh, 1, g_hs), f(8, g_kv, S, g_hs), f(8, g_kv, S, g_hs), S - 1),
         dict(softcap=50.0, window=window), (2 * 8 * g_nh * g_hs + 2 * 8 * g_kv * window * g_hs) * 4,
         4 * 8 * g_nh * window * g_hs),  # only the window's keys are read
        ("sample k/p/min-p", "sample", (f(8, V), rng.random(8), 0.8, 50, 0.9, 0.05), {}, 8 * V * 4, 0),
    ]


def main() -> int:
    cupy_backend, reason = gpu_or_reason()
    if cupy_backend is None:
        print(f"no GPU here: {reason}. The kernel benchmark needs one; the kernels' correctness is tested on the "
              "CPU emulator by tests/test_kernels.py.")
        return 0
    cupy = cupy_backend.cupy
    gpu, ref = cupy_backend.CupyBackend(), NumpyBackend()
    name, peak_gbps, peak_tflops = peaks(cupy)
    print(f"{name}: peak {peak_gbps:.0f} GB/s, {peak_tflops:.1f} FP32 TFLOP/s")
    print(f"{'kernel':<20} {'GPU us':>9} {'GB/s':>8} {'% peak':>7} {'TFLOP/s':>8} {'NumPy ms':>9} {'speed-up':>9}")
    achieved = {}  # kernel -> GB/s
    for label, op, args, kwargs, nbytes, flops in cases(np.random.default_rng(0)):
        dev_args = tuple(gpu.xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args)  # uploads as they are
        t_gpu = time_gpu(cupy, lambda: getattr(gpu, op)(*dev_args, **kwargs))
        t_cpu = time_cpu(lambda: getattr(ref, op)(*args, **kwargs))
        achieved[label] = gbps = nbytes / t_gpu / 1e9
        tflops = f"{flops / t_gpu / 1e12:8.2f}" if flops else f"{'':8}"
        share = f"{100 * gbps / peak_gbps:6.0f}%" if peak_gbps else f"{'?':>7}"
        print(f"{label:<20} {t_gpu * 1e6:9.1f} {gbps:8.0f} {share} {tflops} {t_cpu * 1e3:9.2f} "
              f"{t_cpu / t_gpu:8.0f}x")
    print(summary(achieved, peak_gbps))
    return 0


def summary(achieved: dict, peak_gbps: float) -> str:
    """One line for `make gpu-check`'s table: the median kernel's share of the peak, and the two ends.
    {"a": 100, "b": 2000, "c": 4000} GB/s, peak 5000 -> "3 kernels: median 40% of peak 5000 GB/s (lowest a 2%, highest
    c 80%)"."""
    lowest, highest = min(achieved, key=achieved.get), max(achieved, key=achieved.get)
    if not peak_gbps:  # the driver did not report the memory clock or bus width
        return f"{len(achieved)} kernels: median {np.median(list(achieved.values())):.0f} GB/s (peak unknown)"
    share = {k: 100 * v / peak_gbps for k, v in achieved.items()}
    return (f"{len(achieved)} kernels: median {np.median(list(share.values())):.0f}% of peak {peak_gbps:.0f} GB/s "
            f"(lowest {lowest} {share[lowest]:.0f}%, highest {highest} {share[highest]:.0f}%)")


if __name__ == "__main__":
    sys.exit(main())
