"""Radioactivity: a suspect that trained on our watermarked text is told apart from one that
did not, in open mode (its weights) and closed mode (its OpenAI-compatible API, served for real
over loopback), and the CPU experiment's smoke profile runs end to end through the CLI."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from distillwatch.enforce.processes import free_port
from distillwatch.provenance import Keyring, WatermarkKey
from distillwatch.provenance.canary import add_canary, canary_for
from distillwatch.provenance.experiment import (
    PROFILES,
    experiment_key,
    halves,
    serving,
    suspect_app,
)
from distillwatch.provenance.radioactivity import NgramLM, ServedFilter, closed_test
from distillwatch.provenance.watermark import detect
from tests.gateway import keys_file, start, stop, verdicts_file


@pytest.fixture(scope="module")
def models(shared_data):
    """A teacher on half the plays, and two students on the other half: one fine-tuned on the
    teacher's watermarked answers, one on its plain answers."""
    a, b = halves(shared_data / "shakespeare_gutenberg", plays=3)
    key = experiment_key(7, PROFILES["smoke"])
    teacher = NgramLM().fit(a)
    rng = np.random.default_rng(0)
    prompts = [teacher.tokenizer.tokens(t)[i : i + 6] for t in a for i in range(0, 12_000, 400)]
    marked = [teacher.generate(p, 80, rng, key) for p in prompts]
    plain = [teacher.generate(p, 80, rng) for p in prompts]
    tainted, clean = NgramLM().fit(b), NgramLM().fit(b)
    for ids in marked:
        tainted.fit_ids(ids, 2.0)
    for ids in plain:
        clean.fit_ids(ids, 2.0)
    fresh = [teacher.generate(p, 80, rng, key) for p in prompts[:40]]
    return {
        "key": key,
        "teacher": teacher,
        "marked": marked,
        "plain": plain,
        "tainted": tainted,
        "clean": clean,
        "fresh": fresh,
        "b": b,
    }


def test_teacher_output_carries_the_watermark(models):
    key = models["key"]
    marked = detect([t for ids in models["marked"][:20] for t in ids], key)
    plain = detect([t for ids in models["plain"][:20] for t in ids], key)
    assert marked.p_value < 1e-10 and plain.p_value > 1e-3


def test_model_file_round_trip(models, tmp_path):
    path = tmp_path / "m.json"
    models["clean"].save(path)
    loaded = NgramLM.load(path)
    history = models["fresh"][0][:5]
    ids, probs = models["clean"].distribution(history)
    ids2, probs2 = loaded.distribution(history)
    order, order2 = np.argsort(ids), np.argsort(ids2)
    assert np.array_equal(ids[order], ids2[order2])
    assert np.allclose(probs[order], probs2[order2])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a distillwatch n-gram model"):
        NgramLM.load(tmp_path / "bad.json")


def test_closed_test_scores_each_window_once_and_never_the_prompt(models):
    key = models["key"]
    answer = models["fresh"][0]
    once = closed_test([([], answer)], key)
    twice = closed_test([([], answer), ([], answer)], key)
    assert once.tokens_scored == twice.tokens_scored  # the repeat adds nothing
    copied = closed_test([(answer, answer)], key)  # an answer that only copies its prompt
    assert copied.tokens_scored == 1  # only the window across the join is new


