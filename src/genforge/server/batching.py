"""Dynamic batching: concurrent requests to one model become one `pipeline.sample` call.

Each model has one worker thread that owns generation. A request is a `Job`; the worker takes the oldest job and,
if it may be batched, keeps taking jobs with the same batching key for up to `max_wait_ms` or until `max_batch`
samples, runs them as one call (each request's conditioning repeated for its rows: class ids, prompts), and splits
the samples back by request. The key is everything but the samples' count and conditioning: the family options,
and whether a conditioning is given at all.

Streams (text as it is generated) are batched the same way: streamed requests with the same options that are
waiting when a batch starts decode together, one row each (`module.stream` yields one token per row per step), and
each row's text goes to its own request's queue as it comes. A row whose client has gone stops being sent; the
batch stops early when every client has gone. A stream that arrives while a batch runs waits for the next one.

Seeds: a request with a seed is served alone, so the same seed always gives the same samples (a batch's random
draws depend on who shares it). Requests without a seed are drawn from the batch's own fresh generator, and batched.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from genforge.sampling import IncrementalText


def fresh_seed() -> int:
    """A seed for a request that gave none (drawn from the server's global RNG)."""
    return int(torch.randint(0, 2**62, ()).item())


@dataclass
class Job:
    n: int
    cond: Any  # this request's conditioning (a class id, a prompt), None for the config's default
    options: dict[str, Any]
    seed: int | None
    pieces: queue.Queue[tuple[str, Any]] | None = None  # a stream: ("text", piece) ..., then ("done", None) or
    #                                                     ("error", message); None: the result comes whole
    gone: threading.Event = field(default_factory=threading.Event)  # a stream's client disconnected
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    @property
    def key(self) -> str | None:
        """Jobs with equal keys may share a batch; None: this job runs alone."""
        if self.seed is not None:
            return None
        return json.dumps({"options": self.options, "conditioned": self.cond is not None,
                           "stream": self.pieces is not None}, sort_keys=True, default=str)


class Batcher:
    def __init__(self, pipeline: Any, lock: threading.Lock, max_batch: int, max_wait_ms: float):
        self.pipeline = pipeline
        self.lock = lock  # the model's lock: streams and captions use the model outside the batcher
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.batch_sizes: Counter[int] = Counter()  # requests per executed batch, for /metrics
        self.thread = threading.Thread(target=self._work, name="genforge-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Any:
        """Run `job` (batched with others where it may be) and return its samples; its errors are raised here."""
        self.jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    @property
    def waiting(self) -> int:
        return self.jobs.qsize()

    def _work(self) -> None:
        held: Job | None = None
        while True:
            first = held or self.jobs.get()
            held = None
            batch, total = [first], first.n
            if first.key is not None and self.max_batch > 1:
                deadline = time.monotonic() + self.max_wait
                while total < self.max_batch:
                    try:
                        job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if job.key == first.key and total + job.n <= self.max_batch:
                        batch.append(job)
                        total += job.n
                    else:
                        held = job  # the next batch starts with it
                        break
            self._run(batch, total)

    def _run(self, batch: list[Job], total: int) -> None:
        if batch[0].pieces is not None:
            self._stream(batch)
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

    def _stream(self, batch: list[Job]) -> None:
        """Decode the batch's prompts together, sending each row's new text to its job's queue as it comes."""
        pipeline = self.pipeline
        tokenizer = pipeline.tokenizer
        first = batch[0]
        try:
            prompts = [pipeline.prompt_or_default(job.cond) for job in batch]
            seed = first.seed if first.seed is not None else fresh_seed()
            generator = torch.Generator(pipeline.device).manual_seed(seed)
            with self.lock, torch.no_grad():
                steps = pipeline.module.stream([tokenizer.encode(p) for p in prompts], generator=generator,
                                               decode=tokenizer.decode, **pipeline.options(**first.options))
                texts = [IncrementalText(tokenizer.decode) for _ in batch]
                for job, prompt in zip(batch, prompts):
                    job.pieces.put(("text", prompt))
                for step in steps:
                    for job, text, token in zip(batch, texts, step):
                        if token is not None and not job.gone.is_set():
                            piece = text.add(token)
                            if piece:
                                job.pieces.put(("text", piece))
                    if all(job.gone.is_set() for job in batch):
                        break
            self.batch_sizes[len(batch)] += 1
            for job, text in zip(batch, texts):
                job.pieces.put(("text", text.rest()))
                job.pieces.put(("done", None))
        except Exception as exc:  # noqa: BLE001 - reported to each client as its stream's last event
            for job in batch:
                job.pieces.put(("error", str(exc)))

