"""The watermark: scheme, exact test, calibration on human text and wrong keys, and end to end
through the gateway's shape action."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import kstest

from distillwatch.enforce.mock_upstream import WORDS
from distillwatch.enforce.processes import free_port
from distillwatch.errors import ProvenanceKeyError
from distillwatch.provenance import (
    Keyring,
    MarkedWriter,
    TokenizerFile,
    WatermarkKey,
    WordTokenizer,
    binomial_test,
    detect,
    detect_texts,
    watermark_logits,
)
from tests.gateway import keys_file, start, stop, verdicts_file


def _human_texts(shared_data) -> list[str]:
    texts = []
    for line in (shared_data / "oasst_prompt_lottery").rglob("*.jsonl"):
        for row in line.read_text().splitlines():
            value = json.loads(row)
            texts.append(value if isinstance(value, str) else json.dumps(value))
    plays = sorted((shared_data / "shakespeare_gutenberg").rglob("*_gut.txt"))
    for play in plays[:3]:
        words = play.read_text(errors="replace").split()
        texts += [" ".join(words[i : i + 150]) for i in range(0, min(len(words), 150 * 100), 150)]
    return [t for t in texts if len(t.split()) >= 40]


def _randomised(detection) -> float:
    """A p-value made continuous (uniform under the null exactly) for the KS test: the binomial
    p-value is discrete, P[Binomial >= s+1] + U * P[Binomial = s]."""
    from scipy.stats import binom

    t, s, g = detection.tokens_scored, detection.green, detection.gamma
    return float(binom.sf(s, t, g) + random.random() * binom.pmf(s, t, g))


def test_exact_binomial_tail_matches_the_sum():
    for t, s, g in ((10, 7, 0.25), (50, 20, 0.25), (200, 51, 0.5), (3, 0, 0.25)):
        exact = sum(math.comb(t, k) * g**k * (1 - g) ** (t - k) for k in range(s, t + 1))
        assert binomial_test(t, s, g)[0] == pytest.approx(exact, rel=1e-9)
    assert binomial_test(0, 0, 0.25) == (1.0, 0.0)


def test_logits_processor_biases_exactly_the_green_list():
    key = WatermarkKey.generate("k")
    logits = np.zeros((2, 5000))
    out = watermark_logits(logits, [[11, 42], [7]], key)
    for row, history in zip(out, [[11, 42], [7]], strict=True):
        green = key.green_mask(history[-1:], 5000)
        assert np.allclose(row[green], key.delta) and np.allclose(row[~green], 0.0)
        assert abs(green.mean() - key.gamma) < 0.03
    assert np.array_equal(watermark_logits(np.ones(10), [], key), np.ones(10))  # no context yet
    # Device- and library-independent: a fixed key gives a fixed green list.
    fixed = WatermarkKey("fixed", "00" * 31 + "01")
    assert fixed.green_mask([1], 16).tolist() == fixed.green_mask([1], 16).tolist()
    assert fixed.green_mask([1], 64).sum() != fixed.green_mask([2], 64).sum() or not np.array_equal(
        fixed.green_mask([1], 64), fixed.green_mask([2], 64)
    )


def test_marked_text_is_detected_and_plain_text_is_not():
    key = WatermarkKey("k", "c3" * 32)
    writer = MarkedWriter(list(WORDS))
    tokenizer = WordTokenizer()
    for seed in range(5):
        marked = detect(tokenizer.tokens(writer.write(250, key, seed)), key)
        plain = detect(tokenizer.tokens(writer.write(250, None, seed)), key)
        assert marked.p_value < 1e-6 and marked.tokens_scored > 150
        assert plain.p_value > 1e-4


def test_each_context_token_pair_counts_once_and_prompt_text_not_at_all():
    key = WatermarkKey.generate("k")
    tokenizer = WordTokenizer()
    repeated = tokenizer.tokens("the same green phrase again " * 100)
    assert detect(repeated, key).tokens_scored <= 5
    prompt = tokenizer.tokens("copy this sentence back to me word for word please")
    assert detect(prompt, key, prompt=prompt).tokens_scored == 0


def test_p_values_are_uniform_on_human_text_and_under_wrong_keys(shared_data):
    random.seed(0)
    key = WatermarkKey("ours", "5a" * 32)  # fixed keys: a deterministic test
    tokenizer = WordTokenizer()
    human = _human_texts(shared_data)
    assert len(human) >= 200
    null = [_randomised(detect(tokenizer.tokens(t), key)) for t in human]
    assert kstest(null, "uniform").pvalue > 0.01
    writer = MarkedWriter(list(WORDS))
    marked = [writer.write(120, key, seed) for seed in range(40)]
    wrong = [_randomised(detect(tokenizer.tokens(t), WatermarkKey(f"w{i}-{j}", f"{5 * i + j + 1:064x}")))
             for i, t in enumerate(marked) for j in range(5)]  # fmt: skip
    assert kstest(wrong, "uniform").pvalue > 0.01
    # ...and the test has power: the right key finds every one of them.
    assert max(detect(tokenizer.tokens(t), key).p_value for t in marked) < 1e-3


def test_keyring_rotation_and_bad_files(tmp_path):
    old, new = WatermarkKey.generate("2026-11"), WatermarkKey.generate("2026-12")
    ring = Keyring([old, new])
    ring.write(tmp_path / "ring.json")
    assert Keyring.read(tmp_path / "ring.json").active.key_id == "2026-12"
    text = MarkedWriter(list(WORDS)).write(200, old, 1)  # marked before the rotation
    results, _ = detect_texts([("t", text, "")], ring)
    assert results[0].best.key_id == "2026-11" and results[0].corrected_p < 1e-6
    (tmp_path / "bad.json").write_text('{"keys": [{"key_id": "x", "secret": "abc"}]}')
    with pytest.raises(ProvenanceKeyError, match="at least 16 bytes"):
        Keyring.read(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(ProvenanceKeyError, match=r"junk\.json: not a watermark keyring"):
        Keyring.read(tmp_path / "junk.json")


def test_gateway_shape_asks_the_upstream_to_watermark_and_detect_finds_it(tmp_path, cli):
    """A policy shapes suspicious accounts with ``watermark: true``; the mock upstream marks
    what they get with its keyring's active key; ``provenance detect`` on the answers finds the
    mark in theirs and not in a benign account's."""
    keys = tmp_path / "wm.json"
    assert cli("provenance", "keygen", "--keys", keys, "--key-id", "wm-1").returncode == 0
    up = free_port()
    upstream = start(["mock-upstream", "--listen", f"127.0.0.1:{up}", "--watermark-keys", str(keys)],
                     f"http://127.0.0.1:{up}/v1/models")  # fmt: skip
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - {name: mark, when: {verdict: suspicious}, action: shape, "
                      "max_tokens: 300, strip_reasoning: true, watermark: true}\n")  # fmt: skip
    port = free_port()
    verdicts = verdicts_file(tmp_path / "v.json", {"shady": ("suspicious", 0.6, "c-1"),
                                                   "good": ("benign", 0.0, None)})  # fmt: skip
    proxy = start(["proxy", "--upstream", f"http://127.0.0.1:{up}", "--listen", f"127.0.0.1:{port}",
                   "--verdicts", str(verdicts), "--policy", str(policy),
                   "--keys", str(keys_file(tmp_path / "k.jsonl", ["shady", "good"]))],
                  f"http://127.0.0.1:{port}/healthz")  # fmt: skip
    try:
        answers = {}
        for account in ("shady", "good"):
            rows = []
            for i in range(4):
                body = {"model": "atlas-2", "max_tokens": 300,
                        "messages": [{"role": "user", "content": f"tell me about topic {i}"}]}  # fmt: skip
                r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                               headers={"Authorization": f"Bearer sk-{account}",
                                        "X-Distillwatch-Watermark": "on"}, timeout=10)  # fmt: skip
                assert r.status_code == 200
                rows.append({"response": r.json()["choices"][0]["message"]["content"],
                             "prompt": body["messages"][0]["content"]})  # fmt: skip
            path = tmp_path / f"{account}.jsonl"
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
            result = cli("provenance", "detect", path, "--keys", keys, "--json")
            assert result.returncode == 0, result.stderr
            answers[account] = json.loads(result.stdout)["texts"]
    finally:
        stop(proxy)
        stop(upstream)
    pooled = {a: texts[-1] for a, texts in answers.items()}
    assert pooled["shady"]["name"] == "pooled" and pooled["shady"]["corrected_p_value"] < 1e-9
    # The benign account sent the same header itself: the gateway never forwards it.
    assert pooled["good"]["corrected_p_value"] > 1e-3
    assert pooled["shady"]["per_key"][0]["tokens_scored"] > 500


