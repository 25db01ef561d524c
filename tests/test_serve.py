"""`genforge serve`: the HTTP API on debug checkpoints of three kinds (images, text, captions), through FastAPI's
TestClient: what each kind returns, streaming, limits and bad input (4xx naming the field, never a 5xx), the token,
the queue, the metrics."""
from __future__ import annotations

import io
import json
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from genforge.checkpoint import RunDir
from genforge.config import load_config
from genforge.sampling import load
from genforge.server.app import Limits, create_app
from genforge.train import trainer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    out = {}
    for name in ("gan", "gpt", "captioner", "vae", "diffusion", "text_vae", "tts", "vocoder"):
        cfg = load_config(f"debug/{name}", ["train.progress=false", "train.steps=2", "train.checkpoint_every=2",
                                            "train.sample_every=0"])
        out[name] = trainer.train(cfg, RunDir(root / name)).run_dir
    return out


@pytest.fixture(scope="module")
def pipelines(runs: dict[str, Path]) -> dict:
    return {name: load(path) for name, path in runs.items()}


@pytest.fixture(scope="module")
def client(pipelines: dict) -> TestClient:
    return TestClient(create_app(pipelines, limits=Limits(max_n=8, max_new_tokens=64, max_upload_bytes=200_000,
                                                          max_upload_pixels=512 * 512)))


def test_models_lists_every_loaded_model_with_its_kind_options_and_limits(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "models": ["captioner", "diffusion", "gan", "gpt",
                                                                        "text_vae", "tts", "vae", "vocoder"]}
    models = {m["id"]: m for m in client.get("/v1/models").json()["models"]}
    assert {k: (m["family"], m["output_kind"]) for k, m in models.items()} == {
        "gan": ("gan", "image"), "gpt": ("gpt", "text"), "captioner": ("captioner", "caption"), "vae": ("vae", "image"),
        "diffusion": ("diffusion", "image"), "text_vae": ("text_vae", "text"), "tts": ("tts", "audio"),
        "vocoder": ("vocoder", "audio")}
    assert models["tts"]["conditioning"] == "text" and models["tts"]["formats"] == [".wav", ".zip"]
    assert (models["gan"]["conditioning"], models["gpt"]["conditioning"]) == (None, "prompt")
    assert {"top_p", "temperature", "max_new_tokens"} <= set(models["gpt"]["options"])
    assert "bn_stats" in models["gan"]["options"] and models["gan"]["formats"] == [".png", ".npz"]
    assert models["gan"]["limits"]["max_n"] == 8
    assert "/v1/models/{model_id}/generate" in client.get("/openapi.json").json()["paths"]


def test_images_come_as_one_png_or_an_npz_and_a_seed_fixes_them(client: TestClient, pipelines: dict) -> None:
    one = client.post("/v1/models/gan/generate", json={"n": 1, "seed": 3})
    assert one.status_code == 200 and one.headers["content-type"] == "image/png"
    assert one.content.startswith(PNG_SIGNATURE)
    assert client.post("/v1/models/gan/generate", json={"n": 1, "seed": 3}).content == one.content
    many = client.post("/v1/models/gan/generate", json={"n": 4, "seed": 3})
    images = np.load(io.BytesIO(many.content))["images"]
    assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8
    # the same images genforge sample makes from the checkpoint
    expected = pipelines["gan"].sample(4, seed=3)
    assert np.array_equal(images[..., 0], ((expected[:, 0] + 1) * 127.5).round().clamp(0, 255).byte().numpy())
    grid = client.post("/v1/models/gan/generate", json={"n": 4, "format": ".png"})
    assert grid.content.startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("model, body, check", [
    ("vae", {"n": 2, "seed": 1}, "npz"),
    ("diffusion", {"n": 1, "seed": 1, "options": {"steps": 4}}, "png"),
    ("text_vae", {"n": 2, "seed": 1}, "texts"),
    ("tts", {"text": "a bad cab. deed!", "seed": 1}, "wav"),
    ("vocoder", {"n": 1, "seed": 1}, "wav"),  # a held-out clip, resynthesized
])
def test_every_landed_family_is_served_through_its_output_kind(client: TestClient, pipelines: dict, model: str,
                                                               body: dict, check: str) -> None:
    response = client.post(f"/v1/models/{model}/generate", json=body)
    assert response.status_code == 200, response.text
    if check == "npz":
        assert np.load(io.BytesIO(response.content))["images"].shape[0] == body["n"]
    elif check == "png":
        assert response.content.startswith(PNG_SIGNATURE)
    elif check == "wav":
        assert response.headers["content-type"] == "audio/wav"
        with wave.open(io.BytesIO(response.content)) as clip:
            assert (clip.getsampwidth(), clip.getframerate()) == (2, 8000) and clip.getnframes() > 800
    else:
        assert response.json()["texts"] == pipelines[model].sample(body["n"], seed=1)


