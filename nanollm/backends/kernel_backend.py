"""The kernel backend: every op of the layer API as a launch of a hand-written CUDA kernel from `kernels/`.

What this module adds over numpy_backend.py (read that first: it is the math): the launch side of each kernel,
that is which kernel, how many blocks and threads, how much dynamic shared memory and how the arguments are packed.
It is written once for two places the same .cu files run:

  CupyBackend      xp = cupy,  modules compiled by NVRTC (cupy.RawModule), arrays in GPU memory
  EmulatorBackend  xp = numpy, modules compiled by g++ against kernels/cuda_emulator.h (kernels.emulator.EmuModule)

Both module kinds are called the same way, `kernel(grid, block, args, shared_mem=bytes)`, with arrays passed as
pointers and scalars as NumPy scalars of the kernel's C type (np.int32 for int, np.int64 for long long, np.float32
for float). `linear` is not a kernel: it is the array library's matmul (cuBLAS on the GPU).

Launch rules every kernel relies on: blockDim.x is a multiple of 32 (full warps: the shuffles use the full mask);
array arguments are C-contiguous; rope and attention also take strided views (the q/k/v slices of the fused
projection, the filled part of the KV cache) as a flat span plus strides, so those are not copied.
"""
import math

import numpy as np

from kernels import KERNELS_DIR

WARP = 32
ROW_THREADS = 256  # threads per block for the one-row-per-block kernels (softmax, norms, sampling)
ELEMENTWISE_THREADS = 256
MAX_BLOCKS = 4096  # grid-stride loops cover any size with at most this many blocks
FLOAT32_BYTES = np.dtype(np.float32).itemsize
MAX_HEAD_DIM = 128  # attention.cu keeps hs / 32 <= 4 output values per lane in registers
TILE_KEYS = 32  # attention.cu's keys per tile


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def row_threads(cols: int) -> int:
    """Threads for a one-row-per-block kernel: enough full warps to cover the row once, at most ROW_THREADS."""
    return max(WARP, min(ROW_THREADS, _round_up(cols, WARP)))


