"""The transformer: named weights and one forward pass, written once for every family and every backend.

GPT-2 (learned positions, LayerNorm, GELU MLP), Llama (RoPE, RMSNorm, SwiGLU MLP, grouped-query heads) and the
families after them (Qwen, Mistral, Phi-3, Gemma, OLMo-2) differ in a few named places: each is a field of
ModelConfig (nanollm/config.py lists them by family) and, where it computes something, one small helper below.
The forward pass itself is shared. Every op goes through `be` (a backend object), so the same code runs on NumPy,
on the GPU with CUDA kernels, or on the CPU emulator of those kernels.

Weight layout, the one convention (weights_tools.convert owns every transpose that gets a checkpoint here):
a linear layer's weight is (in, out) and is applied as x @ w.
"""
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .kv_cache import KVCache
from .memory import check_fits
from .rope import long_factors_begin, rope_cos_sin


@dataclass
class LayerWeights:
    attn_norm_w: object | None  # (C,) before attention; None when norm_placement="post" (OLMo-2)
    attn_norm_b: object | None  # (C,) LayerNorm only
    w_qkv: object  # (C, (nh + 2*n_kv) * hs): q, k and v projections side by side, one matmul
    b_qkv: object | None  # ((nh + 2*n_kv) * hs,)
    w_o: object  # (nh * hs, C)
    b_o: object | None  # (C,)
    mlp_norm_w: object | None  # (C,) before the MLP (None for OLMo-2)
    mlp_norm_b: object | None  # (C,)
    w_up: object  # (C, H)
    b_up: object | None  # (H,)
    w_gate: object | None  # (C, H) gated MLPs (SwiGLU, GeGLU) only
    w_down: object  # (H, C)
    b_down: object | None  # (C,)
    attn_post_norm_w: object | None = None  # (C,) after attention, before the residual add (Gemma 2/3, OLMo-2)
    mlp_post_norm_w: object | None = None  # (C,) after the MLP, before the residual add (Gemma 2/3, OLMo-2)
    q_norm_w: object | None = None  # (hs,) with qk_norm="head" (Qwen3, Gemma 3); (nh * hs,) with "full" (OLMo-2)
    k_norm_w: object | None = None  # (hs,) or (n_kv * hs,)


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


def norm(be, cfg: ModelConfig, x, w, b=None):
    """GPT-2 normalises with LayerNorm, every later family with RMSNorm (no mean, no bias). (..., C) -> (..., C)

    Gemma's RMSNorm multiplies by (1 + w) rather than w: weights_tools.convert adds the 1 to w at load, so the
    same op serves it.
    """
    if cfg.norm == "layer":
        return be.layer_norm(x, w, b, cfg.norm_eps)
    return be.rms_norm(x, w, cfg.norm_eps)


def branch_input(be, cfg: ModelConfig, x, w, b):
    """What a residual branch reads: the normalised stream, except for OLMo-2, which normalises outputs instead."""
    return x if cfg.norm_placement == "post" else norm(be, cfg, x, w, b)  # (B, T, C)


def branch_output(be, cfg: ModelConfig, h, w):
    """What a residual branch adds back: Gemma 2/3 ("sandwich") and OLMo-2 ("post") normalise it first."""
    return h if cfg.norm_placement == "pre" else norm(be, cfg, h, w)  # (B, T, C)


def mlp(be, cfg: ModelConfig, layer: LayerWeights, x):
    """GPT-2: down(gelu(up(x))). Gated (Llama's SwiGLU, Gemma's GeGLU): down(act(gate(x)) * up(x)).
    (B, T, C) -> (B, T, C)"""
    up = be.linear(x, layer.w_up, layer.b_up)  # (B, T, H)
    if cfg.mlp == "gelu":
        h = be.gelu(up)  # (B, T, H)
    else:
        gate = be.linear(x, layer.w_gate)  # (B, T, H)
        h = be.silu_mul(gate, up) if cfg.mlp == "swiglu" else be.gelu_mul(gate, up)  # (B, T, H)
    return be.linear(h, layer.w_down, layer.b_down)  # (B, T, C)


