"""Attention weights, seen: where each token looks, in one layer (--show-attention LAYER[:HEAD]).

Attention mixes the values of earlier tokens with weights softmax(q k^T * scale), one row per query, each row summing
to 1. The backends never return those weights (the CUDA kernel never even holds a whole row: attention.cu keeps a
running softmax), so this view records what the chosen layer's attention op receives, through trace.TracingBackend
(nothing is added to the model), and asks the NumPy reference op for the weights, with the very masks, scale and
soft-cap the model used.

How the weights come out of an op that returns only its output: y = weights @ v, so with v = the identity (key j's
value is the one-hot vector e_j) y *is* the weights. `attention_weights` does exactly that, hs key columns at a time.

What a learner sees (`format_attention`): a square of tokens x tokens, the prompt's rows from the prefill, then one
row per new token from its decode step, shaded by weight. Above the diagonal is empty: a token never reads a later
one (causal). The last token chosen has no row: generation stops before the model reads it.
"""
import inspect
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..backends import NumpyBackend
from ..request import PROMPT_TYPES, GenerationResult, is_prompt, type_outline, whole_number
from .trace import token_pieces, traced

REFERENCE = NumpyBackend()  # the op whose math the weights are read from
ATTENTION_ARGS = inspect.signature(REFERENCE.attention)  # to read a call's arguments by name, however passed
SHADES = " .:-=+*#%@"  # weight 0 (hidden), then nine steps of 1/9 up to 1


def parse_attention_spec(text: str) -> tuple[int, int | None]:
    """--show-attention's value: "3" -> (3, None), the mean over layer 3's heads; "3:1" -> (3, 1), head 1 alone."""
    layer, _, head = text.partition(":")
    if not layer.isdigit() or not (head.isdigit() or (head == "" and ":" not in text)):
        raise ValueError(f"--show-attention takes LAYER or LAYER:HEAD (whole numbers from 0), got {text!r}")
    return int(layer), (int(head) if head else None)


def attention_weights(q, k, q_start: int, key_mask=None, **options) -> np.ndarray:
    """The weights the reference attention op gives each key. (B, nh, T, hs), (B, n_kv, S, hs) -> (B, nh, T, S)

    options: the op's scale, softcap, window (NumpyBackend.attention documents each). Each call mixes hs one-hot
    value vectors, so its output is hs columns of the weights: key c + i's value is e_i.
    """
    B, n_kv, S, hs = k.shape
    columns = []
    for c in range(0, S, hs):
        width = min(hs, S - c)
        one_hot = np.zeros((B, n_kv, S, hs), dtype=np.float32)  # (B, n_kv, S, hs)
        one_hot[:, :, c + np.arange(width), np.arange(width)] = 1.0
        y = REFERENCE.attention(q, k, one_hot, q_start, key_mask, **options)  # (B, nh, T, hs) = weights @ one_hot
        columns.append(y[..., :width])  # (B, nh, T, width): the weights of keys c .. c+width-1
    return np.concatenate(columns, axis=-1)  # (B, nh, T, S)


class AttentionRecorder:
    """A TracingBackend listener: keeps, for one layer and the batch's first sequence, each query's row of weights
    (the head's, or the mean over heads) by the cache slot of its token."""

    def __init__(self, backend, layer: int, head: int | None):
        self.to_numpy, self.layer, self.head = backend.to_numpy, layer, head
        self.rows: dict[int, np.ndarray] = {}  # slot -> (S,) weights over slots 0 .. S-1

    def __call__(self, record, args, kwargs) -> None:
        if record.op != "attention" or record.block != self.layer:
            return
        call = ATTENTION_ARGS.bind(*args, **kwargs).arguments  # q, k, v, q_start, key_mask, scale, softcap, window
        key_mask = call.pop("key_mask", None)
        options = {name: call[name] for name in ("scale", "softcap", "window") if name in call}
        q, k = (self.to_numpy(call[name])[:1] for name in ("q", "k"))  # (1, nh, T, hs), (1, n_kv, S, hs)
        mask = None if key_mask is None else self.to_numpy(key_mask)[:1]  # (1, S)
        w = attention_weights(q, k, call["q_start"], mask, **options)[0]  # (nh, T, S)
        w = w.mean(axis=0) if self.head is None else w[self.head]  # (T, S)
        for t, row in enumerate(w):
            self.rows[call["q_start"] + t] = row  # a recomputing step (--no-kv-cache) writes the same rows again


