"""The model configuration: every number and choice the forward pass needs, in one frozen dataclass.

A config is built from a Hugging Face `config.json` by `weights_tools.convert`; nothing here reads files. Fields carry
an example value (GPT-2 124M or Llama-style) in their comment so a reader can picture the sizes.

One forward pass serves every family (nanollm/model.py); where families differ, a field below says how, with the
family that introduced the difference. The defaults are Llama's, so each family is Llama plus the fields it sets:

    GPT-2     positions="learned", norm="layer", mlp="gelu", qkv_bias, out_bias, mlp_bias
    Qwen2     qkv_bias (q, k and v only), rope theta 1e6
    Qwen3     head_dim given on its own, qk_norm="head"
    Mistral   sliding_window (every layer)
    Phi-3     sliding_window; rope.scaling LongRope (3.5, 4-mini); rope.rotary_dim < head_dim (4-mini)
    Gemma     mlp="geglu", embed_scale=sqrt(C), head_dim 256, RMSNorm (1 + w) folded into w at load
    Gemma 2   norm_placement="sandwich", attn_scale, attn_softcap, final_softcap, sliding layers every other layer
    Gemma 3   Gemma 2 without soft-capping, qk_norm="head", sliding layers with their own RoPE (rope_local)
    OLMo-2    norm_placement="post", qk_norm="full"

The classic open families, most of them older than Llama, are GPT-2's LayerNorm and biases with RoPE; most put the
attention and the MLP of a layer side by side (parallel_residual) and rotate only part of each head (rope.rotary_dim):

    GPT-NeoX  (Pythia) norm="layer", mlp="gelu", gelu="erf", biases, parallel_residual, rotary_dim hs/4
    GPT-J     norm="layer", mlp="gelu", mlp_bias, parallel_residual, shared_norm, rotary_dim 64 of 256, lm_head_bias
    Falcon    norm="layer", mlp="gelu", gelu="erf", parallel_residual (7B: shared_norm; RW: neither), multi-query
    phi-2     (phi) norm="layer", mlp="gelu", biases, parallel_residual, shared_norm, rotary_dim 0.4 hs, lm_head_bias
    StableLM-2 (stablelm) norm="layer", qkv_bias (1.6B), rotary_dim hs/4; parallel_residual and shared_norm (12B)
"""
from dataclasses import dataclass

LAYER_TYPES = ("full", "sliding")


@dataclass(frozen=True)
class Llama3Scaling:
    """Llama 3.1's frequency-dependent RoPE scaling (`rope_type: "llama3"`).

    Long wavelengths (low frequencies) are divided by `factor`, short ones kept, and the band between blended
    smoothly; see `nanollm.rope.frequencies`.
    """

    factor: float  # 8.0
    low_freq_factor: float  # 1.0
    high_freq_factor: float  # 4.0
    original_max_position_embeddings: int  # 8192


@dataclass(frozen=True)
class LinearScaling:
    """Position interpolation (`rope_type: "linear"`, Gemma 3's global layers): every frequency divided by factor."""

    factor: float  # 8.0


@dataclass(frozen=True)
class LongRopeScaling:
    """LongRoPE (`rope_type: "longrope"`, Phi-3.5 / Phi-4-mini; Ding et al. 2024): frequency i is divided by its own
    factor, from `short_factor` while the sequence fits the original context and from `long_factor` beyond it, and
    cos/sin are multiplied by `attention_factor` (sqrt(1 + ln(max / original) / ln(original)) unless the file says)."""

    short_factor: tuple[float, ...]  # (rotary_dim / 2,)
    long_factor: tuple[float, ...]  # (rotary_dim / 2,)
    original_max_position_embeddings: int  # 4096
    attention_factor: float  # 1.19


