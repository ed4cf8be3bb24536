"""Indicators: one artefact definition for batch and gateway, specificity on the population,
STIX 2.1 bundles that validate, keyed private values, hostile bundles refused, and a gateway
that links fresh accounts from a bundle alone."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from pathlib import Path

import httpx
import orjson
import pytest

from distillwatch.detection.pipeline import detect
from distillwatch.detection.state import update
from distillwatch.detection.text import template_grams
from distillwatch.enforce.processes import free_port
from distillwatch.errors import BundleError
from distillwatch.sharing import (
    SharingKey,
    campaign_indicators,
    links,
    read_bundle,
    request_artefacts,
    to_bundle,
)
from distillwatch.sharing.artefacts import artefact
from distillwatch.store import Store
from tests.gateway import chat, keys_file, start, stop
from tests.test_detection import WRAPPER, fill, hydra, people, rec

KEY = SharingKey("group-a", bytes(range(32)))


def _world(tmp_path: Path) -> tuple[Path, list[dict], list[dict]]:
    h_records, h_accounts = hydra(12, 20)
    p_records, p_accounts = people(30, 8)
    # Ordinary people behind the hydra's residential exits: they share its prefixes.
    exit_users = [rec(i, f"x{a}", f"tips for a first marathon {a}-{i}", hours=10 + i + a,
                      ip=f"73.{a}.{i % 5}.200", user_agent="Mozilla/5.0 Firefox/128")
                  for a in range(4) for i in range(6)]  # fmt: skip
    store = tmp_path / "world.duckdb"
    with Store(store) as db:
        fill(db, h_records + p_records + exit_users, h_accounts + p_accounts)
    return store, h_records + p_records + exit_users, h_accounts + p_accounts


def test_links_rule():
    assert links([("payment", 0.001, 0)], 1e-4)  # a card nobody else uses links alone
    assert not links([("payment", 0.002, 1)], 1e-4)
    assert links([("network", 0.001, 0), ("template", 0.001, 0)], 1e-4)
    assert not links([("network", 0.001, 0), ("network", 0.0001, 0)], 1e-4)  # one family twice
    assert not links([("network", 0.02, 20), ("template", 0.02, 20)], 1e-4)  # two common ones


def test_batch_and_gateway_compute_the_same_artefacts(tmp_path):
    """What the store's state holds per account (batch) equals what the gateway derives from
    the same requests, private kinds keyed, IPv6, Chinese and short prompts included."""
    prompts = [
        f"### Instruction:\nWrite a parser for case {{}}.\n\n{WRAPPER}",
        "请一步一步地思考，然后回答这个问题：{} 的平方根是多少？请给出详细的推理过程和最终答案。",
        "hi {}",
        "Summarise   the FOLLOWING text in `code` and \"quotes\" 42 times: {} please now",
    ]  # fmt: skip
    records = []
    for a in range(4):
        for i in range(6):
            ip = f"2001:db8:{a}:{i}::7" if a % 2 else f"203.0.{a}.{i + 1}"
            records.append(rec(i, f"acct{a}", prompts[(a + i) % 4].format(i * 7), hours=i + a,
                               ip=ip, user_agent=f"sdk/{a}", tls_fingerprint=f"t13d_{a % 2}"))  # fmt: skip
    accounts = [{"account_id": f"acct{a}", "payment_fingerprint": f"pm_{a % 2}"} for a in range(4)]
    with Store(tmp_path / "s.duckdb") as store:
        fill(store, records, accounts)
        update(store, incremental=False)
        batch: dict[str, set[str]] = {}
        for account, kind, value in store.run(
            "SELECT account_id, kind, value FROM dw_kv WHERE kind IN ('ip','net','ua','tls','pre','suf')"
        ):
            batch.setdefault(account, set()).add(artefact(kind, value, KEY))
        for account, card in store.run("SELECT account_id, payment_fingerprint FROM accounts"):
            batch.setdefault(account, set()).add(artefact("pay", card, KEY))
    online: dict[str, set[str]] = {}
    cards = {a["account_id"]: a["payment_fingerprint"] for a in accounts}
    for r in records:
        online.setdefault(r["account_id"], set()).update(request_artefacts(
            r["ip"], r["tls_fingerprint"], r["user_agent"], r["messages"][0]["content"],
            cards[r["account_id"]], KEY))  # fmt: skip
    assert batch == online
    assert any(a.startswith("tpl:") for a in online["acct1"])  # Chinese prompts have templates
    assert any(a.startswith("net:2001:db8:") for a in online["acct1"])


def test_indicators_are_rare_outside_the_campaign_and_checked_on_the_population(tmp_path):
    store_path, _, _ = _world(tmp_path)
    with Store(store_path) as store:
        doc = detect(store)
        hydra_campaign = next(
            c for c in doc["campaigns"] if any(a.startswith("h") for a in c["accounts"])
        )
        assert not any(a.startswith(("p", "x")) for a in hydra_campaign["accounts"])
        [found] = [c for c in campaign_indicators(store, doc, KEY)
                   if c.campaign_id == hydra_campaign["campaign_id"]]  # fmt: skip
    kinds = {a.kind for a in found.artefacts}
    assert {"pay", "tpl", "ua"} <= kinds
    for a in found.artefacts:
        assert a.outside_accounts <= 1 and a.campaign_accounts >= 2 and 0 < a.coverage <= 1
    # The exits the four ordinary users share with the hydra are not indicators of it.
    shared_exits = {f"73.{a}.{i}.0/24" for a in range(4) for i in range(5)}
    assert not shared_exits & {a.value for a in found.artefacts if a.kind == "net"}
    assert found.false_matches == 0 and found.population == 34
    # The card is keyed: its plain value appears nowhere.
    assert not any("pm_shared" in a.value for a in found.artefacts)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """detect, run twice as the CLI, on a hydra among ordinary users."""
    from tests.conftest import run_cli

    tmp = tmp_path_factory.mktemp("bundle")
    records, accounts = hydra(12, 20)
    # Enough ordinary users that two artefacts nobody else uses are jointly rarer than the
    # link bound (1e-4): with 30, (1/31)^2 could not show it.
    p_records, p_accounts = people(120, 4)
    log, meta = tmp / "log.jsonl", tmp / "accounts.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records + p_records))
    meta.write_text("".join(json.dumps(a) + "\n" for a in accounts + p_accounts))
    key = tmp / "group.key"
    KEY.write(key)
    for out in ("out1", "out2"):
        store = ["--store", tmp / "s.duckdb"] if out == "out2" else []
        result = run_cli("detect", log, "--accounts", meta, "--out", tmp / out, "--sharing-key", key,
                         "--producer", "lab-a", "--tlp", "green", *store)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "indicators:" in result.stdout
    return tmp


def test_detect_writes_a_valid_stix_bundle_with_stable_ids(bundle_dir):
    from stix2 import parse
    from stix2validator import ValidationOptions, validate_file

    path = bundle_dir / "out1" / "indicators.json"
    report = validate_file(str(path), ValidationOptions(strict=False))
    assert report.is_valid, [str(e) for o in report.object_results for e in o.errors][:5]
    bundle = parse(path.read_text(), allow_custom=False)
    types = {o.type for o in bundle.objects}
    assert {"identity", "marking-definition", "extension-definition", "campaign", "intrusion-set",
            "indicator", "relationship", "sighting"} <= types  # fmt: skip
    campaign = next(o for o in bundle.objects if o.type == "campaign")
    atlas = {r.external_id for r in campaign.external_references}
    assert {"AML.T0024.002", "AML.T0008.005", "AML.CS0056", "AML.M0004"} <= atlas
    assert all(r.url.startswith("https://atlas.mitre.org/") for r in campaign.external_references)
    marking = next(o for o in bundle.objects if o.type == "marking-definition")
    assert marking.name == "TLP:GREEN"
    # Detecting again exports the same objects (updated), never duplicates.
    again = parse((bundle_dir / "out2" / "indicators.json").read_text(), allow_custom=False)
    first = {o.id: o for o in bundle.objects}
    second = {o.id: o for o in again.objects}
    assert set(first) == set(second)
    assert all(second[i].get("modified", 0) >= first[i].get("modified", 0) for i in first
               if "modified" in first[i])  # fmt: skip


def test_private_values_resist_a_dictionary_attack(bundle_dir):
    """A recipient without the key, guessing the exact templates (the strongest dictionary: the
    grams of every prompt actually sent), recovers none; with the key the same guess matches,
    so the test could fail."""
    doc = orjson.loads((bundle_dir / "out1" / "indicators.json").read_bytes())
    private = {o["pattern"].split(":", 1)[1] for o in doc["objects"]
               if o["type"] == "indicator" and o["pattern_type"] == "distillwatch"
               and o["pattern"].startswith(("tpl:", "pay:"))}  # fmt: skip
    assert private and not any("shared" in v or "python" in v for v in private)
    records, accounts = hydra(12, 20)
    guesses = {("pay", a["payment_fingerprint"]) for a in accounts}
    for r in records:
        prefix, suffix = template_grams(r["messages"][0]["content"])
        guesses |= {("pre", prefix), ("suf", suffix)}
    wrong = SharingKey("group-a", bytes(32))  # the right key id, another secret

    def attempts(kind: str, value: str) -> set[str]:
        plain = value.encode()
        tagged = kind.encode() + b"\x00" + plain
        return {hashlib.sha256(plain).hexdigest()[:32], hashlib.sha256(tagged).hexdigest()[:32],
                hashlib.md5(plain).hexdigest(), hmac.new(b"", tagged, hashlib.sha256).hexdigest()[:32],
                wrong.digest(kind, value)}  # fmt: skip

    assert not private & {h for g in guesses for h in attempts(*g)}
    assert private & {KEY.digest(*g) for g in guesses}


def test_near_duplicate_sketches_are_keyed_and_resist_guessing(bundle_dir):
    """The campaign's MinHash band signatures leave only keyed: a recipient who computes the
    very signatures the producer holds (its own store's, the strongest dictionary) and hashes
    them every plain way, or under another secret, matches none; under the key they match."""
    import duckdb

    from distillwatch.sharing.artefacts import near_scheme

    doc = orjson.loads((bundle_dir / "out1" / "indicators.json").read_bytes())
    sketches = {o["pattern"].split(":", 1)[1] for o in doc["objects"]
                if o["type"] == "indicator" and o["pattern"].startswith("nd:")}  # fmt: skip
    assert sketches
    with duckdb.connect(str(bundle_dir / "s.duckdb"), read_only=True) as con:
        signatures = [
            str(sig) for (sig,) in con.execute("SELECT DISTINCT sig FROM dw_near").fetchall()
        ]
    wrong = SharingKey("group-a", bytes(32))
    guessed = set()
    for sig in signatures:
        plain = sig.encode()
        guessed |= {hashlib.sha256(plain).hexdigest()[:32], hashlib.md5(plain).hexdigest(),
                    hmac.new(b"", plain, hashlib.sha256).hexdigest()[:32],
                    wrong.digest(near_scheme(), sig), KEY.digest("near", sig)}  # fmt: skip
    assert not sketches & guessed
    assert sketches <= {KEY.digest(near_scheme(), sig) for sig in signatures}


def test_a_partner_s_sketches_link_accounts_in_batch_detection(bundle_dir, tmp_path, cli):
    """Lab B's store holds three accounts sending lab A's hydra prompts: with only the bundle's
    near-duplicate sketches and its client indicator they are linked (two families: what they
    ask, what they run); with the client indicator alone they are not. B's people are not."""
    from distillwatch.sharing.priors import partner_links
    from distillwatch.sharing.stix import read_bundles

    log, meta, fresh = _lab_b(tmp_path)
    store_path = tmp_path / "b.duckdb"
    result = cli("detect", log, "--accounts", meta, "--out", tmp_path / "b", "--store", store_path,
                 "--sharing-key", bundle_dir / "group.key")  # fmt: skip
    assert result.returncode == 0, result.stderr
    shared = read_bundles([bundle_dir / "out1" / "indicators.json"])
    linked = {}
    for name, kinds in (("sketches", ("nd:", "ua:")), ("client only", ("ua:",))):
        subset = copy.copy(shared)
        subset.links = {k: v for k, v in shared.links.items() if k.startswith(kinds)}
        with Store(store_path) as store:
            linked[name] = partner_links(store, subset, KEY)
    assert any(k.startswith("nd:") for k in shared.links)
    assert set(linked["sketches"]) == set(fresh.values())
    assert "template" in linked["sketches"][fresh["h00"]]["reason"]
    assert linked["client only"] == {}


def _good_bundle(bundle_dir: Path) -> dict:
    return orjson.loads((bundle_dir / "out1" / "indicators.json").read_bytes())


def _first(doc: dict, kind: str) -> dict:
    return next(o for o in doc["objects"] if o["type"] == kind)


def _hostile(doc: dict, case: str) -> bytes:
    doc = copy.deepcopy(doc)
    indicator = _first(doc, "indicator")
    if case == "oversized":
        return b'{"type": "bundle", "objects": [' + b" " * (33 * 1024 * 1024) + b"]}"
    if case in ("deep", "very deep"):  # past our limit; past the JSON parser's own
        depth = 200 if case == "deep" else 5000
        indicator["labels"] = "DEEP"
        return orjson.dumps(doc).replace(b'"DEEP"', b"[" * depth + b'"x"' + b"]" * depth)
    elif case == "wrong type":
        indicator["valid_from"] = 12
    elif case == "unknown extension":
        indicator["extensions"]["extension-definition--00000000-0000-4000-8000-000000000000"] = {
            "extension_type": "property-extension"
        }
    elif case == "newer major version":
        _first(doc, "extension-definition")["version"] = "2.0.0"
    elif case == "forged source":
        indicator["created_by_ref"] = "identity--11111111-1111-4111-8111-111111111111"
    elif case == "script in a string":
        _first(doc, "campaign")["name"] = "<script>alert(1)</script>"
    elif case == "terminal escape":
        indicator["name"] = "\x1b[2Jgone"
    elif case == "bad ip pattern":
        indicator["pattern"] = "[ipv4-addr:value = '999.1.1.1']"
        indicator["extensions"][next(iter(indicator["extensions"]))]["kind"] = "ip"
    elif case == "rate out of range":
        next(iter(indicator["extensions"].values()))["false_match_rate"] = 7
    elif case == "not a bundle":
        return b'{"type": "indicator"}'
    elif case == "not json":
        return b"\xff\xfe{"
    return orjson.dumps(doc)


HOSTILE = ["oversized", "deep", "very deep", "wrong type", "unknown extension", "newer major version",
           "forged source", "script in a string", "terminal escape", "bad ip pattern",
           "rate out of range", "not a bundle", "not json"]  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_bundles_are_refused_whole(bundle_dir, tmp_path, case):
    path = tmp_path / "hostile.json"
    path.write_bytes(_hostile(_good_bundle(bundle_dir), case))
    with pytest.raises(BundleError) as caught:
        read_bundle(path)
    assert str(path) in str(caught.value) and len(str(caught.value)) <= 500


def test_trust_list_and_expiry(bundle_dir, tmp_path):
    path = bundle_dir / "out1" / "indicators.json"
    producer = _first(_good_bundle(bundle_dir), "identity")["id"]
    assert read_bundle(path, trusted={producer}).links
    assert read_bundle(path, trusted={"lab-a"}).links  # by name too
    with pytest.raises(BundleError, match="trust list"):
        read_bundle(path, trusted={"identity--22222222-2222-4222-8222-222222222222"})
    from datetime import datetime

    later = read_bundle(path, now=datetime(2099, 1, 1))
    assert not later.links and later.expired > 0


def test_a_gateway_links_fresh_accounts_from_the_bundle_alone(bundle_dir, tmp_path, upstream):
    """No store, no verdicts: only the bundle and the group key. A fresh account sending the
    hydra's template from its client stack is challenged; an ordinary new user is served; a
    hostile replacement of the bundle is refused and the last good one stays in force."""
    folder = tmp_path / "bundles"  # a folder of bundles, as share import fills it
    folder.mkdir()
    bundle = folder / "lab-a.json"
    port = free_port()
    keys = keys_file(tmp_path / "keys.jsonl", ["fresh1", "fresh2", "plain"])
    proc = start(["proxy", "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
                  "--indicators", str(folder), "--sharing-key", str(bundle_dir / "group.key"),
                  "--keys", str(keys), "--trusted-proxy", "127.0.0.1/32"],
                 f"http://127.0.0.1:{port}/healthz")  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    import time

    try:
        assert httpx.get(f"{base}/healthz").json()["indicators"]["bundles"] == 0
        bundle.write_bytes((bundle_dir / "out1" / "indicators.json").read_bytes())
        time.sleep(1.2)  # bundles are checked for changes at most once a second
        health = httpx.get(f"{base}/healthz").json()
        assert health["indicators"]["bundles"] == 1 and health["indicators"]["indicators"] > 0
        assert health["indicators"]["bundle_key_ids"] == ["group-a"]
        harvest = f"### Instruction:\nWrite a Python function number 77 that parses toml files.\n\n{WRAPPER}"
        hit = chat(base, "fresh1", harvest, headers={"User-Agent": "python-httpx/0.27",
                                                     "X-Forwarded-For": "100.64.9.9"})  # fmt: skip
        assert hit.status_code == 403, hit.text
        assert hit.json()["error"]["code"] == "verification_required"
        plain = chat(base, "plain", "how long should I boil an egg",
                     headers={"User-Agent": "Mozilla/5.0 Chrome/126", "X-Forwarded-For": "24.3.1.1"})  # fmt: skip
        assert plain.status_code == 200
        bundle.write_bytes(_hostile(_good_bundle(bundle_dir), "script in a string"))
        time.sleep(1.2)  # bundles are checked for changes at most once a second
        health = httpx.get(f"{base}/healthz").json()
        assert health["status"] == "degraded" and str(bundle) in health["indicators"]["errors"]
        again = chat(base, "fresh2", harvest, headers={"User-Agent": "python-httpx/0.27"})
        assert again.status_code == 403  # the last good bundle is still in force
    finally:
        stop(proc)


def test_to_bundle_refuses_an_unknown_tlp_level():
    with pytest.raises(ValueError, match="TLP"):
        to_bundle([], "lab", "k", tlp="purple")


def test_share_import_takes_good_bundles_and_refuses_bad_ones_whole(bundle_dir, tmp_path, cli):
    good = bundle_dir / "out1" / "indicators.json"
    bad = tmp_path / "bad.json"
    bad.write_bytes(_hostile(_good_bundle(bundle_dir), "script in a string"))
    trust = tmp_path / "trust.txt"
    trust.write_text("# partners we share with\nlab-a\n")
    into = tmp_path / "partners"
    result = cli("share", "import", good, bad, "--into", into, "--trust", trust)
    assert result.returncode == 1  # one refused
    assert "imported as lab-a-" in result.stdout and "refused" in result.stdout
    assert "<script>" not in result.stdout  # the reason is shown without the markup
    [stored] = list(into.glob("*.json"))
    assert read_bundle(stored).links == read_bundle(good).links
    nobody = tmp_path / "nobody.txt"
    nobody.write_text("lab-z\n")
    untrusted = cli("share", "import", good, "--into", tmp_path / "other", "--trust", nobody)
    assert untrusted.returncode == 1 and "trust list" in untrusted.stdout


def test_share_export_keys_each_group_apart(bundle_dir, tmp_path, cli):
    other = tmp_path / "group-b.key"
    SharingKey("group-b", bytes(range(1, 33))).write(other)
    out = tmp_path / "for-group-b.json"
    result = cli("share", "export", "--store", bundle_dir / "s.duckdb", "--verdicts",
                 bundle_dir / "out2" / "verdicts.json", "--key", other, "--producer", "lab-a",
                 "--tlp", "amber+strict", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    ours, theirs = read_bundle(bundle_dir / "out2" / "indicators.json"), read_bundle(out)
    from distillwatch.sharing.keys import PRIVATE_KINDS

    private = lambda s: {k for k in s.links if k.split(":", 1)[0] in PRIVATE_KINDS}  # noqa: E731
    public = lambda s: {k for k in s.links if k.split(":", 1)[0] not in PRIVATE_KINDS}  # noqa: E731
    assert private(ours) and private(theirs) and not private(ours) & private(theirs)
    assert public(ours) == public(theirs)
    assert theirs.key_ids == {"group-b"}


def _lab_b(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """Lab B's log and account records: three accounts of lab A's hydra (same template, client
    and cards, four requests each, under new ids and webmail addresses) among 120 ordinary
    users. Returns (log, accounts file, {lab A id: lab B id})."""
    records, accounts = hydra(12, 20)
    fresh = {f"h{a:02d}": f"b-new{a}" for a in range(3)}
    b_records = [{**r, "id": "b-" + r["id"], "account_id": fresh[r["account_id"]]}
                 for r in records if r["account_id"] in fresh and int(r["id"].rsplit("-", 1)[1]) < 4]  # fmt: skip
    b_accounts = [{**a, "account_id": fresh[a["account_id"]], "email_domain": "gmail.com"}
                  for a in accounts if a["account_id"] in fresh]  # fmt: skip
    p_records, p_accounts = people(120, 4)
    log, meta = tmp_path / "b.jsonl", tmp_path / "b-accounts.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in b_records + p_records))
    meta.write_text("".join(json.dumps(a) + "\n" for a in b_accounts + p_accounts))
    return log, meta, fresh


def test_imported_indicators_are_priors_in_detection(bundle_dir, tmp_path, cli):
    """Lab B sees a few accounts of lab A's hydra (same template, client and cards), each with a
    handful of requests: not enough on their own. With lab A's bundle imported they rise to
    suspicious and the reason names lab A; B's ordinary users are not affected."""
    log, meta, fresh = _lab_b(tmp_path)
    verdicts = {}
    for name, extra in (
        ("alone", []),
        ("with", ["--indicators", bundle_dir / "out1" / "indicators.json"]),
    ):
        result = cli("detect", log, "--accounts", meta, "--out", tmp_path / name,
                     "--sharing-key", bundle_dir / "group.key", *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr
        verdicts[name] = {a["account_id"]: a for a in
                          json.loads((tmp_path / name / "verdicts.json").read_text())["accounts"]}  # fmt: skip
    for account in fresh.values():
        # A prior, not a verdict: four requests and a partner's link make an account to watch
        # (the gateway acts on the link itself); more evidence of its own makes it a verdict.
        assert verdicts["alone"][account]["verdict"] == "benign"
        assert verdicts["with"][account]["verdict"] == "suspicious"
        assert verdicts["with"][account]["score"] > verdicts["alone"][account]["score"] + 0.3
        assert any("indicators lab-a shared" in r for r in verdicts["with"][account]["reasons"])
    others = [a for a in verdicts["with"] if a.startswith("p")]
    assert all(verdicts["with"][a]["verdict"] == verdicts["alone"][a]["verdict"] for a in others)


def test_a_false_positive_report_flows_back_and_stops_the_indicator(bundle_dir, tmp_path, cli):
    from distillwatch.sharing.stix import read_bundles

    ours = bundle_dir / "out1" / "indicators.json"
    doc = _good_bundle(bundle_dir)
    wrong = next(
        o for o in doc["objects"] if o["type"] == "indicator" and o["pattern"].startswith("pay:")
    )
    report = tmp_path / "partners" / "fp.json"
    report.parent.mkdir()
    result = cli("share", "report-false-positive", "--indicator", wrong["id"], "--explanation",
                 "matched a long-standing customer's card", "--producer", "lab-b", "--out", report)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert any(o["type"] == "opinion" for o in orjson.loads(report.read_bytes())["objects"])
    key = "pay:" + wrong["pattern"].split(":", 1)[1]
    assert key in read_bundles([ours]).links
    merged = read_bundles([ours, report])
    assert key not in merged.links and wrong["id"] in merged.disputed
    assert len(merged.links) >= len(read_bundles([ours]).links) - 1
    bad = cli("share", "report-false-positive", "--indicator", "campaign--x", "--explanation", "x",
              "--out", tmp_path / "x.json")  # fmt: skip
    assert bad.returncode != 0 and "indicator--" in bad.stderr


def test_a_false_positive_found_in_review_goes_back_to_the_partner_and_stops_its_indicators(
    bundle_dir, tmp_path, cli
):
    """Lab B imports lab A's bundle; three of its accounts match it. An analyst marks one a
    false positive in the workspace: a report is owed to lab A for exactly the indicators that
    account matched; ``share outbox`` writes it (naming no account) and owes nothing after;
    with the report beside lab A's bundle, detection no longer links accounts on them."""
    import asyncio

    from distillwatch.workspace import Workspace
    from distillwatch.workspace.cases import Desk
    from distillwatch.workspace.channels import RecordOnlyChannel

    log, meta, fresh = _lab_b(tmp_path)
    ours, db = bundle_dir / "out1" / "indicators.json", tmp_path / "b.duckdb"
    key = bundle_dir / "group.key"
    result = cli("detect", log, "--accounts", meta, "--out", tmp_path / "with", "--store", db,
                 "--sharing-key", key, "--indicators", ours)  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "with" / "verdicts.json").read_text())
    matched = {m["account_id"]: m for m in doc["partner_matches"]}
    assert set(matched) == set(fresh.values()) and {m["source"] for m in matched.values()} == {
        "lab-a"
    }
    innocent = "b-new1"
    with Store(db) as store:
        desk = Desk(Workspace(store), RecordOnlyChannel())
        asyncio.run(desk.mark_false_positive("vera", innocent, "a long-standing customer"))
    listed = cli("share", "outbox", "--store", db)
    assert listed.returncode == 0 and "lab-a" in listed.stdout, listed.stderr
    sent = cli("share", "outbox", "--store", db, "--out", tmp_path / "sent", "--producer", "lab-b")
    assert sent.returncode == 0, sent.stderr
    (report,) = (tmp_path / "sent").glob("false-positive-lab-a-*.json")
    raw = report.read_text()
    assert innocent not in raw and "long-standing" not in raw  # indicators only
    (opinion,) = [o for o in json.loads(raw)["objects"] if o["type"] == "opinion"]
    assert opinion["opinion"] == "strongly-disagree"
    assert opinion["object_refs"] == matched[innocent]["indicators"]
    again = cli("share", "outbox", "--store", db, "--out", tmp_path / "sent")
    assert again.returncode == 0 and "nothing owed" in again.stdout
    # In lab B's own store the review outranks the partner's link, report or not.
    result = cli("detect", "--store", db, "--out", tmp_path / "reviewed", "--sharing-key", key,
                 "--indicators", ours)  # fmt: skip
    assert result.returncode == 0, result.stderr
    reviewed = {a["account_id"]: a for a in
                json.loads((tmp_path / "reviewed" / "verdicts.json").read_text())["accounts"]}  # fmt: skip
    assert reviewed[innocent]["verdict"] == "benign" and reviewed[innocent]["score"] <= 0.1
    assert "reviewed by vera" in reviewed[innocent]["reasons"][0]
    assert reviewed["b-new0"]["verdict"] == "suspicious"  # the others still linked
    # Lab B's next run with lab A's bundle and the report beside it: no link on those indicators.
    result = cli("detect", log, "--accounts", meta, "--out", tmp_path / "after",
                 "--sharing-key", key, "--indicators", ours, "--indicators", report)  # fmt: skip
    assert result.returncode == 0, result.stderr
    after = json.loads((tmp_path / "after" / "verdicts.json").read_text())
    disputed = set(opinion["object_refs"])
    assert all(not disputed & set(m["indicators"]) for m in after["partner_matches"])
    reasons = {a["account_id"]: a["reasons"] for a in after["accounts"]}
    assert not any("indicators lab-a shared" in r for r in reasons[innocent])


def test_gateway_micro_batch_detects_from_its_own_log(tmp_path, upstream):
    """POST /admin/detect: the gateway detects over what it has logged (the same code as batch
    detection) and its verdicts and indicators are live when the call returns: the hydra's
    accounts are refused, a fresh account on its template and client is linked, users are not."""
    records, _ = hydra(12, 20)
    p_records, _ = people(120, 4)  # enough users for two rare artefacts to beat the 1e-4 bound
    port = free_port()
    everyone = sorted({r["account_id"] for r in records + p_records} | {"fresh", "plain"})
    keys = keys_file(tmp_path / "keys.jsonl", everyone)
    proc = start(["proxy", "--upstream", upstream, "--listen", f"127.0.0.1:{port}", "--store",
                  str(tmp_path / "gw.duckdb"), "--keys", str(keys), "--trusted-proxy", "127.0.0.1/32",
                  "--replay-time-header", "X-Replay-Time", "--admin-token", "admin-secret-token"],
                 f"http://127.0.0.1:{port}/healthz")  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=10) as client:
            for r in sorted(records + p_records, key=lambda r: r["ts"]):
                headers = {"Authorization": f"Bearer sk-{r['account_id']}", "X-Replay-Time": r["ts"],
                           "X-Forwarded-For": r["ip"], "User-Agent": r["user_agent"]}  # fmt: skip
                sent = client.post(f"{base}/v1/chat/completions", headers=headers,
                                   json={"model": "m", "messages": r["messages"]})  # fmt: skip
                assert sent.status_code == 200
            denied = client.post(f"{base}/admin/detect")
            assert denied.status_code == 401
            result = client.post(
                f"{base}/admin/detect", headers={"Authorization": "Bearer admin-secret-token"}
            )
            assert result.status_code == 200, result.text
            body = result.json()
            assert body["exchanges"] == len(records) + len(p_records) and body["flagged"] >= 10
            assert body["until"].startswith(max(r["ts"] for r in records + p_records)[:19])
            late = {"X-Replay-Time": "2026-03-06T10:00:00Z"}
            again = chat(base, "h03", "### Instruction:\nWrite a parser.\n\n" + WRAPPER,
                         headers={**late, "X-Forwarded-For": "73.3.0.9", "User-Agent": "python-httpx/0.27"})  # fmt: skip
            assert again.status_code == 403
            harvest = f"### Instruction:\nWrite a Python function number 901 that parses yaml files.\n\n{WRAPPER}"
            fresh = chat(base, "fresh", harvest, headers={**late, "User-Agent": "python-httpx/0.27", "X-Forwarded-For": "100.64.1.1"})  # fmt: skip
            assert fresh.status_code == 403
            plain = chat(
                base, "p01", "why is the sky blue", headers={**late, "X-Forwarded-For": "24.1.1.1"}
            )
            assert plain.status_code == 200
            assert (
                httpx.get(f"{base}/healthz").json()["micro_batch"]["last"]["flagged"]
                == body["flagged"]
            )
    finally:
        stop(proc)


def test_detect_every_runs_micro_batches_in_replayed_time(tmp_path, upstream):
    records, _ = hydra(12, 20)
    port = free_port()
    keys = keys_file(tmp_path / "keys.jsonl", sorted({r["account_id"] for r in records}))
    proc = start(["proxy", "--upstream", upstream, "--listen", f"127.0.0.1:{port}", "--store",
                  str(tmp_path / "gw.duckdb"), "--keys", str(keys), "--replay-time-header",
                  "X-Replay-Time", "--detect-every", "6h"], f"http://127.0.0.1:{port}/healthz")  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        assert httpx.get(f"{base}/healthz").json()["micro_batch"] == {
            "every_s": 21600.0,
            "last": None,
            "error": None,
        }
        with httpx.Client(timeout=10) as client:
            for r in sorted(records, key=lambda r: r["ts"]):
                client.post(f"{base}/v1/chat/completions", json={"model": "m", "messages": r["messages"]},
                            headers={"Authorization": f"Bearer sk-{r['account_id']}", "X-Replay-Time": r["ts"]})  # fmt: skip
        import time

        deadline = time.time() + 30
        while (
            time.time() < deadline
            and not httpx.get(f"{base}/healthz").json()["micro_batch"]["last"]
        ):
            time.sleep(0.5)
        last = httpx.get(f"{base}/healthz").json()["micro_batch"]["last"]
        assert last is not None and last["exchanges"] > 0  # ran on its own, in replayed time
    finally:
        stop(proc)


def test_gateway_micro_batch_takes_imported_bundles_as_priors(bundle_dir, tmp_path, upstream):
    """A gateway with a partner's bundle and its own log: its micro-batches take the bundle as
    priors (as ``detect --indicators`` does), so lab A's hydra accounts in lab B's log are
    partner matches; the same gateway without the bundle matches nothing."""
    from distillwatch.ingest import ingest_paths

    log, meta, fresh = _lab_b(tmp_path)
    records = sorted((json.loads(line) for line in log.read_text().splitlines()),
                     key=lambda r: r["ts"])  # fmt: skip
    keys = keys_file(tmp_path / "keys.jsonl", sorted({r["account_id"] for r in records}))
    matches = {}
    for name, extra in (
        ("alone", []),
        ("with", ["--indicators", str(bundle_dir / "out1" / "indicators.json"),
                  "--sharing-key", str(bundle_dir / "group.key")]),
    ):  # fmt: skip
        store = tmp_path / f"{name}.duckdb"
        with Store(store) as db:  # the provider's account records (cards), no traffic
            ingest_paths([], db, accounts=meta)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start(["proxy", "--upstream", upstream, "--listen", f"127.0.0.1:{port}", "--store",
                      str(store), "--keys", str(keys), "--trusted-proxy", "127.0.0.1/32",
                      "--replay-time-header", "X-Replay-Time", "--admin-token", "admin-secret-token",
                      "--shadow", *extra], f"{base}/healthz")  # fmt: skip
        try:
            with httpx.Client(timeout=10) as client:
                for r in records:  # shadow: everything is served and logged, decisions only noted
                    headers = {"Authorization": f"Bearer sk-{r['account_id']}", "X-Replay-Time": r["ts"],
                               "X-Forwarded-For": r["ip"], "User-Agent": r["user_agent"]}  # fmt: skip
                    sent = client.post(f"{base}/v1/chat/completions", headers=headers,
                                       json={"model": "m", "messages": r["messages"]})  # fmt: skip
                    assert sent.status_code == 200
                result = client.post(f"{base}/admin/detect",
                                     headers={"Authorization": "Bearer admin-secret-token"})  # fmt: skip
            assert result.status_code == 200, result.text
            matches[name] = result.json()["partner_matches"]
        finally:
            stop(proc)
    assert matches == {"alone": 0, "with": len(fresh)}


def test_detect_every_refuses_a_bad_duration(cli, tmp_path):
    result = cli("proxy", "--upstream", "http://127.0.0.1:9", "--detect-every", "soon")
    assert result.returncode != 0 and "--detect-every" in result.stderr


def test_signed_bundles_prove_their_source_and_a_name_alone_does_not(bundle_dir, tmp_path, cli):
    """A trust list of names accepts anybody's bundle whose identity is *called* lab-a. With
    --trust-keys only a bundle lab-a's key signed is imported, under lab-a's name: altered,
    unsigned, signed by another trusted partner while naming lab-a, or signed with a key the
    list does not hold, it is refused whole."""
    key = tmp_path / "lab-a.key"
    made = cli("share", "keygen", "--name", "lab-a", "--out", key)
    assert made.returncode == 0, made.stderr
    assert (key.stat().st_mode & 0o777) == 0o600
    assert cli("share", "keygen", "--name", "lab-a", "--out", key).returncode == 2  # no overwrite
    other = tmp_path / "lab-b.key"
    assert cli("share", "keygen", "--name", "lab-b", "--out", other).returncode == 0
    trust = tmp_path / "trusted-keys.txt"
    trust.write_text("# partners\n" + (tmp_path / "lab-a.key.pub").read_text()
                     + (tmp_path / "lab-b.key.pub").read_text())  # fmt: skip

    exported = tmp_path / "for-partners.json"
    result = cli("share", "export", "--store", bundle_dir / "s.duckdb", "--verdicts",
                 bundle_dir / "out2" / "verdicts.json", "--key", bundle_dir / "group.key",
                 "--signing-key", key, "--out", exported)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "signed as lab-a" in result.stdout
    assert (tmp_path / "for-partners.json.sig").read_text().startswith("lab-a ")

    # An impostor's bundle: the same content, its own identity, named lab-a.
    forged_doc = json.loads(exported.read_bytes())
    impostor = "identity--33333333-3333-4333-8333-333333333333"
    for o in forged_doc["objects"]:
        if o["type"] == "identity":
            o["id"] = impostor
        if o.get("created_by_ref"):
            o["created_by_ref"] = impostor
    forged = tmp_path / "forged.json"
    forged.write_bytes(orjson.dumps(forged_doc))
    names = tmp_path / "names.txt"
    names.write_text("lab-a\n")
    hole = cli("share", "import", forged, "--into", tmp_path / "by-name", "--trust", names)
    assert hole.returncode == 0  # what a list of names cannot tell apart

    altered = tmp_path / "altered.json"
    altered.write_bytes(exported.read_bytes().replace(b'"lab-a"', b'"lab-A"', 1))
    (tmp_path / "altered.json.sig").write_bytes((tmp_path / "for-partners.json.sig").read_bytes())
    # Signed by lab-b (trusted for lab-b) while naming lab-a as its source.
    assert cli("share", "sign", forged, "--signing-key", other).returncode == 0
    stranger = tmp_path / "stranger.key"
    assert cli("share", "keygen", "--name", "lab-a", "--out", stranger).returncode == 0
    unlisted = tmp_path / "unlisted.json"
    unlisted.write_bytes(exported.read_bytes())
    assert cli("share", "sign", unlisted, "--signing-key", stranger).returncode == 0
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_bytes(exported.read_bytes())

    into = tmp_path / "partners"
    result = cli("share", "import", exported, altered, forged, unlisted, unsigned, "--into", into,
                 "--trust-keys", trust)  # fmt: skip
    assert result.returncode == 1
    out = " ".join(result.stdout.split())
    assert out.count("refused") == 4 and "imported as lab-a-" in out
    assert "does not verify with 'lab-a'" in out  # altered, and the stranger's key
    assert "not on the trust list" in out  # lab-b's signature on a bundle naming lab-a
    assert "not signed" in out
    [stored] = list(into.glob("*.json"))
    assert read_bundle(stored).links == read_bundle(exported).links

    # A gateway that checks signatures (proxy --trust-keys) applies what import let in (the
    # signature is kept beside it) and nothing dropped into its folder unsigned or altered.
    from distillwatch.enforce.signals import HotIndicators
    from distillwatch.sharing.signing import read_trusted_keys, signature_path

    assert signature_path(stored).exists()
    (into / "dropped.json").write_bytes(unsigned.read_bytes())
    (into / "altered.json").write_bytes(altered.read_bytes())
    signature_path(into / "altered.json").write_bytes(signature_path(altered).read_bytes())
    checked = HotIndicators([into], read_trusted_keys(trust))
    assert set(checked.index.links) == set(read_bundle(exported).links)
    assert "not signed" in checked.errors[str(into / "dropped.json")]
    assert "does not verify" in checked.errors[str(into / "altered.json")]
    assert str(stored) not in checked.errors
    # A signature arriving after its bundle is a change the gateway sees.
    assert cli("share", "sign", into / "dropped.json", "--signing-key", key).returncode == 0
    checked._checked = 0.0  # past the once-a-second throttle
    checked.reload_if_changed()
    assert str(into / "dropped.json") not in checked.errors
    # Without --trust-keys a gateway applies every valid bundle, signed or not.
    assert HotIndicators([into]).errors == {}

    bad_list = tmp_path / "bad-list.txt"
    bad_list.write_text("lab-a ed25519 not-a-key\n")
    bad = cli("share", "import", exported, "--into", into, "--trust-keys", bad_list)
    assert bad.returncode == 2 and "line 1" in bad.stderr
    gateway = cli("proxy", "--upstream", "http://127.0.0.1:9", "--trust-keys", bad_list)
    assert (
        gateway.returncode == 2 and "--trust-keys" in gateway.stderr and "line 1" in gateway.stderr
    )
    both = cli("share", "import", exported, "--into", into, "--trust-keys", trust, "--trust-any")
    assert both.returncode == 2


def test_bench_two_labs_replays_lab_b_through_its_gateway_with_and_without_the_bundle(
    tmp_path, cli
):
    """``bench two-labs`` end to end on a small world: lab A detects and exports; lab B's real
    gateway (micro-batches over a log that starts with B's history, streaming evidence) serves
    the same traffic twice. With lab A's bundle the hydra gets no more of B than alone, and no
    benign account of B is actioned only because of the import."""
    result = cli("bench", "two-labs", "--seed", "3", "--scale", "0.3", "--horizon-hours", "2",
                 "--step-hours", "0.5", "--out", tmp_path / "labs", timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "with lab A's bundle" in result.stdout
    report = json.loads((tmp_path / "labs" / "two_labs.json").read_text())
    alone, with_a = report["alone"], report["with_a"]
    assert report["lab_a"]["indicators"] > 0
    assert alone["requests"] == with_a["requests"] > 0  # identical traffic in both runs
    # One micro-batch over B's history before the first request, then one per 30 minutes.
    assert alone["micro_batches"] == with_a["micro_batches"] >= 2
    assert with_a["served_in_full"] <= alone["served_in_full"]
    assert with_a["actioned_at_first_request"] > alone["actioned_at_first_request"]
    assert report["benign_actioned_only_with_import"] == 0
    replayed = sum(1 for _ in (tmp_path / "labs" / "lab-b-live" / "exchanges.jsonl").open())
    assert replayed == report["lab_b_replayed_requests"]
