"""What GET /metrics reports, in Prometheus' text format (prometheus.io/docs/instrumenting/exposition_formats).

    nanollm_requests_running / _waiting          gauges: in the batch now, in the queue now
    nanollm_requests_total{outcome=...}          finished, cancelled (the client went away), failed
    nanollm_prompt_tokens_total, nanollm_generation_tokens_total      counters
    nanollm_generation_tokens_per_second         tokens generated over the last TOKENS_PER_S_WINDOW seconds
    nanollm_time_to_first_token_seconds          histogram: request arrival -> its first token (queueing included,
                                                 as vLLM's vllm:time_to_first_token_seconds)
    nanollm_time_per_output_token_seconds        histogram: the gap between a request's consecutive steps
    nanollm_kv_blocks{state=used|free|cached}    gauge: the paged KV pool's blocks (paged_cache.PoolStats)
    nanollm_prefix_cache_queries_total, _hits_total   counters: prompt tokens looked up in the prefix cache, and
                                                 those found there (not recomputed), as vLLM's prefix_cache_*
    nanollm_preemptions_total                    counter: requests sent back to the queue when the pool ran out

The scheduler thread writes, handler threads read: one lock around both.
"""
import threading
import time
from collections import deque

# Bucket bounds in seconds, spanning a tiny model's milliseconds to a large prompt on a CPU.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TOKENS_PER_S_WINDOW = 10.0  # seconds
OUTCOMES = ("finished", "cancelled", "failed")


class Histogram:
    """Cumulative buckets, a sum and a count: Prometheus' histogram type."""

    def __init__(self, name: str, help: str, bounds: tuple):
        self.name, self.help, self.bounds = name, help, bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        out, total = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"], 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts):
            total += n  # Prometheus buckets count every observation <= their bound
            out.append(f'{self.name}_bucket{{le="{bound}"}} {total}')
        return out + [f"{self.name}_sum {self.sum!r}", f"{self.name}_count {self.count}"]


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.ttft = Histogram("nanollm_time_to_first_token_seconds", "Seconds from a request's arrival to its first "
                              "token.", TTFT_BUCKETS)
        self.tpot = Histogram("nanollm_time_per_output_token_seconds", "Seconds between a request's consecutive "
                              "tokens.", TPOT_BUCKETS)
        self.prompt_tokens = self.generation_tokens = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.recent = deque()  # (perf_counter, tokens) of each step in the last TOKENS_PER_S_WINDOW seconds
        self.started = time.perf_counter()
        self.kv = None  # paged_cache.PoolStats after the scheduler's latest iteration; None before the first
        self.preemptions = 0

    def step(self, tokens: int, now: float, ttft: float | None = None, gap: float | None = None,
             prompt_tokens: int = 0) -> None:
        """One request's step made `tokens` tokens: its first (its prefill of prompt_tokens; ttft: seconds since it
        arrived) or a later one (gap: seconds since its previous step)."""
        with self.lock:
            self.generation_tokens += tokens
            self.prompt_tokens += prompt_tokens
            self.recent.append((now, tokens))
            if ttft is not None:
                self.ttft.observe(ttft)
            if gap is not None:
                self.tpot.observe(gap)

    def pool(self, stats) -> None:
        """The KV pool's paged_cache.PoolStats, after an iteration."""
        with self.lock:
            self.kv = stats

    def preempted(self) -> None:
        with self.lock:
            self.preemptions += 1

    def finished(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1

    def tokens_per_s(self, now: float) -> float:
        while self.recent and self.recent[0][0] < now - TOKENS_PER_S_WINDOW:
            self.recent.popleft()
        window = min(TOKENS_PER_S_WINDOW, now - self.started)
        return sum(n for _, n in self.recent) / window if window > 0 else 0.0

    def render(self, running: int, waiting: int) -> str:
        """The exposition text; running and waiting are the scheduler's counts now."""
        with self.lock:
            lines = [*gauge("nanollm_requests_running", "Requests in the running batch.", running),
                     *gauge("nanollm_requests_waiting", "Requests queued for the batch.", waiting),
                     "# HELP nanollm_requests_total Requests that left the scheduler, by outcome.",
                     "# TYPE nanollm_requests_total counter",
                     *(f'nanollm_requests_total{{outcome="{o}"}} {n}' for o, n in self.outcomes.items()),
                     *counter("nanollm_prompt_tokens_total", "Prompt tokens prefilled.", self.prompt_tokens),
                     *counter("nanollm_generation_tokens_total", "Tokens generated.", self.generation_tokens),
                     *gauge("nanollm_generation_tokens_per_second", f"Tokens generated per second over the last "
                            f"{TOKENS_PER_S_WINDOW:g} s.", self.tokens_per_s(time.perf_counter())),
                     *self.ttft.lines(), *self.tpot.lines(), *self.kv_lines()]
        return "\n".join(lines) + "\n"


    def kv_lines(self) -> list[str]:
        kv = self.kv
        if kv is None:  # no request yet: the pool is made for the first one's model
            return counter("nanollm_preemptions_total", "Requests preempted for lack of KV blocks.", self.preemptions)
        return [("# HELP nanollm_kv_blocks KV cache blocks of the paged pool, by state (cached: full blocks nobody "
                 "holds, kept for prefix hits)."), "# TYPE nanollm_kv_blocks gauge",
                *(f'nanollm_kv_blocks{{state="{k}"}} {getattr(kv, k)}' for k in ("used", "free", "cached")),
                *counter("nanollm_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
                         kv.prompt_tokens),
                *counter("nanollm_prefix_cache_hits_total", "Prompt tokens found in the prefix cache (not "
                         "recomputed).", kv.prefix_hits),
                *counter("nanollm_preemptions_total", "Requests preempted for lack of KV blocks.", self.preemptions)]


def gauge(name: str, help: str, value) -> list[str]:
    return [f"# HELP {name} {help}", f"# TYPE {name} gauge", f"{name} {value!r}"]


def counter(name: str, help: str, value: int) -> list[str]:
    return [f"# HELP {name} {help}", f"# TYPE {name} counter", f"{name} {value}"]