def test_text_as_json_and_streamed_as_server_sent_events(client: TestClient, pipelines: dict) -> None:
    body = {"prompt": "ROMEO:", "seed": 5, "options": {"max_new_tokens": 20}}
    texts = client.post("/v1/models/gpt/generate", json=body).json()["texts"]
    assert texts == pipelines["gpt"].sample(1, seed=5, cond="ROMEO:", max_new_tokens=20)
    assert client.post("/v1/models/gpt/generate", json={**body, "seed": 6}).json()["texts"] != texts
    with client.stream("POST", "/v1/models/gpt/generate", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    pieces = [json.loads(e)["text"] for e in events[:-1]]
    assert pieces[0] == "ROMEO:" and len(pieces) > 2
    assert "".join(pieces) == "".join(pipelines["gpt"].stream(seed=5, prompt="ROMEO:", max_new_tokens=20))


def test_an_uploaded_image_gets_a_caption(client: TestClient, pipelines: dict, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    response = client.post("/v1/models/captioner/caption", files={"image": ("red.png", buffer.getvalue())},
                           data={"seed": "0"})
    assert response.status_code == 200, response.text
    (tmp_path / "red.png").write_bytes(buffer.getvalue())
    expected = pipelines["captioner"].caption_files([tmp_path / "red.png"], seed=0)[0]["caption"]
    assert response.json() == {"caption": expected, "image_id": "red.png"}


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/models/nope/generate", {}, 404,
     "no model 'nope'; loaded: captioner, diffusion, gan, gpt, text_vae, tts, vae, vocoder"),
    ("/v1/models/tts/generate", {}, 422, "text: this tts model speaks a text; give a non-empty `text`"),
    ("/v1/models/tts/generate", {"text": "!!!"}, 422, "nothing to say in the text"),
    ("/v1/models/tts/generate", {"text": "a cab", "options": {"vocoder": "/etc/passwd"}}, 422,
     "options.vocoder: names a file or data split on the server, so it is fixed when the server starts"),
    ("/v1/models/tts/generate", {"text": "a cab", "options": {"speaking_rate": 9}}, 422, "sample.speaking_rate"),
    ("/v1/models/tts/generate", {"text": "a" * 4001}, 422, "text: 4001 characters, at most 4000"),
    ("/v1/models/gan/generate", {"text": "a cab"}, 422, "--text applies to models conditioned on a text"),
    ("/v1/models/gan/generate", {"n": 9}, 422, "n = 9: at most 8 samples per request"),
    ("/v1/models/gan/generate", {"n": 0}, 422, "greater than or equal to 1"),
    ("/v1/models/gan/generate", {"options": {"bn_stats": "median"}}, 422, "sample.bn_stats"),
    ("/v1/models/gan/generate", {"options": {"top_p": 0.9}}, 422, "top_p"),
    ("/v1/models/gan/generate", {"class_label": 3}, 422, "class_label: this gan model is not class-conditional"),
    ("/v1/models/gan/generate", {"format": ".jpg"}, 422, "image samples come as .png or .npz"),
    ("/v1/models/gan/generate", {"stream": True}, 422, "only text models stream"),
    ("/v1/models/gan/generate", {"path": "/etc/passwd"}, 422, "Extra inputs are not permitted"),
    ("/v1/models/gpt/generate", {"stream": "yes"}, 422, "body.stream: Input should be a valid boolean"),
    ("/v1/models/gan/generate", {"n": "3"}, 422, "Input should be a valid integer"),
    ("/v1/models/gpt/generate", {"options": {"max_new_tokens": 65}}, 422, "options.max_new_tokens = 65: at most 64"),
    ("/v1/models/gpt/generate", {"options": {"top_p": 1.5}}, 422, "sample.top_p"),
    ("/v1/models/gpt/generate", {"prompt": "x" * 4001}, 422, "prompt: 4001 characters, at most 4000"),
    ("/v1/models/gpt/generate", {"stream": True, "options": {"num_beams": 2}}, 422, "cannot stream"),
    ("/v1/models/captioner/generate", {}, 422, "POST the image to /v1/models/{id}/caption"),
])
def test_bad_requests_are_4xx_naming_the_field(client: TestClient, path: str, body: dict, status: int,
                                               message: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.text


def test_infinity_and_nan_in_a_body_are_422_not_a_crash(client: TestClient) -> None:
    for raw in ("Infinity", '{"n": NaN}', '{"class_label": -Infinity}', "[1, 2]", "{"):
        response = client.post("/v1/models/gan/generate", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, (raw, response.text)


def test_bad_uploads_are_4xx(client: TestClient) -> None:
    def upload(model: str, data: bytes, **extra: str) -> object:
        return client.post(f"/v1/models/{model}/caption", files={"image": ("a.png", data)}, data=extra)

    big = io.BytesIO()
    Image.new("RGB", (600, 600)).save(big, format="PNG")
    assert upload("captioner", b"not an image").status_code == 422
    response = upload("captioner", big.getvalue())
    assert response.status_code == 413 and "600x600 pixels" in response.text
    assert upload("captioner", b"\0" * 200_001).status_code == 413
    assert upload("gan", big.getvalue()).status_code == 422
    assert "options: not JSON" in upload("captioner", big.getvalue(), options="{").text


def test_concurrent_requests_without_a_seed_share_a_batch_and_each_gets_its_own_rows(pipelines: dict) -> None:
    from concurrent.futures import ThreadPoolExecutor

    app = create_app(pipelines, limits=Limits(max_batch=16, max_wait_ms=300))
    client = TestClient(app)
    prompts = ["ROMEO:", "JULIET:", "First Citizen:", "MENENIUS:"]
    body = {"options": {"max_new_tokens": 12}}
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda q: client.post("/v1/models/gpt/generate", json={**body, "prompt": q}).json(),
                              prompts))
    for prompt, result in zip(prompts, texts):  # every request got the rows of its own prompt back
        assert "texts" in result, result
        assert len(result["texts"]) == 1 and result["texts"][0].startswith(prompt)
    with ThreadPoolExecutor(3) as pool:
        images = list(pool.map(lambda n: client.post("/v1/models/gan/generate", json={"n": n}), [1, 2, 3]))
    assert [np.load(io.BytesIO(r.content))["images"].shape[0] if r.headers["content-type"] != "image/png" else 1
            for r in images] == [1, 2, 3]
    batcher = app.state.served["gpt"].batcher
    assert sum(batcher.batch_sizes.values()) < 4 and max(batcher.batch_sizes) > 1  # fewer batches than requests
    assert 'genforge_batches_total{model="gpt",requests="' in client.get("/metrics").text


