"""The transformer: named weights and one forward pass, written once against a backend.

GPT-2 (learned positions, LayerNorm, GELU MLP) and Llama (RoPE, RMSNorm, SwiGLU MLP, grouped-query heads) differ in
three small places, each a helper below; the forward pass is shared. Every op goes through `be` (a backend object),
so the same code runs on NumPy, on the GPU with CUDA kernels, or on the CPU emulator of those kernels.

Weight layout, the one convention (weights_tools.convert owns every transpose that gets a checkpoint here):
a linear layer's weight is (in, out) and is applied as x @ w.
"""
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .kv_cache import KVCache
from .memory import check_fits
from .rope import rope_cos_sin, rope_frequencies


@dataclass
class LayerWeights:
    norm1_w: object  # (C,) before attention
    norm1_b: object | None  # (C,) LayerNorm only
    w_qkv: object  # (C, (nh + 2*n_kv) * hs): q, k and v projections side by side, one matmul
    b_qkv: object | None  # ((nh + 2*n_kv) * hs,)
    w_o: object  # (nh * hs, C)
    b_o: object | None  # (C,)
    norm2_w: object  # (C,) before the MLP
    norm2_b: object | None  # (C,)
    w_up: object  # (C, H)
    b_up: object | None  # (H,)
    w_gate: object | None  # (C, H) SwiGLU only
    w_down: object  # (H, C)
    b_down: object | None  # (C,)


@dataclass
class ModelWeights:
    tok_emb: object  # (V, C)
    pos_emb: object | None  # (max_seq_len, C) GPT-2 only
    layers: list  # n_layer x LayerWeights
    norm_f_w: object  # (C,)
    norm_f_b: object | None  # (C,)
    lm_head: object | None  # (C, V); None when tied: the output projection is then tok_emb.T (a view, no copy)

    def map(self, fn) -> "ModelWeights":
        """The same structure with fn applied to every array (None stays None): how weights move to a backend."""
        f = lambda a: None if a is None else fn(a)  # noqa: E731
        layers = [LayerWeights(**{k: f(a) for k, a in vars(layer).items()}) for layer in self.layers]
        return ModelWeights(f(self.tok_emb), f(self.pos_emb), layers, f(self.norm_f_w), f(self.norm_f_b),
                            f(self.lm_head))


def norm(be, cfg: ModelConfig, x, w, b):
    """GPT-2 normalises with LayerNorm, Llama with RMSNorm (no mean, no bias). (B, T, C) -> (B, T, C)"""
    if cfg.arch == "gpt2":
        return be.layer_norm(x, w, b, cfg.norm_eps)
    return be.rms_norm(x, w, cfg.norm_eps)


def mlp(be, cfg: ModelConfig, layer: LayerWeights, x):
    """GPT-2: down(gelu(up(x))). Llama (SwiGLU): down(silu(gate(x)) * up(x)). (B, T, C) -> (B, T, C)"""
    up = be.linear(x, layer.w_up, layer.b_up)  # (B, T, H)
    if cfg.arch == "gpt2":
        h = be.gelu(up)  # (B, T, H)
    else:
        h = be.silu_mul(be.linear(x, layer.w_gate), up)  # (B, T, H)
    return be.linear(h, layer.w_down, layer.b_down)  # (B, T, C)


def attention(be, cfg: ModelConfig, layer: LayerWeights, x, rope, cache: KVCache | None, i: int, start: int, key_mask):
    """Causal self-attention over the cache. (B, T, C) -> (B, T, C)

    The new keys/values are written into the cache at slots start .. start+T-1 and the queries attend to every slot
    up to their own. Without a cache (a stateless full pass) they attend to just this call's T positions.
    """
    B, T, _ = x.shape
    nh, n_kv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    qkv = be.linear(x, layer.w_qkv, layer.b_qkv)  # (B, T, (nh + 2*n_kv) * hs)
    qkv = qkv.reshape(B, T, nh + 2 * n_kv, hs).transpose(0, 2, 1, 3)  # (B, nh + 2*n_kv, T, hs)
    q, k, v = qkv[:, :nh], qkv[:, nh : nh + n_kv], qkv[:, nh + n_kv :]  # (B, nh, T, hs), (B, n_kv, T, hs) x2
    if rope is not None:
        q, k = be.rope(q, *rope), be.rope(k, *rope)  # (B, nh, T, hs), (B, n_kv, T, hs): positions enter here
    if cache is not None:
        k, v = cache.update(i, k, v, start)  # (B, n_kv, start+T, hs) x2
    y = be.attention(q, k, v, start, key_mask)  # (B, nh, T, hs)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)  # (B, T, nh*hs): heads side by side again
    return be.linear(y, layer.w_o, layer.b_o)  # (B, T, C)