def _git(repo, *args):
    import subprocess

    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
                        "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com",
                        "HOME": str(repo), "PATH": "/usr/bin:/bin"})  # fmt: skip


def test_scan_finds_assistant_markers_our_watermark_and_vendor_copies(tmp_path, cli, shared_data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    key = WatermarkKey.generate("wm")
    Keyring([key]).write(tmp_path / "keys.json")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("def add(a, b):\n    return a + b\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "Initial commit")
    (repo / "b.py").write_text(
        "import os\n\n\n# Generated with [Claude Code](https://claude.ai/code)\nX = 1\n"
    )
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "Add b\n\nCo-Authored-By: Claude <noreply@anthropic.com>")
    (repo / "notes.txt").write_text(MarkedWriter(list(WORDS)).write(300, key, 3))
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "Notes")
    head = __import__("subprocess").run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                                        capture_output=True, text=True).stdout.strip()  # fmt: skip
    # A vendor's outputs (real GPT-4 answers from GPTeacher), and a corpus with one lightly edited copy.
    sample = _gpteacher_responses(shared_data, 50)
    (tmp_path / "vendor.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in sample))
    copied = sample[7].replace("the ", "a ", 1) + " Thanks."
    corpus = [
        {"text": "An ordinary human sentence about gardening in spring and what to plant."},
        {"text": copied},
    ]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    pq.write_table(pa.table({"text": ["fine text", "As an AI language model, I cannot do that."]}),
                   tmp_path / "chat.parquet")  # fmt: skip
    out = tmp_path / "findings.jsonl"
    result = cli("provenance", "scan", repo, tmp_path / "corpus.jsonl", tmp_path / "chat.parquet",
                 "--keys", tmp_path / "keys.json", "--reference", tmp_path / "vendor.jsonl", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    findings = [json.loads(line) for line in out.read_text().splitlines()]
    by_kind = {}
    for f in findings:
        by_kind.setdefault(f["kind"], []).append(f)
    markers = by_kind["assistant_marker"]
    trailer = [f for f in markers if "commit trailer" in f["reason"]]
    assert trailer and trailer[0]["path"].endswith("<commit message>") and trailer[0]["line"] == 3
    footer = [f for f in markers if "footer" in f["reason"] and f["path"].endswith("b.py")]
    assert footer and footer[0]["line"] == 4 and len(footer[0]["commit"]) == 40
    assert any(f["path"].endswith("chat.parquet") and f["line"] == 2 for f in markers)
    assert [
        f["path"].endswith("notes.txt") and f["commit"] == head for f in by_kind["watermark"]
    ] == [True]
    near = by_kind["near_duplicate"]
    assert [f["line"] for f in near] == [2] and "ref-8" in near[0]["reason"]
    assert not any(f["path"].endswith("a.py") for f in findings)  # plain code, plain commit


def test_scan_with_worker_processes_reports_exactly_what_one_process_does(
    tmp_path, shared_data, monkeypatch
):
    """Units of work go to worker processes and come back in order: the findings, their line
    numbers and the skipped records are those of the in-process scan."""
    from distillwatch.provenance import scan as scan_module

    key = WatermarkKey.generate("wm")
    writer = MarkedWriter(list(WORDS))
    answers = _gpteacher_responses(shared_data, 120)
    lines, marked, skipped = [], [], []
    for i, answer in enumerate(answers):
        if i % 17 == 5:
            lines.append("{broken")
            skipped.append(len(lines))
        if i % 11 == 3:
            answer += "\n\nGenerated with Claude Code"
        if i % 13 == 7:
            answer = writer.write(200, key, i)
            marked.append(len(lines) + 1)
        lines.append(json.dumps({"text": answer}))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(scan_module, "BATCH_CHARS", 8_000)  # many units, split mid-corpus
    assert len(list(scan_module.read(corpus))) >= 8
    results = []
    for workers in (1, 2):
        skips: list[tuple] = []
        found = [f.as_dict() for f in scan_module.scan([corpus], Keyring([key]), workers=workers,
                                                       on_skip=lambda *s, into=skips: into.append(s))]  # fmt: skip
        results.append((found, skips))
    assert results[0] == results[1]
    found, skips = results[0]
    assert [line for _, line, _ in skips] == skipped
    assert [f["line"] for f in found if f["kind"] == "watermark"] == marked
    assert len([f for f in found if f["kind"] == "assistant_marker"]) >= 10


@pytest.mark.parametrize("how", ["script", "module"])
def test_scan_workers_do_not_run_the_calling_script_again(tmp_path, how):
    """The console script's ``__main__`` imports the whole CLI; spawned workers would run it
    again each. A script (run by path, or with ``python -m``) that leaves a file behind when
    run as a worker's ``__mp_main__`` scans with two workers: the scan is right, the file never
    appears, and the script's own ``__file__`` is back afterwards."""
    key = WatermarkKey("ours", "7c" * 32)
    writer = MarkedWriter(list(WORDS))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": writer.write(150, key if i % 3 == 0 else None, i)}) + "\n"
                              for i in range(30)))  # fmt: skip
    Keyring([key]).write(tmp_path / "keys.json")
    script = tmp_path / "caller.py"
    script.write_text(f"""
import json, pathlib, sys
if __name__ == "__mp_main__":
    pathlib.Path({str(tmp_path / "rerun")!r}).write_text("a worker ran the script")
if __name__ == "__main__":
    from distillwatch.provenance import Keyring
    from distillwatch.provenance import scan as scan_module
    scan_module.BATCH_CHARS = 2_000  # several units of work
    found = [f.as_dict() for f in scan_module.scan([pathlib.Path({str(corpus)!r})],
             Keyring.read(pathlib.Path({str(tmp_path / "keys.json")!r})), workers=2)]
    assert __file__ == {str(script)!r} and (__spec__ is None) == {how == "script"}
    print(json.dumps([f["line"] for f in found if f["kind"] == "watermark"]))
""")
    command = [str(script)] if how == "script" else ["-m", "caller"]
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == list(range(1, 31, 3))
    assert not (tmp_path / "rerun").exists()


