"""A decode step replayed from C: the cpu backend's kernel calls of a decode step, recorded once and made again at
each later step without the Python between them (kernels/replay_cpu.cpp says why: ~1.2 ms of a GPT-2 step;
nanollm/backends/recording.py says what a recording may hold).

One recording per KV cache (Model.step), and one per batch size for a paged pool (PagedRunner.step): a paged step's
block tables and lengths are inputs like the tokens, so any B sequences of the pool, each at its own length, replay
the same recording. Each is captured and then checked before it is trusted, the way a CUDA graph is:
  1st decode step   runs from Python while its kernel calls are recorded
  2nd               runs from Python, then the recording is replayed on the same inputs: the two logits must be equal
                    bit for bit (the same kernels on the same numbers), or the recording is dropped
  later steps       Python computes only what changes, the tokens' embeddings and the RoPE tables (transformer.embed,
                    rope_tables: a few small NumPy ops), copies them (and a paged step's tables and lengths) into the
                    recording's inputs, and replays
A step unlike the recorded one (another batch size or model) is recorded anew; every step whose recording was refused
runs from Python (an op that fell back to NumPy: a head over 512 wide, a norm weight of another shape).
`model.backend.records_steps = False` runs every step from Python (lesson 15 times the two ways).
"""
import numpy as np

from .backends.recording import Replay
from .transformer import Pass, embed, rope_tables, transform


def weight_arrays(obj) -> list:
    """Every NumPy array a weights object holds: matrices (the cpu backend's Panels and TiedTable hold theirs in
    `data` and `T`), vectors, layer after layer."""
    if obj is None:
        return []
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, list):
        return [a for item in obj for a in weight_arrays(item)]
    if isinstance(getattr(obj, "data", None), np.ndarray):  # Panels
        return [obj.data]
    if hasattr(obj, "T"):  # TiedTable: the panels of its transpose
        return weight_arrays(obj.T)
    return [a for value in vars(obj).values() for a in weight_arrays(value)]  # ModelWeights, LayerWeights


class ReplayedStep:
    """One cache's recorded decode step and how far it is trusted (see the module docstring)."""

    def __init__(self, weights, batch_size: int):
        self.weights, self.batch_size = weights, batch_size  # the steps it was recorded for
        self.replay = None  # the Replay, once recorded
        self.trusted = False  # replayed once and found equal to the step from Python
        self.refused = None  # why this cache's steps run from Python

    def fits(self, weights, ids) -> bool:
        return weights is self.weights and ids.shape == (self.batch_size, 1)

    def step(self, model, ids, positions, step) -> np.ndarray:
        """One decode step (B, 1) through `step`, a KV cache's CacheStep or a paged pool's PagedStep.
        -> logits (B, 1, V), an array of the caller's own."""
        be, cfg, w = model.backend, model.config, model.weights
        x = embed(be, cfg, w, ids, positions)  # (B, 1, C)
        p = Pass(be, cfg, step, rope_tables(be, cfg, positions))
        if self.refused is not None:
            return transform(p, w, x, last_only=True)
        if self.replay is None:
            return self.record(p, x).copy()
        if not self.trusted:
            logits = transform(p, w, x, last_only=True)  # (B, 1, V)
            self.trusted = np.array_equal(self.replayed(x, p), logits)
            if not self.trusted:
                self.refused, self.replay = "a replay differed from the step run from Python", None
                transform(p, w, x, last_only=True)  # the replay wrote this step's keys: written again, right
            return logits
        return self.replayed(x, p).copy()

    def record(self, p: Pass, x):
        cache = p.cache.cache
        known = weight_arrays(self.weights) + cache.k + cache.v
        self.inputs = inputs(x, p)  # the step's inputs, kept by the recording: each replay refills them
        with p.be.recording_calls(p.cache.start, known, self.inputs) as recording:
            logits = transform(p, self.weights, x, last_only=True)  # (B, 1, V)
        if recording.problem is None and not any(logits.base is a or logits is a for a in recording.outputs):
            recording.problem = "the logits are not a kernel's result"
        if recording.problem is not None:
            self.refused = recording.problem
        else:
            self.replay, self.logits = Replay(recording), logits
        return logits

    def replayed(self, x, p: Pass) -> np.ndarray:
        """The recording run for the step of pass p, whose embedded tokens are x. -> its logits (B, 1, V)"""
        for mine, theirs in zip(self.inputs, inputs(x, p)):
            np.copyto(mine, theirs)
        self.replay.run(p.cache.start)
        return self.logits


def inputs(x, p: Pass) -> list:
    """What changes from one decode step to the next, besides the slot: the embedded tokens x, the RoPE tables and
    what the cache's step names (a paged step's tables and lengths)."""
    return [x] + [a for pair in p.ropes.values() for a in pair] + list(p.cache.inputs)
