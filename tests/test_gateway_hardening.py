"""Gateway hardening: nothing a client sends bypasses the policy, escapes the log, or takes the
proxy down. Real proxy processes over loopback, driven by the official ``openai`` SDK, httpx and
raw sockets; a mock upstream that sends reasoning the way real servers do; real DuckDB."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from distillwatch.enforce.processes import free_port
from distillwatch.store import Store
from tests.gateway import ADMIN, PINNED, chat, keys_file, start, stop, verdicts_file

pytestmark = pytest.mark.e2e
COT = "Think step by step: is 91 prime?"  # a suspicious account asking this gets shaped


def sdk(base: str, account: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=f"sk-{account}", max_retries=0, timeout=10)


def rows(store: Path, sql: str, params: list | None = None) -> list[tuple]:
    with Store(store, read_only=True) as db:
        return db.run(sql, params)


def metric(base: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def raw_stream(base: str, account: str, route: str, body: dict) -> bytes:
    with httpx.stream("POST", f"{base}{route}", json={**body, "stream": True}, timeout=10,
                      headers={"Authorization": f"Bearer sk-{account}"}) as response:  # fmt: skip
        assert response.status_code == 200
        return b"".join(response.iter_raw())


# -- 1. shaping applies to every response form --------------------------------------------------
def test_shaping_strips_reasoning_from_streams_and_the_responses_api(proxy, tmp_path):
    store = tmp_path / "shape.duckdb"
    base, _ = proxy(store=store)
    chat_body = {"model": "atlas-2", "messages": [{"role": "user", "content": COT}]}
    resp_body = {"model": "atlas-2", "input": COT}
    # The upstream really sends reasoning (a benign account gets it): the checks below can fail.
    plain = raw_stream(base, "good", "/v1/chat/completions", chat_body)
    assert b"reasoning_content" in plain and b"<thi" in plain and b"oning</th" in plain
    assert b"response.reasoning_summary_text.delta" in raw_stream(
        base, "good", "/v1/responses", resp_body
    )

    shaped = raw_stream(base, "suspect", "/v1/chat/completions", chat_body)
    assert b"reasoning_content" not in shaped and b"hidden" not in shaped and b"think" not in shaped
    assert shaped.count(b"word") == 16 and shaped.endswith(b"data: [DONE]\n\n")
    shaped = raw_stream(base, "suspect", "/v1/responses", resp_body)
    assert b"reasoning_summary" not in shaped and b"I considered it" not in shaped
    assert b"scratchpad" not in shaped and b"response.completed" in shaped

    # The official SDK reads the shaped streams and objects without noticing anything.
    client = sdk(base, "suspect")
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="atlas-2", messages=[{"role": "user", "content": COT}], stream=True) if c.choices]  # fmt: skip
    assert "".join(pieces).strip() == " ".join(["word"] * 16)
    with client.responses.stream(model="atlas-2", input=COT) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_response()
    assert not any(e.startswith("response.reasoning") for e in events)
    assert final.output_text.strip().startswith("word") and "scratchpad" not in final.output_text
    answer = client.responses.create(model="atlas-2", input=COT)
    assert answer.output[0].type == "reasoning" and answer.output[0].summary == []
    assert "think" not in answer.output_text
    message = (
        client.chat.completions.create(model="atlas-2", messages=[{"role": "user", "content": COT}])
        .choices[0]
        .message
    )
    assert "think" not in message.content and not getattr(message, "reasoning_content", None)

    for process in proxy.processes:
        stop(process)
    logged = rows(
        store, "SELECT account_id, endpoint, response FROM exchanges WHERE account_id = 'suspect'"
    )
    assert len(logged) == 6 and {e for _, e, _ in logged} == {
        "/v1/chat/completions",
        "/v1/responses",
    }
    assert all("think" not in (r or "") and "word" in r for _, _, r in logged)


# -- 2. every served exchange is logged; what the sink refuses is counted and kept ------------------
UNUSUAL = [
    [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "hologram", "x": 1}]}],
    [{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}, {"role": "user", "content": "b"}],
    [{"role": "narrator", "content": "once"}, {"role": "user", "content": "c"}],
    [{"role": "system", "content": None}, {"role": "user", "content": "d"}],
    [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}],
    [{"role": "user", "content": "e", "cache_control": {"type": "ephemeral"}}],
    [{"role": "developer", "content": [{"type": "text", "text": "rules"}]}, {"role": "user", "content": "f"}],
    [{"role": "user", "content": ["legacy string part"]}],
    [{"role": "tool", "tool_call_id": "x", "content": None}, {"role": "user", "content": "g"}],
    [{"role": "user", "content": "h" * 100_000}],
]  # fmt: skip


def test_every_served_exchange_is_logged_and_refusals_are_counted(proxy, tmp_path):
    store = tmp_path / "log.duckdb"
    long_id = "tenant/" + "x" * 300  # longer than Contract 1 allows an account id to be
    base, _ = proxy("--max-body-bytes", "1000000", store=store, accounts=[long_id])
    for messages in UNUSUAL:
        r = httpx.post(f"{base}/v1/chat/completions", json={"model": "m", "messages": messages},
                       headers={"Authorization": "Bearer sk-good"}, timeout=10)  # fmt: skip
        assert r.status_code == 200, (messages, r.text)
    empty = httpx.post(f"{base}/v1/chat/completions", json={"model": "m", "messages": []},
                       headers={"Authorization": "Bearer sk-good"})  # fmt: skip
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"
    assert chat(base, long_id).status_code == 200
    deadline = time.time() + 10
    while httpx.get(f"{base}/healthz").json()["store"]["rejected"] < 1 and time.time() < deadline:
        time.sleep(0.1)
    health = httpx.get(f"{base}/healthz").json()["store"]
    assert health["rejected"] == 1 and health["exchanges_logged"] == len(UNUSUAL)
    assert (
        health["quarantine"]
        and metric(base, 'distillwatch_log_exchanges_total{outcome="rejected"}') == 1
    )
    quarantined = [json.loads(line) for line in Path(health["quarantine"]).read_text().splitlines()]
    assert quarantined[0]["field"] == "account_id" and "longer than" in quarantined[0]["reason"]
    for process in proxy.processes:
        stop(process)
    logged = rows(store, "SELECT prompt, flags, truncated FROM exchanges ORDER BY prompt")
    assert len(logged) == len(UNUSUAL)
    flags = [f for _, fs, _ in logged for f in (fs or [])]
    assert any("unknown role 'narrator'" in f for f in flags)
    assert any("unsupported content part type 'hologram'" in f for f in flags)
    assert any(truncated for *_, truncated in logged)


# -- 3. tool calls are kept -------------------------------------------------------------------------
def test_tool_calls_are_logged(proxy, tmp_path):
    store = tmp_path / "tools.duckdb"
    base, _ = proxy(store=store)
    client = sdk(base, "good")
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]
    first = client.chat.completions.create(
        model="atlas-2", tools=tools, messages=[{"role": "user", "content": "CALL_TOOL weather?"}]
    )
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    streamed = list(client.chat.completions.create(
        model="atlas-2", tools=tools, stream=True, messages=[{"role": "user", "content": "CALL_TOOL again"}]))  # fmt: skip
    assert any(c.choices and c.choices[0].delta.tool_calls for c in streamed)
    follow = [{"role": "user", "content": "weather?"},
              {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
              {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 14}'}]  # fmt: skip
    client.chat.completions.create(model="atlas-2", tools=tools, messages=follow)
    client.responses.create(model="atlas-2", input="CALL_TOOL in Paris",
                            tools=[{"type": "function", "name": "get_weather", "parameters": {}}])  # fmt: skip
    for process in proxy.processes:
        stop(process)
    logged = rows(
        store, "SELECT prompt, response_tool_calls, messages, extra FROM exchanges ORDER BY ts, id"
    )
    by_prompt = {p: (c, m, e) for p, c, m, e in logged}
    for prompt in ("CALL_TOOL weather?", "CALL_TOOL again", "CALL_TOOL in Paris"):
        calls = json.loads(by_prompt[prompt][0])
        assert calls[0]["name"] == "get_weather" and "Paris" in calls[0]["arguments"], prompt
        assert json.loads(by_prompt[prompt][2])["request_tools"] == ["get_weather"]
    turns = json.loads(by_prompt["weather?"][1])
    assert turns[1]["tool_calls"][0]["name"] == "get_weather"
    assert turns[2] == {"role": "tool", "content": '{"temp_c": 14}', "tool_call_id": call.id}


# -- 4. a Redis outage does not switch off the verdicts ------------------------------------------------
def test_redis_outage_with_fail_open_still_enforces_verdicts(proxy):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    base, _ = proxy("--redis", dead, "--replay-time-header", "X-Replay-Time")
    refused = [chat(base, "flagged").status_code for _ in range(5)]
    assert refused == [403] * 5  # the verdict is local: enforced without Redis
    shaped = chat(base, "suspect", COT).json()["choices"][0]["message"]["content"]
    assert "<think>" not in shaped  # shaping is local too
    # Only the shared counters need Redis: the throttle fails open (12 > its 10 a minute).
    assert {chat(base, "shady", headers=PINNED).status_code for _ in range(12)} == {200}
    health = httpx.get(f"{base}/healthz").json()
    assert health["status"] == "degraded" and "redis" in health["state"]["error"]


# -- 5. admin authentication and input ----------------------------------------------------------
def test_admin_api_takes_only_a_bearer_token_and_checks_its_input(proxy):
    base, _ = proxy()
    url = f"{base}/admin/extend"
    body = {"account_id": "good", "ttl_seconds": 60}
    for header in (
        f"Basic {ADMIN}",
        f"Token {ADMIN}",
        f"x {ADMIN}",
        ADMIN,
        f"Bearer {ADMIN} extra",
    ):
        assert httpx.post(url, json=body, headers={"Authorization": header}).status_code == 401
    auth = {"Authorization": f"bearer {ADMIN}"}  # the scheme is case-insensitive (RFC 7235)
    for bad in (True, 0, -5, 1.5, "60", 10**12):
        r = httpx.post(url, json={**body, "ttl_seconds": bad}, headers=auth)
        assert r.status_code == 400 and "ttl_seconds" in r.json()["error"]["message"], bad
    assert httpx.post(url, json=body, headers=auth).status_code == 200


# -- 6. client input never yields a 500 ----------------------------------------------------------------
def deep(levels: int) -> dict:
    value: object = "x"
    for _ in range(levels):
        value = {"k": value}
    return value  # type: ignore[return-value]


BAD_BODIES = [
    {"messages": [{"role": "user", "content": [{"type": "text", "text": 42}]}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": ["a"]}]}]},
    {"messages": [{"role": "user", "content": 7}]},
    {"messages": "hello"},
    {"messages": [None]},
    {"messages": [{"content": "no role"}]},
    {"messages": [{"role": 3, "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
    {"max_tokens": "abc"},
    {"max_tokens": [1]},
    {"max_tokens": -1},
    {"max_completion_tokens": True},
    {"stream": "yes"},
    {"model": {"name": "x"}},
]  # fmt: skip


def test_malformed_requests_get_400_never_500(proxy, tmp_path):
    # A shape that caps the request (not the answer), so the suspect's body gets rewritten.
    policy = tmp_path / "request-cap.yaml"
    policy.write_text("rules:\n  - {name: cap, when: {verdict: suspicious}, action: shape, "
                      "max_tokens: 512, strip_reasoning: true}\n")  # fmt: skip
    base, _ = proxy("--policy", str(policy))
    ok = [{"role": "user", "content": COT}]
    for account in ("good", "suspect"):  # suspect is shaped: its body gets rewritten
        for bad in BAD_BODIES:
            body = {"model": "m", "messages": ok, **bad}
            r = httpx.post(f"{base}/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer sk-{account}"})  # fmt: skip
            assert r.status_code == 400, (account, bad, r.text)
            assert r.json()["error"]["type"] == "invalid_request_error"
        responses = httpx.post(f"{base}/v1/responses", json={"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": 1}]}]},
                               headers={"Authorization": f"Bearer sk-{account}"})  # fmt: skip
        assert responses.status_code == 400
    nested = {"model": "m", "messages": ok, "metadata": deep(400)}
    shaped = httpx.post(
        f"{base}/v1/chat/completions", json=nested, headers={"Authorization": "Bearer sk-suspect"}
    )
    assert shaped.status_code == 400 and "nested" in shaped.json()["error"]["message"]
    for depth in (60, 254, 1000):  # orjson parses up to 1024 levels; re-serialising fails at 255
        nested_text = '{"k":' * depth + '"x"' + "}" * depth
        body = '{"model": "m", "messages": ' + json.dumps(ok) + ', "metadata": ' + nested_text + "}"
        r = httpx.post(f"{base}/v1/chat/completions", content=body.encode(),
            headers={"Authorization": "Bearer sk-suspect", "content-type": "application/json"})  # fmt: skip
        assert r.status_code in (200, 400), (depth, r.status_code)
    assert metric(base, "distillwatch_internal_errors_total") == 0
    assert 'status="500"' not in httpx.get(f"{base}/metrics").text


# -- 7. a pooled upstream connection closed under a request -------------------------------------------
class OneShotUpstream:
    """An upstream that answers one request per connection, then closes the connection as soon
    as the next request arrives on it, without answering (what uvicorn does after an error)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.served = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length")), 0)  # fmt: skip
        while len(body) < length:
            body += conn.recv(65536)
        return True

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            if not self._request(conn):
                return
            reply = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}}]}).encode()  # fmt: skip
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                         + str(len(reply)).encode() + b"\r\n\r\n" + reply)  # fmt: skip
            self.served += 1
            conn.recv(65536)  # the next request on this kept-alive connection: hang up on it


