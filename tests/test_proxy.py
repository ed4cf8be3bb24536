"""The enforcing proxy end to end: real processes over loopback, a mock upstream, real Redis,
real DuckDB. Each proxy is the installed CLI (`distillwatch proxy`) in its own process."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from distillwatch.enforce.processes import free_port
from distillwatch.ingest.batch import exchanges_to_table
from distillwatch.schema import parse_account, validate_exchange
from distillwatch.store import Store
from tests.gateway import ADMIN, PINNED, chat, start, stop, verdicts_file

pytestmark = pytest.mark.e2e


def test_passthrough_and_openai_errors(proxy):
    base, _ = proxy()
    ok = chat(base, "good")
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", f"{base}/v1/chat/completions", headers={"Authorization": "Bearer sk-good"},
                      json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as s:  # fmt: skip
        body = b"".join(s.iter_raw())
    assert s.status_code == 200 and b"data: [DONE]" in body
    auth = {"Authorization": "Bearer sk-good"}
    assert (
        httpx.post(
            f"{base}/v1/completions", json={"model": "m", "prompt": "x"}, headers=auth
        ).status_code
        == 200
    )
    assert httpx.post(
        f"{base}/v1/embeddings", json={"model": "m", "input": "x"}, headers=auth
    ).json()["data"]
    assert httpx.get(f"{base}/v1/models", headers=auth).json()["data"][0]["id"] == "atlas-2"
    missing = httpx.post(f"{base}/v1/chat/completions", json={})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    unknown = chat(base, "stranger")
    assert unknown.status_code == 401 and unknown.json()["error"]["type"] == "invalid_request_error"


def test_bad_input_gets_4xx_never_500(proxy):
    base, _ = proxy()
    auth = {"Authorization": "Bearer sk-good", "content-type": "application/json"}
    assert (
        httpx.post(f"{base}/v1/chat/completions", content=b"{nope", headers=auth).status_code == 400
    )
    assert (
        httpx.post(f"{base}/v1/chat/completions", content=b"[1,2]", headers=auth).status_code == 400
    )
    big = httpx.post(
        f"{base}/v1/chat/completions", content=b"{" + b" " * 100_000 + b"}", headers=auth
    )
    assert big.status_code == 413
    # Header injection: a raw CR inside a header value is refused by the HTTP parser.
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-good\rX-Evil: 1\r\nContent-Length: 2\r\n\r\n{}"
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 4")
    # A slow client that never sends its body gets 408 while others are served.
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-good\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        assert chat(base, "good").status_code == 200
        slow.settimeout(5)
        assert slow.recv(4096).startswith(b"HTTP/1.1 408")
    assert chat(base, "good").status_code == 200


def test_policy_actions_and_audit(proxy, tmp_path):
    store = tmp_path / "audit.duckdb"
    base, _ = proxy("--replay-time-header", "X-Replay-Time", store=store)
    flagged = chat(base, "flagged")
    assert flagged.status_code == 403 and flagged.json()["error"]["code"] == "verification_required"
    # suspicious + chain-of-thought: shaped (reasoning stripped, the answer capped at 512 tokens)
    shaped = chat(base, "suspect", "Think step by step about primes.", max_tokens=4000)
    content = shaped.json()["choices"][0]["message"]["content"]
    assert shaped.status_code == 200 and "<think>" not in content and content.count("word") <= 512
    # suspicious: the cluster c-9 shares 10 requests a minute between its accounts
    codes = [
        chat(base, "suspect" if i % 2 else "shady", headers=PINNED).status_code for i in range(14)
    ]
    assert codes.count(200) == 10 and codes[-4:] == [429] * 4
    assert chat(base, "good").status_code == 200
    for port_proc in proxy.processes:
        stop(port_proc)
    with Store(store, read_only=True) as db:
        events = [r[0] for r in db.run("SELECT event FROM audit_log")]
        logged = db.run("SELECT account_id, api_key_id FROM exchanges")
        assert db.verify_audit_chain()
    assert (
        "decision.challenge" in events
        and "decision.throttle" in events
        and "decision.shape" in events
    )
    assert {a for a, _ in logged} >= {"good", "suspect"}
    assert all(
        k.startswith("kh-") and "sk-" not in k for _, k in logged
    )  # keys stored only as hashes


def test_cap_answer_cuts_what_the_client_sees_after_reasoning_not_the_request(proxy, tmp_path):
    """With ``cap_answer`` the upstream gets the client's own max_tokens (a reasoning model can
    finish its reasoning), the reasoning is stripped, and the answer the client sees is cut at
    the cap (4 characters a token), marked as cut, in JSON and in streams, chat and Responses
    alike. Without it the request is capped, as before."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n  - {name: after, when: {verdict: suspicious}, action: shape, max_tokens: 10, "
        "strip_reasoning: true, cap_answer: true}\n"
        "  - {name: before, when: {verdict: distillation}, action: shape, max_tokens: 10}\n"
    )
    base, _ = proxy("--policy", str(policy))
    auth = {"Authorization": "Bearer sk-suspect"}
    answer = chat(base, "suspect", "explain", max_tokens=200).json()["choices"][0]
    assert (
        answer["message"]["content"] == ("word " * 8)[:40] and answer["finish_reason"] == "length"
    )
    assert "private chain" not in str(answer)
    capped_request = chat(base, "flagged", "explain", max_tokens=200).json()["choices"][0]
    assert (
        capped_request["message"]["content"].endswith(" word")
        and capped_request["message"]["content"].count("word") == 10
    )
    whole = chat(base, "good", "explain", max_tokens=200).json()["choices"][0]["message"]["content"]
    assert whole.count("word") == 200  # a benign account: untouched

    body = {"model": "atlas-2", "stream": True, "max_tokens": 200,
            "messages": [{"role": "user", "content": "explain"}]}  # fmt: skip
    text, finish = "", None
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", json=body, headers=auth, timeout=10
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices") or []:
                    text += (choice.get("delta") or {}).get("content") or ""
                    finish = choice.get("finish_reason") or finish
    assert text == ("word " * 8)[:40] and finish == "length"

    response = httpx.post(f"{base}/v1/responses", headers=auth, timeout=10,
                          json={"model": "atlas-2", "input": "explain", "max_output_tokens": 200}).json()  # fmt: skip
    message = next(i for i in response["output"] if i["type"] == "message")
    assert message["content"][0]["text"] == " ".join(["word"] * 16)[:40]
    assert response["status"] == "incomplete"
    deltas, final = "", None
    with httpx.stream("POST", f"{base}/v1/responses", headers=auth, timeout=10,
                      json={"model": "atlas-2", "input": "explain", "stream": True,
                            "max_output_tokens": 200}) as r:  # fmt: skip
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if event["type"] == "response.output_text.delta":
                    deltas += event["delta"]
                elif event["type"].startswith("response.") and event["type"] in (
                    "response.completed",
                    "response.incomplete",
                ):
                    final = event
    assert deltas == " ".join(["word"] * 16)[:40] and final["type"] == "response.incomplete"
    item = next(i for i in final["response"]["output"] if i["type"] == "message")
    assert item["content"][0]["text"] == deltas


