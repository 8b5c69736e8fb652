"""The cpu backend: the NumPy backend with the ops that read the most memory, or are called most often, compiled.

What this adds over numpy_backend.py: every weight matrix is stored once, at load, as column panels (`Panels`), and
`linear` multiplies by it in kernels/linear_cpu.cpp (read that file's header: why OpenBLAS is slow for the few rows of
a decode step, and how the kernel reads each weight once for up to 8 rows); attention, a decode step's or a
prefill's, over a KVCache, a paged pool or a pass's own keys, runs in kernels/attention_cpu.cpp, on every core and
reading the keys where they lie. The norms (kernels/norms_cpu.cpp), RoPE (kernels/rope_cpu.cpp) and the MLP's
activations (kernels/activations_cpu.cpp) are compiled for another reason: a decode step makes 25 norms, 24 ropes and
12 activations of one row each, and NumPy's several calls per op cost more than the arithmetic (~15 us each, a tenth
of a step's time besides its products); in a prefill each of NumPy's passes streams the whole activation through
memory again. Everything else (attention with padding, sampling) is the NumPy reference unchanged,
so this backend is the numpy one, faster, and its results agree with it to float32 rounding
(sums in another order), tested in tests/test_cpu_backend.py.

Threads: the kernels share one pool of threads, one per core (kernels/pool_cpu.h, which also says why not OpenMP:
its idle worker reads the next matrix ahead while the caller runs alone between two products, and `linear` tells it
which). OpenBLAS, which NumPy still calls for attention's small products, has a pool of its own, whose threads keep
spinning for a while after each call. Two pools spinning on the same cores stall each other (a GPT-2 prefill
measured 9x slower with both, then with OpenMP's pool), so this backend sets OpenBLAS to one thread for the process
when it starts (`single_threaded_blas`): the heavy products are the kernel's now.

Where the matrices live. `weight` packs every 2-D tensor (a linear weight, and the embedding tables too, which the
embedding gathers rows of: `Panels[ids]`). A tied model's output projection is its embedding table transposed; the
numpy backend serves it as a view, here `tied_table` stores the table as the panels of the projection
(`TiedTable`: `.T` is the projection, `[ids]` gathers the embedding's rows from its columns). One copy either way.
The panels are laid out one after another, in load order, in large mappings on 2 MiB pages, and a KV cache's buffer
(`zeros`) is another: huge_pages.py says why (a decode step took 0.85-0.93x the time).

Recording. A decode step makes the same ~100 kernel calls at every step of a cache (and of the paged runner's batches
of one size), and the Python around them cost ~12% of a GPT-2 step at ~60 GB/s: `recording_calls` keeps them
(backends/recording.py) so that nanollm/replayed_step.py can replay them from C (kernels/replay_cpu.cpp). For that
every op of a step is a kernel here, the residual add (`add`) and the caches' writes (`write_slots`, `paged_write`)
included, and each array a kernel needs besides its inputs (its result, a view copied to C order, a slot number) is
made by `_empty`, `_made`, `_c_order` or `_slots`, which hand it to a recording.
"""
import math
import threading
from contextlib import contextmanager

import numpy as np

from ..paged_cache import check_paged_args, check_paged_write
from .cpu_kernels import address, f32, float_strides, load_kernel, single_threaded_blas
from .huge_pages import HUGE_PAGE, PanelMemory, huge_page_zeros
from .numpy_backend import NumpyBackend
from .recording import Recording

