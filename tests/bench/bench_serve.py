"""`make bench-serve`: what continuous batching buys a server: N concurrent clients against the same N requests sent
one at a time, through nanollm.serve's HTTP API and the official openai client.

The model runs on the cpu backend, as `python -m nanollm.serve` does by default (BENCH_BACKEND=numpy for the
reference). It is GPT-2 124M's shape with random weights (bench_model.SHAPES, written by transformers) and GPT-2's real
tokenizer (/work/shared/data/tokenizers/gpt2, as the tests use it). Every request streams MAX_TOKENS greedy tokens
after a PROMPT_TOKENS-token prompt of its own; EOS is banned by a logit_bias, so every request makes the same number
of tokens. For N = 1, 4, 8, 16 clients (the issue's goal: 8 clients >= 4x the tokens/s of one at a time):

  tokens/s      every completion token over the wall time from the first request sent to the last one done
  TTFT          per request: sent -> its first streamed token (queueing included)
  TPOT          per request: (done - first token) / (its tokens - 1)

  ceiling       the most batching can give here: tokens/s of one PagedRunner decode pass of N rows over that of one
                row (N x t1 / tN), timed on the runner alone. On a CPU a pass of N rows costs more than one row's as
                soon as the matrix products stop being bound by reading the weights, and prefills run one request
                at a time (runner.add), so the concurrent ratio stays below this.

One-at-a-time and concurrent rounds alternate (A B A B ...) on one server, since this machine's speed drifts; medians
of the rounds are reported, with the ratio concurrent / one at a time. BENCH_REPEATS sets the rounds (default 2).
"""
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import openai
import torch

import nanollm
from nanollm.memory import keep_freed_memory
from nanollm.paged_runner import PagedRunner
from nanollm.serve import Server
from tests.bench.bench_model import SHAPES
from tests.generation_fixtures import write_gpt2_tokenizer_files

CLIENTS = (1, 4, 8, 16)
PROMPT_TOKENS, MAX_TOKENS = 32, 24
REPEATS = int(os.environ.get("BENCH_REPEATS", "2"))
NAME = "gpt2-124m-random"
BACKEND = os.environ.get("BENCH_BACKEND", "cpu")


def load_model():
    """GPT-2 124M's shape, random weights, GPT-2's tokenizer."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        SHAPES["GPT-2 124M"]().save_pretrained(d, safe_serialization=True)
        write_gpt2_tokenizer_files(Path(d))
        return nanollm.load(d, backend=BACKEND)


def prompts(n: int) -> list[list[int]]:
    """n distinct prompts of PROMPT_TOKENS token ids (no shared prefix: the prefix cache does not help)."""
    rng = np.random.default_rng(n)
    return [rng.integers(0, 50000, PROMPT_TOKENS).tolist() for _ in range(n)]


def one_request(api, prompt) -> tuple[float, float, int]:
    """Stream one completion; -> (seconds to its first token, seconds per later token, its tokens)."""
    sent, first, tokens = time.perf_counter(), None, 0
    for chunk in api.completions.create(model=NAME, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                        logit_bias={"50256": -100}, stream=True,
                                        stream_options={"include_usage": True}):
        if first is None and chunk.choices:
            first = time.perf_counter()
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    done = time.perf_counter()
    return first - sent, (done - first) / max(tokens - 1, 1), tokens


def one_at_a_time(api, batch) -> tuple[float, list]:
    start = time.perf_counter()
    results = [one_request(api, p) for p in batch]
    return sum(r[2] for r in results) / (time.perf_counter() - start), results


def concurrent(api, batch) -> tuple[float, list]:
    results = [None] * len(batch)

    def client(i):
        results[i] = one_request(api, batch[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(batch))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(r[2] for r in results) / (time.perf_counter() - start), results


def pass_seconds(model, n: int, steps: int = 8) -> float:
    """Seconds of one decode pass of n rows of PROMPT_TOKENS + a few tokens, on a PagedRunner of its own."""
    runner = PagedRunner(model, n_blocks=n * (PROMPT_TOKENS + steps + 16) // 16 + n, block_size=16)
    for i, prompt in enumerate(prompts(n)):
        runner.add(i, prompt)
    runner.step(range(n), [13] * n)  # warm up
    start = time.perf_counter()
    for _ in range(steps):
        runner.step(range(n), [13] * n)
    return (time.perf_counter() - start) / steps


def percentiles(values) -> str:
    p50, p90 = np.percentile(values, [50, 90]) * 1000
    return f"{p50:7.1f} {p90:7.1f}"


def main():
    keep_freed_memory()  # as python -m nanollm.serve does
    model = load_model()
    server = Server(model, NAME, port=0, max_batch=max(CLIENTS), max_queue=64)
    server.start()
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="none", max_retries=0, timeout=600)
    one_request(api, prompts(1)[0])  # warm up: the pool, the allocator
    print(f"GPT-2 124M shape (random weights), GPT-2 tokenizer; {PROMPT_TOKENS}-token prompts, {MAX_TOKENS} greedy "
          f"tokens each, streamed; {REPEATS} alternating rounds, medians; backend {BACKEND}; threads: numpy (BLAS) "
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')}\n")
    print(f"{'clients':>7} {'mode':>13} {'tokens/s':>9} {'TTFT p50 p90 ms':>16} {'TPOT p50 p90 ms':>16} {'ratio':>6} "
          f"{'ceiling':>7}")
    try:
        for n in CLIENTS:
            batch, rates, samples = prompts(n), {"one at a time": [], "concurrent": []}, {}
            for _ in range(REPEATS):
                for mode, run in (("one at a time", one_at_a_time), ("concurrent", concurrent)):
                    rate, results = run(api, batch)
                    assert all(r[2] == MAX_TOKENS for r in results), results
                    rates[mode].append(rate)
                    samples.setdefault(mode, []).extend(results)
            base = statistics.median(rates["one at a time"])
            ceiling = n * pass_seconds(model, 1) / pass_seconds(model, n)
            for mode, values in rates.items():
                rate = statistics.median(values)
                print(f"{n:7d} {mode:>13} {rate:9.1f} {percentiles([r[0] for r in samples[mode]]):>16} "
                      f"{percentiles([r[1] for r in samples[mode]]):>16} {rate / base:5.2f}x "
                      f"{ceiling if mode == 'concurrent' else 1:6.2f}x", flush=True)
    finally:
        api.close()  # its kept-alive connections first, so the server's handlers see no reset
        server.close(grace_s=5)
    print("\ngoal (issue 14): 8 concurrent clients >= 4x the tokens/s of the same requests one at a time")


if __name__ == "__main__":
    main()