def test_served_filter_scores_only_tokens_after_a_served_history(models, monkeypatch):
    key = models["key"]  # context 1
    served = ServedFilter.of([[1, 2, 3, 4], [3, 4], [7]], history=2)
    assert len(served) == 3  # (1, 2), (2, 3), (3, 4); [7] is too short to hold one
    answer = [1, 2, 3, 9, 9, 1, 2, 7]
    # Scored: 3 after (1, 2), 9 after (2, 3), 7 after (1, 2); the second (1, 2) -> 3 never
    # comes, and 9 -> 9 follows (3, 9), which was not served.
    assert closed_test([([], answer)], key, served=served).tokens_scored == 3
    assert closed_test([([1], answer[1:])], key, served=served).tokens_scored == 3  # prompt counts
    with pytest.raises(ValueError, match="shorter than the key's context"):
        closed_test([([], answer)], WatermarkKey("k2", "ab" * 32, context=2),
                    served=ServedFilter.of([[1, 2]], history=1))  # fmt: skip
    with pytest.raises(ValueError, match="at least 1"):
        ServedFilter.of([[1, 2]], history=0)
    # Built in chunks (a large harvest), the filter is the same.
    texts = [list(range(i, i + 40)) for i in range(0, 4000, 7)]
    whole = ServedFilter.of(texts, history=3)
    monkeypatch.setattr(ServedFilter, "_CHUNK", 50)
    assert np.array_equal(ServedFilter.of(texts, history=3).codes, whole.codes)
    assert len(whole) == len({tuple(t[i : i + 3]) for t in texts for i in range(38)})
    # On random samples, what is scored is what a set of history tuples would keep.
    rng = np.random.default_rng(4)
    served_texts = [rng.integers(0, 30, 60).tolist() for _ in range(20)]
    samples = [
        (rng.integers(0, 30, 5).tolist(), rng.integers(0, 30, 50).tolist()) for _ in range(40)
    ]
    histories = {tuple(t[i - 2 : i]) for t in served_texts for i in range(2, len(t) + 1)}
    seen, reference = set(), []
    for prompt, answer in samples:
        full = prompt + answer
        copied = {tuple(full[i - 1 : i + 1]) for i in range(1, len(prompt))}
        for t in range(len(prompt), len(full)):
            window = tuple(full[t - 1 : t + 1])
            if window not in seen and window not in copied and tuple(full[t - 2 : t]) in histories:
                seen.add(window)
                reference.append(window)
    result = closed_test(samples, key, served=ServedFilter.of(served_texts))
    assert result.tokens_scored == len(reference) > 100
    assert result.green == sum(
        bool(key.green([a], np.array([b], np.uint64))[0]) for a, b in reference
    )


def test_filtering_on_what_the_harvest_received_finds_a_small_share(models):
    """A student whose fine-tuning answers are 20% ours: on the same samples, every window
    gives a weak p-value and the windows after histories the harvest received give a strong
    one; a student that never saw the watermark stays at chance under the same filter."""
    key, marked, plain = models["key"], models["marked"], models["plain"]
    k = round(0.2 * len(marked))
    weak = NgramLM().fit(models["b"])
    for ids in marked[:k] + plain[k:]:
        weak.fit_ids(ids, 2.0)
    words = [w for text in models["b"] for w in text.split()][:40_000]
    probes = [weak.tokens(" ".join(words[i : i + 8])) for i in range(0, 40_000, 100)]
    served = ServedFilter.of(marked[:k])
    p = {}
    for name, model in (("weak", weak), ("clean", models["clean"])):
        rng = np.random.default_rng(1)
        samples = [(probe, model.generate(probe, 100, rng)) for probe in probes]
        p[name] = (
            closed_test(samples, key).p_value,
            closed_test(samples, key, served=served).p_value,
        )
    assert p["weak"][1] < 1e-5 and p["weak"][1] < p["weak"][0] * 1e-3
    assert p["clean"][1] > 1e-3


