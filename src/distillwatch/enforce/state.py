"""Shared enforcement state: rate counters, sticky decisions, the admin allowlist.

In-process by default (one replica, nothing to set up). With Redis, every replica reads and
writes the same keys, so a limit of 10 requests a minute is 10 across the fleet, and a decision
one replica makes (a challenge for a freshly linked hydra account) holds on all of them.
Counters are fixed one-minute windows (``INCRBY`` + ``EXPIRE`` in one pipeline): atomic across
replicas and cheap.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from distillwatch.errors import StateError

WINDOW_SECONDS = 60


class State(Protocol):
    async def hit(self, key: str, amount: int, now: float) -> int: ...
    async def count(self, key: str, now: float) -> int: ...
    async def get_decision(self, account: str) -> dict[str, Any] | None: ...
    async def set_decision(self, account: str, decision: dict[str, Any], ttl: int) -> None: ...
    async def delete_decision(self, account: str) -> bool: ...
    async def decisions(self) -> dict[str, dict[str, Any]]: ...
    async def allowlist(self) -> set[str]: ...
    async def is_allowed(self, account: str) -> bool: ...
    async def allow(self, account: str, allowed: bool) -> None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


def _window(now: float) -> int:
    return int(now // WINDOW_SECONDS)


class MemoryState:
    """Single-process state."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._decisions: dict[str, tuple[dict[str, Any], float]] = {}
        self._allow: set[str] = set()

    async def hit(self, key: str, amount: int, now: float) -> int:
        window = _window(now)
        slot = (key, window)
        self._counts[slot] = self._counts.get(slot, 0) + amount
        if len(self._counts) > 100_000:  # drop old windows
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window - 1}
        return self._counts[slot]

    async def count(self, key: str, now: float) -> int:
        return self._counts.get((key, _window(now)), 0)

    async def get_decision(self, account: str) -> dict[str, Any] | None:
        entry = self._decisions.get(account)
        if entry is None:
            return None
        decision, expires = entry
        if expires < time.time():
            self._decisions.pop(account, None)
            return None
        return decision

    async def set_decision(self, account: str, decision: dict[str, Any], ttl: int) -> None:
        self._decisions[account] = (decision, time.time() + ttl)

    async def delete_decision(self, account: str) -> bool:
        return self._decisions.pop(account, None) is not None

    async def decisions(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        return {a: d for a, (d, expires) in self._decisions.items() if expires >= now}

    async def allowlist(self) -> set[str]:
        return set(self._allow)

    async def is_allowed(self, account: str) -> bool:
        return account in self._allow

    async def allow(self, account: str, allowed: bool) -> None:
        (self._allow.add if allowed else self._allow.discard)(account)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class RedisState:
    """State in Redis, shared by every proxy replica pointed at the same server."""

    def __init__(self, url: str, prefix: str = "dw:") -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._prefix = prefix
        self._errors = (redis.RedisError, OSError)

    async def _do(self, call: Any) -> Any:
        try:
            return await call
        except self._errors as exc:
            raise StateError(f"redis: {exc}") from None

    async def hit(self, key: str, amount: int, now: float) -> int:
        name = f"{self._prefix}c:{key}:{_window(now)}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.incrby(name, amount)
        pipe.expire(name, WINDOW_SECONDS * 2)
        result = await self._do(pipe.execute())
        return int(result[0])

    async def count(self, key: str, now: float) -> int:
        value = await self._do(self._redis.get(f"{self._prefix}c:{key}:{_window(now)}"))
        return int(value or 0)

    async def get_decision(self, account: str) -> dict[str, Any] | None:
        value = await self._do(self._redis.get(f"{self._prefix}d:{account}"))
        return json.loads(value) if value else None

    async def set_decision(self, account: str, decision: dict[str, Any], ttl: int) -> None:
        await self._do(self._redis.set(f"{self._prefix}d:{account}", json.dumps(decision), ex=ttl))

    async def delete_decision(self, account: str) -> bool:
        return bool(await self._do(self._redis.delete(f"{self._prefix}d:{account}")))

    async def decisions(self) -> dict[str, dict[str, Any]]:
        result = {}
        async for key in self._redis.scan_iter(match=f"{self._prefix}d:*", count=500):
            value = await self._do(self._redis.get(key))
            if value:
                result[key.decode()[len(self._prefix) + 2 :]] = json.loads(value)
        return result

    async def allowlist(self) -> set[str]:
        members = await self._do(self._redis.smembers(f"{self._prefix}allow"))
        return {m.decode() for m in members}

    async def is_allowed(self, account: str) -> bool:
        return bool(await self._do(self._redis.sismember(f"{self._prefix}allow", account)))

    async def allow(self, account: str, allowed: bool) -> None:
        key = f"{self._prefix}allow"
        await self._do(
            self._redis.sadd(key, account) if allowed else self._redis.srem(key, account)
        )

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except self._errors:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