def _gpteacher_responses(shared_data, n):
    texts = []
    for path in sorted((shared_data / "gpteacher").rglob("*.json")):
        rows = json.loads(path.read_text())
        texts += [r["response"] for r in rows if len(r.get("response", "").split()) > 60]
        if len(texts) >= n:
            break
    return texts[:n]


def test_scan_reports_exactly_the_documents_detect_finds_at_the_min_tokens_boundary():
    """The scan counts no text too short to be reported; what it reports is still exactly
    what :func:`detect` says of each document, on lengths either side of ``min_tokens``."""
    from distillwatch.provenance.scan import Batch, Scanner

    key = WatermarkKey("ours", "3d" * 32, delta=6.0)
    writer = MarkedWriter(list(WORDS))
    tokenizer = WordTokenizer()
    batch, expected = Batch(), []
    for i, length in enumerate([*range(6, 16), *range(6, 16)]):
        text = writer.write(length, key if i % 4 else None, i)
        batch.append("c.jsonl", text, i + 1)
        found = detect(tokenizer.tokens(text), key)
        if found.tokens_scored >= 10 and found.p_value < 0.05:
            expected.append(i + 1)
    scanner = Scanner(Keyring([key]), alpha=0.05, min_tokens=10)
    assert [f.line for f in scanner.findings(batch) if f.kind == "watermark"] == expected
    assert len(expected) >= 5  # marked texts of 11 tokens and more are found


