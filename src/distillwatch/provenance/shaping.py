"""Response shaping, measured: what stripping reasoning and capping tokens cost a distiller, and
what they cost an honest user.

``distillwatch provenance shaping-experiment --profile smoke|full --out DIR``. CPU only, no
downloads, every model trained here:

1. **Task**: adding two ``digits``-digit numbers, answered most significant digit first. A
   model writing the answer directly must resolve every carry in its head; with a scratchpad
   (``<think>`` then, for each digit from the right, the two digits, the carry in and the
   digit of the sum) each step depends on a few tokens.
2. **Teachers**, trained on ground truth: one that reasons in a scratchpad before answering
   (the one served), one that answers directly (only to show the scratchpad matters here).
3. **Harvest**: the served teacher answers fresh questions as a chat completion with its
   reasoning inline (``<think>...</think>`` then the answer, the way DeepSeek-R1-style models
   return it). The proxy's own shaping code turns each completion into what a client receives
   under each policy: ``full`` (no shaping), ``strip`` (:func:`~distillwatch.openai_api.strip_reasoning`),
   ``cap`` (``max_tokens`` below the length of the reasoning: generation stops there, as an
   upstream stops at the cap the proxy writes into the request), ``cap+strip`` (the shipped
   ``shape`` rule: both).
4. **Students** (the same architecture as the teachers, from scratch) are distilled from each
   policy's harvest, at each harvest size, and tested on fresh questions.
5. **An honest user** under each policy: the share of served responses that carry the right
   answer, and the tokens served.

The model is a small autoregressive MLP (scikit-learn's :class:`~sklearn.neural_network.MLPClassifier`
predicting the next token from one-hot features of the whole prefix at absolute positions, the
last few tokens, and the position). What the toy cannot show: how the gap scales with harvest
volume and model size for real LLMs (a large student also learns to reason from answers alone,
given enough of them), or what stripping costs users who read the reasoning to check an answer.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.neural_network import MLPClassifier
from sklearn.utils.validation import check_is_fitted

from distillwatch.openai_api import strip_reasoning

#: Token ids: the ten digits, then the markup.
PLUS, EQUALS, THINK, END_THINK, EOS, PAD = 10, 11, 12, 13, 14, 15
VOCAB = 16
_TEXT = {PLUS: "+", EQUALS: "=", THINK: "<think>", END_THINK: "</think>", EOS: ""}
POLICIES = ("full", "strip", "cap", "cap+strip")


@dataclass(frozen=True)
class Profile:
    name: str
    digits: int
    teacher_questions: int  # ground-truth examples each teacher is trained on
    harvest_sizes: tuple[int, ...]  # questions a distiller has the served teacher answer
    test_questions: int
    seeds: tuple[int, ...]
    hidden: int = 256
    epochs: int = 30
    cap_share: float = 0.5  # max_tokens as a share of the full response's tokens


PROFILES = {
    "smoke": Profile("smoke", digits=3, teacher_questions=5_000, harvest_sizes=(3_000,),
                     test_questions=500, seeds=(1,), hidden=128, epochs=30),
    "full": Profile("full", digits=5, teacher_questions=12_000, harvest_sizes=(2_000, 8_000),
                    test_questions=2_000, seeds=(1, 2)),
}  # fmt: skip


# -- the task ---------------------------------------------------------------------------------
def question(a: int, b: int, digits: int) -> list[int]:
    return [*map(int, f"{a:0{digits}d}"), PLUS, *map(int, f"{b:0{digits}d}"), EQUALS]


def scratchpad(a: int, b: int, digits: int) -> list[int]:
    """``<think>``, then per digit from the right: its two digits, the carry in, the sum's digit."""
    steps, carry = [THINK], 0
    for i in range(digits):
        x, y = a // 10**i % 10, b // 10**i % 10
        steps += [x, y, carry, (x + y + carry) % 10]
        carry = (x + y + carry) // 10
    return [*steps, END_THINK]


def answer(a: int, b: int, digits: int) -> list[int]:
    return [*map(int, f"{a + b:0{digits + 1}d}"), EOS]


def render(tokens: list[int]) -> str:
    """Tokens as the text a client reads (scratchpad steps separated by spaces)."""
    out, in_steps = [], 0
    for t in tokens:
        if t == PAD:
            break
        if t < 10 and in_steps:
            out.append(str(t) + (" " if in_steps % 4 == 0 else ""))
            in_steps += 1
            continue
        if t == THINK:
            in_steps = 1
        elif t == END_THINK:
            in_steps = 0
            if out and out[-1].endswith(" "):
                out[-1] = out[-1].rstrip()
        out.append(_TEXT.get(t, str(t)))
    return "".join(out)


