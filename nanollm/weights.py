"""The weights of a model, named: what a checkpoint converter fills (weights_tools.convert) and the forward pass reads.

Layout, the one convention (weights_tools.convert owns every transpose that gets a checkpoint here): a linear layer's
weight is (in, out) and is applied as x @ w. Shapes use the README's notation: C width, H MLP width, V vocabulary,
nh query heads, n_kv key/value heads, hs head size. None marks a weight the family does not have.
"""
from dataclasses import dataclass


@dataclass
class LayerWeights:
    attn_norm_w: object | None  # (C,) before attention; None when norm_placement="post" (OLMo-2)
    attn_norm_b: object | None  # (C,) LayerNorm only
    w_qkv: object  # (C, (nh + 2*n_kv) * hs): q, k and v projections side by side, one matmul
    b_qkv: object | None  # ((nh + 2*n_kv) * hs,)
    w_o: object  # (nh * hs, C)
    b_o: object | None  # (C,)
    mlp_norm_w: object | None  # (C,) before the MLP (None for OLMo-2, and with shared_norm: GPT-J, Falcon-7B, phi-2)
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
    q_norm_b: object | None = None  # (hs,) when the q/k norm is a LayerNorm (phi with qk_layernorm)
    k_norm_b: object | None = None  # (hs,)


@dataclass
class ModelWeights:
    tok_emb: object  # (V, C)
    pos_emb: object | None  # (max_seq_len, C) GPT-2 only
    layers: list  # n_layer x LayerWeights
    norm_f_w: object  # (C,)
    norm_f_b: object | None  # (C,)
    lm_head: object | None  # (C, V); None when tied: the output projection is then tok_emb.T (a view, no copy)
    b_lm_head: object | None = None  # (V,) with lm_head_bias (GPT-J, phi-2)

    def map(self, fn) -> "ModelWeights":
        """The same structure with fn applied to every array (None stays None): how weights move to a backend."""
        f = lambda a: None if a is None else fn(a)  # noqa: E731
        layers = [LayerWeights(**{k: f(a) for k, a in vars(layer).items()}) for layer in self.layers]
        return ModelWeights(f(self.tok_emb), f(self.pos_emb), layers, f(self.norm_f_w), f(self.norm_f_b),
                            f(self.lm_head), f(self.b_lm_head))
