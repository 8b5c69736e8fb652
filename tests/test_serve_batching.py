"""Continuous batching in the server's scheduler: every running request advances in ONE forward pass per iteration
(counted through a wrapped PagedRunner), each request still gets exactly what nanollm.generate gives it alone,
shared prompt prefixes are prefix-cache hits in /metrics, and a pool too small for everyone queues and preempts
without losing or corrupting a request.

The scheduler is driven directly (Jobs submitted before its thread starts, so they all join in its first iteration)
where a test counts passes; through HTTP where it reads /metrics.
"""
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.paged_runner import PagedRunner
from nanollm.serve.api import read_request
from nanollm.serve.metrics import Metrics
from nanollm.serve.scheduler import Job, Scheduler
from tests.conftest import time_limit
from tests.serve_fixtures import NAME, client, demo_model, metrics, serving

# Settings of every kind a request carries on its own: greedy, seeded sampling, penalties, a logit bias, stops, n.
REQUESTS = [dict(prompt="Once upon a time", max_tokens=12, temperature=0),
            dict(prompt="The for statement", max_tokens=9, temperature=0.8, seed=1, top_p=0.9),
            dict(prompt="def main():", max_tokens=12, temperature=1.0, seed=7, presence_penalty=1.5,
                 frequency_penalty=0.5, top_k=20),
            dict(prompt="Python is", max_tokens=10, temperature=0.7, seed=3, repetition_penalty=1.3, min_p=0.05),
            dict(prompt="A list comprehension", max_tokens=11, temperature=0, logit_bias={"13": 5}, stop=["\n\n"]),
            dict(prompt=["Hello", "Goodbye, said the"], max_tokens=8, temperature=0.9, seed=11, n=2)]


class CountingRunner(PagedRunner):
    """A PagedRunner that records the number of rows of every forward pass: ('add', 1) and ('step', B)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passes = []

    def add(self, request_id, prompt_ids):
        self.passes.append(("add", 1))
        return super().add(request_id, prompt_ids)

    def step(self, request_ids, tokens):
        self.passes.append(("step", len(request_ids)))
        return super().step(request_ids, tokens)


@pytest.fixture(scope="module")
def model():
    return demo_model()


def run_jobs(model, runner, bodies, max_batch=8):
    """Submit every body as a Job, then start the scheduler; -> ({job index: {row: [token ids]}}, outcomes)."""
    scheduler = Scheduler(max_batch, 64, Metrics(), runner)
    jobs = [Job(model, read_request("completions", {"model": NAME, **body}, model, NAME)) for body in bodies]
    for job in jobs:
        scheduler.submit(job)
    scheduler.start()
    tokens, outcomes = {}, []
    for i, job in enumerate(jobs):
        rows = tokens.setdefault(i, {})
        while isinstance(event := job.events.get(timeout=30), list):
            for t in event:
                rows.setdefault(t.row, []).append(t.token)
        outcomes.append(event)
    scheduler.stop(grace_s=5)
    return tokens, outcomes, scheduler


def reference(model, body) -> list[list[int]]:
    """What generate gives each row of a request alone: its prompts, each n times, as one batch (as the server)."""
    options = {k: v for k, v in body.items() if k not in ("prompt", "max_tokens", "n")}
    if "logit_bias" in options:
        options["logit_bias"] = {int(k): v for k, v in options["logit_bias"].items()}
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    rows = [p for p in prompts for _ in range(body.get("n", 1))]
    results = model.generate(rows, max_new_tokens=body["max_tokens"], **options)
    return [r.token_ids for r in results]


def test_running_requests_advance_in_one_pass_per_iteration_and_equal_generate(model):
    runner = CountingRunner(model, n_blocks=256, block_size=16)
    with time_limit(30):
        tokens, outcomes, _ = run_jobs(model, runner, REQUESTS)
    assert outcomes == [None] * len(REQUESTS)
    for i, body in enumerate(REQUESTS):
        assert [tokens[i][b] for b in sorted(tokens[i])] == reference(model, body), body
    rows = [len(r) for job in tokens.values() for r in job.values()]  # tokens of every row
    adds = [n for kind, n in runner.passes if kind == "add"]
    steps = [n for kind, n in runner.passes if kind == "step"]
    assert len(adds) == len(rows)  # one prefill per row: every row joined in the first iteration
    # After its prefill, a row's every later token is one row of a pass; the iterations are as many as the longest
    # row's tokens after its first, and each pass holds every row still running: one pass per iteration, not per row.
    assert sum(steps) == sum(n - 1 for n in rows)
    assert len(steps) == max(rows) - 1
    assert steps[0] == len(rows) and steps == sorted(steps, reverse=True)


def test_a_pool_too_small_for_everyone_queues_and_preempts_without_losing_a_request(model):
    """Blocks of 4 tokens, 10 of them: a request of ~5 prompt tokens + 16 new needs 6, so two cannot both finish
    side by side; the newest is preempted, rejoins with its tokens so far, and ends with generate's tokens."""
    bodies = [dict(prompt=p, max_tokens=16, temperature=t, seed=s)
              for p, t, s in (("Once upon a time", 0, None), ("Python is", 0.8, 5), ("def main():", 1.0, 9),
                              ("The for statement", 0, None))]
    runner = PagedRunner(model, n_blocks=10, block_size=4)
    with time_limit(30):
        tokens, outcomes, scheduler = run_jobs(model, runner, bodies, max_batch=4)
    assert outcomes == [None] * len(bodies)
    for i, body in enumerate(bodies):
        assert [tokens[i][0]] == reference(model, body), body
    assert scheduler.metrics.preemptions > 0  # the pool was tight enough to exercise preemption
    stats = runner.stats()
    assert stats.used == 0 and stats.sequences == 0 and stats.free + stats.cached == stats.total  # nothing leaked


