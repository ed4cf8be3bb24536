"""A small OpenAI-compatible upstream for tests, the demo and the overhead benchmark.

It answers chat completions (JSON and SSE streaming), completions, embeddings and the model list,
with an optional fixed delay; answers echo the prompt's length and include a ``<think>``
section so response shaping can be seen working. Nothing here pretends to be a real model.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route


def create_app(delay_s: float = 0.0) -> Starlette:
    async def chat(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        if delay_s:
            await asyncio.sleep(delay_s)
        last = (body.get("messages") or [{}])[-1].get("content", "")
        words = max(1, min(int(body.get("max_tokens") or 64), 256))
        content = f"<think>reasoning about {len(str(last))} characters</think>" + " ".join(
            ["word"] * words
        )
        usage = {
            "prompt_tokens": len(str(last)) // 4 + 1,
            "completion_tokens": words,
            "total_tokens": words,
        }
        if body.get("stream"):

            async def events():  # type: ignore[no-untyped-def]
                for piece in ("<think>hidden</think>", *(["word "] * min(words, 16))):
                    chunk = {
                        "id": "mock",
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"content": piece}}],
                    }
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield f"data: {json.dumps({'id': 'mock', 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "mock"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": usage,
        })  # fmt: skip

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
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ])  # fmt: skip
