"""Watch inference happen: every op of every forward pass, in order, with its stage, shapes and time (--trace).

How it sees without touching the model: every op the forward pass does goes through `model.backend`
(transformer.py never asks which backend it has), so `traced(model)` puts a `TracingBackend` in its place for the
length of a `with` block. The wrapper passes each call on to the real backend (whichever it is) unchanged and
writes down what it saw: the op, the shapes in and out, the seconds it took. Which *stage* an op belongs to is read
off the weight it reads (`linear(x, layers.3.w_qkv)` is block 3's q/k/v projection) or, for ops that read no weight,
off the op itself inside the block that is running (`rope` is "positions (RoPE)"). A pass begins where the token
embedding is read; the token choice (`backend.sample`) is recorded too, since generation chooses through the backend.

What a learner then reads (`format_trace`): the prompt's tokens, then the prefill (all T positions at once) and the
first decode steps (one position each, against the KV cache), stage by stage; the cache's size after each step; and
for decode, the bytes each step reads against the time it took: the memory bandwidth achieved, and how few FLOPs each
byte feeds, which is what "decode is memory-bound" means as a number. With speculative decoding (speculative.py) a
pass after the prefill verifies proposals: what was proposed, how many were kept, the model's own token after them.

Times are the wrapped backend's own (on a GPU the tracer waits for the device after each op: a launch returns before
its kernel runs). A pass's time is its ops' plus the model's Python between them, not the tracer's bookkeeping.
"""
import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ..request import PROMPT_TYPES, GenerationResult, is_prompt, type_outline, whole_number
from ..speculative import Verification

# The ops of the backend API that the tracer records (backends/numpy_backend.py documents each); every other
# attribute (asarray, zeros, weight, name, ...) passes through unrecorded.
OPS = frozenset({"embedding", "linear", "add", "layer_norm", "rms_norm", "gelu", "gelu_exact", "silu_mul", "gelu_mul",
                 "softcap", "rope", "softmax", "attention", "paged_attention", "sample", "to_numpy"})
# A weight of block i (weights.LayerWeights field) -> the stage of the op that reads it.
BLOCK_WEIGHT_STAGES = {"attn_norm_w": "attention norm", "w_qkv": "q/k/v projection", "q_norm_w": "q norm",
                       "k_norm_w": "k norm", "w_o": "attention output", "attn_post_norm_w": "attention output norm",
                       "mlp_norm_w": "MLP norm", "w_up": "MLP up", "w_gate": "MLP gate", "w_down": "MLP down",
                       "mlp_post_norm_w": "MLP output norm"}
# A weight outside the blocks (weights.ModelWeights field) -> its stage; "tok_emb.T": the tied head (the table, read
# transposed), and the lm_head's bias (phi-2, GPT-J) with the logits.
MODEL_WEIGHT_STAGES = {"tok_emb": "embed", "pos_emb": "positions (learned)", "norm_f_w": "final norm",
                       "lm_head": "logits", "b_lm_head": "logits", "tok_emb.T": "logits (tied: tok_emb.T)"}
# Ops that read no weight: their stage inside a block, and outside one (before the first block: GPT-2's add of the
# learned positions; after the last: Gemma 2's soft-capped logits, the copy to the host, the choice).
BLOCK_OP_STAGES = {"rope": "positions (RoPE)", "attention": "attention", "paged_attention": "attention",
                   "add": "residual add", "gelu": "MLP activation", "gelu_exact": "MLP activation",
                   "silu_mul": "MLP activation", "gelu_mul": "MLP activation"}
MODEL_OP_STAGES = {"add": "positions (learned)", "softcap": "logits soft-cap", "to_numpy": "logits to host",
                   "sample": "choice"}
PROCESSORS = "processors"  # the host's work between the logits' arrival and the choice: logits_processors.py


@dataclass
class OpRecord:
    """One op as the tracer saw it go through the backend."""

    stage: str  # "block 3: q/k/v projection"
    op: str  # "linear": the backend method called
    inputs: list  # the shape of each array argument, in order: [(1, 5, 768), (768, 2304), (2304,)]
    output: tuple  # the result's shape: (1, 5, 2304)
    seconds: float  # the op itself
    block: int | None = None  # the block it ran in; None outside the blocks
    weight_bytes: int = 0  # weight bytes it read (an embedding reads only its rows)
    kv_bytes: int = 0  # attention: the keys and values it read, the filled part of one layer's cache
    flops: int = 0  # multiply-adds x 2 of the matmuls (linear, attention); elementwise ops are not counted
    host_before: float = 0.0  # seconds of Python between the previous op and this one (the tracer's own excluded)


