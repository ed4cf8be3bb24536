"""OpenAI API shapes, in one place: requests, responses and event streams.

The proxy, the LiteLLM guard and ingest all meet the same JSON: chat-completion and Responses API
requests, their response objects and their server-sent event streams. This module is the one
definition of how distillwatch reads them, so that what the gateway enforces, what it logs and
what ingest stores from a provider's own logs cannot drift apart:

- :func:`normalise_messages` turns an untrusted message list into bounded Contract-1 messages
  (text content, tool calls and tool results kept) plus a list of *flags* naming what was
  unusual. Structural garbage (a message that is not an object, a text part whose text is a
  number) raises :class:`~distillwatch.schema.RecordError`; anything merely unusual (an unknown
  role or part type, null content) is kept and flagged, so that nothing served is invisible.
- :func:`responses_messages` maps a Responses API request (``instructions`` + ``input`` items)
  onto the same messages.
- :func:`summarise_response` reads text, tool calls and usage from a chat-completion, completion
  or Responses object; :class:`StreamReader` does the same from an SSE stream as it passes.
- :func:`strip_reasoning` and :class:`StreamShaper` remove reasoning (``<think>`` sections,
  ``reasoning_content`` fields, Responses reasoning items and events) from a response and from a
  stream, including tags split across chunks (:class:`ThinkFilter`).
- :func:`append_text` and :class:`StreamAppender` add text to the end of an answer (a canary),
  in a response object and in a stream, for chat completions, completions and the Responses API.
- :func:`cap_answer` and :class:`StreamCapper` cut the answer a client sees (after reasoning is
  stripped) at a token budget, in a response object and in a stream alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from distillwatch.errors import RecordError, type_name

#: Tags whose content is a model's reasoning. The block runs to the matching close tag, or to the
#: end of the text when it is never closed (a cut-off stream must not leak half a scratchpad).
THINK_TAGS = ("think", "thinking", "reasoning")
THINK_BLOCK = re.compile(
    r"<(" + "|".join(THINK_TAGS) + r")>.*?(?:</\1>\s*|\Z)", re.DOTALL | re.IGNORECASE
)
#: Fields some servers (vLLM, DeepSeek, OpenRouter, LiteLLM) put reasoning in.
REASONING_FIELDS = ("reasoning_content", "reasoning", "reasoning_details", "thinking")
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_TOOL_CALLS = 64
MAX_TOOL_NAME = 200
#: Parts that carry no text: stored as a marker so the prompt shows where they were.
MEDIA_PARTS = {
    "image_url": "[image]", "input_image": "[image]", "image": "[image]",
    "input_audio": "[audio]", "audio": "[audio]",
    "file": "[file]", "input_file": "[file]",
}  # fmt: skip
TEXT_PARTS = ("text", "input_text", "output_text")


Bound = Callable[[str], str]


def _no_bound(text: str) -> str:
    return text


@dataclass(slots=True)
class Messages:
    """A normalised message list and what it says."""

    messages: list[dict[str, Any]]
    prompt: str  # text of the last user message
    system_prompt: str | None
    flags: list[str] = field(default_factory=list)

    @property
    def has_tool_turns(self) -> bool:
        return any(m["role"] == "tool" or m.get("tool_calls") for m in self.messages)


def strip_think(text: str) -> str:
    """``text`` without its reasoning blocks (see :data:`THINK_BLOCK`)."""
    return THINK_BLOCK.sub("", text) if "<" in text else text


# -- requests ---------------------------------------------------------------------------------
def content_text(content: Any, where: str, flags: list[str]) -> str:
    """Flatten message content (a string, null, or a list of parts) to text.

    Unknown part types become a ``[type]`` marker and a flag; a part that is not an object, or a
    text part whose ``text`` is not a string, raises :class:`RecordError`.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RecordError(
            where, f"content must be a string or a list of parts, got {type_name(content)}"
        )
    pieces: list[str] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if isinstance(part, str):
            pieces.append(part)
            continue
        if not isinstance(part, dict):
            raise RecordError(at, f"content part must be an object, got {type_name(part)}")
        kind = part.get("type")
        if not isinstance(kind, str):
            raise RecordError(f"{at}.type", f"expected a string, got {type_name(kind)}")
        if kind in TEXT_PARTS or kind == "refusal":
            key = "refusal" if kind == "refusal" else "text"
            text = part.get(key)
            if not isinstance(text, str):
                raise RecordError(f"{at}.{key}", f"expected a string, got {type_name(text)}")
            pieces.append(text)
        elif kind in MEDIA_PARTS:
            pieces.append(MEDIA_PARTS[kind])
        else:
            marker = kind[:40]
            flags.append(f"{at}.type: unsupported content part type {marker!r}")
            pieces.append(f"[{marker}]")
    return "\n".join(pieces)


