"""The paged runner (nanollm/paged_runner.py): requests joining and leaving one batch over a paged KV cache get what
each gets alone.

References: model.generate (one request, its own contiguous KVCache: itself transformers' greedy ids through
tests/test_model_parity.py) for the tokens, exactly; a stateless full pass (model.forward) for the logits of every
step, to 1e-4 (float32: a batch of B rows and a prefill of a prompt's tail sum in other orders than one full pass;
the logits here are O(1), so 1e-4 is a few hundred float32 ulps). The pool is inspected after every request leaves.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nanollm.paged_runner as paged_runner
from nanollm.backends.numpy_backend import NumpyBackend
from nanollm.config import LongRopeScaling, Rope
from nanollm.model import Model
from nanollm.paged_cache import PagedKVCache, PoolExhausted
from nanollm.paged_runner import PagedRunner
from tests.kernel_harness import assert_close, make_backend
from tests.test_backend_forward import random_weights, small_config

LOGITS_ATOL = 1e-4
# Tiny random models covering what attention is told per layer: learned positions, RoPE with grouped-query heads,
# multi-query, a sliding-window layer beside a full one, soft-capped scores and logits.
VARIANTS = {
    "gpt2": ("gpt2", {}),
    "llama-gqa": ("llama", {}),
    "llama-mqa": ("llama", dict(n_kv_head=1)),
    "sliding": ("llama", dict(layer_types=("sliding", "full"), sliding_window=5)),
    "softcap": ("llama", dict(attn_softcap=3.0, final_softcap=5.0)),
}


def tiny(variant: str, seed: int, backend=None, **overrides) -> Model:
    arch, options = VARIANTS[variant]
    cfg = small_config(arch, vocab_size=23, max_seq_len=48, **{**options, **overrides})
    return Model(cfg, random_weights(cfg, seed), backend or NumpyBackend())


def alone(model: Model, prompt: list, new: int) -> list:
    """What generate gives the prompt alone, greedy, never stopping early."""
    return model.generate(prompt, max_new_tokens=new, temperature=0, eos_token_ids=set()).token_ids


def run_schedule(runner: PagedRunner, requests: dict, order_seed: int = 0) -> tuple[dict, dict]:
    """Drive the runner as a scheduler does: request r = (prompt, joins at step, new tokens) is added at its step,
    then runs in every step (with the others, in a shuffled order) until it has its tokens, then leaves at once.
    -> (tokens, logits) per request: its greedy choices and the (V,) logits each came from."""
    rng = np.random.default_rng(order_seed)
    tokens, logits, running = {}, {}, []
    for t in range(max(join for _, join, _ in requests.values()) + max(n for *_, n in requests.values()) + 1):
        for rid in running:  # all of them ran the step before: leave the moment the last token is chosen
            if len(tokens[rid]) == requests[rid][2]:
                runner.remove(rid)
        running = [rid for rid in running if len(tokens[rid]) < requests[rid][2]]
        if running:
            rng.shuffle(running)
            rows = runner.step(running, [tokens[rid][-1] for rid in running])  # (B, V)
            for rid, row in zip(running, rows):
                tokens[rid].append(int(row.argmax()))
                logits[rid].append(row)
        for rid, (prompt, join, _) in requests.items():
            if join == t:
                row = runner.add(rid, prompt)  # (V,)
                tokens[rid], logits[rid] = [int(row.argmax())], [row]
                running.append(rid)
    assert not running and not runner.cache.sequences
    return tokens, logits


def assert_each_as_alone(model: Model, requests: dict, tokens: dict, logits: dict) -> None:
    for rid, (prompt, _, new) in requests.items():
        assert tokens[rid] == alone(model, prompt, new), f"request {rid}"
        full = model.forward([prompt + tokens[rid][:-1]])[0, len(prompt) - 1 :]  # (new, V): a stateless pass
        np.testing.assert_allclose(np.array(logits[rid]), full, rtol=0, atol=LOGITS_ATOL, err_msg=f"request {rid}")


def assert_no_block_held(runner: PagedRunner) -> None:
    """Every request has left: no block is held, each is free or cached, and nothing is counted twice."""
    s, cache = runner.stats(), runner.cache
    assert (s.used, s.sequences, s.free + s.cached) == (0, 0, s.total)
    assert not any(cache.refs)
    assert sorted(list(cache.free_blocks) + list(cache.evictable)) == list(range(s.total))


# -- joining and leaving: each request gets what it gets alone -----------------------------------------------------

request_lists = st.lists(st.tuples(st.lists(st.integers(0, 4), min_size=0, max_size=9),  # own tail of the prompt
                                   st.integers(0, 10), st.integers(1, 7)),  # joins at step, new tokens
                         min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(variant=st.sampled_from(sorted(VARIANTS)), seed=st.integers(0, 99), block_size=st.integers(1, 5),
       shared=st.lists(st.integers(0, 4), max_size=8), requests=request_lists, spare=st.integers(0, 3),
       order=st.integers(0, 99))
def test_requests_joining_and_leaving_get_what_each_gets_alone(variant, seed, block_size, shared, requests, spare,
                                                               order):
    """Up to 5 requests whose prompts share a random prefix (so some blocks are prefix hits) join at random steps,
    run together in one pass per step in a shuffled order, each at its own length, and leave when done: each gets
    generate's tokens alone, its logits are a full pass's to 1e-4, and no block is held at the end. The pool holds
    the most blocks the requests ever hold at once unshared, plus 0-3: blocks cached by requests that left get
    evicted for the ones that join."""
    model = tiny(variant, seed)
    reqs = {f"r{i}": ((shared + tail) or [1], join, new) for i, (tail, join, new) in enumerate(requests)}
    n_blocks = spare + max(  # request r holds blocks from step join (its add) until step join + new (it leaves)
        sum(-(-(len(prompt) + new) // block_size) for prompt, join, new in reqs.values() if join <= t < join + new)
        for t in range(17))
    runner = PagedRunner(model, n_blocks=n_blocks, block_size=block_size)
    tokens, logits = run_schedule(runner, reqs, order)
    assert_each_as_alone(model, reqs, tokens, logits)
    assert_no_block_held(runner)


def test_shared_prefixes_are_hits_and_change_nothing(monkeypatch):
    """block_size 4, a 9-token system prompt: its 2 full blocks (8 tokens) are computed by the first request and
    hit by the two that join later, so only their tails run through the model (b: 12 - 8 = 4 positions). The third
    repeats the first's whole prompt: the block of its last token is recomputed (its logits are needed), so it too
    hits 8 of 9. Every request gets generate's tokens alone, and decode steps batch all three."""
    model = tiny("llama-gqa", 4)
    system = [3, 1, 4, 1, 5, 9, 2, 6, 5]
    reqs = {"a": (system, 0, 6), "b": (system + [3, 5, 8], 2, 5), "c": (system, 3, 4)}
    runs = []
    real_forward = paged_runner.forward
    monkeypatch.setattr(paged_runner, "forward", lambda *a, **k: runs.append(a[3].shape) or real_forward(*a, **k))
    runner = PagedRunner(model, n_blocks=32, block_size=4)
    tokens, logits = run_schedule(runner, reqs)
    assert_each_as_alone(model, reqs, tokens, logits)
    s = runner.stats()
    assert (s.prompt_tokens, s.prefix_hits) == (9 + 12 + 9, 0 + 8 + 8)
    prefills = [shape for shape in runs if shape[0] == 1 and shape[1] > 1]
    assert prefills == [(1, 9), (1, 4)]  # a's whole prompt, b's 4-token tail (c's tail is 1 token: (1, 1))
    assert (1, 1) in runs and max(shape[0] for shape in runs) == 3  # decode steps batch all three at once
    assert_no_block_held(runner)