def test_shadow_mode_enforces_nothing(proxy):
    base, _ = proxy("--shadow")
    assert chat(base, "flagged").status_code == 200
    recent = httpx.get(
        f"{base}/admin/decisions", headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()["recent"]
    assert any(
        d["account_id"] == "flagged" and d["action"] == "challenge" and d["shadow"] for d in recent
    )


def test_verdicts_hot_reload_and_admin_lift(proxy):
    base, vfile = proxy()
    assert chat(base, "good").status_code == 200
    verdicts_file(vfile, {"good": ("distillation", 0.95, "c-3")})
    time.sleep(1.2)
    assert chat(base, "good").status_code == 403
    assert httpx.post(f"{base}/admin/lift", json={"account_id": "good"}).status_code == 401
    lifted = httpx.post(f"{base}/admin/lift", json={"account_id": "good", "reason": "appeal #12: university lab"},
                        headers={"Authorization": f"Bearer {ADMIN}"})  # fmt: skip
    assert lifted.status_code == 200 and lifted.json()["lifted"]
    assert chat(base, "good").status_code == 200
    allow = httpx.get(
        f"{base}/admin/allowlist", headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()
    assert "good" in allow["allowlist"]


def test_new_account_linked_to_flagged_cluster(proxy, tmp_path):
    store = tmp_path / "link.duckdb"
    template = "### Instruction: {} Think step by step and show all of your reasoning before the final answer."
    with Store(store) as db:
        rows = [validate_exchange({"id": f"h{i}", "ts": "2026-03-02T10:00:00Z", "account_id": f"hydra{i % 4}",
                                   "model": "m", "ip": f"73.9.{i % 3}.{i}", "tls_fingerprint": "t13d1812h1_hydra",
                                   "messages": [{"role": "user", "content": template.format(f"write parser number {i} for logs")}]})
                for i in range(40)]  # fmt: skip
        db.insert_exchanges(exchanges_to_table(rows, "fixture"))
        db.upsert_accounts(
            [
                parse_account({"account_id": f"hydra{i}", "payment_fingerprint": "pm_stolen"})
                for i in range(4)
            ]
        )
    verdicts = {f"hydra{i}": ("distillation", 0.99, "c-7") for i in range(4)}
    base, _ = proxy("--trusted-proxy", "127.0.0.1/32", store=store, verdicts=verdicts)
    headers = {
        "Authorization": "Bearer sk-new0",
        "X-JA4": "t13d1812h1_hydra",
        "X-Forwarded-For": "73.9.0.77",
    }
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": template.format("write parser number 999 for csv")}
        ],
    }
    first = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers)
    assert first.status_code == 403 and first.json()["error"]["code"] == "verification_required"
    # An ordinary new user behind the same residential proxy exit (/24) is not linked by that alone.
    plain = chat(
        base,
        "new1",
        "what's a good pasta recipe?",
        headers={"X-Forwarded-For": "198.51.100.1, 73.9.1.200"},
    )
    assert plain.status_code == 200
    # X-Forwarded-For from an untrusted peer would be ignored; here the trusted hop's client is used.
    health = httpx.get(f"{base}/healthz").json()
    assert health["verdicts"]["linking_artefacts"] >= 3


