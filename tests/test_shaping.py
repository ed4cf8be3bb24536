"""Response shaping, measured: the served text goes through the proxy's own shaping code, the
tiny LM is a real scikit-learn estimator, and the experiment's smoke profile runs through the CLI
and shows what each policy costs a distiller and an honest user."""

from __future__ import annotations

import json

import pytest
from sklearn.exceptions import NotFittedError

from distillwatch.provenance.shaping import (
    END_THINK,
    EOS,
    THINK,
    TinyLM,
    answer,
    final_answer,
    parse,
    question,
    render,
    scratchpad,
    serve,
)


def _response(a: int, b: int, digits: int) -> list[int]:
    return scratchpad(a, b, digits) + answer(a, b, digits)[:-1]  # as generated: no end token


def test_scratchpad_works_the_carries_and_renders_as_inline_reasoning():
    steps = scratchpad(487, 925, 3)
    # 7+5 = 12: digit 2, carry 1; 8+2+1 = 11: digit 1, carry 1; 4+9+1 = 14: digit 4.
    assert steps == [THINK, 7, 5, 0, 2, 8, 2, 1, 1, 4, 9, 1, 4, END_THINK]
    text = render(_response(487, 925, 3))
    assert text == "<think>7502 8211 4914</think>1412"
    assert parse(text) == _response(487, 925, 3)
    assert final_answer(parse(text), 3) == 487 + 925
    assert answer(1, 2, 3)[-1] == EOS and question(1, 2, 3)[:3] == [0, 0, 1]


def test_each_policy_serves_what_the_proxy_would():
    response = _response(487, 925, 3)
    full, finished = serve(response, "full", cap=9)
    assert full == response and finished
    stripped, finished = serve(response, "strip", cap=9)
    assert stripped == [1, 4, 1, 2] and finished  # the reasoning is gone, the answer kept
    capped, finished = serve(response, "cap", cap=9)
    assert capped == response[:9] and not finished
    assert final_answer(capped, 3) is None  # stopped inside the reasoning: no answer at all
    # A cut-off reasoning block is removed to the end (nothing of the scratchpad leaks).
    assert serve(response, "cap+strip", cap=9) == ([], False)
    # A cap above the response's length changes nothing.
    assert serve(response, "cap", cap=len(response) + 1) == (response, True)


def test_tiny_lm_is_an_estimator_that_learns_a_copy_task():
    lm = TinyLM(length=8, hidden=32, epochs=60)
    assert lm.get_params()["hidden"] == 32
    with pytest.raises(NotFittedError):
        lm.generate([[1, 2]])
    # Copy two digits after a separator: learnable only from the absolute-position features.
    data = [[a, b, 11, a, b, EOS] for a in range(10) for b in range(10)]
    lm.fit(data * 3, prompt_length=3)
    assert lm.length_ == 6
    outputs = lm.generate([[a, b, 11] for a in range(10) for b in range(10)])
    assert sum(o == [a, b] for o, (a, b) in zip(outputs, [(a, b) for a in range(10) for b in range(10)], strict=True)) >= 95  # fmt: skip
    with pytest.raises(ValueError, match="more than length"):
        TinyLM(length=4).fit(data, prompt_length=3)


@pytest.mark.e2e
@pytest.mark.slow
def test_shaping_experiment_smoke_profile_end_to_end(tmp_path, cli):
    out = tmp_path / "shaping"
    result = cli("provenance", "shaping-experiment", "--profile", "smoke", "--out", out, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Response shaping" in result.stdout
    doc = json.loads((out / "results.json").read_text())
    teacher = {t["teacher"]: t["accuracy"] for t in doc["teachers"]}
    assert teacher["scratchpad"] > teacher["direct"] + 0.2  # the task needs its scratchpad
    student = {s["policy"]: s["accuracy"] for s in doc["students"]}
    user = {u["policy"]: u for u in doc["users"]}
    # Stripping the reasoning costs the distiller most of what the full answers teach ...
    assert student["full"] > 2 * student["strip"] and student["full"] > 0.3
    # ... and costs an honest user no right answers, only the worked steps.
    assert user["strip"]["answer_accuracy"] == user["full"]["answer_accuracy"] > 0.5
    assert user["strip"]["tokens_served"] < user["full"]["tokens_served"] / 2
    # A cap below the reasoning's length takes the answer from everyone.
    assert user["cap"]["answer_accuracy"] == user["cap+strip"]["answer_accuracy"] == 0
    assert student["cap"] == student["cap+strip"] == 0
    assert (out / "shaping.png").stat().st_size > 1000