def test_the_emulator_runs_the_paged_kernel_to_the_same_tokens(monkeypatch):
    """The CUDA kernels on the CPU emulator (paged_attention.cu in every pass, prefill and decode): three requests
    of ragged lengths, one joining late, one sharing a block, over 3-slot blocks, give NumPy generate's tokens,
    logits within 1e-4 (kernel_harness.assert_close)."""
    be = make_backend("emulator")
    reference, model = tiny("llama-gqa", 7), tiny("llama-gqa", 7, backend=be)
    reqs = {"a": ([1, 2, 3, 4, 5, 6, 7], 0, 4), "b": ([1, 2, 3, 9], 0, 5), "c": ([8, 8], 2, 3)}
    launches, kernel = [], be.paged_attention
    monkeypatch.setattr(be, "paged_attention", lambda *a, **k: launches.append(a[0].shape) or kernel(*a, **k))
    tokens, logits = run_schedule(PagedRunner(model, n_blocks=16, block_size=3), reqs)
    # (B, T) of each pass: a's prefill; b's, only its last token (its first block is a's); two steps of a and b;
    # c's prefill; a step of all three; a has left, one of b and c.
    passes = [(1, 7), (1, 1), (2, 1), (2, 1), (1, 2), (3, 1), (2, 1)]
    assert launches == [(B, 4, T, 8) for B, T in passes for _ in range(2)]  # (B, nh, T, hs), each pass's 2 layers
    for rid, (prompt, _, new) in reqs.items():
        assert tokens[rid] == alone(reference, prompt, new), f"request {rid}"
        full = reference.forward([prompt + tokens[rid][:-1]])[0, len(prompt) - 1 :]  # (new, V)
        assert_close(np.array(logits[rid]), full, LOGITS_ATOL, f"request {rid} logits")


