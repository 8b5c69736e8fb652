"""The transformer: one forward pass, written once for every family and every backend.

GPT-2 (learned positions, LayerNorm, GELU MLP), Llama (RoPE, RMSNorm, SwiGLU MLP, grouped-query heads), the families
after them (Qwen, Mistral, Phi-3, Gemma, OLMo-2) and the classic ones beside them (Pythia, GPT-J, Falcon, phi-2,
StableLM-2: attention and MLP side by side) differ in a few named places: each is a field of ModelConfig
(nanollm/config.py lists them by family) and, where it computes something, one small helper below.
The forward pass itself is shared. Every op goes through `be` (a backend object), so the same code runs on NumPy,
on the CPU with compiled kernels for its heaviest ops, on the GPU with CUDA kernels, or on the CPU emulator of those.

The weights are named in weights.py (a linear weight is (in, out), applied as x @ w). Everything one pass shares
(backend, config, cache, RoPE tables) travels in one small `Pass`, so each helper reads like its math.

Where the keys and values live is the cache's business, not the forward pass's: attention hands each layer's new
keys to `p.cache.write` and its queries to `p.cache.attend`. Three things answer those two calls: a KVCache's
CacheStep (one row of slots per sequence; kv_cache.py), a PagedKVCache's PagedStep (blocks of a shared pool,
found through block tables: a ragged batch, each sequence at its own length; paged_cache.py) and NoCache (a
stateless pass). The forward pass below is the same for all three.
"""
from dataclasses import dataclass

from .config import ModelConfig
from .kv_cache import NoCache
from .rope import rope_cos_sin
from .weights import LayerWeights, ModelWeights


@dataclass
class Pass:
    """What every layer of one forward pass shares. Only the cache is written (each layer's keys and values)."""

    be: object  # the backend: every op goes through it
    cfg: ModelConfig
    cache: object  # where this pass's keys go and are read from: CacheStep, PagedStep or NoCache (write, attend)
    ropes: dict  # Rope -> (cos, sin), each (B, T, r/2): this pass's positions, per RoPE the layers use


def norm(p: Pass, x, w, b=None):
    """GPT-2 normalises with LayerNorm, every later family with RMSNorm (no mean, no bias). (..., C) -> (..., C)

    Gemma's RMSNorm multiplies by (1 + w) rather than w: weights_tools.convert adds the 1 to w at load, so the
    same op serves it.
    """
    if p.cfg.norm == "layer":
        return p.be.layer_norm(x, w, b, p.cfg.norm_eps)
    return p.be.rms_norm(x, w, p.cfg.norm_eps)


def branch_input(p: Pass, x, w, b):
    """What a residual branch reads: the normalised stream, except for OLMo-2, which normalises outputs instead."""
    return x if p.cfg.norm_placement == "post" else norm(p, x, w, b)  # (B, T, C)


def branch_output(p: Pass, h, w):
    """What a residual branch adds back: Gemma 2/3 ("sandwich") and OLMo-2 ("post") normalise it first."""
    return h if p.cfg.norm_placement == "pre" else norm(p, h, w)  # (B, T, C)


def mlp(p: Pass, layer: LayerWeights, x):
    """GPT-2: down(gelu(up(x))). Gated (Llama's SwiGLU, Gemma's GeGLU): down(act(gate(x)) * up(x)).
    (B, T, C) -> (B, T, C)

    GELU comes in two forms: GPT-2's tanh approximation and the exact x * Phi(x) with the error function (Pythia and
    Falcon, whose config.json says "gelu"). They differ by up to 4.7e-4 (at |x| = 2.7), enough to change a greedy
    token.
    """
    be = p.be
    up = be.linear(x, layer.w_up, layer.b_up)  # (B, T, H)
    if p.cfg.mlp == "gelu":
        h = be.gelu(up) if p.cfg.gelu == "tanh" else be.gelu_exact(up)  # (B, T, H)
    else:
        gate = be.linear(x, layer.w_gate)  # (B, T, H)
        h = be.silu_mul(gate, up) if p.cfg.mlp == "swiglu" else be.gelu_mul(gate, up)  # (B, T, H)
    return be.linear(h, layer.w_down, layer.b_down)  # (B, T, C)


def qk_norm(p: Pass, x, w, b):
    """The model's norm of the queries or keys, before RoPE. (B, n, T, hs) -> (B, n, T, hs)

    Qwen3 and Gemma 3 normalise each head on its own with RMSNorm ((hs,) weight), phi with LayerNorm (and a bias);
    OLMo-2 normalises the whole projection, all heads together ((n * hs,) weight), so the heads are put side by side
    for it and split again.
    """
    if p.cfg.qk_norm == "head":
        return norm(p, x, w, b)  # (B, n, T, hs)
    B, n, T, hs = x.shape
    flat = x.transpose(0, 2, 1, 3).reshape(B, T, n * hs)  # (B, T, n*hs) as projected
    return norm(p, flat, w, b).reshape(B, T, n, hs).transpose(0, 2, 1, 3)  # (B, n, T, hs)