@dataclass
class PassRecord:
    """One forward pass and the choice made from its logits."""

    name: str  # "prefill", "decode step 1", "verification 1", ...
    ids: np.ndarray  # (B, T) the token ids the pass read
    ops: list = field(default_factory=list)  # OpRecord, in the order they ran
    verification: Verification | None = None  # speculative decoding: what this pass verified
    pieces: list = field(default_factory=list)  # the verification's proposals, then the model's own token: text

    @property
    def seconds(self) -> float:
        """From the embedding to the choice: the ops and the Python between them, as an untraced pass would take
        (the tracer's own bookkeeping is not counted)."""
        return sum(r.seconds + r.host_before for r in self.ops)

    def total(self, what: str) -> int:
        """The sum of one OpRecord count over the pass: "weight_bytes", "kv_bytes" or "flops"."""
        return sum(getattr(r, what) for r in self.ops)

    @property
    def bytes_read(self) -> int:
        """Weights and KV cache: what the pass must bring from memory at least once."""
        return self.total("weight_bytes") + self.total("kv_bytes")

    @property
    def flops_per_byte(self) -> float:
        """Arithmetic intensity: how much computing each byte read feeds (decode: about 2 FLOP per 4-byte weight)."""
        return self.total("flops") / max(self.bytes_read, 1)

    @property
    def kv_cache(self) -> tuple[tuple, int]:
        """(one layer's key shape (B, n_kv, S, hs), bytes of keys and values over all layers) after this pass: what
        the attention ops read is the filled part of each layer's cache."""
        keys = [r.inputs[1] for r in self.ops if r.op == "attention"]
        return (keys[-1] if keys else ()), self.total("kv_bytes")


def memory_key(a) -> tuple | None:
    """Where an array's elements sit: (address of the first, shape, strides); None for what is not an array.

    The same for every object viewing the same elements the same way, so a weight is recognised even through a new
    view: the tied head is `tok_emb.T`, a new object at every pass (and NumPy's `.base` names whichever array owns
    the memory, which need not be tok_emb). CuPy arrays give their device address, NumPy arrays their host one."""
    if getattr(a, "ndim", 0) == 0:
        return None
    address = a.ctypes.data if hasattr(a, "ctypes") else a.data.ptr
    return address, tuple(a.shape), tuple(a.strides)


def weight_names(weights) -> dict[tuple, str]:
    """memory_key -> name for every backend-side array of a ModelWeights ("layers.3.w_qkv", "tok_emb", ...), and
    "tok_emb.T" for the embedding table read as the tied head. An op's arguments are named by the memory they view,
    never by their shape."""
    named = {name: a for name, a in vars(weights).items() if name != "layers" and a is not None}
    for i, layer in enumerate(weights.layers):
        named.update({f"layers.{i}.{name}": a for name, a in vars(layer).items() if a is not None})
    named["tok_emb.T"] = weights.tok_emb.T
    return {memory_key(a): name for name, a in named.items()}


def wait_for(out) -> None:
    """Wait until `out` is computed. A CuPy array's device can be synchronised; NumPy's is the string "cpu" and an
    int64 token array from `sample` is already on the host, so on the CPU this does nothing."""
    synchronize = getattr(getattr(out, "device", None), "synchronize", None)
    if synchronize is not None:
        synchronize()


def shape_of(a) -> tuple:
    return tuple(int(n) for n in a.shape)


