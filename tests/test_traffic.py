"""The traffic simulator: determinism, schema validity, complete labels, no label leakage."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from distillwatch.schema import parse_account, validate_exchange
from distillwatch.traffic import iter_records, simulate
from distillwatch.traffic.scenario import ScenarioError, load_scenario

SCALE = 0.25


@pytest.fixture(scope="module")
def small(tmp_path_factory, shared_data) -> Path:
    out = tmp_path_factory.mktemp("sim") / "a"
    simulate("small", out, seed=5, scale=SCALE)
    return out


def test_same_seed_same_bytes_other_seed_differs(tmp_path, small):
    again = tmp_path / "b"
    simulate("small", again, seed=5, scale=SCALE)
    for name in ("exchanges.jsonl", "accounts.jsonl"):
        assert (small / name).read_bytes() == (again / name).read_bytes()
    other = tmp_path / "c"
    simulate("small", other, seed=6, scale=SCALE)
    assert (small / "exchanges.jsonl").read_bytes() != (other / "exchanges.jsonl").read_bytes()


def test_every_record_is_valid_contract_1(small):
    records = list(iter_records(small / "exchanges.jsonl"))
    assert len(records) > 5_000
    for record in records:
        validate_exchange(record)  # raises on any violation
    assert len({r["id"] for r in records}) == len(records)
    for line in (small / "accounts.jsonl").read_text().splitlines():
        parse_account(json.loads(line))


def test_labels_cover_every_account_exactly_once(small):
    labels = json.loads((small / "labels.json").read_text())
    seen = {r["account_id"] for r in iter_records(small / "exchanges.jsonl")}
    assert seen == set(labels["accounts"])
    metadata = [
        json.loads(line)["account_id"]
        for line in (small / "accounts.jsonl").read_text().splitlines()
    ]
    assert sorted(metadata) == sorted(seen) and len(metadata) == len(set(metadata))
    assert {v["label"] for v in labels["accounts"].values()} == {"benign", "campaign"}
    counts = labels["counts"]
    assert counts["accounts"] == len(seen)
    assert counts["benign_accounts"] + counts["campaign_accounts"] == counts["accounts"]
    for campaign, info in labels["campaigns"].items():
        members = [a for a, v in labels["accounts"].items() if v["campaign_id"] == campaign]
        assert info["accounts"] == len(members) > 0


def test_every_persona_and_tactic_present(small):
    labels = json.loads((small / "labels.json").read_text())
    personas = Counter(v["persona"] for v in labels["accounts"].values() if v["label"] == "benign")
    spec = load_scenario("small")
    assert set(personas) == {p.persona for p in spec.benign}
    hard = {name for name, p in labels["personas"].items() if p["hard_negative"]}
    assert {"enterprise_template_app", "benchmark_team", "corporate_nat_employee",
            "heavy_researcher", "proxy_exit_user"} <= hard  # fmt: skip
    tactics = {t for c in labels["campaigns"].values() for t in c["tactics"]}
    assert {"hydra_pool", "account_burst", "templated_self_instruct", "cot_elicitation",
            "capability_sweep", "evol_instruct", "low_and_slow", "launch_surge", "mix_legit",
            "adaptive"} <= tactics  # fmt: skip


def test_no_label_leakage_into_exchanges(small):
    labels = json.loads((small / "labels.json").read_text())
    secret_words = {v["persona"] for v in labels["accounts"].values()} | set(labels["campaigns"])
    secret_words |= {"benign", "campaign", "harvest"}
    ids = {"benign": set(), "campaign": set()}
    for record in iter_records(small / "exchanges.jsonl"):
        ids[labels["accounts"][record["account_id"]]["label"]].add(record["account_id"])
        header_fields = [record.get(k) or "" for k in ("id", "account_id", "api_key_id", "user_agent",
                                                       "tls_fingerprint", "ip", "endpoint", "model")]  # fmt: skip
        for value in header_fields:
            assert not any(word in value.lower() for word in secret_words), value
    pattern = re.compile(r"^acct_[a-z2-7]{14}$")
    assert all(pattern.match(a) for a in ids["benign"] | ids["campaign"])


def test_counts_in_range_for_full_small_preset(tmp_path, shared_data):
    summary = simulate("small", tmp_path / "full", seed=1)
    counts = summary["counts"]
    assert 60_000 <= counts["exchanges"] <= 200_000
    assert 900 <= counts["accounts"] <= 1_300
    assert 300 <= counts["campaign_accounts"] <= 450


def test_parquet_output_matches_schema(tmp_path, shared_data):
    simulate("small", tmp_path / "pq", seed=2, scale=0.1, fmt="parquet")
    table = pq.read_table(tmp_path / "pq" / "exchanges.parquet")
    assert table.num_rows > 0
    assert {"id", "ts", "account_id", "model", "messages"} <= set(table.column_names)
    validate_exchange(table.slice(0, 1).to_pylist()[0])


def test_scale_changes_population(tmp_path, shared_data):
    a = simulate("small", tmp_path / "s1", seed=3, scale=0.1)["counts"]["accounts"]
    b = simulate("small", tmp_path / "s2", seed=3, scale=0.3)["counts"]["accounts"]
    assert 2 * a < b


@pytest.mark.parametrize(
    ("mutation", "field"),
    [
        (lambda d: d["benign"][0].update(acounts=3), "benign[0].acounts"),
        (
            lambda d: d["campaigns"][0]["tactics"].update(teleport={}),
            "campaigns[0].tactics.teleport",
        ),
        (lambda d: d["benign"][0].update(client="fax"), "benign[0].client"),
        (lambda d: d.pop("days"), "days"),
    ],
)
def test_bad_scenario_names_the_field(tmp_path, cli, mutation, field):
    from importlib import resources

    import yaml

    doc = yaml.safe_load(
        resources.files("distillwatch.traffic.presets").joinpath("small.yaml").read_text()
    )
    mutation(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ScenarioError, match=re.escape(field)):
        load_scenario(path)
    result = cli("simulate", "--scenario", path, "--out", tmp_path / "o")
    assert result.returncode == 2 and field in result.stderr and "Traceback" not in result.stderr


def test_cli_end_to_end(tmp_path, cli, shared_data):
    result = cli(
        "simulate", "--scenario", "small", "--scale", "0.1", "--out", tmp_path / "x", "--json"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert Path(summary["exchanges_path"]).exists()
    assert summary["counts"]["exchanges"] == sum(
        1 for _ in iter_records(Path(summary["exchanges_path"]))
    )


def test_runs_without_shared_data_on_shipped_sample(tmp_path, monkeypatch):
    from distillwatch.traffic import corpora

    monkeypatch.setenv("DISTILLWATCH_SHARED_DATA", str(tmp_path / "absent"))
    corpora.load_corpora.cache_clear()
    try:
        summary = simulate("small", tmp_path / "sample", seed=1, scale=0.05)
    finally:
        corpora.load_corpora.cache_clear()
    labels = json.loads((tmp_path / "sample" / "labels.json").read_text())
    assert summary["counts"]["exchanges"] > 100
    assert "shipped sample" in labels["corpora"]
