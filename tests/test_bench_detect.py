"""`distillwatch bench detect` end to end, plus the metric definitions on a tiny hand-made case."""

from __future__ import annotations

import json

import pytest

from distillwatch.evaluation.metrics import account_metrics, first_caught

LABELS = {
    "accounts": {
        "a": {"label": "campaign", "persona": "harvester", "campaign_id": "c1"},
        "b": {"label": "campaign", "persona": "harvester", "campaign_id": "c1"},
        "c": {"label": "campaign", "persona": "harvester", "campaign_id": "c2"},
        "d": {"label": "benign", "persona": "casual", "campaign_id": None},
        "e": {"label": "benign", "persona": "nat", "campaign_id": None},
        "f": {"label": "benign", "persona": "nat", "campaign_id": None},
    },
    "personas": {"casual": {"hard_negative": False}, "nat": {"hard_negative": True}},
    "campaigns": {"c1": {}, "c2": {}},
}


def doc(verdicts: dict[str, tuple[float, str, str | None]]) -> dict:
    return {"accounts": [{"account_id": k, "score": s, "verdict": v, "cluster_id": c, "reasons": []}
                         for k, (s, v, c) in verdicts.items()], "campaigns": []}  # fmt: skip


def test_metrics_on_hand_computed_case():
    d = doc({"a": (0.9, "distillation", "x"), "b": (0.8, "distillation", "x"), "c": (0.3, "benign", None),
             "d": (0.1, "benign", None), "e": (0.85, "distillation", None), "f": (0.2, "benign", None)})  # fmt: skip
    m = account_metrics(d, LABELS)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["benign_fpr"] == pytest.approx(1 / 3)
    assert m["fpr_by_persona"]["nat"] == {
        "fpr": 0.5,
        "flagged": 1,
        "accounts": 2,
        "hard_negative": True,
    }
    assert (
        m["caught_by_campaign"]["c1"]["share"] == 1.0
        and m["caught_by_campaign"]["c2"]["share"] == 0.0
    )
    # ranking: a .9, e .85, b .8, c .3 -> AP = (1/1 + 2/3 + 3/4) / 3
    assert m["auprc"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert m["precision_at_recall_95"] == pytest.approx(3 / 4)  # threshold 0.3: a, e, b, c
    # Campaign c2's account merged into c1's cluster: the partition is wrong, so ARI < 1.
    merged = account_metrics(doc({"a": (0.9, "distillation", "x"), "b": (0.9, "distillation", "x"),
                                  "c": (0.9, "distillation", "x"), "d": (0, "benign", None),
                                  "e": (0, "benign", None), "f": (0, "benign", None)}), LABELS)  # fmt: skip
    assert -1.0 <= merged["ari"] < 1.0
    perfect = account_metrics(doc({"a": (0.9, "distillation", "x"), "b": (0.9, "distillation", "x"),
                                   "c": (0.9, "distillation", "y"), "d": (0, "benign", None),
                                   "e": (0, "benign", None), "f": (0, "benign", None)}), LABELS)  # fmt: skip
    assert perfect["ari"] == 1.0 and perfect["auprc"] == 1.0


def test_first_caught_needs_half_of_active_members():
    active = {"a": "2026-03-02T01:00:00", "b": "2026-03-02T20:00:00", "c": "2026-03-02T01:00:00"}
    snaps = [
        (
            "2026-03-02T12:00:00",
            doc({"a": (0.9, "distillation", None), "c": (0.1, "benign", None)}),
        ),
        (
            "2026-03-03T00:00:00",
            doc(
                {
                    "a": (0.1, "benign", None),
                    "b": (0.9, "distillation", None),
                    "c": (0.9, "distillation", None),
                }
            ),
        ),
    ]
    caught = first_caught(snaps, LABELS, active)
    assert caught == {"c1": "2026-03-02T12:00:00", "c2": "2026-03-03T00:00:00"}


def test_bench_detect_cli(tmp_path, cli, shared_data):
    out = tmp_path / "bench"
    result = cli("bench", "detect", "--scenario", "small", "--seed", "3", "--scale", "0.2",
                 "--windows", "24", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert "auprc" in result.stdout and "baseline" in result.stdout
    data = json.loads((out / "results.json").read_text())
    ours = data["per_seed"][0]["detectors"]["distillwatch"]
    base = data["per_seed"][0]["detectors"]["baseline"]
    for m in (ours, base):
        assert 0 <= m["auprc"] <= 1 and 0 <= m["benign_fpr"] <= 1
        assert m["precision"] >= 0 and m["recall"] <= 1
    assert ours["auprc"] > base["auprc"]
    assert set(ours["campaign_timing"]) == set(ours["caught_by_campaign"])
    for t in ours["campaign_timing"].values():
        assert 0 <= t["harvest_before_detection_pct"] <= 100
    assert (out / "pr_curve.png").stat().st_size > 10_000
    assert (out / "timeline.png").stat().st_size > 10_000


def test_leave_one_out_cli_scores_held_out_units(tmp_path, cli, shared_data):
    """Two units the original detector failed: a classroom (flagged whole) and a Chinese
    chain-of-thought harvest (never caught). Seed 3 is neither a development nor a report seed."""
    out = tmp_path / "loto"
    result = cli("bench", "detect", "--leave-one-out", "--units", "classroom,chinese_cot",
                 "--seed", "3", "--out", out, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert "classroom" in result.stdout and "chinese_cot" in result.stdout
    data = json.loads((out / "leave_one_out.json").read_text())
    assert data["scoring"] == "hand-set" and data["seeds"] == [3]
    classroom = data["per_seed"]["classroom"][0]
    harvest = data["per_seed"]["chinese_cot"][0]
    assert classroom["persona_accounts"] >= 20 and harvest["accounts"] >= 20
    assert classroom["persona_fpr"] <= 0.1  # students sharing homework are not a campaign
    assert harvest["caught"] and harvest["auprc"] > 0.9
    for row in (classroom, harvest):
        assert row["world_benign_fpr"] <= 0.02
    table = data["units"]["chinese_cot"]
    assert table["world_recall"]["worst"] == harvest["world_recall"]
    assert "world recall" in result.stdout
    bad = cli("bench", "detect", "--leave-one-out", "--units", "classroom,nope", "--out", out)
    assert bad.returncode != 0 and "nope" in (bad.stderr + bad.stdout)


def test_leave_one_out_refuses_worlds_without_the_real_corpora(tmp_path, cli):
    """Worlds from the shipped sample would be cached and reported as if they were real ones."""
    out = tmp_path / "loto"
    env = {"DISTILLWATCH_SHARED_DATA": str(tmp_path / "absent")}
    result = cli("bench", "detect", "--leave-one-out", "--units", "classroom", "--seed", "3",
                 "--out", out, env=env)  # fmt: skip
    assert result.returncode == 2
    assert "real corpora" in result.stderr + result.stdout and "Traceback" not in result.stderr
    assert not out.exists()