def _tool_calls(value: Any, where: str, flags: list[str], bound: Bound) -> list[dict[str, str]]:
    """Chat ``tool_calls`` (or a legacy ``function_call``) as ``[{id, name, arguments}]``."""
    if value is None:
        return []
    calls = value if isinstance(value, list) else [value]
    out: list[dict[str, str]] = []
    for k, call in enumerate(calls[:MAX_TOOL_CALLS]):
        if not isinstance(call, dict):
            flags.append(f"{where}[{k}]: tool call is not an object")
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str):
            flags.append(f"{where}[{k}].function.name: expected a string")
            name = ""
        if not isinstance(arguments, str):
            arguments = "" if arguments is None else orjson.dumps(arguments).decode()
        entry = {"name": name[:MAX_TOOL_NAME], "arguments": bound(arguments)}
        ident = call.get("id") or call.get("call_id")
        if isinstance(ident, str):
            entry["id"] = ident[:MAX_TOOL_NAME]
        out.append(entry)
    if len(calls) > MAX_TOOL_CALLS:
        flags.append(f"{where}: {len(calls)} tool calls, kept {MAX_TOOL_CALLS}")
    return out


def normalise_messages(
    raw: Any, bound: Bound = _no_bound, max_messages: int = 512, where: str = "messages"
) -> Messages:
    """Validate and normalise a chat ``messages`` list (see the module docstring)."""
    if raw is None:
        raise RecordError(where, "missing required field")
    if not isinstance(raw, list):
        raise RecordError(where, f"expected a list of messages, got {type_name(raw)}")
    if not raw:
        raise RecordError(where, "must contain at least one message")
    flags: list[str] = []
    offset = 0
    if len(raw) > max_messages:
        # Keep the newest turns: the last user message is what the model answered.
        offset = len(raw) - max_messages
        flags.append(f"{where}: {len(raw)} messages, kept the last {max_messages}")
        raw = raw[offset:]
    messages: list[dict[str, Any]] = []
    prompt, system_prompt = "", None
    for i, message in enumerate(raw, start=offset):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise RecordError(at, f"expected an object, got {type_name(message)}")
        role = message.get("role")
        if not isinstance(role, str):
            raise RecordError(f"{at}.role", f"expected a string, got {type_name(role)}")
        if role not in MESSAGE_ROLES:
            flags.append(f"{at}.role: unknown role {role[:40]!r}")
            role = role[:40]
        content = message.get("content")
        calls = _tool_calls(
            message.get("tool_calls", message.get("function_call")),
            f"{at}.tool_calls",
            flags,
            bound,
        )
        if content is None and not (role == "assistant" and calls):
            flags.append(f"{at}.content: null")
        entry: dict[str, Any] = {
            "role": role,
            "content": bound(content_text(content, f"{at}.content", flags)),
        }
        if calls:
            entry["tool_calls"] = calls
        for key in ("tool_call_id", "name"):
            value = message.get(key)
            if isinstance(value, str) and value:
                entry[key] = value[:MAX_TOOL_NAME]
        messages.append(entry)
        if role == "user":
            prompt = entry["content"]
        elif role in ("system", "developer") and system_prompt is None:
            system_prompt = entry["content"] or None
    return Messages(messages, prompt, system_prompt, flags)