def parse(text: str) -> list[int]:
    """What a client received, as tokens (the inverse of :func:`render`)."""
    tokens: list[int] = []
    rest = text
    while rest:
        if rest.startswith("</think>"):
            tokens.append(END_THINK)
            rest = rest[8:]
        elif rest.startswith("<think>"):
            tokens.append(THINK)
            rest = rest[7:]
        else:
            ch, rest = rest[0], rest[1:]
            if ch.isdigit():
                tokens.append(int(ch))
            elif ch in "+=":
                tokens.append(PLUS if ch == "+" else EQUALS)
    return tokens


def final_answer(tokens: list[int], digits: int) -> int | None:
    """The number a response gives as its answer: the digits after the reasoning, if any."""
    if THINK in tokens and END_THINK not in tokens:
        return None  # cut off inside the reasoning: no answer
    tail = tokens[tokens.index(END_THINK) + 1 :] if END_THINK in tokens else tokens
    number = [t for t in tail if t < 10]
    return int("".join(map(str, number))) if len(number) == digits + 1 else None


# -- the model --------------------------------------------------------------------------------
class TinyLM(BaseEstimator):
    """An autoregressive next-token MLP over a fixed-length token window.

    Parameters are ``__init__`` keywords; ``fit(sequences, prompt_length)`` learns ``model_``
    and ``length_`` (the longest sequence seen). ``generate`` is greedy and returns the
    completion tokens; higher predicted probability means the more likely next token.
    """

    def __init__(self, length: int = 64, window: int = 4, hidden: int = 256, epochs: int = 30,
                 random_state: int = 0) -> None:  # fmt: skip
        self.length = length
        self.window = window
        self.hidden = hidden
        self.epochs = epochs
        self.random_state = random_state

    def _features(self, prefix: np.ndarray, t: int) -> sparse.csr_matrix:
        """One-hot features of ``prefix[:, :t]``: each token at its absolute position, the last
        ``window`` tokens by distance, and the position ``t`` itself."""
        n = prefix.shape[0]
        base = self.length * VOCAB
        parts = [np.arange(t) * VOCAB + prefix[:, :t]]
        parts += [
            (base + (k - 1) * VOCAB + prefix[:, t - k])[:, None]
            for k in range(1, min(self.window, t) + 1)
        ]
        parts.append(np.full((n, 1), base + self.window * VOCAB + t))
        columns = np.hstack(parts)
        rows = np.repeat(np.arange(n), columns.shape[1])
        width = base + self.window * VOCAB + self.length
        return sparse.csr_matrix((np.ones(rows.size, np.float32), (rows, columns.ravel())), shape=(n, width))  # fmt: skip

    def fit(self, sequences: list[list[int]], prompt_length: int) -> TinyLM:
        longest = max(len(s) for s in sequences)
        if longest > self.length:
            raise ValueError(f"a sequence has {longest} tokens, more than length={self.length}")
        grid = np.full((len(sequences), longest), PAD)
        for i, s in enumerate(sequences):
            grid[i, : len(s)] = s
        lengths = np.array([len(s) for s in sequences])
        features, targets = [], []
        for t in range(prompt_length, longest):
            live = lengths > t
            if live.any():
                features.append(self._features(grid[live], t))
                targets.append(grid[live, t])
        self.model_ = MLPClassifier(hidden_layer_sizes=(self.hidden,), max_iter=self.epochs,
                                    batch_size=256, random_state=self.random_state)  # fmt: skip
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_.fit(sparse.vstack(features).tocsr(), np.concatenate(targets))
        self.length_ = longest
        return self

    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        """Greedy completions of equal-length prompts, up to the longest training sequence or
        an end token (which is not returned)."""
        check_is_fitted(self, "model_")
        start = len(prompts[0])
        grid = np.full((len(prompts), self.length_), PAD)
        grid[:, :start] = prompts
        done = np.zeros(len(prompts), bool)
        for t in range(start, self.length_):
            grid[:, t] = np.where(done, PAD, self.model_.predict(self._features(grid, t)))
            done |= grid[:, t] == EOS
            if done.all():
                break
        out = []
        for row in grid[:, start:].tolist():
            end = next((i for i, tok in enumerate(row) if tok in (EOS, PAD)), len(row))
            out.append(row[:end])
        return out


# -- the experiment ---------------------------------------------------------------------------
def _draw(rng: np.random.Generator, n: int, digits: int) -> list[tuple[int, int]]:
    return list(zip(rng.integers(0, 10**digits, n).tolist(), rng.integers(0, 10**digits, n).tolist(), strict=True))  # fmt: skip


def _completion(text: str, finished: bool) -> dict[str, Any]:
    return {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop" if finished else "length",
            "message": {"role": "assistant", "content": text}}]}  # fmt: skip


