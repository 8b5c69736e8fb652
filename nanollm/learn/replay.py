"""Lesson 15: a decode step replayed from C: the Python between the kernels, measured, then recorded away."""
import time
from collections import Counter

import numpy as np

from ..backends.cpu_kernels import CpuKernelError
from ..backends.recording import KERNELS
from ..paged_runner import PagedRunner
from .decoding import PROMPT
from .lesson import demo_model, heading, say

STEPS = 40  # greedy decode steps after the prefill, each way


def decode(model, ids: list[int], replay: bool):
    """STEPS greedy steps after a prefill, replayed from C or run from Python. -> (seconds of each step, logits of
    each step, the cache)"""
    model.backend.records_steps = replay  # this backend object only: the class says True
    cache = model.new_cache(batch_size=1, max_len=len(ids) + STEPS + 1)
    token = model.step(np.array([ids]), cache)[:, -1].argmax(-1)[:, None]  # (1, 1)
    seconds, logits = [], []
    for _ in range(STEPS):
        start = time.perf_counter()
        logits.append(model.step(token, cache))  # (1, 1, V)
        seconds.append(time.perf_counter() - start)
        token = logits[-1][:, -1].argmax(-1)[:, None]
    del model.backend.records_steps
    return seconds, logits, cache


def run() -> None:
    try:
        model = demo_model("cpu")
    except CpuKernelError as e:
        say(f"This lesson runs the cpu backend, whose kernels are compiled at their first use: {e}")
        return
    ids = model.tokenizer.encode(PROMPT)
    python_s, python_logits, _ = decode(model, ids, replay=False)
    replay_s, replay_logits, cache = decode(model, ids, replay=True)
    calls = [KERNELS[k] for k in cache.replayed.replay.calls["kernel"]]

    heading("1. One decode step is a list of kernel calls, the same list at every step")
    say(f"On the cpu backend the demo model's decode step makes {len(calls)} kernel calls: "
        + ", ".join(f"{n} {name}" for name, n in Counter(calls).most_common()) + ". Around each, Python runs the "
        "forward pass, checks shapes, allocates the result and converts every argument for C (ctypes).")
    say(f"The first calls, in order: {', '.join(calls[:8])}, ...")

    heading("2. Record once, check, replay")
    say("Decode step 1 ran from Python and each call was kept: the kernel and its arguments, addresses included "
        "(nanollm/backends/recording.py refuses a call that names memory NumPy made on the way). Step 2 ran from "
        "Python, then the recording ran on the same inputs: equal bit for bit: "
        f"{cache.replayed.trusted}. From step 3 on, Python computes only what changes (the new token's embedding, "
        "the positions) and one C function makes every call (kernels/replay_cpu.cpp).")
    say(f"What else changes between steps: {len(cache.replayed.replay.cells)} small arrays of slot numbers, which "
        "the cache's writes (write_slots: the slot the keys go to) and attention (how many slots it reads) take "
        "from memory: each replay sets them first.")
    same = all(np.array_equal(a, b) for a, b in zip(python_logits, replay_logits))
    say(f"Same logits as the steps run from Python, at every one of the {STEPS} steps: {same}")

    heading("3. What the Python cost")
    python_ms, replay_ms = 1e3 * np.median(python_s[2:]), 1e3 * np.median(replay_s[2:])
    say(f"Median step from Python {python_ms:.3f} ms, replayed {replay_ms:.3f} ms: the Python was "
        f"{(python_ms - replay_ms) / python_ms:.0%} of a step of this tiny model, whose weights sit in the caches.")
    say("On GPT-2 124M the 495 MB of weights stream from memory at every step and the same Python is ~12% of a step "
        "at ~60 GB/s (README, \"Measured\"): it is what kept decode below the memory's speed. A GPU engine has the "
        "same problem with its kernel launches, and the same answer: vLLM captures a decode step as a CUDA graph and "
        "replays it.")

    heading("4. A server's batch: one recording per batch size")
    runner, tokens = serve_a_little(model, ids)
    model.backend.records_steps = False
    _, python_tokens = serve_a_little(model, ids)
    del model.backend.records_steps
    say("The server runs its requests through a paged KV cache (nanollm/paged_runner.py), each sequence at its own "
        "length, with its own block table, in one decode step for all of them. Those tables and lengths are arrays "
        "the kernels read from memory, so a replay refills them like the tokens, and one recording serves any "
        f"requests of one batch size: this runner recorded batch sizes {list(runner.replayed)}. Request \"c\" took "
        "\"a\"'s place at another length and in other blocks, and the recording of 2 kept replaying (trusted: "
        f"{runner.replayed[2].trusted}). Every request's tokens equal the same traffic's run from Python: "
        f"{tokens == python_tokens}.")


def serve_a_little(model, ids: list[int]):
    """Requests "a" and "b" decode 4 steps together, "a" leaves, "c" (a shorter prompt) joins, 4 more steps.
    -> (the runner, each request's greedy tokens)"""
    runner = PagedRunner(model, n_blocks=32)
    tokens = {rid: [int(runner.add(rid, prompt).argmax())] for rid, prompt in (("a", ids), ("b", ids[:5]))}
    for joins in (None, "c"):
        if joins:
            runner.remove("a")
            tokens["c"] = [int(runner.add("c", ids[:3]).argmax())]
        running = ["b", joins or "a"]
        for _ in range(4):
            logits = runner.step(running, [tokens[rid][-1] for rid in running])  # (2, V)
            for rid, row in zip(running, logits):
                tokens[rid].append(int(row.argmax()))
    return runner, tokens