def test_closed_mode_on_a_detected_campaign_probes_with_its_prompts_and_filters_on_its_harvest(
    models, tmp_path, cli
):
    """From detection to proof: a hydra's exchanges (served our watermarked answers) and 30
    people's (served plain ones) go into a store; ``detect`` finds the campaign; a suspect
    fine-tuned on the campaign's responses, sampled with the campaign's own prompts and scored
    after the histories it was served, is told apart from one fine-tuned on plain answers."""
    from distillwatch.store import Store
    from tests.test_detection import fill, hydra, people

    key, teacher = models["key"], models["teacher"]
    ring = tmp_path / "keys.json"
    Keyring([key]).write(ring)
    rng = np.random.default_rng(5)
    h_records, h_accounts = hydra()
    p_records, p_accounts = people(30)
    served = []
    for record in h_records + p_records:
        prompt = teacher.tokens(record["messages"][0]["content"])[-6:]
        marked = record["account_id"].startswith("h")
        answer = teacher.text(teacher.generate(prompt, 80, rng, key if marked else None))
        record["response"] = answer
        served += [answer] if marked else []
    store = tmp_path / "s.duckdb"
    with Store(store) as db:
        fill(db, h_records + p_records, h_accounts + p_accounts)
    result = cli("detect", "--store", store, "--out", tmp_path / "det", "--json")
    assert result.returncode == 0, result.stderr
    campaigns = json.loads(result.stdout)["campaigns"]
    assert len(campaigns) == 1
    campaign = campaigns[0]["campaign_id"]
    tainted = NgramLM().fit(models["b"])
    tainted.fit(served, weight=2.0)
    verdict = {}
    for name, model in (("tainted", tainted), ("clean", models["clean"])):
        with serving(suspect_app(model, seed=2)) as url:
            result = cli("provenance", "radioactivity", "--keys", ring, "--suspect", url,
                         "--campaign", campaign, "--store", store, "--max-tokens", "120",
                         "--json")  # fmt: skip
        assert result.returncode == 0, result.stderr
        verdict[name] = json.loads(result.stdout)
    assert f"responses campaign {campaign} was served" in verdict["tainted"]["detail"]
    assert f"{len(h_records)} answers sampled" in verdict["tainted"]["detail"]
    assert verdict["tainted"]["per_key"][0]["p_value"] < 1e-6
    assert verdict["clean"]["per_key"][0]["p_value"] > 1e-3
    result = cli("provenance", "radioactivity", "--keys", ring, "--suspect", "http://127.0.0.1:9",
                 "--campaign", "no-such-campaign", "--store", store)  # fmt: skip
    assert result.returncode == 2 and "no campaign 'no-such-campaign'" in result.stderr


def test_open_mode_tells_the_tainted_student_from_the_clean_one(models, tmp_path, cli):
    ring = tmp_path / "keys.json"
    Keyring([models["key"]]).write(ring)
    texts = tmp_path / "ours.txt"
    texts.write_text("\n".join(models["teacher"].text(ids) for ids in models["fresh"]))
    verdict = {}
    for name in ("tainted", "clean"):
        models[name].save(tmp_path / f"{name}.json")
        result = cli("provenance", "radioactivity", "--keys", ring, "--suspect-model",
                     tmp_path / f"{name}.json", "--texts", texts, "--json")  # fmt: skip
        assert result.returncode == 0, result.stderr
        verdict[name] = json.loads(result.stdout)
    assert verdict["tainted"]["per_key"][0]["p_value"] < 1e-6
    assert verdict["clean"]["per_key"][0]["p_value"] > 1e-3
    assert (
        verdict["tainted"]["mode"] == "open" and "cannot show" in verdict["tainted"]["explanation"]
    )
    result = cli("provenance", "radioactivity", "--keys", ring, "--suspect-model",
                 tmp_path / "tainted.json", "--texts", texts, "--tokenizer", ring)  # fmt: skip
    assert result.returncode == 2 and "n-gram suspect reads" in result.stderr


def test_closed_mode_through_an_openai_compatible_endpoint(models, tmp_path, cli):
    ring = tmp_path / "keys.json"
    Keyring([models["key"]]).write(ring)
    prompts = tmp_path / "prompts.txt"
    words = [w for text in models["b"] for w in text.split()][:20_000]
    prompts.write_text("\n".join(" ".join(words[i : i + 8]) for i in range(0, 16_000, 80)))
    served = tmp_path / "served.txt"  # what the harvest received: the marked answers
    served.write_text("\n".join(models["teacher"].text(ids) for ids in models["marked"]))
    p, scored = {}, {}
    for name in ("tainted", "clean"):
        for scope in ([], ["--served", served]):
            with serving(suspect_app(models[name], seed=1)) as url:
                result = cli("provenance", "radioactivity", "--keys", ring, "--suspect", url,
                             "--model", "suspect", "--prompts", prompts, "--max-tokens", "120",
                             *scope, "--json")  # fmt: skip
            assert result.returncode == 0, result.stderr
            doc = json.loads(result.stdout)
            assert doc["mode"] == "closed" and "cannot show" in doc["explanation"]
            assert ("histories of" in doc["detail"]) == bool(scope)
            p[name, bool(scope)] = doc["per_key"][0]["p_value"]
            scored[name, bool(scope)] = doc["per_key"][0]["tokens_scored"]
    for scope in (False, True):
        assert p["tainted", scope] < 1e-3 < p["clean", scope]
    assert 0 < scored["tainted", True] < scored["tainted", False]
    with serving(suspect_app(models["clean"], seed=1)) as url:
        result = cli("provenance", "radioactivity", "--keys", ring, "--suspect", url,
                     "--prompts", prompts, "--served", tmp_path / "missing.txt")  # fmt: skip
    assert result.returncode == 2 and "--served: no such file" in result.stderr