def test_detect_and_scan_with_the_serving_model_s_own_subword_tokenizer(tmp_path, cli, shared_data):
    """A server whose model has a BPE vocabulary (trained here, saved as tokenizer.json)
    watermarks its ids; ``detect --tokenizer`` and ``scan --tokenizer`` find its texts on those
    ids, where distillwatch's word tokenizer sees nothing; a file that is not a tokenizer is a
    clean error."""
    import pickle

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from distillwatch.provenance.scan import Scanner

    plays = sorted((shared_data / "shakespeare_gutenberg").glob("*.txt"))[:3]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train([str(p) for p in plays], trainers.BpeTrainer(
        vocab_size=3000, special_tokens=["[UNK]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    bpe.save(str(tmp_path / "tokenizer.json"))
    # Whole-word tokens (" word") that a re-encoding gives back as themselves: text the server
    # wrote from them re-encodes to the ids it sampled.
    words = np.array(sorted(t for t in range(bpe.get_vocab_size())
                            if (w := bpe.decode([t])).startswith(" ") and w[1:].isalpha()
                            and bpe.encode(w).ids == [t]), np.uint64)  # fmt: skip
    assert len(words) > 300
    key = WatermarkKey("bpe", "4e" * 32)
    rng = np.random.default_rng(2)
    lines = []
    for i in range(12):
        history = [int(rng.choice(words))]
        for _ in range(120):
            logits = np.zeros(len(words)) + (
                key.delta * key.green(history[-1:], words) if i % 2 == 0 else 0
            )
            p = np.exp(logits) / np.exp(logits).sum()
            history.append(int(words[rng.choice(len(words), p=p)]))
        lines.append(json.dumps({"response": bpe.decode(history)}))
    (tmp_path / "served.jsonl").write_text("\n".join(lines) + "\n")
    Keyring([key]).write(tmp_path / "keys.json")
    found = {}
    for tokenizer in ([], ["--tokenizer", tmp_path / "tokenizer.json"]):
        result = cli("provenance", "detect", tmp_path / "served.jsonl", "--keys", tmp_path / "keys.json",
                     *tokenizer, "--json")  # fmt: skip
        assert result.returncode == 0, result.stderr
        found[bool(tokenizer)] = [
            t["corrected_p_value"] for t in json.loads(result.stdout)["texts"]
        ]
    assert all(p < 1e-6 for p in found[True][0:12:2]) and all(p > 1e-3 for p in found[True][1:12:2])
    assert found[False][-1] > 1e-3  # pooled, on the word tokenizer's ids: nothing
    result = cli("provenance", "scan", tmp_path / "served.jsonl", "--field", "response", "--keys",
                 tmp_path / "keys.json", "--tokenizer", tmp_path / "tokenizer.json",
                 "--out", tmp_path / "found.jsonl")  # fmt: skip
    assert result.returncode == 0, result.stderr
    marked = [json.loads(x)["line"] for x in (tmp_path / "found.jsonl").read_text().splitlines()]
    assert marked == list(range(1, 13, 2))
    # A scan worker gets the tokenizer pickled: the same ids after the round trip.
    scanner = pickle.loads(
        pickle.dumps(Scanner(Keyring([key]), tokenizer=TokenizerFile(tmp_path / "tokenizer.json")))
    )
    assert (
        scanner.tokenizer.tokens(json.loads(lines[0])["response"])
        == bpe.encode(json.loads(lines[0])["response"]).ids
    )
    (tmp_path / "junk.json").write_text('{"not": "a tokenizer"}')
    result = cli("provenance", "detect", tmp_path / "served.jsonl", "--keys", tmp_path / "keys.json",
                 "--tokenizer", tmp_path / "junk.json")  # fmt: skip
    assert result.returncode == 2 and "not a Hugging Face tokenizer.json" in result.stderr


def test_parquet_scans_as_jsonl_does_and_reports_what_it_cannot_read(tmp_path, monkeypatch):
    """The same texts as Parquet (read as Arrow columns, several units) and as JSONL give the
    same findings at the same lines; null rows, a missing or non-text column, an unreadable
    file, invalid UTF-8 and over-long texts are handled as JSONL handles them, and reported."""
    import pyarrow.parquet as pq

    from distillwatch.provenance import scan as scan_module

    key = WatermarkKey("ours", "2f" * 32)
    writer = MarkedWriter(list(WORDS))
    texts: list[str | None] = []
    for i in range(300):
        text = writer.write(120, key if i % 7 == 3 else None, i)
        texts.append(
            None if i % 50 == 9 else text + ("\n\nGenerated with Claude" if i % 11 == 5 else "")
        )
    pq.write_table(pa.table({"text": texts, "n": list(range(300))}), tmp_path / "c.parquet",
                   row_group_size=64)  # fmt: skip
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    monkeypatch.setattr(scan_module, "BATCH_CHARS", 20_000)  # several units a file
    monkeypatch.setattr(scan_module, "PARQUET_ROWS", 64)
    assert len(list(scan_module.read(tmp_path / "c.parquet"))) >= 4
    found, skips = {}, {}
    for kind in ("parquet", "jsonl"):
        skips[kind] = []
        found[kind] = [(f.kind, f.line, f.reason) for f in scan_module.scan(
            [tmp_path / f"c.{kind}"], Keyring([key]), on_skip=lambda *s, k=kind: skips[k].append(s[1:]))]  # fmt: skip
    assert found["parquet"] == found["jsonl"]
    assert [line for kind, line, _ in found["parquet"] if kind == "watermark"] == [
        i + 1 for i in range(300) if i % 7 == 3 and i % 50 != 9
    ]
    assert (
        skips["parquet"]
        == skips["jsonl"]
        == [(i + 1, "no string field 'text'") for i in range(9, 300, 50)]
    )
    reported: list[tuple] = []
    for field_name, path in (("nope", "c.parquet"), ("n", "c.parquet"), ("text", "junk.parquet")):
        (tmp_path / "junk.parquet").write_bytes(b"not parquet")
        assert (
            list(
                scan_module.documents(
                    tmp_path / path, field_name, on_skip=lambda *s: reported.append(s)
                )
            )
            == []
        )
    assert [r[1:] for r in reported] == [
        (0, "no column 'nope' (columns: text, n)"),
        (0, "column 'n' holds int64, not text"),
        (0, reported[2][2]),
    ] and reported[2][2].startswith("not a readable Parquet file")
    # Invalid UTF-8 and an over-long text, as JSONL reads them.
    data = b"ok\xff\xfebad"
    bad = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(np.array([0, 2, 7], np.int32).tobytes()),
                                                 pa.py_buffer(data)])  # fmt: skip
    pq.write_table(pa.table({"text": bad}), tmp_path / "bad.parquet")
    assert [d.text for d in scan_module.documents(tmp_path / "bad.parquet")] == [
        "ok",
        "\ufffd\ufffdbad",
    ]
    monkeypatch.setattr(scan_module, "MAX_DOCUMENT_CHARS", 5)
    pq.write_table(pa.table({"text": ["h\u00e9llo world", "short"]}), tmp_path / "long.parquet")
    assert [d.text for d in scan_module.documents(tmp_path / "long.parquet")] == [
        "h\u00e9llo",
        "short",
    ]


def test_a_folder_scan_reports_binary_files_instead_of_reading_them_as_text(tmp_path, cli):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "logo.png").write_bytes(
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256))
    )
    (tmp_path / "docs" / "notes.md").write_text("Fixed the parser.\n\nGenerated with Claude Code\n")
    result = cli("provenance", "scan", tmp_path / "docs", "--out", tmp_path / "found.jsonl")
    assert result.returncode == 0, result.stderr
    found = [json.loads(x) for x in (tmp_path / "found.jsonl").read_text().splitlines()]
    assert [(Path(f["path"]).name, f["line"]) for f in found] == [("notes.md", 3)]
    assert "logo.png:0: binary file, skipped" in result.stderr


