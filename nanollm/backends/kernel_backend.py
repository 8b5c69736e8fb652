"""The kernel backend: every op of the layer API as a launch of a hand-written CUDA kernel from `kernels/`.

The repository's kernels/ folder is installed as the package `nanollm.kernels` (setup.py), so it is imported by
that name; the emulator is its subpackage `nanollm.kernels.emulator` (kernels/emulator/).

What this module adds over numpy_backend.py (read that first: it is the math): the launch side of each kernel,
that is which kernel, how many blocks and threads, how much dynamic shared memory and how the arguments are packed.
It is written once for two places the same .cu files run:

  CupyBackend      xp = cupy,  modules compiled by NVRTC (cupy.RawModule), arrays in GPU memory
  EmulatorBackend  xp = numpy, modules compiled by g++ against kernels/emulator/cuda_emulator.h (EmuModule)

Both module kinds are called the same way, `kernel(grid, block, args, shared_mem=bytes)`, with arrays passed as
pointers and scalars as NumPy scalars of the kernel's C type (np.int32 for int, np.int64 for long long, np.float32
for float). `linear` is not a kernel: it is the array library's matmul (cuBLAS on the GPU).

Launch rules every kernel relies on: blockDim.x is a multiple of 32 (full warps: the shuffles use the full mask);
array arguments are C-contiguous; rope and attention also take strided views (the q/k/v slices of the fused
projection, the filled part of the KV cache) as a flat span plus strides, so those are not copied.
"""
import math

import numpy as np

from nanollm.kernels import KERNELS_DIR

from ..paged_cache import check_paged_args, check_paged_write, last_slot_places
from ..sampling import refuse_nan

WARP = 32
ROW_THREADS = 256  # threads per block for the one-row-per-block kernels (softmax, norms, sampling)
ELEMENTWISE_THREADS = 256
MAX_BLOCKS = 4096  # grid-stride loops cover any size with at most this many blocks
FLOAT32_BYTES = np.dtype(np.float32).itemsize
TILE_KEYS = 32  # attention.cu's keys per tile
MAX_HEAD_DIM = 256  # attention.cu's largest head size (Gemma's)
# attention.cu compiles each kernel once per head-size bucket (attention_prefill_hs64, ...): a lane keeps D/32
# output values in registers, and D must be known at compile time. A call takes the smallest bucket >= hs.
HEAD_DIM_BUCKETS = (64, 128, MAX_HEAD_DIM)
# Shared memory a block may use without opting in to more (CUDA C++ Programming Guide, compute capability 8.x and
# 9.x): attention.cu's layout is sized to stay within it at every head size, see attention_block.
DEFAULT_SHARED_BYTES = 48 * 1024


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def row_threads(cols: int) -> int:
    """Threads for a one-row-per-block kernel: enough full warps to cover the row once, at most ROW_THREADS."""
    return max(WARP, min(ROW_THREADS, _round_up(cols, WARP)))


