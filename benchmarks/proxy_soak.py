"""Soak: bounded minutes of good, bad and slow clients against the real proxy, on loopback.

    .venv/bin/python benchmarks/proxy_soak.py [--seconds 120] [--rate 100]

Starts `distillwatch mock-upstream` and `distillwatch proxy` (with a store, so every exchange is
journaled and folded) as separate processes and runs, all at once:

- good clients at --rate requests/s in total: chat completions (JSON and streamed), Responses API
  calls, some from a shaped account, through the official request shapes;
- bad clients: invalid JSON, malformed messages, wrong types, deep nesting, unknown routes and
  methods, garbage HTTP, oversized headers (a 10% share of the rate);
- slow clients: a bounded slowloris (--slow connections that never finish their headers,
  replaced as the proxy closes them) and bodies sent too slowly.

Reports the requests by kind and status, the 5xx count (target 0), acknowledged exchanges lost
from the store after a clean stop (target 0), and the proxy's resident memory sampled every 5 s
(target: flat, i.e. the second half's median within 10% of the first half's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from distillwatch.enforce.processes import CLI, free_port, wait_http
from distillwatch.store import Store

GOOD = [
    ("/v1/chat/completions", {"model": "atlas-2", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}),
    ("/v1/chat/completions", {"model": "atlas-2", "stream": True, "messages": [{"role": "user", "content": "stream it"}]}),
    ("/v1/responses", {"model": "atlas-2", "input": "Think step by step: 17 * 23?"}),
    ("/v1/responses", {"model": "atlas-2", "stream": True, "input": "CALL_TOOL weather"}),
    ("/v1/chat/completions", {"model": "atlas-2", "messages": [{"role": "system", "content": None},
                                                                {"role": "user", "content": [{"type": "hologram"}]}]}),
]  # fmt: skip
BAD = [
    b"{not json",
    b'{"model": "m", "messages": []}',
    b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
    b'{"model": "m", "max_tokens": "abc", "messages": [{"role": "user", "content": "x"}]}',
    b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "m": ' + b'{"k":' * 900 + b"1" + b"}" * 900 + b"}",
    b"[1, 2, 3]",
]  # fmt: skip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def raw(port: int, payload: bytes, read: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(4096), 15) if read else b""
    writer.close()
    return reply


async def soak(base: str, port: int, seconds: float, rate: float, slow: int, counts: Counter, served: list) -> None:  # fmt: skip
    rng = random.Random(7)
    deadline = time.monotonic() + seconds
    auth = {
        "good": {"Authorization": "Bearer sk-good"},
        "suspect": {"Authorization": "Bearer sk-suspect"},
    }
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=300)) as client:

        async def good(i: int) -> None:
            route, body = GOOD[i % len(GOOD)]
            account = "suspect" if i % 3 == 0 else "good"
            body = {**body, "user": f"probe-{i}"}
            try:
                if body.get("stream"):
                    async with client.stream(
                        "POST", base + route, json=body, headers=auth[account]
                    ) as r:
                        await r.aread()
                else:
                    r = await client.post(base + route, json=body, headers=auth[account])
            except httpx.HTTPError as exc:
                counts[("good", type(exc).__name__)] += 1
                return
            counts[("good", r.status_code)] += 1
            if r.status_code == 200:
                served.append(i)

        async def bad(i: int) -> None:
            kind = i % 4
            try:
                if kind == 0:
                    r = await client.post(base + "/v1/chat/completions", content=BAD[i % len(BAD)],
                                          headers={**auth["good"], "content-type": "application/json"})  # fmt: skip
                    status = r.status_code
                elif kind == 1:
                    status = (
                        await client.request(
                            rng.choice(["GET", "PUT"]),
                            base + "/v1/" + rng.choice(["chat/completions", "nope", "responses"]),
                        )
                    ).status_code
                elif kind == 2:
                    reply = await raw(port, b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n")
                    status = int(reply[9:12] or 0)
                else:
                    reply = await raw(
                        port, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
                    )
                    status = int(reply[9:12] or 0)
            except (httpx.HTTPError, OSError, TimeoutError, ValueError) as exc:
                counts[("bad", type(exc).__name__)] += 1
                return
            counts[("bad", status)] += 1

        async def slowloris() -> None:
            while time.monotonic() < deadline:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    await writer.drain()
                    reply = await asyncio.wait_for(
                        reader.read(4096), max(deadline - time.monotonic(), 0.1)
                    )
                    counts[("slow-headers", int(reply[9:12] or 0))] += 1
                    writer.close()
                except (OSError, TimeoutError, ValueError):
                    counts[("slow-headers", "held to the end")] += 1
                    return

        async def slow_body(i: int) -> None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-good\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")  # fmt: skip
                await writer.drain()
                reply = await asyncio.wait_for(reader.read(4096), 30)
                counts[("slow-body", int(reply[9:12] or 0))] += 1
                writer.close()
            except (OSError, TimeoutError, ValueError) as exc:
                counts[("slow-body", type(exc).__name__)] += 1

        tasks = [asyncio.create_task(slowloris()) for _ in range(slow)]
        start, i = time.monotonic(), 0
        while time.monotonic() < deadline:
            target = start + i / rate
            await asyncio.sleep(max(0.0, target - time.monotonic()))
            if i % 10 == 0:
                tasks.append(asyncio.create_task(bad(i)))
            elif i % 97 == 0:
                tasks.append(asyncio.create_task(slow_body(i)))
            else:
                tasks.append(asyncio.create_task(good(i)))
            i += 1
            if len(tasks) > 5000:
                done = [t for t in tasks if t.done()]
                tasks = [t for t in tasks if not t.done()]
                del done
        await asyncio.gather(*tasks)


async def sample_memory(pid: int, seconds: float, samples: list[float]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(rss_mb(pid))
        await asyncio.sleep(5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--slow", type=int, default=200, help="slowloris connections held open")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    verdicts = tmp / "verdicts.json"
    verdicts.write_text(json.dumps({"generated_at": "2026-01-01T00:00:00Z", "exchanges": 0, "campaigns": [], "accounts": [
        {"account_id": "suspect", "score": 0.6, "verdict": "suspicious", "cluster_id": "c-1", "reasons": []}]}))  # fmt: skip
    keys = tmp / "keys.jsonl"
    keys.write_text(
        "".join(
            json.dumps({"api_key": f"sk-{a}", "account_id": a}) + "\n" for a in ("good", "suspect")
        )
    )
    store = tmp / "soak.duckdb"
    up, px = free_port(), free_port()
    upstream = subprocess.Popen([*CLI, "mock-upstream", "--listen", f"127.0.0.1:{up}"])
    proxy = subprocess.Popen([*CLI, "proxy", "--upstream", f"http://127.0.0.1:{up}", "--listen", f"127.0.0.1:{px}",
                              "--verdicts", str(verdicts), "--keys", str(keys), "--store", str(store),
                              "--header-timeout", "5", "--max-pending-connections", "128",
                              "--body-timeout", "5"], stdout=subprocess.DEVNULL)  # fmt: skip
    counts: Counter = Counter()
    served: list[int] = []
    memory: list[float] = []
    try:
        wait_http(f"http://127.0.0.1:{up}/v1/models")
        wait_http(f"http://127.0.0.1:{px}/healthz")

        async def run() -> None:
            await asyncio.gather(
                soak(
                    f"http://127.0.0.1:{px}", px, args.seconds, args.rate, args.slow, counts, served
                ),
                sample_memory(proxy.pid, args.seconds, memory),
            )

        started = time.monotonic()
        asyncio.run(run())
        elapsed = time.monotonic() - started
        health = httpx.get(f"http://127.0.0.1:{px}/healthz").json()
    finally:
        proxy.send_signal(2)  # clean stop: the sink folds what is journaled
        proxy.wait(timeout=60)
        upstream.terminate()
        upstream.wait(timeout=10)
    with Store(store, read_only=True) as db:
        logged = db.run("SELECT count(*) FROM exchanges")[0][0]
    fivexx = sum(
        n
        for (kind, status), n in counts.items()
        if isinstance(status, int) and status >= 500 and not (kind == "good" and status == 503)
    )
    half = len(memory) // 2
    first, second = statistics.median(memory[:half] or [0]), statistics.median(memory[half:] or [0])
    report = {
        "seconds": round(elapsed, 1), "requests": sum(counts.values()),
        "by_kind_and_status": {f"{k} {s}": n for (k, s), n in sorted(counts.items(), key=str)},
        "5xx": fivexx, "over_capacity_503": counts.get(("good", 503), 0),
        "acknowledged": len(served), "logged": logged, "lost": max(len(served) - logged, 0),
        "rss_mb": {"first_half_median": round(first, 1), "second_half_median": round(second, 1),
                   "max": round(max(memory), 1), "samples": [round(m, 1) for m in memory]},
        "memory_flat": second <= first * 1.10, "sink_rejected": health["store"]["rejected"],
    }  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
