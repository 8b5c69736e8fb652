"""Lessons 3 and 4: attention by hand on three tokens, then inside the demo model, watched through its backend."""
import numpy as np

from ..backends.numpy_backend import NumpyBackend
from .lesson import demo_model, heading, max_difference, numbers, piece, say

# Three tokens, head size 2, numbers small enough to follow by hand.
Q = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32)  # (T, hs) what each token looks for
K = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)  # (T, hs) what each token offers
V = np.array([[10.0, 0.0], [0.0, 10.0], [5.0, 5.0]], dtype=np.float32)  # (T, hs) what each token hands over
PROMPT = "The for statement is used to iterate over the elements of a sequence"
SHADES = " .:-=+*#%@"  # weight 0 .. 1, one character each


def causal_weights(q: np.ndarray, k: np.ndarray, q_start: int = 0) -> np.ndarray:
    """softmax(q k^T / sqrt(hs)) with the future hidden: (..., T, hs), (..., S, hs) -> (..., T, S).

    Query t sits at key slot q_start + t and may see slots 0 .. q_start + t (numpy_backend's attention rule).
    """
    hs = q.shape[-1]
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(hs)  # (..., T, hs) x (..., hs, S) -> (..., T, S)
    T, S = scores.shape[-2:]
    future = np.arange(S)[None, :] > q_start + np.arange(T)[:, None]  # (T, S) keys after the query
    scores = np.where(future, -np.inf, scores)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))  # exp(-inf) = 0: the future gets no weight
    return e / e.sum(axis=-1, keepdims=True)


def run_by_hand() -> None:
    say("Each token has a query q (what it looks for), a key k (what it offers) and a value v (what it hands "
        "over).")
    for name, m in (("Q", Q), ("K", K), ("V", V)):
        say(f"  {name} = {[numbers(row, 0) for row in m]}")
    heading("1. Scores: every query against every key, q . k / sqrt(hs) (hs = 2)")
    scores = Q @ K.T / np.sqrt(2)  # (T, hs) x (hs, T) -> (T, T)
    for t in range(3):
        say(f"  token {t}: {numbers(scores[t], 3)}")
    heading("2. Causal mask: a token may not look at tokens after it (-inf above the diagonal), then softmax per row")
    weights = causal_weights(Q, K)  # (T, T)
    for t in range(3):
        say(f"  token {t}: {numbers(weights[t], 3)}   sum {weights[t].sum():.3f}")
    say(f"Token 0 sees only itself (weight 1). Token 1's query (0, 2) matches key 1 (0, 1) best: "
        f"{weights[1, 1]:.3f} of its attention.")
    heading("3. Output: each row mixes the values by its weights, weights @ V")
    out = weights @ V  # (T, T) x (T, hs) -> (T, hs)
    for t in range(3):
        say(f"  token {t}: {numbers(out[t], 3)}")
    be = NumpyBackend()
    engine = be.attention(Q[None, None], K[None, None], V[None, None], 0)[0, 0]  # (B, nh, T, hs) -> (T, hs)
    say(f"NumpyBackend.attention on the same arrays: max difference {max_difference(out, engine):.1e}")
    heading("4. Decode: a 4th token's query against the 3 cached keys plus its own (q_start = 3)")
    q4, k4, v4 = np.array([[1.0, 1.0]], np.float32), np.array([[0.0, 0.0]], np.float32), np.zeros((1, 2), np.float32)
    K4, V4 = np.concatenate([K, k4]), np.concatenate([V, v4])  # (4, hs): the cache grew by one slot
    w4 = causal_weights(q4, K4, q_start=3)[0]  # (4,)
    say(f"  weights {numbers(w4, 3)}, output {numbers(w4 @ V4, 3)}: one row, no mask needed, every key is past.")


def heat_row(weights: np.ndarray) -> str:
    """One row of weights (S,) in [0, 1] as characters, darker = more weight."""
    return "".join(SHADES[min(int(w * len(SHADES)), len(SHADES) - 1)] * 2 for w in weights)


class WatchingBackend(NumpyBackend):
    """The numpy backend, keeping every attention call's q, k, v and output: the model code is not touched, the
    lesson only wraps the op it calls (transformer.attention -> be.attention)."""

    def __init__(self):
        self.calls = []  # per call: (q (B, nh, T, hs), k (B, n_kv, S, hs), v, q_start, output (B, nh, T, hs))

    def attention(self, q, k, v, q_start, key_mask=None, **options):
        out = super().attention(q, k, v, q_start, key_mask, **options)
        self.calls.append((q, k, v, q_start, out))
        return out


def run_in_model(layer: int = 1) -> None:
    be = WatchingBackend()
    model = demo_model(be)
    tok, cfg = model.tokenizer, model.config
    ids = tok.encode(PROMPT)
    model.forward([ids])
    q, k, v, q_start, out = be.calls[layer]  # (1, nh, T, hs), (1, n_kv, T, hs) x2, 0, (1, nh, T, hs)
    say(f"The demo model: {cfg.n_layer} layers x {cfg.n_head} heads of size {cfg.head_dim}. {len(ids)} tokens: "
        f"q {q.shape}, k {k.shape} (B, nh, T, hs), recorded as transformer.attention calls be.attention.")
    weights = causal_weights(q[0], k[0], q_start)  # (nh, T, T)
    say(f"Layer {layer}: softmax(q k^T / sqrt({cfg.head_dim})) by hand; weights @ v vs the model's own output: "
        f"max difference {max_difference(weights @ v[0], out[0]):.1e}")
    say(f"Rows sum to 1 (largest error {np.abs(weights.sum(-1) - 1).max():.1e}); weights above the diagonal: "
        f"{np.triu(weights, 1).max():.1f}")
    heading(f"Layer {layer}, the {cfg.n_head} heads averaged: row = a token, column = a token it may look at")
    mean = weights.mean(axis=0)  # (T, T)
    labels = [piece(tok, i) for i in ids]
    for t, label in enumerate(labels):
        strongest = int(np.argmax(mean[t]))
        say(f"  {label:12.12s} |{heat_row(mean[t, : t + 1]):{2 * len(ids)}s}| most: {labels[strongest]} "
            f"{mean[t, strongest]:.2f}")
    first = mean[1:, 0].mean()
    say(f"Mean weight on the first token, from the later tokens: {first:.2f} (a 'sink' when large: attention must "
        f"put its weight of 1 somewhere).")
    say("Any model, layer and head, with a row for each new token too (and a PNG with --plot):")
    say(f"  python -m nanollm.generate --show-attention {layer}:0 \"...\"")