def test_vectorised_count_equals_the_reference_count():
    from distillwatch.provenance.watermark import count_green, count_green_fast, scored_pairs

    rng = random.Random(3)
    for context in (1, 2, 3):
        key = WatermarkKey.generate("k", context=context)
        for trial in range(40):
            tokens = [rng.randrange(60) for _ in range(rng.randrange(0, 300))]
            tokens += [2**40 + 5] if trial == 7 else []  # ids beyond 32 bits take the general path
            prompt = tokens[: rng.randrange(0, 25)] if trial % 2 else []
            assert count_green_fast(tokens, key, prompt) == count_green(
                scored_pairs(tokens, key, prompt), key
            )


def test_scan_and_detect_name_every_record_they_skip(tmp_path, cli):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "fine"}\nnot json\n{"other": 1}\n')
    Keyring([WatermarkKey("k", "7e" * 32)]).write(tmp_path / "k.json")
    for args in (
        ("scan", corpus),
        ("detect", corpus, "--keys", tmp_path / "k.json", "--field", "text"),
    ):
        result = cli("provenance", *args)
        assert result.returncode == 0, result.stderr
        assert "c.jsonl:2: not JSON, skipped" in result.stderr
        assert "c.jsonl:3: no string field 'text', skipped" in result.stderr


