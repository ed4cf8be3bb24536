"""``distillwatch provenance keygen | detect``: watermark keys and the detection test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from distillwatch.commands._app import app, console, err_console
from distillwatch.errors import ProvenanceKeyError
from distillwatch.terminal import safe_text

provenance_app = typer.Typer(
    help="Provenance: watermark keys, and testing texts for our watermark.", no_args_is_help=True
)
app.add_typer(provenance_app, name="provenance")


@provenance_app.command("keygen")
def keygen(
    keyring: Path = typer.Option(..., "--keys", help="Keyring file (created if missing; the new key is added and becomes the active one)."),
    key_id: str = typer.Option(..., "--key-id", help="Public id of the new key (appears in reports and request headers)."),
    gamma: float = typer.Option(0.25, "--gamma", min=0.01, max=0.99, help="Share of the vocabulary on each green list."),
    delta: float = typer.Option(2.0, "--delta", min=0.0, max=20.0, help="Logit bias added to green tokens."),
    context: int = typer.Option(1, "--context", min=1, max=8, help="Previous tokens that select a green list."),
) -> None:  # fmt: skip
    """Add a watermark key to a keyring (key rotation: old keys stay, for detection)."""
    from distillwatch.provenance import Keyring, WatermarkKey

    try:
        ring = Keyring.read(keyring) if keyring.exists() else Keyring()
        if ring.get(key_id) is not None:
            raise ProvenanceKeyError(f"{keyring}: key {key_id!r} exists already")
        ring.keys.append(WatermarkKey.generate(key_id, gamma=gamma, delta=delta, context=context))
    except ProvenanceKeyError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    ring.write(keyring)
    console.print(f"{keyring}: {len(ring.keys)} key(s), active {key_id!r}", highlight=False)


def _report_skip(path: str, line: int, reason: str) -> None:
    err_console.print(f"{path}:{line}: {reason}, skipped", highlight=False)


TOKENIZER_HELP = (
    "The serving model's Hugging Face tokenizer.json, where the watermark was "
    "applied to its subword ids (default: distillwatch's word tokenizer)."
)


def _tokenizer(path: Path | None) -> Any:
    """The word tokenizer, or the tokenizer file given (a clean exit 2 if it is unusable)."""
    from distillwatch.errors import FileFormatError
    from distillwatch.provenance.tokens import TokenizerFile, WordTokenizer

    if path is None:
        return WordTokenizer()
    if not path.is_file():
        err_console.print(f"[red]{safe_text(str(path))}: no such file[/]")
        raise typer.Exit(2)
    try:
        return TokenizerFile(path)
    except FileFormatError as exc:
        err_console.print(f"[red]{safe_text(str(exc))}[/]")
        raise typer.Exit(2) from None


@provenance_app.command("detect")
def detect_command(
    files: list[Path] = typer.Argument(..., help="Plain-text files (one text each) or JSONL files (one record per line)."),
    keyring: Path = typer.Option(..., "--keys", help="Watermark keyring (provenance keygen)."),
    field: str = typer.Option("response", "--field", help="JSONL: the field holding the text to test."),
    prompt_field: str = typer.Option("prompt", "--prompt-field", help="JSONL: the field holding the prompt (its n-grams are not scored)."),
    tokenizer_file: Path | None = typer.Option(None, "--tokenizer", help=TOKENIZER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:  # fmt: skip
    """Test texts for our watermark: per text and pooled, the tokens scored, the green ones and
    the exact binomial p-value under each key (small = very unlikely this green by chance)."""
    from distillwatch.provenance import Keyring, detect_texts
    from distillwatch.provenance.scan import documents

    try:
        ring = Keyring.read(keyring)
    except ProvenanceKeyError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    texts = []
    for path in files:
        if not path.is_file():
            err_console.print(f"[red]{path}: no such file[/]")
            raise typer.Exit(2)
        for doc in documents(path, field, prompt_field, _report_skip):
            name = Path(doc.path).name + (
                f":{doc.line}" if path.suffix in (".jsonl", ".ndjson") else ""
            )
            texts.append((name, doc.text, doc.prompt))
    results, pooled = detect_texts(texts, ring, _tokenizer(tokenizer_file))
    rows = [*results, pooled] if len(results) > 1 else results
    if as_json:
        print(json.dumps({"keys": [k.key_id for k in ring.keys], "texts": [
            {"name": r.name, "corrected_p_value": r.corrected_p, "per_key": [
                {"key_id": d.key_id, "tokens_scored": d.tokens_scored, "green": d.green,
                 "gamma": d.gamma, "z": round(d.z, 3), "p_value": d.p_value} for d in r.per_key]}
            for r in rows]}, indent=1))  # fmt: skip
        return
    table = Table(title=f"Watermark test ({len(ring.keys)} key(s); p corrected for the keys tried)")
    for column in ("text", "best key", "tokens scored", "green", "p-value", "corrected p"):
        table.add_column(column)
    for r in rows:
        best = r.best
        table.add_row(safe_text(r.name), safe_text(best.key_id), f"{best.tokens_scored:,}",
                      f"{best.green:,} ({best.green_share:.0%}, chance {best.gamma:.0%})",
                      f"{best.p_value:.3g}", f"{r.corrected_p:.3g}")  # fmt: skip
    console.print(table)
    console.print("A small p-value says the text is far greener than chance under that key; it "
                  "does not say who sent it, and text shorter than ~50 tokens rarely decides.",
                  highlight=False)  # fmt: skip


@provenance_app.command("scan")
def scan_command(
    paths: list[Path] = typer.Argument(..., help="Files, folders, JSONL/Parquet corpora or git repositories (every commit)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write one JSON line per finding here (a quarantine list)."),
    keyring: Path | None = typer.Option(None, "--keys", help="Also look for our own watermark (provenance keygen)."),
    reference: list[Path] = typer.Option([], "--reference", help="A sample of a vendor's outputs (JSONL --field, or text files): report near-duplicates of it."),
    field: str = typer.Option("text", "--field", help="JSONL / Parquet: the text field."),
    alpha: float = typer.Option(1e-6, "--alpha", help="Watermark findings need a corrected p-value below this."),
    vendor_sample: list[Path] = typer.Option([], "--vendor-sample", help="Texts known to be the vendor's outputs (JSONL --sample-field, or text files): train a style classifier (with --other-sample)."),
    other_sample: list[Path] = typer.Option([], "--other-sample", help="Texts known not to be (your own, human-written)."),
    sample_field: str | None = typer.Option(None, "--sample-field", help="JSONL: the samples' text field (default: --field)."),
    target_precision: float = typer.Option(0.95, "--target-precision", min=0.5, max=0.999, help="The classifier flags at the lowest score whose held-out precision reaches this..."),
    max_fpr: float = typer.Option(0.02, "--max-fpr", min=0.0, max=0.5, help="...and that flags at most this share of the held-out other texts."),
    workers: int = typer.Option(0, "--workers", min=0, max=64, help="Worker processes for corpora of more than one batch (0: one per CPU core, at most 8; 1: none)."),
    tokenizer_file: Path | None = typer.Option(None, "--tokenizer", help=TOKENIZER_HELP),
) -> None:  # fmt: skip
    """Scan a corpus for other models' outputs before training on it: assistant markers (commit
    trailers, 'Generated with' footers, bot e-mails, chat boilerplate), our own watermark,
    near-duplicates of a vendor's reference sample and, given a labelled sample, a style
    classifier measured on held-out data (never proof). Streams in bounded memory."""
    import os
    import time

    from distillwatch.provenance import Keyring
    from distillwatch.provenance.scan import documents, scan

    for path in paths:
        if not path.exists():
            err_console.print(f"[red]{path}: no such file or folder[/]")
            raise typer.Exit(2)
    ring = None
    if keyring is not None:
        try:
            ring = Keyring.read(keyring)
        except ProvenanceKeyError as exc:
            err_console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from None
    references = [
        doc.text for ref in reference for doc in documents(ref, field, on_skip=_report_skip)
    ]
    classifier = None
    if vendor_sample or other_sample:
        from distillwatch.provenance.classifier import VendorClassifier

        if not (vendor_sample and other_sample):
            err_console.print("[red]give both --vendor-sample and --other-sample[/]")
            raise typer.Exit(2)
        labelled = [(doc.text, label) for label, samples in ((1, vendor_sample), (0, other_sample))
                    for path in samples for doc in documents(path, sample_field or field, on_skip=_report_skip)]  # fmt: skip
        try:
            classifier = VendorClassifier(target_precision=target_precision, max_fpr=max_fpr).fit(
                [t for t, _ in labelled], [y for _, y in labelled]
            )
        except ValueError as exc:
            err_console.print(f"[red]vendor classifier: {exc}[/]")
            raise typer.Exit(2) from None
        err_console.print(safe_text(f"vendor classifier: {classifier.describe()}"))
    tokenizer = _tokenizer(tokenizer_file) if tokenizer_file is not None else None
    started = time.perf_counter()
    counts: dict[str, int] = {}
    handle = out.open("w") if out else None
    try:
        for finding in scan(paths, ring, references, field, alpha, on_skip=_report_skip,
                            classifier=classifier, workers=workers or min(8, os.cpu_count() or 1),
                            tokenizer=tokenizer):  # fmt: skip
            counts[finding.kind] = counts.get(finding.kind, 0) + 1
            line = json.dumps(finding.as_dict())
            if handle is not None:
                handle.write(line + "\n")
            elif sum(counts.values()) <= 200:
                console.print(safe_text(line))
    finally:
        if handle is not None:
            handle.close()
    seconds = time.perf_counter() - started
    summary = ", ".join(f"{n:,} {kind}" for kind, n in sorted(counts.items())) or "no findings"
    console.print(f"{summary} in {seconds:.1f} s" + (f"; written to {out}" if out else ""),
                  highlight=False)  # fmt: skip


@provenance_app.command("radioactivity")
def radioactivity_command(
    keyring: Path = typer.Option(..., "--keys", help="Watermark keyring (provenance keygen)."),
    key_id: str | None = typer.Option(None, "--key-id", help="The key to test for (default: every key, corrected)."),
    suspect: str | None = typer.Option(None, "--suspect", help="Closed mode: the suspect's OpenAI-compatible base URL."),
    model: str = typer.Option("default", "--model", help="Closed mode: the model name to ask for."),
    prompts: Path | None = typer.Option(None, "--prompts", help="Closed mode: prompts (text, one per line, or JSONL with --field)."),
    max_tokens: int = typer.Option(200, "--max-tokens", min=1, max=4096, help="Closed mode: tokens per answer."),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="Closed mode: environment variable holding the suspect's API key."),
    served: Path | None = typer.Option(None, "--served", help="Closed mode: our watermarked texts the suspect may have learned from (say, the responses a detected cluster received); only tokens after a history found in them are scored."),
    campaign: str | None = typer.Option(None, "--campaign", help="Closed mode: a campaign of the latest detection run in --store; its exchanges' responses are the served texts, and (without --prompts) its prompts the probes."),
    store: Path | None = typer.Option(None, "--store", "-s", help="With --campaign: the DuckDB store detect ran on."),
    probes: int = typer.Option(1000, "--probes", min=1, max=100_000, help="With --campaign and no --prompts: how many of its prompts to send (spread over its history)."),
    served_history: int = typer.Option(2, "--served-history", min=1, max=8, help="Closed mode with --served: tokens of history that must occur in the served texts."),
    suspect_model: Path | None = typer.Option(None, "--suspect-model", help="Open mode: the suspect's weights: a distillwatch n-gram model file, or a transformers model folder (the hf extra; our texts are read with --tokenizer, else the folder's tokenizer.json)."),
    texts: Path | None = typer.Option(None, "--texts", help="Open mode: our watermarked texts whose contexts the suspect is run on."),
    field: str = typer.Option("text", "--field", help="JSONL: the field holding each prompt or text."),
    tokenizer_file: Path | None = typer.Option(None, "--tokenizer", help=TOKENIZER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a summary."),
) -> None:  # fmt: skip
    """Did a suspect model train on our watermarked outputs? Closed mode samples the suspect
    through its API (sharper with --served: what the harvesting cluster received from us);
    open mode runs its weights on our texts. Prints the exact p-value, the tokens scored and
    what the result can and cannot show."""
    import os

    from distillwatch.provenance import Keyring
    from distillwatch.provenance.radioactivity import (
        EXPLANATION,
        NgramLM,
        ServedFilter,
        closed_test,
        open_test,
        sample_endpoint,
    )
    from distillwatch.provenance.scan import documents

    def stop(message: str) -> typer.Exit:
        err_console.print(f"[red]{safe_text(message)}[/]")
        return typer.Exit(2)

    if (suspect is None) == (suspect_model is None):
        raise stop("give --suspect URL (closed mode) or --suspect-model FILE (open mode)")
    try:
        ring = Keyring.read(keyring)
    except ProvenanceKeyError as exc:
        raise stop(str(exc)) from None
    keys = [k for k in ring.keys if key_id in (None, k.key_id)]
    if not keys:
        raise stop(f"{keyring}: no key {key_id!r}")
    harvest: list[tuple[str, str]] = []
    if campaign is not None:
        if suspect is None or served is not None or store is None or not store.is_file():
            raise stop("--campaign: closed mode only, with --store (the store detect ran on) "
                       "and without --served")  # fmt: skip
        from distillwatch.errors import StoreError
        from distillwatch.store import Store
        from distillwatch.workspace.queries import Workspace

        try:
            with Store(store, read_only=True) as db:
                harvest = Workspace(db).campaign_exchanges(campaign)
        except StoreError as exc:
            raise stop(str(exc)[:300]) from None
        if not harvest:
            raise stop(f"{store}: no campaign {campaign!r} with served responses in the latest "
                       "detection run")  # fmt: skip
    source = prompts if suspect is not None else texts
    if (source is None and not harvest) or (source is not None and not source.is_file()):
        raise stop(f"{'--prompts' if suspect else '--texts'}: no such file")
    if served is not None and (suspect is None or not served.is_file()):
        raise stop("--served: closed mode only, and a file" if suspect is None
                   else "--served: no such file")  # fmt: skip

    def read_items(path: Path) -> list[str]:
        items = [d.text for d in documents(path, field, on_skip=_report_skip)]
        if path.suffix not in (".jsonl", ".ndjson") and len(items) == 1:
            items = [line for line in items[0].splitlines() if line.strip()]
        if not items:
            raise stop(f"{path}: nothing to use")
        return items

    if source is not None:
        items = read_items(source)
    else:  # the campaign's own prompts, spread evenly over its history
        asked = [p for p, _ in harvest if p.strip()]
        step = max(1, len(asked) // probes)
        items = asked[::step][:probes]
        if not items:
            raise stop(f"campaign {campaign!r}: no prompts to probe with; give --prompts")
    hf_model = suspect_model is not None and suspect_model.is_dir()
    if hf_model and tokenizer_file is None:
        tokenizer_file = suspect_model / "tokenizer.json"  # type: ignore[operator]
        if not tokenizer_file.is_file():
            raise stop(f"{suspect_model}: no tokenizer.json; give --tokenizer (the one our "
                       "watermarked texts were generated with)")  # fmt: skip
    if tokenizer_file is not None and suspect_model is not None and not hf_model:
        raise stop("--tokenizer: an n-gram suspect reads distillwatch's word tokenizer's ids")
    tokenizer = _tokenizer(tokenizer_file)
    scope = None
    if served is not None or harvest:
        if served_history < max(k.context for k in keys):
            raise stop(f"--served-history: at least the key's context "
                       f"({max(k.context for k in keys)})")  # fmt: skip
        texts_served = read_items(served) if served is not None else [r for _, r in harvest]
        scope = ServedFilter.of((tokenizer.tokens(t) for t in texts_served), served_history)
    if suspect is not None:
        import httpx

        api_key = os.environ.get(api_key_env) if api_key_env else None
        try:
            answers = sample_endpoint(suspect, model, items, max_tokens, api_key)
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise stop(f"{suspect}: {type(exc).__name__}: {exc}"[:300]) from None
        samples = [(tokenizer.tokens(p), tokenizer.tokens(a)) for p, a in answers]
        results = [closed_test(samples, k, served=scope) for k in keys]
        detail = f"{len(samples)} answers sampled from {suspect} ({model})"
        if scope is not None:
            origin = served if served is not None else (
                f"the {len(harvest):,} responses campaign {campaign} was served")  # fmt: skip
            detail += (f"; scored only after the {len(scope):,} {served_history}-token histories "
                       f"of {origin}")  # fmt: skip
    elif hf_model:
        try:
            from transformers import AutoModelForCausalLM

            from distillwatch.provenance.hf import open_test_hf
        except ImportError:
            raise stop(
                "a transformers suspect needs the hf extra: pip install 'distillwatch[hf]'"
            ) from None
        try:
            lm = AutoModelForCausalLM.from_pretrained(suspect_model, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise stop(f"{suspect_model}: {exc}"[:300]) from None
        ids = [tokenizer.tokens(t) for t in items]
        results = [open_test_hf(lm, ids, k) for k in keys]
        detail = f"{suspect_model} (transformers) run on {len(ids)} of our texts"
    else:
        try:
            lm = NgramLM.load(suspect_model)  # type: ignore[arg-type]
        except (OSError, ValueError, KeyError) as exc:
            raise stop(f"{suspect_model}: {exc}") from None
        ids = [tokenizer.tokens(t) for t in items]
        results = [open_test(lm, ids, k) for k in keys]
        detail = f"{suspect_model} run on {len(ids)} of our texts"
    best = min(results, key=lambda r: r.p_value)
    corrected = min(1.0, best.p_value * len(results))
    if as_json:
        print(json.dumps({"mode": best.mode, "detail": detail, "corrected_p_value": corrected,
                          "per_key": [r.as_dict() for r in results],
                          "explanation": EXPLANATION}, indent=1))  # fmt: skip
        return
    console.print(
        f"{best.mode} mode: {safe_text(detail)}\n"
        f"key {safe_text(best.key_id)}: {best.tokens_scored:,} tokens scored, {best.green:,} green "
        f"({best.green_share:.1%}; {best.gamma:.0%} expected by chance)\n"
        f"p-value {best.p_value:.3g}" + (f" (corrected for {len(results)} keys: {corrected:.3g})"
                                         if len(results) > 1 else "")
        + f"\n\n{EXPLANATION}",
        highlight=False,
    )  # fmt: skip


@provenance_app.command("experiment")
def experiment_command(
    profile: str = typer.Option("smoke", "--profile", help="smoke (under 2 minutes) or full (under 40 minutes on 2 cores)."),
    out: Path = typer.Option(Path("radioactivity-out"), "--out", "-o", help="Folder for results.json and the plots."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Plays to train on (default ../shared/data/shakespeare_gutenberg)."),
) -> None:  # fmt: skip
    """The radioactivity experiment on CPU: a tiny teacher trained from scratch watermarks its
    answers, students fine-tuned on a share rho of them are tested in open and closed mode."""
    from distillwatch.paths import shared_data_dir
    from distillwatch.provenance.experiment import PROFILES, run

    if profile not in PROFILES:
        err_console.print(f"[red]--profile: one of {', '.join(PROFILES)}[/]")
        raise typer.Exit(2)
    if corpus is None:
        data = shared_data_dir()
        corpus = data / "shakespeare_gutenberg" if data else None
    if corpus is None or not corpus.is_dir():
        err_console.print("[red]--corpus: the Shakespeare plays folder was not found[/]")
        raise typer.Exit(2)
    doc = run(corpus, PROFILES[profile], out, log=lambda m: console.print(m, highlight=False))
    table = Table(title=f"Radioactivity, profile {profile} ({doc['seconds']:.0f} s)")
    for column in ("rho", "test", "seeds", "median p-value", "median tokens scored"):
        table.add_column(column)
    groups: dict[tuple[float, str], list[dict]] = {}
    for r in doc["runs"]:
        if "-control-" not in r["key"]:
            groups.setdefault((r["rho"], r["test"]), []).append(r)
    for (rho, test), rows in sorted(groups.items()):
        ps = sorted(r["p_value"] for r in rows)
        ts = sorted(r["tokens_scored"] for r in rows)
        table.add_row(f"{rho:g}", test, str(len(rows)), f"{ps[len(ps) // 2]:.3g}",
                      f"{ts[len(ts) // 2]:,}")  # fmt: skip
    console.print(table)
    controls = [r["p_value"] for r in doc["runs"] if r["mode"] == "control"]
    console.print(f"controls (students that never saw the key): {len(controls)} p-values, "
                  f"smallest {min(controls):.3g}; results and plots in {safe_text(str(out))}",
                  highlight=False)  # fmt: skip


@provenance_app.command("shaping-experiment")
def shaping_experiment_command(
    profile: str = typer.Option("smoke", "--profile", help="smoke (about a minute) or full (about 30 minutes on 2 busy cores)."),
    out: Path = typer.Option(Path("shaping-out"), "--out", "-o", help="Folder for results.json and shaping.png."),
) -> None:  # fmt: skip
    """What response shaping buys: students distilled from a scratchpad teacher's full, stripped
    and capped answers, and what an honest user keeps under each policy."""
    from distillwatch.provenance.shaping import POLICIES, PROFILES, run

    if profile not in PROFILES:
        err_console.print(f"[red]--profile: one of {', '.join(PROFILES)}[/]")
        raise typer.Exit(2)
    doc = run(PROFILES[profile], out, log=lambda m: console.print(m, highlight=False))

    def mean(rows: list[dict], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    for name in ("scratchpad", "direct"):
        rows = [t for t in doc["teachers"] if t["teacher"] == name]
        console.print(f"teacher trained to answer {'with a scratchpad' if name == 'scratchpad' else 'directly'}: "
                      f"accuracy {mean(rows, 'accuracy'):.3f}", highlight=False)  # fmt: skip
    table = Table(
        title=f"Response shaping, profile {profile} ({doc['seconds']:.0f} s, cap {doc['cap_tokens']} tokens)"
    )
    sizes = doc["profile"]["harvest_sizes"]
    for column in [
        "policy",
        *(f"student, harvest {n:,}" for n in sizes),
        "honest user: right answer",
        "tokens served",
    ]:
        table.add_column(column)
    for policy in POLICIES:
        users = [u for u in doc["users"] if u["policy"] == policy]
        cells = [f"{mean([s for s in doc['students'] if s['policy'] == policy and s['harvest'] == n], 'accuracy'):.3f}" for n in sizes]  # fmt: skip
        table.add_row(policy, *cells, f"{mean(users, 'answer_accuracy'):.3f}",
                      f"{mean(users, 'tokens_served'):.1f} of {mean(users, 'tokens_full'):.1f}")  # fmt: skip
    console.print(table)
    console.print(f"results and plot in {safe_text(str(out))}", highlight=False)


@provenance_app.command("canary-test")
def canary_test_command(
    keyring: Path = typer.Option(..., "--keys", help="The keyring the gateway's --canary-keys used."),
    suspect: str = typer.Option(..., "--suspect", help="The suspect's OpenAI-compatible base URL."),
    clusters: str = typer.Option(..., "--clusters", help="Comma-separated cluster ids whose harvest got canaries."),
    model: str = typer.Option("default", "--model", help="The model name to ask for."),
    control: list[str] | None = typer.Option(None, "--control", help="URL of a model known never to have seen the canaries (repeatable): measures the false-match rate."),
    trials: int = typer.Option(20, "--trials", min=1, max=1000, help="Completions asked per canary."),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="Environment variable holding the suspect's API key."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:  # fmt: skip
    """Which cluster's harvest did a suspect learn from? Asks it to complete each cluster's
    canary and tests the hits against the false-match rate of clean control models."""
    import os

    import httpx

    from distillwatch.provenance import Keyring
    from distillwatch.provenance.canary import attribution_p, canary_for, probe
    from distillwatch.provenance.radioactivity import sample_endpoint

    try:
        key = Keyring.read(keyring).active
    except ProvenanceKeyError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    ids = [c.strip() for c in clusters.split(",") if c.strip()][:1000]
    canaries = [canary_for(key, c) for c in ids]
    api_key = os.environ.get(api_key_env) if api_key_env else None

    def asker(url: str):  # type: ignore[no-untyped-def]
        def ask(prompt: str) -> str:
            return sample_endpoint(url, model, [prompt], max_tokens=8, api_key=api_key)[0][1]

        return ask

    try:
        found = probe(asker(suspect), canaries, trials)
        controls = [probe(asker(url), canaries, trials) for url in control or []]
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
        err_console.print(f"[red]{safe_text(f'{type(exc).__name__}: {exc}'[:300])}[/]")
        raise typer.Exit(2) from None
    control_trials = sum(r.trials for c in controls for r in c)
    control_hits = sum(r.hits for c in controls for r in c)
    for result in found:
        if control_trials:
            result.p_value = attribution_p(result.hits, result.trials, control_hits, control_trials)
    if as_json:
        print(json.dumps({"key_id": key.key_id, "control_trials": control_trials,
                          "control_hits": control_hits, "clusters": [
                              {"cluster_id": r.cluster_id, "trials": r.trials, "hits": r.hits,
                               "p_value": r.p_value} for r in found]}, indent=1))  # fmt: skip
        return
    table = Table(title=f"Canary test of {safe_text(suspect)} (key {safe_text(key.key_id)})")
    for column in ("cluster", "hits", "p-value (vs controls)"):
        table.add_column(column)
    for r in found:
        table.add_row(safe_text(r.cluster_id), f"{r.hits} of {r.trials}",
                      "n/a (no --control)" if r.p_value is None else f"{r.p_value:.3g}")  # fmt: skip
    console.print(table)
    console.print(
        f"False-match rate: {control_hits} hits in {control_trials} trials on control models"
        + ("" if control_trials else " (give --control URL for a p-value)")
        + ". A hit means the suspect completes a made-up fact only that cluster's answers "
        "stated; it shows the suspect learned from that harvest, not who trained it.",
        highlight=False,
    )  # fmt: skip
