"""Dynamic batching: concurrent requests to one model become one `pipeline.sample` call, and concurrent texts
decode as one batch that requests join and leave while it runs (continuous batching).

Each model has one worker thread that owns generation. A request is a `Job`, queued first come first served; the
worker takes the oldest job and, if it may be batched, keeps taking the jobs at the front of the queue that have
the same batching key for up to `max_wait_ms` or until `max_batch` samples, runs them as one call (each request's
conditioning repeated for its rows: class ids, prompts), and splits the samples back by request. The key is
everything but the samples' count and conditioning: the family options, and whether a conditioning is given at
all.

Texts are decoded as rows of a running batch (continuous batching), through the family's `running_rows`
(`models.decoding.RunningRows`), when the family has it and the options allow (no beams): streamed requests and
whole-text requests alike. The waiting requests with the same key start as one batch, one row per sample, and
between two decoding steps the requests that have arrived since (at the front of the queue, with the same key,
while the batch has fewer than `max_batch` rows) join it with one prefill: a new request waits one step, not a whole
batch. A stream's text goes to its own queue as it comes; a whole-text request returns when all its rows have
ended. A row that ends (end token, stop string, max_new_tokens) or whose client has gone leaves the batch at once,
freeing its place. The model's lock is held per step, so captions and other users of the model interleave with a
long-running batch. A job with another key at the front of the queue stops the joining: the batch drains and that
job runs next, so no request waits behind an endless stream of others.

Seeds: a request with a seed is served alone, so the same seed always gives the same samples (a batch's random
draws depend on who shares it). Requests without a seed are drawn from the batch's own fresh generator, and batched.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from genforge.sampling import IncrementalText


def fresh_seed() -> int:
    """A seed for a request that gave none (drawn from the server's global RNG)."""
    return int(torch.randint(0, 2**62, ()).item())


class Pieces(Protocol):
    """Where a stream's pieces go (a queue.Queue, or the server's StreamPieces)."""

    def put(self, item: tuple[str, Any]) -> None: ...


@dataclass
class Job:
    n: int
    cond: Any  # this request's conditioning (a class id, a prompt), None for the config's default
    options: dict[str, Any]
    seed: int | None
    pieces: Pieces | None = None  # a stream: ("text", piece) ..., then ("done", None) or ("error", message);
    #                               None: the result comes whole
    gone: threading.Event = field(default_factory=threading.Event)  # a stream's client disconnected
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    rows: bool = False  # decoded as rows of a running batch (set by the batcher: streams, and texts it can decode so)

    @property
    def key(self) -> str | None:
        """Jobs with equal keys may share a batch; None: this job runs alone."""
        if self.seed is not None:
            return None
        return json.dumps({"options": self.options, "conditioned": self.cond is not None, "rows": self.rows},
                          sort_keys=True, default=str)


@dataclass
class Row:
    """One row of a running batch: its job, its index among the job's rows, the prompt's token ids, and its tokens so
    far (a stream's through its IncrementalText, which also finds the new text each token adds)."""

    job: Job
    index: int
    prompt: list[int]
    text: IncrementalText | None = None  # streams only
    tokens: list[int] = field(default_factory=list)


class Batcher:
    def __init__(self, pipeline: Any, lock: threading.Lock, max_batch: int, max_wait_ms: float):
        self.pipeline = pipeline
        self.lock = lock  # the model's lock: captions use the model outside the batcher
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.pending: deque[Job] = deque()  # first come, first served
        self.arrived = threading.Condition()  # guards `pending`; notified when a job is put
        self.batch_sizes: Counter[int] = Counter()  # requests per executed batch (a stream batch: all that joined)
        self.joined = 0  # requests that joined a batch already decoding, for /metrics
        self.running = 0  # rows of the running batch now, for /metrics
        self.thread = threading.Thread(target=self._work, name="genforge-batcher", daemon=True)
        self.thread.start()

    def put(self, job: Job) -> None:
        """Queue `job`; a stream's results arrive in its `pieces`, a whole result through `job.done`."""
        job.rows = job.pieces is not None or (job.seed is None and self._decodes_rows(job.options))
        with self.arrived:
            self.pending.append(job)
            self.arrived.notify()

    def submit(self, job: Job) -> Any:
        """Run `job` (batched with others where it may be) and return its samples; its errors are raised here."""
        self.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    @property
    def waiting(self) -> int:
        return len(self.pending)

    def _next(self, key: str | None = None, room: int = 0, deadline: float | None = None) -> Job | None:
        """The oldest job (waiting for one); with `key`, the oldest job only if it has that key and at most `room`
        samples (waiting until `deadline` for one to arrive; None: not waiting)."""
        with self.arrived:
            while not self.pending:
                if key is not None and (deadline is None or not self.arrived.wait(deadline - time.monotonic())):
                    return None
                if key is None:
                    self.arrived.wait()
            job = self.pending[0]
            if key is not None and (job.key != key or job.n > room):
                return None
            return self.pending.popleft()

    def _work(self) -> None:
        while True:
            first = self._next()
            assert first is not None
            batch, total = [first], first.n
            if first.key is not None and self.max_batch > 1:
                deadline = time.monotonic() + self.max_wait
                while total < self.max_batch and (job := self._next(first.key, self.max_batch - total, deadline)):
                    batch.append(job)
                    total += job.n
            self._run(batch, total)

    def _decodes_rows(self, options: dict[str, Any]) -> bool:
        """Whether texts with these options can be decoded as rows of a running batch (no beams; the family has
        `running_rows`). A request with a seed runs as `pipeline.sample` does, alone."""
        try:
            return self.pipeline.kind.name == "text" and self.pipeline.can_stream(**options)
        except Exception:  # noqa: BLE001 - bad options: pipeline.sample reports them
            return False

    def _run(self, batch: list[Job], total: int) -> None:
        if batch[0].rows:
            self._decode_rows(batch)
            return
        try:
            samples = self._sample(batch, total)
        except Exception as exc:  # noqa: BLE001 - raised in the waiting request's own thread
            if len(batch) > 1:  # one bad request must not fail the others: run each alone
                for job in batch:
                    self._run([job], job.n)
                return
            batch[0].error = exc
            batch[0].done.set()
            return
        self.batch_sizes[len(batch)] += 1
        start = 0
        for job in batch:
            job.result = samples[start:start + job.n]
            start += job.n
            job.done.set()

    def _sample(self, batch: list[Job], total: int) -> Any:
        first = batch[0]
        seed = first.seed if first.seed is not None else fresh_seed()
        if len(batch) == 1:
            cond = first.cond  # one request: exactly what pipeline.sample(n, seed=, cond=) gives
        elif first.cond is None:
            cond = None
        else:
            cond = [job.cond for job in batch for _ in range(job.n)]
        with self.lock, torch.no_grad():
            return self.pipeline.sample(total, seed=seed, cond=cond, **first.options)

    def _decode_rows(self, batch: list[Job]) -> None:
        """Decode the batch's prompts as rows of one running batch, adding the jobs that arrive meanwhile: a stream's
        new text goes to its queue as it comes, a text request's result when all its rows have ended."""
        pipeline, first = self.pipeline, batch[0]
        seed = first.seed if first.seed is not None else fresh_seed()
        try:
            with self.lock:
                rows = pipeline.module.running_rows(generator=torch.Generator(pipeline.device).manual_seed(seed),
                                                    decode=pipeline.tokenizer.decode,
                                                    **pipeline.options(**first.options))
        except Exception as exc:  # noqa: BLE001 - reported to each request
            for job in batch:
                fail(job, exc)
            return
        live: dict[int, Row] = {}  # handle -> its row
        results: dict[int, list[str | None]] = {}  # id(job) -> the texts of a text request's rows, as they end
        served = self._admit(rows, batch, live, results)
        try:
            while live:
                with self.lock, torch.inference_mode():
                    chosen = rows.choose()
                for handle, token, ended in chosen:
                    row = live[handle]
                    job = row.job
                    if row.text is None:  # a whole text: decoded once, when the row ends
                        row.tokens.append(token)
                    elif (piece := row.text.add(token)) and not job.gone.is_set():
                        job.pieces.put(("text", piece))
                    if ended or job.gone.is_set():
                        rows.drop(handle)  # ended, or its client left: its place is free from the next step
                        del live[handle]
                        self._finish(row, results)
                with self.lock, torch.inference_mode():
                    rows.advance()
                self.running = len(rows)
                if first.key is not None:  # requests that arrived meanwhile join between two steps
                    newcomers = []
                    while (job := self._next(first.key, self.max_batch - len(rows) - sum(j.n for j in newcomers))):
                        newcomers.append(job)
                    if newcomers:
                        added = self._admit(rows, newcomers, live, results)
                        served += added
                        self.joined += added
        except Exception as exc:  # noqa: BLE001 - reported to each request still decoding
            for job in {id(row.job): row.job for row in live.values()}.values():
                fail(job, exc)
        self.running = 0
        if served:
            self.batch_sizes[served] += 1

    def _finish(self, row: Row, results: dict[int, list[str | None]]) -> None:
        """A row has left the batch: a stream ends; a text request returns once all its rows have."""
        job = row.job
        if job.pieces is not None:
            if not job.gone.is_set() and row.text is not None:
                job.pieces.put(("text", row.text.rest()))
            job.pieces.put(("done", None))  # every queue ends with "done" or "error"
            return
        texts = results[id(job)]
        texts[row.index] = self.pipeline.tokenizer.decode(row.prompt + row.tokens)
        if None not in texts:
            del results[id(job)]
            job.result = texts
            job.done.set()

    def _admit(self, rows: Any, jobs: list[Job], live: dict[int, Row], results: dict[int, list[str | None]]) -> int:
        """Add each job's rows to `rows` (one prefill for all of them); a job whose prompt the model refuses gets
        its error and the others go on. Returns how many jobs were added."""
        pipeline, tokenizer = self.pipeline, self.pipeline.tokenizer
        accepted: list[tuple[Job, str, list[int]]] = []
        for job in jobs:
            try:
                prompt = pipeline.prompt_or_default(job.cond)
                accepted.append((job, prompt, rows.validate([tokenizer.encode(prompt)])[0]))
            except Exception as exc:  # noqa: BLE001 - this request's own error
                fail(job, exc)
        if not accepted:
            return 0
        try:
            with self.lock, torch.inference_mode():
                handles = rows.add([ids for job, _, ids in accepted for _ in range(job.n)])
        except Exception as exc:  # noqa: BLE001 - reported to each request
            for job, _, _ in accepted:
                fail(job, exc)
            return 0
        self.running = len(rows)
        handles_left = iter(handles)
        for job, prompt, ids in accepted:
            if job.pieces is not None:
                job.pieces.put(("text", prompt))
            else:
                results[id(job)] = [None] * job.n
            for index in range(job.n):
                text = IncrementalText(tokenizer.decode) if job.pieces is not None else None
                live[next(handles_left)] = Row(job, index, ids, text)
        return len(accepted)


def fail(job: Job, exc: BaseException) -> None:
    """Report `exc` to the job's client: as its stream's last event, or raised in its request's thread."""
    if job.pieces is not None:
        job.pieces.put(("error", str(exc)))
    else:
        job.error = exc
        job.done.set()
