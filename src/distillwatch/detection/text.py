"""What detection reads in a prompt, defined once for batch (DuckDB SQL) and online (Python) use.

- :data:`COT_PATTERN`: a request that asks the model to expose its reasoning, in English and in
  the other languages harvest traffic has used (Chinese above all; Japanese, Korean, Spanish,
  French, German, Russian, Portuguese);
- :data:`CAPABILITIES`: the capability areas a request exercises (a harvester sweeps many);
- the *skeleton* of a prompt: lower-cased, whitespace collapsed, code blocks, quoted strings and
  numbers masked, and every CJK character made a word of its own (Chinese and Japanese are
  written without spaces, so "words" would otherwise be whole sentences). Template grams and
  MinHash shingles are taken over skeleton words.

:func:`skeleton_words` and :func:`skeleton_sql` are the same transformation;
``tests/test_text.py`` checks that they agree on real prompts, Chinese ones included, so what
the gateway matches is what batch detection mined.
"""

from __future__ import annotations

import re

#: Chain-of-thought elicitation. English first (the most common), then other languages.
COT_EN = (
    r"step[- ]by[- ]step|chain[- ]of[- ]thought|show (all of )?(your|the) (work|reasoning|steps)"
    r"|<think(ing)?>|think(ing)? (aloud|out loud|carefully)|reason(ing)? (through|about|step)"
    r"|explain your (full |complete )?(reasoning|thought|chain)|internal reasoning"
    r"|intermediate steps|work through (this|the problem)|verify your answer|let'?s think"
)
COT_OTHER = (
    # Chinese (simplified and traditional): step by step, reasoning process, chain of thought
    r"一步一步|一步步|逐步|分步|推理过程|思考过程|思维链|思路|中间步骤|详细推理|仔细推理|<思考>"
    r"|一步一步地思考|逐步推理|請一步|推理過程|思考過程|逐步推理"
    # Japanese
    r"|ステップバイステップ|段階的に|順を追って|思考過程|推論過程"
    # Korean
    r"|단계별로|차근차근|추론 과정|사고 과정"
    # Spanish, Portuguese, French, German, Russian
    r"|paso a paso|razonamiento|passo a passo|raciocínio|étape par étape|raisonnement"
    r"|schritt für schritt|denkprozess|шаг за шагом|пошагово|рассуждени"
)
COT_PATTERN = COT_EN + "|" + COT_OTHER

#: Capability tags (a request may carry several). Sweeping many of them is what harvesters do.
CAPABILITIES = {
    "coding": r"```|\bdef |\bfunction\b|\bclass \w+|\bpython\b|\bjavascript\b|\bc\+\+|\bsql\b"
    r"|\bcode\b|\bprogram\b|\bcompile|\balgorithm|代码|编程|函数|程序|算法",
    "math": r"\bsolve\b|\bequation|\bcalculate|\bhow many\b|\bhow much\b|\bpercent|\bsum of\b"
    r"|\bprobability|\d+\s*[\+\-\*/x]\s*\d+|\btotal\b|计算|方程|求解|概率|多少",
    "agentic": r"\btool|\bapi\b|\bfunction call|\bsearch\(|\bwikipedia\b|\bcalculator\b"
    r"|\bbrowse|\bagent\b|\baction:|\bobservation:|工具|调用",
    "reasoning": COT_PATTERN,
    "roleplay": r"\bimagine you are\b|\bpretend\b|\broleplay|\byou are a\b|\bact as\b"
    r"|\bin character\b|\bas an? \w+ (detective|wizard|pirate|character)|扮演|假设你是|你是一名",
    "safety": r"\bhack|\bweapon|\bsteal\b|\billegal|\bkill\b|\bdrugs?\b|\bcheat|\bjailbreak"
    r"|\bbypass\b|\bexploit|黑客|武器|违法",
    "data_analysis": r"\bdataset|\bcsv\b|\bdataframe|\bpandas\b|\bregression|\bchart\b|\btable\b"
    r"|\bstatistic|\banaly[sz]e the data|数据|统计|图表",
    "writing": r"\bwrite (a|an|me) (poem|story|essay|email|letter|blog|song)|\brewrite\b"
    r"|\bproofread|\bsummari[sz]e|写一|改写|总结|翻译",
    "qa": r"^(who|what|when|where|which|why|how) ",
}