def _responses_item(item: Any, at: str, flags: list[str]) -> dict[str, Any] | None:
    """One Responses API input item as a chat message (None: an item with nothing to keep)."""
    if isinstance(item, str):
        return {"role": "user", "content": item}
    if not isinstance(item, dict):
        raise RecordError(at, f"expected an object, got {type_name(item)}")
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        return {"role": item.get("role"), "content": item.get("content")}
    if kind in ("function_call", "custom_tool_call"):
        arguments = item.get("arguments", item.get("input"))
        return {"role": "assistant", "content": None,
                "tool_calls": [{"id": item.get("call_id"), "function": {"name": item.get("name"), "arguments": arguments}}]}  # fmt: skip
    if kind in ("function_call_output", "custom_tool_call_output"):
        output = item.get("output")
        if not isinstance(output, str | list):
            output = orjson.dumps(output).decode()
        return {"role": "tool", "tool_call_id": item.get("call_id"), "content": output}
    if kind == "reasoning":
        return None  # the model's own earlier reasoning, usually encrypted: nothing asked
    if isinstance(kind, str):
        # Built-in tool calls and their outputs (web_search_call, computer_call_output, ...).
        role = "tool" if kind.endswith("_output") else "assistant"
        return {"role": role, "content": f"[{kind[:40]}]"}
    raise RecordError(f"{at}.type", f"expected a string, got {type_name(kind)}")


def responses_messages(
    request: dict[str, Any], bound: Bound = _no_bound, max_messages: int = 512
) -> Messages:
    """A Responses API request's ``instructions`` and ``input`` as chat messages."""
    raw: list[Any] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str) and instructions:
        raw.append({"role": "system", "content": instructions})
    elif instructions is not None and not isinstance(instructions, str):
        raise RecordError("instructions", f"expected a string, got {type_name(instructions)}")
    given = request.get("input")
    flags: list[str] = []
    if isinstance(given, str):
        raw.append({"role": "user", "content": given})
    elif isinstance(given, list):
        for i, item in enumerate(given):
            message = _responses_item(item, f"input[{i}]", flags)
            if message is not None:
                raw.append(message)
    elif given is not None:
        raise RecordError("input", f"expected a string or a list of items, got {type_name(given)}")
    if not any(m.get("role") == "user" for m in raw if isinstance(m, dict)):
        previous = request.get("previous_response_id") or request.get("conversation")
        flags.append(
            "input: no user message" + (f" (continues {str(previous)[:80]})" if previous else "")
        )
        raw.append({"role": "user", "content": ""})
    messages = normalise_messages(raw, bound, max_messages, where="input")
    messages.flags[:0] = flags
    return messages


def request_messages(route: str, body: dict[str, Any], bound: Bound = _no_bound) -> Messages:
    """The messages of a request to ``route`` (chat, Responses, completions or embeddings)."""
    if route.endswith("/responses"):
        return responses_messages(body, bound)
    if route.endswith("/chat/completions"):
        return normalise_messages(body.get("messages"), bound)
    key = "prompt" if route.endswith("/completions") else "input"
    value = body.get(key)
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = "\n".join(value)
    elif value is None:
        raise RecordError(key, "missing required field")
    else:
        text = orjson.dumps(value).decode()  # token arrays: kept, not interpreted
    return normalise_messages([{"role": "user", "content": text}], bound)


# -- responses --------------------------------------------------------------------------------
@dataclass(slots=True)
class ResponseSummary:
    """What a response said: its text, the tools it called, its token counts."""

    text: str | None = None
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _usage(summary: ResponseSummary, usage: Any) -> None:
    if isinstance(usage, dict):
        summary.prompt_tokens = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
        summary.completion_tokens = _int(usage.get("completion_tokens", usage.get("output_tokens")))


