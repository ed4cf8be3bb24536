"""Keys agreed per sharing group, and the keyed hashes that stand in for private artefacts.

Prompt templates are low-entropy (a few words people really type), and payment fingerprints
are short: a plain hash of either can be reversed by hashing guesses. So anything private
leaves the machine only as ``HMAC-SHA256(group key, kind || 0x00 || value)``: a partner holding
the same group key can compute it for what *it* sees and compare; anyone without the key
learns nothing but equality between entries of one bundle.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from distillwatch.errors import SharingKeyError

#: Artefact kinds that are private: shared only as keyed hashes.
PRIVATE_KINDS = frozenset({"tpl", "pay", "nd"})
#: How a key is written in a key file: ``<key id> <64 hex digits>`` on one line.
_KEY_LINE = re.compile(r"^([A-Za-z0-9_.-]{1,64})\s+([0-9a-f]{64})\s*$")
ENV_KEY_FILE = "DISTILLWATCH_SHARING_KEY"


@dataclass(frozen=True)
class SharingKey:
    """One sharing group's key: ``key_id`` travels in bundles, ``secret`` never does."""

    key_id: str
    secret: bytes

    def digest(self, kind: str, value: str) -> str:
        """The keyed hash of one private artefact (hex, 128 bits)."""
        mac = hmac.new(self.secret, kind.encode() + b"\x00" + value.encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    @classmethod
    def generate(cls, key_id: str = "local") -> SharingKey:
        return cls(key_id, secrets.token_bytes(32))

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{self.key_id} {self.secret.hex()}\n")

    @classmethod
    def read(cls, path: Path) -> SharingKey:
        try:
            line = path.read_text().strip()
        except OSError as exc:
            raise SharingKeyError(f"{path}: cannot read sharing key ({exc.strerror})") from None
        match = _KEY_LINE.match(line)
        if not match:
            raise SharingKeyError(f"{path}: not a sharing key (expected '<key id> <64 hex>')")
        return cls(match.group(1), bytes.fromhex(match.group(2)))


def load_or_create(path: Path | None, fallback: Path) -> tuple[SharingKey, Path, bool]:
    """The key at ``path`` (or $DISTILLWATCH_SHARING_KEY); else the one at ``fallback``, created
    there when it does not exist yet. Returns the key, where it is, and whether it was created."""
    chosen = path or (Path(os.environ[ENV_KEY_FILE]) if os.environ.get(ENV_KEY_FILE) else None)
    if chosen is not None:
        return SharingKey.read(chosen), chosen, False
    if fallback.exists():
        return SharingKey.read(fallback), fallback, False
    key = SharingKey.generate()
    key.write(fallback)
    return key, fallback, True
