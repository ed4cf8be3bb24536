"""Streaming evidence at the gateway: batch agreement, scoring, bounds, and two replicas on Redis."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from distillwatch.detection.pipeline import account_rows, detect
from distillwatch.enforce.policy import parse_policy
from distillwatch.enforce.streaming import (
    MemoryStream,
    RedisStream,
    SignupIndex,
    Snapshot,
    StreamingEvidence,
    online_row,
)
from distillwatch.errors import PolicyError
from distillwatch.ingest import ingest_paths
from distillwatch.store import Store
from distillwatch.traffic import iter_records, simulate
from tests.gateway import chat

T0 = datetime(2026, 3, 2, 9, 0, 0)


def _prompt(record: dict) -> str:
    for message in reversed(record["messages"]):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""


async def _stream_all(evidence: StreamingEvidence, records: list[dict]) -> dict[str, object]:
    last = {}
    for r in records:
        when = datetime.fromisoformat(r["ts"].replace("Z", ""))
        last[r["account_id"]] = await evidence.assess(
            r["account_id"], r.get("ip"), r.get("user_agent"), _prompt(r),
            len(r["messages"]) > 1 or bool(r.get("conversation_id")),
            r["model"], when)  # fmt: skip
        await evidence.add_output(r["account_id"], int(r.get("completion_tokens") or 0), when)
    return last


def test_online_rows_agree_with_batch_features(tmp_path):
    """The counts the gateway keeps per request and the sign-up evidence it reads (the same
    SQL) equal what batch detection computes from the log, account by account."""
    traffic = tmp_path / "traffic"
    simulate("small", traffic, seed=5, scale=0.15)
    records = sorted(iter_records(traffic / "exchanges.jsonl"), key=lambda r: r["ts"])
    until = datetime.fromisoformat(records[-1]["ts"].replace("Z", ""))
    with Store(tmp_path / "s.duckdb") as store:
        ingest_paths([traffic / "exchanges.jsonl"], store, accounts=traffic / "accounts.jsonl")
        detect(store, until)
        batch = {r["account_id"]: r for r in account_rows(store, until)}
    payments = {}
    for line in (traffic / "accounts.jsonl").read_text().splitlines():
        row = json.loads(line)
        payments[row["account_id"]] = row["payment_fingerprint"]
    stream = MemoryStream()
    evidence = StreamingEvidence(stream, SignupIndex(traffic / "accounts.jsonl"), payments=payments)
    asyncio.run(_stream_all(evidence, records))
    evidence.signups.refresh(until.replace(tzinfo=UTC).timestamp())  # as of the batch cutoff
    checked = 0
    fired = {"payment_shared_with": 0, "created_burst": 0, "cot_rate": 0, "capabilities": 0}
    for account, row in batch.items():
        online = stream._accounts[account]["c"]
        assert online["n"] == row["n"], account
        assert online["cot"] / online["n"] == pytest.approx(row["cot_rate"]), account
        assert online["multi"] / online["n"] == pytest.approx(row["multi_turn"]), account
        assert len(stream._accounts[account]["pfx"].members) == row["prefixes"], account
        features = online_row(online, Snapshot(online, {}, 0, 0, {}), None, 0.0)
        assert features["capabilities"] == row["capabilities"], account
        sign = evidence.signups.features[account]
        for name in ("payment_shared_with", "created_near", "created_burst", "disposable_email"):
            assert sign[name] == row[name], (account, name)
        fired["payment_shared_with"] += row["payment_shared_with"] >= 2
        fired["created_burst"] += bool(row["created_burst"])
        fired["cot_rate"] += row["cot_rate"] > 0.2
        fired["capabilities"] += row["capabilities"] >= 4
        checked += 1
    assert checked > 100 and all(fired.values()), fired  # the comparison covered real evidence


def _accounts_file(path, farm: int = 8):
    rows = [{"account_id": f"farm{i}", "created_at": (T0 - timedelta(hours=2, minutes=i)).isoformat() + "Z",
             "email_domain": "mailinator.com", "payment_fingerprint": "pm_shared_card"} for i in range(farm)]  # fmt: skip
    rows += [{"account_id": f"person{i}", "created_at": (T0 - timedelta(days=300 + 17 * i)).isoformat() + "Z",
              "email_domain": "gmail.com", "payment_fingerprint": f"pm_own_{i}"} for i in range(40)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, {r["account_id"]: r["payment_fingerprint"] for r in rows}


TEMPLATE = "You are a data generator. Write a detailed answer to the task below, {q}, and explain step by step your reasoning before the final answer please"


def test_a_farm_is_scored_from_its_first_requests_and_a_person_is_not(tmp_path):
    path, payments = _accounts_file(tmp_path / "accounts.jsonl")
    evidence = StreamingEvidence(MemoryStream(), SignupIndex(path), payments=payments)

    async def run():
        farm, person, early = None, None, None
        for i in range(24):
            when = T0 + timedelta(minutes=i)
            for a in range(8):
                farm = await evidence.assess(f"farm{a}", f"203.0.{a}.{i % 7}", "python-httpx/0.27",
                                             TEMPLATE.format(q=f"task number {i} of kind {a}"),
                                             False, "atlas-2", when)  # fmt: skip
            if i == 2:
                early = farm  # three requests per account: own content evidence is discounted
            person = await evidence.assess("person3", "81.2.69.160", "Mozilla/5.0",
                                           f"what should I cook tonight with {i} eggs?", i % 3 > 0,
                                           "atlas-2", when)  # fmt: skip
        return farm, person, early

    farm, person, early = asyncio.run(run())
    assert farm.score > 0.9 and person.score < 0.05
    assert "payment instrument shared with 7" in " ".join(farm.reasons)
    # Early on, the card's pooled requests carry the content evidence the account lacks alone.
    assert early.requests == 3 and early.score > 0.5
    assert "pooled over the" in " ".join(early.reasons)


def test_memory_stream_is_bounded(tmp_path):
    stream = MemoryStream(max_accounts=100, max_sketch_keys=300)
    evidence = StreamingEvidence(stream)

    async def run():
        for i in range(1000):
            await evidence.assess(f"a{i}", f"10.0.{i % 250}.1", None, f"question {i} about things and more words here", False, "m", T0)  # fmt: skip

    asyncio.run(run())
    assert asyncio.run(stream.accounts()) == 100 and len(stream._reach) <= 300


def test_min_stream_score_is_validated():
    rule = {"name": "s", "action": "shape", "when": {"min_stream_score": 0.5}}
    assert parse_policy({"rules": [rule]}).rules[0].matches({"stream_score": 0.6})
    assert not parse_policy({"rules": [rule]}).rules[0].matches({"stream_score": 0.4})
    for bad in (1.5, "high", -0.1, True):
        with pytest.raises(PolicyError, match="min_stream_score"):
            parse_policy({"rules": [{**rule, "when": {"min_stream_score": bad}}]})


def test_redis_stream_matches_the_in_process_one(redis_url, tmp_path):
    """The Lua script and the in-process code keep the same counters and give the same score."""
    url, _ = redis_url
    path, payments = _accounts_file(tmp_path / "accounts.jsonl")

    async def run(store):
        evidence = StreamingEvidence(store, SignupIndex(path), payments=payments)
        scores = []
        for i in range(12):
            for a in range(4):
                s = await evidence.assess(f"farm{a}", f"203.0.{a}.{i}", "ua", TEMPLATE.format(q=f"item {i}"),
                                          False, "atlas-2", T0 + timedelta(minutes=i))  # fmt: skip
                scores.append(round(s.log_odds, 6))
        await store.close()
        return scores

    redis_store = RedisStream(url, prefix=f"dw-test-{tmp_path.name}:")
    assert asyncio.run(run(MemoryStream())) == asyncio.run(run(redis_store))


def test_two_replicas_share_streaming_state_through_redis(proxy, redis_url, tmp_path):
    """Requests of one account alternate between two replicas; the evidence each one scores
    is the fleet's: the account crosses the threshold after 12 to 20 requests in all, which
    neither replica alone (at most 10 each) would have seen."""
    url, _ = redis_url
    policy = tmp_path / "stream.yaml"
    policy.write_text(
        "rules:\n  - {name: streaming, when: {min_stream_score: 0.5}, action: block}\n"
    )
    args = (
        "--redis",
        url,
        "--stream",
        "--policy",
        str(policy),
        "--replay-time-header",
        "X-Replay-Time",
    )
    accounts = ["s1", "s2", "s3"]
    a, _ = proxy(*args, accounts=accounts)
    b, _ = proxy(*args, accounts=accounts)
    prompt = "Answer the following task as a careful expert would do it: {q}. Think step by step and show every step of the reasoning"

    def ask(base: str, account: str, i: int) -> int:
        when = (T0 + timedelta(seconds=30 * i)).isoformat() + "Z"
        return chat(base, account, prompt.format(q=f"problem {i} of set {account}"),
                    headers={"X-Replay-Time": when}).status_code  # fmt: skip

    for i, other in enumerate(("s2", "s3")):  # the wrapper is now shared by three accounts
        assert ask(a, other, i) == 200
    codes = [ask(a if i % 2 else b, "s1", i) for i in range(20)]
    first_block = codes.index(403)
    assert 12 <= first_block < 20 and all(c == 200 for c in codes[:first_block]), codes
    assert codes[first_block:].count(403) == len(codes) - first_block  # both replicas refuse
    health = httpx.get(f"{b}/healthz").json()
    assert health["streaming"]["backend"] == "redis" and health["streaming"]["accounts"] >= 3
    recent = httpx.get(
        f"{a}/admin/decisions", headers={"Authorization": "Bearer admin-secret-token"}
    ).json()
    reasons = " ".join(r for d in recent["recent"] for r in d.get("reasons", []))
    assert "streaming evidence" in reasons and "step-by-step" in reasons


SCENARIO = """
name: hour-test
start: "2026-03-02T00:00:00Z"
days: 2
models: {base: [atlas-2, atlas-2-mini]}
benign:
  - {persona: casual_chat, accounts: 40, prompts: [oasst, koala, nq_open], daily_requests: 5,
     active_days: 0.6, client: browser, network: home, diurnal: true, multi_turn: 0.4}
  - {persona: developer, accounts: 10, prompts: [self_instruct, mt_bench], daily_requests: 25,
     active_days: 0.8, client: sdk, network: datacenter, diurnal: true, multi_turn: 0.2}