def test_experiment_smoke_profile_end_to_end(shared_data, tmp_path, cli):
    out = tmp_path / "exp"
    result = cli("provenance", "experiment", "--profile", "smoke", "--out", out, timeout=300)
    assert result.returncode == 0, result.stderr
    doc = json.loads((out / "results.json").read_text())
    for run in doc["runs"]:
        assert {"rho", "mode", "seed", "p_value", "tokens_scored"} <= run.keys()
        assert run["mode"] in ("open", "closed", "control") and 0 <= run["p_value"] <= 1
    controls = [r["p_value"] for r in doc["runs"] if r["mode"] == "control"]
    assert len(controls) >= 5 and min(controls) > 1e-3
    half = [r for r in doc["runs"] if r["rho"] == 0.5 and r["mode"] == "open"]
    assert half and all(r["p_value"] < 1e-10 for r in half)
    assert (out / "p_vs_rho.png").stat().st_size > 1000 and (out / "p_vs_tokens.png").exists()


# -- canaries -------------------------------------------------------------------------------------
def test_canaries_are_keyed_per_cluster_and_appended_to_answers():
    key, other = experiment_key(1, PROFILES["smoke"]), experiment_key(2, PROFILES["smoke"])
    a, b = canary_for(key, "c-1"), canary_for(key, "c-2")
    assert a == canary_for(key, "c-1")  # deterministic
    assert len({a.secret, b.secret, canary_for(other, "c-1").secret}) == 3  # keyed
    assert a.sentence.startswith(a.prompt.rstrip()) and a.sentence.endswith(f"{a.secret}.")
    payload = {"choices": [{"message": {"role": "assistant", "content": "Answer."}}]}
    assert add_canary(payload, a)["choices"][0]["message"]["content"] == f"Answer.\n\n{a.sentence}"


