#!/usr/bin/env python3
"""Load on `genforge serve` over loopback: requests/s, latency percentiles, tokens/s and time to first token at
several concurrencies, and a mixed run with malformed requests (status codes, server memory before and after).

The server is started as its own process (`genforge serve RUN ... --port P --max-queue Q`) on 127.0.0.1 and
driven by an asyncio client (httpx); every run is bounded in request count and in time (`--max-seconds`).

    python benchmarks/serve_load.py --gan runs/quickstart --gpt runs/shakespeare-gpt-char-baby \
        --concurrency 1,8,32 --requests 64 --mixed 1000 --json runs/serve_load.json

Per concurrency c, `--requests` requests go out with at most c in flight:
  GAN: `{"n": 1}` -> one PNG; GPT streamed: `{"prompt": "ROMEO:", "stream": true, "options": {"max_new_tokens":
  T}}` -> Server-Sent Events (the time to first token: when the text first grows past the prompt; streams
  decode as one running batch that new streams join); GPT JSON: the same without "stream" -> {"texts": [...]}.
  No request carries a seed, so the server may batch them (`--max-batch`; run once with 1 and once with e.g. 32 to compare).
  503s (a full queue) are counted, not retried. `--kinds` picks the request types, `--mixed 0` skips the mixed run.
Mixed run: `--mixed` requests at concurrency 8, a third of them malformed (unknown model, n out of range, unknown
option, bad JSON, wrong types), the rest valid; every status code counted; the server's RSS (VmRSS of its
process) is read before and after.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


async def gan_request(client: httpx.AsyncClient, model: str, i: int) -> dict:
    started = time.perf_counter()
    r = await client.post(f"/v1/models/{model}/generate", json={"n": 1})  # no seed: may be batched
    return {"status": r.status_code, "latency": time.perf_counter() - started}


async def gpt_json_request(client: httpx.AsyncClient, model: str, i: int, tokens: int) -> dict:
    """Without a seed and without streaming: the server may batch it. Tokens = characters (a character-level GPT)."""
    started = time.perf_counter()
    r = await client.post(f"/v1/models/{model}/generate", json={"prompt": "ROMEO:", "options": {
        "max_new_tokens": tokens}})
    new = len(r.json()["texts"][0]) - len("ROMEO:") if r.status_code == 200 else 0
    return {"status": r.status_code, "latency": time.perf_counter() - started, "tokens": new}


async def gpt_request(client: httpx.AsyncClient, model: str, i: int, tokens: int) -> dict:
    """A streamed request. The server may send several tokens in one event when they come faster than the client
    reads, so tokens are counted as characters (a character-level GPT) and the time to first token is the time at
    which the text first grows past the echoed prompt."""
    started = time.perf_counter()
    first, text, status = None, "", 0
    body = {"prompt": "ROMEO:", "stream": True, "options": {"max_new_tokens": tokens}}  # no seed: may be batched
    async with client.stream("POST", f"/v1/models/{model}/generate", json=body) as r:
        status = r.status_code
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text += json.loads(line[len("data: "):]).get("text", "")
            if first is None and len(text) > len("ROMEO:"):
                first = time.perf_counter() - started
    return {"status": status, "latency": time.perf_counter() - started, "ttft": first,
            "tokens": max(0, len(text) - len("ROMEO:"))}


async def run_load(base: str, make: object, count: int, concurrency: int, max_seconds: float) -> dict:
    semaphore = asyncio.Semaphore(concurrency)
    deadline = time.perf_counter() + max_seconds
    results: list[dict] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with semaphore:
            if time.perf_counter() < deadline:
                results.append(await make(client, i))

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        await asyncio.gather(*(one(client, i) for i in range(count)))
    wall = time.perf_counter() - started
    ok = [r for r in results if r["status"] == 200]
    out = {"concurrency": concurrency, "sent": len(results), "ok": len(ok), "wall_s": wall,
           "status": {str(s): sum(r["status"] == s for r in results) for s in sorted({r["status"] for r in results})},
           "requests_per_s": len(ok) / wall, "p50_s": percentile([r["latency"] for r in ok], 50),
           "p99_s": percentile([r["latency"] for r in ok], 99)}
    if ok and "tokens" in ok[0]:
        out["tokens_per_s"] = sum(r["tokens"] for r in ok) / wall
        out["ttft_p50_s"] = percentile([r["ttft"] for r in ok if r.get("ttft") is not None], 50)
        out["ttft_p99_s"] = percentile([r["ttft"] for r in ok if r.get("ttft") is not None], 99)
    return out


MALFORMED = [
    ("nope", {"n": 1}), (None, {"n": 0}), (None, {"n": 10_000}), (None, {"options": {"bogus": 1}}),
    (None, {"seed": "x"}), (None, {"n": [1]}), (None, "not json"), (None, {"options": {"top_p": 7}}),
    (None, {"format": ".gif"}), (None, {"stream": "yes"}), (None, {"class_label": {"a": 1}}),
]


async def mixed(base: str, gan: str, gpt: str, count: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    statuses: dict[str, int] = {}
    bad_ok = 0
    semaphore = asyncio.Semaphore(8)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal bad_ok
        model = rng.choice([gan, gpt])
        bad = i % 3 == 0
        if bad:
            override, body = MALFORMED[i // 3 % len(MALFORMED)]
            model = override or model
        else:
            body = {"n": 1, "seed": i} if model == gan else {"prompt": "A", "options": {"max_new_tokens": 16}}
        async with semaphore:
            if isinstance(body, str):
                r = await client.post(f"/v1/models/{model}/generate", content=body,
                                      headers={"Content-Type": "application/json"})
            else:
                r = await client.post(f"/v1/models/{model}/generate", json=body)
        statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
        bad_ok += bad and r.status_code < 400

    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        await asyncio.gather(*(one(client, i) for i in range(count)))
    return {"requests": count, "status": statuses, "malformed_accepted": bad_ok,
            "server_errors": sum(v for k, v in statuses.items() if k.startswith("5") and k != "503")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gan", type=Path, required=True)
    parser.add_argument("--gpt", type=Path, required=True)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--mixed", type=int, default=1000)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch (1: no batching)")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="the server's --max-wait-ms")
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--kinds", default="gan,gpt,gpt-json", help="which request types to time (gpt = streamed)")
    parser.add_argument("--threads", type=int, help="the server's --threads (default: torch's)")
    parser.add_argument("--json")
    args = parser.parse_args()
    kinds = set(args.kinds.split(","))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "genforge", "serve", str(args.gan), str(args.gpt), "--port",
                               str(port), "--max-queue", str(args.max_queue), "--max-batch", str(args.max_batch),
                               "--max-wait-ms", str(args.max_wait_ms),
                               *(["--threads", str(args.threads)] if args.threads else [])],
                              env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        gan, gpt = args.gan.name, args.gpt.name
        report: dict = {"gan": [], "gpt": [], "gpt-json": [], "rss_mb_start": rss_mb(server.pid),
                        "max_batch": args.max_batch}
        requests = {"gan": lambda cl, i: gan_request(cl, gan, i),
                    "gpt": lambda cl, i: gpt_request(cl, gpt, i, args.tokens),
                    "gpt-json": lambda cl, i: gpt_json_request(cl, gpt, i, args.tokens)}
        for c in [int(x) for x in args.concurrency.split(",")]:
            for name, make in requests.items():
                if name in kinds:
                    report[name].append(asyncio.run(run_load(base, make, args.requests, c, args.max_seconds)))
                    print(json.dumps({name: report[name][-1]}), flush=True)
        if args.mixed:
            rss_before_mixed = rss_mb(server.pid)
            report["mixed"] = asyncio.run(mixed(base, gan, gpt, args.mixed))
            report["mixed"].update(rss_mb_before=rss_before_mixed, rss_mb_after=rss_mb(server.pid))
            print(json.dumps({"mixed": report["mixed"]}), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("\n| model | concurrency | ok / sent | requests/s | p50 s | p99 s | tokens/s | TTFT p50 s | TTFT p99 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"server --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms} --threads {args.threads}")
    for name in ("gan", "gpt", "gpt-json"):
        for r in report[name]:
            print(f"| {name} | {r['concurrency']} | {r['ok']} / {r['sent']} | {r['requests_per_s']:.1f} | "
                  f"{r['p50_s']:.3f} | {r['p99_s']:.3f} | {r.get('tokens_per_s', 0):.0f} | "
                  f"{r.get('ttft_p50_s', float('nan')):.3f} | {r.get('ttft_p99_s', float('nan')):.3f} |")
    m = report.get("mixed")
    if m:
        print(f"\nmixed: {m['requests']} requests, status {m['status']}, malformed accepted {m['malformed_accepted']}, "
              f"RSS {m['rss_mb_before']:.0f} -> {m['rss_mb_after']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
