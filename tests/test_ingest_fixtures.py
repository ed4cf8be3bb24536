"""Ingest of logs exactly as LiteLLM and OpenAI write them (``../shared/fixtures``): every field
``expected.json`` lists survives, in all three LiteLLM export formats, and the OpenAI Batch pair
and Responses API pairs load as exchanges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillwatch.ingest import ingest_paths
from distillwatch.paths import shared_data_dir
from distillwatch.store import Store


@pytest.fixture(scope="module")
def fixtures() -> Path:
    shared = shared_data_dir()
    path = shared.parent / "fixtures" if shared else None
    if path is None or not path.is_dir():
        pytest.skip("../shared/fixtures not found")
    return path


def load(tmp_path: Path, *paths: Path):
    store_path = tmp_path / "s.duckdb"
    quarantine = tmp_path / "q.jsonl"
    with Store(store_path) as store:
        report = ingest_paths(list(paths), store, quarantine=quarantine, workers=1)
        columns = ["id", "ts", "account_id", "model", "prompt", "n_messages", "response",
                   "response_tool_calls", "messages", "ip", "user_agent", "status", "system_prompt",
                   "org_id", "extra", "flags"]  # fmt: skip
        rows = {r[0]: dict(zip(columns, r, strict=True))
                for r in store.run(f"SELECT {', '.join(columns)} FROM exchanges")}  # fmt: skip
    bad = (
        [json.loads(line) for line in quarantine.read_text().splitlines()]
        if quarantine.exists()
        else []
    )
    return report, rows, bad


@pytest.mark.parametrize("export", ["spendlogs.jsonl", "spendlogs.csv", "spendlogs.parquet"])
def test_litellm_spend_logs_keep_what_expected_json_lists(tmp_path, fixtures, export):
    folder = fixtures / "litellm-1.108.7"
    expected = json.loads((folder / "expected.json").read_text())
    report, rows, bad = load(tmp_path, folder / export)
    assert report.formats[str(folder / export)] == "litellm"
    assert report.loaded == len(expected) and report.quarantined == 0 and not bad
    for request_id, want in expected.items():
        row = rows[request_id]
        messages = json.loads(row["messages"]) if row["messages"] else [{"role": "user"}]
        calls = json.loads(row["response_tool_calls"]) if row["response_tool_calls"] else []
        got = {
            "account_id": row["account_id"], "model": row["model"],
            "ts_utc": row["ts"].isoformat(timespec="milliseconds") + "Z",
            "last_user_prompt": row["prompt"], "n_messages": row["n_messages"],
            "response_text": row["response"], "response_tool_call_names": [c["name"] for c in calls],
            "request_has_tool_turns": any(m["role"] == "tool" or m.get("tool_calls") for m in messages),
            "ip": row["ip"], "user_agent": row["user_agent"], "status": row["status"],
            "system_prompt": row["system_prompt"],
        }  # fmt: skip
        assert got == {k: v for k, v in want.items() if k != "case"}, (export, want["case"])
    chain = rows["chatcmpl-mock291074866e9f"]
    assert json.loads(chain["extra"])["ip_chain"] == ["198.51.100.23", "10.0.0.5"]
    bare = rows["chatcmpl-mock5e5a2d4e4daf"]
    assert bare["org_id"] is None and json.loads(bare["extra"])["litellm_end_user"] == "end-user-9"


def test_a_copy_export_with_doubled_backslashes_is_explained(tmp_path, fixtures):
    line = (fixtures / "litellm-1.108.7" / "spendlogs.jsonl").read_text().splitlines()[-1]
    copied = tmp_path / "copy-export.jsonl"
    copied.write_text(
        line.replace("\\", "\\\\") + "\n"
    )  # what \copy (select row_to_json ...) writes
    report, rows, bad = load(tmp_path, copied)
    assert report.quarantined == 1 and not rows
    assert "psql -At -c" in bad[0]["reason"] and "doubles every backslash" in bad[0]["reason"]


def test_openai_batch_pair_and_responses_pairs(tmp_path, fixtures):
    folder = fixtures / "openai-logs"
    report, rows, bad = load(tmp_path, folder)
    assert report.sources[str(folder / "batch_output.jsonl")]["joined_into"] == str(
        folder / "batch_input.jsonl"
    )
    batch = {r["id"]: r for r in rows.values() if r["id"].startswith("batch_req")}
    assert {i: r["status"] for i, r in batch.items()} == {
        "batch_req_wnaDys": 200, "batch_req_t00lCa": 200, "batch_req_err400": 400, "batch_req_expired": None}  # fmt: skip
    assert batch["batch_req_t00lCa"]["account_id"] == "safety-identifier-1234"  # no `user` given
    assert json.loads(batch["batch_req_t00lCa"]["response_tool_calls"])[0]["name"] == "get_weather"
    expired = json.loads(batch["batch_req_expired"]["extra"])
    assert (
        expired["batch_error"]["code"] == "batch_expired"
        and expired["batch_custom_id"] == "request-4"
    )
    assert batch["batch_req_expired"]["flags"][0].startswith("ts: no response time")
    described = rows["resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41"]
    assert (described["system_prompt"], described["prompt"]) == ("Be brief.", "Describe the image.")
    assert described["response"] == "A wooden boardwalk through a green meadow."
    call = json.loads(rows["resp_fc_1"]["response_tool_calls"])[0]
    assert call["name"] == "get_weather" and "Paris" in call["arguments"]
    followed = json.loads(rows["chatcmpl-tool2"]["messages"])
    assert (
        followed[2]["tool_call_id"] == "call_abc123"
        and followed[1]["tool_calls"][0]["name"] == "get_weather"
    )
    assert rows["chatcmpl-tool1"]["user_agent"] == "OpenAI/Python 1.99.0"
    # The bare Responses object cannot make an exchange: quarantined, saying what to log instead.
    assert [(Path(b["file"]).name, b["field"]) for b in bad] == [
        ("response_object_only.jsonl", "<record>")
    ]
    assert '"request"' in bad[0]["reason"]
    assert report.loaded == 8 and report.quarantined == 1


def test_one_file_of_a_batch_alone_is_quarantined_with_the_reason(tmp_path, fixtures):
    report, rows, bad = load(tmp_path, fixtures / "openai-logs" / "batch_input.jsonl")
    assert not rows and report.quarantined == 4
    assert all("without its output file" in b["reason"] for b in bad)
