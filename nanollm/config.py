"""The model configuration: every number the forward pass needs, in one frozen dataclass.

A config is built from a Hugging Face `config.json` by `weights_tools.convert`; nothing here reads files. Fields carry
an example value (GPT-2 124M or Llama-style) in their comment so a reader can picture the sizes.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3's frequency-dependent RoPE scaling (`rope_type: "llama3"` in config.json).

    Long wavelengths (low frequencies) are divided by `factor`, short ones kept, and the band between blended
    smoothly; see `nanollm.rope.rope_frequencies`.
    """

    factor: float  # 8.0
    low_freq_factor: float  # 1.0
    high_freq_factor: float  # 4.0
    original_max_position_embeddings: int  # 8192


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # "gpt2" or "llama": which forward pass in nanollm.model
    vocab_size: int  # 50257
    n_layer: int  # 12 transformer blocks
    n_head: int  # 12 query heads (nh)
    n_kv_head: int  # 12 key/value heads (n_kv); fewer than n_head is grouped-query attention, 1 is multi-query
    n_embd: int  # 768 residual width (C)
    head_dim: int  # 64 (hs); usually n_embd // n_head, but Llama configs may set it independently
    n_hidden: int  # 3072 MLP inner width
    max_seq_len: int  # 1024 positions the model was trained for
    norm_eps: float  # 1e-5
    tie_embeddings: bool  # True: the output projection is the token embedding (GPT-2, small Llamas)
    attn_bias: bool = False  # biases on q/k/v/o projections (GPT-2: True)
    mlp_bias: bool = False  # biases on the MLP projections (GPT-2: True)
    rope_theta: float = 10000.0  # Llama only: base of the RoPE frequencies
    rope_scaling: RopeScaling | None = None  # Llama 3.1+ only
    bos_token_id: int | None = None  # 50256; ids outside the vocabulary are dropped at load (weights_tools.convert)
    eos_token_ids: tuple[int, ...] = ()  # (50256,)

    def __post_init__(self):
        if self.arch not in ("gpt2", "llama"):
            raise ValueError(f"unknown architecture {self.arch!r}: nanollm runs 'gpt2' and 'llama'")
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "head_dim", "n_hidden", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        for name in ("norm_eps", "rope_theta"):  # written so that NaN fails too
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.arch == "gpt2" and self.n_head * self.head_dim != self.n_embd:
            raise ValueError(f"GPT-2 needs n_embd = n_head * head_dim, got {self.n_embd} != {self.n_head} * "
                             f"{self.head_dim}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.arch == "llama" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")

    @property
    def qkv_dim(self) -> int:
        """Width of the fused q|k|v projection: nh*hs + 2*n_kv*hs."""
        return (self.n_head + 2 * self.n_kv_head) * self.head_dim
