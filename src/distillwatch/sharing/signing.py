"""Ed25519 signatures over indicator bundles, and the trust list of partners' public keys.

A trust list of identity *names* only says whom we would believe; anybody can write a bundle
whose identity is called "lab-a". A signed bundle proves who wrote it: the producer signs the
exact bytes of the bundle file with its private key (``share keygen`` makes one, ``share
export --signing-key`` and ``share sign`` sign), the signature travels beside the file as
``BUNDLE.sig`` (one line: the signer's name and the base64 signature), and the importer
(``share import --trust-keys FILE``) accepts a bundle only when one of the public keys it holds
for the signer's name verifies it, and only with that name as the bundle's source.

Key files: the private key is PKCS#8 PEM (mode 0600) with the signer's name in a comment line
above it; ``KEY.pub`` and the trust list hold ``<name> ed25519 <base64 public key>`` lines. The
signature covers bytes, not a JSON canonical form: re-serialising a bundle (TAXII transports
objects, not files) drops it, so pulls rely on the collection's bearer token instead.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from distillwatch.errors import BundleError, SharingKeyError

SIGNATURE_SUFFIX = ".sig"
#: A signer's name: what the trust list and the bundle's identity call the producer.
_NAME = r"[A-Za-z0-9_.-]{1,64}"
_PUBLIC_LINE = re.compile(rf"^({_NAME})\s+ed25519\s+([A-Za-z0-9+/=]{{40,60}})\s*$")
_SIGNATURE_LINE = re.compile(rf"^({_NAME})\s+([A-Za-z0-9+/=]{{80,100}})\s*$")
_NAME_COMMENT = re.compile(rf"^# distillwatch signing key: ({_NAME})$", re.MULTILINE)
MAX_SIGNATURE_BYTES = 1024


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class SigningKey:
    """A producer's private signing key and the name it signs as."""

    name: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        if not re.fullmatch(_NAME, name):
            raise SharingKeyError(f"signer name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
        return cls(name, Ed25519PrivateKey.generate())

    def public_line(self) -> str:
        """The line a partner puts on its trust list."""
        return f"{self.name} ed25519 {_b64(_public_bytes(self.private.public_key()))}"

    def sign(self, raw: bytes) -> str:
        """The signature line for a bundle's exact bytes (what ``BUNDLE.sig`` holds)."""
        return f"{self.name} {_b64(self.private.sign(raw))}"

    def write(self, path: Path) -> Path:
        """Write the private key (0600) and ``PATH.pub``; returns the public file's path."""
        pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(f"# distillwatch signing key: {self.name}\n".encode() + pem)
        public = path.with_name(path.name + ".pub")
        public.write_text(self.public_line() + "\n")
        return public

    @classmethod
    def read(cls, path: Path) -> SigningKey:
        try:
            text = path.read_bytes()[:16_384].decode("utf-8", "replace")
        except OSError as exc:
            raise SharingKeyError(f"{path}: cannot read signing key ({exc.strerror})") from None
        name = _NAME_COMMENT.search(text)
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError):
            key = None
        if name is None or not isinstance(key, Ed25519PrivateKey):
            raise SharingKeyError(f"{path}: not a distillwatch signing key (share keygen)")
        return cls(name.group(1), key)


def read_trusted_keys(path: Path) -> dict[str, list[Ed25519PublicKey]]:
    """The trust list: signer name -> its public keys (a partner rotating keys has several).

    Lines are ``<name> ed25519 <base64>``; blank lines and ``#`` comments are skipped; any other
    line is an error naming its number (a typo must not silently drop a partner)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise SharingKeyError(f"{path}: cannot read trusted keys ({exc.strerror})") from None
    keys: dict[str, list[Ed25519PublicKey]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PUBLIC_LINE.match(line.strip())
        try:
            raw = base64.b64decode(match.group(2), validate=True) if match else b""
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError):
            raise SharingKeyError(
                f"{path}: line {number} is not '<name> ed25519 <base64 public key>'"
            ) from None
        keys.setdefault(match.group(1), []).append(key)  # type: ignore[union-attr]
    if not keys:
        raise SharingKeyError(f"{path}: no trusted keys in it")
    return keys


def verify(raw: bytes, signature: bytes, trusted: Mapping[str, list[Ed25519PublicKey]],
           where: str) -> str:  # fmt: skip
    """The name of the trusted signer whose key verifies ``signature`` over ``raw``; raise
    :class:`BundleError` naming ``where`` when none does."""
    line = signature[:MAX_SIGNATURE_BYTES].decode("ascii", "replace").strip()
    match = _SIGNATURE_LINE.match(line) if len(signature) <= MAX_SIGNATURE_BYTES else None
    if match is None:
        raise BundleError(f"{where}: signature file is not '<name> <base64 signature>'")
    name = match.group(1)
    if name not in trusted:
        raise BundleError(f"{where}: signed as {name!r}, which has no key on the trust list")
    try:
        value = base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise BundleError(f"{where}: signature is not base64") from None
    for key in trusted[name]:
        try:
            key.verify(value, raw)
        except InvalidSignature:
            continue
        return name
    raise BundleError(
        f"{where}: signature does not verify with {name!r}'s trusted keys "
        "(altered after signing, or signed by someone else)"
    )


def signature_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + SIGNATURE_SUFFIX)


def signed_by(
    path: Path, raw: bytes, trusted: Mapping[str, list[Ed25519PublicKey]]
) -> tuple[str, bytes]:
    """The trusted signer of the bundle at ``path`` (``raw``: its bytes) and the signature
    beside it (``PATH.sig``); :class:`BundleError` when there is none or it does not verify."""
    sig = signature_path(path)
    try:
        signature = sig.read_bytes()[: MAX_SIGNATURE_BYTES + 1]
    except OSError:
        raise BundleError(f"{path}: not signed (no {sig.name} beside it)") from None
    return verify(raw, signature, trusted, str(path)), signature