def attention(p: Pass, i: int, layer: LayerWeights, x):
    """Causal self-attention of layer i over the cache. (B, T, C) -> (B, T, C)

    The new keys/values are written into the cache, in the slots it gave this pass's positions, and each query
    attends to every slot of its sequence up to its own (a sliding layer: the last sliding_window of them). Without
    a cache (a stateless full pass) they attend to just this pass's T positions.
    """
    be, cfg = p.be, p.cfg
    B, T, _ = x.shape
    nh, n_kv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    qkv = be.linear(x, layer.w_qkv, layer.b_qkv)  # (B, T, (nh + 2*n_kv) * hs)
    qkv = qkv.reshape(B, T, nh + 2 * n_kv, hs).transpose(0, 2, 1, 3)  # (B, nh + 2*n_kv, T, hs)
    q, k, v = qkv[:, :nh], qkv[:, nh : nh + n_kv], qkv[:, nh + n_kv :]  # (B, nh, T, hs), (B, n_kv, T, hs) x2
    if cfg.qk_norm is not None:
        q, k = qk_norm(p, q, layer.q_norm_w, layer.q_norm_b), qk_norm(p, k, layer.k_norm_w, layer.k_norm_b)
    rope = p.ropes.get(cfg.layer_rope(i))
    if rope is not None:
        q, k = be.rope(q, *rope), be.rope(k, *rope)  # (B, nh, T, hs), (B, n_kv, T, hs): positions enter here
    p.cache.write(be, i, k, v)  # (B, n_kv, T, hs) x2 into this pass's slots, wherever the cache keeps them
    window = cfg.sliding_window if cfg.layer_type(i) == "sliding" else None
    y = p.cache.attend(be, i, q, scale=cfg.attn_scale, softcap=cfg.attn_softcap, window=window)  # (B, nh, T, hs)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)  # (B, T, nh*hs): heads side by side again
    return be.linear(y, layer.w_o, layer.b_o)  # (B, T, C)


def block(p: Pass, i: int, layer: LayerWeights, x):
    """Layer i: attention and MLP, each added to the residual stream x. (B, T, C) -> (B, T, C)

    In sequence (GPT-2, Llama and most since): the MLP reads the stream after attention has added to it. Side by side
    (parallel_residual: GPT-J, Pythia, Falcon, phi-2; Wang & Komatsuzaki 2021, GPT-J's code): both read the layer's
    input, x + attn(n1(x)) + mlp(n2(x)), so the two can run at once; with one norm per layer (shared_norm: GPT-J,
    Falcon-7B, phi-2) the MLP reads the attention's normalised input itself.
    """
    a = branch_input(p, x, layer.attn_norm_w, layer.attn_norm_b)  # (B, T, C)
    h = branch_output(p, attention(p, i, layer, a), layer.attn_post_norm_w)  # (B, T, C)
    if p.cfg.parallel_residual:  # norm_placement is "pre" (ModelConfig checks): no output norms
        m = a if p.cfg.shared_norm else norm(p, x, layer.mlp_norm_w, layer.mlp_norm_b)  # (B, T, C)
        return p.be.add(p.be.add(x, h), mlp(p, layer, m))  # (B, T, C)
    x = p.be.add(x, h)  # (B, T, C)
    h = mlp(p, layer, branch_input(p, x, layer.mlp_norm_w, layer.mlp_norm_b))  # (B, T, C)
    return p.be.add(x, branch_output(p, h, layer.mlp_post_norm_w))  # (B, T, C)


def rope_tables(be, cfg: ModelConfig, positions) -> dict:
    """cos and sin for each RoPE the layers use (Gemma 3's sliding layers have their own), uploaded once a pass."""
    ropes = {cfg.layer_rope(i) for i in range(cfg.n_layer)} - {None}
    return {rope: tuple(be.asarray(a) for a in rope_cos_sin(rope, positions)) for rope in ropes}


def embed(be, cfg: ModelConfig, w: ModelWeights, ids, positions):
    """Token ids -> the residual stream's first value: each token's embedding row (GPT-2: plus its position's).
    int (B, T) -> (B, T, C)"""
    x = be.embedding(w.tok_emb, ids, cfg.embed_scale)  # (B, T, C)
    if cfg.positions == "learned":
        x = be.add(x, be.embedding(w.pos_emb, positions))  # (B, T, C) learned absolute positions
    return x


def transform(p: Pass, w: ModelWeights, x, last_only=False):
    """The residual stream through every layer, then to next-token logits. (B, T, C) -> (B, T, V), or (B, 1, V)
    with last_only. Between two decode steps of a cache only x, the RoPE tables and the slot change: the part of a
    pass the cpu backend records once and replays (nanollm/replayed_step.py)."""
    for i, layer in enumerate(w.layers):
        x = block(p, i, layer, x)  # (B, T, C)
    if last_only:
        x = x[:, -1:]  # (B, 1, C)
    x = norm(p, x, w.norm_f_w, w.norm_f_b)  # (B, T, C)
    lm_head = w.tok_emb.T if w.lm_head is None else w.lm_head  # (C, V)
    logits = p.be.linear(x, lm_head, w.b_lm_head)  # (B, T, V); a bias only in GPT-J and phi-2
    return logits if p.cfg.final_softcap is None else p.be.softcap(logits, p.cfg.final_softcap)  # Gemma 2


def forward(be, cfg: ModelConfig, w: ModelWeights, ids, positions, cache=None, last_only=False):
    """Token ids -> next-token logits. int (B, T) -> (B, T, V), or (B, 1, V) with last_only.

    positions (B, T): each token's position in its own sequence (equal to its cache slot except under left padding).
    cache: the slots this pass's keys and values go to, and the masks its queries read them with:
    kv_cache.CacheStep (slots start .. start+T-1 of a KVCache, with the key mask of any padding) or
    paged_cache.PagedStep (each sequence's last T slots in a block pool); None: a stateless full pass.
    last_only: project only the last position to the vocabulary, all that generation needs (saves a (T, C) x (C, V)
    matmul in prefill).
    """
    x = embed(be, cfg, w, ids, positions)  # (B, T, C)
    p = Pass(be, cfg, NoCache() if cache is None else cache, rope_tables(be, cfg, positions))
    return transform(p, w, x, last_only)  # (B, T|1, V)