def qk_norm(be, cfg: ModelConfig, x, w):
    """RMSNorm of the queries or keys, before RoPE. (B, n, T, hs) -> (B, n, T, hs)

    Qwen3 and Gemma 3 normalise each head on its own ((hs,) weight); OLMo-2 normalises the whole projection, all
    heads together ((n * hs,) weight), so the heads are put side by side for it and split again.
    """
    if cfg.qk_norm == "head":
        return be.rms_norm(x, w, cfg.norm_eps)  # (B, n, T, hs)
    B, n, T, hs = x.shape
    flat = x.transpose(0, 2, 1, 3).reshape(B, T, n * hs)  # (B, T, n*hs) as projected
    return be.rms_norm(flat, w, cfg.norm_eps).reshape(B, T, n, hs).transpose(0, 2, 1, 3)  # (B, n, T, hs)


def attention(be, cfg: ModelConfig, layer: LayerWeights, x, rope, cache: KVCache | None, i: int, start: int, key_mask):
    """Causal self-attention over the cache. (B, T, C) -> (B, T, C)

    The new keys/values are written into the cache at slots start .. start+T-1 and the queries attend to every slot
    up to their own (a sliding layer: the last sliding_window of them). Without a cache (a stateless full pass) they
    attend to just this call's T positions.
    """
    B, T, _ = x.shape
    nh, n_kv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    qkv = be.linear(x, layer.w_qkv, layer.b_qkv)  # (B, T, (nh + 2*n_kv) * hs)
    qkv = qkv.reshape(B, T, nh + 2 * n_kv, hs).transpose(0, 2, 1, 3)  # (B, nh + 2*n_kv, T, hs)
    q, k, v = qkv[:, :nh], qkv[:, nh : nh + n_kv], qkv[:, nh + n_kv :]  # (B, nh, T, hs), (B, n_kv, T, hs) x2
    if cfg.qk_norm is not None:
        q, k = qk_norm(be, cfg, q, layer.q_norm_w), qk_norm(be, cfg, k, layer.k_norm_w)
    if rope is not None:
        q, k = be.rope(q, *rope), be.rope(k, *rope)  # (B, nh, T, hs), (B, n_kv, T, hs): positions enter here
    if cache is not None:
        k, v = cache.update(i, k, v, start)  # (B, n_kv, start+T, hs) x2
    window = cfg.sliding_window if cfg.layer_type(i) == "sliding" else None
    y = be.attention(q, k, v, start, key_mask, scale=cfg.attn_scale, softcap=cfg.attn_softcap,
                     window=window)  # (B, nh, T, hs)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)  # (B, T, nh*hs): heads side by side again
    return be.linear(y, layer.w_o, layer.b_o)  # (B, T, C)