def serve(response: list[int], policy: str, cap: int) -> tuple[list[int], bool]:
    """What a client receives of the teacher's ``response`` under ``policy``: tokens, and
    whether the response finished (rather than stopping at the cap)."""
    capped = policy in ("cap", "cap+strip")
    finished = not capped or len(response) + 1 <= cap  # +1: the end token counts
    tokens = response[:cap] if capped else response
    payload = _completion(render(tokens), finished)
    if policy in ("strip", "cap+strip"):
        payload = strip_reasoning(payload)
    return parse(payload["choices"][0]["message"]["content"]), finished


def _accuracy(model: TinyLM, pairs: list[tuple[int, int]], digits: int) -> float:
    outputs = model.generate([question(a, b, digits) for a, b in pairs])
    return float(np.mean([final_answer(o, digits) == a + b for o, (a, b) in zip(outputs, pairs, strict=True)]))  # fmt: skip


def run(profile: Profile, out: Path, log: Any = print) -> dict[str, Any]:
    """Run every seed of ``profile``; write ``out/results.json`` and ``out/shaping.png``."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    d = profile.digits
    q_len = 2 * d + 2
    length = q_len + 4 * d + 2 + d + 2
    cap = max(1, int(profile.cap_share * (4 * d + 2 + d + 1)))
    lm = {"length": length, "hidden": profile.hidden, "epochs": profile.epochs}
    teachers, students, users = [], [], []
    for seed in profile.seeds:
        rng = np.random.default_rng(seed)
        train, test = (
            _draw(rng, profile.teacher_questions, d),
            _draw(rng, profile.test_questions, d),
        )
        served = TinyLM(**lm, random_state=seed).fit(
            [question(a, b, d) + scratchpad(a, b, d) + answer(a, b, d) for a, b in train], q_len
        )
        direct = TinyLM(**lm, random_state=seed).fit(
            [question(a, b, d) + answer(a, b, d) for a, b in train], q_len
        )
        for name, model in (("scratchpad", served), ("direct", direct)):
            teachers.append({"seed": seed, "teacher": name, "accuracy": _accuracy(model, test, d)})
            log(f"seed {seed}: teacher ({name}) accuracy {teachers[-1]['accuracy']:.3f}")
        harvest = _draw(rng, max(profile.harvest_sizes), d)
        responses = served.generate([question(a, b, d) for a, b in harvest])
        for policy in POLICIES:
            received = [serve(r, policy, cap) for r in responses]
            right = [final_answer(tokens, d) == a + b for (tokens, _), (a, b) in zip(received, harvest, strict=True)]  # fmt: skip
            users.append({"seed": seed, "policy": policy, "answer_accuracy": float(np.mean(right)),
                          "tokens_served": float(np.mean([len(t) for t, _ in received])),
                          "tokens_full": float(np.mean([len(r) for r in responses]))})  # fmt: skip
            for size in profile.harvest_sizes:
                data = [question(a, b, d) + tokens + ([EOS] if finished else [])
                        for (tokens, finished), (a, b) in zip(received[:size], harvest[:size], strict=True)]  # fmt: skip
                if all(len(s) == q_len for s in data):
                    accuracy = 0.0  # every response was emptied: nothing to learn from
                else:
                    student = TinyLM(**lm, random_state=seed + 1000).fit(data, q_len)
                    accuracy = _accuracy(student, test, d)
                students.append(
                    {"seed": seed, "policy": policy, "harvest": size, "accuracy": accuracy}
                )
                log(f"seed {seed}: {policy:9s} harvest {size:>6,}: student accuracy {accuracy:.3f}; "
                    f"honest user gets the right answer {users[-1]['answer_accuracy']:.3f}")  # fmt: skip
    doc = {"profile": asdict(profile), "cap_tokens": cap, "teachers": teachers,
           "students": students, "users": users, "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    plot(doc, out)
    return doc


def plot(doc: dict[str, Any], out: Path) -> None:
    """Student accuracy per policy and harvest size, beside what an honest user keeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = doc["profile"]["harvest_sizes"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    x = np.arange(len(POLICIES))
    width = 0.8 / (len(sizes) + 1)
    for i, size in enumerate(sizes):
        ys = [np.mean([s["accuracy"] for s in doc["students"] if s["policy"] == p and s["harvest"] == size]) for p in POLICIES]  # fmt: skip
        ax.bar(x + i * width, ys, width, label=f"student, harvest {size:,}")
    users = [
        np.mean([u["answer_accuracy"] for u in doc["users"] if u["policy"] == p]) for p in POLICIES
    ]
    ax.bar(
        x + len(sizes) * width, users, width, color="grey", label="honest user: right answer served"
    )
    ax.set_xticks(x + width * len(sizes) / 2, POLICIES)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "shaping.png", dpi=120)
    plt.close(fig)
