"""The paged runner: requests join and leave a running batch at any step, one forward pass per step, over one
paged KV cache (continuous batching's engine half; the server's scheduler is the other half).

Model.step (model.py, read it first) runs a batch whose rows share one KVCache: every row has the same max_len
slots, and a row cannot join late or leave early. Here every request is a sequence of a block pool (paged_cache.py).
It joins with a prefill of its prompt, of only the part the prefix cache does not hold already; then each step runs
the next token of any set of running requests, each at its own length, in ONE forward pass (B, 1) -> (B, V). Decode
is memory-bound (reading the weights is the cost of a step), so B requests in one pass read the weights once instead
of B times: that is the speed-up of batching. The forward pass is transformer.forward unchanged; a PagedStep tells
its attention where each sequence's keys lie.

The runner returns logits and chooses nothing: sampling settings, seeds, penalties and stops stay with each request
(as generation.Batch.choose does them), so a request gets the same tokens in a batch as alone.

What a scheduler does around it (one thread owns the runner; nanollm/serve/scheduler.py is that thread):
    logits = runner.add(rid, prompt_ids)             # a request joins: (V,) logits of its first new token
    token = its own choice from logits               # per request: its settings, its seeded generator
    logits = runner.step([rid, ...], [token, ...])   # every running request, one pass: row b is rids[b]'s (V,)
    runner.remove(rid)                               # it stopped, or its client left: its blocks go back
    runner.stats()                                   # blocks used, free, cached; prefix hits; running sequences
add and step refuse with the runner unchanged: PoolExhausted (a MemoryError) when the pool lacks the blocks, so the
request waits in the queue (add), or the scheduler preempts a running request, as vLLM does: remove the newest,
retry the step without it, and add it again later with its prompt plus the tokens it has so far (recomputation,
cheap while its prefix blocks are still cached); ValueError for an unknown or repeated request id, a token outside
the vocabulary, or a request that already fills the model's context (it finishes with "length" instead).
"""
from collections import OrderedDict

import numpy as np

from .config import LongRopeScaling
from .paged_cache import PagedKVCache, PagedStep, PoolStats
from .replayed_step import ReplayedStep
from .transformer import forward


# Recorded decode steps a runner keeps, one per batch size, the most recently used: each holds every intermediate
# array of its step and its (B, V) logits (~7 MB for GPT-2 at batch 8, ~22 MB for Qwen2.5-0.5B), and a server's batch
# takes any size up to max-batch x 16 sequences. A batch size past these is recorded again (two steps from Python).
RECORDINGS = 4
# The largest batch recorded: the Python of a step is the same ~1-2 ms at any batch size, 5% of a GPT-2 step of 16
# rows and less above, while a recording's arrays grow with the rows.
MAX_RECORDED_BATCH = 16


class PagedRunner:
    """A model and one PagedKVCache of n_blocks blocks of block_size slots: add, step, remove, stats."""

    def __init__(self, model, n_blocks: int, block_size: int = 16):
        cfg = model.config
        if any(rope is not None and isinstance(rope.scaling, LongRopeScaling) for rope in (cfg.rope, cfg.rope_local)):
            # LongRoPE's factors depend on the whole sequence's length (rope.long_factors_begin): a cached block's
            # keys would depend on how long the prompt that computed them was, and a batch on its longest member.
            raise ValueError("the paged runner does not run LongRoPE models (Phi-3.5, Phi-4-mini): their keys change "
                             "when a sequence passes the original context, so blocks cannot be shared or batched")
        self.model = model
        self.cache = PagedKVCache.allocate(model.backend, cfg, n_blocks, block_size)
        self.table_width = -(-cfg.max_seq_len // block_size)  # blocks of the longest sequence the model takes
        self.replayed = OrderedDict()  # batch size -> its recorded decode step (ReplayedStep), latest used last

    def add(self, request_id, prompt_ids) -> np.ndarray:
        """A request joins: slots for its prompt (sharing cached prefix blocks) and a prefill of the rest.
        -> float32 (V,): the logits of the token after the prompt."""
        ids = self.model.check_ids(prompt_ids)  # (1, L): in the vocabulary, within the context
        if ids.shape[0] != 1:
            raise ValueError(f"add takes one prompt (a list of token ids), got {ids.shape[0]}")
        hits = self.cache.add_sequence(request_id, ids[0])  # leading tokens already in the pool
        try:
            return self._run([request_id], ids[:, hits:])[0]  # (V,)
        except BaseException:
            self.cache.free(request_id)  # a failed prefill leaves no sequence behind
            raise

    def step(self, request_ids, tokens) -> np.ndarray:
        """One decode step of running requests in one forward pass: request_ids[b] runs tokens[b] at its next slot.
        -> float32 (B, V): row b, the logits of the token after tokens[b]."""
        request_ids = list(request_ids)
        ids = np.asarray(tokens)
        if not request_ids or ids.shape != (len(request_ids),):
            raise ValueError(f"step takes one token for each of at least one request, got {len(request_ids)} "
                             f"request ids and tokens of shape {ids.shape}")
        ids = self.model.check_ids(ids[:, None])  # (B, 1)
        _, lengths = self.cache.block_tables(request_ids)  # (B,): unknown ids are refused here
        full = np.flatnonzero(lengths >= self.model.config.max_seq_len)
        if full.size:
            raise ValueError(f"request {request_ids[full[0]]!r} holds {lengths[full[0]]} tokens, the model's whole "
                             f"context: it cannot take another")
        self.cache.append_step(request_ids, ids[:, 0])  # all slots or none
        try:
            return self._run(request_ids, ids)  # (B, V)
        except BaseException:
            for request_id in request_ids:
                self.cache.rollback(request_id)  # the step never happened
            raise

    def remove(self, request_id) -> None:
        """The request leaves (finished, cancelled or preempted): its blocks go back; full ones stay cached."""
        self.cache.free(request_id)

    def stats(self) -> PoolStats:
        return self.cache.stats()

    def _run(self, request_ids: list, ids: np.ndarray) -> np.ndarray:
        """One forward pass over each request's last T claimed slots, then commit them. int (B, T) -> (B, V)

        A decode step (of up to MAX_RECORDED_BATCH sequences) on the cpu backend replays the recording of its batch
        size (nanollm/replayed_step.py): its tables are as wide as the longest sequence the model takes, so their
        shape, which the recording keeps, does not change as the sequences grow."""
        B, T = ids.shape
        m = self.model
        replays = m.backend.records_steps and T == 1 and B <= MAX_RECORDED_BATCH
        step = PagedStep.last_slots(self.cache, request_ids, self.table_width if replays else None)
        positions = (step.lengths[:, None] - T + np.arange(T)).astype(np.int64)  # (B, T): no padding, slot = position
        if replays:
            if B not in self.replayed:
                self.replayed[B] = ReplayedStep(m.weights, B)
                if len(self.replayed) > RECORDINGS:
                    self.replayed.popitem(last=False)  # the batch size used longest ago
            self.replayed.move_to_end(B)
            logits = self.replayed[B].step(m, ids, positions, step)[:, -1]  # (B, V)
        else:
            logits = forward(m.backend, m.config, m.weights, ids, positions, step, last_only=True)  # (B, 1, V)
            logits = m.backend.to_numpy(logits)[:, -1]  # (B, V)
        for request_id in request_ids:
            self.cache.commit(request_id)  # their keys are written: full blocks become shareable
        return logits
