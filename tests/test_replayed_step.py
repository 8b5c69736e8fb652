"""A decode step replayed from C (nanollm/replayed_step.py, backends/recording.py, kernels/replay_cpu.cpp).

The reference is the same step run from Python on the same backend: the same kernels on the same numbers, so every
replayed step's logits must equal it bit for bit (no tolerance), over every family, batch sizes 1 to 3, a cache cut
back in the middle (speculative decoding's rollback), and the paged runner's traffic (requests joining and leaving).
A recording must also refuse what it could not replay right (memory NumPy made, logits not made by a kernel), and a
replay that differs from Python must be dropped.
"""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nanollm
import nanollm.backends.recording as recording_module
from nanollm import paged_runner
from nanollm.backends.cpu_backend import CpuBackend
from nanollm.config import LongRopeScaling
from nanollm.kernels import KERNELS_DIR
from nanollm.model import Model
from nanollm.paged_runner import RECORDINGS, PagedRunner
from nanollm.views.trace import traced
from tests.hf_families import CLASSIC_FAMILIES, FAMILIES, STRATEGIES, build_family
from tests.test_backend_forward import random_weights, small_config


def steps_both_ways(model, prompt, n_steps: int, cut_at: int):
    """Prefill, then n_steps greedy decode steps (the cache cut back by two slots after step cut_at), once from
    Python and once replayed. -> (python logits, replayed logits, the replayed cache)"""
    runs = []
    for replay in (False, True):
        model.backend.records_steps = replay  # this instance only
        cache = model.new_cache(len(prompt), prompt.shape[1] + n_steps + 1)
        token = model.step(prompt, cache)[:, -1].argmax(-1)[:, None]  # (B, 1)
        logits = []
        for i in range(n_steps):
            logits.append(model.step(token, cache))  # (B, 1, V)
            token = logits[-1][:, -1].argmax(-1)[:, None]
            if i == cut_at:
                cache.truncate(cache.length - 2)
        runs.append((logits, cache))
    del model.backend.records_steps
    (python, _), (replayed, cache) = runs
    return python, replayed, cache


def assert_same_steps(python, replayed):
    for step, (want, got) in enumerate(zip(python, replayed)):
        assert got.dtype == np.float32 and np.array_equal(got, want), f"step {step} differs from Python"


@settings(max_examples=12, deadline=None)
@given(arch=st.sampled_from(["gpt2", "llama"]), B=st.integers(1, 3), T=st.integers(1, 6), n_kv=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**16), cut_at=st.integers(0, 5))
def test_a_replayed_step_is_the_step_from_python_bit_for_bit(arch, B, T, n_kv, seed, cut_at):
    """GPT-2 (LayerNorm, GELU, learned positions, biases, a tied output projection) and Llama (RMSNorm, RoPE,
    SwiGLU, grouped-query heads): from the third step on every step is replayed, and each equals Python's."""
    overrides = {} if arch == "gpt2" else {"n_kv_head": n_kv}
    cfg = small_config(arch, vocab_size=75, **overrides)
    model = Model(cfg, random_weights(cfg, seed), CpuBackend())
    prompt = np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T))
    python, replayed, cache = steps_both_ways(model, prompt, n_steps=7, cut_at=cut_at)
    assert_same_steps(python, replayed)
    assert cache.replayed.refused is None and cache.replayed.trusted


@pytest.mark.parametrize("family", FAMILIES + CLASSIC_FAMILIES)
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), B=st.integers(1, 3))
def test_every_family_replays(tmp_path_factory, family, data, B):
    """Each family's checkpoint, written by transformers (parallel residuals, sandwich and post norms, q/k norms,
    sliding windows, partial rotary, Gemma 2's logit softcap, the exact GELU): every op of a decode step is
    a kernel, so the recording is trusted, and the replayed steps equal Python's, over a KV cache and over the paged
    runner's pool."""
    directory, _ = build_family(tmp_path_factory.mktemp(family), family, data.draw(STRATEGIES[family]()))
    model = nanollm.load(directory, backend="cpu")
    prompt = np.random.default_rng(B).integers(0, model.config.vocab_size, (B, 5))
    python, replayed, cache = steps_both_ways(model, prompt, n_steps=6, cut_at=3)
    assert_same_steps(python, replayed)
    assert cache.replayed.refused is None and cache.replayed.trusted
    if not any(isinstance(getattr(rope, "scaling", None), LongRopeScaling) for rope in (model.config.rope,
                                                                                        model.config.rope_local)):
        events = [("add", [1, 2, 3]), ("add", [4, 5])] + [("step", [0])] * 4  # the server's steps (no LongRoPE there)
        replayed, runner = paged_traffic(model, events, block_size=2)
        model.backend.records_steps = False
        python, _ = paged_traffic(model, events, block_size=2)
        assert_same_steps(python, replayed)
        assert runner.replayed[2].trusted


