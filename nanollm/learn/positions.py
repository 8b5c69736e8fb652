"""Lesson 2: ids become vectors, and each vector learns where it stands (learned, sinusoidal and rotary positions)."""
import numpy as np

from ..backends.numpy_backend import NumpyBackend
from ..config import Rope
from ..rope import frequencies, rope_cos_sin
from .lesson import demo_model, heading, max_difference, numbers, piece, say

PROMPT = "The for statement"


def sinusoidal_table(n_positions: int, d: int, base: float = 10000.0) -> np.ndarray:
    """The fixed position table of "Attention is all you need" (Vaswani et al. 2017, section 3.5). -> (n, d)

    PE[pos, 2i] = sin(pos / base^(2i/d)), PE[pos, 2i+1] = cos(pos / base^(2i/d)): each pair of dimensions turns at
    its own speed, from one radian per position (i = 0) to one turn in 2 pi * base positions.
    """
    inv_freq = 1.0 / base ** (np.arange(0, d, 2) / d)  # (d/2,)
    angles = np.arange(n_positions)[:, None] * inv_freq  # (n, d/2)
    table = np.empty((n_positions, d))
    table[:, 0::2], table[:, 1::2] = np.sin(angles), np.cos(angles)
    return table


def cosine(a, b) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def run() -> None:
    model = demo_model()
    cfg, w, tok, be = model.config, model.weights, model.tokenizer, model.backend
    ids = np.array([tok.encode(PROMPT)])  # (1, T)
    heading(f"1. Token embeddings: row id of tok_emb {w.tok_emb.shape} (V, C), one vector per token")
    x = be.embedding(w.tok_emb, ids)  # (1, T, C)
    for t, i in enumerate(ids[0]):
        say(f"  {i:5d} {piece(tok, i):12s} -> {numbers(x[0, t, :4])} ... ({cfg.n_embd} numbers)")
    say(f"x: {x.shape} (B, T, C). The same table, transposed, turns the last vector back into {cfg.vocab_size} "
        f"logits (tied weights: tie_embeddings={cfg.tie_embeddings}).")

    heading(f"2. GPT-2 learns a position table too: pos_emb {w.pos_emb.shape} (max_seq_len, C), added to x")
    p = w.pos_emb
    say("cosine similarity of position 10's vector with positions 11, 12, 20, 100: "
        + " ".join(f"{cosine(p[10], p[j]):.3f}" for j in (11, 12, 20, 100)))
    say(f"x + positions: {be.add(x, be.embedding(p, np.arange(ids.shape[1])[None])).shape}, as transformer.forward "
        f"does; a model trained on {cfg.max_seq_len} positions has no vector for position {cfg.max_seq_len}.")

    heading("3. The sinusoidal table of \"Attention is all you need\" (2017), computed by hand: nothing learned")
    d = cfg.n_embd
    pe = sinusoidal_table(cfg.max_seq_len, d)  # (256, C)
    for pos in range(4):
        say(f"  PE[{pos}, :6] = {numbers(pe[pos, :6])}")
    dots = [pe[q] @ pe[q + 5] for q in (0, 10, 100)]
    say(f"PE[p] . PE[p+5] for p = 0, 10, 100: {numbers(dots)}: the same, so an offset is visible to a dot product.")
    say("The original Transformer added this table; GPT (2018) and GPT-2 learn theirs instead (section 2).")

    heading("4. RoPE (Llama and after): no table added; q and k are rotated by pos * inv_freq (rope.py)")
    rope = Rope(theta=10000.0, rotary_dim=d)
    inv_freq = frequencies(rope, seq_len=cfg.max_seq_len)  # (d/2,)
    say(f"rope.frequencies(theta=10000, r={d})[:4] = {numbers(inv_freq[:4])}; the sinusoid's 1/10000^(2i/d): "
        f"max difference {max_difference(inv_freq, 1.0 / 10000.0 ** (np.arange(0, d, 2) / d)):.1e}")
    cos, _ = rope_cos_sin(rope, np.array([[0, 1, 2]]))  # (1, 3, d/2)
    say(f"angles of positions 0, 1, 2, first pair: {numbers(np.arccos(np.clip(cos[0, :, 0], -1, 1)))} radians")
    rotate = rotated_dot(NumpyBackend(), Rope(theta=10000.0, rotary_dim=8))
    say(f"q . k after rotation at positions (p, p+5), p = 0, 10, 100: "
        f"{numbers([rotate(q, q + 5) for q in (0, 10, 100)])}: only the offset counts.")


def rotated_dot(be, rope: Rope):
    """A function (query position, key position) -> q . k after the backend's rope op rotates q and k there, for
    one fixed pair of random vectors (B = n = T = 1, hs = rope.rotary_dim)."""
    q, k = np.random.default_rng(0).standard_normal((2, 1, 1, 1, rope.rotary_dim)).astype(np.float32)

    def dot(pos_q: int, pos_k: int) -> float:
        (cq, sq), (ck, sk) = (rope_cos_sin(rope, np.array([[pos]])) for pos in (pos_q, pos_k))  # (1, 1, r/2) each
        return float(be.rope(q, cq, sq).ravel() @ be.rope(k, ck, sk).ravel())

    return dot