def test_batched_tokens_and_counts_equal_the_per_document_ones(shared_data):
    """The scan tokenises and counts a batch at a time (character classes from tables, over
    the texts' bytes or code points); the result must be exactly what the per-document
    tokenizer and counter give, on real answers, real Chinese prompts, the characters where
    ASCII and Unicode classes differ, and texts that meet at a word."""
    from distillwatch.provenance.watermark import count_green_batch, count_green_fast

    arena = shared_data / "arena_hard" / "arena-hard-v2.0_question.jsonl"
    prompts = [json.loads(line)["prompt"] for line in arena.read_text().split("\n") if line]
    chinese = [p for p in prompts if sum("\u4e00" <= c <= "\u9fff" for c in p) > 20]
    assert len(chinese) >= 20
    texts = _gpteacher_responses(shared_data, 300) + prompts[:100] + chinese
    texts += [
        "a\x1cb c\x1fd",
        "tab\tvt\x0bff\x0ccr\r end",
        "nul\x00byte",
        "İSTANBUL ΣΑΣ",
        "_x_ 1.5,2",
        "",
        "   leading and trailing spaces   ",
        "end",  # the next text starts with a word: two tokens, never one
        "x",
        "emoji \U0001f600ok, a\u0301b x\u00b2y \u2028line",
        "",
    ]
    tokenizer = WordTokenizer()
    ids, owner = tokenizer.tokens_batch(texts)
    assert owner.tolist() == sorted(owner.tolist())
    for i, text in enumerate(texts):
        assert ids[owner == i].tolist() == tokenizer.tokens(text), text[:60]
    again, again_owner = tokenizer.tokens_batch(texts[::-1])  # words seen before: the same ids
    for i, text in enumerate(texts[::-1]):
        assert again[again_owner == i].tolist() == WordTokenizer().tokens(text), text[:60]
    # The same texts as an Arrow column (its buffers read directly), sliced so that its offsets
    # do not start at 0, in text order and in the scan's order (ASCII texts first).
    column = pa.array(["pad", *texts], pa.string()).slice(1)
    arrow_ids, arrow_owner = WordTokenizer().tokens_batch(column)
    assert arrow_ids.tolist() == ids.tolist() and arrow_owner.tolist() == owner.tolist()
    loose_ids, loose_owner = WordTokenizer().tokens_batch(column, ordered=False)
    assert (np.diff(loose_owner) < 0).any()  # really out of order: non-ASCII texts come last
    for i, text in enumerate(texts):
        assert loose_ids[loose_owner == i].tolist() == tokenizer.tokens(text), text[:60]
    for context in (1, 2):
        key = WatermarkKey.generate("k", context=context)
        scored, green = count_green_batch(ids, owner, len(texts), key)
        for i, text in enumerate(texts):
            assert (scored[i], green[i]) == count_green_fast(tokenizer.tokens(text), key)
        loose = count_green_batch(loose_ids, loose_owner, len(texts), key)
        assert loose[0].tolist() == scored.tolist() and loose[1].tolist() == green.tolist()