def summarise_response(payload: Any, bound: Bound = _no_bound) -> ResponseSummary:
    """Text, tool calls and usage of a chat-completion, completion or Responses API object."""
    summary = ResponseSummary()
    if not isinstance(payload, dict):
        return summary
    _usage(summary, payload.get("usage"))
    error = payload.get("error")
    if isinstance(error, dict):
        summary.error = str(error.get("code") or error.get("type") or error.get("message"))[:200]
    if payload.get("object") == "response" or isinstance(payload.get("output"), list):
        texts: list[str] = []
        flags: list[str] = []
        for item in payload.get("output") or []:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "message":
                for part in item.get("content") or []:
                    if isinstance(part, dict) and part.get("type") in ("output_text", "refusal"):
                        text = part.get("text", part.get("refusal"))
                        if isinstance(text, str):
                            texts.append(text)
            elif item.get("type") in ("function_call", "custom_tool_call"):
                summary.tool_calls += _tool_calls(
                    {"call_id": item.get("call_id"), "name": item.get("name"),
                     "arguments": item.get("arguments", item.get("input"))}, "output", flags, bound,
                )  # fmt: skip
        if texts or summary.tool_calls or payload.get("status") == "completed":
            summary.text = bound("".join(texts))
        return summary
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        message = choice.get("message")
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, list):
                content = content_text(content, "content", [])
            if not isinstance(content, str):
                content = message.get("refusal") if isinstance(message.get("refusal"), str) else ""
            summary.text = bound(content)
            summary.tool_calls = _tool_calls(
                message.get("tool_calls", message.get("function_call")), "tool_calls", [], bound
            )
        elif isinstance(choice.get("text"), str):
            summary.text = bound(choice["text"])
    return summary


def strip_reasoning(payload: dict[str, Any]) -> dict[str, Any]:
    """Remove the reasoning a harvester wants from a chat, completion or Responses object."""
    for choice in payload.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        for holder in (choice.get("message"), choice.get("delta")):
            if isinstance(holder, dict):
                for key in REASONING_FIELDS:
                    holder.pop(key, None)
                if isinstance(holder.get("content"), str):
                    holder["content"] = strip_think(holder["content"])
        if isinstance(choice.get("text"), str):
            choice["text"] = strip_think(choice["text"])
    output = payload.get("output")
    if isinstance(output, list):
        for i, item in enumerate(output):
            if isinstance(item, dict):
                output[i] = _strip_item(item)
    return payload


def _strip_item(item: dict[str, Any]) -> dict[str, Any]:
    """A Responses output item without reasoning. A reasoning item stays, emptied, so that the
    ``output_index`` of every later item (which stream events refer to) does not move."""
    if item.get("type") == "reasoning":
        return {"type": "reasoning", "id": item.get("id"), "summary": []}
    for part in item.get("content") or []:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            part["text"] = strip_think(part["text"])
    return item


# -- streams ----------------------------------------------------------------------------------
class ThinkFilter:
    """Streaming :func:`strip_think`: feed text pieces, get what the reader may see.

    A tag split across pieces (``"<thi"`` + ``"nk>"``) is held back until it is resolved, so the
    output of any split of a text equals ``strip_think`` of the whole text.
    """

    __slots__ = ("_pending", "_skip_space", "_tag")

    _OPEN = re.compile(r"<(" + "|".join(THINK_TAGS) + r")>", re.IGNORECASE)
    _OPENERS = tuple(f"<{t}>" for t in THINK_TAGS)

    def __init__(self) -> None:
        self._pending = ""
        self._tag: str | None = None  # the open tag while inside a block
        self._skip_space = False

    def feed(self, text: str) -> str:
        buf, out = self._pending + text, []
        self._pending = ""
        while buf:
            if self._tag is None:
                if self._skip_space:
                    buf = buf.lstrip()
                    if not buf:
                        break
                    self._skip_space = False
                match = self._OPEN.search(buf)
                if match:
                    out.append(buf[: match.start()])
                    self._tag, buf = match.group(1).lower(), buf[match.end() :]
                    continue
                cut = _partial_tag(buf, self._OPENERS)
                out.append(buf[:cut])
                self._pending = buf[cut:]
                break
            close = f"</{self._tag}>"
            at = buf.lower().find(close)
            if at >= 0:
                buf, self._tag, self._skip_space = buf[at + len(close) :], None, True
                continue
            self._pending = buf[_partial_tag(buf, (close,)) :]
            break
        return "".join(out)

    def flush(self) -> str:
        """The end of the text: a held-back partial tag is text; an unclosed block is dropped."""
        rest, self._pending = ("" if self._tag else self._pending), ""
        return rest.lstrip() if self._skip_space else rest