def paged_traffic(model, events, block_size: int) -> tuple[list, PagedRunner]:
    """Requests through a PagedRunner as a server's scheduler drives them: each event either adds a request (its
    prompt; prompts share prefixes, so blocks are shared), steps every running request with its greedy token, or
    removes the oldest. -> (the logits of every step, the runner)"""
    runner, running, tokens, logits = PagedRunner(model, n_blocks=64, block_size=block_size), [], {}, []
    for i, (kind, prompt) in enumerate(events):
        if kind == "add":
            tokens[i] = int(runner.add(i, prompt).argmax())
            running.append(i)
        elif kind == "remove" and running:
            runner.remove(running.pop(0))
        elif kind == "step" and running:
            logits.append(runner.step(running, [tokens[r] for r in running]))  # (B, V)
            tokens.update(zip(running, logits[-1].argmax(-1).tolist()))
    return logits, runner


@settings(max_examples=10, deadline=None)
@given(arch=st.sampled_from(["gpt2", "llama"]), block_size=st.sampled_from([1, 2, 4, 16]), seed=st.integers(0, 2**16),
       events=st.lists(st.tuples(st.sampled_from(["add", "step", "step", "step", "remove"]),
                                 st.lists(st.integers(0, 3), min_size=1, max_size=9)), min_size=8, max_size=40))
def test_a_paged_decode_step_replays_bit_for_bit(arch, block_size, seed, events):
    """The paged runner's decode steps (the server's): requests join, grow and leave, so the batch changes its size
    and members and each sequence has its own length and block table. Replayed from the third step of each batch
    size on, every step's logits equal the same traffic's from Python, bit for bit."""
    cfg = small_config(arch, vocab_size=75, **({} if arch == "gpt2" else {"n_kv_head": 1}))
    model = Model(cfg, random_weights(cfg, seed), CpuBackend())
    model.backend.records_steps = False
    python, _ = paged_traffic(model, events, block_size)
    del model.backend.records_steps
    replayed, runner = paged_traffic(model, events, block_size)
    assert_same_steps(python, replayed)
    assert all(step.refused is None for step in runner.replayed.values()) and len(runner.replayed) <= RECORDINGS


def test_a_paged_recording_serves_any_sequences_of_its_batch_size():
    """One recording per batch size, not per set of requests: two new requests in the place of two that left, at
    other lengths and in other blocks, are replayed by the recording the first two made (trusted: no new check)."""
    cfg = small_config("llama", vocab_size=75)
    model = Model(cfg, random_weights(cfg, 3), CpuBackend())
    events = [("add", [1, 2, 3]), ("add", [4] * 9)] + [("step", [0])] * 3 + [("remove", [0])] * 2
    events += [("add", [5] * 20), ("add", [6, 7])] + [("step", [0])] * 2
    logits, runner = paged_traffic(model, events, block_size=4)
    assert list(runner.replayed) == [2] and runner.replayed[2].trusted
    model.backend.records_steps = False
    python, _ = paged_traffic(model, events, block_size=4)
    assert_same_steps(python, logits)


def test_a_batch_larger_than_the_recorded_ones_runs_from_python(monkeypatch):
    """Past MAX_RECORDED_BATCH sequences a step's Python is a small part of it and a recording's arrays large: such
    steps run from Python, unrecorded (here the limit is lowered to 2 and 3 sequences step)."""
    monkeypatch.setattr(paged_runner, "MAX_RECORDED_BATCH", 2)
    cfg = small_config("gpt2", vocab_size=75)
    model = Model(cfg, random_weights(cfg, 6), CpuBackend())
    events = [("add", [1, 2]), ("add", [3, 4]), ("add", [5, 6])] + [("step", [0])] * 3
    _, runner = paged_traffic(model, events, block_size=2)
    assert not runner.replayed


def test_a_runner_keeps_the_recordings_of_its_latest_batch_sizes():
    """Batch sizes 1 to 6 in turn, three steps each: the runner holds the recordings of the last RECORDINGS sizes
    (each holds its step's arrays: memory), and every step still equals Python's."""
    cfg = small_config("gpt2", vocab_size=75)
    model = Model(cfg, random_weights(cfg, 5), CpuBackend())
    events = [event for n in range(6) for event in [("add", [n + 1, 2])] + [("step", [0])] * 3]
    logits, runner = paged_traffic(model, events, block_size=2)
    assert list(runner.replayed) == list(range(7 - RECORDINGS, 7)) and all(r.trusted for r in runner.replayed.values())
    model.backend.records_steps = False
    python, _ = paged_traffic(model, events, block_size=2)
    assert_same_steps(python, logits)


