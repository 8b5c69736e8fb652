"""The cpu backend's compiled library: building it, loading it, and the helpers that pass arrays to its kernels.

Building: the kernels are compiled into one library at the first use with the host C++ compiler, found and
cached as the emulator does it (kernels/emulator: $CXX, else g++, c++ or clang++), with -O3 -march=native -pthread,
under `$NANOLLM_CACHE/cpu` (default `~/.cache/nanollm/cpu`), named by the sha256 of the sources, the flags, the
compiler's version and this CPU's model and features (-march=native code may not run on another CPU sharing the
cache). No compiler: one error that says so (the numpy backend needs none).

The library holds every kernels/*_cpu.cpp: the matrix product (linear_cpu.cpp), attention and the KV cache's writes
(attention_cpu.cpp), norms, RoPE, activations and the residual add, and the replay of a recorded decode step
(replay_cpu.cpp). `load_kernel` says each function's arguments to ctypes once.
"""
import ctypes
import os
import platform
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from nanollm.kernels import KERNELS_DIR
from nanollm.kernels.emulator import build_digest, cache_root, compiler_version, find_compiler

SOURCES = tuple(KERNELS_DIR / f"{name}_cpu.cpp"
                for name in ("linear", "attention", "norms", "rope", "activations", "replay"))
# Included by the sources: part of the build's digest, not compiled alone.
HEADERS = (KERNELS_DIR / "simd_cpu.h", KERNELS_DIR / "pool_cpu.h")
FLAGS = ("-O3", "-march=native", "-pthread", "-std=c++17", "-fPIC", "-shared")


class CpuKernelError(RuntimeError):
    """The cpu backend's kernel could not be built (no compiler, or the compiler failed)."""


def cpu_identity() -> str:
    """This CPU's model and feature flags (Linux), else the platform's name: code built with -march=native for one
    CPU may use instructions another lacks."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(lines)))


@lru_cache(maxsize=None)
def load_kernel() -> ctypes.CDLL:
    """The compiled library (every `extern "C"` function of kernels/*_cpu.cpp, the ones `KERNELS` in recording.py
    names and `replay_calls`), built at the first call and cached on disk (see the module docstring)."""
    try:
        compiler = find_compiler()
    except RuntimeError:  # the emulator's CompilerNotFound
        raise CpuKernelError("no C++ compiler found ($CXX, g++, c++ or clang++) to build the cpu backend's kernels "
                             "(kernels/*_cpu.cpp) at their first use: install one (e.g. "
                             "`apt install g++`) or set CXX") from None
    digest = build_digest(sources=[p.read_text() for p in SOURCES + HEADERS], flags=FLAGS,
                          compiler=[compiler, compiler_version(compiler)], cpu=cpu_identity())
    library = cache_root() / "cpu" / f"cpu_kernels-{digest}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent, prefix="build-") as tmp:
            built = Path(tmp) / library.name
            result = subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", str(built)], capture_output=True,
                                    text=True)
            if result.returncode != 0:
                raise CpuKernelError(f"compiling the cpu backend's kernels failed:\n{result.stderr}")
            os.replace(built, library)  # whole or absent: a process sharing the cache never loads half a file
    lib = ctypes.CDLL(str(library))
    lib.linear_panels.argtypes = ([ctypes.c_void_p] * 4 + [ctypes.c_longlong] * 3  # x, panels, bias, y; R, K, N
                                  + [ctypes.c_void_p] + [ctypes.c_longlong] * 2)  # the next product's panels, K, N
    lib.attention_cached.argtypes = ([ctypes.c_void_p] * 5 + [ctypes.c_longlong, ctypes.c_void_p]
                                     + [ctypes.c_longlong] * 9 + [ctypes.c_float] * 2 + [ctypes.c_longlong])
    lib.layer_norm_rows.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_longlong] * 2 + [ctypes.c_float]
    lib.rms_norm_rows.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_longlong] * 2 + [ctypes.c_float]
    lib.rope_rows.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_longlong] * 8
    lib.gelu_rows.argtypes = lib.gelu_exact_rows.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_longlong]
    lib.silu_mul_rows.argtypes = lib.gelu_mul_rows.argtypes = lib.add_rows.argtypes = ([ctypes.c_void_p] * 3
                                                                                       + [ctypes.c_longlong])
    lib.write_slots.argtypes = ([ctypes.c_void_p] + [ctypes.c_longlong] * 3  # src, its strides
                                + [ctypes.c_void_p] * 2 + [ctypes.c_longlong, ctypes.c_void_p]  # dst, tables, W, lens
                                + [ctypes.c_longlong] * 8)  # B, n, T, hs, bs, dst's strides
    lib.softcap_rows.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_longlong, ctypes.c_float]
    lib.replay_calls.argtypes = [ctypes.c_void_p, ctypes.c_longlong]
    for f in (lib.linear_panels, lib.attention_cached, lib.layer_norm_rows, lib.rms_norm_rows, lib.rope_rows,
              lib.gelu_rows, lib.gelu_exact_rows, lib.silu_mul_rows, lib.gelu_mul_rows, lib.add_rows,
              lib.softcap_rows, lib.write_slots, lib.replay_calls):
        f.restype = None
    return lib


def single_threaded_blas() -> None:
    """Set every OpenBLAS loaded in this process to one thread, by its own C function (Linux: the libraries are found
    in /proc/self/maps; NumPy's wheels ship OpenBLAS under prefixed names). Elsewhere this does nothing."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return
    for path in sorted({line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower()}):
        lib = ctypes.CDLL(path)
        for name in ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "scipy_openblas_set_num_threads64_"):
            if hasattr(lib, name):
                getattr(lib, name)(1)


def address(a: np.ndarray) -> int:
    """Where a C-contiguous array's elements are, for a kernel. `a.ctypes.data` says it too but costs a microsecond
    (it builds a dictionary each call), and a decode step passes ~300 arrays: ctypes' view of the array's buffer
    costs a quarter of that. That view takes only writable, non-empty buffers: the others (a read-only memory-mapped
    weight) go the slow way."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError):
        return a.ctypes.data


def f32(a) -> np.ndarray:
    """a as the kernels read it: float32, C order (itself when it is already)."""
    return np.ascontiguousarray(a, dtype=np.float32)


def float_strides(a) -> list | None:
    """A float32 array's strides counted in floats, for a kernel that reads it through them; None if it has none."""
    if a.dtype != np.float32 or any(s % 4 for s in a.strides):
        return None
    return [s // 4 for s in a.strides]
