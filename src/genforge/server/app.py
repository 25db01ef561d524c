"""`genforge serve`: an HTTP API over loaded checkpoints (`sampling.Pipeline`), for every family, by output kind.

    GET  /                               the web page (static/index.html: plain HTML and JS, no CDN)
    GET  /healthz                        {"status": "ok", "models": [...]}
    GET  /metrics                        Prometheus text: requests by model/status, latency histogram, in flight
    GET  /v1/models                      each model's id, family, output kind, conditioning, options and limits
    POST /v1/models/{id}/generate        JSON GenerateRequest -> the kind's file (images: PNG for one, .npz for
                                         many), text as JSON, or text as Server-Sent Events with "stream": true
    POST /v1/models/{id}/caption         multipart image upload -> {"caption": ...} (image-conditioned models)

The server knows no family: a model's samples are returned the way its output kind saves them (the first of the
kind's suffixes, or `format`), so a family with a new output kind is served without a change here. Text kinds also
get JSON and streaming (the pipeline's `stream`).

Bad input is a 4xx that names the field: unknown model -> 404 listing the loaded ids; an option outside its
bounds or unknown to the family -> 422 (never clamped or replaced by a default); a full queue -> 503 with
Retry-After; an upload too large in bytes or pixels -> 413. Clients never pass file paths. With a token
(`--token` / $GENFORGE_TOKEN), every /v1 route needs `Authorization: Bearer <token>` (compared in constant time).
Generation runs off the event loop: each model's `batching.Batcher` thread joins concurrent requests without a
seed into one batch (`max_batch` samples, `max_wait_ms`), at most `max_queue` requests per model wait, so one slow
client never blocks the others. Texts, streamed or whole, decode as one running batch that a new request joins
between two steps (continuous batching), each stream's tokens sent to it as they come;
options that name files on the server (`SampleOptions.SERVER_FIXED`, e.g. a TTS model's vocoder) are fixed when
the server starts (`genforge serve --set sample.KEY=VALUE`) and refused in requests.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from genforge.errors import UserError
from genforge.server.batching import Batcher, Job

MEDIA_TYPES = {".png": "image/png", ".npz": "application/octet-stream", ".txt": "text/plain; charset=utf-8",
               ".jsonl": "application/x-ndjson", ".json": "application/json", ".wav": "audio/wav"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Limits:
    """Hard bounds on every request; anything outside is a 4xx naming the field and the range."""

    max_n: int = 64  # samples per request
    max_new_tokens: int = 1024  # text: tokens per sample
    max_prompt_chars: int = 4000  # text: prompt length; speech: the text to speak
    max_steps: int = 1000  # diffusion: sampler steps
    max_upload_bytes: int = 8 * 1024 * 1024  # captioning: the uploaded file
    max_upload_pixels: int = 4096 * 4096  # captioning: width x height of the decoded image
    max_queue: int = 16  # requests per model running or waiting; more -> 503
    max_batch: int = 32  # samples generated together from concurrent requests (1: no batching)
    max_wait_ms: float = 0.0  # how long a batch waits for more requests after its first (0: it takes the
    #                          requests already queued, which pile up while the previous batch runs)


class GenerateRequest(BaseModel):
    """What a client may ask of a model. `options` are the family's own sampling options (`GET /v1/models` lists
    them), validated by the family."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "n": "3" or "stream": "yes" are errors, not guesses
    n: int = Field(default=1, ge=1, description="samples (at most the server's max_n)")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="the same seed gives the same "
                             "samples (such a request runs alone); none: fresh samples, batched with other requests")
    class_label: int | str | None = Field(default=None, description="class-conditional models: an id or a name")
    prompt: str | None = Field(default=None, description="text models: the text to continue")
    text: str | None = Field(default=None, description="speech models: the text to speak")
    stream: bool = Field(default=False, description="text models: Server-Sent Events as tokens are generated")
    format: str | None = Field(default=None, description="a file suffix of the output kind, e.g. .png or .npz")
    options: dict[str, Any] = Field(default_factory=dict, description="the family's sampling options")


@dataclass
class Served:
    """One loaded model and its queue."""

    id: str
    pipeline: Any
    slots: threading.BoundedSemaphore
    batcher: Batcher
    lock: threading.Lock  # one generation at a time per model (batches, streams, captions)