class KernelBackend:
    """The layer API of NumpyBackend, each op launching the kernel its NumPy twin's docstring names.

    xp: the array module (numpy or cupy). load_module: path of a .cu file -> module with get_function(name).
    attention_warps: query rows (warps) per attention block. decode_chunk: keys per block in split decode; a
    single-query call over more keys than this is split (flash-decoding), a shorter one runs the prefill kernel.
    """

    name = "kernels"

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

    def kernel(self, file: str, name: str):
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

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype=dtype)

    def _contiguous(self, a, dtype=np.float32):
        return self.xp.ascontiguousarray(a, dtype=dtype)

    def _launch_elementwise(self, name: str, n: int, args: tuple):
        """Launch a grid-stride kernel of elementwise.cu with enough blocks for n work items (at most MAX_BLOCKS)."""
        blocks = max(1, min(MAX_BLOCKS, -(-n // ELEMENTWISE_THREADS)))
        self.kernel("elementwise.cu", name)((blocks,), (ELEMENTWISE_THREADS,), args)

    # -- the ops -------------------------------------------------------------------------------------------------

    def embedding(self, table, ids):
        """(V, C) float32 or float16, int (B, T) -> (B, T, C) float32.  elementwise.cu: embedding_gather[_f16]."""
        ids = self._contiguous(self.xp.asarray(ids), np.int64)
        C = table.shape[1]
        out = self.xp.empty((*ids.shape, C), dtype=np.float32)
        if table.dtype == np.float16:  # the kernel reads the raw binary16 bits: no __half type needed
            table, name = self._contiguous(table, np.float16).view(np.uint16), "embedding_gather_f16"
        else:
            table, name = self._contiguous(table), "embedding_gather"
        self._launch_elementwise(name, ids.size * C, (table, ids, out, np.int64(ids.size), np.int32(C)))
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

    def _map(self, name: str, *inputs):
        """out[i] = f(inputs[0][i], inputs[1][i], ...) by the same-shape kernel `name` of elementwise.cu."""
        inputs = [self._contiguous(a) for a in inputs]
        out = self.xp.empty_like(inputs[0])
        self._launch_elementwise(name, out.size, (*inputs, out, np.int64(out.size)))
        return out

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
        self.kernel("norms.cu", "layer_norm_rows")((rows,), (row_threads(C),), (
            x, self._contiguous(w), self._contiguous(b), y, np.int32(rows), np.int32(C), np.float32(eps)))
        return y

    def rms_norm(self, x, w, eps: float):
        """(..., C) -> (..., C).  norms.cu: rms_norm_rows, one block per row."""
        x, rows, C = self._rows(x)
        y = self.xp.empty_like(x)
        self.kernel("norms.cu", "rms_norm_rows")((rows,), (row_threads(C),), (
            x, self._contiguous(w), y, np.int32(rows), np.int32(C), np.float32(eps)))
        return y

    def gelu(self, x):
        """(...) -> (...).  elementwise.cu: gelu."""
        return self._map("gelu", x)

    def silu_mul(self, gate, up):
        """(..., H) x2 -> (..., H).  elementwise.cu: silu_mul."""
        return self._map("silu_mul", gate, up)

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
        """(B, n, T, hs), (B, T, hs/2) x2 -> (B, n, T, hs), rotate-half pairing.  elementwise.cu: rope."""
        B, n, T, hs = x.shape
        x, (sb, sh, st) = self._strided_rows(x)
        y = self.xp.empty((B, n, T, hs), dtype=np.float32)
        self._launch_elementwise("rope", B * n * T * (hs // 2), (
            x, self._contiguous(cos), self._contiguous(sin), y, np.int32(B), np.int32(n), np.int32(T), np.int32(hs),
            sb, sh, st))
        return y

    def softmax(self, x, axis=-1, *, scale: float = 1.0, causal_T: int = 0, q_start: int = 0):
        """Softmax over `axis`, optionally of scale * x under a causal mask. (..., S) -> (..., S).  softmax.cu.

        The keyword-only extras are the kernel's fused options: with causal_T > 0 the rows come in groups of
        causal_T queries and row r sees columns 0 .. q_start + r % causal_T (the rest count as -inf).
        """
        moved = axis not in (-1, x.ndim - 1)
        if moved:
            x = self.xp.moveaxis(x, axis, -1)
        x, rows, cols = self._rows(x)
        y = self.xp.empty_like(x)
        self.kernel("softmax.cu", "softmax_rows")((rows,), (row_threads(cols),), (
            x, y, np.int32(rows), np.int32(cols), np.float32(scale), np.int32(causal_T), np.int32(q_start)))
        return self.xp.moveaxis(y, -1, axis) if moved else y

    def attention(self, q, k, v, q_start: int, key_mask=None):
        """(B, nh, T, hs), (B, n_kv, S, hs) x2 -> (B, nh, T, hs).  attention.cu.

        T > 1 (or few keys): attention_prefill. T = 1 over more than decode_chunk keys: attention_decode_split,
        one block per chunk of keys, then attention_decode_combine merges the chunks.
        """
        B, nh, T, hs = q.shape
        n_kv, S = k.shape[1], k.shape[2]
        if hs > MAX_HEAD_DIM:
            raise ValueError(f"attention.cu supports head sizes up to {MAX_HEAD_DIM}, got {hs}")
        if nh % n_kv:
            raise ValueError(f"{nh} query heads do not divide into {n_kv} key/value heads")
        if k.strides[2] != hs * FLOAT32_BYTES or v.strides != k.strides:
            k, v = self._contiguous(k), self._contiguous(v)  # the kernel takes key rows hs floats apart
        q, q_strides = self._strided_rows(q)
        k, kv_strides = self._strided_rows(k)
        v, _ = self._strided_rows(v)
        if key_mask is not None and tuple(key_mask.shape) != (B, S):
            raise ValueError(f"key_mask must have shape (B, S) = {(B, S)}, got {tuple(key_mask.shape)}")
        mask = self.xp.ones((B, S), dtype=np.uint8) if key_mask is None else self._contiguous(
            self.xp.asarray(key_mask), np.uint8)  # (B, S) one byte per key: 1 = a real key
        warps = min(self.attention_warps, (nh // n_kv) * T)
        grid_rows = -(-(nh // n_kv) * T // warps)
        shared = (warps * hs + TILE_KEYS * (hs + 1) + TILE_KEYS * hs) * FLOAT32_BYTES
        shape_args = (*q_strides, *kv_strides[:2], np.int32(nh), np.int32(n_kv), np.int32(T), np.int32(S),
                      np.int32(hs), np.int32(q_start), np.float32(1.0 / math.sqrt(hs)))
        y = self.xp.empty((B, nh, T, hs), dtype=np.float32)
        if T > 1 or S <= self.decode_chunk:
            self.kernel("attention.cu", "attention_prefill")(
                (grid_rows, n_kv, B), (warps * WARP,), (q, k, v, mask, y, *shape_args), shared_mem=shared)
            return y
        n_chunks = -(-S // self.decode_chunk)
        part_acc = self.xp.empty((B, n_chunks, nh, T, hs), dtype=np.float32)
        part_ml = self.xp.empty((B, n_chunks, nh, T, 2), dtype=np.float32)
        self.kernel("attention.cu", "attention_decode_split")(
            (grid_rows, n_kv, B * n_chunks), (warps * WARP,),
            (q, k, v, mask, part_acc, part_ml, *shape_args, np.int32(self.decode_chunk), np.int32(n_chunks)),
            shared_mem=shared)
        self.kernel("attention.cu", "attention_decode_combine")(
            (nh * T, B), (_round_up(hs, WARP),),
            (part_acc, part_ml, y, np.int32(nh), np.int32(T), np.int32(hs), np.int32(n_chunks)))
        return y

    def sample(self, logits, u, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
        """Fused temperature, top-k, softmax, top-p and inverse-CDF draw. (B, V), u (B,) -> NumPy int64 ids (B,).

        Row b gives the token nanollm.sampling.sample_token(logits[b], u[b], temperature, top_k, top_p) gives,
        up to float32 rounding at a boundary (kernels/sampling.cu says exactly when).  sampling.cu: sample_rows.
        """
        logits = self._contiguous(logits)
        if logits.ndim != 2:
            raise ValueError(f"sample takes logits of shape (B, V), got {logits.shape}")
        B, V = logits.shape
        u = self._contiguous(self.xp.asarray(u), np.float64).reshape(-1)
        if u.shape != (B,):
            raise ValueError(f"sample needs one uniform per row: {B} rows, {u.shape[0]} uniforms")
        ids = self.xp.empty((B,), dtype=np.int64)
        greedy = temperature == 0
        with np.errstate(over="ignore"):  # 1/T past float32 becomes inf: the kernel then takes the argmax
            inv_t = np.float32(0.0 if greedy else 1.0 / temperature)  # rounded to float32 first, as NumPy does
        self.kernel("sampling.cu", "sample_rows")((B,), (row_threads(V),), (
            logits, u, ids, np.int32(V), np.int32(greedy), inv_t, np.int32(top_k), np.float64(top_p)))
        return self.to_numpy(ids)