# -- a pool too small: PoolExhausted, the runner unchanged and still usable ---------------------------------------

def snapshot(runner: PagedRunner):
    """Everything the runner's pool holds besides the keys: tables, tokens, counts, free blocks (as a set: a block
    given back goes to the end of the list), prefix cache, eviction order, stats."""
    c = runner.cache
    return ({rid: (list(s.table), list(s.tokens), s.computed) for rid, s in c.sequences.items()}, list(c.refs),
            sorted(c.free_blocks), dict(c.cached), list(c.evictable), runner.stats())


def step_greedy(runner: PagedRunner, tokens: dict, rids: list) -> None:
    """One step of requests rids, each running its last token; each takes the argmax of its row."""
    rows = runner.step(rids, [tokens[rid][-1] for rid in rids])  # (B, V)
    for rid, row in zip(rids, rows):
        tokens[rid].append(int(row.argmax()))


def test_a_pool_too_small_refuses_with_the_runner_unchanged_and_usable():
    """4 blocks of 2 slots. a (3 tokens) and b (1) take 2 + 1; c (3 tokens, 2 blocks) does not fit: PoolExhausted,
    nothing changed. One step fills both a's and b's last blocks, so the next opens 2 with 1 left: refused whole,
    nothing claimed. The scheduler preempts b; a runs alone, then leaves; b joins again with its prompt plus its
    tokens so far (its first block still cached: a prefix hit), then c: every request gets generate's tokens alone."""
    model = tiny("llama-gqa", 5)
    runner = PagedRunner(model, n_blocks=4, block_size=2)
    a, b, c = [1, 2, 3], [4], [6, 7, 8]
    tokens = {rid: [int(runner.add(rid, p).argmax())] for rid, p in (("a", a), ("b", b))}
    before = snapshot(runner)
    with pytest.raises(PoolExhausted, match="the KV pool has 1 blocks to give; a prompt of 3 tokens needs 2 more"):
        runner.add("c", c)
    assert snapshot(runner) == before
    step_greedy(runner, tokens, ["a", "b"])  # a: 4 slots, b: 2: both blocks full
    before = snapshot(runner)
    with pytest.raises(PoolExhausted, match="the KV pool has 1 blocks to give; a decode step of 2 sequences needs 2"):
        step_greedy(runner, tokens, ["a", "b"])
    assert snapshot(runner) == before
    runner.remove("b")  # preempted
    step_greedy(runner, tokens, ["a"]), step_greedy(runner, tokens, ["a"])
    runner.remove("a")
    hits = runner.stats().prefix_hits
    tokens["b"].append(int(runner.add("b", b + tokens["b"]).argmax()))  # recomputed, but for its cached block
    assert runner.stats().prefix_hits == hits + 2
    tokens["c"] = [int(runner.add("c", c).argmax())]
    step_greedy(runner, tokens, ["c", "b"])
    assert tokens == {"a": alone(model, a, 4), "b": alone(model, b, 4), "c": alone(model, c, 2)}
    runner.remove("b"), runner.remove("c")
    assert_no_block_held(runner)


