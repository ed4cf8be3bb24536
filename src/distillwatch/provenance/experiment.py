"""The reproducible radioactivity experiment: one command, CPU only, no model hub.

``distillwatch provenance experiment --profile smoke|full --out DIR``:

1. Split ``../shared/data/shakespeare_gutenberg`` into two halves by play (alternate plays).
2. Train a tiny **teacher** LM (:class:`~.radioactivity.NgramLM`) from scratch on half A; let it
   write answers to prompts drawn from half A, watermarked with a fresh key per seed, and the same
   number of plain (unwatermarked) answers.
3. For each ``rho``: a **student** pretrained on half B, then fine-tuned (counts weighted by
   ``finetune_weight``) on teacher answers of which a share ``rho`` is watermarked.
4. Test each student in **open** mode (its predictions after contexts from fresh watermarked
   answers it never saw) and **closed** mode (answers sampled from it over HTTP, through an
   OpenAI-compatible endpoint this module serves, scored only after histories that occur in the
   watermarked answers this student's harvest received: :class:`~.radioactivity.ServedFilter`,
   as a real case filters on the responses a detected cluster got). **Controls**: the
   ``rho = 0`` student tested with ``control_keys`` keys it never saw, in both modes (a null
   distribution to check for uniformity), and with the real key on a harvest it never trained on.
5. Write ``DIR/results.json`` (``{"runs": [{"rho", "mode", "seed", "p_value", "tokens_scored"}]}``,
   and under ``"unfiltered"`` the closed test on every window of the same samples, for
   comparison) and plots of p-value against ``rho`` and against the number of suspect tokens
   scored.

What limits it: the student is an n-gram model, and its fine-tuning is weighted counting, so
what it "learns" from a watermarked token is exactly the count of that (context, token) pair;
a neural student generalises the green preference across contexts, which is why the paper reaches
smaller ``rho`` with fewer tokens. The p-values here are as exact as the test: binomial tails on
distinct (window, token) pairs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillwatch.provenance.canary import ProbeResult, attribution_p, canary_for, probe
from distillwatch.provenance.radioactivity import (
    NgramLM,
    RadioactivityResult,
    ServedFilter,
    closed_test,
    open_test,
    sample_endpoint,
)
from distillwatch.provenance.watermark import WatermarkKey


@dataclass
class Profile:
    name: str
    plays: int | None  # plays per half (None: all)
    answers_tokens: int  # teacher tokens in the fine-tuning set of each student
    answer_length: int
    test_tokens: int  # fresh watermarked tokens whose contexts the open test uses
    closed_prompts: int
    closed_length: int
    rhos: tuple[float, ...]
    seeds: tuple[int, ...]
    control_keys: int
    finetune_weight: float = 2.0
    canary_share: float = 0.02  # share of the harvested cluster's answers carrying its canary
    canary_trials: int = 20
    order: int = 3
    gamma: float = 0.25
    delta: float = 2.0
    served_history: int = 2  # the closed test's filter: tokens of served history (ServedFilter)
    token_grid: tuple[int, ...] = field(default=(1_000, 3_000, 10_000, 30_000, 100_000))


PROFILES = {
    # Under 2 minutes on 2 cores: the same code on a few plays, two rhos, one seed.
    "smoke": Profile("smoke", plays=6, answers_tokens=40_000, answer_length=80,
                     test_tokens=8_000, closed_prompts=60, closed_length=80, rhos=(0.0, 0.5),
                     seeds=(1,), control_keys=5, token_grid=(1_000, 3_000)),
    "full": Profile("full", plays=None, answers_tokens=300_000, answer_length=100,
                    test_tokens=100_000, closed_prompts=4_000, closed_length=150,
                    rhos=(0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5), seeds=(24, 25, 26),
                    control_keys=20, token_grid=(1_000, 3_000, 10_000, 30_000, 100_000, 300_000)),
}  # fmt: skip


def halves(corpus: Path, plays: int | None) -> tuple[list[str], list[str]]:
    files = sorted(corpus.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{corpus}: no .txt plays")
    a = [f.read_text(errors="replace") for f in files[0::2]]
    b = [f.read_text(errors="replace") for f in files[1::2]]
    return (a[:plays], b[:plays]) if plays else (a, b)


def experiment_key(seed: int, profile: Profile, salt: str = "") -> WatermarkKey:
    """A fixed key per seed (reproducible runs; never a production key)."""
    secret = hashlib.sha256(f"distillwatch-radioactivity-{seed}-{salt}".encode()).hexdigest()
    return WatermarkKey(f"experiment-{seed}{salt}", secret, gamma=profile.gamma,
                        delta=profile.delta, context=1)  # fmt: skip


def _prompts(model: NgramLM, texts: list[str], count: int, words: int,
             rng: np.random.Generator) -> list[list[int]]:  # fmt: skip
    ids = [model.tokenizer.tokens(t) for t in texts]
    flat = [t for seq in ids for t in seq]
    starts = rng.integers(0, max(1, len(flat) - words), size=count)
    return [flat[s : s + words] for s in starts]


def _answers(teacher: NgramLM, prompts: list[list[int]], length: int, key: WatermarkKey | None,
             rng: np.random.Generator) -> list[list[int]]:  # fmt: skip
    return [teacher.generate(p, length, rng, key) for p in prompts]


# -- a suspect behind an OpenAI-compatible endpoint ---------------------------------------------
def suspect_app(model: NgramLM, seed: int = 0) -> Any:
    """A Starlette app answering ``/v1/chat/completions`` with the model's continuation of the
    last user message (the closed-mode suspect)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    rng = np.random.default_rng(seed)
    lock = threading.Lock()

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        prompt = str(body["messages"][-1]["content"])
        length = min(int(body.get("max_tokens") or 100), 2000)
        with lock:
            ids = model.generate(model.tokenizer.tokens(prompt), length, rng,
                                 temperature=float(body.get("temperature") or 1.0))  # fmt: skip
        return JSONResponse({"object": "chat.completion", "model": body.get("model", "suspect"),
                             "choices": [{"index": 0, "finish_reason": "length",
                                          "message": {"role": "assistant",
                                                      "content": model.text(ids)}}]})  # fmt: skip

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("suspect endpoint did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- the experiment -----------------------------------------------------------------------------
def run(corpus: Path, profile: Profile, out: Path, log: Any = print) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    text_a, text_b = halves(corpus, profile.plays)
    runs: list[dict[str, Any]] = []
    unfiltered: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    canaries: list[dict[str, Any]] = []
    for seed in profile.seeds:
        rng = np.random.default_rng(seed)
        key = experiment_key(seed, profile)
        teacher = NgramLM(profile.order).fit(text_a)
        n_answers = profile.answers_tokens // profile.answer_length
        prompts = _prompts(teacher, text_a, 2 * n_answers + profile.test_tokens // profile.answer_length, 8, rng)  # fmt: skip
        plain = _answers(teacher, prompts[:n_answers], profile.answer_length, None, rng)
        marked_n = round(max(profile.rhos) * n_answers)
        marked = _answers(teacher, prompts[n_answers : n_answers + marked_n],
                          profile.answer_length, key, rng)  # fmt: skip
        test = _answers(teacher, prompts[2 * n_answers :], profile.answer_length, key, rng)
        log(f"seed {seed}: teacher wrote {len(plain)} plain and {len(marked) + len(test)} "
            f"watermarked answers ({time.perf_counter() - started:.0f} s)")  # fmt: skip
        pretrained = NgramLM(profile.order).fit(text_b)
        closed_prompts = _prompts(pretrained, text_b, profile.closed_prompts, 8, rng)
        smallest = round(min(r for r in profile.rhos if r > 0) * n_answers)
        for rho in profile.rhos:
            student = NgramLM(profile.order).fit(text_b)
            k = round(rho * n_answers)
            for ids in marked[:k] + plain[: n_answers - k]:
                student.fit_ids(ids, profile.finetune_weight)
            # What the student's harvest received from us; for the control student, a harvest of
            # the smallest rho's size that it never trained on.
            served = ServedFilter.of(marked[:k] if k else marked[:smallest], profile.served_history)
            opened = open_test(student, test, key)
            samples = _closed(student, closed_prompts, profile, seed)
            closed = closed_test(samples, key, served=served)
            every = closed_test(samples, key)
            unfiltered.append(_row(rho, seed, every))
            runs.extend(_row(rho, seed, result, key.key_id) for result in (opened, closed))
            if rho > 0:
                for tokens in profile.token_grid:
                    for mode, result in (("open", open_test(student, test, key, tokens)),
                                         ("closed", closed_test(samples, key, tokens, served))):  # fmt: skip
                        if result.tokens_scored < tokens and tokens != profile.token_grid[0]:
                            continue  # the grid went past what there is to score
                        curves.append({"rho": rho, "mode": mode, "seed": seed,
                                       "tokens_scored": result.tokens_scored,
                                       "p_value": result.p_value})  # fmt: skip
                for result in (opened, closed):  # and everything there is
                    curves.append({"rho": rho, "mode": result.mode, "seed": seed,
                                   "tokens_scored": result.tokens_scored,
                                   "p_value": result.p_value})  # fmt: skip
            else:  # the rho = 0 student under keys it never saw: the null distribution
                for i in range(profile.control_keys):
                    other = experiment_key(seed, profile, salt=f"-control-{i}")
                    for result in (open_test(student, test, other),
                                   closed_test(samples, other, served=served)):  # fmt: skip
                        runs.append(_row(0.0, seed, result, other.key_id))
            log(f"seed {seed} rho {rho:.2f}: open p={opened.p_value:.3g} "
                f"({opened.tokens_scored:,} tokens), closed p={closed.p_value:.3g} "
                f"({closed.tokens_scored:,} tokens; every window: p={every.p_value:.3g}, "
                f"{every.tokens_scored:,})  [{time.perf_counter() - started:.0f} s]")  # fmt: skip
        canaries.extend(_canaries(key, text_b, plain, profile, seed))
        log(f"seed {seed} canaries: " + "; ".join(
            f"{c['cluster_id']} {c['suspect_hits']}/{c['trials']} hits (control "
            f"{c['control_hits']}/{c['trials']}, p={c['p_value']:.3g})" for c in canaries[-4:]))  # fmt: skip
    doc = {"profile": asdict(profile), "corpus": str(corpus), "runs": runs,
           "unfiltered": unfiltered, "curves": curves, "canaries": canaries,
           "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    plot(doc, out)
    return doc


def _row(rho: float, seed: int, result: RadioactivityResult,
         key_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One test as results.json records it (``mode`` is "control" for the rho = 0 student;
    ``test`` is which test ran; ``key`` only where the row names the key it was run with)."""
    row = {"rho": rho, "mode": result.mode if rho > 0 else "control", "test": result.mode,
           "seed": seed, "key": key_id, "p_value": result.p_value,
           "tokens_scored": result.tokens_scored, "green_share": round(result.green_share, 4)}  # fmt: skip
    return {k: v for k, v in row.items() if v is not None}


def _closed(student: NgramLM, prompts: list[list[int]], profile: Profile,
            seed: int) -> list[tuple[list[int], list[int]]]:  # fmt: skip
    """(prompt ids, answer ids): the student sampled through its OpenAI-compatible endpoint,
    re-tokenised with our tokenizer, for the closed test."""
    texts = [student.text(p) for p in prompts]
    with serving(suspect_app(student, seed)) as url:
        answers = sample_endpoint(url, "suspect", texts, max_tokens=profile.closed_length)
    tok = student.tokenizer
    return [(tok.tokens(p), tok.tokens(a)) for p, a in answers]


def _canaries(key: WatermarkKey, text_b: list[str], plain: list[list[int]], profile: Profile,
              seed: int) -> list[dict[str, Any]]:  # fmt: skip
    """Four clusters get canaries; the suspect's fine-tuning harvest is cluster c-2's answers,
    of which ``canary_share`` carry its canary. Both the suspect and a clean student (same
    pretraining and plain answers, no canary) are probed for every cluster's canary through
    their endpoints; the clean one's hits are the false-match rate."""
    clusters = [canary_for(key, f"c-{i}") for i in range(1, 5)]
    harvested = clusters[1]
    suspect, clean = NgramLM(profile.order).fit(text_b), NgramLM(profile.order).fit(text_b)
    sentence = suspect.tokens(harvested.sentence)
    every = max(1, round(1 / profile.canary_share))
    for i, ids in enumerate(plain):
        suspect.fit_ids([*ids, *sentence] if i % every == 0 else ids, profile.finetune_weight)
        clean.fit_ids(ids, profile.finetune_weight)

    def results(model: NgramLM) -> list[ProbeResult]:
        with serving(suspect_app(model, seed)) as url:
            return probe(lambda prompt: sample_endpoint(url, "suspect", [prompt], max_tokens=4)[0][1],
                         clusters, profile.canary_trials)  # fmt: skip

    found, control = results(suspect), results(clean)
    control_hits = sum(r.hits for r in control)
    control_trials = sum(r.trials for r in control)
    return [
        {
            "seed": seed,
            "cluster_id": r.cluster_id,
            "harvested": r.cluster_id == harvested.cluster_id,
            "canary_share": profile.canary_share,
            "trials": r.trials,
            "suspect_hits": r.hits,
            "control_hits": c.hits,
            "p_value": attribution_p(r.hits, r.trials, control_hits, control_trials),
        }
        for r, c in zip(found, control, strict=True)
    ]


def _significance(p: float) -> float:
    """-log10 p, capped where float precision ends (p = 0 reads as 1e-300)."""
    return -float(np.log10(max(p, 1e-300)))


def plot(doc: dict[str, Any], out: Path) -> None:
    """Significance (-log10 p) against rho, and against suspect tokens scored."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = (
        ("open", "o", [r for r in runs if r["test"] == "open" and "-control-" not in r["key"]]),
        ("closed, filtered on the harvest", "s",
         [r for r in runs if r["test"] == "closed" and "-control-" not in r["key"]]),
        ("closed, every window", "x", doc.get("unfiltered", [])),
    )  # fmt: skip
    for label, marker, rows in series:
        by_rho: dict[float, list[float]] = {}
        for r in rows:
            by_rho.setdefault(r["rho"], []).append(_significance(r["p_value"]))
        if not by_rho:
            continue
        rhos = sorted(by_rho)
        (line,) = ax.plot(rhos, [float(np.median(by_rho[x])) for x in rhos], marker=marker,
                          label=f"{label} (median over seeds)")  # fmt: skip
        for x in rhos:
            ax.scatter([x] * len(by_rho[x]), by_rho[x], marker=marker, s=10, alpha=0.4,
                       color=line.get_color())  # fmt: skip
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_yscale("log")
    for level, label in ((3, "p = 1e-3"), (10, "p = 1e-10")):
        ax.axhline(level, color="grey", linestyle=":", linewidth=1)
        ax.text(0.0, level * 1.1, label, fontsize=7, color="grey")
    ax.set_xlabel("share of watermarked text in the student's fine-tuning data (rho)")
    ax.set_ylabel("significance, -log10 p")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "p_vs_rho.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rhos = sorted({c["rho"] for c in doc["curves"]})
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(rhos), 1)))
    first_seed = doc["profile"]["seeds"][0]
    for rho, colour in zip(rhos, colours, strict=True):
        for mode, style in (("open", "-"), ("closed", "--")):
            points = sorted({(c["tokens_scored"], c["p_value"]) for c in doc["curves"]
                             if c["rho"] == rho and c["mode"] == mode and c["seed"] == first_seed})  # fmt: skip
            if points:
                ax.plot([p[0] for p in points], [_significance(p[1]) for p in points], style,
                        color=colour, marker=".", label=f"{mode}, rho={rho:g}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(3, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(f"suspect tokens scored (seed {first_seed})")
    ax.set_ylabel("significance, -log10 p")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "p_vs_tokens.png", dpi=120)
    plt.close(fig)
