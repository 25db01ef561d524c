"""The web page in a real browser: `genforge serve`'s app under uvicorn, Debian's headless Chromium driven by
Playwright: load the page, generate an image, a streamed text and speech, check they appear, save a screenshot.

Chromium comes from Debian's package (installed here with apt-get when it is missing and this process may); where
it cannot be installed or started, the test is skipped with the reason. GENFORGE_SCREENSHOT=PATH also writes the
screenshot there (the README's picture: `GENFORGE_SCREENSHOT=docs/serve.png pytest tests/test_serve_browser.py`)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from genforge.checkpoint import RunDir
from genforge.config import load_config
from genforge.sampling import load
from genforge.train import trainer

CHROMIUM = "/usr/bin/chromium"


def chromium() -> str:
    """Debian's Chromium, installed with apt-get if missing (root only); else the test is skipped, with why."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs apt-get as root): "
                    "apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"could not install Debian's chromium ({' '.join(command)}): {done.stderr[-500:]}")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    uvicorn = pytest.importorskip("uvicorn")
    from genforge.server.app import create_app

    root = tmp_path_factory.mktemp("browser")
    pipelines = {}
    for name, steps in (("gan", 2), ("gpt", 30), ("tts", 2)):
        cfg = load_config(f"debug/{name}", ["train.progress=false", f"train.steps={steps}",
                                            f"train.checkpoint_every={steps}", "train.sample_every=0"])
        pipelines[name] = load(trainer.train(cfg, RunDir(root / name)).run_dir)
    port = free_port()
    app = create_app(pipelines)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    app_server = uvicorn.Server(config)
    thread = threading.Thread(target=app_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not app_server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", app
    app_server.should_exit = True
    thread.join(timeout=10)


def test_the_page_generates_an_image_and_streams_a_text(server: tuple[str, object], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing: "
                                   "pip install playwright")
    executable = chromium()
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except Exception as exc:  # noqa: BLE001 - any launch failure is a reason to skip, shown in full
            pytest.skip(f"Chromium at {executable} did not start under Playwright: {exc}")
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(server[0])
        page.wait_for_selector("#model option[value=gan], #model option:text('gan')", state="attached")
        # an image
        page.select_option("#model", "gan")
        page.fill("#n", "4")
        page.click("#go")
        page.wait_for_function("document.getElementById('picture').src.startsWith('blob:')")
        width = page.evaluate("new Promise(r => { const i = document.getElementById('picture'); "
                              "i.complete ? r(i.naturalWidth) : i.onload = () => r(i.naturalWidth); })")
        assert width > 28  # a decoded grid of 4 images, not a broken picture
        # a streamed text
        page.select_option("#model", "gpt")
        page.fill("#prompt", "ROMEO:")
        page.fill("#max_new_tokens", "40")
        page.click("#go")
        page.wait_for_function("document.getElementById('text').dataset.done === 'true'", timeout=30000)
        text = page.inner_text("#text")
        assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")
        assert page.inner_text("#error") == ""
        # speech: a typed text, played back in an audio element
        page.select_option("#model", "tts")
        page.fill("#speech", "a bad cab. deed!")
        page.click("#go")
        page.wait_for_function("document.getElementById('audio').src.startsWith('blob:')", timeout=30000)
        seconds = page.evaluate("new Promise(r => { const a = document.getElementById('audio'); "
                                "a.readyState > 0 ? r(a.duration) : a.onloadedmetadata = () => r(a.duration); })")
        assert seconds > 0.1  # a decoded WAV, not a broken one
        assert page.inner_text("#error") == ""
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("GENFORGE_SCREENSHOT"):
        shutil.copy(shot, os.environ["GENFORGE_SCREENSHOT"])


def test_a_client_that_disconnects_mid_stream_frees_its_slot_and_stops_the_generation(
        server: tuple[str, object]) -> None:
    import httpx

    url, app = server
    entry = app.state.served["gpt"]
    free = entry.slots._value  # noqa: SLF001 - the semaphore's count of free places
    body = {"prompt": "ROMEO:", "stream": True, "options": {"max_new_tokens": 1000}}
    with httpx.stream("POST", url + "v1/models/gpt/generate", json=body, timeout=60) as response:
        events = 0
        for line in response.iter_lines():
            events += line.startswith("data: ")
            if events == 3:
                assert entry.batcher.running == 1 and entry.slots._value == free - 1  # noqa: SLF001 - mid-stream
                break  # the client goes away with about 998 tokens still to come
    deadline = time.monotonic() + 20
    while entry.batcher.running or entry.lock.locked() or entry.slots._value != free:  # noqa: SLF001
        assert time.monotonic() < deadline, "the stream's slot, its row or the model's lock was not released"
        time.sleep(0.05)