def batch_ended(batcher, timeout: float = 10) -> None:
    """Wait until the batcher has counted a batch (after its last row's "done" was sent)."""
    deadline = time.monotonic() + timeout
    while not batcher.batch_sizes and time.monotonic() < deadline:
        time.sleep(0.01)


def read_stream(job, timeout: float = 30) -> str:
    pieces = []
    while (item := job.pieces.get(timeout=timeout))[0] == "text":
        pieces.append(item[1])
    assert item == ("done", None), item
    return "".join(pieces)


def test_concurrent_streams_decode_together_and_a_gone_client_stops_only_its_row(pipelines: dict) -> None:
    import queue
    import threading

    from genforge.server.batching import Batcher, Job

    lock = threading.Lock()
    batcher = Batcher(pipelines["gpt"], lock, max_batch=8, max_wait_ms=0)
    options = {"max_new_tokens": 16, "temperature": 0.0}  # greedy: each row's text is known
    jobs = [Job(1, prompt, options, None, pieces=queue.Queue()) for prompt in ("ROMEO:", "JULIET:", "MENENIUS:")]
    with lock:  # the model is busy: all three wait, then start as one batch
        for job in jobs:
            batcher.put(job)
        time.sleep(0.2)
        jobs[1].gone.set()  # this client left before its first token
    texts = []
    for job in jobs:
        pieces = []
        while (item := job.pieces.get(timeout=30))[0] == "text":
            pieces.append(item[1])
        assert item == ("done", None)
        texts.append("".join(pieces))
    batch_ended(batcher)
    assert dict(batcher.batch_sizes) == {3: 1}
    for prompt, text in (("ROMEO:", texts[0]), ("MENENIUS:", texts[2])):
        alone = pipelines["gpt"].sample(1, seed=0, cond=prompt, max_new_tokens=16, temperature=0.0)[0]
        assert text == alone  # the same text as a request on its own (greedy)
    assert texts[1] == "JULIET:"  # the gone client's row sent nothing after its prompt


