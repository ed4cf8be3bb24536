"""Memory of the gateway's streaming state per active account, in process and in Redis.

    .venv/bin/python benchmarks/stream_memory.py [--accounts 100000] [--requests 8] [--redis]

Feeds ``--accounts`` accounts ``--requests`` requests each (own prompts, two wrapper grams, a
few prefixes and user agents; one in ten on a shared farm card) through
:class:`~distillwatch.enforce.streaming.StreamingEvidence`, then reports:

- in process: the Python heap the state holds (tracemalloc), per account, with and without the
  population sketches (template grams and prompt hashes, which expire or are evicted by LRU);
- with ``--redis`` (a private ``redis-server`` started here): Redis ``used_memory`` growth per
  account, and ``MEMORY USAGE`` of one account's keys.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

from distillwatch.enforce.processes import redis_server
from distillwatch.enforce.streaming import MemoryStream, RedisStream, StreamingEvidence

T0 = datetime(2026, 3, 2)


async def feed(evidence: StreamingEvidence, accounts: int, requests: int) -> None:
    for r in range(requests):
        when = T0 + timedelta(minutes=r)
        for a in range(accounts):
            prompt = (f"Write a careful answer to question {a * requests + r} about subject {a % 311} "
                      f"and then summarise it in three short bullet points for a reader")  # fmt: skip
            await evidence.assess(f"acct-{a:07d}", f"10.{a % 200}.{r % 3}.{a % 250}",
                                  f"client/{a % 40}.{r % 2}", prompt, r % 4 == 0, "atlas-2", when)  # fmt: skip
            await evidence.add_output(f"acct-{a:07d}", 300, when)


def in_process(accounts: int, requests: int) -> None:
    gc.collect()
    tracemalloc.start()
    stream = MemoryStream(max_accounts=max(accounts, 1))
    evidence = StreamingEvidence(stream)
    base = tracemalloc.get_traced_memory()[0]
    asyncio.run(feed(evidence, accounts, requests))
    gc.collect()
    total = tracemalloc.get_traced_memory()[0] - base
    sketches = len(stream._reach)
    stream._reach.clear()
    gc.collect()
    state = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(f"in process, {accounts:,} accounts x {requests} requests: "
          f"{state / accounts:,.0f} bytes per account (account state), "
          f"{total / accounts:,.0f} with the {sketches:,} population sketch keys")  # fmt: skip


def in_redis(accounts: int, requests: int) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not installed")
    workdir = tempfile.mkdtemp()
    proc, url = redis_server(binary, Path(workdir))
    try:
        import redis

        client = redis.Redis.from_url(url)
        before = client.info("memory")["used_memory"]

        async def run() -> None:
            store = RedisStream(url)
            await feed(StreamingEvidence(store), accounts, requests)
            await store.close()

        started = time.perf_counter()
        asyncio.run(run())
        seconds = time.perf_counter() - started
        after = client.info("memory")["used_memory"]
        sample = [k for k in client.scan_iter(match="dw:s:a*", count=1000)][:300]
        own = {k.split(b":")[-1] for k in sample}
        one = next(iter(own))
        per = sum(client.memory_usage(k) or 0 for k in client.scan_iter(match=b"dw:s:a*" + one))
        print(f"redis, {accounts:,} accounts x {requests} requests: used_memory grew "
              f"{(after - before) / accounts:,.0f} bytes per account (with population sketches); "
              f"one account's own keys: {per:,} bytes (MEMORY USAGE); "
              f"{accounts * requests / seconds:,.0f} observations/s from one client")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--redis", action="store_true")
    args = parser.parse_args()
    in_process(args.accounts, args.requests)
    if args.redis:
        in_redis(args.accounts, args.requests)


if __name__ == "__main__":
    main()