class TracingBackend:
    """A backend that records the ops of the one it wraps, and otherwise is it (`inner`'s attributes and results).

    weight_names: memory_key -> name, from `weight_names(model.weights)`. max_passes: record the first N passes only
    (later ones pass through unrecorded). listener(record, args, kwargs), if given, is called after each recorded op
    with the op's own arguments (attention.py reads the attention op's queries and keys this way).
    """

    records_steps = False  # so every decode step's ops pass here: the cpu backend would replay them from C

    def __init__(self, inner, weight_names: dict[tuple, str], *, max_passes: int | None = None, listener=None):
        self.inner, self.names = inner, weight_names
        self.max_passes, self.listener = max_passes, listener
        self.passes: list[PassRecord] = []  # every pass recorded so far
        self.current: PassRecord | None = None  # the pass being recorded (None: nothing is)
        self.block: int | None = None  # the block running now
        self.left_at: float | None = None  # perf_counter() as the tracer last handed control back to the model

    def __getattr__(self, name):
        """Only attributes this class lacks come here: the backend's ops and everything else it has."""
        if name == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        attr = getattr(self.inner, name)
        return partial(self.call, name, attr) if name in OPS else attr

    def call(self, op: str, fn, *args, **kwargs):
        """Run one op of the wrapped backend, and record it when a pass is being recorded."""
        if op == "embedding" and self.names.get(memory_key(args[0])) == "tok_emb":
            self.begin_pass(args[1])
        if self.current is None:
            return fn(*args, **kwargs)
        host = 0.0 if self.left_at is None else time.perf_counter() - self.left_at  # the model's Python since
        if op == "sample" and self.current.ops and self.current.ops[-1].op == "to_numpy":
            self.record_processors(args[0], host)
            host = 0.0
        weights = self.weights_read(args)
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        wait_for(out)
        seconds = time.perf_counter() - started
        shapes = [shape_of(a) for a in (*args, *kwargs.values()) if hasattr(a, "shape")]
        record = OpRecord(self.stage(op, weights), op, shapes, shape_of(out), seconds, self.block, host_before=host)
        self.count_costs(record, args, weights)
        self.current.ops.append(record)
        if self.listener is not None:
            self.listener(record, args, kwargs)
        self.left_at = time.perf_counter()
        return out

    def begin_pass(self, ids) -> None:
        """The token embedding opens a pass: the prefill first, then one per decode step."""
        n = len(self.passes)
        if self.max_passes is not None and n >= self.max_passes:
            self.current = None
            return
        self.current = PassRecord("prefill" if n == 0 else f"decode step {n}", np.array(self.inner.to_numpy(ids)))
        self.passes.append(self.current)
        self.block, self.left_at = None, None

    def weights_read(self, args) -> list[tuple[str, object]]:
        """(name, array) for each of an op's arguments that is a weight, in order."""
        named = ((self.names.get(memory_key(a)), a) for a in args)
        return [(name, a) for name, a in named if name is not None]

    def stage(self, op: str, weights: list) -> str:
        """The stage of an op reading `weights` (weights_read), as the module docstring says; moves `self.block` as
        the blocks go by."""
        name = weights[0][0] if weights else None
        if name is not None and name.startswith("layers."):
            _, i, weight = name.split(".")
            self.block = int(i)
            return f"block {i}: {BLOCK_WEIGHT_STAGES.get(weight, weight)}"
        if name is not None:
            self.block = None  # past the blocks (final norm, logits), or before them (embeddings)
            return MODEL_WEIGHT_STAGES.get(name, name)
        if self.block is not None and op in BLOCK_OP_STAGES:
            return f"block {self.block}: {BLOCK_OP_STAGES[op]}"
        return MODEL_OP_STAGES.get(op, op)

    def count_costs(self, record: OpRecord, args, weights: list) -> None:
        """Bytes of weights and of KV cache an op reads, and the FLOPs of its matmuls (2 per multiply-add)."""
        op = record.op
        if op == "embedding":  # a gather reads one row of the table per token
            table, ids = args[0], args[1]
            record.weight_bytes = int(np.prod(shape_of(ids))) * table.shape[1] * table.itemsize
        else:
            record.weight_bytes = sum(int(a.nbytes) for _, a in weights)
        if op == "linear":
            x, w = args[0], args[1]
            record.flops = 2 * int(np.prod(shape_of(x)[:-1])) * w.shape[0] * w.shape[1]  # (M, in) x (in, out)
        elif op == "attention":
            q, k, v = args[0], args[1], args[2]
            B, nh, T, hs = shape_of(q)
            record.kv_bytes = int(k.nbytes) + int(v.nbytes)
            record.flops = 2 * 2 * B * nh * T * k.shape[2] * hs  # q k^T, then weights x v: (T, hs) x (hs, S) each

    def record_processors(self, logits, seconds: float) -> None:
        """The logits came to the host (`to_numpy`) and go back for the choice (`sample`): the seconds between are
        the host's work on them, the penalties and biases of logits_processors.process_logits (next to nothing when
        none is on) and the uniform number drawn for the choice. Recorded as a stage of its own."""
        self.current.ops.append(OpRecord(PROCESSORS, "(host)", [shape_of(logits)], shape_of(logits), seconds))


