"""Property-based tests (hypothesis) of the OpenAI-shapes module and Contract-1 validation:
untrusted JSON in, a normalised record or a RecordError out, never anything else; reasoning
removed the same way from a whole text and from any split of it into stream chunks."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from distillwatch.errors import RecordError
from distillwatch.openai_api import (
    StreamAppender,
    StreamCapper,
    StreamReader,
    StreamShaper,
    ThinkFilter,
    append_text,
    cap_answer,
    normalise_messages,
    responses_messages,
    strip_reasoning,
    strip_think,
    summarise_response,
)
from distillwatch.schema import validate_exchange

# Any JSON value, weighted toward the shapes messages are made of.
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
roles = (
    st.sampled_from(["user", "system", "assistant", "tool", "developer", "narrator", ""])
    | json_scalars
)
parts = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["text", "image_url", "refusal", "input_text", "hologram"])
        | json_scalars
    },
    optional={"text": json_values, "refusal": json_values},
)
contents = (
    st.none() | st.text(max_size=30) | st.lists(parts | json_values, max_size=3) | json_values
)
messages = st.lists(
    st.fixed_dictionaries({"role": roles}, optional={"content": contents, "tool_calls": json_values,
                                                     "tool_call_id": json_values, "name": json_values}),
    max_size=5,
)  # fmt: skip

# Text made of the pieces reasoning tags are made of, so that tags (and near-tags) are common.
TAG_PIECES = ["<think>", "</think>", "<thinking>", "</thinking>", "<reasoning>", "</reasoning>",
              "<THINK>", "</Think>", "<", ">", "/", "<th", "ink>", "</", "think", "a", "b", " ", "\n"]  # fmt: skip
tag_text = st.lists(st.sampled_from(TAG_PIECES), max_size=12).map("".join) | st.text(max_size=30)


@settings(max_examples=400)
@given(messages | json_values)
def test_normalise_messages_returns_messages_or_a_record_error(raw):
    try:
        normalised = normalise_messages(raw)
    except RecordError as exc:
        assert exc.field.startswith("messages") and exc.reason
        return
    assert normalised.messages and all(isinstance(m["content"], str) for m in normalised.messages)
    assert all(isinstance(m["role"], str) and len(m["role"]) <= 40 for m in normalised.messages)
    # Normalising what came out changes nothing: the store holds a fixed point.
    again = normalise_messages(normalised.messages)
    assert again.messages == normalised.messages and again.prompt == normalised.prompt


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["input", "instructions", "previous_response_id"]), json_values | messages
    )
)
def test_responses_requests_map_to_messages_or_a_record_error(raw):
    try:
        normalised = responses_messages(raw)
    except RecordError:
        return
    assert any(m["role"] == "user" for m in normalised.messages)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["id", "ts", "account_id", "model", "messages", "ip", "status",
                                        "response", "user_agent", "response_tool_calls", "flags", "x"]),
                       json_values | messages))  # fmt: skip
def test_validate_exchange_never_raises_anything_but_record_error(raw):
    base = {"id": "a", "ts": "2026-03-01T00:00:00Z", "account_id": "x", "model": "m",
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    for record in (
        raw,
        {**base, **{k: v for k, v in raw.items() if k not in ("id", "ts", "account_id", "model")}},
    ):
        try:
            row = validate_exchange(record)
        except RecordError:
            continue
        assert isinstance(row.prompt, str) and (
            row.flags is None or all(isinstance(f, str) for f in row.flags)
        )


@settings(max_examples=500)
@given(tag_text, st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_think_filter_on_any_split_equals_strip_on_the_whole(text, cuts):
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    streamed = ThinkFilter()
    shown = "".join(streamed.feed(piece) for piece in pieces) + streamed.flush()
    assert shown == strip_think(text)


def test_think_filter_examples():
    assert strip_think("a<think>x</think> b") == "ab"
    assert strip_think("a<THINKING>x</thinking>b") == "ab"
    assert strip_think("a<think>never closed") == "a"
    assert strip_think("1 < 2 and <b>bold</b>") == "1 < 2 and <b>bold</b>"
    f = ThinkFilter()
    assert [f.feed(p) for p in ("ok <thi", "nk>secret</th", "ink>  done")] == ["ok ", "", "done"]


@settings(max_examples=300)
@given(tag_text, st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_stream_shaper_gives_the_client_what_strip_reasoning_gives_a_whole_response(text, cuts):
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": p, "reasoning_content": "secret"}}]}
        for p in pieces
    ]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    shaper, reader = StreamShaper(), StreamReader()
    for chunk in chunks:
        for event in shaper.shape(orjson.loads(orjson.dumps(chunk))):
            assert "reasoning_content" not in event["choices"][0]["delta"]
            reader.observe(event)
    whole = strip_reasoning(
        {"choices": [{"message": {"content": text, "reasoning_content": "secret"}}]}
    )
    assert reader.summary().text == whole["choices"][0]["message"]["content"]


@settings(max_examples=300)
@given(json_values)
def test_summarise_response_reads_anything_without_raising(payload):
    summary = summarise_response(payload)
    assert summary.text is None or isinstance(summary.text, str)
    shaped = strip_reasoning(payload) if isinstance(payload, dict) else payload
    assert shaped is payload  # in place


def test_responses_objects_lose_reasoning_but_keep_their_shape():
    response = {"object": "response", "status": "completed", "output": [
        {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "plan"}],
         "encrypted_content": "opaque"},
        {"type": "message", "content": [{"type": "output_text", "text": "<think>x</think>answer"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    ]}  # fmt: skip
    strip_reasoning(response)
    assert response["output"][0] == {"type": "reasoning", "id": "rs", "summary": []}
    summary = summarise_response(response)
    assert summary.text == "answer" and summary.tool_calls == [
        {"name": "f", "arguments": "{}", "id": "c"}
    ]


def _responses_stream(pieces: list[str]) -> list[dict]:
    """A Responses API stream as OpenAI sends it: a reasoning item, then a message whose text
    arrives in ``pieces``, then the objects that repeat the whole text."""
    text = "".join(pieces)
    part = {"type": "output_text", "text": text, "annotations": []}
    item = {"type": "message", "id": "msg_1", "role": "assistant", "content": [part]}
    at = {"item_id": "msg_1", "output_index": 1, "content_index": 0}
    final = {"object": "response", "status": "completed",
             "output": [{"type": "reasoning", "id": "rs_1", "summary": []}, item]}  # fmt: skip
    return [
        {"type": "response.created", "response": {**final, "output": []}},
        {"type": "response.output_item.added", "output_index": 1, "item": {**item, "content": []}},
        {"type": "response.content_part.added", **at, "part": {**part, "text": ""}},
        *({"type": "response.output_text.delta", **at, "delta": p} for p in pieces),
        {"type": "response.output_text.done", **at, "text": text},
        {"type": "response.content_part.done", **at, "part": part},
        {"type": "response.output_item.done", "output_index": 1, "item": item},
        {"type": "response.completed", "response": final},
    ]


@settings(max_examples=200)
@given(tag_text, st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_a_suffix_reaches_the_end_of_a_responses_stream_in_every_place_that_repeats_the_text(
    text, cuts
):
    """Shaped, then extended: the deltas a client assembles, the ``done`` text, the finished
    part, the finished item and the final response all read the same, and end with the suffix."""
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    shaper, appender, sent = StreamShaper(), StreamAppender("\n\nField note."), []
    for event in orjson.loads(orjson.dumps(_responses_stream(pieces))):
        for shaped in shaper.shape(event):
            sent.extend(appender.apply(shaped))
    deltas = "".join(e["delta"] for e in sent if e["type"] == "response.output_text.delta")
    done = {e["type"]: e for e in sent}
    assert deltas == strip_think(text) + "\n\nField note."
    assert done["response.output_text.done"]["text"] == deltas
    assert done["response.content_part.done"]["part"]["text"] == deltas
    assert done["response.output_item.done"]["item"]["content"][0]["text"] == deltas
    assert done["response.completed"]["response"]["output"][1]["content"][0]["text"] == deltas
    assert [e["type"] for e in sent].index("response.output_text.done") == len(sent) - 4


def test_a_suffix_goes_once_per_chat_choice_before_its_finishing_chunk_and_never_to_tool_calls():
    chunks = [
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "a"}},
                                                       {"index": 1, "delta": {"content": "b"}}]},
        {"object": "chat.completion.chunk", "choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]},
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]  # fmt: skip
    appender, text = StreamAppender(" +x"), {0: "", 1: ""}
    for chunk in chunks:
        for event in appender.apply(chunk):
            for choice in event["choices"]:
                text[choice["index"]] += choice["delta"].get("content", "")
    assert text == {0: "a +x", 1: "b +x"}
    completion = StreamAppender(" +x").apply({"object": "text_completion", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})  # fmt: skip
    assert completion[0]["choices"][0]["text"] == " +x"
    tool_only = [*_responses_stream([])[:2], _responses_stream([])[-1]]
    tool_only[-1]["response"]["output"][1] = {"type": "function_call", "call_id": "c"}
    appender = StreamAppender(" +x")
    assert [e for event in tool_only for e in appender.apply(event)] == tool_only


def test_append_text_extends_chat_completion_and_responses_objects():
    chat = {"choices": [{"message": {"content": "Answer. "}}, {"text": "done"}]}
    assert append_text(chat, "\n\nX")["choices"] == [{"message": {"content": "Answer.\n\nX"}},
                                                      {"text": "done\n\nX"}]  # fmt: skip
    response = {"output": [{"type": "reasoning", "summary": []},
                           {"type": "message", "content": [{"type": "refusal", "refusal": "no"},
                                                           {"type": "output_text", "text": "A"},
                                                           {"type": "output_text", "text": "B"}]}],
                "output_text": "AB"}  # fmt: skip
    append_text(response, "\n\nX")
    assert [p.get("text") for p in response["output"][1]["content"]] == [None, "A\n\nX", "B"]
    assert response["output_text"] == "A\n\nXB"  # the convenience field follows its parts


@settings(max_examples=200)
@given(tag_text, st.lists(st.integers(min_value=0, max_value=60), max_size=6), st.integers(1, 12))
def test_a_capped_stream_gives_what_cap_answer_gives_the_whole_answer(text, cuts, tokens):
    """Any split, reasoning stripped first: the chat deltas and the Responses deltas, done text
    and final object equal :func:`cap_answer` of the whole response, and both say when they cut."""
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    whole_chat = cap_answer(strip_reasoning({"choices": [{"index": 0, "message": {"content": text},
                                                         "finish_reason": "stop"}]}), tokens)  # fmt: skip
    shaper, capper, got, finish = StreamShaper(), StreamCapper(tokens), "", None
    chunks = [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    for chunk in chunks:
        for event in (e for shaped in shaper.shape(chunk) for e in capper.apply(shaped)):
            got += event["choices"][0]["delta"].get("content", "")
            finish = event["choices"][0].get("finish_reason") or finish
    assert got == whole_chat["choices"][0]["message"]["content"]
    assert finish == whole_chat["choices"][0]["finish_reason"]

    stream = orjson.loads(orjson.dumps(_responses_stream(pieces)))
    whole = cap_answer(strip_reasoning(orjson.loads(orjson.dumps(stream[-1]["response"]))), tokens)
    shaper, capper, sent = StreamShaper(), StreamCapper(tokens), []
    for event in stream:
        sent += [e for shaped in shaper.shape(event) for e in capper.apply(shaped)]
    deltas = "".join(e["delta"] for e in sent if e["type"] == "response.output_text.delta")
    expected = whole["output"][1]["content"][0]["text"]
    last = sent[-1]
    assert deltas == expected == last["response"]["output"][1]["content"][0]["text"]
    assert next(e for e in sent if e["type"] == "response.output_text.done")["text"] == expected
    assert (last["type"] == "response.incomplete") == (whole.get("status") == "incomplete")
