"""The scheduler: one thread owns the model and advances every running request by one step per iteration.

    handler threads --submit(Job)--> waiting (bounded: max_queue) --admit (up to max_batch)--> running
    running --step_all: one step each--> Tokens --> each Job's event queue --> its handler thread --> the client

Iteration-level scheduling (Orca, Yu et al., OSDI 2022; vLLM's scheduler): at every iteration the waiting requests
join the running set up to max_batch, every running request advances one step, and a request leaves the moment it
finishes or its client goes away. A new request does not wait for the requests before it to finish: its prefill is
its first step, at the next iteration.

Each request is its own engine Batch (generation.Batch: its rows, its own KV cache, its own seeded random generator
and settings), driven through Batch.steps(), the same loop nanollm.generate runs. So what a request gets is exactly
what generate gives for it alone, however many others run beside it. What that costs, and what the paged KV cache
will change, is `Scheduler.step_all`'s docstring.
"""
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..generation import Batch
from .api import APIError, Request
from .metrics import Metrics

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # the engine's reasons -> OpenAI's


@dataclass
class Token:
    """One token of one row, as the scheduler hands it to the request's handler thread."""

    row: int  # the row of the request's batch: its choice index
    token: int
    piece: str  # the text it released ("" while a stop string or a character is still incomplete)
    finish_reason: str | None  # "stop" or "length" when the row ends with this token
    logprobs: tuple | None  # (its logprob, [(token id, logprob), ...] the top alternatives) when asked for


def logprobs_of(raw: np.ndarray, token: int, top: int) -> tuple[float, list]:
    """The model's log-probabilities: log_softmax of its raw logits (V,), in float64, for `token` and for the `top`
    most likely tokens, most likely first. Example: raw [0, ln 3], token 0, top 1 -> (ln 1/4, [(1, ln 3/4)])."""
    x = raw.astype(np.float64)  # (V,)
    logp = x - x.max() - np.log(np.exp(x - x.max()).sum())  # (V,)
    best = np.argsort(-logp, kind="stable")[:top]  # (top,)
    return float(logp[token]), [(int(i), float(logp[i])) for i in best]


class Job:
    """One request inside the server: its engine Batch, the queue its tokens go out on, and whether it is wanted."""

    def __init__(self, model, request: Request):
        self.request = request
        wants_logprobs = request.top_logprobs is not None
        self.batch = Batch(model, request.rows, request.settings, on_choice=self.remember if wants_logprobs else None)
        self.events = queue.SimpleQueue()  # lists of Token; then None (done) or an APIError
        self.cancelled = threading.Event()  # set by the handler when its client went away or it gave up
        self.arrival = time.perf_counter()
        self.steps = None  # the Batch's step generator, from the iteration the job joins the running set
        self.last_step: float | None = None  # perf_counter() of its latest step
        self.raw: dict[int, np.ndarray] = {}  # row -> the raw logits (V,) of its latest choice (logprobs only)

    def remember(self, row: int, choice) -> None:
        """Batch's on_choice: keep the model's own logits of the choice, before any processing."""
        self.raw[row] = choice.raw

    def cancel(self) -> None:
        self.cancelled.set()

    def tokens(self, events: list) -> list[Token]:
        """Batch.steps' events [(row, token, piece)] -> Tokens, with each row's finish reason and logprobs."""
        top = self.request.top_logprobs
        return [Token(row, token, piece, FINISH_REASONS.get(self.batch.seqs[row].finish_reason),
                      None if top is None else logprobs_of(self.raw[row], token, top))
                for row, token, piece in events]