@pytest.mark.parametrize(
    ("data", "whole"),
    [
        (b'{"text": "a b"}\n{"other": 1}\n{"text": null}\n{"text": "c"}', True),
        (b'{"text": "a"}\r\n{"text": "\\u00e9\\n\\t \\"q\\""}\r\n', True),
        (b'{"text": "a"}\n{"text": 5}\n{"text": "b"}\n', False),  # a number
        (b'{"text": "a"}\n\n{"text": "b"}\n', False),  # a blank line would shift Arrow's rows
        (b'{"text": "a"}\n"bare"\n[1]\nnot json\n', False),
        (b'{"text": "a", "text": "b"}\n{"text": "c"}\n', False),  # a duplicated key
        (b'{"text": "\\ud800x"}\n{"text": "ok"}\n', False),  # a lone surrogate
        (b'{"text": "caf\xc3\xa9 \xff\xfe"}\n{"text": "ok"}\n', False),  # invalid UTF-8
        (b'{"text": {"nested": "x"}}\n{"text": true}\n', False),
    ],
)
def test_jsonl_chunks_read_by_arrow_equal_the_line_by_line_reading(data, whole):
    """Arrow's reader takes a JSONL chunk whole only where that gives exactly the documents,
    line numbers and skip reasons of reading it record by record; elsewhere it steps aside."""
    from distillwatch.provenance.scan import JsonlChunk

    chunk = JsonlChunk("c.jsonl", 7, data, "text")
    assert (chunk._parse_arrow() is not None) == whole
    (batch, skipped), (ref, ref_skipped) = chunk.parse(), chunk._parse_lines()
    assert [batch.document(i) for i in range(len(batch))] == [
        ref.document(i) for i in range(len(ref))
    ]
    assert batch.text_list() == ref.texts and skipped == ref_skipped
    assert len(batch) + len(skipped) >= 2