@contextmanager
def traced(model, **options):
    """`with traced(model) as tracer: model.generate(...)`: the model runs on a TracingBackend around its own
    backend for the block, and gets its own back after it; tracer.passes holds what was recorded. options:
    TracingBackend's max_passes, listener."""
    tracer = TracingBackend(model.backend, weight_names(model.weights), **options)
    model.backend = tracer
    try:
        yield tracer
    finally:
        model.backend = tracer.inner


def token_pieces(tokenizer, ids) -> list[str]:
    """The text each token adds (Tokenizer.pieces: "▁Hello" -> " Hello", or "Hello" first); bytes that end mid-character
    show as U+FFFD. Without a tokenizer, the ids themselves."""
    if tokenizer is None:
        return [str(int(t)) for t in ids]
    return [piece.decode("utf-8", errors="replace") for piece in tokenizer.pieces([int(t) for t in ids])]


@dataclass
class Trace:
    """What `trace_generation` saw."""

    backend: str  # the backend that ran it: "numpy", "emulator", "cupy"
    prompt_ids: list  # the prompt's token ids as the model read them
    pieces: list  # the text of each (token_pieces)
    tokenize_seconds: float | None  # None when the prompt came as token ids
    passes: list  # PassRecord: the prefill, then the decode steps
    result: GenerationResult  # the generation itself (text, ids, stats)


def trace_generation(model, prompt, max_new_tokens: int | None = None, decode_steps: int = 2,
                     **generate_options) -> Trace:
    """Generate from one prompt with every op of the prefill and of the first `decode_steps` decode steps recorded.

    max_new_tokens: default decode_steps + 1 (the prefill chooses the first token, each decode step one more); more
    generates on without recording. generate_options: those of model.generate (temperature, seed, kv_cache, ...).
    """
    if not is_prompt(prompt):
        raise TypeError(f"trace_generation takes one prompt ({PROMPT_TYPES}); got {type_outline(prompt)}")
    decode_steps = whole_number("decode_steps", decode_steps)
    max_new_tokens = decode_steps + 1 if max_new_tokens is None else max_new_tokens
    tokenize_seconds = None
    if isinstance(prompt, str) and model.tokenizer is not None:
        started = time.perf_counter()
        prompt = model.tokenizer.encode_prompt(prompt)  # the same call generate makes: the ids it would read
        tokenize_seconds = time.perf_counter() - started
    if generate_options.get("assistant_model") is model:  # its own draft: a twin on the untraced backend, so the
        generate_options["assistant_model"] = copy.copy(model)  # passes recorded are the model's, as with any draft
    with traced(model, max_passes=1 + decode_steps) as tracer:
        def on_verify(v: Verification):  # the pass just recorded (if it was) is the one that verified
            if tracer.current is not None:
                tracer.current.name, tracer.current.verification = f"verification {v.step}", v
                tracer.current.pieces = token_pieces(model.tokenizer, v.proposed + v.tokens[v.accepted :])

        result = model.generate(prompt, max_new_tokens=max_new_tokens, on_verify=on_verify, **generate_options)
    ids = tracer.passes[0].ids[0].tolist() if tracer.passes else []
    return Trace(model.backend.name, ids, token_pieces(model.tokenizer, ids), tokenize_seconds, tracer.passes, result)


# -- printing ------------------------------------------------------------------------------------------------------

def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def human_flops(n: float) -> str:
    """2_300_000 -> "2.3 MFLOP"."""
    for unit in ("", "k", "M", "G", "T"):
        if n < 1000 or unit == "T":
            return f"{n:.1f} {unit}FLOP"
        n /= 1000