BODY = st.fixed_dictionaries({"prompt": st.sampled_from(["Once upon a time", "Python is", "def main():", "The"]),
                               "max_tokens": st.integers(1, 12), "temperature": st.sampled_from([0, 0.7, 1.2]),
                               "seed": st.integers(0, 3)}, optional={"n": st.integers(1, 3)})


@settings(max_examples=20, deadline=None)
@given(bodies=st.lists(BODY, min_size=1, max_size=6), n_blocks=st.integers(0, 12), max_batch=st.integers(1, 6))
def test_any_mix_of_requests_in_any_pool_gets_generates_tokens_and_leaks_nothing(model, bodies, n_blocks,
                                                                                  max_batch):
    """Requests of 1-3 rows in a pool of blocks of 4 from just enough for the largest alone (3 rows x 16 tokens:
    12 blocks) to 12 more: however they join, step together, are preempted and rejoin, each ends with generate's
    tokens, and every block is back when all are done."""
    runner = PagedRunner(model, n_blocks=12 + n_blocks, block_size=4)
    with time_limit(30):
        tokens, outcomes, _ = run_jobs(model, runner, bodies, max_batch=max_batch)
    assert outcomes == [None] * len(bodies)
    for i, body in enumerate(bodies):
        assert [tokens[i][b] for b in sorted(tokens[i])] == reference(model, body), body
    stats = runner.stats()
    assert stats.used == 0 and stats.sequences == 0 and stats.free + stats.cached == stats.total


def test_a_request_no_pool_can_hold_fails_alone_and_the_next_is_served(model):
    bodies = [dict(prompt="Once upon a time " * 4, max_tokens=30, temperature=0),
              dict(prompt="Python is", max_tokens=3, temperature=0)]
    runner = PagedRunner(model, n_blocks=3, block_size=4)  # 12 slots: the first needs ~46
    with time_limit(30):
        tokens, outcomes, _ = run_jobs(model, runner, bodies, max_batch=1)
    assert outcomes[0].status == 503 and "not enough memory" in str(outcomes[0])
    assert outcomes[1] is None and [tokens[1][0]] == reference(model, bodies[1])
    assert runner.stats().used == 0


def test_shared_prefix_requests_are_prefix_cache_hits_in_metrics(model):
    system = "You are a helpful assistant who answers in one short sentence about Python. " * 2
    with serving(model, max_batch=4) as server, time_limit(30):
        api = client(server)
        for question in ("What is a list?", "What is a dict?"):
            api.completions.create(model=NAME, prompt=system + question, max_tokens=3, temperature=0)
        m = metrics(server)
    shared = len(model.tokenizer.encode(system)) // 16 * 16  # whole blocks of the shared prefix
    assert shared >= 16 and m["nanollm_prefix_cache_hits_total"] >= shared
    assert m["nanollm_prefix_cache_queries_total"] > m["nanollm_prefix_cache_hits_total"]
    assert m['nanollm_kv_blocks{state="used"}'] == 0  # both finished: their blocks went back
    assert m['nanollm_kv_blocks{state="cached"}'] > 0


def test_kv_blocks_flag_is_checked_before_serving():
    result = subprocess.run([sys.executable, "-m", "nanollm.serve", "--kv-blocks", "0", "--port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "--kv-blocks" in result.stderr