def test_a_stream_that_arrives_while_a_batch_decodes_joins_it(pipelines: dict) -> None:
    import queue
    import threading

    from genforge.server.batching import Batcher, Job

    lock = threading.Lock()
    batcher = Batcher(pipelines["gpt"], lock, max_batch=8, max_wait_ms=0)
    options = {"temperature": 0.0, "max_new_tokens": 40}  # equal options: streams with others never share a batch
    running = Job(1, "ROMEO:", options, None, pieces=queue.Queue())
    batcher.put(running)
    assert running.pieces.get(timeout=30) == ("text", "ROMEO:")
    running.pieces.get(timeout=30)  # its first new text: the batch is decoding
    with lock:  # hold the batch between two steps while the second stream arrives
        late = Job(1, "MENENIUS:", options, None, pieces=queue.Queue())
        batcher.put(late)
        bad = Job(1, "\u2603", options, None, pieces=queue.Queue())  # a character outside the vocabulary
        batcher.put(bad)
    late_text = read_stream(late)
    assert bad.pieces.get(timeout=30)[0] == "error"
    read_stream(running)
    batch_ended(batcher)
    assert batcher.joined == 1 and dict(batcher.batch_sizes) == {2: 1}  # one batch served both
    alone = pipelines["gpt"].sample(1, seed=0, cond="MENENIUS:", **options)[0]
    assert late_text == alone  # joining a running batch changes nothing for a greedy row


def test_a_text_request_joins_a_running_batch_of_streams(pipelines: dict) -> None:
    import queue
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from genforge.server.batching import Batcher, Job

    lock = threading.Lock()
    batcher = Batcher(pipelines["gpt"], lock, max_batch=8, max_wait_ms=0)
    options = {"temperature": 0.0, "max_new_tokens": 30}
    running = Job(1, "ROMEO:", options, None, pieces=queue.Queue())
    batcher.put(running)
    assert running.pieces.get(timeout=30) == ("text", "ROMEO:")
    running.pieces.get(timeout=30)  # the batch is decoding
    with ThreadPoolExecutor(1) as pool:
        with lock:  # between two steps, a whole-text request of 2 samples arrives
            texts = pool.submit(batcher.submit, Job(2, "JULIET:", options, None))
            while not batcher.pending:
                time.sleep(0.001)
        result = texts.result(timeout=30)
    read_stream(running)
    batch_ended(batcher)
    assert batcher.joined == 1 and dict(batcher.batch_sizes) == {2: 1}
    alone = pipelines["gpt"].sample(2, seed=0, cond="JULIET:", **options)
    assert result == alone  # what pipeline.sample gives: prompt + continuation, one text per sample


def test_a_bad_request_never_fails_the_others_of_its_batch(pipelines: dict) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = TestClient(create_app(pipelines, limits=Limits(max_batch=16, max_wait_ms=300)))
    prompts = ["ROMEO:", "\u2603 snowman", "JULIET:"]  # the debug tokenizer's 58 characters have no snowman
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda q: client.post("/v1/models/gpt/generate", json={
            "prompt": q, "options": {"max_new_tokens": 8}}), prompts))
    assert [r.status_code for r in responses] == [200, 422, 200]
    assert "not in this tokenizer's vocabulary" in responses[1].text