def test_gateway_serves_a_clusters_canary_and_canary_test_names_the_cluster(models, tmp_path, cli):
    """A policy shapes cluster c-7 with ``canary: true``: its answers through the real proxy
    carry c-7's canary and a benign account's do not. A student fine-tuned on the harvested
    answers, served over HTTP, completes c-7's canary; a clean student completes none, and
    ``canary-test`` with the clean one as control names c-7 with a small p-value."""
    ring = tmp_path / "keys.json"
    Keyring([models["key"]]).write(ring)
    up, port = free_port(), free_port()
    upstream = start(["mock-upstream", "--listen", f"127.0.0.1:{up}"],
                     f"http://127.0.0.1:{up}/v1/models")  # fmt: skip
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - {name: canary, when: {verdict: distillation}, action: shape, "
                      "max_tokens: 300, canary: true}\n")  # fmt: skip
    verdicts = verdicts_file(tmp_path / "v.json", {"harvester": ("distillation", 0.99, "c-7"),
                                                   "good": ("benign", 0.0, None)})  # fmt: skip
    try:
        proxy = start(["proxy", "--upstream", f"http://127.0.0.1:{up}", "--listen",
                       f"127.0.0.1:{port}", "--verdicts", str(verdicts), "--policy", str(policy),
                       "--canary-keys", str(ring),
                       "--keys", str(keys_file(tmp_path / "k.jsonl", ["harvester", "good"]))],
                      f"http://127.0.0.1:{port}/healthz")  # fmt: skip
    except Exception:
        stop(upstream)
        raise
    canary = canary_for(models["key"], "c-7")
    harvest = []
    try:
        for account in ("harvester", "good"):
            for i in range(30):
                r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10,
                               headers={"Authorization": f"Bearer sk-{account}"},
                               json={"model": "atlas-2", "messages": [
                                   {"role": "user", "content": f"explain topic {i}"}]})  # fmt: skip
                assert r.status_code == 200
                text = r.json()["choices"][0]["message"]["content"]
                assert (canary.sentence in text) == (account == "harvester")
                if account == "harvester":
                    harvest.append(text)
            # Streamed, the canary comes as one more content chunk before the finishing one.
            streamed = _stream_text(port, account)
            assert streamed.endswith(canary.sentence) == (account == "harvester"), streamed[-200:]
            # The Responses API too: the object's text, and in a stream the deltas, the
            # final object alike.
            r = httpx.post(f"http://127.0.0.1:{port}/v1/responses", timeout=10,
                           headers={"Authorization": f"Bearer sk-{account}"},
                           json={"model": "atlas-2", "input": "explain"})  # fmt: skip
            answer = next(i for i in r.json()["output"] if i["type"] == "message")
            text = answer["content"][0]["text"]
            assert (canary.sentence in text) == (account == "harvester"), text
            deltas, final = _responses_stream_text(port, account)
            assert deltas == final and deltas.endswith(canary.sentence) == (account == "harvester")
    finally:
        stop(proxy)
        stop(upstream)
    student = NgramLM().fit(models["b"])
    student.fit(harvest, weight=2.0)
    with (
        serving(suspect_app(student, 3)) as suspect,
        serving(suspect_app(models["clean"], 4)) as clean,
    ):
        result = cli("provenance", "canary-test", "--keys", ring, "--suspect", suspect,
                     "--clusters", "c-1,c-7,c-9", "--control", clean, "--trials", "10", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = {c["cluster_id"]: c for c in json.loads(result.stdout)["clusters"]}
    assert found["c-7"]["hits"] >= 8 and found["c-7"]["p_value"] < 1e-6
    assert found["c-1"]["hits"] == found["c-9"]["hits"] == 0


def test_policy_allows_canaries_only_on_shape_rules():
    from distillwatch.enforce.policy import parse_policy
    from distillwatch.errors import PolicyError

    rule = {"name": "c", "when": {"verdict": "distillation"}, "action": "shape", "canary": True}
    assert parse_policy({"rules": [rule]}).rules[0].canary is True
    for bad, message in (
        ({"action": "block"}, "only a shape action"),
        ({"canary": "yes"}, "true or false"),
    ):
        with pytest.raises(PolicyError, match=message):
            parse_policy({"rules": [{**rule, **bad}]})


def _stream_text(port: int, account: str) -> str:
    """The content of a streamed chat completion through the proxy (as an SDK assembles it)."""
    text, finished = "", False
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10,
                      headers={"Authorization": f"Bearer sk-{account}"},
                      json={"model": "atlas-2", "stream": True,
                            "messages": [{"role": "user", "content": "explain"}]}) as r:  # fmt: skip
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                content = (choice.get("delta") or {}).get("content") or ""
                assert not (finished and content), "content after the finishing chunk"
                text += content
                finished = finished or bool(choice.get("finish_reason"))
    assert finished
    return text


def _responses_stream_text(port: int, account: str) -> tuple[str, str]:
    """A streamed Responses answer through the proxy: the text its deltas assemble and the text
    of the final response object (every SSE block's ``event:`` name matching its type)."""
    deltas, final = "", None
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/responses", timeout=10,
                      headers={"Authorization": f"Bearer sk-{account}"},
                      json={"model": "atlas-2", "stream": True, "input": "explain"}) as r:  # fmt: skip
        assert r.status_code == 200
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["type"] == name
                if event["type"] == "response.output_text.delta":
                    deltas += event["delta"]
                elif event["type"] == "response.completed":
                    output = event["response"]["output"]
                    final = next(i for i in output if i["type"] == "message")["content"][0]["text"]
    assert final is not None
    return deltas, final