class Scheduler:
    """The model's one thread: a bounded waiting queue, the running set, and the loop that steps it."""

    def __init__(self, max_batch: int, max_queue: int, metrics: Metrics):
        self.max_batch, self.max_queue, self.metrics = max_batch, max_queue, metrics
        self.lock = threading.Condition()  # guards waiting, accepting, deadline
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []  # the scheduler thread's alone
        self.accepting = True
        self.deadline: float | None = None  # shutting down: running requests still unfinished then are cancelled
        self.thread = threading.Thread(target=self.loop, name="nanollm-scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job, or refuse it: 429 when max_queue jobs already wait, 503 while shutting down."""
        with self.lock:
            if not self.accepting:
                raise shutting_down("is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise APIError(429, f"the server is busy: {self.max_queue} requests already wait for the "
                                    f"{self.max_batch} running ones; retry shortly", code="queue_full",
                               kind="server_overloaded")
            self.waiting.append(job)
            self.lock.notify()

    def counts(self) -> tuple[int, int]:
        """(running, waiting) now, for /metrics."""
        with self.lock:
            return len(self.running), len(self.waiting)

    def stop(self, grace_s: float) -> None:
        """Shut down: refuse new jobs and drop the waiting ones (503), let running ones finish for up to grace_s
        seconds, cancel what is left (503), and return when the thread has ended."""
        with self.lock:
            self.accepting = False
            self.deadline = time.perf_counter() + grace_s
            while self.waiting:
                self.waiting.popleft().events.put(shutting_down("shut down before this request started"))
            self.lock.notify()
        self.thread.join()

    def loop(self) -> None:
        while True:
            with self.lock:
                while self.accepting and not self.waiting and not self.running:
                    self.lock.wait()
                if not self.accepting and not self.running:
                    return
                self.admit()
                late = self.deadline is not None and time.perf_counter() > self.deadline
            if late:
                for job in list(self.running):
                    self.leave(job, shutting_down("shut down before this request finished"), "cancelled")
            self.step_all()

    def admit(self) -> None:
        """Waiting jobs join the running set, oldest first, up to max_batch (called with the lock held)."""
        while self.waiting and len(self.running) < self.max_batch:
            job = self.waiting.popleft()
            if job.cancelled.is_set():  # its client left while it waited
                self.metrics.finished("cancelled")
                continue
            job.steps = job.batch.steps()
            self.running.append(job)

    def step_all(self) -> None:
        """One step of every running request, one engine Batch after another: the seam of continuous batching.

        Today a step of N running requests is N forward passes (a prefill for those that just joined, one decode
        position per row for the rest), each reading every weight once. Decode is bound by reading the weights, so
        this costs N times what one batched pass would. One batched pass needs every request's keys and values in
        one cache whatever their lengths: the paged KV cache (paged_cache.py, a pool of blocks and a block table per
        sequence). With it, this method becomes: gather the last token and position of every running row, run ONE
        forward pass whose attention reads each row's keys through its block table, then hand each request its row
        of logits for its own processing, seeded draw and stops (Batch.choose), which stay per request as here.
        """
        for job in list(self.running):
            if job.cancelled.is_set():
                self.leave(job, None, "cancelled")
            else:
                self.advance(job)

    def advance(self, job: Job) -> None:
        """One step of one job: its tokens go out; it leaves when its rows have all stopped, or when it failed."""
        try:
            events = next(job.steps, None)
        except Exception as e:  # noqa: BLE001 -- the engine's failure is this request's alone; the loop goes on
            self.leave(job, engine_error(e), "failed")
            return
        now = time.perf_counter()
        if events is not None:
            first = job.last_step is None
            self.metrics.step(len(events), now, ttft=now - job.arrival if first else None,
                              gap=None if first else now - job.last_step,
                              prompt_tokens=sum(len(p) for p in job.request.prompts) if first else 0)
            job.last_step = now
            job.events.put(job.tokens(events))
        if events is None or not job.batch.running:
            self.leave(job, None, "finished")

    def leave(self, job: Job, outcome: APIError | None, name: str) -> None:
        """The job leaves the running set; its handler hears `outcome` (None: done). Its cache goes with its Batch."""
        self.running.remove(job)
        job.steps.close()
        job.events.put(outcome)
        self.metrics.finished(name)


def shutting_down(what: str) -> APIError:
    return APIError(503, f"the server {what}", code="shutting_down", kind="server_error")


def engine_error(e: Exception) -> APIError:
    """What the engine raised during a step, as the request's error: out of memory is 503 (try later, or ask for
    less), anything else a 500 naming it. The server keeps serving either way."""
    if isinstance(e, MemoryError):
        return APIError(503, f"not enough memory for this request now: {e}", code="out_of_memory",
                        kind="server_error")
    return APIError(500, f"the engine failed: {type(e).__name__}: {e}", kind="server_error")