def test_a_pooled_connection_the_upstream_closed_is_retried_not_502(proxy):
    upstream = OneShotUpstream()
    base, _ = proxy("--upstream", f"http://127.0.0.1:{upstream.port}")
    codes = [chat(base, "good").status_code for _ in range(6)]
    assert codes == [200] * 6 and upstream.served == 6
    assert metric(base, "distillwatch_upstream_retries_total") >= 1
    assert httpx.get(f"{base}/healthz").json()["upstream"]["last_error"] is None


# -- 8 and 9. slow or huge headers, and every refusal in OpenAI's shape ------------------------------
def recv_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def openai_error_of(reply: bytes) -> dict:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return json.loads(body)["error"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_slow_and_huge_headers_are_bounded_and_others_still_served(proxy):
    base, _ = proxy("--max-pending-connections", "50", "--header-timeout", "2")
    port = int(base.rsplit(":", 1)[1])
    pid = proxy.processes[-1].pid
    before = rss_mb(pid)
    slow = []
    for _ in range(300):  # a bounded slowloris: 300 connections that never finish their headers
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow.append(sock)
    started = time.monotonic()
    assert chat(base, "good").status_code == 200 and time.monotonic() - started < 2
    assert metric(base, 'distillwatch_connections_refused_total{reason="evicted"}') >= 250
    # Huge headers: cut at 64 KiB with a 431, never buffered whole.
    huge = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(160):  # up to 10 MB each
                sock.sendall(b"a" * 65536)
        except OSError:
            pass  # the proxy closed it
        huge.append(sock)
    replies = [recv_all(sock) for sock in huge]
    assert all(r.startswith(b"HTTP/1.1 431") for r in replies), replies[0][:100]
    assert openai_error_of(replies[0])["code"] == "request_header_fields_too_large"
    assert rss_mb(pid) - before < 60
    # A connection that stalls in its headers gets a 408 after the header timeout.
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    reply = recv_all(stalled, 6)
    assert reply.startswith(b"HTTP/1.1 408") and openai_error_of(reply)["code"] == "request_timeout"
    for sock in slow + huge + [stalled]:
        sock.close()
    assert chat(base, "good").status_code == 200


def test_a_flooding_address_evicts_its_own_connections_not_others(proxy):
    base, _ = proxy("--max-pending-connections", "20", "--header-timeout", "10")
    port = int(base.rsplit(":", 1)[1])

    def connect(source: str) -> socket.socket:
        sock = socket.socket()
        sock.bind((source, 0))  # distinct loopback addresses stand for distinct clients
        sock.connect(("127.0.0.1", port))
        return sock

    def stall(count: int) -> list[socket.socket]:
        socks = []
        for _ in range(count):
            sock = connect("127.0.0.2")
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        time.sleep(0.3)  # let the proxy register them
        return socks

    attacker = stall(20)  # the waiting list is full of one address's stalled connections
    honest = connect("127.0.0.3")  # an honest client on a slow link, headers still to come
    time.sleep(0.3)
    attacker += stall(30)  # without fairness, the honest connection is the oldest by now
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    honest.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-good\r\n"
                   b"Connection: close\r\nContent-Type: application/json\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
    reply = recv_all(honest, 5)
    for sock in [*attacker, honest]:
        sock.close()
    assert metric(base, 'distillwatch_connections_refused_total{reason="evicted"}') >= 30
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


def test_every_refusal_is_an_openai_error(proxy, tmp_path):
    port = free_port()
    slow = start(["mock-upstream", "--listen", f"127.0.0.1:{port}", "--delay-ms", "1500"],
                 f"http://127.0.0.1:{port}/v1/models")  # fmt: skip
    try:
        base, _ = proxy("--upstream", f"http://127.0.0.1:{port}", "--max-in-flight", "1",
                        "--replay-time-header", "X-Replay-Time")  # fmt: skip
        missing = httpx.get(f"{base}/v1/nothing-here")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
        wrong = httpx.get(f"{base}/v1/chat/completions")
        assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as sock:
            sock.sendall(b"GARBAGE / NOT-HTTP\r\n\r\n")
            reply = recv_all(sock)
        assert (
            reply.startswith(b"HTTP/1.1 400")
            and openai_error_of(reply)["code"] == "bad_http_request"
        )
        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(lambda _: chat(base, "good"), range(2)))
        busy = [r for r in both if r.status_code == 503]
        assert len(busy) == 1 and busy[0].headers["retry-after"] == "1"
        assert busy[0].json()["error"]["code"] == "overloaded"
        # 10. Retry-After says when the rate window really ends (the request is at :30).
        limited = [chat(base, "shady", headers=PINNED) for _ in range(11)][-1]
        assert limited.status_code == 429 and limited.headers["retry-after"] == "30"
    finally:
        stop(slow)