def attention_block(hs: int, rows: int, max_warps: int) -> tuple[int, int]:
    """(warps per block, dynamic shared bytes) for attention.cu: one warp per query row, at most max_warps.

    Shared memory holds the block's query rows (warps x hs floats) and one key tile of TILE_KEYS x (hs + 1) floats;
    the warps are capped so that the two fit in DEFAULT_SHARED_BYTES (at hs = 256: 15 warps, 37 KB at 4 warps).
    """
    fit = (DEFAULT_SHARED_BYTES // FLOAT32_BYTES - TILE_KEYS * (hs + 1)) // max(hs, 1)
    warps = max(1, min(max_warps, rows, fit))
    return warps, (warps * hs + TILE_KEYS * (hs + 1)) * FLOAT32_BYTES


class KernelBackend:
    """The layer API of NumpyBackend, each op launching the kernel its NumPy twin's docstring names.

    xp: the array module (numpy or cupy). load_module: path of a .cu file -> module with get_function(name).
    attention_warps: query rows (warps) per attention block. decode_chunk: keys per block in split decode; a
    single-query call over more keys than this is split (flash-decoding), a shorter one runs the prefill kernel.
    """

    name = "kernels"
    max_head_dim = MAX_HEAD_DIM  # Model refuses larger heads at load, not at the first attention call
    records_steps = False  # a CUDA graph would be the GPU's recording; not built

    def __init__(self, xp, load_module, *, attention_warps: int = 4, decode_chunk: int = 256):
        if decode_chunk <= 0 or decode_chunk % TILE_KEYS:
            raise ValueError(f"decode_chunk must be a positive multiple of {TILE_KEYS}, got {decode_chunk}")
        if not 1 <= attention_warps <= 32:
            raise ValueError(f"attention_warps must be in 1..32, got {attention_warps}")
        self.xp = xp
        self.attention_warps = attention_warps
        self.decode_chunk = decode_chunk
        self._load_module = load_module
        self._modules = {}  # file name -> loaded module (compiled once per backend object)

    def _kernel(self, file: str, name: str):
        """The kernel `name` of kernels/<file>, compiling the file on first use."""
        if file not in self._modules:
            self._modules[file] = self._load_module(KERNELS_DIR / file)
        return self._modules[file].get_function(name)

    # -- moving data ---------------------------------------------------------------------------------------------

    def asarray(self, a, dtype=np.float32):
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def weight(self, a):
        """A checkpoint tensor -> the backend's weight storage (float32 unless a subclass says otherwise)."""
        return self.asarray(a)

    def tied_table(self, table):
        """The embedding table of a tied model, as `weight` stores it: the embedding kernel reads rows of a row-major
        table, and cuBLAS reads the transposed view as the output projection at full speed."""
        return self.weight(table)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype=dtype)

    def _contiguous(self, a, dtype=np.float32):
        return self.xp.ascontiguousarray(a, dtype=dtype)

    def _launch_elementwise(self, name: str, n: int, args: tuple):
        """Launch a grid-stride kernel of elementwise.cu with enough blocks for n work items (at most MAX_BLOCKS)."""
        blocks = max(1, min(MAX_BLOCKS, -(-n // ELEMENTWISE_THREADS)))
        self._kernel("elementwise.cu", name)((blocks,), (ELEMENTWISE_THREADS,), args)

    # -- the ops -------------------------------------------------------------------------------------------------

    def embedding(self, table, ids, scale: float = 1.0):
        """Rows times scale. (V, C) float32 or float16, int (B, T) -> (B, T, C) float32.
        elementwise.cu: embedding_gather[_f16].

        An id outside 0 .. V-1 is an IndexError: the kernel would read outside the table (NumPy's twin would raise
        too, or for a negative id wrap around to the end of the table).
        """
        ids = self._contiguous(self.xp.asarray(ids), np.int64)
        V, C = table.shape
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= V):
            raise IndexError(f"token ids must lie in 0 .. {V - 1} (the rows of the embedding table), got ids from "
                             f"{int(ids.min())} to {int(ids.max())}")
        out = self.xp.empty((*ids.shape, C), dtype=np.float32)
        if table.dtype == np.float16:  # the kernel reads the raw binary16 bits: no __half type needed
            table, name = self._contiguous(table, np.float16).view(np.uint16), "embedding_gather_f16"
        else:
            table, name = self._contiguous(table), "embedding_gather"
        self._launch_elementwise(name, ids.size * C, (table, ids, out, np.int64(ids.size), np.int32(C),
                                                      np.float32(scale)))
        return out

    def linear(self, x, w, b=None):
        """x @ w + b by the array library (cuBLAS on the GPU). (..., in), (in, out), (out,) -> (..., out) float32.

        A float16 w multiplies a float16 copy of x (cuBLAS accumulates in float32); the product comes back as float32.
        """
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        if w.dtype != x2.dtype:
            y = (x2.astype(w.dtype) @ w).astype(np.float32)
        else:
            y = x2 @ w
        y = y.reshape(*x.shape[:-1], w.shape[1])
        if b is not None:
            y += b
        return y

    def _map(self, name: str, *inputs, scalars: tuple = ()):
        """out[i] = f(inputs[0][i], inputs[1][i], ..., *scalars) by the same-shape kernel `name` of elementwise.cu.

        The kernels do not broadcast: inputs of different shapes are a ValueError, not reads past the smaller one.
        """
        if any(tuple(a.shape) != tuple(inputs[0].shape) for a in inputs):
            raise ValueError(f"{name} takes inputs of one shape, got {', '.join(str(tuple(a.shape)) for a in inputs)}")
        inputs = [self._contiguous(a) for a in inputs]
        out = self.xp.empty_like(inputs[0])
        self._launch_elementwise(name, out.size, (*inputs, out, np.int64(out.size), *scalars))
        return out

    def write_slots(self, buffer, x, start: int):
        """x (B, n, T, hs) into slots start .. start+T-1 of buffer (B, n, S, hs): a strided copy on the device."""
        buffer[:, :, start : start + x.shape[2]] = x

    def paged_write(self, pool, x, block_tables, lengths):
        """x (B, n_kv, T, hs) into the pool (n_blocks, n_kv, bs, hs) through the block tables, the twin's slots:
        a scatter on the device, its indices found on the host."""
        tables, lengths = check_paged_write(x.shape, pool.shape, self.to_numpy(block_tables),
                                            self.to_numpy(lengths))
        blocks, rows = last_slot_places(tables, lengths, x.shape[2], pool.shape[2])  # (B, T) x2
        pool[self.xp.asarray(blocks), :, self.xp.asarray(rows)] = x.transpose(0, 2, 1, 3)

    def add(self, x, y):
        """(B, T, C) x2 -> (B, T, C).  elementwise.cu: residual_add."""
        return self._map("residual_add", x, y)

    def _rows(self, x):
        x = self._contiguous(x)
        C = x.shape[-1]
        return x, x.size // C if C else 0, C

    def layer_norm(self, x, w, b, eps: float):
        """(..., C) -> (..., C).  norms.cu: layer_norm_rows, one block per row."""
        x, rows, C = self._rows(x)
        y = self.xp.empty_like(x)
        self._kernel("norms.cu", "layer_norm_rows")((rows,), (row_threads(C),), (
            x, self._contiguous(w), self._contiguous(b), y, np.int32(rows), np.int32(C), np.float32(eps)))
        return y

    def rms_norm(self, x, w, eps: float):
        """(..., C) -> (..., C).  norms.cu: rms_norm_rows, one block per row."""
        x, rows, C = self._rows(x)
        y = self.xp.empty_like(x)
        self._kernel("norms.cu", "rms_norm_rows")((rows,), (row_threads(C),), (
            x, self._contiguous(w), y, np.int32(rows), np.int32(C), np.float32(eps)))
        return y

    def gelu(self, x):
        """(...) -> (...).  elementwise.cu: gelu."""
        return self._map("gelu", x)

    def gelu_exact(self, x):
        """(...) -> (...).  elementwise.cu: gelu_exact (erfcf)."""
        return self._map("gelu_exact", x)

    def silu_mul(self, gate, up):
        """(..., H) x2 -> (..., H).  elementwise.cu: silu_mul."""
        return self._map("silu_mul", gate, up)

    def gelu_mul(self, gate, up):
        """(..., H) x2 -> (..., H).  elementwise.cu: gelu_mul."""
        return self._map("gelu_mul", gate, up)

    def softcap(self, x, cap: float):
        """cap * tanh(x / cap). (...) -> (...).  elementwise.cu: softcap, given 1/cap rounded as the twin rounds it."""
        return self._map("softcap", x, scalars=(np.float32(cap), np.float32(1.0 / cap)))

    def _strided_rows(self, a):
        """A (B, n, L, hs) view -> (flat span, element strides of its first three axes), without copying.

        Kernels take a strided view as a pointer to its first element plus strides. Both module loaders want a
        contiguous array, so the view is handed over as the 1-D contiguous span of memory from its first to its
        last element (the same bytes, a different shape). Only a view whose hs axis is not unit-stride is copied.
        """
        if a.dtype != np.float32 or a.strides[3] != a.itemsize or min(a.strides) < 0:
            a = self._contiguous(a)
        extent = 1 + sum((n - 1) * s for n, s in zip(a.shape, a.strides)) // a.itemsize if a.size else 0
        span = self.xp.lib.stride_tricks.as_strided(a, shape=(extent,), strides=(a.itemsize,))
        return span, tuple(np.int64(s // a.itemsize) for s in a.strides[:3])

    def rope(self, x, cos, sin):
        """(B, n, T, hs), (B, T, r/2) x2 -> (B, n, T, hs): the first r dims rotate (rotate-half pairing), the other
        hs - r pass through.  elementwise.cu: rope, one work item per rotated pair or passed dim."""
        B, n, T, hs = x.shape
        half = cos.shape[-1]
        if tuple(cos.shape) != (B, T, half) or tuple(sin.shape) != (B, T, half) or 2 * half > hs:
            raise ValueError(f"rope takes cos and sin of shape (B, T, r/2) = ({B}, {T}, r/2) with r <= hs = {hs}, "
                             f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
        x, (sb, sh, st) = self._strided_rows(x)
        y = self.xp.empty((B, n, T, hs), dtype=np.float32)
        self._launch_elementwise("rope", B * n * T * (hs - half), (
            x, self._contiguous(cos), self._contiguous(sin), y, np.int32(B), np.int32(n), np.int32(T), np.int32(hs),
            np.int32(half), sb, sh, st))
        return y

    def softmax(self, x, axis=-1):
        """Softmax over `axis`. (..., S) -> (..., S).  softmax.cu: softmax_rows, one block per row."""
        moved = axis not in (-1, x.ndim - 1)
        if moved:
            x = self.xp.moveaxis(x, axis, -1)
        x, rows, cols = self._rows(x)
        y = self.xp.empty_like(x)
        self._kernel("softmax.cu", "softmax_rows")((rows,), (row_threads(cols),), (
            x, y, np.int32(rows), np.int32(cols)))
        return self.xp.moveaxis(y, -1, axis) if moved else y

    def attention(self, q, k, v, q_start: int, key_mask=None, *, scale: float | None = None,
                  softcap: float | None = None, window: int | None = None):
        """(B, nh, T, hs), (B, n_kv, S, hs) x2 -> (B, nh, T, hs), with the twin's scale, softcap and window.
        attention.cu, the kernels of the smallest head-size bucket >= hs.

        T > 1, or one query whose window holds at most decode_chunk keys: attention_prefill. One query over more:
        attention_decode_split, one block per chunk of the window's keys (the chunks before the window are not
        launched), then attention_decode_combine merges the chunks.
        """
        B, nh, T, hs = q.shape
        n_kv, S = k.shape[1], k.shape[2]
        if hs > MAX_HEAD_DIM:
            raise ValueError(f"attention.cu supports head sizes up to {MAX_HEAD_DIM}, got {hs}")
        if nh % n_kv:
            raise ValueError(f"{nh} query heads do not divide into {n_kv} key/value heads")
        if tuple(k.shape) != (B, n_kv, S, hs) or tuple(v.shape) != tuple(k.shape):
            raise ValueError(f"attention takes k and v of shape (B, n_kv, S, hs) with q's B = {B} and hs = {hs}, "
                             f"got {tuple(k.shape)} and {tuple(v.shape)}")
        if key_mask is not None and tuple(key_mask.shape) != (B, S):
            raise ValueError(f"key_mask must have shape (B, S) = {(B, S)}, got {tuple(key_mask.shape)}")
        y = self.xp.empty((B, nh, T, hs), dtype=np.float32)
        if y.size == 0:
            return y  # no query, or hs = 0: nothing to launch (a grid of 0 blocks is not allowed)
        if k.strides[2] != hs * FLOAT32_BYTES or v.strides != k.strides:
            k, v = self._contiguous(k), self._contiguous(v)  # the kernel takes key rows hs floats apart
        q, q_strides = self._strided_rows(q)
        k, kv_strides = self._strided_rows(k)
        v, _ = self._strided_rows(v)
        mask = self.xp.ones((B, S), dtype=np.uint8) if key_mask is None else self._contiguous(
            self.xp.asarray(key_mask), np.uint8)  # (B, S) one byte per key: 1 = a real key
        # Query t sees slots q_start + t - reach < j <= q_start + t. Without a window the twin's reach is S; past
        # q_start + T a reach changes nothing, so clamping there keeps any window in an int32.
        reach = max(0, min(S if window is None else window, q_start + T))
        cap = 0.0 if softcap is None else softcap  # the kernel's "no soft-cap"
        inv_cap = 0.0 if softcap is None else 1.0 / softcap  # rounded to float32 from double, as the twin does
        g = nh // n_kv
        warps, shared = attention_block(hs, g * T, self.attention_warps)
        grid_rows = -(-g * T // warps)
        D = next(d for d in HEAD_DIM_BUCKETS if hs <= d)
        shape_args = (*q_strides, *kv_strides[:2], np.int32(nh), np.int32(n_kv), np.int32(T), np.int32(S),
                      np.int32(hs), np.int32(q_start), np.int32(reach),
                      np.float32(1.0 / math.sqrt(hs) if scale is None else scale), np.float32(cap), np.float32(inv_cap))
        key_begin, key_end = max(0, q_start - reach + 1), min(S, q_start + 1)  # the keys of a single query
        if T > 1 or key_end - key_begin <= self.decode_chunk:
            self._kernel("attention.cu", f"attention_prefill_hs{D}")(
                (grid_rows, n_kv, B), (warps * WARP,), (q, k, v, mask, y, *shape_args), shared_mem=shared)
            return y
        n_chunks = -(-(key_end - key_begin) // self.decode_chunk)
        part_acc = self.xp.empty((B, n_chunks, nh, T, hs), dtype=np.float32)
        part_ml = self.xp.empty((B, n_chunks, nh, T, 2), dtype=np.float32)
        self._kernel("attention.cu", f"attention_decode_split_hs{D}")(
            (grid_rows, n_kv, B * n_chunks), (warps * WARP,),
            (q, k, v, mask, part_acc, part_ml, *shape_args, np.int32(key_begin), np.int32(self.decode_chunk),
             np.int32(n_chunks)), shared_mem=shared)
        self._kernel("attention.cu", "attention_decode_combine")(
            (nh * T, B), (_round_up(hs, WARP),),
            (part_acc, part_ml, y, np.int32(nh), np.int32(T), np.int32(hs), np.int32(n_chunks)))
        return y

    def sample(self, logits, u, temperature: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
               ) -> np.ndarray:
        """Fused temperature, top-k, softmax, top-p, min-p and inverse-CDF draw. (B, V), u (B,) -> NumPy int64 (B,).

        Row b gives the token NumpyBackend.sample gives, up to float32 rounding at a boundary (kernels/sampling.cu
        says exactly when). NaN logits are a ValueError, as in the twin: the kernel would return some token.
        sampling.cu: sample_rows.
        """
        logits = self._contiguous(self.xp.asarray(logits))  # generation may pass host logits: uploaded here
        if logits.ndim != 2:
            raise ValueError(f"sample takes logits of shape (B, V), got {logits.shape}")
        refuse_nan(self.to_numpy(logits.max(axis=-1)))  # (B,) a row's max is NaN exactly when the row holds one
        B, V = logits.shape
        u = self._contiguous(self.xp.asarray(u), np.float64).reshape(-1)
        if u.shape != (B,):
            raise ValueError(f"sample needs one uniform per row: {B} rows, {u.shape[0]} uniforms")
        ids = self.xp.empty((B,), dtype=np.int64)
        greedy = temperature == 0
        with np.errstate(over="ignore"):  # 1/T past float32 becomes inf: the kernel then takes the argmax
            inv_t = np.float32(0.0 if greedy else 1.0 / temperature)  # rounded to float32 first, as NumPy does
        self._kernel("sampling.cu", "sample_rows")((B,), (row_threads(V),), (
            logits, u, ids, np.int32(V), np.int32(greedy), inv_t, np.int32(top_k), np.float64(top_p),
            np.float32(min_p)))
        return self.to_numpy(ids)

    def paged_attention(self, q, k_pool, v_pool, block_tables, lengths, *, scale: float | None = None,
                        softcap: float | None = None, window: int | None = None):
        """(B, nh, T, hs), (n_blocks, n_kv, bs, hs) x2, int (B, max_blocks), int (B,) -> (B, nh, T, hs), the twin's
        ragged batch over block tables with its scale, softcap and window.  paged_attention.cu, the kernel of the
        smallest head-size bucket >= hs, one block per (group of query rows, k/v head, sequence).

        The tables and lengths are checked on the host first (paged_cache.check_paged_args: the kernel reads
        wherever an entry points); they are small, and a scheduler builds them on the host anyway. q is made
        contiguous: B * nh * T * hs floats, nothing next to the keys a step reads.
        """
        B, nh, T, hs = q.shape
        n_kv = k_pool.shape[1]
        if hs > MAX_HEAD_DIM:
            raise ValueError(f"paged_attention.cu supports head sizes up to {MAX_HEAD_DIM}, got {hs}")
        tables, lengths = check_paged_args(q.shape, k_pool.shape, v_pool.shape, self.to_numpy(block_tables),
                                           self.to_numpy(lengths))
        y = self.xp.empty((B, nh, T, hs), dtype=np.float32)
        if y.size == 0:
            return y  # no sequence, query or head dim: nothing to launch (a grid of 0 blocks is not allowed)
        # Without a window the twin sees every slot; the longest sequence is as far as any window can reach.
        reach = int(lengths.max()) if window is None else min(window, int(lengths.max()))
        g = nh // n_kv
        warps, shared = attention_block(hs, g * T, self.attention_warps)  # attention.cu's shared-memory layout
        D = next(d for d in HEAD_DIM_BUCKETS if hs <= d)
        self._kernel("paged_attention.cu", f"paged_attention_hs{D}")(
            (-(-g * T // warps), n_kv, B), (warps * WARP,),
            (self._contiguous(q), self._contiguous(k_pool), self._contiguous(v_pool), self.asarray(tables, np.int32),
             self.asarray(lengths, np.int32), y, np.int32(nh), np.int32(n_kv), np.int32(T), np.int32(hs),
             np.int32(k_pool.shape[2]), np.int32(tables.shape[1]), np.int32(reach),
             np.float32(1.0 / math.sqrt(hs) if scale is None else scale),
             np.float32(0.0 if softcap is None else softcap), np.float32(0.0 if softcap is None else 1.0 / softcap)),
            shared_mem=shared)
        return y
