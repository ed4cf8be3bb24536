"""How harvesters disguise a seed set: paraphrases, and wrappers in another language.

Everything here is this project's own text and its own rewriting rules, not real traffic: the
seeds come from the real corpora, the disguises are ours. The rewrites stand for what an LLM
asked to "rephrase this instruction" produces: the same request in other words, framing and
order, so exact hashes and word-shingle MinHash mostly miss it while its meaning stays put.
"""

from __future__ import annotations

import re

import numpy as np

#: Word -> alternatives with the same meaning in an instruction.
SYNONYMS = {
    "write": ("compose", "create", "produce", "draft"),
    "create": ("build", "make", "develop", "construct"),
    "explain": ("describe", "clarify", "walk through", "elaborate on"),
    "describe": ("explain", "outline", "characterize"),
    "function": ("routine", "method", "procedure"),
    "program": ("script", "application", "piece of software"),
    "list": ("enumerate", "name"),
    "give": ("provide", "offer", "supply"),
    "show": ("demonstrate", "illustrate", "display"),
    "simple": ("basic", "straightforward", "minimal"),
    "example": ("sample", "instance", "illustration"),
    "find": ("identify", "locate", "determine"),
    "use": ("utilize", "employ", "apply"),
    "implement": ("build", "code", "realize"),
    "generate": ("produce", "create", "output"),
    "improve": ("enhance", "refine", "optimize"),
    "fix": ("repair", "correct", "debug"),
    "make": ("create", "build", "produce"),
    "code": ("source code", "implementation"),
    "number": ("integer", "value"),
    "string": ("text", "sequence of characters"),
    "returns": ("outputs", "gives back", "yields"),
    "given": ("provided", "supplied"),
    "calculate": ("compute", "work out", "determine"),
    "short": ("brief", "concise"),
    "detailed": ("thorough", "in-depth", "comprehensive"),
    "how": ("in what way",),
    "important": ("essential", "key", "crucial"),
}
FRAMES = (
    "Could you {x}", "Please {x}", "I need you to {x}", "Can you help me {x}", "Your task: {x}",
    "I'd like you to {x}", "Kindly {x}", "Here is what I need: {x}", "{x}", "{x}",
)  # fmt: skip
CLOSINGS = ("", "", " Please be thorough.", " Be precise.", " Explain clearly.", " Thanks.")
_WORD = re.compile(r"[A-Za-z]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

# Chinese wrappers: what a Chinese-speaking harvest operation puts around its tasks.
ZH_TEMPLATES = (
    "请完整、详细地回答下面的问题：\n{p}",
    "你是一名资深专家。请完成以下任务，并给出高质量的完整答案。\n任务：{p}",
    "### 指令：\n{p}\n\n### 回答：",
    "请根据以下要求生成回答，不要省略任何步骤：\n{p}",
    "以下是一个任务描述，请写出恰当而全面的回答。\n\n{p}",
)
ZH_COT = (
    "{p}\n\n请一步一步地思考，写出完整的推理过程，最后给出答案。",
    "让我们一步一步地思考。\n{p}",
    "请先在<思考>标签中详细推理，再给出最终答案。\n\n{p}",
    "{p}\n请展示你的思考过程和每一个中间步骤。",
    "在回答之前，请仔细推理并解释你的完整思路：{p}",
)
#: How a Chinese-speaking student asks for an explanation (benign).
ZH_STEP_ASKS = ("请一步一步解释。", "能详细说明一下步骤吗？", "请解释一下思路。", "")


def paraphrase(text: str, rng: np.random.Generator) -> str:
    """``text`` said another way: synonyms, a different frame, sentences reordered."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        options = SYNONYMS.get(word.lower())
        if options is None or rng.random() > 0.55:
            return word
        choice = options[int(rng.integers(0, len(options)))]
        return choice.capitalize() if word[:1].isupper() else choice

    rewritten = _WORD.sub(swap, text)
    sentences = _SENTENCE.split(rewritten.strip())
    if len(sentences) > 1 and rng.random() < 0.5:
        cut = int(rng.integers(1, len(sentences)))
        sentences = sentences[cut:] + sentences[:cut]
    body = " ".join(sentences)
    frame = FRAMES[int(rng.integers(0, len(FRAMES)))]
    if not frame.startswith("{x}") and body[:1].isupper() and body[1:2].islower():
        body = body[:1].lower() + body[1:]
    framed = frame.replace("{x}", body)
    framed = framed[:1].upper() + framed[1:]
    return framed + CLOSINGS[int(rng.integers(0, len(CLOSINGS)))]
