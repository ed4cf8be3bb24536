"""kill -9 durability: acknowledged exchanges lost when the proxy is killed mid-traffic.

    .venv/bin/python benchmarks/proxy_kill9.py [--rates 0,80,5] [--seconds 4]

For each rate (requests/s, open loop; 0 = as fast as 16 closed-loop clients go) it starts the
mock upstream and a proxy with a store, sends uniquely numbered chat completions, kills the proxy
with SIGKILL after --seconds, restarts it on the same store (which folds the journal), stops it
cleanly and counts how many of the requests that got a 200 are missing from the store (target 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from distillwatch.enforce.processes import CLI, free_port, wait_http
from distillwatch.store import Store


async def traffic(base: str, rate: float, seconds: float, acknowledged: list[str]) -> None:
    stop = time.monotonic() + seconds + 3  # keep sending through the kill
    headers = {"Authorization": "Bearer sk-good"}
    async with httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_connections=64)) as client:

        async def one(tag: str) -> None:
            body = {"model": "m", "messages": [{"role": "user", "content": f"probe {tag}"}]}
            try:
                r = await client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                acknowledged.append(f"probe {tag}")

        if rate <= 0:

            async def loop(worker: int) -> None:
                i = 0
                while time.monotonic() < stop:
                    await one(f"{worker}-{i}")
                    i += 1

            await asyncio.gather(*(loop(w) for w in range(16)))
            return
        tasks, start, i = [], time.monotonic(), 0
        while time.monotonic() < stop:
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(str(i))))
            i += 1
        await asyncio.gather(*tasks)


def run(rate: float, seconds: float) -> dict:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "keys.jsonl").write_text(json.dumps({"api_key": "sk-good", "account_id": "good"}) + "\n")
    up, px = free_port(), free_port()
    upstream = subprocess.Popen([*CLI, "mock-upstream", "--listen", f"127.0.0.1:{up}"])
    args = [*CLI, "proxy", "--upstream", f"http://127.0.0.1:{up}", "--listen", f"127.0.0.1:{px}",
            "--store", str(tmp / "s.duckdb"), "--keys", str(tmp / "keys.jsonl")]  # fmt: skip
    base = f"http://127.0.0.1:{px}"
    acknowledged: list[str] = []
    try:
        wait_http(f"http://127.0.0.1:{up}/v1/models")
        proxy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"{base}/healthz", proxy)

        async def scenario() -> None:
            sender = asyncio.create_task(traffic(base, rate, seconds, acknowledged))
            await asyncio.sleep(seconds)
            proxy.send_signal(signal.SIGKILL)
            await sender

        asyncio.run(scenario())
        proxy.wait(timeout=10)
        proxy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"{base}/healthz", proxy)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            recovered = httpx.get(f"{base}/healthz").json()["store"]
            if recovered["recovered_after_restart"] and not recovered["backlog_bytes"]:
                break
            time.sleep(0.2)
        proxy.send_signal(signal.SIGINT)
        proxy.wait(timeout=60)
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
    with Store(tmp / "s.duckdb", read_only=True) as db:
        logged = {p for (p,) in db.run("SELECT prompt FROM exchanges")}
    lost = [p for p in acknowledged if p not in logged]
    return {"rate": rate or "max", "acknowledged": len(acknowledged), "lost": len(lost),
            "folded_after_restart": recovered["recovered_after_restart"], "stored": len(logged)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="0,80,5")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    for rate in (float(r) for r in args.rates.split(",")):
        print(json.dumps(run(rate, args.seconds)))


if __name__ == "__main__":
    main()