def test_a_recording_refuses_memory_it_does_not_hold():
    """A kernel reading an array NumPy made during the step (here: a product of a fallback) would read it stale at
    the next replay: the recording names the call. Arrays it holds (inputs, the backend's results) are fine."""
    be = CpuBackend()
    x = np.ones((1, 1, 16), np.float32)
    with be.recording_calls(start=0, known=[], inputs=[x]) as recording:
        be.gelu(be.gelu(x))  # an input, then a kernel's result
        assert recording.problem is None and len(recording.calls) == 2
        be.gelu(x * 2)  # NumPy's temporary
    assert recording.problem.startswith("gelu_rows's argument 0 is memory the recording does not hold")
    with be.recording_calls(start=0, known=[], inputs=[]) as recording:
        be.gelu(x)  # x was not declared an input
    assert recording.problem is not None


def test_another_threads_calls_are_not_recorded():
    """The recording is this thread's: a kernel call from another thread while it records runs as usual and is not
    kept (it would be replayed with the step otherwise)."""
    import threading

    be = CpuBackend()
    x = np.ones((1, 1, 16), np.float32)
    with be.recording_calls(start=0, known=[], inputs=[x]) as recording:
        other = threading.Thread(target=lambda: be.gelu(np.full((1, 1, 16), 2, np.float32)))
        other.start()
        other.join()
        be.gelu(x)
    assert recording.problem is None and len(recording.calls) == 1


def test_a_replay_that_differs_from_python_is_dropped(monkeypatch):
    """What a recording cannot see: Python changing a kernel's result in place between two calls (here, a mutation
    of the residual add). The replay lacks the change, so the check at the second step finds its logits differ,
    drops the recording, writes that step's keys again, and every step the caller gets is still Python's."""
    add = CpuBackend.add

    def add_then_change(self, x, y):
        out = add(self, x, y)
        out += np.float32(0.5)  # NumPy, in place: no kernel call to record
        return out

    monkeypatch.setattr(CpuBackend, "add", add_then_change)
    cfg = small_config("llama", vocab_size=75)
    model = Model(cfg, random_weights(cfg, 1), CpuBackend())
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 4))
    python, replayed, cache = steps_both_ways(model, prompt, n_steps=5, cut_at=99)
    assert_same_steps(python, replayed)
    assert cache.replayed.refused == "a replay differed from the step run from Python"


def test_steps_unlike_the_recorded_one_run_from_python():
    """Left padding (a key mask) and several tokens at once (a speculative verification) are not replayed; the
    recording made by a plain decode step survives them."""
    cfg = small_config("llama", vocab_size=75)
    model = Model(cfg, random_weights(cfg, 2), CpuBackend())
    cache = model.new_cache(1, 20)
    model.step(np.array([[1, 2, 3]]), cache)
    mask = np.ones((1, 4), bool)
    model.step(np.array([[4]]), cache, key_mask=mask)
    assert cache.replayed is None
    model.step(np.array([[5]]), cache)
    recorded = cache.replayed
    model.step(np.array([[6, 7]]), cache)
    model.step(np.array([[8]]), cache)
    assert cache.replayed is recorded and recorded.trusted


def test_the_kernel_numbers_are_the_c_switchs():
    """recording.KERNELS[i] is the function kernels/replay_cpu.cpp calls for `enum Kernel` value i (read from the
    source: the enum's order, and each case's call), and CALL is its struct Call: 20 integers, then 2 floats."""
    source = (KERNELS_DIR / "replay_cpu.cpp").read_text()
    enum = re.search(r"enum Kernel : long long \{([^}]*)\}", source).group(1)
    names = [name.strip() for name in enum.split(",")]
    calls = dict(re.findall(r"case (\w+):\s*(\w+)\(", source))
    assert [calls[name] for name in names] == list(recording_module.KERNELS)
    assert "long long a[20];" in source and "float f[2];" in source
    assert recording_module.CALL.itemsize == 8 + 20 * 8 + 2 * 4 and recording_module.CALL.fields["f"][1] == 168


def test_a_traced_model_runs_every_decode_step_from_python():
    """The tracer sees a step's ops as they go through the backend; a replayed step would show none. Every decode
    step it records has the first decode step's ops, on the cpu backend too."""
    cfg = small_config("gpt2", vocab_size=75)
    model = Model(cfg, random_weights(cfg, 4), CpuBackend())
    with traced(model) as tracer:
        model.generate([1, 2, 3], max_new_tokens=6, temperature=0)
    steps = [[op.op for op in p.ops] for p in tracer.passes if p.name.startswith("decode")]
    assert len(steps) == 5 and "linear" in steps[0] and all(ops == steps[0] for ops in steps)