campaigns:
  - id: camp-farm
    accounts: 12
    daily_requests: 30
    start_day: 0.5
    tactics:
      account_burst: {bursts: 1, disposable_email: true, payment_cards: 2}
      templated_self_instruct: {pools: [gpteacher_code], templates: 2}
      cot_elicitation: {rate: 0.8, variants: 1}
"""


def test_replay_through_the_gateway_streaming_shapes_a_farm_before_any_micro_batch(tmp_path, cli):
    """``bench hour --compare`` end to end on a small world: the real proxy, the mock upstream,
    micro-batches every 12 replayed hours. Streaming evidence shapes the farm from its first
    requests; without it the farm is served in full until the first micro-batch flags it."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    simulate(scenario, tmp_path / "traffic", seed=4)
    result = cli("bench", "hour", "--traffic", tmp_path / "traffic", "--detect-every-hours", "12",
                 "--compare", "--out", tmp_path / "hour")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "camp-farm" in result.stdout and "served in full" in result.stdout
    report = json.loads((tmp_path / "hour" / "hour.json").read_text())
    on, off = report["stream"], report["micro_batch_only"]
    for result in (on, off):
        rows = [*result["per_campaign"].values(), *result["per_persona"].values()]
        assert sum(r["requests"] for r in rows) == result["requests"]
        assert all(r["other"] == 0 for r in rows)  # every request answered 200, 403 or 429
        assert result["micro_batches"] == 4
    farm_on, farm_off = on["per_campaign"]["camp-farm"], off["per_campaign"]["camp-farm"]
    assert farm_on["served_in_full_share"] < 0.05 < farm_off["served_in_full_share"]
    # Streaming acts before any micro-batch could; micro-batches alone only at the first run
    # after it started (the farm starts at 14:00, the runs are at 12:00 and 00:00).
    hours = "hours_to_first_action"
    assert farm_on[hours] < 8 < (farm_off[hours] if farm_off[hours] is not None else 99)
    assert on["benign_refused_share"] == 0 and on["benign_shaped_share"] < 0.01
    assert on["streaming"]["accounts"] >= 50