@dataclass(frozen=True)
class Rope:
    """Rotary position embedding (Su et al. 2021) as one group of layers uses it."""

    theta: float = 10000.0  # base of the frequencies (Qwen2: 1e6)
    rotary_dim: int = 0  # dims of each head that rotate (even; head_dim unless partial_rotary_factor < 1)
    scaling: Llama3Scaling | LinearScaling | LongRopeScaling | None = None


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # the family, as config.json's model_type names it: "gpt2", "llama", "qwen2", "gemma3_text", ...
    vocab_size: int  # 50257
    n_layer: int  # 12 transformer blocks
    n_head: int  # 12 query heads (nh)
    n_kv_head: int  # 12 key/value heads (n_kv); fewer than n_head is grouped-query attention, 1 is multi-query
    n_embd: int  # 768 residual width (C)
    head_dim: int  # 64 (hs); usually n_embd // n_head, but Qwen3, Gemma and others set it on its own
    n_hidden: int  # 3072 MLP inner width
    max_seq_len: int  # 1024 positions the model was trained for
    norm_eps: float  # 1e-5
    tie_embeddings: bool  # True: the output projection is the token embedding (GPT-2, small Llamas, Gemma)
    positions: str = "rope"  # "learned" (GPT-2: a table of position vectors added to the input) or "rope"
    norm: str = "rms"  # "layer" (GPT-2: LayerNorm with bias) or "rms" (RMSNorm, every later family)
    norm_placement: str = "pre"  # "pre": norm before each branch; "sandwich" (Gemma 2/3): before and after;
    #                              "post" (OLMo-2): after only, on the branch's output before the residual add
    mlp: str = "swiglu"  # "gelu" (GPT-2: down(gelu(up x))), "swiglu" (silu(gate x) * up x), "geglu" (Gemma)
    gelu: str = "tanh"  # the GELU of mlp="gelu": "tanh", the approximation (GPT-2's gelu_new, GPT-J, phi-2), or "erf",
    #                     exact x * Phi(x) (Pythia, Falcon: "gelu" in config.json). GeGLU is tanh only (Gemma)
    parallel_residual: bool = False  # x + attn(n1(x)) + mlp(n2(x)): both branches read the layer's input (GPT-J,
    #                                  Pythia, Falcon, phi-2, StableLM-2-12B). False: x + attn(n1(x)), then the MLP
    shared_norm: bool = False  # parallel_residual with one norm, n2 = n1: the MLP reads the attention's normalised
    #                            input (GPT-J, Falcon-7B, phi-2); False: a norm of its own (Pythia, Falcon-40B)
    qkv_bias: bool = False  # biases on the q, k and v projections (GPT-2, Qwen2)
    out_bias: bool = False  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = False  # biases on the MLP projections (GPT-2)
    qk_norm: str | None = None  # the model's norm of q and k before RoPE: "head" (Qwen3, Gemma 3, phi with
    #                             qk_layernorm), "full" (OLMo-2)
    lm_head_bias: bool = False  # a bias on the output projection (GPT-J, phi-2)
    embed_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(n_embd)). transformers rounds it
    #                           to the dtype it runs in: float32 here, as in its float32 runs; a bfloat16 run of
    #                           Gemma 3-1B multiplies by 34.0 instead of 33.94 (sqrt(1152)), as the model was trained
    attn_scale: float | None = None  # attention score scale; None is 1/sqrt(head_dim) (Gemma 2/3: 256 ** -0.5)
    attn_softcap: float | None = None  # scores become cap * tanh(score / cap) (Gemma 2: 50)
    final_softcap: float | None = None  # the same on the output logits (Gemma 2: 30)
    rope: Rope | None = None  # positions="rope": the RoPE of full-attention layers (every layer, for most)
    rope_local: Rope | None = None  # Gemma 3: sliding layers' own RoPE (base 10000); None: they use `rope`
    sliding_window: int | None = None  # keys a query of a sliding layer sees, itself included (Mistral v0.1: 4096)
    layer_types: tuple[str, ...] = ()  # per layer "full" or "sliding"; () means every layer "full"
    bos_token_id: int | None = None  # 50256; ids outside the vocabulary are dropped at load (weights_tools.convert)
    eos_token_ids: tuple[int, ...] = ()  # (50256,)

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "head_dim", "n_hidden", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if not self.norm_eps > 0:  # written so that NaN fails too
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        for name, choices in (("positions", ("learned", "rope")), ("norm", ("layer", "rms")),
                              ("norm_placement", ("pre", "sandwich", "post")), ("mlp", ("gelu", "swiglu", "geglu")),
                              ("gelu", ("tanh", "erf")), ("qk_norm", (None, "head", "full"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.mlp == "geglu" and self.gelu != "tanh":
            raise ValueError("GeGLU runs GELU's tanh form only (Gemma's gelu_pytorch_tanh), got gelu='erf'")
        if self.shared_norm and not self.parallel_residual:
            raise ValueError("shared_norm (one norm read by attention and MLP) needs parallel_residual")
        if self.parallel_residual and self.norm_placement != "pre":
            raise ValueError(f"parallel_residual normalises each branch's input (norm_placement='pre'), got "
                             f"norm_placement={self.norm_placement!r}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if (self.positions == "rope") != (self.rope is not None):
            raise ValueError("a config has a rope exactly when positions='rope'")
        for rope in (self.rope, self.rope_local):
            if rope is not None and not (0 < rope.rotary_dim <= self.head_dim and rope.rotary_dim % 2 == 0
                                         and rope.theta > 0):
                raise ValueError(f"RoPE rotates an even number of dims in 2 .. head_dim={self.head_dim} with a "
                                 f"base > 0, got rotary_dim={rope.rotary_dim}, theta={rope.theta!r}")
        if self.layer_types and (len(self.layer_types) != self.n_layer
                                 or not set(self.layer_types) <= set(LAYER_TYPES)):
            raise ValueError(f"layer_types must name {LAYER_TYPES} for each of the {self.n_layer} layers, got "
                             f"{self.layer_types!r}")
        if "sliding" in self.layer_types and not (self.sliding_window or 0) > 0:
            raise ValueError(f"sliding layers need a sliding_window > 0, got {self.sliding_window!r}")
        for name in ("attn_scale", "attn_softcap", "final_softcap"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (or None), got {getattr(self, name)!r}")

    @property
    def qkv_dim(self) -> int:
        """Width of the fused q|k|v projection: nh*hs + 2*n_kv*hs."""
        return (self.n_head + 2 * self.n_kv_head) * self.head_dim

    def layer_type(self, i: int) -> str:
        """"full" or "sliding": what layer i's queries see (all keys before them, or the last sliding_window)."""
        return self.layer_types[i] if self.layer_types else "full"

    def layer_rope(self, i: int) -> Rope | None:
        """The RoPE layer i applies (Gemma 3's sliding layers have their own)."""
        return self.rope_local if self.layer_type(i) == "sliding" and self.rope_local is not None else self.rope