class Metrics:
    """Counters and a latency histogram in the Prometheus text format (no client library needed)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(LATENCY_BUCKETS) + 1))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.in_flight = 0

    def observe(self, route: str, model: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(route, model, status)] += 1
            counts = self.buckets[route]
            counts[next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))] += 1
            self.latency_sum[route] += seconds

    def text(self, served: dict[str, Served]) -> str:
        lines = ["# HELP genforge_requests_total Requests by route, model and status.",
                 "# TYPE genforge_requests_total counter"]
        with self.lock:
            for (route, model, status), count in sorted(self.requests.items()):
                lines.append(f'genforge_requests_total{{route="{route}",model="{model}",status="{status}"}} {count}')
            lines += ["# HELP genforge_request_seconds Request latency.", "# TYPE genforge_request_seconds histogram"]
            for route, counts in sorted(self.buckets.items()):
                total = 0
                for bound, count in zip([*LATENCY_BUCKETS, "+Inf"], counts):
                    total += count
                    lines.append(f'genforge_request_seconds_bucket{{route="{route}",le="{bound}"}} {total}')
                lines.append(f'genforge_request_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}')
                lines.append(f'genforge_request_seconds_count{{route="{route}"}} {total}')
            lines += ["# HELP genforge_in_flight Requests being served.", "# TYPE genforge_in_flight gauge",
                      f"genforge_in_flight {self.in_flight}"]
        lines += ["# HELP genforge_queue_length Requests waiting for a model's batcher.",
                  "# TYPE genforge_queue_length gauge"]
        lines += [f'genforge_queue_length{{model="{m}"}} {e.batcher.waiting}' for m, e in sorted(served.items())]
        lines += ["# HELP genforge_batches_total Batches run, by the number of requests in them.",
                  "# TYPE genforge_batches_total counter"]
        for m, e in sorted(served.items()):
            lines += [f'genforge_batches_total{{model="{m}",requests="{k}"}} {v}'
                      for k, v in sorted(e.batcher.batch_sizes.items())]
        lines += ["# HELP genforge_joins_total Text requests that joined a batch already decoding.",
                  "# TYPE genforge_joins_total counter"]
        lines += [f'genforge_joins_total{{model="{m}"}} {e.batcher.joined}' for m, e in sorted(served.items())]
        lines += ["# HELP genforge_running_rows Rows of the running text batch.", "# TYPE genforge_running_rows gauge"]
        lines += [f'genforge_running_rows{{model="{m}"}} {e.batcher.running}' for m, e in sorted(served.items())]
        return "\n".join(lines) + "\n"


def create_app(pipelines: dict[str, Any], *, token: str | None = None, limits: Limits | None = None) -> FastAPI:
    """The app serving `pipelines` ({model id: sampling.Pipeline}, loaded once by the caller)."""
    limits = limits or Limits()
    served = {}
    for name, pipeline in pipelines.items():
        lock = threading.Lock()
        served[name] = Served(name, pipeline, threading.BoundedSemaphore(limits.max_queue),
                              Batcher(pipeline, lock, limits.max_batch, limits.max_wait_ms), lock)
    metrics = Metrics()
    app = FastAPI(title="genforge", description="Generate from genforge checkpoints.", version="1")
    app.state.served = served  # the loaded models and their queues (tests and embedding code look here)

    def authorized(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token: send the header 'Authorization: Bearer <token>' "
                                     "with the token the server was started with", {"WWW-Authenticate": "Bearer"})

    def model_of(model_id: str) -> Served:
        if model_id not in served:
            raise HTTPException(404, f"no model {model_id!r}; loaded: {', '.join(sorted(served))}")
        return served[model_id]

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        metrics.in_flight += 1
        try:
            response = await call_next(request)
        finally:
            metrics.in_flight -= 1
        parts = request.url.path.strip("/").split("/")
        model = parts[2] if len(parts) >= 4 and parts[:2] == ["v1", "models"] and parts[2] in served else ""
        route = parts[-1] if model else request.url.path
        metrics.observe(route, model, response.status_code, time.perf_counter() - started)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        """The web page: pick a model, set options, see images, streamed text, audio, captions of an upload."""
        return (Path(__file__).parent / "static" / "index.html").read_text()

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": sorted(served)}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        return metrics.text(served)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    def list_models() -> dict[str, Any]:
        return {"models": [describe(s, limits) for s in served.values()]}

    @app.post("/v1/models/{model_id}/generate", dependencies=[Depends(authorized)], response_model=None)
    def generate(model_id: str, body: GenerateRequest) -> Response:
        entry = model_of(model_id)
        check_request(entry.pipeline, body, limits)
        if body.stream:
            return stream_text(entry, body)
        with queue_slot(entry):
            return run_generation(entry, body)

    @app.post("/v1/models/{model_id}/caption", dependencies=[Depends(authorized)])
    def caption(model_id: str, image: UploadFile = File(...), seed: int = Form(0, ge=0),
                options: str = Form("{}")) -> dict[str, Any]:
        entry = model_of(model_id)
        pipeline = entry.pipeline
        if getattr(pipeline.module, "conditioning", None) != "image":
            raise HTTPException(422, f"model {model_id!r} is a {pipeline.family} model ({pipeline.output_kind}); "
                                     "captions need an image-conditioned model")
        extra = parse_options_field(options)
        data = image.file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"image: larger than the server's limit of {limits.max_upload_bytes} bytes")
        with queue_slot(entry), tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(image.filename or "upload").name
            path.write_bytes(data)
            check_image(path, limits)
            try:
                with entry.lock, torch.no_grad():
                    records = pipeline.caption_files([path], seed=seed, names=[image.filename or "upload"], **extra)
            except UserError as exc:
                raise HTTPException(422, str(exc)) from None
        return {"caption": records[0]["caption"], "image_id": records[0]["image_id"]}

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each bad field; the offending input is not echoed (it may be NaN or Infinity, which JSON
        cannot carry, or large)."""
        problems = [f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    return app


# --------------------------------------------------------------------------------------------------------------
# Requests


def describe(entry: Served, limits: Limits) -> dict[str, Any]:
    pipeline = entry.pipeline
    options_cls = type(pipeline.sample_options())
    return {"id": entry.id, "family": pipeline.family, "output_kind": pipeline.output_kind,
            "conditioning": conditioning(pipeline),
            "formats": list(pipeline.kind.suffixes), "can_stream": pipeline.kind.name == "text",
            "options": options_cls.model_json_schema().get("properties", {}),
            "limits": {"max_n": limits.max_n, "max_new_tokens": limits.max_new_tokens,
                       "max_prompt_chars": limits.max_prompt_chars, "max_steps": limits.max_steps,
                       "max_upload_bytes": limits.max_upload_bytes, "max_upload_pixels": limits.max_upload_pixels}}


def conditioning(pipeline: Any) -> str | None:
    """What a request may condition on: "class" (class-conditional models only), "prompt", "image", or None."""
    kind = getattr(pipeline.module, "conditioning", None)
    if kind == "class" and not getattr(pipeline.config.model, "num_classes", 0):
        return None
    return kind


def check_request(pipeline: Any, body: GenerateRequest, limits: Limits) -> None:
    """Every bound, before any work; a family option is checked by the family (its UserError names the key)."""
    if body.n > limits.max_n:
        raise HTTPException(422, f"n = {body.n}: at most {limits.max_n} samples per request on this server")
    for field_name in ("prompt", "text"):
        value = getattr(body, field_name)
        if value is not None and len(value) > limits.max_prompt_chars:
            raise HTTPException(422, f"{field_name}: {len(value)} characters, at most {limits.max_prompt_chars}")
    fixed = [key for key in body.options if key in pipeline.server_fixed_options()]
    if fixed:
        raise HTTPException(422, f"options.{fixed[0]}: names a file or data split on the server, so it is fixed when "
                                 "the server starts (genforge serve --set sample.KEY=VALUE); leave it out")
    for key, bound in (("max_new_tokens", limits.max_new_tokens), ("steps", limits.max_steps)):
        value = body.options.get(key)
        if isinstance(value, int) and value > bound:
            raise HTTPException(422, f"options.{key} = {value}: at most {bound} on this server")
    if body.format is not None and body.format not in pipeline.kind.suffixes:
        raise HTTPException(422, f"format {body.format!r}: {pipeline.output_kind} samples come as "
                                 f"{' or '.join(pipeline.kind.suffixes)}")
    if body.stream and (pipeline.kind.name != "text" or body.n != 1):
        raise HTTPException(422, "stream: only text models stream, one sample (n = 1) per request")
    if conditioning(pipeline) == "image":
        raise HTTPException(422, f"this {pipeline.family} model captions images: POST the image to "
                                 "/v1/models/{id}/caption")
    if body.class_label is not None and conditioning(pipeline) != "class":
        raise HTTPException(422, f"class_label: this {pipeline.family} model is not class-conditional")
    if conditioning(pipeline) == "text" and not (body.text or "").strip():
        raise HTTPException(422, f"text: this {pipeline.family} model speaks a text; give a non-empty `text`")
    try:
        pipeline.sample_options(**body.options)  # the family's own check of its keys and ranges
        pipeline.cond(class_label=body.class_label, prompt=body.prompt, text=body.text)
        for given in (body.prompt, body.text):
            if given is not None and pipeline.tokenizer is not None:
                pipeline.tokenizer.encode(given)  # a text the model cannot read fails here, not in a batch
        if body.stream and not pipeline.can_stream(**body.options):
            raise UserError("stream: this model cannot stream with these options (beam search, options.num_beams "
                            "> 1, returns whole texts); drop stream or use num_beams 1")
    except UserError as exc:
        raise HTTPException(422, str(exc)) from None


def take_slot(entry: Served) -> None:
    """One of the model's `max_queue` places (the caller releases it), or 503 with Retry-After when all are taken."""
    if not entry.slots.acquire(blocking=False):
        raise HTTPException(503, f"model {entry.id!r} is busy (its queue is full); retry shortly", {"Retry-After": "1"})


@contextlib.contextmanager
def queue_slot(entry: Served) -> Iterator[None]:
    take_slot(entry)
    try:
        yield
    finally:
        entry.slots.release()


def run_generation(entry: Served, body: GenerateRequest) -> Response:
    pipeline = entry.pipeline
    cond = pipeline.cond(class_label=body.class_label, prompt=body.prompt, text=body.text)
    samples = entry.batcher.submit(Job(body.n, cond, body.options, body.seed))
    kind = pipeline.kind
    if kind.name == "text" and body.format is None:
        return JSONResponse({"texts": list(samples)})
    suffix = body.format or (kind.suffixes[0] if body.n == 1 or ".npz" not in kind.suffixes else ".npz")
    with tempfile.TemporaryDirectory() as tmp:
        path = pipeline.save(samples, Path(tmp) / f"samples{suffix}")
        data = path.read_bytes()
    return Response(data, media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
                    headers={"Content-Disposition": f'attachment; filename="samples{suffix}"'})


class StreamPieces:
    """A stream's pieces, put by the batcher's thread and read on the event loop without a thread hop per piece:
    `put` appends and wakes the loop only when it waits; `get_all` returns everything that has arrived."""

    def __init__(self) -> None:
        self.items: deque[tuple[str, Any]] = deque()  # append and popleft are atomic
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready: asyncio.Event | None = None

    def put(self, item: tuple[str, Any]) -> None:
        self.items.append(item)
        loop, ready = self.loop, self.ready
        if loop is not None and ready is not None and not ready.is_set():
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody reads this stream any more
                loop.call_soon_threadsafe(ready.set)

    async def get_all(self) -> list[tuple[str, Any]]:
        if self.ready is None:
            self.ready = asyncio.Event()
            self.loop = asyncio.get_running_loop()
        while not self.items:
            self.ready.clear()
            if not self.items:  # a put between the check and clear() has set it again
                await self.ready.wait()
        return [self.items.popleft() for _ in range(len(self.items))]


def stream_text(entry: Served, body: GenerateRequest) -> StreamingResponse:
    """Server-Sent Events: `data: {"text": piece}` as the text is generated, then `data: [DONE]` (or `data:
    {"error": ...}`). The prompt comes as the first event; text that arrives faster than the client reads it is sent
    as one event. The model's batcher decodes concurrent streams as one running batch and puts each one's pieces in
    its queue; when the client disconnects, Starlette cancels the response, its row leaves the batch at the next step
    and the queue slot is freed."""
    take_slot(entry)
    pieces = StreamPieces()
    job = Job(1, body.prompt, body.options, body.seed, pieces=pieces)
    entry.batcher.put(job)

    async def events() -> AsyncIterator[str]:
        prompt_sent = False
        try:
            while True:
                text = ""
                for kind, value in await pieces.get_all():
                    if kind == "text" and not prompt_sent:  # the prompt: an event of its own
                        yield f"data: {json.dumps({'text': value})}\n\n"
                        prompt_sent = True
                    elif kind == "text":
                        text += value
                    if kind == "text":
                        continue
                    if text:
                        yield f"data: {json.dumps({'text': text})}\n\n"
                    yield f"data: {json.dumps({'error': value})}\n\n" if kind == "error" else "data: [DONE]\n\n"
                    return
                if text:
                    yield f"data: {json.dumps({'text': text})}\n\n"
        finally:
            job.gone.set()  # the client is gone (or the stream ended): its row is no longer sent
            entry.slots.release()

    return StreamingResponse(events(), media_type="text/event-stream")


def parse_options_field(options: str) -> dict[str, Any]:
    try:
        value = json.loads(options)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"options: not JSON ({exc.msg}); send a JSON object, e.g. {{\"num_beams\": 3}}")
    if not isinstance(value, dict):
        raise HTTPException(422, "options: send a JSON object of sampling options, e.g. {\"num_beams\": 3}")
    return value


def check_image(path: Path, limits: Limits) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError):
        raise HTTPException(422, "image: not a readable PNG/JPEG/... image") from None
    if width * height > limits.max_upload_pixels:
        raise HTTPException(413, f"image: {width}x{height} pixels, more than the server's limit of "
                                 f"{limits.max_upload_pixels}")