def _partial_tag(buf: str, tags: tuple[str, ...]) -> int:
    """Where a proper prefix of one of ``tags`` starts at the end of ``buf`` (else len(buf))."""
    at = buf.rfind("<")
    if at < 0:
        return len(buf)
    tail = buf[at:].lower()
    return at if any(t.startswith(tail) and t != tail for t in tags) else len(buf)


@dataclass(slots=True)
class Event:
    """One server-sent event: its ``event:`` name (may be None) and ``data:`` text."""

    name: str | None
    data: str


def _parse_event(block: bytes) -> Event | None:
    name, data = None, []
    for line in block.decode("utf-8", errors="replace").splitlines():
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            name = line[6:].strip()
    return Event(name, "\n".join(data)) if data or name else None


class EventSplitter:
    """Cuts a byte stream into SSE event blocks (separated by a blank line), bounded."""

    def __init__(self, max_event_bytes: int = 4 * 1024 * 1024) -> None:
        self._buffer = b""
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        while True:
            at = self._buffer.find(b"\n\n")
            if at < 0:
                break
            block, self._buffer = self._buffer[: at + 2], self._buffer[at + 2 :]
            yield block
        if len(self._buffer) > self.max_event_bytes:
            block, self._buffer = self._buffer, b""
            yield block  # an unterminated giant: pass it on, do not grow without bound

    def rest(self) -> bytes:
        block, self._buffer = self._buffer, b""
        return block


