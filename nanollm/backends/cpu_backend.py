"""The cpu backend: the NumPy backend with the ops that read the most memory, or are called most often, compiled.

What this adds over numpy_backend.py: every weight matrix is stored once, at load, as column panels (`Panels`), and
`linear` multiplies by it in kernels/linear_cpu.cpp (read that file's header: why OpenBLAS is slow for the few rows of
a decode step, and how the kernel reads each weight once for up to 8 rows); attention, a decode step's or a
prefill's, over a KVCache, a paged pool or a pass's own keys, runs in kernels/attention_cpu.cpp, on every core and
reading the keys where they lie. The norms (kernels/norms_cpu.cpp), RoPE (kernels/rope_cpu.cpp) and the MLP's
activations (kernels/activations_cpu.cpp) are compiled for another reason: a decode step makes 25 norms, 24 ropes and
12 activations of one row each, and NumPy's several calls per op cost more than the arithmetic (~15 us each, a tenth
of a step's time besides its products); in a prefill each of NumPy's passes streams the whole activation through
memory again. Everything else (attention with padding, the exact GELU, sampling) is the NumPy reference unchanged,
so this backend is the numpy one, faster, and its results agree with it to float32 rounding
(sums in another order), tested in tests/test_cpu_backend.py.

Building: the kernels are compiled into one library at the first use with the host C++ compiler, found and
cached as the emulator does it (kernels/emulator: $CXX, else g++, c++ or clang++), with -O3 -march=native -pthread,
under `$NANOLLM_CACHE/cpu` (default `~/.cache/nanollm/cpu`), named by the sha256 of the sources, the flags, the
compiler's version and this CPU's model and features (-march=native code may not run on another CPU sharing the
cache). No compiler: one error that says so (the numpy backend needs none).

Threads: the kernels share one pool of threads, one per core (kernels/pool_cpu.h, which also says why not OpenMP:
its idle worker reads the next matrix ahead while Python runs between two products, and `linear` tells it which).
OpenBLAS, which NumPy still calls for attention's small products, has a pool of its own, whose threads keep
spinning for a while after each call. Two pools spinning on the same cores stall each other (a GPT-2 prefill
measured 9x slower with both, then with OpenMP's pool), so this backend sets OpenBLAS to one thread for the process
when it starts (`single_threaded_blas`): the heavy products are the kernel's now.

Where the matrices live. `weight` packs every 2-D tensor (a linear weight, and the embedding tables too, which the
embedding gathers rows of: `Panels[ids]`). A tied model's output projection is its embedding table transposed; the
numpy backend serves it as a view, here `tied_table` stores the table as the panels of the projection
(`TiedTable`: `.T` is the projection, `[ids]` gathers the embedding's rows from its columns). One copy either way.
The panels are laid out one after another, in load order, in large mappings on 2 MiB pages, and a KV cache's buffer
(`zeros`) is another: huge_pages.py says why (a decode step took 0.85-0.93x the time).
"""
import ctypes
import math
import os
import platform
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from nanollm.kernels import KERNELS_DIR
from nanollm.kernels.emulator import build_digest, cache_root, compiler_version, find_compiler

from ..paged_cache import check_paged_args
from .huge_pages import HUGE_PAGE, PanelMemory, huge_page_zeros
from .numpy_backend import NumpyBackend

SOURCES = tuple(KERNELS_DIR / f"{name}_cpu.cpp" for name in ("linear", "attention", "norms", "rope", "activations"))
# Included by the sources: part of the build's digest, not compiled alone.
HEADERS = (KERNELS_DIR / "simd_cpu.h", KERNELS_DIR / "pool_cpu.h")
FLAGS = ("-O3", "-march=native", "-pthread", "-std=c++17", "-fPIC", "-shared")
PANEL = 32  # columns per panel: PANEL in linear_cpu.cpp
MAX_HEAD_DIM = 512  # the largest head attention_cpu.cpp takes (its local arrays); larger ones go to NumPy


class CpuKernelError(RuntimeError):
    """The cpu backend's kernel could not be built (no compiler, or the compiler failed)."""


