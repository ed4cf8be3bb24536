"""The LiteLLM guard inside a real LiteLLM proxy server, in front of the mock upstream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from distillwatch.enforce.processes import free_port, wait_http
from distillwatch.provenance.canary import canary_for
from distillwatch.provenance.watermark import Keyring, WatermarkKey
from tests.gateway import start, stop, verdicts_file

pytest.importorskip(
    "litellm", reason="the litellm extra is not installed (pip install -e '.[litellm]')"
)
pytestmark = pytest.mark.e2e


def test_guard_in_real_litellm_proxy(tmp_path):
    up = free_port()
    upstream = start(
        ["mock-upstream", "--listen", f"127.0.0.1:{up}"], f"http://127.0.0.1:{up}/v1/models"
    )
    verdicts = verdicts_file(tmp_path / "verdicts.json", {
        "harvester": ("distillation", 0.99, "c-1"), "edgy": ("suspicious", 0.6, "c-2"), "alice": ("benign", 0.0, None)})  # fmt: skip
    (tmp_path / "distillwatch_guard.py").write_text(
        "from distillwatch.integrations.litellm import DistillwatchGuard\nguard = DistillwatchGuard.from_env()\n"
    )
    (tmp_path / "config.yaml").write_text(
        "model_list:\n  - model_name: atlas-2\n    litellm_params:\n      model: openai/atlas-2\n"
        f"      api_base: http://127.0.0.1:{up}/v1\n      api_key: sk-upstream\n"
        "litellm_settings:\n  callbacks: distillwatch_guard.guard\n"
        "general_settings:\n  master_key: sk-master\n"
    )
    # Streaming evidence on, with a farm's sign-up records: the default policy plus a rule that
    # refuses at a low streaming score, so the farm's very first request shows it working.
    from importlib import resources

    default = resources.files("distillwatch.enforce").joinpath("default_policy.yaml").read_text()
    # ...and, first, the default's rule for suspicious reasoning requests with a canary.
    # (The answer capped after reasoning, at 10 tokens: 40 characters.)
    canary_rule = ("rules:\n  - {name: canary, when: {verdict: suspicious, cot_elicitation: true}, "
                   "action: shape, max_tokens: 10, cap_answer: true, strip_reasoning: true, canary: true}\n")  # fmt: skip
    (tmp_path / "policy.yaml").write_text(
        default.replace("rules:\n", canary_rule, 1)
        + "  - {name: streaming-test, when: {min_stream_score: 0.2}, action: block}\n"
    )
    key = WatermarkKey("canaries", "7e" * 32)
    Keyring([key]).write(tmp_path / "keys.json")
    canary = canary_for(key, "c-2").sentence
    farm = [{"account_id": f"farm{i}", "created_at": f"2026-03-01T08:0{i}:00Z", "email_domain": "mailinator.com",
             "payment_fingerprint": "pm_farm"} for i in range(8)]  # fmt: skip
    farm += [{"account_id": f"person{d}", "created_at": f"2026-02-{d + 1:02d}T12:00:00Z",
              "email_domain": "gmail.com", "payment_fingerprint": f"pm_{d}"} for d in range(28)]  # fmt: skip
    (tmp_path / "accounts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in farm))
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "DISTILLWATCH_VERDICTS": str(verdicts),
           "DISTILLWATCH_STORE": str(tmp_path / "ll.duckdb"), "DISTILLWATCH_ACCOUNT_FROM": "user",
           "DISTILLWATCH_STREAM": "1", "DISTILLWATCH_ACCOUNTS": str(tmp_path / "accounts.jsonl"),
           "DISTILLWATCH_POLICY": str(tmp_path / "policy.yaml"),
           "DISTILLWATCH_CANARY_KEYS": str(tmp_path / "keys.json")}  # fmt: skip
    litellm_bin = Path(sys.executable).with_name("litellm")
    proc = subprocess.Popen([str(litellm_bin), "--config", "config.yaml", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=90)
        base = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"Authorization": "Bearer sk-master"}

        def ask(user: str, content: str = "hi", **extra):
            body = {
                "model": "atlas-2",
                "user": user,
                "messages": [{"role": "user", "content": content}],
                **extra,
            }
            return httpx.post(base, json=body, headers=headers, timeout=60)

        ok = ask("alice")
        message = ok.json()["choices"][0]["message"]
        # LiteLLM moves <think> sections into reasoning_content; either way, alice gets them.
        assert ok.status_code == 200 and (
            message.get("reasoning_content") or "<think>" in message["content"]
        )
        farmed = ask("farm3", "Explain step by step how to sort a list")
        assert farmed.status_code == 403 and "account_blocked" in farmed.text
        refused = ask("harvester")
        assert refused.status_code == 403 and "verification_required" in refused.text
        shaped = ask("edgy", "Think step by step: is 91 prime?", max_tokens=3000)
        assert shaped.status_code == 200, shaped.text
        content = shaped.json()["choices"][0]["message"]["content"]
        assert (
            shaped.status_code == 200 and "<think>" not in content and content.count("word") <= 512
        )
        assert "private chain of thought" not in shaped.text  # reasoning_content removed too
        assert content.endswith(canary) and canary not in ok.text
        # The upstream was asked for 3000 tokens; the client sees 40 characters, marked as cut.
        assert content.split("\n\n")[0] == ("word " * 8)[:40].rstrip(), content[:200]
        assert shaped.json()["choices"][0]["finish_reason"] == "length"

        def stream(user: str, content: str) -> bytes:
            body = {"model": "atlas-2", "user": user, "stream": True,
                    "messages": [{"role": "user", "content": content}]}  # fmt: skip
            with httpx.stream("POST", base, json=body, headers=headers, timeout=60) as response:
                assert response.status_code == 200
                return b"".join(response.iter_raw())

        # The mock streams reasoning_content deltas and a <think> tag split across chunks.
        assert b"private chain of thought" in stream("alice", "hi")
        shaped_stream = stream("edgy", "Think step by step: is 91 prime?")
        assert b"private chain of thought" not in shaped_stream and b"hidden" not in shaped_stream
        assert b"word" in shaped_stream
        streamed = "".join(
            (choice.get("delta") or {}).get("content") or ""
            for line in shaped_stream.decode().splitlines()
            if line.startswith("data: {")
            for choice in json.loads(line[6:]).get("choices") or []
        )
        assert streamed.endswith(canary) and streamed.startswith(("word " * 8)[:40]), streamed
        assert len(streamed) == 40 + len(canary_for(key, "c-2").suffix)
        tools = [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}},
            }
        ]
        called = ask("alice", "CALL_TOOL weather?", tools=tools)
        assert (
            called.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"]
            == "get_weather"
        )
        # LiteLLM's Responses API route: decided, refused and shaped like chat completions.
        responses = f"http://127.0.0.1:{port}/v1/responses"

        def respond(user: str, text: str, **extra):
            body = {"model": "atlas-2", "user": user, "input": text, **extra}
            return httpx.post(responses, json=body, headers=headers, timeout=60)

        plain = respond("alice", "hi", metadata={"order": "42"})
        assert plain.status_code == 200, plain.text
        # The client's metadata reaches the upstream as sent; the guard's decision never does.
        assert plain.json()["metadata"] == {"order": "42"}
        assert plain.json()["output"][0]["summary"] and "<think>" in plain.text
        assert respond("harvester", "hi").status_code == 403
        assert respond("alice", "hi", input=[{"role": "user", "content": 5}]).status_code == 400
        capped = respond("edgy", "Think step by step: is 91 prime?", max_output_tokens=3000).json()
        text = capped["output"][1]["content"][0]["text"]
        assert capped["output"][0] == {"type": "reasoning", "id": "rs_1", "summary": []}
        assert text == ("word " * 8)[:40].rstrip() + canary_for(key, "c-2").suffix, text
        assert capped["status"] == "incomplete" and "scratchpad" not in json.dumps(capped)
        body = {"model": "atlas-2", "user": "edgy", "input": "Think step by step: is 91 prime?",
                "stream": True}  # fmt: skip
        with httpx.stream("POST", responses, json=body, headers=headers, timeout=60) as response:
            assert response.status_code == 200
            sse = b"".join(response.iter_raw()).decode()
        events = [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: {")]
        deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert deltas == ("word " * 8)[:40] + canary_for(key, "c-2").suffix, deltas
        assert not any(e["type"].startswith("response.reasoning") for e in events)
        assert events[-1]["type"] == "response.incomplete" and "scratchpad" not in sse
        final = events[-1]["response"]["output"][1]["content"][0]["text"]
        assert final == deltas
        time.sleep(2)  # LiteLLM logs success after responding; the sink folds its journal then
    finally:
        stop(proc)
        stop(upstream)
    from distillwatch.store import Store

    with Store(tmp_path / "ll.duckdb", read_only=True) as store:
        events = {row[0] for row in store.run("SELECT event FROM audit_log")}
        logged = {row[0] for row in store.run("SELECT account_id FROM exchanges")}
        calls = store.run(
            "SELECT response_tool_calls FROM exchanges WHERE prompt = 'CALL_TOOL weather?'"
        )
        streamed = store.run("SELECT response FROM exchanges WHERE account_id = 'edgy'")
        via_responses = store.run(
            "SELECT account_id, prompt FROM exchanges WHERE endpoint = '/v1/responses'"
        )
    assert json.loads(calls[0][0])[0]["name"] == "get_weather"
    assert all("hidden" not in (r or "") for (r,) in streamed)
    assert {"decision.challenge", "decision.shape"} <= events
    assert {"alice", "edgy"} <= logged
    assert ("alice", "hi") in via_responses and (
        "edgy",
        "Think step by step: is 91 prime?",
    ) in via_responses
    assert json.dumps(sorted(logged))