def test_a_failed_pass_rolls_the_step_back(monkeypatch):
    """The backend fails in the middle of a decode step (after some layers wrote their keys): the error comes out,
    the pool's bookkeeping is as before the step, and the same step then runs to generate's tokens. A prefill that
    fails leaves no sequence and no block behind."""
    model = tiny("sliding", 6)
    runner = PagedRunner(model, n_blocks=16, block_size=2)
    prompts = {"a": [1, 2, 3], "b": [4, 5, 6, 7]}
    tokens = {rid: [int(runner.add(rid, p).argmax())] for rid, p in prompts.items()}
    before = snapshot(runner)
    calls, real = [], model.backend.paged_attention

    def fail_in_layer_1(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the device went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(model.backend, "paged_attention", fail_in_layer_1)
    with pytest.raises(RuntimeError, match="the device went away"):
        runner.step(["a", "b"], [tokens["a"][-1], tokens["b"][-1]])
    assert snapshot(runner) == before
    calls.clear()
    with pytest.raises(RuntimeError, match="the device went away"):
        runner.add("c", [9, 9, 9])
    assert snapshot(runner)[:-1] == before[:-1]  # the stats alone remember c's prompt, looked up in the cache
    monkeypatch.setattr(model.backend, "paged_attention", real)
    for _ in range(3):
        rows = runner.step(["a", "b"], [tokens["a"][-1], tokens["b"][-1]])
        for rid, row in zip("ab", rows):
            tokens[rid].append(int(row.argmax()))
    assert tokens == {rid: alone(model, p, 4) for rid, p in prompts.items()}


# -- every refusal: one ValueError naming the problem, the runner unchanged -----------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda r: r.step(["a", "zz"], [1, 2]), "no sequence 'zz' in the paged KV cache"),
    (lambda r: r.step(["a", "a"], [1, 2]), r"distinct sequences, got 2 sequence ids \(1 distinct\)"),
    (lambda r: r.step(["a", "b"], [1]), r"one token for each of at least one request, got 2 request ids and tokens of "
                                        r"shape \(1,\)"),
    (lambda r: r.step([], []), "at least one request, got 0"),
    (lambda r: r.step(["a"], [23]), r"token id 23 is outside the vocabulary \(size 23\)"),
    (lambda r: r.step(["a"], [-1]), "token id -1 is outside the vocabulary"),
    (lambda r: r.step(["a"], [1.5]), "token ids must be a non-empty int array"),
    (lambda r: r.step(["full"], [1]), "request 'full' holds 48 tokens, the model's whole context"),
    (lambda r: r.add("a", [1]), "sequence 'a' is already in the paged KV cache"),
    (lambda r: r.add("c", []), "token ids must be a non-empty int array"),
    (lambda r: r.add("c", [[1], [2]]), "add takes one prompt"),
    (lambda r: r.add("c", [1] * 49), "49 tokens exceed the model's context of 48"),
    (lambda r: r.remove("c"), "no sequence 'c' in the paged KV cache"),
])
def test_bad_requests_are_one_value_error_with_the_runner_unchanged(call, message):
    model = tiny("gpt2", 1)
    runner = PagedRunner(model, n_blocks=40, block_size=4)
    runner.add("a", [1, 2]), runner.add("b", [3])
    runner.add("full", list(range(23)) * 2 + [1, 2])  # 48 tokens: the whole context
    before = snapshot(runner)
    with pytest.raises(ValueError, match=message):
        call(runner)
    assert snapshot(runner) == before
    assert runner.step(["a", "b"], [4, 5]).shape == (2, 23)  # still usable


def test_longrope_models_are_refused():
    """LongRoPE switches every key's factors when a sequence passes the original context: a cached block's keys
    would depend on the length of the prompt that computed it."""
    scaling = LongRopeScaling(short_factor=(1.0,) * 4, long_factor=(2.0,) * 4, original_max_position_embeddings=16,
                              attention_factor=1.1)
    model = tiny("llama-gqa", 1, rope=Rope(rotary_dim=8, scaling=scaling))
    with pytest.raises(ValueError, match="does not run LongRoPE models"):
        PagedRunner(model, n_blocks=4)


# -- the cache's two step-level calls ------------------------------------------------------------------------------

def test_append_step_is_all_or_none_and_rollback_undoes_it():
    """Hand example, block_size 2: x holds 2 slots (its block full), y 1. A step opens a block for x only; with
    no block left it is refused before y (first in the step) grows. Once y leaves, x's step takes y's block, and
    rollback gives it back."""
    cfg = small_config("llama")
    cache = PagedKVCache.allocate(NumpyBackend(), cfg, n_blocks=2, block_size=2)
    cache.add_sequence("x", [1, 2]), cache.commit("x")
    cache.add_sequence("y", [3]), cache.commit("y")
    with pytest.raises(PoolExhausted, match="a decode step of 2 sequences needs 1 new ones"):
        cache.append_step(["y", "x"], [4, 5])
    assert [len(cache.sequences[s].tokens) for s in "xy"] == [2, 1]
    cache.free("y")
    cache.append_step(["x"], [5])
    assert (cache.sequences["x"].table, cache.stats().free) == ([0, 1], 0)
    cache.rollback("x")
    assert (cache.sequences["x"].table, cache.sequences["x"].tokens, cache.stats().free) == ([0], [1, 2], 1)
