"""Users, roles, sessions and login throttling for the analyst workspace.

Passwords are hashed with Argon2id (``argon2-cffi``, its default parameters). A session is a
random 256-bit token in an HttpOnly, SameSite=Strict cookie; the store keeps only its SHA-256, so
a copy of the store does not let anyone log in. Each session has its own CSRF token, which every
state-changing form must send back. Roles are ordered: ``viewer`` reads, ``analyst`` also acts
and works cases, ``admin`` also manages users.

Reads and writes: ws_users, ws_sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from distillwatch.errors import InputError
from distillwatch.store import Store

ROLES = ("viewer", "analyst", "admin")
SESSION_HOURS = 12
MIN_PASSWORD_CHARS = 10
_USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-@")


@dataclass(frozen=True)
class User:
    username: str
    role: str
    csrf: str = ""

    def can(self, role: str) -> bool:
        """Whether this user's role is at least ``role``."""
        return ROLES.index(self.role) >= ROLES.index(role)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    """The workspace's accounts (in the store, table ``ws_users``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._hasher = PasswordHasher()
        # Verified against when a username is unknown, so both cases cost one Argon2 check.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def add(self, username: str, password: str, role: str) -> User:
        username = username.strip().lower()
        if not username or len(username) > 64 or not set(username) <= _USERNAME_CHARS:
            raise InputError("username: 1-64 characters from a-z 0-9 . _ - @")
        if role not in ROLES:
            raise InputError(f"role: one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD_CHARS:
            raise InputError(f"password: at least {MIN_PASSWORD_CHARS} characters")
        self.store.run(
            "INSERT OR REPLACE INTO ws_users VALUES (?, ?, ?, ?, false)",
            [username, self._hasher.hash(password), role, _now()],
        )
        self.store.audit("workspace", "workspace.user.set", {"username": username, "role": role})
        return User(username, role)

    def verify(self, username: str, password: str) -> User | None:
        rows = self.store.run(
            "SELECT password_hash, role FROM ws_users WHERE username = ? AND NOT disabled",
            [username.strip().lower()[:64]],
        )
        stored = rows[0][0] if rows else self._dummy
        try:
            self._hasher.verify(stored, password[:1024])
        except (VerificationError, InvalidHashError):
            return None
        return User(username.strip().lower(), rows[0][1]) if rows else None

    def count(self) -> int:
        return int(self.store.run("SELECT count(*) FROM ws_users")[0][0])


class Sessions:
    """Server-side sessions: the cookie holds a random token, the store its hash."""

    def __init__(self, store: Store, hours: int = SESSION_HOURS) -> None:
        self.store = store
        self.hours = hours

    def start(self, user: User) -> tuple[str, User]:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = _now()
        self.store.run(
            "INSERT INTO ws_sessions VALUES (?, ?, ?, ?, ?)",
            [_digest(token), user.username, csrf, now, now + timedelta(hours=self.hours)],
        )
        self.store.run("DELETE FROM ws_sessions WHERE expires_at < ?", [now])
        return token, User(user.username, user.role, csrf)

    def user(self, token: str | None) -> User | None:
        if not token or len(token) > 100:
            return None
        rows = self.store.run(
            """SELECT s.username, u.role, s.csrf FROM ws_sessions s
               JOIN ws_users u USING (username)
               WHERE s.token_hash = ? AND s.expires_at > ? AND NOT u.disabled""",
            [_digest(token), _now()],
        )
        return User(*rows[0]) if rows else None

    def end(self, token: str | None) -> None:
        if token:
            self.store.run("DELETE FROM ws_sessions WHERE token_hash = ?", [_digest(token)])


def csrf_ok(user: User, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(user.csrf, str(sent))


class LoginLimiter:
    """At most ``attempts`` failed logins per ``window`` seconds for one username and for one
    client address (whichever fills first), in process."""

    def __init__(self, attempts: int = 5, window: float = 300.0) -> None:
        self.attempts = attempts
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] < now - self.window:
            failures.popleft()
        return failures

    def blocked(self, username: str, client: str) -> float:
        """Seconds until another attempt is allowed (0: allowed now)."""
        now = time.monotonic()
        waits = []
        for key in (f"u:{username.lower()[:64]}", f"c:{client}"):
            failures = self._recent(key, now)
            if len(failures) >= self.attempts:
                waits.append(failures[0] + self.window - now)
        return max(waits, default=0.0)

    def failed(self, username: str, client: str) -> None:
        now = time.monotonic()
        if len(self._failures) > 50_000:
            self._failures.clear()
        for key in (f"u:{username.lower()[:64]}", f"c:{client}"):
            self._recent(key, now).append(now)
