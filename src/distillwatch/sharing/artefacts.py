"""What identifies a request's origin and shape, one definition for batch and gateway.

Batch detection folds these per account into ``dw_kv`` (kinds ``ip``, ``net``, ``ua``, ``tls``,
``pre``, ``suf``) and reads payment fingerprints from ``accounts``; the gateway computes them for
each request with :func:`request_artefacts`. An artefact is written ``kind:value``; template grams
and payment fingerprints are private, so their value is a keyed hash (:mod:`.keys`) in both
places, and ``tests/test_sharing.py`` checks that batch and gateway produce the same strings.

Near-duplicate sketches (kind ``nd``) are batch-only: the MinHash band signatures of each
prompt (``dw_near``, computed by DuckDB's SQL, :data:`near_scheme`), keyed like the other
private kinds. A gateway cannot compute DuckDB's hash per request, so it never matches them;
a partner's batch detection does (:mod:`.priors`).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

import duckdb

from distillwatch.detection.text import template_grams
from distillwatch.schema import canonical_ip
from distillwatch.sharing.keys import SharingKey

#: Kinds an indicator can have, and the family each belongs to. A link needs two families, and
#: kinds that describe the same thing are one family: an exact IP and its /24 are one piece of
#: evidence, and so are a user agent and a TLS fingerprint (one SDK build sends both, so their
#: rarities are not independent).
FAMILY = {"ip": "network", "net": "network", "tls": "client", "ua": "client", "tpl": "template",
          "nd": "template", "pay": "payment"}  # fmt: skip
#: dw_kv kinds that are shared, and the indicator kind each becomes.
STATE_KINDS = {"ip": "ip", "net": "net", "ua": "ua", "tls": "tls", "pre": "tpl", "suf": "tpl"}
MAX_VALUE_CHARS = 256
#: Bump when the prompt skeleton or shingling behind ``dw_near`` changes.
SKETCH_VERSION = 1


def ip_prefix(ip: str | None) -> str | None:
    """The IPv4 /24 or IPv6 /48 an address is in (``203.0.113.0/24``, ``2001:db8:1::/48``).

    Batch detection's SQL computes IPv4 prefixes from the dotted quad (the same string for a
    canonical address) and IPv6 prefixes by calling this function (:func:`register_sql`)."""
    canonical = canonical_ip(ip) if ip else None
    if canonical is None:
        return None
    if ":" not in canonical:
        return canonical.rsplit(".", 1)[0] + ".0/24"
    return _ip6_prefix(canonical)


@lru_cache(maxsize=65_536)
def _ip6_prefix(ip: str) -> str | None:
    try:
        return str(ipaddress.ip_network(f"{ip}/48", strict=False))
    except ValueError:
        return None


def register_sql(con: duckdb.DuckDBPyConnection) -> None:
    """Make ``dw_ip6_prefix(ip)`` available to this connection's SQL (idempotent)."""
    try:
        con.create_function("dw_ip6_prefix", _ip6_prefix, ["VARCHAR"], "VARCHAR",
                            side_effects=False)  # fmt: skip
    except duckdb.Error as exc:  # registered already on this connection
        if "already" not in str(exc).lower():
            raise


@lru_cache(maxsize=1)
def near_scheme() -> str:
    """What a near-duplicate sketch's value depends on besides the prompt: the MinHash layout
    and DuckDB's ``hash`` (its major and minor version). It is part of the keyed input, so
    sketches made under another scheme never match (they fail safe, as no match)."""
    from distillwatch.detection.features import MINHASH_BANDS, MINHASH_MIN_WORDS, MINHASH_ROWS

    version = ".".join(duckdb.__version__.split(".")[:2])
    return f"near/v{SKETCH_VERSION}/duckdb-{version}/b{MINHASH_BANDS}r{MINHASH_ROWS}w{MINHASH_MIN_WORDS}"


def artefact(kind: str, value: str, key: SharingKey | None) -> str:
    """One artefact as ``kind:value``; ``kind`` is a ``dw_kv`` kind, ``pay``, or ``near`` (a
    ``dw_near`` band signature). Private kinds need ``key``."""
    if kind in ("pre", "suf", "pay", "near") and key is None:
        raise ValueError(f"a {kind} artefact is private: it needs a sharing key")
    if kind == "near":
        return f"nd:{key.digest(near_scheme(), value)}"  # type: ignore[union-attr]
    if kind in ("pre", "suf"):
        return f"tpl:{key.digest(kind, value)}"  # type: ignore[union-attr]
    if kind == "pay":
        return f"pay:{key.digest('pay', value)}"  # type: ignore[union-attr]
    return f"{STATE_KINDS[kind]}:{value[:MAX_VALUE_CHARS]}"


def request_artefacts(ip: str | None, tls: str | None, ua: str | None, prompt: str,
                      payment: str | None, key: SharingKey | None) -> list[str]:  # fmt: skip
    """The artefacts of one request, as the gateway sees it (private kinds need ``key``)."""
    found = []
    ip = canonical_ip(ip) if ip else None  # as ingest stores it
    if ip:
        found.append(artefact("ip", ip, None))
        prefix = ip_prefix(ip)
        if prefix:
            found.append(f"net:{prefix}")
    if tls:
        found.append(f"tls:{tls[:MAX_VALUE_CHARS]}")
    if ua:
        found.append(f"ua:{ua[:MAX_VALUE_CHARS]}")
    if key is not None:
        prefix_gram, suffix_gram = template_grams(prompt)
        if prefix_gram is not None:
            found.append(artefact("pre", prefix_gram, key))
        if suffix_gram is not None:
            found.append(artefact("suf", suffix_gram, key))
        if payment:
            found.append(artefact("pay", payment, key))
    return found
