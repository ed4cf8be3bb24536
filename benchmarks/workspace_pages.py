"""Workspace page timings at scale: p95 server time per page, and the campaign graph's first render.

Builds a store the size the issue names (100,000 accounts, 10 million exchanges, one hydra of
20,000 accounts) directly in SQL: exchanges, accounts and a verdict run, plus the folded state
detection keeps (``dw_acct``, ``dw_kv``, ``dw_hours``, ``dw_models``), so the pages read exactly the
tables they read in production without running detection over 10M rows first. Then it times every
page through the real app in process (server time, median and p95 over ``--repeats``), and opens
the hydra's campaign page in headless Chromium to time the graph from navigation to drawn.

    .venv/bin/python benchmarks/workspace_pages.py [--accounts 100000] [--exchanges 10000000]
        [--hydra 20000] [--repeats 20] [--store /tmp/ws-bench.duckdb] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from starlette.testclient import TestClient

from distillwatch.enforce.processes import free_port, wait_http
from distillwatch.store import Store
from distillwatch.workspace import Users, WorkspaceApp, WorkspaceConfig

PASSWORD = "benchmark-password"


def build(path: Path, accounts: int, exchanges: int, hydra: int) -> None:
    started = time.perf_counter()
    with Store(path, memory_limit="8GB") as store:
        run = store.run
        run("SET threads = 2")
        run(f"""CREATE TEMP TABLE ids AS SELECT i, 'acct_' || lpad(i::VARCHAR, 7, '0') AS account_id,
                   i < {hydra} AS hydra FROM range({accounts}) t(i)""")
        run("""INSERT INTO accounts SELECT account_id, TIMESTAMP '2026-01-01' + INTERVAL (i) MINUTE,
                   CASE WHEN hydra THEN 'proton.me' ELSE 'example.com' END, 'US',
                   '10.' || (i % 250) || '.' || (i // 250 % 250) || '.1',
                   CASE WHEN hydra THEN 'pm_hydra_' || (i % 40) ELSE 'pm_' || i END, NULL
               FROM ids""")
        # Hydra accounts send 3x the requests of a customer; prompts are templated for them.
        run(f"""INSERT INTO exchanges BY NAME
               SELECT 'x' || n AS id,
                      TIMESTAMP '2026-03-01' + INTERVAL (n % 604800) SECOND AS ts,
                      d.account_id, CASE WHEN n % 7 = 0 THEN 'atlas-3' ELSE 'atlas-2' END AS model,
                      CASE WHEN d.hydra THEN '[TASK] solve problem ' || n || ' step by step'
                           ELSE 'how do I fix my code number ' || (n % 5000) END AS prompt,
                      1 AS n_messages, 'an answer of moderate length ' || n AS response,
                      '10.' || (n % 250) || '.' || (n // 250 % 250) || '.' || (n % 200) AS ip,
                      CASE WHEN d.hydra THEN 'python-httpx/0.27' ELSE 'Mozilla/5.0' END AS user_agent,
                      '/v1/chat/completions' AS endpoint, 20 AS prompt_tokens,
                      200 AS completion_tokens, 200 AS status, 'bench' AS source
               FROM range({exchanges}) t(n)
               JOIN ids d ON d.i = (CASE WHEN n % 2 = 0 THEN n // 2 % {hydra}
                                         ELSE {hydra} + n // 2 % {accounts - hydra} END)""")
        run("""CREATE TABLE dw_acct AS SELECT account_id, count(*) AS n, min(ts) AS first_ts,
                   max(ts) AS last_ts, count(*) FILTER (WHERE prompt LIKE '%step by step%') AS cot,
                   0::BIGINT AS multi_turn, sum(completion_tokens)::HUGEINT AS output_sum,
                   0::BIGINT AS gap_n, 0::HUGEINT AS gap_sum, 0::HUGEINT AS gap_sq
               FROM exchanges GROUP BY 1""")
        run("""CREATE TABLE dw_hours AS SELECT account_id, date_trunc('hour', ts) AS hour,
                   count(*) AS uses FROM exchanges GROUP BY 1, 2""")
        run("""CREATE TABLE dw_models AS SELECT model, min(ts) AS first_seen FROM exchanges
               GROUP BY 1""")
        run("""CREATE TABLE dw_kv AS
               SELECT account_id, 'ip' AS kind, ip AS value, count(*) AS uses FROM exchanges
               GROUP BY 1, 3
               UNION ALL SELECT account_id, 'net', regexp_replace(ip, '\\.[0-9]+$', '.0/24'),
                   count(*) FROM exchanges GROUP BY 1, 3
               UNION ALL SELECT account_id, 'ua', user_agent, count(*) FROM exchanges GROUP BY 1, 3
               UNION ALL SELECT account_id, 'pre', CASE WHEN hydra THEN '[task] solve problem 0 step'
                   ELSE 'how do i fix my' END, 10 FROM ids
               UNION ALL SELECT account_id, 'tag', 'coding', 5 FROM ids
               UNION ALL SELECT account_id, 'model', 'atlas-2', 10 FROM ids""")
        run("""INSERT INTO verdicts SELECT 'bench-run', TIMESTAMP '2026-03-08', account_id,
                   CASE WHEN hydra THEN 0.99 ELSE 0.02 END,
                   CASE WHEN hydra THEN 'distillation' ELSE 'benign' END,
                   CASE WHEN hydra THEN 'c-1' END,
                   CASE WHEN hydra THEN '["member of campaign c-1", "100% of 300 prompts use 1 wrapper template(s) also repeated by up to 19999 other accounts"]'
                        ELSE '[]' END FROM ids""")
        members = json.dumps([f"acct_{i:07d}" for i in range(hydra)])
        run("""INSERT INTO campaigns VALUES ('bench-run', 'c-1', 0.99, ?, ?,
                   TIMESTAMP '2026-03-01', TIMESTAMP '2026-03-08', ?)""",
            [members, exchanges // 2, json.dumps([f"{hydra} linked accounts"])])  # fmt: skip
        Users(store).add("bench", PASSWORD, "analyst")
    print(f"built {path} in {time.perf_counter() - started:.0f} s", flush=True)


def page_timings(path: Path, repeats: int, hydra_member: str) -> dict[str, dict[str, float]]:
    app = WorkspaceApp(WorkspaceConfig(store=path, secure_cookies=False))
    pages = {
        "overview": "/",
        "campaign (20k hydra)": "/campaign?id=c-1",
        "graph JSON (20k hydra)": "/api/graph?id=c-1",
        "account": f"/account?id={hydra_member}",
        "account, page 2": f"/account?id={hydra_member}&page=2",
        "search by account prefix": "/search?q=acct_00123",
        "search by IP": "/search?q=10.7.3.9",
        "search by prefix": "/search?q=10.7.3.0/24",
        "cases": "/cases",
        "audit log": "/audit",
    }
    results = {}
    with TestClient(app.app, base_url="http://127.0.0.1") as client:
        client.post("/login", data={"username": "bench", "password": PASSWORD})
        for name, url in pages.items():
            client.get(url)  # warm (first read of the derived tables is timed separately)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (url, response.status_code)
            times.sort()
            results[name] = {"median_ms": statistics.median(times),
                             "p95_ms": times[max(0, int(len(times) * 0.95) - 1)]}  # fmt: skip
            print(f"{name:28s} median {results[name]['median_ms']:8.1f} ms   "
                  f"p95 {results[name]['p95_ms']:8.1f} ms", flush=True)  # fmt: skip
    return results


def graph_render(path: Path, repeats: int) -> list[float]:
    chromium = shutil.which("chromium")
    if chromium is None:
        print("chromium not installed: graph render not measured")
        return []
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "distillwatch.cli", "serve", "--store",
                             str(path), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    times = []
    try:
        wait_http(f"{base}/healthz", proc, timeout=600)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/login")
            page.fill("input[name=username]", "bench")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#campaigns")
            for _ in range(repeats):
                page.goto(f"{base}/campaign?id=c-1")
                page.wait_for_selector("#graph[data-rendered]", timeout=120_000)
                times.append(page.evaluate("performance.now()"))
            print(f"graph, navigation to drawn: median {statistics.median(times):.0f} ms over "
                  f"{len(times)} loads ({page.get_attribute('#graph', 'data-rendered')} nodes)")  # fmt: skip
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--exchanges", type=int, default=10_000_000)
    parser.add_argument("--hydra", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--store", type=Path, default=Path("/tmp/ws-bench.duckdb"))
    parser.add_argument("--keep", action="store_true", help="Reuse an existing --store.")
    args = parser.parse_args()
    if not (args.keep and args.store.exists()):
        args.store.unlink(missing_ok=True)
        build(args.store, args.accounts, args.exchanges, args.hydra)
    timings = page_timings(args.store, args.repeats, "acct_0000042")
    renders = graph_render(args.store, 5)
    print(json.dumps({"pages": timings, "graph_render_ms": renders}, indent=1))


if __name__ == "__main__":
    main()
