"""A small OpenAI-compatible upstream for tests, the demo and the overhead benchmark.

It answers chat completions and the Responses API (JSON and SSE streaming), completions,
embeddings and the model list, with an optional fixed delay. Answers carry reasoning the way real
servers send it, so response shaping can be seen working: a ``<think>`` section in the text
(split across stream chunks mid-tag), ``reasoning_content`` deltas, and a Responses ``reasoning``
output item with its summary events. A prompt starting ``CALL_TOOL`` gets a tool call instead of
text. Nothing here pretends to be a real model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from distillwatch.provenance.watermark import REQUEST_HEADER

#: How the mock streams its reasoning: tags cut mid-word, as a tokenizer would cut them.
THINK_PIECES = ("<thi", "nk>hidden reas", "oning</th", "ink>")
TOOL = {"name": "get_weather", "arguments": '{"location": "Paris"}'}


def _last_user_text(body: dict) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content"))
    given = body.get("input")
    if isinstance(given, str):
        return given
    if isinstance(given, list) and given and isinstance(given[-1], dict):
        return str(given[-1].get("content"))
    return ""


def _sse(payload: dict, name: str | None = None) -> str:
    return (f"event: {name}\n" if name else "") + f"data: {json.dumps(payload)}\n\n"


def _tolerant(handler):  # type: ignore[no-untyped-def]
    """Answer 400 (OpenAI's shape) to input the mock cannot read, as a real server would."""

    async def handle(request: Request):  # type: ignore[no-untyped-def]
        try:
            return await handler(request)
        except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
            return JSONResponse({"error": {"message": f"mock upstream: {type(exc).__name__}",
                                           "type": "invalid_request_error", "param": None,
                                           "code": None}}, status_code=400)  # fmt: skip

    return handle


#: What the mock writes when it has a watermark keyring: common English words (our list).
_WORD_LIST = (
    "the of and to in is that it for was on are as with his they at be this have from or one had "
    "by word but not what all were we when your can said there use an each which she do how their "
    "if will up other about out many then them these so some her would make like him into time has "
    "look two more write go see number no way could people my than first water been call who oil "
    "its now find long down day did get come made may part over new sound take only little work "
    "know place year live me back give most very after thing our just name good sentence man think "
    "say great where help through much before line right too mean old any same tell boy follow came "
    "want show also around form three small set put end does another well large must big even such "
    "because turn here why ask went men read need land different home us move try kind hand picture "
    "again change off play spell air away animal house point page letter mother answer found study "
    "still learn should world high every near add food between own below country plant last school"
)
WORDS = tuple(_WORD_LIST.split(" "))


def create_app(delay_s: float = 0.0, watermark_keys: Path | None = None) -> Starlette:
    """``watermark_keys``: a keyring; answers are then words from :data:`WORDS`, watermarked
    with the active key when the request carries the gateway's watermark header."""
    writer, keyring = None, None
    if watermark_keys is not None:
        from distillwatch.provenance import Keyring, MarkedWriter

        keyring = Keyring.read(watermark_keys)
        writer = MarkedWriter(WORDS)

    def text(request: Request, last: str, words: int) -> str:
        if writer is None or keyring is None:
            return " ".join(["word"] * words)
        marked = request.headers.get(REQUEST_HEADER) == "on"
        seed = int.from_bytes(hashlib.blake2b(last.encode(), digest_size=8).digest(), "little")
        return writer.write(min(words, 400), keyring.active if marked else None, seed, last)

    async def chat(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        if delay_s:
            await asyncio.sleep(delay_s)
        last = _last_user_text(body)
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or 64
        if not isinstance(cap, int):
            raise TypeError("max_tokens")
        words = max(1, min(int(cap), 4096))
        usage = {
            "prompt_tokens": len(last) // 4 + 1,
            "completion_tokens": words,
            "total_tokens": words,
        }
        tool = last.startswith("CALL_TOOL")
        if body.get("stream"):

            async def events():  # type: ignore[no-untyped-def]
                def chunk(delta: dict, finish: str | None = None) -> str:
                    return _sse({"id": "mock", "object": "chat.completion.chunk",
                                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})  # fmt: skip

                yield chunk({"role": "assistant", "reasoning_content": "private chain of thought"})
                if tool:
                    yield chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                 "function": {"name": TOOL["name"], "arguments": ""}}]})  # fmt: skip
                    yield chunk(
                        {"tool_calls": [{"index": 0, "function": {"arguments": TOOL["arguments"]}}]}
                    )
                    yield chunk({}, "tool_calls")
                else:
                    for piece in (*THINK_PIECES, *(["word "] * min(words, 16))):
                        yield chunk({"content": piece})
                    yield chunk({}, "stop")
                yield _sse({"id": "mock", "choices": [], "usage": usage})
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        message: dict = {"role": "assistant", "reasoning_content": "private chain of thought"}
        if tool:
            message.update(
                content=None, tool_calls=[{"id": "call_1", "type": "function", "function": TOOL}]
            )
        else:
            message["content"] = f"<think>reasoning about {len(last)} characters</think>" + text(
                request, last, words
            )
        return JSONResponse({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "mock"),
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool else "stop"}],
            "usage": usage,
        })  # fmt: skip

    async def responses(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        if delay_s:
            await asyncio.sleep(delay_s)
        last = _last_user_text(body)
        words = max(1, min(int(body.get("max_output_tokens") or 64), 256))
        text = "<think>scratchpad</think>" + " ".join(["word"] * min(words, 16))
        reasoning = {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "I considered it."}],
        }
        if last.startswith("CALL_TOOL"):
            answer = {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "status": "completed",
                **TOOL,
            }
        else:
            answer = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                      "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip
        final = {"id": "resp_mock", "object": "response", "created_at": int(time.time()),
                 "status": "completed", "model": body.get("model", "mock"), "output": [reasoning, answer],
                 "usage": {"input_tokens": len(last) // 4 + 1, "output_tokens": words, "total_tokens": words}}  # fmt: skip
        if isinstance(body.get("metadata"), dict):
            final["metadata"] = body["metadata"]  # echoed, as OpenAI's API does
        if not body.get("stream"):
            return JSONResponse(final)

        async def events():  # type: ignore[no-untyped-def]
            seq = iter(range(10_000))
            started = {**final, "status": "in_progress", "output": []}
            yield _sse(
                {"type": "response.created", "sequence_number": next(seq), "response": started},
                "response.created",
            )
            yield _sse({"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0,
                        "item": {**reasoning, "summary": []}}, "response.output_item.added")  # fmt: skip
            yield _sse({"type": "response.reasoning_summary_text.delta", "sequence_number": next(seq),
                        "item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": "I considered it."},
                       "response.reasoning_summary_text.delta")  # fmt: skip
            yield _sse({"type": "response.output_item.done", "sequence_number": next(seq), "output_index": 0,
                        "item": reasoning}, "response.output_item.done")  # fmt: skip
            yield _sse({"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 1,
                        "item": {**answer, "content": []} if answer["type"] == "message" else answer},
                       "response.output_item.added")  # fmt: skip
            if answer["type"] == "message":
                part = {"type": "output_text", "text": "", "annotations": []}
                yield _sse({"type": "response.content_part.added", "sequence_number": next(seq), "item_id": "msg_1",
                            "output_index": 1, "content_index": 0, "part": part}, "response.content_part.added")  # fmt: skip
                for piece in (
                    "<think>scr",
                    "atchpad</thi",
                    "nk>",
                    "word",
                    *([" word"] * (min(words, 16) - 1)),
                ):
                    yield _sse({"type": "response.output_text.delta", "sequence_number": next(seq),
                                "item_id": "msg_1", "output_index": 1, "content_index": 0, "delta": piece},
                               "response.output_text.delta")  # fmt: skip
                yield _sse({"type": "response.output_text.done", "sequence_number": next(seq), "item_id": "msg_1",
                            "output_index": 1, "content_index": 0, "text": text}, "response.output_text.done")  # fmt: skip
                yield _sse({"type": "response.content_part.done", "sequence_number": next(seq), "item_id": "msg_1",
                            "output_index": 1, "content_index": 0, "part": {**part, "text": text}},
                           "response.content_part.done")  # fmt: skip
            yield _sse({"type": "response.output_item.done", "sequence_number": next(seq), "output_index": 1,
                        "item": answer}, "response.output_item.done")  # fmt: skip
            yield _sse({"type": "response.completed", "sequence_number": next(seq), "response": final},
                       "response.completed")  # fmt: skip

        return StreamingResponse(events(), media_type="text/event-stream")

    async def completions(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        return JSONResponse({"id": "cmpl-mock", "object": "text_completion", "model": body.get("model"),
                             "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1}})  # fmt: skip

    async def embeddings(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        return JSONResponse({"object": "list", "model": body.get("model"),
                             "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.1, 0.2]}]})  # fmt: skip

    async def models(request: Request):  # type: ignore[no-untyped-def]
        return JSONResponse({"object": "list", "data": [{"id": "atlas-2", "object": "model"}]})

    return Starlette(routes=[
        Route("/v1/chat/completions", _tolerant(chat), methods=["POST"]),
        Route("/v1/responses", _tolerant(responses), methods=["POST"]),
        Route("/v1/completions", _tolerant(completions), methods=["POST"]),
        Route("/v1/embeddings", _tolerant(embeddings), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ])  # fmt: skip