def test_a_seeded_request_is_never_batched_so_its_seed_fixes_its_samples(pipelines: dict) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = TestClient(create_app(pipelines, limits=Limits(max_batch=16, max_wait_ms=300)))
    body = {"prompt": "ROMEO:", "seed": 9, "options": {"max_new_tokens": 12}}
    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(lambda _: client.post("/v1/models/gpt/generate", json=body).json()["texts"], range(3)))
    assert texts[0] == texts[1] == texts[2] == pipelines["gpt"].sample(1, seed=9, cond="ROMEO:", max_new_tokens=12)


def test_a_full_queue_is_503_with_retry_after(pipelines: dict) -> None:
    app = create_app({"gan": pipelines["gan"]}, limits=Limits(max_queue=1))
    client = TestClient(app)
    slots = app.state.served["gan"].slots
    slots.acquire()
    try:
        response = client.post("/v1/models/gan/generate", json={})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
    finally:
        slots.release()
    assert client.post("/v1/models/gan/generate", json={}).status_code == 200


def test_the_web_page_is_served_from_the_package_without_outside_links(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'fetch("/v1/models"' in page.text and "text/event-stream" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline


def test_a_token_guards_the_api_but_not_the_health_check(pipelines: dict) -> None:
    client = TestClient(create_app({"gan": pipelines["gan"]}, token="s3cret"))
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_metrics_count_requests_in_prometheus_format(pipelines: dict) -> None:
    client = TestClient(create_app({"gan": pipelines["gan"]}))
    client.post("/v1/models/gan/generate", json={})
    client.post("/v1/models/gan/generate", json={"n": 1000})
    text = client.get("/metrics").text
    assert 'genforge_requests_total{route="generate",model="gan",status="200"} 1' in text
    assert 'genforge_requests_total{route="generate",model="gan",status="422"} 1' in text
    assert 'genforge_request_seconds_count{route="generate"} 2' in text


SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=20)


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)


JSON = st.recursive(SCALARS, _containers, max_leaves=8)
FIELDS = st.fixed_dictionaries({}, optional={
    "n": st.integers(-3, 12) | JSON, "seed": st.integers(-5, 2**64) | JSON, "class_label": JSON,
    "prompt": st.text(max_size=30) | JSON, "text": st.text(max_size=20) | JSON, "stream": st.booleans() | JSON,
    "format": st.sampled_from([".png", ".npz", ".txt", ".wav", ".gif"]) | JSON,
    "options": st.dictionaries(st.sampled_from(["max_new_tokens", "top_p", "top_k", "temperature", "bn_stats",
                                                "num_beams", "speaking_rate", "vocoder", "bogus"]), JSON, max_size=3)})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=st.sampled_from(["gan", "gpt", "captioner", "tts", "other"]), body=FIELDS | JSON)
def test_no_request_body_makes_a_5xx(client: TestClient, model: str, body: object) -> None:
    if isinstance(body, dict) and isinstance(body.get("options"), dict):
        body["options"].pop("max_new_tokens", None) if not isinstance(body["options"].get("max_new_tokens"), int) \
            else body["options"].update(max_new_tokens=min(abs(body["options"]["max_new_tokens"]), 8))
    # json.dumps writes NaN/Infinity as Python's json module reads them: the server must refuse those too
    response = client.post(f"/v1/models/{model}/generate", content=json.dumps(body),
                           headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (body, response.text)


def test_the_batcher_retries_a_failed_batch_request_by_request() -> None:
    """A request that fails only when generated (not caught by validation) fails alone; its batch-mates succeed."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from genforge.server.batching import Batcher, Job

    calls = []

    class Fake:
        def sample(self, n: int, *, seed: int, cond: object, **options: object) -> list:
            calls.append(cond)
            rows = cond if isinstance(cond, list) else [cond] * n
            if "bad" in rows:
                raise ValueError("cannot make 'bad'")
            return [f"{c}!" for c in rows]

    batcher = Batcher(Fake(), threading.Lock(), max_batch=8, max_wait_ms=300)
    jobs = [Job(1, "a", {}, None), Job(1, "bad", {}, None), Job(2, "c", {}, None)]
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(batcher.submit, job) for job in jobs]
    assert futures[0].result() == ["a!"] and futures[2].result() == ["c!", "c!"]
    with pytest.raises(ValueError, match="cannot make 'bad'"):
        futures[1].result()
    assert len(calls[0]) == 4 and sorted(map(str, calls[1:])) == ["a", "bad", "c"]  # one batch, then one by one