def forward(be, cfg: ModelConfig, w: ModelWeights, ids, positions, cache=None, start=0, key_mask=None,
            last_only=False):
    """Token ids -> next-token logits. int (B, T) -> (B, T, V), or (B, 1, V) with last_only.

    positions (B, T): each token's position in its own sequence (equal to the cache slot except under left padding).
    cache/start: keys and values go to cache slots start .. start+T-1 (prefill: start=0; decode: T=1).
    key_mask (B, start+T) bool or None: False marks padding slots no query may attend to.
    last_only: project only the last position to the vocabulary, all that generation needs (saves a (T, C) x (C, V)
    matmul in prefill).
    """
    x = be.embedding(w.tok_emb, ids, cfg.embed_scale)  # (B, T, C)
    if cfg.positions == "learned":
        x = be.add(x, be.embedding(w.pos_emb, positions))  # (B, T, C) learned absolute positions
    ropes = {rope: tuple(be.asarray(a) for a in rope_cos_sin(rope, positions))  # cos, sin: (B, T, r/2) each
             for rope in {cfg.layer_rope(i) for i in range(cfg.n_layer)} if rope is not None}
    for i, layer in enumerate(w.layers):
        rope = ropes.get(cfg.layer_rope(i))
        h = attention(be, cfg, layer, branch_input(be, cfg, x, layer.attn_norm_w, layer.attn_norm_b), rope, cache,
                      i, start, key_mask)  # (B, T, C)
        x = be.add(x, branch_output(be, cfg, h, layer.attn_post_norm_w))  # (B, T, C)
        h = mlp(be, cfg, layer, branch_input(be, cfg, x, layer.mlp_norm_w, layer.mlp_norm_b))  # (B, T, C)
        x = be.add(x, branch_output(be, cfg, h, layer.mlp_post_norm_w))  # (B, T, C)
    if last_only:
        x = x[:, -1:]  # (B, 1, C)
    x = norm(be, cfg, x, w.norm_f_w, w.norm_f_b)  # (B, T, C)
    lm_head = w.tok_emb.T if w.lm_head is None else w.lm_head  # (C, V)
    logits = be.linear(x, lm_head)  # (B, T, V)
    return logits if cfg.final_softcap is None else be.softcap(logits, cfg.final_softcap)  # Gemma 2


class Model:
    """A loaded model: config, weights on a backend, and the tokenizer when the checkpoint has one."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, backend, tokenizer=None, generation_defaults=None):
        limit = getattr(backend, "max_head_dim", None)  # the CUDA kernels hold a head in registers: 256 at most
        if limit is not None and cfg.head_dim > limit:
            raise ValueError(f"head_dim={cfg.head_dim} is more than the {backend.name} backend's attention kernel "
                             f"holds ({limit}); the numpy backend runs any head size")
        self.config = cfg
        self.backend = backend
        self.weights = weights.map(backend.weight)
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
        logits = forward(self.backend, self.config, self.weights, ids, positions)
        return self.backend.to_numpy(logits)

    def step(self, ids, cache: KVCache, positions=None, key_mask=None, last_only=True) -> np.ndarray:
        """Run ids (B, T) at cache slots cache.length.. and advance the cache. -> float32 NumPy logits (B, T|1, V).

        key_mask, when given, covers every slot up to the new ones: (B, cache.length + T).
        """
        B, T = ids.shape
        start = cache.length
        if positions is None:
            positions = np.broadcast_to(np.arange(start, start + T), (B, T))  # (B, T)
        if start > 0 and any(long_factors_begin(rope, int(cache.positions[:, :start].max()) + 1,
                                                int(positions.max()) + 1) for rope in (self.config.rope,
                                                                                       self.config.rope_local)):
            # LongRoPE (Phi-3.5, Phi-4-mini): the sequence just passed the original context, so every key cached
            # with the short factors is recomputed with the long ones, as transformers' Phi-3 does: once.
            ids = np.concatenate([cache.ids[:, :start], ids], axis=1)  # (B, start+T)
            positions = np.concatenate([cache.positions[:, :start], positions], axis=1)  # (B, start+T)
            start = 0
        if start == 0:  # the prefill; a decode step returns no more than it did, and stays off /proc
            self.check_logits_fit(B, 1 if last_only else ids.shape[1])
        cache.record(ids, positions, start)
        logits = forward(self.backend, self.config, self.weights, ids, positions, cache, start, key_mask, last_only)
        cache.length = start + ids.shape[1]
        return self.backend.to_numpy(logits)[:, -T:]  # (B, T|1, V): this call's positions only

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        return KVCache.allocate(self.backend, self.config, batch_size, max_len)

    def generate(self, prompt, **kwargs):
        """Generate a continuation of prompt (a string or a list of token ids); see nanollm.generation.generate."""
        from .generation import generate

        return generate(self, prompt, **kwargs)
