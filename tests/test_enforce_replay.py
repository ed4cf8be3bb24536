"""Replay of simulated traffic through the real proxy (`distillwatch demo-proxy`)."""

from __future__ import annotations

import json

import pytest

from distillwatch.traffic import simulate

pytestmark = pytest.mark.e2e


def test_demo_proxy_stops_attackers_not_customers(tmp_path, cli, shared_data):
    traffic = tmp_path / "traffic"
    simulate("small", traffic, seed=21, scale=0.3)
    result = cli(
        "demo-proxy",
        "--traffic",
        traffic,
        "--out",
        tmp_path / "enforce",
        "--requests",
        "800",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    tally = json.loads(result.stdout)
    assert tally["requests"] == 800
    assert tally["attacker_requests"] > 100 and tally["benign_requests"] > 100
    assert tally["attacker_stopped_or_shaped_share"] > 0.7
    assert tally["attacker_requests_after_detection"] > 50
    assert tally["attacker_after_detection_stopped_or_shaped_share"] >= 0.99
    assert tally["benign_refused_share"] <= 0.01
    assert (tmp_path / "enforce" / "verdicts-day-0" / "verdicts.json").exists()
    # Scheduled re-detection during the replay, hot-reloaded by the proxy.
    assert tally["redetect_runs"] >= 4
    live = json.loads((tmp_path / "enforce" / "verdicts-live.json").read_text())
    assert live["detector"]["mode"] == "incremental"
    assert (
        live["exchanges"]
        > json.loads((tmp_path / "enforce" / "verdicts-day-0" / "verdicts.json").read_text())[
            "exchanges"
        ]
    )