# -- 11. kill -9 loses nothing that was acknowledged ---------------------------------------------------
def test_kill_9_of_the_proxy_loses_no_acknowledged_exchange(upstream, tmp_path):
    store, port = tmp_path / "durable.duckdb", free_port()
    keys = keys_file(tmp_path / "keys.jsonl", ["good"])
    verdicts = verdicts_file(tmp_path / "v.json", {"good": ("benign", 0.0, None)})
    args = ["proxy", "--upstream", upstream, "--listen", f"127.0.0.1:{port}", "--store", str(store),
            "--keys", str(keys), "--verdicts", str(verdicts)]  # fmt: skip
    # The first process folds its journal into the store rarely, so what it acknowledged is (mostly)
    # only in the journal when it dies: the restart must recover it from there.
    proc = start([*args, "--store-fold-seconds", "120"], f"http://127.0.0.1:{port}/healthz")
    base = f"http://127.0.0.1:{port}"
    acknowledged: list[str] = []
    stop_sending = threading.Event()

    def send(worker: int) -> None:
        with httpx.Client(timeout=5) as client:
            for i in range(10_000):
                if stop_sending.is_set():
                    return
                prompt = f"durability probe {worker}-{i}"
                try:
                    r = client.post(f"{base}/v1/chat/completions", headers={"Authorization": "Bearer sk-good"},
                                    json={"model": "m", "messages": [{"role": "user", "content": prompt}]})  # fmt: skip
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acknowledged.append(prompt)

    threads = [threading.Thread(target=send, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)  # mid-traffic, without warning
    proc.wait(timeout=10)
    stop_sending.set()
    for thread in threads:
        thread.join(timeout=10)
    assert len(acknowledged) > 200
    proc = start(args, f"http://127.0.0.1:{port}/healthz")  # the same store: it folds the journal
    deadline = time.time() + 20
    while httpx.get(f"{base}/healthz").json()["store"]["backlog_bytes"] and time.time() < deadline:
        time.sleep(0.2)
    recovered = httpx.get(f"{base}/healthz").json()["store"]["recovered_after_restart"]
    stop(proc)
    logged = {p for (p,) in rows(store, "SELECT prompt FROM exchanges")}
    lost = [p for p in acknowledged if p not in logged]
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged exchanges lost"
    assert recovered > 0  # some really were only in the journal when the process died


# -- 14. nothing attacker-chosen reaches the terminal raw ------------------------------------------
def test_cli_output_escapes_control_characters(tmp_path, cli):
    evil = "acct\x1b]0;owned\x07\x1b[2J\u202eevil"
    log = tmp_path / "evil.jsonl"
    log.write_text(json.dumps({"id": "e1", "ts": "2026-03-01T10:00:00Z", "account_id": evil, "model": "m\x1b[31m",
                               "messages": [{"role": "\x1b[5mx", "content": "hi"}]}) + "\n{bad\x1b[1m json\n")  # fmt: skip
    store = tmp_path / "s.duckdb"
    ingested = cli("ingest", log, "--store", store, "--no-progress")
    shown = cli("stats", "--store", store)
    for result in (ingested, shown):
        assert "\x1b" not in result.stdout + result.stderr and "\u202e" not in result.stdout
    assert "acct\\x1b]0;owned\\x07\\x1b[2J\\u202eevil" in shown.stdout


# -- 12. ingest workers die with their parent ---------------------------------------------------------
def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_kill_9_of_ingest_takes_its_parse_workers_with_it(tmp_path):
    big = tmp_path / "big.jsonl"
    line = {"ts": "2026-03-01T10:00:00Z", "account_id": "a", "model": "m",
            "messages": [{"role": "user", "content": "x" * 300}]}  # fmt: skip
    with open(big, "w") as handle:
        for i in range(220_000):  # ~80 MB: over the parallel threshold
            handle.write(json.dumps({**line, "id": f"r{i}"}) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "distillwatch.cli", "ingest", str(big), "--store",
                             str(tmp_path / "s.duckdb"), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 60
    workers: list[int] = []
    while time.time() < deadline and len(workers) < 2:
        workers = [
            c
            for c in children(proc.pid)
            if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")
        ]
        time.sleep(0.1)
    assert workers, "the ingest never started its parse workers"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    # A worker may still be importing when its parent dies (seconds on a loaded machine: this
    # failed once at 5 s with two benchmarks running beside CI); unwatched, it would parse its
    # 48 MB range for about a minute.
    deadline = time.time() + 20
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.05)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]  # fmt: skip
    assert not alive, f"workers {alive} outlived their parent"