PANEL = 32  # columns per panel: PANEL in linear_cpu.cpp
MAX_HEAD_DIM = 512  # the largest head attention_cpu.cpp takes (its local arrays); larger ones go to NumPy
# The block size that makes each sequence one block (a KVCache row, a C-order copy): any number past its last slot.
# Not the buffer's length, which a recorded step would keep.
WHOLE_ROW = 1 << 40


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
        self._kernels = load_kernel()  # built (or found in the cache) now, so a missing compiler is said at load
        single_threaded_blas()
        self._panel_memory = PanelMemory()  # where `weight` and `tied_table` lay out matrices: 2 MiB pages
        self._last_read = None  # the Panels of the latest product
        self._thread = threading.local()  # .recording: the Recording this thread's step is kept in, if any

    records_steps = True  # see recording_calls

    @property
    def _recording(self):
        return getattr(self._thread, "recording", None)

    @property
    def _lib(self):
        """The compiled library; while this thread records a step, the Recording, which runs each call and keeps it
        (another thread's calls are not the step's)."""
        return self._kernels if self._recording is None else self._recording

    @contextmanager
    def recording_calls(self, start: int, known: list, inputs: list):
        """Inside the block every kernel call this thread makes is also kept, in the Recording this yields
        (backends/recording.py), with the arrays the backend makes for the calls (results, slot numbers).
        start: the step's first slot; known: the weights' and cache's arrays; inputs: the step's inputs."""
        self._thread.recording = Recording(self._kernels, start, known, inputs)
        try:
            yield self._thread.recording
        finally:
            self._thread.recording = None

    def _made(self, a: np.ndarray) -> np.ndarray:
        """An array the backend made for a kernel to read or write (a recording keeps it)."""
        return a if self._recording is None else self._recording.output(a)

    def _empty(self, shape) -> np.ndarray:
        """A float32 array for a kernel's result."""
        return self._made(np.empty(shape, dtype=np.float32))

    def _slots(self, value: int, n: int = 1) -> np.ndarray:
        """n copies of a slot number as int32, for a kernel that reads it from memory (a recording sets it anew for
        each step it replays)."""
        a = np.full(n, value, dtype=np.int32)
        return a if self._recording is None else self._recording.cell(a, value)

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
        y = self._empty((len(rows), N))  # (R, N)
        # A decode step reads its matrices in the same order every time: the one read after w last time is the one
        # the kernel's idle threads read ahead until the next product (kernels/pool_cpu.h).
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
        x = self._c_order(x)
        y = self._empty(x.shape)  # (..., C)
        self._lib.layer_norm_rows(address(x), address(f32(w)), address(f32(b)), address(y), x.size // C, C, eps)
        return y

    def rms_norm(self, x, w, eps: float):
        """RMSNorm by kernels/norms_cpu.cpp. (..., C) -> (..., C). A weight not of shape (C,): NumPy's rules."""
        C = x.shape[-1]
        if w is None or w.shape != (C,):
            return super().rms_norm(x, w, eps)
        x = self._c_order(x)
        y = self._empty(x.shape)  # (..., C)
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
        y = self._empty((B, n, T, hs))
        sb, sn, st = x.strides[:3]
        self._lib.rope_rows(address(x), address(f32(cos)), address(f32(sin)), address(y), B, n, T, hs, half,
                            sb // 4, sn // 4, st // 4)
        return y

    def gelu(self, x):
        """GELU (tanh form) by kernels/activations_cpu.cpp. (...) -> (...)"""
        x = f32(x)
        y = self._empty(x.shape)
        self._lib.gelu_rows(address(x), address(y), x.size)
        return y

    def gelu_exact(self, x):
        """GELU (exact form, the NumPy twin's erfc) by kernels/activations_cpu.cpp. (...) -> (...)"""
        x = f32(x)
        y = self._empty(x.shape)
        self._lib.gelu_exact_rows(address(x), address(y), x.size)
        return y

    def softcap(self, x, cap: float):
        """cap * tanh(x / cap) by kernels/activations_cpu.cpp (Gemma 2's final logits). (...) -> (...)"""
        x = f32(x)
        y = self._empty(x.shape)
        self._lib.softcap_rows(address(x), address(y), x.size, cap)
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
        y = self._empty(gate.shape)
        kernel(address(gate), address(up), address(y), gate.size)
        return y

    def add(self, x, y):
        """The residual add by kernels/activations_cpu.cpp. (B, T, C) x2 -> (B, T, C). Shapes that differ (a
        broadcast): NumPy's rules."""
        if x.shape != y.shape:
            return super().add(x, y)
        x, y = f32(x), f32(y)
        out = self._empty(x.shape)
        self._lib.add_rows(address(x), address(y), address(out), x.size)
        return out

    def write_slots(self, buffer, x, start: int):
        """x (B, n, T, hs) into slots start .. start+T-1 of buffer (B, n, S, hs), by kernels/attention_cpu.cpp, both
        read through their strides; the kernel reads where from memory (`_slots`: each row's length after the write)."""
        src, dst = float_strides(x), float_strides(buffer)
        if src is None or dst is None or src[-1] != 1 or dst[-1] != 1 or buffer.shape[2] < start + x.shape[2]:
            return super().write_slots(buffer, x, start)
        B, n, T, hs = x.shape
        self._lib.write_slots(address(x), *src[:3], address(buffer), None, 0, address(self._slots(start + T, B)),
                              B, n, T, hs, WHOLE_ROW, *dst[:3])  # no tables: row b is block b

    def paged_write(self, pool, x, block_tables, lengths):
        """x (B, n_kv, T, hs), each sequence's last T slots, into the pool (n_blocks, n_kv, bs, hs) through the block
        tables, by kernels/attention_cpu.cpp (write_slots), reading x through its strides."""
        src, dst = float_strides(x), float_strides(pool)
        if src is None or dst is None or src[-1] != 1 or dst[-1] != 1:
            return super().paged_write(pool, x, block_tables, lengths)
        checked = check_paged_write(x.shape, pool.shape, block_tables, lengths)
        tables, lengths = self._own(checked, block_tables, lengths)
        B, n, T, hs = x.shape
        self._lib.write_slots(address(x), *src[:3], address(pool), address(tables), tables.shape[1], address(lengths),
                              B, n, T, hs, pool.shape[2], *dst[:3])

    @staticmethod
    def _own(checked, block_tables, lengths):
        """The tables and lengths a kernel reads, once checked (`checked`, check_paged_args' int32 copies): the
        caller's own arrays when they are int32 in C order already, so that a recorded decode step names them and
        each replay reads them anew (the paged runner refills them at every step: nanollm/replayed_step.py)."""
        own = all(isinstance(a, np.ndarray) and a.dtype == np.int32 and a.flags.c_contiguous
                  for a in (block_tables, lengths))
        return (block_tables, lengths) if own else checked

    def _c_order(self, x):
        """x as a C-order float32 array: itself when it is one; a view whose last axis is contiguous (a head of the
        q/k/v projection) copied by write_slots, so that a recorded step holds the copy too; else NumPy's copy."""
        strides = float_strides(x)
        if x.flags.c_contiguous or strides is None or strides[-1] != 1 or not 1 <= x.ndim <= 4:
            return f32(x)
        y = self._empty(x.shape)
        lead = 4 - x.ndim  # as (B, n, T, hs), with leading axes of one
        self._lib.write_slots(address(x), *([0] * lead + strides)[:3], address(y), None, 0, None, *(1,) * lead,
                              *x.shape, WHOLE_ROW, *([0] * lead + float_strides(y))[:3])
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
        tables = self._made(np.arange(B, dtype=np.int32)[:, None])  # (B, 1): sequence b is block b
        lengths = self._slots(q_start + T, B)  # (B,) the queries are slots q_start .. q_start + T - 1
        strides = [n // 4 for n in k.strides[:3]]  # floats between sequences (blocks), heads, slots
        return self._attend(q, k, v, tables, lengths, WHOLE_ROW, strides, scale, softcap, window)

    def paged_attention(self, q, k_pool, v_pool, block_tables, lengths, *, scale: float | None = None,
                        softcap: float | None = None, window: int | None = None):
        """Attention over a paged pool by kernels/attention_cpu.cpp, reading the blocks in place through the table
        (no gather); each sequence's queries are its last T slots."""
        if q.shape[3] > MAX_HEAD_DIM:
            return super().paged_attention(q, k_pool, v_pool, block_tables, lengths, scale=scale, softcap=softcap,
                                           window=window)
        checked = check_paged_args(q.shape, k_pool.shape, v_pool.shape, block_tables, lengths)
        tables, lengths = self._own(checked, block_tables, lengths)
        k_pool, v_pool = np.ascontiguousarray(k_pool), np.ascontiguousarray(v_pool)  # (n_blocks, n_kv, bs, hs)
        n_kv, bs, hs = k_pool.shape[1:]
        return self._attend(q, k_pool, v_pool, tables, lengths, bs, [n_kv * bs * hs, bs * hs, hs], scale,
                            softcap, window)

    def _attend(self, q, k, v, tables, lengths, bs: int, strides, scale, softcap, window):
        """attention_cached over keys at the blocks of `tables` (see the kernel's header): int32 C-order tables
        (B, table_width) and lengths (B,), the arrays a recorded step names. -> (B, nh, T, hs)"""
        B, nh, T, hs = q.shape
        q = self._c_order(q)  # (B, nh, T, hs)
        out = self._empty(q.shape)  # (B, nh, T, hs)
        self._lib.attention_cached(address(q), address(k), address(v), address(out), address(tables),
                                   tables.shape[1], address(lengths), B, nh, T, k.shape[1], hs, bs, *strides,
                                   1.0 / math.sqrt(hs) if scale is None else scale, softcap or 0.0, window or 0)
        return out