def test_two_replicas_share_one_limit_through_redis(proxy, redis_url):
    url, _ = redis_url
    a, _ = proxy("--redis", url, "--replay-time-header", "X-Replay-Time")
    b, _ = proxy("--redis", url, "--replay-time-header", "X-Replay-Time")
    codes = [chat(a if i % 2 else b, "shady", headers=PINNED).status_code for i in range(16)]
    assert codes.count(200) == 10 and codes.count(429) == 6  # one global limit of 10/min
    state = httpx.get(f"{a}/healthz").json()["state"]
    assert (state["backend"], state["ok"], state["error"]) == ("redis", True, None)
    metrics = httpx.get(f"{a}/metrics").text
    assert (
        "distillwatch_decisions_total" in metrics
        and "distillwatch_upstream_latency_seconds" in metrics
    )


def test_redis_down_fails_open_or_closed(proxy, tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    base, _ = proxy("--redis", dead)
    assert chat(base, "good").status_code == 200  # default policy: fail open
    health = httpx.get(f"{base}/healthz").json()
    assert health["status"] == "degraded" and health["state"]["ok"] is False
    closed = tmp_path / "closed.yaml"
    closed.write_text(
        "fail_open: false\nrules:\n  - {name: flagged, when: {verdict: distillation}, action: block}\n"
    )
    base2, _ = proxy("--redis", dead, "--policy", str(closed))
    refused = chat(base2, "good")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "fail_closed"


def test_upstream_down_or_slow_gives_openai_errors_and_degraded_health(proxy):
    dead = free_port()  # nothing listens here
    base, _ = proxy("--upstream", f"http://127.0.0.1:{dead}")
    r = chat(base, "good")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"
    health = httpx.get(f"{base}/healthz", timeout=5).json()
    assert health["status"] == "degraded" and health["upstream"]["last_error"]

    port = free_port()
    slow = start(["mock-upstream", "--listen", f"127.0.0.1:{port}", "--delay-ms", "3000"],
                 f"http://127.0.0.1:{port}/v1/models")  # fmt: skip
    try:
        base, _ = proxy("--upstream", f"http://127.0.0.1:{port}", "--upstream-timeout", "0.5")
        started = time.monotonic()
        r = chat(base, "good")
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        assert time.monotonic() - started < 2.5
    finally:
        stop(slow)