#: Characters written without spaces between words: CJK ideographs, kana, Hangul syllables.
CJK_CLASS = r"\x{3040}-\x{30ff}\x{3400}-\x{4dbf}\x{4e00}-\x{9fff}\x{f900}-\x{faff}\x{ac00}-\x{d7af}"
_CJK_PY = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
MAX_PROMPT_CHARS = 4_000
#: A wrapper is at least this many fixed skeleton words at either end of the prompt.
TEMPLATE_WORDS = 5

# ASCII whitespace only, as RE2's \s in DuckDB (and str.strip(" ") as DuckDB's trim).
_SPACE = re.compile(r"[\t\n\f\r ]+")
_CODE = re.compile(r"```.*?```")
_QUOTED = re.compile(r'"[^"]{0,300}"')
#: A number (digits with decimal or thousands separators), as masked in skeletons and shapes.
NUMBER_PATTERN = r"[0-9]+([.,][0-9]+)*"
_NUMBER = re.compile(NUMBER_PATTERN)
_CJK = re.compile(f"([{_CJK_PY}])")
_COT = re.compile(COT_PATTERN)


def _lower(text: str) -> str:
    """Lower case by the one-to-one Unicode mapping, as DuckDB's ``lower`` (Python's own maps
    'İ' to two characters and a word-final 'Σ' to 'ς')."""
    low = text.lower()
    if len(low) == len(text) and "ς" not in low:
        return low
    return "".join(c.lower()[0] if c != "ς" else c for c in text)


def normalise(prompt: str) -> str:
    """Lower-cased, whitespace collapsed, cut to MAX_PROMPT_CHARS (as ``norm`` in SQL)."""
    return _lower(_SPACE.sub(" ", prompt[:MAX_PROMPT_CHARS])).strip(" ")


def skeleton_words(prompt: str) -> list[str]:
    """The prompt's skeleton as a list of words (see the module docstring)."""
    text = _NUMBER.sub("0", _QUOTED.sub('"_"', _CODE.sub(" <code> ", normalise(prompt))))
    text = _SPACE.sub(" ", _CJK.sub(r" \1 ", text)).strip(" ")
    return text.split(" ") if text else []


def skeleton_sql(norm: str) -> str:
    """SQL for :func:`skeleton_words` of the column or expression ``norm`` (already normalised)."""
    masked = (
        f"regexp_replace(regexp_replace(regexp_replace({norm}, '```.*?```', ' <code> ', 'g'), "
        f"'\"[^\"]{{0,300}}\"', '\"_\"', 'g'), '{NUMBER_PATTERN}', '0', 'g')"
    )
    spaced = f"regexp_replace({masked}, '([{CJK_CLASS}])', ' \\1 ', 'g')"
    collapsed = f"trim(regexp_replace({spaced}, '\\s+', ' ', 'g'), ' ')"
    return f"CASE WHEN {collapsed} = '' THEN []::VARCHAR[] ELSE string_split({collapsed}, ' ') END"


def normalise_sql(prompt: str) -> str:
    """SQL for :func:`normalise` of the column ``prompt``."""
    return f"trim(lower(regexp_replace(left({prompt}, {MAX_PROMPT_CHARS}), '\\s+', ' ', 'g')), ' ')"


def template_grams(prompt: str) -> tuple[str | None, str | None]:
    """The first and last TEMPLATE_WORDS skeleton words (None for a prompt too short)."""
    words = skeleton_words(prompt)
    if len(words) < TEMPLATE_WORDS * 2:
        return None, None
    return " ".join(words[:TEMPLATE_WORDS]), " ".join(words[-TEMPLATE_WORDS:])


def elicits_reasoning(prompt: str) -> bool:
    return bool(_COT.search(normalise(prompt)))


_CAPABILITIES = {name: re.compile(pattern) for name, pattern in CAPABILITIES.items()}


def capability_tags(prompt: str) -> tuple[str, ...]:
    """The :data:`CAPABILITIES` the prompt exercises, as batch detection tags it in SQL
    (``regexp_matches`` on the normalised prompt; the online path of the gateway)."""
    norm = normalise(prompt)
    return tuple(name for name, pattern in _CAPABILITIES.items() if pattern.search(norm))