def forward(be, cfg: ModelConfig, w: ModelWeights, inv_freq, ids, positions, cache=None, start=0, key_mask=None,
            last_only=False):
    """Token ids -> next-token logits. int (B, T) -> (B, T, V), or (B, 1, V) with last_only.

    positions (B, T): each token's position in its own sequence (equal to the cache slot except under left padding).
    cache/start: keys and values go to cache slots start .. start+T-1 (prefill: start=0; decode: T=1).
    key_mask (B, start+T) bool or None: False marks padding slots no query may attend to.
    last_only: project only the last position to the vocabulary, all that generation needs (saves a (T, C) x (C, V)
    matmul in prefill).
    """
    x = be.embedding(w.tok_emb, ids)  # (B, T, C)
    rope = None
    if cfg.arch == "gpt2":
        x = be.add(x, be.embedding(w.pos_emb, positions))  # (B, T, C) learned absolute positions
    else:
        rope = tuple(be.asarray(a) for a in rope_cos_sin(inv_freq, positions))  # cos, sin: (B, T, hs/2) each
    for i, layer in enumerate(w.layers):
        x = be.add(x, attention(be, cfg, layer, norm(be, cfg, x, layer.norm1_w, layer.norm1_b), rope, cache, i,
                                start, key_mask))  # (B, T, C)
        x = be.add(x, mlp(be, cfg, layer, norm(be, cfg, x, layer.norm2_w, layer.norm2_b)))  # (B, T, C)
    if last_only:
        x = x[:, -1:]  # (B, 1, C)
    x = norm(be, cfg, x, w.norm_f_w, w.norm_f_b)  # (B, T, C)
    lm_head = w.tok_emb.T if w.lm_head is None else w.lm_head  # (C, V)
    return be.linear(x, lm_head)  # (B, T, V)


class Model:
    """A loaded model: config, weights on a backend, and the tokenizer when the checkpoint has one."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, backend, tokenizer=None, generation_defaults=None):
        self.config = cfg
        self.backend = backend
        self.weights = weights.map(backend.weight)
        self.inv_freq = rope_frequencies(cfg) if cfg.arch == "llama" else None  # (hs/2,)
        self.tokenizer = tokenizer
        self.generation_defaults = generation_defaults or {}

    def check_ids(self, ids) -> np.ndarray:
        """Validate user token ids: int (B, T) inside the vocabulary and the context. Returns them as int64."""
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be a non-empty int array of shape (B, T), got {ids.dtype} {ids.shape}")
        bad = (ids < 0) | (ids >= self.config.vocab_size)
        if bad.any():
            raise ValueError(f"token id {int(ids[bad][0])} is outside the vocabulary (size {self.config.vocab_size})")
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"{ids.shape[1]} tokens exceed the model's context of {self.config.max_seq_len}")
        return ids.astype(np.int64)

    def check_logits_fit(self, B: int, T: int) -> None:
        """Logits (B, T, V) float32 always come back to the host: a long batch times a large vocabulary is the
        largest array a pass returns (2 x 4096 tokens x 128k vocabulary = 4 GiB), so it is checked before the pass."""
        check_fits(B * T * self.config.vocab_size * 4, f"logits of shape ({B}, {T}, {self.config.vocab_size})")

    def forward(self, ids) -> np.ndarray:
        """A stateless full pass: int (B, T) -> float32 NumPy logits (B, T, V)."""
        ids = self.check_ids(ids)
        B, T = ids.shape
        self.check_logits_fit(B, T)
        positions = np.broadcast_to(np.arange(T), (B, T))  # (B, T)
        logits = forward(self.backend, self.config, self.weights, self.inv_freq, ids, positions)
        return self.backend.to_numpy(logits)

    def step(self, ids, cache: KVCache, positions=None, key_mask=None, last_only=True) -> np.ndarray:
        """Run ids (B, T) at cache slots cache.length.. and advance the cache. -> float32 NumPy logits (B, T|1, V)."""
        B, T = ids.shape
        if cache.length == 0:  # the prefill; a decode step returns no more than it did, and stays off /proc
            self.check_logits_fit(B, 1 if last_only else T)
        start = cache.length
        if positions is None:
            positions = np.broadcast_to(np.arange(start, start + T), (B, T))  # (B, T)
        logits = forward(self.backend, self.config, self.weights, self.inv_freq, ids, positions, cache, start,
                         key_mask, last_only)
        cache.length = start + T
        return self.backend.to_numpy(logits)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        return KVCache.allocate(self.backend, self.config, batch_size, max_len)

    def generate(self, prompt, **kwargs):
        """Generate a continuation of prompt (a string or a list of token ids); see nanollm.generation.generate."""
        from .generation import generate

        return generate(self, prompt, **kwargs)