def format_tokens(trace: Trace, width: int = 118) -> list[str]:
    """The tokenize stage: how many tokens, how long, and each id with its text, wrapped."""
    how = f" in {trace.tokenize_seconds * 1e3:.2f} ms (Tokenizer.encode_prompt)" \
        if trace.tokenize_seconds is not None else " (given as ids)"
    lines, line = [f"tokenize: {len(trace.prompt_ids)} tokens{how}"], " "
    for token, piece in zip(trace.prompt_ids, trace.pieces):
        cell = f" {token} {piece!r}"
        if len(line) + len(cell) > width:
            lines.append(line)
            line = " "
        line += cell
    return lines + [line]


def format_pass(p: PassRecord, backend: str) -> list[str]:
    """One pass: a header, one line per op (stage, op, shapes in -> out, microseconds), the KV cache, the totals."""
    B, T = p.ids.shape
    what = "every prompt position at once" if p.name == "prefill" else \
        f"{T} position{'s' if T > 1 else ''} per sequence"
    lines = [f"{p.name}: {what}, ids (B, T) = ({B}, {T}), on the {backend} backend"]
    if p.verification is not None:
        lines.append("  " + format_verification(p))
    lines.append(f"  {'stage':<34} {'op':<10} {'inputs -> output':<60} {'µs':>9}")
    for r in p.ops:
        shapes = " ".join(str(s) for s in r.inputs) + f" -> {r.output}"
        lines.append(f"  {r.stage:<34} {r.op:<10} {shapes:<60} {r.seconds * 1e6:>9.1f}")
    keys, kv_bytes = p.kv_cache
    if keys:
        layers = sum(r.op == "attention" for r in p.ops)
        lines.append(f"  KV cache: {keys[2]} positions; 2 (k, v) x {layers} layers x {keys} = {human_bytes(kv_bytes)}")
    host = sum(r.host_before for r in p.ops)
    lines.append(f"  {p.seconds * 1e3:.2f} ms (Python between ops {host * 1e3:.2f} ms); read "
                 f"{human_bytes(p.total('weight_bytes'))} of weights + {human_bytes(kv_bytes)} of KV cache; "
                 f"{human_flops(p.total('flops'))}, {p.flops_per_byte:.2f} FLOP per byte")
    return lines


def format_verification(p: PassRecord) -> str:
    """What a verification pass decided: its proposals, how many the model kept, and its own token after them."""
    v, proposed = p.verification, " ".join(repr(piece) for piece in p.pieces[: len(p.verification.proposed)])
    own = "a stop among them ended the sequence" if v.token is None else f"then the model's own {p.pieces[-1]!r}"
    return (f"verifies the last token + {len(v.proposed)} proposed: {proposed or 'none'}; kept {v.accepted}, {own}: "
            f"{len(v.tokens)} token(s) from one pass")


def format_bandwidth(passes: list) -> list[str]:
    """Decode as a number: the bytes a step reads over its time (bandwidth achieved), and FLOPs per byte read."""
    decode = [p for p in passes if p.name != "prefill"]
    if not decode:
        return []
    lines = ["decode: each step reads every weight to make one token per sequence (a verification: those it keeps)"]
    for p in decode:
        gained = "" if p.verification is None else f"; {len(p.verification.tokens)} token(s) from it"
        lines.append(f"  {p.name}: {human_bytes(p.bytes_read)} read in {p.seconds * 1e3:.2f} ms = "
                     f"{p.bytes_read / max(p.seconds, 1e-9) / 1e9:.2f} GB/s achieved; {p.flops_per_byte:.2f} FLOP "
                     f"per byte{gained}")
    prefill = passes[0]
    if prefill.name == "prefill":
        lines.append(f"  prefill read the weights once for all {prefill.ids.shape[1]} positions: "
                     f"{prefill.flops_per_byte:.2f} FLOP per byte")
    lines += ["  A CPU core computes tens of FLOP in the time memory delivers one byte, a GPU hundreds: a step "
              "doing fewer FLOP",
              "  per byte than that waits on memory (memory-bound). In a tiny model fixed costs dominate instead "
              "(each op's",
              "  call, the Python between ops), so its GB/s stays far below the memory's."]
    return lines


def format_trace(trace: Trace) -> str:
    """The whole trace as text for a terminal: tokens, each pass stage by stage, then decode's bandwidth."""
    lines = format_tokens(trace)
    for p in trace.passes:
        lines += [""] + format_pass(p, trace.backend)
    bandwidth = format_bandwidth(trace.passes)
    return "\n".join(lines + ([""] + bandwidth if bandwidth else []))
