"""Latency the proxy adds, against the same mock upstream called directly, at a fixed rate.

    .venv/bin/python benchmarks/proxy_overhead.py [--rate 200] [--seconds 20] [--repeats 3]
        [--store] [--stream] [--redis]

Starts `distillwatch mock-upstream` and `distillwatch proxy` (default policy, in-memory state,
verdicts with a benign account; no store, or with --store one, so the exchange journal and log
are in the measurement) as separate processes on loopback, then sends an open-
loop stream of chat completions at --rate requests/s, alternating direct and proxied requests so
both see the same machine load. ``--stream`` turns on streaming evidence (requests then come from
2,000 accounts with prompts of their own, so the sketches keep growing); ``--redis`` starts a
private ``redis-server`` and puts the shared state (and the streaming state) in it. Reports p50/p99 of each and the added latency, median over
--repeats runs. Target (issue 5): added p50 <= 1 ms, added p99 <= 5 ms at 200 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from distillwatch.enforce.processes import CLI, free_port, redis_server, wait_http


async def load(rate: float, seconds: float, direct: str, proxied: str,
               varied: bool = False) -> dict[str, list[float]]:  # fmt: skip
    latencies: dict[str, list[float]] = {"direct": [], "proxy": []}
    counter = iter(range(10**9))

    def request() -> tuple[dict, dict]:
        i = next(counter)
        text = (f"Please explain topic {i % 997} number {i} step by step, with an example and a summary"
                if varied else "hello there")  # fmt: skip
        body = {
            "model": "atlas-2",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": text}],
        }
        return body, {"Authorization": f"Bearer sk-bench{i % 2000 if varied else ''}"}

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200)) as client:

        async def one(kind: str, base: str) -> None:
            body, headers = request()
            start = time.perf_counter()
            response = await client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
            if response.status_code == 200:
                latencies[kind].append((time.perf_counter() - start) * 1000)

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            kind, base = ("direct", direct) if i % 2 else ("proxy", proxied)
            tasks.append(asyncio.create_task(one(kind, base)))
        await asyncio.gather(*tasks)
    return latencies


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", action="store_true",
                        help="give the proxy a store, so every exchange is journaled and logged")  # fmt: skip
    parser.add_argument("--stream", action="store_true", help="streaming evidence on")
    parser.add_argument(
        "--redis", action="store_true", help="shared state in a private redis-server"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    verdicts = tmp / "verdicts.json"
    verdicts.write_text(json.dumps({"generated_at": "2026-01-01T00:00:00Z", "exchanges": 0, "campaigns": [],
                                    "accounts": [{"account_id": "x", "score": 0.0, "verdict": "benign",
                                                  "cluster_id": None, "reasons": []}]}))  # fmt: skip
    up, px = free_port(), free_port()
    cli = list(CLI)
    upstream = subprocess.Popen([*cli, "mock-upstream", "--listen", f"127.0.0.1:{up}"])
    store = ["--store", str(tmp / "bench.duckdb")] if args.store else []
    extra = ["--stream"] if args.stream else []
    redis_proc = None
    if args.redis:
        redis_proc, redis_url = redis_server("redis-server", tmp)
        extra += ["--redis", redis_url]
    proxy = subprocess.Popen([*cli, "proxy", "--upstream", f"http://127.0.0.1:{up}", "--listen",
                              f"127.0.0.1:{px}", "--verdicts", str(verdicts), *store, *extra],
                             stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{up}/v1/models")
        wait_http(f"http://127.0.0.1:{px}/healthz")
        runs = []
        for _ in range(args.repeats):
            lat = asyncio.run(
                load(
                    args.rate,
                    args.seconds,
                    f"http://127.0.0.1:{up}",
                    f"http://127.0.0.1:{px}",
                    args.stream,
                )
            )
            runs.append({k: (pct(v, 50), pct(v, 99), len(v)) for k, v in lat.items()})
        for i, run in enumerate(runs, 1):
            print(f"run {i}: direct p50 {run['direct'][0]:.2f} ms p99 {run['direct'][1]:.2f} ms; "
                  f"proxy p50 {run['proxy'][0]:.2f} ms p99 {run['proxy'][1]:.2f} ms "
                  f"({run['direct'][2]} + {run['proxy'][2]} requests)")  # fmt: skip
        added50 = statistics.median(r["proxy"][0] - r["direct"][0] for r in runs)
        added99 = statistics.median(r["proxy"][1] - r["direct"][1] for r in runs)
        print(f"added by the proxy at {args.rate:.0f} req/s (median of {args.repeats} runs): "
              f"p50 {added50:+.2f} ms, p99 {added99:+.2f} ms")  # fmt: skip
    finally:
        for proc in (proxy, upstream, redis_proc):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)


if __name__ == "__main__":
    main()
