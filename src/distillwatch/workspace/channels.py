"""How an analyst's action reaches the running gateways: the workspace's one extension point.

A :class:`Channel` turns "block these accounts for a week" into standing decisions every proxy
replica enforces on its next request:

- :class:`StateChannel` writes them into the enforcement state the proxies share (Redis,
  ``proxy --redis URL``): the same keys the proxies' own sticky decisions and allowlist use, so
  every replica sees the change on the next request.
- :class:`AdminApiChannel` calls each proxy's token-protected admin API (``/admin/extend``,
  ``/admin/lift``, ``/admin/allowlist``), for proxies that keep their state in process.
- :class:`RecordOnlyChannel` delivers nothing (no gateway configured); the workspace says so.

Write another (a message bus, a cloud WAF) by subclassing :class:`Channel`. Failures are raised
as :class:`~distillwatch.errors.StateError` so the web layer can say what did not arrive.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

from distillwatch.errors import StateError

#: Accounts per /admin/extend call (a proxy takes up to 5,000 in one).
BATCH = 1_000


class Channel(ABC):
    """Delivers standing decisions to gateways. Subclasses implement the three methods."""

    name = "base"

    def describe(self) -> str:
        return self.name

    @abstractmethod
    async def decide(self, accounts: list[str], decision: dict[str, Any], ttl: int) -> int:
        """Make ``decision`` (``action`` plus its parameters) stand for ``ttl`` seconds on each
        account; returns how many gateways (or shared stores) acknowledged."""

    @abstractmethod
    async def lift(self, accounts: list[str]) -> int:
        """Remove any standing decision on the accounts."""

    @abstractmethod
    async def allow(self, accounts: list[str], allowed: bool) -> int:
        """Add the accounts to (or remove them from) the gateways' allowlist."""

    async def close(self) -> None:
        return None


class RecordOnlyChannel(Channel):
    """No gateway connected: actions are recorded and audited, not enforced."""

    name = "record-only"

    def describe(self) -> str:
        return "no gateway connected (actions are recorded, not enforced)"

    async def decide(self, accounts: list[str], decision: dict[str, Any], ttl: int) -> int:
        return 0

    async def lift(self, accounts: list[str]) -> int:
        return 0

    async def allow(self, accounts: list[str], allowed: bool) -> int:
        return 0


class StateChannel(Channel):
    """Writes into the proxies' shared enforcement state (``RedisState`` or any ``State``)."""

    name = "redis"

    def __init__(self, state: Any, label: str = "redis") -> None:
        self.state = state
        self.label = label

    @classmethod
    def redis(cls, url: str) -> StateChannel:
        from distillwatch.enforce.state import RedisState

        return cls(RedisState(url), label=f"shared state {_redact(url)}")

    def describe(self) -> str:
        return self.label

    async def decide(self, accounts: list[str], decision: dict[str, Any], ttl: int) -> int:
        for account in accounts:
            await self.state.set_decision(account, dict(decision), ttl)
        return 1

    async def lift(self, accounts: list[str]) -> int:
        for account in accounts:
            await self.state.delete_decision(account)
        return 1

    async def allow(self, accounts: list[str], allowed: bool) -> int:
        for account in accounts:
            await self.state.allow(account, allowed)
        return 1

    async def close(self) -> None:
        await self.state.close()


class AdminApiChannel(Channel):
    """Calls every listed proxy's admin API (bearer token); all must acknowledge."""

    name = "admin-api"

    def __init__(
        self, urls: list[str], token: str, timeout: float = 5.0, concurrency: int = 16
    ) -> None:
        import httpx

        self.urls = [u.rstrip("/") for u in urls]
        self._client = httpx.AsyncClient(
            timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )
        self._errors = (httpx.HTTPError,)
        self._slots = asyncio.Semaphore(concurrency)

    def describe(self) -> str:
        return "admin API of " + ", ".join(self.urls)

    async def _post(self, url: str, body: dict[str, Any], method: str = "POST") -> None:
        async with self._slots:
            try:
                response = await self._client.request(method, url, json=body)
            except self._errors as exc:
                raise StateError(f"{url}: {type(exc).__name__}: {exc}"[:300]) from None
        if response.status_code != 200:
            raise StateError(f"{url}: HTTP {response.status_code}: {response.text[:200]}")

    async def _each(self, path: str, bodies: list[dict[str, Any]], method: str = "POST") -> int:
        await asyncio.gather(
            *(self._post(f"{url}{path}", body, method) for url in self.urls for body in bodies)
        )
        return len(self.urls)

    async def decide(self, accounts: list[str], decision: dict[str, Any], ttl: int) -> int:
        reason = "; ".join(decision.get("reasons", []))[:200]
        fields = {k: v for k, v in decision.items() if k != "reasons"}
        bodies = [
            {**fields, "account_ids": accounts[i : i + BATCH], "ttl_seconds": ttl, "reason": reason}
            for i in range(0, len(accounts), BATCH)
        ]
        return await self._each("/admin/extend", bodies)

    async def lift(self, accounts: list[str]) -> int:
        bodies = [{"account_id": a, "allowlist": False} for a in accounts]
        return await self._each("/admin/lift", bodies)

    async def allow(self, accounts: list[str], allowed: bool) -> int:
        bodies = [{"account_id": a} for a in accounts]
        return await self._each("/admin/allowlist", bodies, "POST" if allowed else "DELETE")

    async def close(self) -> None:
        await self._client.aclose()


def _redact(url: str) -> str:
    """A Redis URL without its password."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
