"""The scheduler: one thread owns the model and advances every running request by one step per iteration, all of
them in ONE batched forward pass.

    handler threads --submit(Job)--> waiting (bounded: max_queue) --admit (up to max_batch)--> running
    running --step_all: one pass, a row per running sequence--> Tokens --> each Job's event queue --> its handler

Iteration-level scheduling (Orca, Yu et al., OSDI 2022; vLLM's scheduler): at every iteration every running request
advances one token, then waiting requests join the running set up to max_batch, and a request leaves the moment it
finishes or its client goes away. A new request does not wait for the requests before it to finish: it is prefilled
as it joins, and its next token comes with everyone else's in the next iteration's pass.

The model runs in a PagedRunner (paged_runner.py): every row of every request is a sequence of one paged KV cache, so
rows of any length share one decode pass (B, 1) -> (B, V), which reads the weights once for all of them, and prompts
that share a prefix (a system prompt) share its cached blocks. Choosing stays per request: each request is its own
engine Batch (generation.Batch: its own seeded random generator, settings, penalties' history and stops), fed its
rows of the pass's logits through Batch.choose, as nanollm.generate's loop feeds it. So a request gets the tokens
generate gives it alone, however many others run beside it (up to the last bits of float32 arithmetic, which a
batched matmul sums in another order than a single row's).

When the pool runs out of blocks (runner.add or runner.step raise PoolExhausted, the runner unchanged), a joining
request waits at the head of the queue, and on a step the newest running request is preempted as vLLM does: its
blocks go back (full ones stay cached) and it rejoins later with its prompt plus the tokens it has so far.
"""
import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..generation import Batch
from ..paged_cache import PoolExhausted, block_bytes
from ..paged_runner import PagedRunner
from .api import APIError, Request
from .metrics import Metrics

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # the engine's reasons -> OpenAI's
BLOCK_SIZE = 16  # tokens per KV block, vLLM's default
KV_MEMORY = 2 << 30  # bytes the default pool may take (2 GiB), unless that is less than one full context
SHORT_ID = 6  # hex digits of a request id's tail that name it in snapshot(): enough to tell a batch's apart


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
        self.key: int | None = None  # row b is the runner's sequence (key, b); set when the job first joins
        self.held: list[int] = []  # rows whose sequences the runner holds now
        self.last_step: float | None = None  # perf_counter() of its latest step
        self.raw: dict[int, np.ndarray] = {}  # row -> the raw logits (V,) of its latest choice (logprobs only)

    def remember(self, row: int, choice) -> None:
        """Batch's on_choice: keep the model's own logits of the choice, before any processing."""
        self.raw[row] = choice.raw

    def cancel(self) -> None:
        self.cancelled.set()

    def sequence(self, row: int) -> tuple[int, int]:
        return self.key, row

    def inputs(self) -> list:
        """Every running row's next decode input: (its sequence, the token it chose last)."""
        return [(self.sequence(b), int(self.batch.last[b])) for b in self.batch.running]

    def logits(self, rows: np.ndarray) -> np.ndarray:
        """The running rows' logits (R, V) -> every row's (B, V) for Batch.choose, zeros for rows that stopped:
        generate's Batch runs those too and ignores their choice, so they change nothing but the pass's cost."""
        full = np.zeros((len(self.batch.seqs), rows.shape[1]), rows.dtype)  # (B, V)
        full[self.batch.running] = rows
        return full

    def tokens(self, events: list) -> list[Token]:
        """Batch.choose's events [(row, token, piece)] -> Tokens, with each row's finish reason and logprobs."""
        top = self.request.top_logprobs
        return [Token(row, token, piece, FINISH_REASONS.get(self.batch.seqs[row].finish_reason),
                      None if top is None else logprobs_of(self.raw[row], token, top))
                for row, token, piece in events]