# -- building ----------------------------------------------------------------------------------------------------


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
    """The compiled library (`linear_panels`, `attention_cached`, `layer_norm_rows`, `rms_norm_rows`, `rope_rows`,
    `gelu_rows`, `silu_mul_rows`, `gelu_mul_rows`), built at the first call and cached on disk (see the
    module docstring)."""
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
    lib.gelu_rows.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_longlong]
    lib.silu_mul_rows.argtypes = lib.gelu_mul_rows.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_longlong]
    for f in (lib.linear_panels, lib.attention_cached, lib.layer_norm_rows, lib.rms_norm_rows, lib.rope_rows,
              lib.gelu_rows, lib.silu_mul_rows, lib.gelu_mul_rows):
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


# -- the panel layout --------------------------------------------------------------------------------------------


class Panels:
    """A float32 matrix (K, N) stored as column panels: `data` (ceil(N/32), K, 32), the last one zero-padded.

    Panel p holds columns 32p .. 32p+31, row after row, so the kernel streams it front to back.
    """

    def __init__(self, a: np.ndarray, memory: PanelMemory | None = None):
        K, N = a.shape
        n_panels, full = -(-N // PANEL), N // PANEL
        shape = (n_panels, K, PANEL)
        data = np.zeros(shape, dtype=np.float32) if memory is None else memory.take(shape)  # (P, K, 32)
        data[:full] = a[:, : full * PANEL].reshape(K, full, PANEL).transpose(1, 0, 2)
        if full < n_panels:
            data[full, :, : N - full * PANEL] = a[:, full * PANEL :]  # the narrower last panel
        self.data, self.shape = data, (K, N)
        self.address = address(data)  # for the kernel, found once
        self.next = None  # the matrix a product read right after this one last time (see CpuBackend.linear)

    dtype = np.dtype(np.float32)
    ndim, itemsize = 2, 4

    ctypes = property(lambda self: self.data.ctypes)  # where the elements are (nanollm.views.trace names weights so)
    strides = property(lambda self: self.data.strides)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def __getitem__(self, ids) -> np.ndarray:
        """Rows of the matrix (an embedding's gather). int (...) -> (..., N)."""
        ids = np.asarray(ids)
        rows = self.data[:, ids]  # (P, ..., 32)
        rows = np.moveaxis(rows, 0, -2).reshape(*ids.shape, -1)  # (..., P*32)
        return np.ascontiguousarray(rows[..., : self.shape[1]])  # (..., N)

    def columns(self, ids) -> np.ndarray:
        """Columns of the matrix, each as a row. int (...) -> (..., K)."""
        ids = np.asarray(ids)
        return self.data[ids // PANEL, :, ids % PANEL]  # (..., K)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The matrix as a plain (K, N) array (a copy), for code that reads weights as arrays (views, tests)."""
        K, N = self.shape
        a = self.data.transpose(1, 0, 2).reshape(K, -1)[:, :N]  # (K, N)
        return np.array(a, dtype=dtype or np.float32)


class TiedTable:
    """The embedding table (V, C) of a tied model, stored as the panels of its transpose, the output projection."""

    def __init__(self, table: np.ndarray, memory: PanelMemory | None = None):
        self.T = Panels(np.asarray(table, dtype=np.float32).T, memory)  # (C, V): what linear multiplies by
        self.shape = table.shape

    dtype, ndim, itemsize = Panels.dtype, 2, 4
    nbytes = property(lambda self: self.T.nbytes)
    size = property(lambda self: self.T.size)
    ctypes = property(lambda self: self.T.ctypes)
    strides = property(lambda self: self.T.strides)

    def __getitem__(self, ids) -> np.ndarray:
        """Rows of the table: columns of the projection. int (...) -> (..., C)."""
        return self.T.columns(ids)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.array(np.asarray(self.T).T, dtype=dtype or np.float32)


# -- the backend -------------------------------------------------------------------------------------------------


class CpuBackend(NumpyBackend):
    name = "cpu"

    def __init__(self):
        self._lib = load_kernel()  # built (or found in the cache) now, so a missing compiler is said at load
        single_threaded_blas()
        self._panel_memory = PanelMemory()  # where `weight` and `tied_table` lay out matrices: 2 MiB pages
        self._last_read = None  # the Panels of the latest product

    def weight(self, a):
        """Matrices as Panels (the layout of the kernel, on 2 MiB pages), vectors (norms, biases) as float32 arrays of
        their own: a read-only one (a view of a memory-mapped file) would cost `address` its slow way at every call."""
        a = np.asarray(a, dtype=np.float32)
        return Panels(a, self._panel_memory) if a.ndim == 2 else np.array(a, order="C")

    def tied_table(self, table):
        """See TiedTable: the one copy of the table is laid out for the output projection."""
        return TiedTable(table, self._panel_memory)

    def zeros(self, shape, dtype=np.float32):
        """Zeros; a float32 array of 2 MiB or more (a KV cache: one buffer for all its layers) on 2 MiB pages of its
        own (see huge_page_zeros): attention reads all of it every step."""
        n = math.prod(shape)
        if np.dtype(dtype) != np.float32 or n * 4 < HUGE_PAGE:
            return super().zeros(shape, dtype)
        return huge_page_zeros(n).reshape(shape)

    def linear(self, x, w, b=None):
        """x @ w + b by kernels/linear_cpu.cpp. (..., in), (in, out) Panels, (out,) -> (..., out).
        A plain array w (a matrix made on the fly) goes to the NumPy reference."""
        if not isinstance(w, Panels):
            return super().linear(x, w, b)
        K, N = w.shape
        rows = f32(x.reshape(-1, K))  # (R, K)
        bias = None if b is None else f32(b)
        y = np.empty((len(rows), N), dtype=np.float32)  # (R, N)
        # A decode step reads its matrices in the same order every time: the one read after w last time is the one
        # the kernel's idle threads read ahead while Python runs until the next product (kernels/pool_cpu.h).
        if self._last_read is not None:
            self._last_read.next = w
        self._last_read, after = w, w.next
        self._lib.linear_panels(address(rows), w.address, None if bias is None else address(bias), address(y),
                                len(rows), K, N, *((None, 0, 0) if after is None else (after.address, *after.shape)))
        return y.reshape(*x.shape[:-1], N)

    def layer_norm(self, x, w, b, eps: float):
        """LayerNorm by kernels/norms_cpu.cpp. (..., C) -> (..., C). Weights not of shape (C,): NumPy's rules."""
        C = x.shape[-1]
        if w is None or b is None or w.shape != (C,) or b.shape != (C,):
            return super().layer_norm(x, w, b, eps)
        x = f32(x)
        y = np.empty_like(x)  # (..., C)
        self._lib.layer_norm_rows(address(x), address(f32(w)), address(f32(b)), address(y), x.size // C, C, eps)
        return y

    def rms_norm(self, x, w, eps: float):
        """RMSNorm by kernels/norms_cpu.cpp. (..., C) -> (..., C). A weight not of shape (C,): NumPy's rules."""
        C = x.shape[-1]
        if w is None or w.shape != (C,):
            return super().rms_norm(x, w, eps)
        x = f32(x)
        y = np.empty_like(x)  # (..., C)
        self._lib.rms_norm_rows(address(x), address(f32(w)), address(y), x.size // C, C, eps)
        return y

    def rope(self, x, cos, sin):
        """RoPE by kernels/rope_cpu.cpp, reading the heads through x's strides (a view of the q/k/v projection).
        (B, n, T, hs), (B, T, r/2) x2 -> (B, n, T, hs). Tables of another shape (broadcast ones): NumPy's rules."""
        B, n, T, hs = x.shape
        half = cos.shape[-1]
        if cos.shape != (B, T, half) or sin.shape != (B, T, half) or 2 * half > hs:
            return super().rope(x, cos, sin)
        if x.dtype != np.float32 or x.strides[-1] != 4 or any(s % 4 for s in x.strides):
            x = f32(x)
        y = np.empty((B, n, T, hs), dtype=np.float32)
        sb, sn, st = x.strides[:3]
        self._lib.rope_rows(address(x), address(f32(cos)), address(f32(sin)), address(y), B, n, T, hs, half,
                            sb // 4, sn // 4, st // 4)
        return y

    def gelu(self, x):
        """GELU (tanh form) by kernels/activations_cpu.cpp. (...) -> (...)"""
        x = f32(x)
        y = np.empty_like(x)
        self._lib.gelu_rows(address(x), address(y), x.size)
        return y

    def silu_mul(self, gate, up):
        """silu(gate) * up by kernels/activations_cpu.cpp. (..., H) x2 -> (..., H).
        Shapes that differ: NumPy's rules."""
        return self._gated(self._lib.silu_mul_rows, gate, up) if gate.shape == up.shape else super().silu_mul(gate, up)

    def gelu_mul(self, gate, up):
        """gelu(gate) * up by kernels/activations_cpu.cpp. (..., H) x2 -> (..., H).
        Shapes that differ: NumPy's rules."""
        return self._gated(self._lib.gelu_mul_rows, gate, up) if gate.shape == up.shape else super().gelu_mul(gate, up)

    def _gated(self, kernel, gate, up):
        """kernel(gate, up) -> y elementwise, the two gated activations' one call. (..., H) x2 -> (..., H)"""
        gate, up = f32(gate), f32(up)
        y = np.empty_like(gate)
        kernel(address(gate), address(up), address(y), gate.size)
        return y

    def attention(self, q, k, v, q_start: int, key_mask=None, *, scale: float | None = None,
                  softcap: float | None = None, window: int | None = None):
        """Attention without padding by kernels/attention_cpu.cpp, a decode step's or a prefill's, reading the keys
        where they lie (a KVCache's buffer, each row of the batch one block of its slots, or a pass's own projection);
        with a key mask (left padding) by the NumPy reference."""
        B, nh, T, hs = q.shape
        if (key_mask is not None or hs > MAX_HEAD_DIM or k.shape[2] < q_start + T or k.dtype != np.float32
                or k.strides != v.strides or k.strides[-1] != 4):
            return super().attention(q, k, v, q_start, key_mask, scale=scale, softcap=softcap, window=window)
        tables = np.arange(B, dtype=np.int32)[:, None]  # (B, 1): sequence b is block b
        lengths = np.full(B, q_start + T, dtype=np.int32)  # (B,) the queries are slots q_start .. q_start + T - 1
        strides = [n // 4 for n in k.strides[:3]]  # floats between sequences (blocks), heads, slots
        return self._attend(q, k, v, tables, lengths, k.shape[2], strides, scale, softcap, window)

    def paged_attention(self, q, k_pool, v_pool, block_tables, lengths, *, scale: float | None = None,
                        softcap: float | None = None, window: int | None = None):
        """Attention over a paged pool by kernels/attention_cpu.cpp, reading the blocks in place through the table
        (no gather); each sequence's queries are its last T slots."""
        if q.shape[3] > MAX_HEAD_DIM:
            return super().paged_attention(q, k_pool, v_pool, block_tables, lengths, scale=scale, softcap=softcap,
                                           window=window)
        tables, lengths = check_paged_args(q.shape, k_pool.shape, v_pool.shape, block_tables, lengths)
        k_pool, v_pool = np.ascontiguousarray(k_pool), np.ascontiguousarray(v_pool)  # (n_blocks, n_kv, bs, hs)
        n_kv, bs, hs = k_pool.shape[1:]
        return self._attend(q, k_pool, v_pool, tables, lengths, bs, [n_kv * bs * hs, bs * hs, hs], scale,
                            softcap, window)

    def _attend(self, q, k, v, tables, lengths, bs: int, strides, scale, softcap, window):
        """attention_cached over keys at the blocks of `tables` (see the kernel's header). -> (B, nh, T, hs)"""
        B, nh, T, hs = q.shape
        q = f32(q)  # (B, nh, T, hs)
        tables = np.ascontiguousarray(tables, dtype=np.int32)  # (B, table_width)
        lengths = np.ascontiguousarray(lengths, dtype=np.int32)  # (B,)
        out = np.empty_like(q)  # (B, nh, T, hs)
        self._lib.attention_cached(address(q), address(k), address(v), address(out), address(tables),
                                   tables.shape[1], address(lengths), B, nh, T, k.shape[1], hs, bs, *strides,
                                   1.0 / math.sqrt(hs) if scale is None else scale, softcap or 0.0, window or 0)
        return out
