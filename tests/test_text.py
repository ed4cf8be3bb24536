"""One definition of what detection reads in a prompt: the SQL (batch) and Python (gateway)
forms of the skeleton and of chain-of-thought elicitation agree, on real prompts in English
and Chinese; reasoning requests are recognised beyond English."""

from __future__ import annotations

import json

import duckdb
import pytest

from distillwatch.detection.text import (
    COT_PATTERN,
    elicits_reasoning,
    normalise,
    normalise_sql,
    skeleton_sql,
    skeleton_words,
    template_grams,
)
from distillwatch.enforce.signals import template_signatures


def real_prompts(shared_data, limit: int = 400) -> list[str]:
    prompts = []
    for name in ("arena-hard-v2.0_question.jsonl", "arena-hard-v0.1_question.jsonl"):
        with open(shared_data / "arena_hard" / name, encoding="utf-8") as handle:
            prompts += [json.loads(line)["prompt"] for line in handle if line.strip()]
    chinese = [p for p in prompts if sum("\u4e00" <= c <= "\u9fff" for c in p) > 20]
    assert len(chinese) >= 50  # real Chinese prompts are in the sample
    extra = [
        'Quote: "a b c" then 3.14 and 1,000 apples```x = 1```  tail',
        "  \u3000 spaced\tout \n",
        "",
    ]
    return prompts[:limit] + chinese + extra


def test_batch_and_online_skeletons_agree(shared_data):
    prompts = real_prompts(shared_data)
    con = duckdb.connect()
    con.execute("CREATE TABLE p AS SELECT unnest(?::VARCHAR[]) AS prompt", [prompts])
    rows = con.execute(
        f"SELECT prompt, {normalise_sql('prompt')} AS norm, "
        f"{skeleton_sql(normalise_sql('prompt'))} AS words, "
        f"regexp_matches({normalise_sql('prompt')}, '{COT_PATTERN.replace(chr(39), chr(39) * 2)}') AS cot "
        "FROM p"
    ).fetchall()
    mismatched = [(p[:60], norm[:60]) for p, norm, _, _ in rows if normalise(p) != norm]
    assert not mismatched, mismatched[:3]
    words = [
        (p[:60], w[:12], skeleton_words(p)[:12]) for p, _, w, _ in rows if skeleton_words(p) != w
    ]
    assert not words, words[:3]
    assert [elicits_reasoning(p) for p, *_ in rows] == [bool(c) for *_, c in rows]


def test_cjk_text_is_segmented_into_characters():
    words = skeleton_words("请一步一步地思考：计算 12 + 30 的结果")
    assert words[:5] == ["请", "一", "步", "一", "步"] and "0" in words
    prefix, suffix = template_grams("请完整、详细地回答下面的问题：写一个排序函数")
    assert prefix == "请 完 整 、 详" and suffix.endswith("函 数")
    assert (
        template_signatures("请完整、详细地回答下面的问题：写一个排序函数")[0] == f"prefix:{prefix}"
    )


@pytest.mark.parametrize(
    "prompt",
    [
        "请一步一步地思考，写出完整的推理过程，最后给出答案。",
        "让我们一步步思考这个问题",
        "請一步一步解釋",
        "ステップバイステップで説明してください",
        "단계별로 설명해 주세요",
        "Explica paso a paso",
        "Erkläre es Schritt für Schritt",
        "Объясни шаг за шагом",
        "Let's think step by step.",
    ],
)
def test_reasoning_requests_beyond_english(prompt):
    assert elicits_reasoning(prompt)


@pytest.mark.parametrize(
    "prompt", ["北京今天天气怎么样？", "Step on the gas", "写一首关于春天的诗"]
)
def test_ordinary_requests_are_not_reasoning_requests(prompt):
    assert not elicits_reasoning(prompt)