class Scheduler:
    """The model's one thread: a bounded waiting queue, the running set, and the loop that steps it."""

    def __init__(self, max_batch: int, max_queue: int, metrics: Metrics, runner: PagedRunner):
        self.max_batch, self.max_queue, self.metrics = max_batch, max_queue, metrics
        self.runner = runner  # the KV pool every request's sequences share (Server builds it: default_runner)
        self.keys = itertools.count()  # each job's runner key
        self.lock = threading.Condition()  # guards waiting, accepting, deadline
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []  # the scheduler thread's alone, oldest first
        self.accepting = True
        self.deadline: float | None = None  # shutting down: running requests still unfinished then are cancelled
        self.iteration = 0  # iterations done; with `view`, guarded by lock and written by publish
        self.view: list[dict] = []  # the running requests as the last iteration left them (describe), for snapshot
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

    def snapshot(self) -> dict:
        """What the page's "in the batch now" table shows: the iteration number, each running request as the last
        iteration left it (describe), and the waiting requests' short ids, oldest first."""
        with self.lock:
            return {"iteration": self.iteration, "running": self.view,
                    "waiting": [job.request.id[-SHORT_ID:] for job in self.waiting]}

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
                late = self.deadline is not None and time.perf_counter() > self.deadline
            if late:
                for job in list(self.running):
                    self.leave(job, shutting_down("shut down before this request finished"), "cancelled")
            self.step_all()
            self.admit()
            if self.runner is not None:
                self.metrics.pool(self.runner.stats())
            self.publish()

    def publish(self) -> None:
        """Write down who is in the batch after this iteration, for snapshot(). Only this thread may read the running
        jobs (they change as it steps them), so it copies their few numbers here; beside a forward pass that costs
        nothing, and a reader never waits for a pass."""
        view = [self.describe(job) for job in self.running]  # a new list each time: readers may hold the old one
        with self.lock:
            self.iteration += 1
            self.view = view

    def describe(self, job: Job) -> dict:
        """One running request's numbers: its short id, rows (sequences; n choices per prompt), tokens generated
        and prompt tokens over all its rows, and the KV blocks its running rows hold (a shared prefix block counts
        for each holder, as its reference count does)."""
        sequences = self.runner.cache.sequences
        return {"id": job.request.id[-SHORT_ID:], "rows": len(job.batch.seqs),
                "generated": sum(len(seq.token_ids) for seq in job.batch.seqs),
                "prompt_tokens": sum(len(seq.prompt_ids) for seq in job.batch.seqs),
                "kv_blocks": sum(len(sequences[job.sequence(b)].table) for b in job.held)}

    def admit(self) -> None:
        """Waiting jobs join the running set, oldest first, up to max_batch: each is prefilled and its first tokens
        go out. One the pool cannot hold yet goes back to the head of the queue until running ones free blocks;
        one the pool cannot hold even alone fails (503)."""
        while len(self.running) < self.max_batch:
            with self.lock:
                if not self.waiting:
                    return
                job = self.waiting.popleft()
            if job.cancelled.is_set():  # its client left while it waited
                self.metrics.finished("cancelled")
                continue
            try:
                events = job.batch.choose(job.logits(self.join(job)))
            except PoolExhausted as e:
                if self.running:
                    self.requeue(job)
                    return
                self.leave(job, engine_error(e), "failed")
                continue
            except Exception as e:  # noqa: BLE001 -- the engine's failure is this request's alone; the loop goes on
                self.leave(job, engine_error(e), "failed")
                continue
            self.running.append(job)
            self.emit(job, events)

    def join(self, job: Job) -> np.ndarray:
        """Prefill the job's running rows through the runner (each its prompt, plus the tokens it has so far when
        it was preempted: recomputation), sharing cached prefix blocks. -> their logits (R, V). All rows or none."""
        if job.key is None:
            job.key = next(self.keys)
            job.batch.begin()
        rows = []
        try:
            for b in job.batch.running:
                seq = job.batch.seqs[b]
                rows.append(self.runner.add(job.sequence(b), [*seq.prompt_ids, *seq.token_ids]))  # (V,)
                job.held.append(b)
        except BaseException:
            self.release(job)
            raise
        return np.stack(rows)  # (R, V)

    def step_all(self) -> None:
        """One decode step of every running request in ONE forward pass: the last token of every running row of
        every job goes to runner.step together, and each job chooses from its own rows of the logits (Batch.choose:
        its settings, its seeded draw, its stops). Decode reads every weight once per pass, so this costs about
        what one request's step costs, however many run. When the pool lacks a block for some row's next token,
        the newest job is preempted and the pass retried without it."""
        for job in list(self.running):
            if job.cancelled.is_set():
                self.leave(job, None, "cancelled")
        while self.running:
            jobs = list(self.running)
            inputs = [pair for job in jobs for pair in job.inputs()]
            try:
                logits = self.runner.step([seq for seq, _ in inputs], [token for _, token in inputs])  # (R, V)
                break
            except PoolExhausted as e:
                self.preempt(e)
            except Exception as e:  # noqa: BLE001 -- the pass was everyone's: each request hears why; the loop goes on
                for job in jobs:
                    self.leave(job, engine_error(e), "failed")
        else:
            return
        start = 0
        for job in jobs:
            rows = logits[start: start + len(job.batch.running)]  # (R_job, V)
            start += len(rows)
            try:
                events = job.batch.choose(job.logits(rows))
            except Exception as e:  # noqa: BLE001 -- the engine's failure is this request's alone
                self.leave(job, engine_error(e), "failed")
                continue
            self.emit(job, events)

    def preempt(self, e: PoolExhausted) -> None:
        """The newest running job gives its blocks back and waits at the head of the queue to rejoin (vLLM's
        preemption by recomputation); when it runs alone, the pool cannot hold it at all and it fails (503)."""
        job = self.running[-1]
        if len(self.running) == 1:
            self.leave(job, engine_error(e), "failed")
            return
        self.release(job)
        self.running.remove(job)
        self.metrics.preempted()
        self.requeue(job)

    def requeue(self, job: Job) -> None:
        """A job the pool cannot hold now waits at the head of the queue, whatever max_queue says (it was admitted
        once); while shutting down it is told so (503) instead, since the queue is no longer served."""
        with self.lock:
            if self.accepting:
                self.waiting.appendleft(job)
                return
        job.events.put(shutting_down("shut down before this request finished"))
        self.metrics.finished("cancelled")

    def emit(self, job: Job, events: list) -> None:
        """A job's chosen tokens go out; rows that stopped free their blocks; it leaves when all have stopped."""
        now = time.perf_counter()
        first = job.last_step is None
        self.metrics.step(len(events), now, ttft=now - job.arrival if first else None,
                          gap=None if first else now - job.last_step,
                          prompt_tokens=sum(len(p) for p in job.request.prompts) if first else 0)
        job.last_step = now
        job.events.put(job.tokens(events))
        for b in [b for b in job.held if b not in job.batch.running]:
            self.runner.remove(job.sequence(b))
            job.held.remove(b)
        if not job.batch.running:
            self.leave(job, None, "finished")

    def release(self, job: Job) -> None:
        """Every sequence the runner holds for the job goes back to the pool."""
        for b in job.held:
            self.runner.remove(job.sequence(b))
        job.held = []

    def leave(self, job: Job, outcome: APIError | None, name: str) -> None:
        """The job leaves (the running set, if it was in it) and frees its blocks; its handler hears `outcome`
        (None: done)."""
        self.release(job)
        if job in self.running:
            self.running.remove(job)
        job.events.put(outcome)
        self.metrics.finished(name)


def default_runner(model, max_batch: int) -> PagedRunner:
    """A pool of blocks for max_batch sequences of the model's whole context, at most KV_MEMORY bytes of them but
    never less than one whole context: memory follows the tokens in flight, so most requests take far less."""
    per_context = -(-model.config.max_seq_len // BLOCK_SIZE)  # blocks for one full-context sequence
    budget = KV_MEMORY // block_bytes(model.config, BLOCK_SIZE)
    return PagedRunner(model, max(per_context, min(max_batch * per_context, budget)), BLOCK_SIZE)


def shutting_down(what: str) -> APIError:
    return APIError(503, f"the server {what}", code="shutting_down", kind="server_error")


def engine_error(e: Exception) -> APIError:
    """What the engine raised during a step, as the request's error: out of memory is 503 (try later, or ask for
    less), anything else a 500 naming it. The server keeps serving either way."""
    if isinstance(e, MemoryError):
        return APIError(503, f"not enough memory for this request now: {e}", code="out_of_memory",
                        kind="server_error")
    return APIError(500, f"the engine failed: {type(e).__name__}: {e}", kind="server_error")
