"""Helpers for end-to-end tests of the gateway: real processes over loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from distillwatch.enforce.processes import wait_http

ADMIN = "admin-secret-token"
ACCOUNTS = ["good", "flagged", "suspect", "shady", "lifted"]


def start(args: list[str], health: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "distillwatch.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    wait_http(health, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly, the sink drains
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def verdicts_file(path: Path, accounts: dict[str, tuple[str, float, str | None]]) -> Path:
    doc = {
        "generated_at": "2026-03-08T00:00:00Z",
        "exchanges": 1,
        "accounts": [
            {"account_id": a, "verdict": v, "score": s, "cluster_id": c, "reasons": []}
            for a, (v, s, c) in accounts.items()
        ],
        "campaigns": [],
    }
    path.write_text(json.dumps(doc))
    return path


def keys_file(path: Path, accounts: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"api_key": f"sk-{a}", "account_id": a}) + "\n" for a in accounts)
    )
    return path


PINNED = {"X-Replay-Time": "2026-03-02T10:00:30Z"}  # one rate window, whatever the wall clock


def chat(
    base: str, account: str, content: str = "hello", headers: dict | None = None, **extra
) -> httpx.Response:
    body = {"model": "atlas-2", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer sk-{account}", **(headers or {})}, timeout=10)  # fmt: skip
