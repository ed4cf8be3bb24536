"""distillwatch as a LiteLLM proxy guard (``CustomLogger``): decide, shape and log in LiteLLM.

Install the extra (``pip install 'distillwatch[litellm]'``; it pins a LiteLLM range that skips
the malicious 1.82.7 and 1.82.8 releases). Next to your LiteLLM ``config.yaml`` put a module,
say ``distillwatch_guard.py``::

    from distillwatch.integrations.litellm import DistillwatchGuard
    guard = DistillwatchGuard.from_env()

and reference it::

    litellm_settings:
      callbacks: distillwatch_guard.guard

Settings come from the environment: ``DISTILLWATCH_VERDICTS`` (Contract-2 file, hot-reloaded),
``DISTILLWATCH_STORE`` (DuckDB store: exchange log, audit log, cluster artefacts),
``DISTILLWATCH_POLICY`` (YAML; default: the shipped policy), ``DISTILLWATCH_REDIS``,
``DISTILLWATCH_SHADOW=1``, ``DISTILLWATCH_ACCOUNT_FROM`` (``key``: the LiteLLM key's user, team
or key hash, the default; ``user``: the request's ``user`` field, for platforms whose customers
are end users), ``DISTILLWATCH_TLS_HEADER`` (default ``x-ja4``).

Hooks: ``async_pre_call_hook`` decides and refuses (LiteLLM answers with the status and an
OpenAI-shaped error) or caps ``max_tokens``; ``async_post_call_success_hook`` strips reasoning
from shaped responses; ``async_log_success_event`` logs the exchange in Contract-1 form.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

from distillwatch.enforce.decide import Decision
from distillwatch.enforce.enforcer import Enforcer
from distillwatch.enforce.policy import load_policy
from distillwatch.enforce.signals import key_account

_THINK_MARK = ("<think>", "<thinking>")


def _prompt(data: dict[str, Any]) -> str:
    for message in reversed(data.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content[:8000]
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))[:8000]
    return data.get("prompt", "")[:8000] if isinstance(data.get("prompt"), str) else ""


class DistillwatchGuard(CustomLogger):
    def __init__(
        self, enforcer: Enforcer, account_from: str = "key", tls_header: str = "x-ja4"
    ) -> None:
        super().__init__()
        self.enforcer = enforcer
        self.account_from = account_from
        self.tls_header = tls_header.lower()
        self._started = False

    @classmethod
    def from_env(cls) -> DistillwatchGuard:
        env = os.environ
        policy = load_policy(
            Path(env["DISTILLWATCH_POLICY"]) if env.get("DISTILLWATCH_POLICY") else None
        )
        enforcer = Enforcer(
            policy,
            verdicts=Path(env["DISTILLWATCH_VERDICTS"])
            if env.get("DISTILLWATCH_VERDICTS")
            else None,
            store=Path(env["DISTILLWATCH_STORE"]) if env.get("DISTILLWATCH_STORE") else None,
            redis_url=env.get("DISTILLWATCH_REDIS") or None,
            shadow=env.get("DISTILLWATCH_SHADOW", "") in ("1", "true", "yes"),
        )
        return cls(
            enforcer,
            env.get("DISTILLWATCH_ACCOUNT_FROM", "key"),
            env.get("DISTILLWATCH_TLS_HEADER", "x-ja4"),
        )

    def _account(self, user_api_key_dict: Any, data: dict[str, Any]) -> str:
        if self.account_from == "user" and isinstance(data.get("user"), str) and data["user"]:
            return data["user"][:256]
        for attr in ("user_id", "team_id"):
            value = getattr(user_api_key_dict, attr, None)
            if isinstance(value, str) and value:
                return value
        token = (
            getattr(user_api_key_dict, "api_key", None)
            or getattr(user_api_key_dict, "token", None)
            or "anonymous"
        )
        return key_account(str(token))

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any
    ) -> dict:
        if not self._started:
            self.enforcer.start()
            self._started = True
        account = self._account(user_api_key_dict, data)
        metadata = data.setdefault("metadata", {})
        request = data.get("proxy_server_request") or {}
        headers = {str(k).lower(): v for k, v in (request.get("headers") or {}).items()}
        ip = metadata.get("requester_ip_address") or None
        when = datetime.now(UTC).replace(tzinfo=None)
        decision, refusal = await self.enforcer.evaluate(
            account, ip, headers.get(self.tls_header), _prompt(data), when
        )
        if refusal is not None:
            raise HTTPException(status_code=refusal.status, detail={"error": {
                "message": refusal.message, "type": refusal.kind, "code": refusal.code}})  # fmt: skip
        metadata["distillwatch"] = {
            "account": account,
            "decision": decision.as_dict(),
            "ts": when.isoformat(),
        }
        if not self.enforcer.shadow and decision.action == "shape" and decision.max_tokens:
            data["max_tokens"] = min(
                int(data.get("max_tokens") or decision.max_tokens), decision.max_tokens
            )
        return data

    async def async_post_call_success_hook(
        self, data: dict, user_api_key_dict: Any, response: Any
    ) -> Any:
        info = (data.get("metadata") or {}).get("distillwatch") or {}
        decision = info.get("decision") or {}
        if (
            self.enforcer.shadow
            or decision.get("action") != "shape"
            or not decision.get("strip_reasoning")
        ):
            return response
        for choice in getattr(response, "choices", None) or []:
            message = getattr(choice, "message", None)
            content = getattr(message, "content", None)
            if isinstance(content, str) and any(mark in content for mark in _THINK_MARK):
                from distillwatch.enforce.app import _THINK

                message.content = _THINK.sub("", content)
            if message is not None and getattr(message, "reasoning_content", None):
                message.reasoning_content = None
        return response

    async def async_log_success_event(
        self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        params = kwargs.get("litellm_params") or {}
        info = {}
        for metadata in (
            params.get("metadata"),
            kwargs.get("metadata"),
            (kwargs.get("standard_logging_object") or {}).get("metadata"),
        ):
            if isinstance(metadata, dict) and metadata.get("distillwatch"):
                info = metadata["distillwatch"]
                break
        account = info.get("account")
        if not account:
            return
        usage = getattr(response_obj, "usage", None)
        completion = getattr(usage, "completion_tokens", None)
        when = (
            datetime.fromisoformat(info["ts"])
            if info.get("ts")
            else datetime.now(UTC).replace(tzinfo=None)
        )
        decision = Decision(**{k: v for k, v in (info.get("decision") or {"action": "allow"}).items()
                               if k in Decision.__dataclass_fields__})  # fmt: skip
        await self.enforcer.record_usage(
            account, decision, when, completion if isinstance(completion, int) else None
        )
        choices = getattr(response_obj, "choices", None) or []
        text = getattr(getattr(choices[0], "message", None), "content", None) if choices else None
        self.enforcer.log_exchange({
            "id": "ll-" + str(kwargs.get("litellm_call_id") or getattr(response_obj, "id", "") or "unknown")[:200],
            "ts": when.isoformat() + "Z",
            "account_id": account,
            "model": str(kwargs.get("model") or "unknown")[:200],
            "messages": kwargs.get("messages") or [{"role": "user", "content": ""}],
            "response": text[:32_768] if isinstance(text, str) else None,
            "endpoint": "/v1/chat/completions",
            "completion_tokens": completion if isinstance(completion, int) else None,
            "prompt_tokens": getattr(usage, "prompt_tokens", None),
            "status": 200,
            "proxy_decision": (info.get("decision") or {}).get("action", "allow"),
        })  # fmt: skip