class StreamReader:
    """Accumulates what an SSE stream (chat completions or Responses API) said, for the log."""

    def __init__(self, bound: Bound = _no_bound, max_text: int = 32_768) -> None:
        self.bound = bound
        self.max_text = max_text
        self._text: list[str] = []
        self._size = 0
        self._calls: dict[int, dict[str, str]] = {}
        self.final: ResponseSummary | None = None  # from a Responses ``response.completed``
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def _add(self, piece: Any) -> None:
        if isinstance(piece, str) and self._size < self.max_text:
            self._text.append(piece)
            self._size += len(piece)

    def observe(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if isinstance(kind, str):  # Responses API events
            if kind == "response.output_text.delta":
                self._add(event.get("delta"))
            elif kind in ("response.completed", "response.incomplete", "response.failed"):
                self.final = summarise_response(event.get("response"), self.bound)
            return
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = _int(usage.get("prompt_tokens"))
            self.completion_tokens = _int(usage.get("completion_tokens"))
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            self._add(delta.get("content") if "content" in delta else choice.get("text"))
            for call in delta.get("tool_calls") or []:
                if not isinstance(call, dict) or len(self._calls) > MAX_TOOL_CALLS:
                    continue
                slot = self._calls.setdefault(
                    _int(call.get("index")) or 0, {"name": "", "arguments": ""}
                )
                if isinstance(call.get("id"), str):
                    slot["id"] = call["id"][:MAX_TOOL_NAME]
                function = call.get("function") if isinstance(call.get("function"), dict) else {}
                if isinstance(function.get("name"), str):
                    slot["name"] = (slot["name"] + function["name"])[:MAX_TOOL_NAME]
                if (
                    isinstance(function.get("arguments"), str)
                    and len(slot["arguments"]) < self.max_text
                ):
                    slot["arguments"] += function["arguments"]

    def summary(self) -> ResponseSummary:
        if self.final is not None:
            return self.final
        calls = [
            {**c, "arguments": self.bound(c["arguments"])} for _, c in sorted(self._calls.items())
        ]
        return ResponseSummary(self.bound("".join(self._text)), calls,
                               self.prompt_tokens, self.completion_tokens)  # fmt: skip


class StreamShaper:
    """Rewrites an SSE stream so it carries no reasoning, event by event.

    Chat chunks lose their reasoning fields and their ``<think>`` text (per choice, across
    chunks); Responses streams lose their reasoning events, keep emptied reasoning items (so
    indices hold) and lose ``<think>`` text from output-text deltas and from the final objects.
    """

    _DROP_PREFIXES = ("response.reasoning",)

    def __init__(self) -> None:
        self._filters: dict[Any, ThinkFilter] = {}

    def _filter(self, key: Any) -> ThinkFilter:
        return self._filters.setdefault(key, ThinkFilter())

    def shape(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The events to send instead of ``event`` (none, the event rewritten, or more)."""
        kind = event.get("type")
        if isinstance(kind, str):
            return self._shape_responses(kind, event)
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            key = choice.get("index", 0)
            holder = choice.get("delta") if isinstance(choice.get("delta"), dict) else choice
            field_name = "content" if holder is not choice else "text"
            for name in REASONING_FIELDS:
                holder.pop(name, None)
            text = holder.get(field_name)
            if isinstance(text, str) or choice.get("finish_reason"):
                shown = self._filter(key).feed(text) if isinstance(text, str) else ""
                if choice.get("finish_reason"):
                    shown += self._filter(key).flush()
                if isinstance(text, str) or shown:
                    holder[field_name] = shown
        return [event]

    def _shape_responses(self, kind: str, event: dict[str, Any]) -> list[dict[str, Any]]:
        if kind.startswith(self._DROP_PREFIXES):
            return []
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            key = (event.get("item_id"), event.get("content_index"))
            event["delta"] = self._filter(key).feed(event["delta"])
        elif kind == "response.output_text.done":
            key = (event.get("item_id"), event.get("content_index"))
            tail = self._filter(key).flush()
            if isinstance(event.get("text"), str):
                event["text"] = strip_think(event["text"])
            if tail:  # a held-back partial tag that was text after all
                held = {
                    k: event[k] for k in ("item_id", "output_index", "content_index") if k in event
                }
                return [{"type": "response.output_text.delta", **held, "delta": tail}, event]
        elif kind in ("response.output_item.added", "response.output_item.done"):
            if isinstance(event.get("item"), dict):
                event["item"] = _strip_item(event["item"])
        elif kind in ("response.content_part.added", "response.content_part.done"):
            part = event.get("part")
            if isinstance(part, dict) and part.get("type") == "reasoning_text":
                return []
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                part["text"] = strip_think(part["text"])
        elif isinstance(event.get("response"), dict):
            strip_reasoning(event["response"])
        return [event]


def _first_output_text(output: Any) -> dict[str, Any] | None:
    """The first ``output_text`` part of a Responses object's message items (where text is
    appended, in a response object and in its stream alike)."""
    for item in output if isinstance(output, list) else []:
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str):  # fmt: skip
                    return part
    return None


def append_text(payload: dict[str, Any], suffix: str) -> dict[str, Any]:
    """``payload`` with ``suffix`` after its answer text (trailing space trimmed first): every
    choice of a chat completion or completion, the first ``output_text`` part of a Responses
    object (where its stream gets it too: :class:`StreamAppender`). In place."""
    for choice in payload.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            message["content"] = message["content"].rstrip() + suffix
        elif isinstance(choice.get("text"), str):
            choice["text"] = choice["text"].rstrip() + suffix
    part = _first_output_text(payload.get("output"))
    if part is not None:
        part["text"] = part["text"].rstrip() + suffix
        _rejoin_output_text(payload)
    return payload


def _rejoin_output_text(response: dict[str, Any]) -> None:
    """A Responses object's ``output_text`` convenience field (where a server sends one) as the
    concatenation of its message items' text parts, which it abbreviates."""
    if isinstance(response.get("output_text"), str):
        response["output_text"] = "".join(
            part["text"]
            for item in response.get("output") or []
            if isinstance(item, dict) and item.get("type") == "message"
            for part in item.get("content") or []
            if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str)
        )  # fmt: skip


#: Responses stream events that carry the whole response object at its end.
FINAL_RESPONSE_EVENTS = ("response.completed", "response.incomplete", "response.failed")


