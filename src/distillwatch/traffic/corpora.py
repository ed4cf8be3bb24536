"""Real prompt corpora for the simulator, read from ``../shared/data`` (or a shipped sample).

Pools follow the classes of ``shared/data/README.md``: **human** prompts (benign traffic only),
**sweep** benchmark items and **synthetic** instruction sets (campaign traffic only), each item
with the corpus answer where one exists. Trace folders calibrate timing (see ``timing.py``).
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from distillwatch.paths import shared_data_dir

SAMPLE_RESOURCE = "sample_corpus.json.gz"
#: Prompts longer than this are cut: the simulator models traffic, not book-length inputs.
MAX_PROMPT_CHARS = 6_000


@dataclass(frozen=True)
class Item:
    """One prompt (and the corpus's answer to it, when it has one)."""

    prompt: str
    answer: str | None = None
    topic: str = ""  # capability the item exercises, as the corpus labels it
    followups: tuple[str, ...] = ()  # real later turns of the same conversation


@dataclass
class Corpora:
    """Named pools of items, by class."""

    human: dict[str, list[Item]] = field(default_factory=dict)
    sweep: dict[str, list[Item]] = field(default_factory=dict)
    synthetic: dict[str, list[Item]] = field(default_factory=dict)
    #: Human prompts written in Chinese (a subset of the human pools, kept apart by language).
    zh: dict[str, list[Item]] = field(default_factory=dict)
    source: str = ""

    def pool(self, kind: str, name: str) -> list[Item]:
        pools = {"human": self.human, "sweep": self.sweep, "synthetic": self.synthetic,
                 "zh": self.zh}[kind]  # fmt: skip
        if name not in pools:
            raise KeyError(f"no {kind} pool named {name!r}; have {', '.join(sorted(pools))}")
        return pools[name]


def _jsonl(path: Path) -> list:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _cut(text: str) -> str:
    return text.strip()[:MAX_PROMPT_CHARS]


def _mostly_cjk(text: str, share: float = 0.2) -> bool:
    letters = [c for c in text if c.isalpha()]
    cjk = sum(1 for c in letters if "\u4e00" <= c <= "\u9fff")
    return bool(letters) and cjk / len(letters) >= share


def _hh_human_turns(record: dict) -> list[str]:
    turns = record["chosen"].split("\n\nHuman: ")[1:]
    return [_cut(turn.split("\n\nAssistant:")[0]) for turn in turns]


def load_from_shared(data: Path) -> Corpora:
    """Read every text corpus the simulator uses from the shared data folder."""
    corpora = Corpora(source=str(data))
    arena = _jsonl(data / "arena_hard" / "arena-hard-v0.1_question.jsonl") + _jsonl(
        data / "arena_hard" / "arena-hard-v2.0_question.jsonl"
    )
    corpora.human["arena_hard"] = [
        Item(_cut(r["prompt"]), topic=r.get("cluster") or r.get("category", ""))
        for r in arena
        if isinstance(r.get("prompt"), str)
    ]
    # Real Chinese prompts (Chatbot Arena users): what Chinese-speaking customers ask.
    corpora.zh["arena"] = [item for item in corpora.human["arena_hard"] if _mostly_cjk(item.prompt)]
    corpora.human["koala"] = [
        Item(_cut(r["prompt"])) for r in _jsonl(data / "koala_test_set" / "koala_test_set.jsonl")
    ]
    corpora.human["oasst"] = [
        Item(_cut(r))
        for r in _jsonl(data / "oasst_prompt_lottery" / "prompt_lottery_en_250_text.jsonl")
    ]
    corpora.human["self_instruct"] = [
        Item(
            _cut(
                r["instruction"]
                + (
                    "\n\n" + r["instances"][0]["input"]
                    if r["instances"] and r["instances"][0].get("input")
                    else ""
                )
            ),
            topic=r.get("motivation_app", ""),
        )
        for r in _jsonl(data / "self_instruct_user_oriented" / "user_oriented_instructions.jsonl")
    ]
    corpora.human["mt_bench"] = [
        Item(_cut(r["turns"][0]), topic=r.get("category", ""), followups=tuple(r["turns"][1:]))
        for r in _jsonl(data / "mt_bench" / "mt_bench_question.jsonl")
    ]
    corpora.human["nq_open"] = [
        Item(_cut(r["question"]), answer=r["answer"][0] if r.get("answer") else None)
        for r in _jsonl(data / "nq_open" / "NQ-open.dev.jsonl")
    ]
    hh = []
    for record in _jsonl(data / "hh_rlhf_harmless_test" / "test.jsonl.gz"):
        turns = [t for t in _hh_human_turns(record) if t]
        if turns:
            hh.append(Item(turns[0], topic="safety", followups=tuple(turns[1:])))
    corpora.human["hh_rlhf"] = hh

    corpora.sweep["gsm8k"] = [
        Item(_cut(r["question"]), answer=r["answer"], topic="math")
        for r in _jsonl(data / "gsm8k" / "train.jsonl") + _jsonl(data / "gsm8k" / "test.jsonl")
    ]
    corpora.sweep["mbpp"] = [
        Item(_cut(r["text"]), answer=r["code"], topic="coding")
        for r in _jsonl(data / "mbpp" / "mbpp.jsonl")
    ]
    corpora.sweep["humaneval"] = [
        Item(_cut(r["prompt"]), answer=r["canonical_solution"], topic="coding")
        for r in _jsonl(data / "humaneval" / "HumanEval.jsonl.gz")
    ]
    corpora.sweep["arena_hard"] = corpora.human["arena_hard"]  # harvesters sweep it too

    def teacher(name: str, topic: str) -> list[Item]:
        with open(data / "gpteacher" / name, encoding="utf-8") as handle:
            rows = json.load(handle)
        return [
            Item(
                _cut(r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")),
                answer=r.get("response"),
                topic=topic,
            )
            for r in rows
            if r.get("instruction")
        ]

    corpora.synthetic["gpteacher_code"] = teacher("codegen-instruct.json", "coding")
    corpora.synthetic["gpteacher_roleplay"] = teacher(
        "roleplay-simple-deduped-roleplay-instruct.json", "roleplay"
    )
    corpora.synthetic["gpteacher_tools"] = teacher("toolformer-dedupe-only-dataset.json", "agentic")
    for gen in (
        "gen0_converted_alpaca_2k",
        "gen1_evol-codealpaca-2k-1",
        "gen2_evol-codealpaca-2k-2",
    ):
        with open(data / "evol_codealpaca" / f"{gen}.json", encoding="utf-8") as handle:
            rows = json.load(handle)
        corpora.synthetic[f"evol_{gen[:4]}"] = [
            Item(_cut(r["instruction"]), answer=r.get("output"), topic="coding")
            for r in rows
            if r.get("instruction")
        ]
    return corpora


def load_sample() -> Corpora:
    """The small, attributed sample shipped in the package (used when shared data is absent)."""
    blob = resources.files("distillwatch.data").joinpath(SAMPLE_RESOURCE).read_bytes()
    doc = json.loads(gzip.decompress(blob))
    corpora = Corpora(source="shipped sample (see distillwatch/data/SAMPLE_SOURCES.md)")
    for kind in ("human", "sweep", "synthetic"):
        getattr(corpora, kind).update(
            {
                name: [
                    Item(
                        i["prompt"],
                        i.get("answer"),
                        i.get("topic", ""),
                        tuple(i.get("followups", ())),
                    )
                    for i in items
                ]
                for name, items in doc[kind].items()
            }
        )
    return corpora


@lru_cache(maxsize=2)
def load_corpora(data: Path | None = None) -> Corpora:
    """Shared data when present (or given), else the shipped sample."""
    data = data or shared_data_dir()
    return load_from_shared(data) if data is not None else load_sample()


def servegen_client_rates(data: Path | None = None) -> list[tuple[float, float]]:
    """Per real client (ServeGen, m-large language model): (mean requests/s, mean arrival CV)."""
    data = data or shared_data_dir()
    if data is None:
        return []
    clients = []
    for trace in sorted((data / "servegen" / "language" / "m-large").glob("chunk-*-trace.csv")):
        rates, cvs = [], []
        with open(trace, newline="") as handle:
            for row in csv.reader(handle):
                rate = float(row[1])
                if rate > 0:
                    rates.append(rate)
                    cvs.append(float(row[2]))
        if rates:
            clients.append((sum(rates) / len(rates), sum(cvs) / len(cvs)))
    return clients