@dataclass
class AttentionMap:
    """One layer's attention weights over a generation, for one sequence."""

    layer: int
    head: int | None  # None: the mean over the layer's heads
    n_heads: int
    weights: np.ndarray  # (N, N) float32: row i = how token i's query spreads over tokens 0 .. i (sums to 1)
    labels: list  # N token pieces: the prompt's, then the new tokens the model read
    prompt_len: int  # rows before this come from the prefill, the others one per decode step
    result: GenerationResult | None = None  # the generation the weights were read from (text, ids, stats)


def check_layer_head(model, layer, head) -> None:
    """A ValueError naming the layer or head when the model has no such one."""
    n_layer, n_head = model.config.n_layer, model.config.n_head
    if whole_number("layer", layer) >= n_layer:
        raise ValueError(f"layer {layer} is not one of the model's {n_layer} layers (0 .. {n_layer - 1})")
    if head is not None and whole_number("head", head) >= n_head:
        raise ValueError(f"head {head} is not one of the model's {n_head} attention heads (0 .. {n_head - 1})")


@contextmanager
def recording_attention(model, layer: int, head: int | None = None):
    """`with recording_attention(model, 3) as recorder: model.generate(...)`; then recorder.rows holds layer 3's
    weights by slot. For a caller running its own generation (streaming, say); attention_maps is the whole job."""
    check_layer_head(model, layer, head)
    recorder = AttentionRecorder(model.backend, layer, head)
    with traced(model, listener=recorder):
        yield recorder


def attention_maps(model, prompt, layer: int, head: int | None = None, max_new_tokens: int = 16,
                   **generate_options) -> AttentionMap:
    """Generate from one prompt and return layer `layer`'s attention weights (head `head`, or the mean of all heads)
    for the prompt and every new token the model read. generate_options: those of model.generate."""
    if not is_prompt(prompt):
        raise TypeError(f"attention_maps takes one prompt ({PROMPT_TYPES}); got {type_outline(prompt)}")
    beams = generate_options.get("num_beams", 1)
    if beams > 1:
        raise ValueError(f"the attention view follows one sequence; beam search (num_beams={beams}) reorders "
                         f"{beams} of them at every step")
    with recording_attention(model, layer, head) as recorder:
        result = model.generate(prompt, max_new_tokens=max_new_tokens, **generate_options)
    ids = result.prompt_ids + result.token_ids
    N = max(recorder.rows) + 1  # the slots the model read: the last token chosen never was
    weights = np.zeros((N, N), dtype=np.float32)  # (N, N)
    for slot, row in recorder.rows.items():
        weights[slot, : len(row)] = row
    return AttentionMap(layer, head, model.config.n_head, weights, token_pieces(model.tokenizer, ids[:N]),
                        len(result.prompt_ids), result)


def shade(w: float) -> str:
    """A weight in [0, 1] as one of SHADES: exactly 0 is blank (a hidden key), (0, 1/9] is '.', ... (8/9, 1] '@'."""
    return SHADES[min(len(SHADES) - 1, math.ceil(w * (len(SHADES) - 1)))]


def format_attention(m: AttentionMap, label_width: int = 14) -> str:
    """A text heat map: one row per token (its index and text), one two-character cell per key, and a legend."""
    N = len(m.labels)
    heads = f"head {m.head}" if m.head is not None else f"the mean of its {m.n_heads} heads"
    margin = " " * (5 + label_width)
    title = (f"attention weights of layer {m.layer}, {heads}: row i is where token i looks (each row sums to 1); "
             f"columns are tokens 0 .. {N - 1}")
    lines = [title]
    if N > 10:
        lines.append(margin + "".join(f"{j // 10:>2}" if j % 10 == 0 else "  " for j in range(N)))
    lines.append(margin + "".join(f"{j % 10:>2}" for j in range(N)))
    for i, (label, row) in enumerate(zip(m.labels, m.weights)):
        if i == m.prompt_len:
            lines.append(f"{'':>4} -- new tokens, one decode step each --")
        cells = "".join(2 * shade(float(w)) for w in row)
        lines.append(f"{i:>4} {repr(label)[:label_width]:<{label_width}}{cells}".rstrip())
    steps = len(SHADES) - 1
    legend = "  ".join(f"{SHADES[n]!r} <= {n / steps:.2f}" for n in range(1, len(SHADES)))
    lines.append(f"shades: ' ' 0 (a later or hidden token)  {legend}")
    return "\n".join(lines)