class StreamAppender:
    """Adds ``suffix`` to the end of a streamed answer, once, event by event.

    Chat completion and completion streams get one more chunk per choice, carrying the suffix,
    just before the chunk that finishes that choice. A Responses stream gets one more
    ``response.output_text.delta`` before the first ``response.output_text.done``, and the
    suffix in the events that repeat that text (the ``done`` event itself,
    ``response.content_part.done``, ``response.output_item.done`` and the final response
    object), so a client that reads deltas and one that reads the final object see the same
    text. A stream with no answer text (a tool call only) is left alone. Inserted events carry
    no ``sequence_number``.
    """

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self._done = not suffix
        self._target: tuple[Any, Any] | None = None  # (item_id, content_index) that got it
        self._finished: set[Any] = set()  # chat choices that got it

    def apply(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The events to send instead of ``event`` (``event`` first rewritten, or preceded)."""
        kind = event.get("type")
        if isinstance(kind, str):
            return self._responses(kind, event)
        if not self.suffix:
            return [event]
        extra = []
        for choice in event.get("choices") or []:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                index = choice.get("index", 0)
                if index not in self._finished:
                    self._finished.add(index)
                    extra.append(self._chunk(event, choice))
        return [*extra, event]

    def _chunk(self, like: dict[str, Any], choice: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = (
            {"text": self.suffix} if "text" in choice and "delta" not in choice else {"delta": {"content": self.suffix}}
        )  # fmt: skip
        return {"id": like.get("id"), "object": like.get("object"), "created": like.get("created"),
                "model": like.get("model"),
                "choices": [{"index": choice.get("index", 0), **body, "finish_reason": None}]}  # fmt: skip

    def _responses(self, kind: str, event: dict[str, Any]) -> list[dict[str, Any]]:
        if kind == "response.output_text.done" and not self._done:
            self._done = True
            self._target = (event.get("item_id"), event.get("content_index"))
            if isinstance(event.get("text"), str):
                event["text"] += self.suffix
            held = {k: event[k] for k in ("item_id", "output_index", "content_index") if k in event}
            return [{"type": "response.output_text.delta", **held, "delta": self.suffix}, event]
        if self._target is None:
            return [event]
        item_id, index = self._target
        if kind == "response.content_part.done" and (event.get("item_id"), event.get("content_index")) == self._target:  # fmt: skip
            part = event.get("part")
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                part["text"] += self.suffix
        elif kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            self._extend(event["item"], item_id, index)
        elif kind in FINAL_RESPONSE_EVENTS and isinstance(event.get("response"), dict):
            for item in event["response"].get("output") or []:
                if isinstance(item, dict):
                    self._extend(item, item_id, index)
            _rejoin_output_text(event["response"])
        return [event]

    def _extend(self, item: dict[str, Any], item_id: Any, index: Any) -> None:
        content = item.get("content")
        if item.get("id") != item_id or not isinstance(content, list) or not isinstance(index, int):
            return
        if 0 <= index < len(content) and isinstance(content[index], dict) and isinstance(content[index].get("text"), str):  # fmt: skip
            content[index]["text"] += self.suffix


#: Characters per token for a cap applied to text already generated (OpenAI's rule of thumb for
#: English). Counting characters, not words, makes the cut the same for a whole answer and for
#: any split of it into stream chunks.
CHARS_PER_TOKEN = 4


def cap_answer(payload: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """``payload`` with its answer text cut at about ``max_tokens`` tokens
    (:data:`CHARS_PER_TOKEN` characters each), in place: each choice of a chat completion or
    completion on its own (its ``finish_reason`` becomes ``length`` where cut), and a Responses
    object's message text in order under one budget (``status`` ``incomplete``, reason
    ``max_output_tokens``, where cut), as the upstream reports a cap it hit itself."""
    budget = max_tokens * CHARS_PER_TOKEN
    for choice in payload.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        holder, name = (message, "content") if isinstance(message, dict) else (choice, "text")
        text = holder.get(name)
        if isinstance(text, str) and len(text) > budget:
            holder[name] = text[:budget]
            choice["finish_reason"] = "length"
    left, cut = budget, False
    for item in payload.get("output") if isinstance(payload.get("output"), list) else []:
        if not isinstance(item, dict) or item.get("type") != "message":
            continue
        for part in item.get("content") or []:
            if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str):  # fmt: skip
                kept = part["text"][:left]
                cut = cut or len(kept) < len(part["text"])
                part["text"], left = kept, left - len(kept)
    if cut:
        payload["status"] = "incomplete"
        payload["incomplete_details"] = {"reason": "max_output_tokens"}
        _rejoin_output_text(payload)
    return payload


class StreamCapper:
    """:func:`cap_answer` for a stream, event by event: the client receives exactly the text
    :func:`cap_answer` leaves of the whole answer, whatever the split.

    Chat and completion chunks keep each choice's text up to its budget (text after it is
    emptied; the finishing chunk says ``length``); a Responses stream keeps deltas up to one
    budget for the response (later deltas are dropped), and once it has cut, the events that
    repeat the text (``output_text.done``, ``content_part.done``, ``output_item.done``) carry
    what was sent and the final event becomes ``response.incomplete``.
    """

    def __init__(self, max_tokens: int) -> None:
        self.budget = max_tokens * CHARS_PER_TOKEN
        self._used: dict[Any, int] = {}
        self._cut: set[Any] = set()
        self._left = self.budget
        self._sent: dict[tuple[Any, Any], str] = {}
        self._truncated = False

    def apply(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if isinstance(kind, str):
            return self._responses(kind, event)
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            holder = choice.get("delta") if isinstance(choice.get("delta"), dict) else choice
            name = "content" if holder is not choice else "text"
            text = holder.get(name)
            if isinstance(text, str):
                used = self._used.get(index, 0)
                kept = text[: max(0, self.budget - used)]
                self._used[index] = used + len(kept)
                if len(kept) < len(text):
                    self._cut.add(index)
                holder[name] = kept
            if choice.get("finish_reason") and index in self._cut:
                choice["finish_reason"] = "length"
        return [event]

    def _responses(self, kind: str, event: dict[str, Any]) -> list[dict[str, Any]]:
        key = (event.get("item_id"), event.get("content_index"))
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            kept = event["delta"][: self._left]
            self._left -= len(kept)
            self._truncated = self._truncated or len(kept) < len(event["delta"])
            self._sent[key] = self._sent.get(key, "") + kept
            if not kept:
                return []
            event["delta"] = kept
            return [event]
        if not self._truncated:
            return [event]
        if kind == "response.output_text.done":
            event["text"] = self._sent.get(key, "")
        elif kind == "response.content_part.done" and isinstance(event.get("part"), dict):
            if event["part"].get("type") == "output_text":
                event["part"]["text"] = self._sent.get(key, "")
        elif kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            self._resend(event["item"])
        elif kind in FINAL_RESPONSE_EVENTS and isinstance(event.get("response"), dict):
            response = event["response"]
            for item in response.get("output") or []:
                if isinstance(item, dict):
                    self._resend(item)
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": "max_output_tokens"}
            _rejoin_output_text(response)
            event["type"] = "response.incomplete"
        return [event]

    def _resend(self, item: dict[str, Any]) -> None:
        """An item's output-text parts as what was sent of them."""
        if item.get("type") != "message":
            return
        for index, part in enumerate(item.get("content") or []):
            if isinstance(part, dict) and part.get("type") == "output_text":
                part["text"] = self._sent.get((item.get("id"), index), "")


def event_name(block_name: str | None, payload: dict[str, Any]) -> str | None:
    """The SSE ``event:`` name for ``payload`` (an event rewritten or inserted in a stream whose
    blocks were named): a Responses event is named by its ``type``."""
    kind = payload.get("type")
    return kind if block_name is not None and isinstance(kind, str) else block_name


def encode_event(name: str | None, payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    head = f"event: {name}\n" if name else ""
    return (head + "data: " + data + "\n\n").encode()


def parse_event(block: bytes) -> tuple[Event | None, dict[str, Any] | None]:
    """An SSE block as (event, decoded JSON data or None for ``[DONE]`` and non-JSON data)."""
    event = _parse_event(block)
    if event is None or not event.data or event.data.strip() == "[DONE]":
        return event, None
    try:
        data = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return event, None
    return event, data if isinstance(data, dict) else None