def test_jsonl_chunks_are_whole_lines_that_cover_the_file(tmp_path, monkeypatch):
    """The chunker only finds line ends and counts lines (each chunk is read again where it is
    parsed): on random files and buffer sizes, lines longer than the buffer, a last line with
    or without its end, the chunks are non-empty, whole lines, in order, cover the file
    exactly, and know their first line."""
    from distillwatch.provenance import scan as scan_module

    rng = random.Random(1)
    for trial in range(300):
        monkeypatch.setattr(scan_module, "BATCH_CHARS", rng.choice([5, 16, 64, 1000]))
        lines = ["x" * rng.choice([0, 1, 3, 10, 70, 200]) for _ in range(rng.randrange(0, 30))]
        data = ("\n".join(lines) + rng.choice(["", "\n"])).encode()
        path = tmp_path / f"{trial}.jsonl"
        path.write_bytes(data)
        chunks = list(scan_module._jsonl_chunks(path, "text", None))
        assert b"".join(c.read() for c in chunks) == data
        for c in chunks:
            assert c.read() and c.first_line == data[: c.start].count(b"\n") + 1
            assert c.read().endswith(b"\n") or c.start + c.length == len(data)


def test_a_real_corpus_chunk_takes_the_arrow_path(shared_data, tmp_path):
    from distillwatch.provenance.scan import read

    corpus = tmp_path / "answers.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "n": i}) + "\n"
                              for i, t in enumerate(_gpteacher_responses(shared_data, 2000))))  # fmt: skip
    (chunk,) = read(corpus)
    fast = chunk._parse_arrow()
    assert fast is not None
    reference = chunk._parse_lines()
    assert fast[0].text_list() == reference[0].texts and fast[0].lines == reference[0].lines


def test_the_exact_test_is_skipped_only_where_its_p_value_is_surely_above_the_bar():
    """The scan's shortcut (the tail's first term as a lower bound) never drops a document whose
    exact p-value is under the bar, and does spare the exact test near three deviations."""
    from distillwatch.provenance.scan import _tail_at_least
    from distillwatch.provenance.watermark import binomial_test

    rng = random.Random(11)
    spared = 0
    for _ in range(5000):
        scored = rng.randrange(50, 3000)
        green = rng.randrange(int(0.25 * scored), scored + 1)
        bar = 10 ** rng.uniform(-12, -2)
        if _tail_at_least(scored, green, 0.25, bar):
            spared += 1
            assert binomial_test(scored, green, 0.25)[0] >= bar, (scored, green, bar)
    assert spared > 200
    three_sigma = round(0.25 * 400 + 3 * math.sqrt(400 * 0.25 * 0.75))  # p about 1e-3
    assert _tail_at_least(400, three_sigma, 0.25, 1e-6)
    assert not _tail_at_least(400, 200, 0.25, 1e-6)  # half green: p far below 1e-6
