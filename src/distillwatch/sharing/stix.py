"""Indicators as STIX 2.1 bundles: written by ``detect`` and ``share export``, read (validated,
all or nothing) by the gateway and ``share import``.

A bundle holds: the producer's ``identity``; the TLP 2.0 ``marking-definition`` it is shared
under; one registered ``extension-definition`` for the LLM-specific facts; and per campaign a
``campaign``, an ``intrusion-set`` (``attributed-to``), a ``sighting`` (request count, first and
last seen) and its ``indicator`` objects (``indicates`` relationships). Network artefacts are
STIX patterns (``[ipv4-addr:value ISSUBSET '203.0.113.0/24']``, user agents through the HTTP
request extension); TLS fingerprints, template grams, payment fingerprints and near-duplicate
sketches have no STIX object, so they are ``pattern_type: distillwatch`` patterns
(``tpl:<keyed hash>``, ``nd:<keyed hash>``), an open-vocabulary value. Every id is deterministic (uuid5 of the producer, the campaign's stable
id and the artefact), so exporting the same campaign again updates its objects (newer
``modified``), never duplicates them. MITRE ATLAS techniques, the case study and mitigations are
``external_references`` with urls.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from distillwatch.errors import BundleError
from distillwatch.sharing.artefacts import FAMILY, MAX_VALUE_CHARS
from distillwatch.sharing.indicators import NAMESPACE, CampaignIndicators
from distillwatch.sharing.keys import PRIVATE_KINDS

#: Our extension-definition: its id never changes; its version's major number is checked on
#: import (a bundle from a newer, incompatible major version is refused).
EXTENSION_ID = "extension-definition--" + str(uuid.uuid5(NAMESPACE, "distillwatch-indicators"))
EXTENSION_VERSION = "1.0.0"
EXTENSION_SCHEMA = "https://distillwatch.invalid/schemas/indicators-extension-1.json"
#: The OASIS TLP 2.0 marking definitions (fixed ids, their extension-definition).
TLP2_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP2 = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
ATLAS = (
    ("AML.T0024.002", "Extract AI Model", "techniques"),
    ("AML.T0008.005", "AI Service Proxies", "techniques"),
    ("AML.T0021", "Establish Accounts", "techniques"),
    ("AML.T0040", "AI Model Inference API Access", "techniques"),
    ("AML.T0065", "LLM Prompt Crafting", "techniques"),
    ("AML.T0048.004", "AI Intellectual Property Theft", "techniques"),
    ("AML.CS0056", "industrial-scale distillation (case study)", "studies"),
    ("AML.M0004", "Restrict Number of AI Model Queries", "mitigations"),
    ("AML.M0024", "AI Telemetry Logging", "mitigations"),
    ("AML.M0002", "Passive AI Output Obfuscation", "mitigations"),
)
#: Import limits: a bundle over these is refused before anything of it is used.
MAX_BUNDLE_BYTES = 32 * 1024 * 1024
MAX_OBJECTS = 200_000
MAX_DEPTH = 12
DEFAULT_VALID_DAYS = 30
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_PRINTABLE = re.compile(rf"^[\x20-\x7e]{{1,{MAX_VALUE_CHARS}}}$")


def _id(kind: str, *parts: str) -> str:
    return f"{kind}--{uuid.uuid5(NAMESPACE, chr(0).join(parts))}"


def _ts(value: Any) -> str:
    if isinstance(value, datetime):
        value = value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
    text = str(value)
    return text if text.endswith("Z") else text + "Z"


def _stix_pattern(kind: str, value: str) -> tuple[str, str]:
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    if kind in ("ip", "net"):
        version = (
            ipaddress.ip_network(value, strict=False).version
            if kind == "net"
            else ipaddress.ip_address(value).version
        )
        op = "ISSUBSET" if kind == "net" else "="
        return "stix", f"[ipv{version}-addr:value {op} '{quoted}']"
    if kind == "ua":
        return "stix", ("[network-traffic:extensions.'http-request-ext'.request_header."
                        f"'User-Agent' = '{quoted}']")  # fmt: skip
    return "distillwatch", f"{kind}:{value}"


def tlp_marking(level: str) -> dict[str, Any]:
    return {
        "type": "marking-definition", "spec_version": "2.1", "id": TLP2[level],
        "created": "2022-10-01T00:00:00.000Z", "name": f"TLP:{level.upper()}",
        "extensions": {TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": level}},
    }  # fmt: skip


def to_bundle(campaigns: list[CampaignIndicators], producer: str, key_id: str,
              tlp: str = "amber", now: datetime | None = None,
              valid_days: int = DEFAULT_VALID_DAYS) -> dict[str, Any]:  # fmt: skip
    """A STIX 2.1 bundle (a plain dict, serialisable with orjson) of ``campaigns``' indicators.

    ``key_id`` names the sharing key the private values are hashed with (never the key)."""
    from stix2 import (
        Bundle,
        Campaign,
        ExtensionDefinition,
        ExternalReference,
        Identity,
        Indicator,
        IntrusionSet,
        Relationship,
        Sighting,
        parse,
    )  # fmt: skip

    if tlp not in TLP2:
        raise ValueError(f"TLP level must be one of {', '.join(TLP2)}")
    now = (now or datetime.now(UTC)).replace(tzinfo=None)
    stamp = _ts(now)
    until = _ts(now + timedelta(days=valid_days))
    identity = Identity(id=_id("identity", producer), name=producer[:200],
                        identity_class="organization", created="2026-01-01T00:00:00.000Z",
                        modified="2026-01-01T00:00:00.000Z")  # fmt: skip
    marking = parse(tlp_marking(tlp))
    common = {"created_by_ref": identity.id, "object_marking_refs": [marking.id]}
    extension = ExtensionDefinition(
        id=EXTENSION_ID, name="distillwatch indicators", version=EXTENSION_VERSION,
        description="LLM-specific facts of distillation campaigns: artefact kind and "
        "specificity on the producer's population, keyed template, payment and near-duplicate "
        "sketch hashes, link rule.",
        schema=EXTENSION_SCHEMA, extension_types=["property-extension"],
        created="2026-01-01T00:00:00.000Z", modified="2026-01-01T00:00:00.000Z", **common,
    )  # fmt: skip
    references = [
        ExternalReference(source_name="mitre-atlas", external_id=ref, description=name,
                          url=f"https://atlas.mitre.org/{where}/{ref}")
        for ref, name, where in ATLAS
    ]  # fmt: skip
    objects: list[Any] = [identity, marking, extension]
    for c in campaigns:
        created = _ts(c.first_seen or stamp)
        facts = {
            "extension_type": "property-extension", "accounts": c.accounts,
            "exchanges": c.exchanges, "score": round(c.score, 4), "population": c.population,
            "link_bound": c.bound, "false_matches": c.false_matches, "key_id": key_id,
        }  # fmt: skip
        campaign = Campaign(
            id=_id("campaign", producer, c.stable_id), name=f"distillation campaign {c.stable_id[:12]}",
            description=f"{c.accounts} accounts, {c.exchanges} requests harvesting model outputs",
            created=created, modified=stamp, first_seen=created, last_seen=_ts(c.last_seen or stamp),
            objective="distil a model from its outputs", external_references=references,
            extensions={EXTENSION_ID: facts}, **common,
        )  # fmt: skip
        intrusion = IntrusionSet(
            id=_id("intrusion-set", producer, c.stable_id), name=f"operator of {campaign.name}",
            created=created, modified=stamp, external_references=references[:6], **common,
        )  # fmt: skip
        objects += [campaign, intrusion, Relationship(
            id=_id("relationship", producer, c.stable_id, "attributed-to"),
            relationship_type="attributed-to", source_ref=campaign.id, target_ref=intrusion.id,
            created=created, modified=stamp, **common,
        ), Sighting(
            id=_id("sighting", producer, c.stable_id), sighting_of_ref=campaign.id,
            count=min(c.exchanges, 999_999_999), first_seen=created,
            last_seen=_ts(c.last_seen or stamp), where_sighted_refs=[identity.id],
            created=created, modified=stamp, **common,
        )]  # fmt: skip
        for a in c.artefacts:
            pattern_type, pattern = _stix_pattern(a.kind, a.value)
            indicator = Indicator(
                id=_id("indicator", producer, c.stable_id, a.key),
                name=f"{a.kind} artefact of {campaign.name}", pattern=pattern,
                pattern_type=pattern_type, indicator_types=["malicious-activity"],
                valid_from=_ts(a.first_seen or created), valid_until=until, created=created,
                modified=stamp,
                extensions={EXTENSION_ID: {
                    "extension_type": "property-extension", "kind": a.kind,
                    "family": a.family, "campaign_accounts": a.campaign_accounts,
                    "outside_accounts": a.outside_accounts, "population": c.population,
                    "coverage": round(a.coverage, 4), "false_match_rate": a.rate,
                    "last_seen": _ts(a.last_seen or stamp),
                    **({"key_id": key_id} if a.kind in PRIVATE_KINDS else {}),
                }}, **common,
            )  # fmt: skip
            objects += [indicator, Relationship(
                id=_id("relationship", producer, c.stable_id, a.key, "indicates"),
                relationship_type="indicates", source_ref=indicator.id, target_ref=campaign.id,
                created=created, modified=stamp, **common,
            )]  # fmt: skip
    bundle = Bundle(*objects, id=_id("bundle", producer, stamp))
    return orjson.loads(bundle.serialize())


# -- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One indicator the gateway can match: which campaign, whose, and how specific."""

    campaign: str  # the campaign's STIX id
    source: str  # the producing identity's name
    family: str
    rate: float
    outside: int  # accounts outside the campaign (not flagged) that used it
    key_id: str | None
    last_seen: str | None = None  # when the producer last saw it in the campaign's traffic
    indicator: str = ""  # the STIX indicator's id


@dataclass
class IndicatorSet:
    """Indicators read from bundles: ``links[kind:value]`` -> the campaigns it points at."""

    links: dict[str, list[Link]] = field(default_factory=dict)
    campaigns: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # identity id -> name
    expired: int = 0
    bundles: int = 0
    key_ids: set[str] = field(default_factory=set)  # keys the private indicators were hashed with
    #: Indicator ids a source we trust reported as false positives (a STIX opinion disagreeing).
    disputed: set[str] = field(default_factory=set)

    def merge(self, other: IndicatorSet) -> None:
        for k, v in other.links.items():
            self.links.setdefault(k, []).extend(v)
        self.disputed |= other.disputed
        self.campaigns.update(other.campaigns)
        self.sources.update(other.sources)
        self.expired += other.expired
        self.bundles += other.bundles
        self.key_ids |= other.key_ids

    def without_disputed(self) -> IndicatorSet:
        """The same set minus every indicator some bundle's opinion disputes."""
        if not self.disputed:
            return self
        kept = IndicatorSet(campaigns=self.campaigns, sources=self.sources, expired=self.expired,
                            bundles=self.bundles, key_ids=self.key_ids, disputed=self.disputed)  # fmt: skip
        for k, v in self.links.items():
            remaining = [link for link in v if link.indicator not in self.disputed]
            if remaining:
                kept.links[k] = remaining
        return kept


_MARKUP = re.compile(r"[<>\x00-\x08\x0b-\x1f\x7f]")


def _shape_problem(value: Any, limit: int) -> str | None:
    """Why the parsed JSON is unacceptable before STIX even looks at it: too deep, or a string
    with markup or control characters (indicator bundles carry identifiers and counts, never
    HTML or terminal escapes; one that does is hostile or broken, and is refused whole)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, where = stack.pop()
        if depth > limit:
            return f"nested deeper than {limit} levels (at {where[:80] or 'top'})"
        if isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str) and _MARKUP.search(k):
                    return f"{where[:80]}: a key holds markup or control characters"
                stack.append((v, depth + 1, f"{where}.{str(k)[:40]}"))
        elif isinstance(item, list):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, str) and _MARKUP.search(item):
            return f"{where[:80]}: holds markup or control characters"
    return None


def _fail(where: str, why: str) -> BundleError:
    return BundleError(f"{where}: {why}"[:500])


def _value_ok(kind: str, value: str) -> bool:
    try:
        if kind == "ip":
            ipaddress.ip_address(value)
            return True
        if kind == "net":
            ipaddress.ip_network(value, strict=False)
            return True
    except ValueError:
        return False
    if kind in PRIVATE_KINDS:
        return bool(_HEX32.match(value))
    return bool(_PRINTABLE.match(value))


_PATTERNS = {
    "ip": re.compile(r"^\[ipv[46]-addr:value = '(.+)'\]$"),
    "net": re.compile(r"^\[ipv[46]-addr:value ISSUBSET '(.+)'\]$"),
    "ua": re.compile(r"^\[network-traffic:extensions\.'http-request-ext'\.request_header\.'User-Agent' = '(.+)'\]$"),
}  # fmt: skip


def _artefact_value(kind: str, pattern: str) -> str | None:
    if kind in _PATTERNS:
        match = _PATTERNS[kind].match(pattern)
        return match.group(1).replace("\\'", "'").replace("\\\\", "\\") if match else None
    prefix = f"{kind}:"
    return pattern[len(prefix) :] if pattern.startswith(prefix) else None


def read_bundle(path: Path, trusted: set[str] | None = None,
                now: datetime | None = None) -> IndicatorSet:  # fmt: skip
    """Validate the bundle in ``path`` and return its indicators (see :func:`parse_bundle`)."""
    return parse_bundle(bundle_bytes(path), str(path), trusted, now)


def bundle_bytes(path: Path) -> bytes:
    """The bytes of the bundle file at ``path``, refused (:class:`BundleError`) over the size
    limit before any is read."""
    where = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise _fail(where, f"{size:,} bytes, over the {MAX_BUNDLE_BYTES:,}-byte limit")
        return path.read_bytes()
    except OSError as exc:
        raise _fail(where, f"cannot read ({exc.strerror})") from None


def parse_bundle(raw: bytes | dict[str, Any], where: str, trusted: set[str] | None = None,
                 now: datetime | None = None) -> IndicatorSet:  # fmt: skip
    """Validate a bundle and return its indicators; raise :class:`BundleError` (nothing used)
    when any part of it is unacceptable. ``where`` names it in messages.

    ``trusted``: identity ids (or names) whose bundles are accepted; None accepts any producer
    (a gateway reading its own detection's bundles). Expired indicators (``valid_until`` in the
    past) are skipped and counted, not applied."""
    from stix2 import parse
    from stix2.exceptions import STIXError

    if isinstance(raw, bytes) and len(raw) > MAX_BUNDLE_BYTES:
        raise _fail(where, f"{len(raw):,} bytes, over the {MAX_BUNDLE_BYTES:,}-byte limit")
    try:
        doc = orjson.loads(raw) if isinstance(raw, bytes) else raw
    except orjson.JSONDecodeError as exc:
        raise _fail(where, f"not JSON ({str(exc)[:120]})") from None
    if not isinstance(doc, dict) or doc.get("type") != "bundle":
        raise _fail(where, "not a STIX bundle (top-level 'type' must be 'bundle')")
    problem = _shape_problem(doc, MAX_DEPTH)
    if problem:
        raise _fail(where, problem)
    objects = doc.get("objects")
    if not isinstance(objects, list):
        raise _fail(where, "'objects' must be a list")
    if len(objects) > MAX_OBJECTS:
        raise _fail(where, f"{len(objects):,} objects, over the {MAX_OBJECTS:,} limit")
    try:
        bundle = parse(doc, allow_custom=False)
    except (STIXError, ValueError, TypeError, KeyError) as exc:
        raise _fail(where, f"invalid STIX 2.1: {str(exc).splitlines()[0][:300]}") from None
    now = (now or datetime.now(UTC)).replace(tzinfo=None)
    result = IndicatorSet(bundles=1)
    identities = {o.id: o.name for o in bundle.objects if o.type == "identity"}
    result.sources.update(identities)
    for o in bundle.objects:
        creator = getattr(o, "created_by_ref", None)
        if creator is not None and creator not in identities:
            raise _fail(
                f"{where}: {o.id}", f"created_by_ref {creator} is not an identity in this bundle"
            )
        if (
            creator is not None
            and trusted is not None
            and creator not in trusted
            and identities[creator] not in trusted
        ):
            raise _fail(
                f"{where}: {o.id}",
                f"source {identities[creator]!r} ({creator}) is not on the trust list",
            )
        for ext in getattr(o, "extensions", None) or {}:
            if ext not in (EXTENSION_ID, TLP2_EXTENSION):
                raise _fail(f"{where}: {o.id}", f"unknown extension {ext}")
        if (
            o.type == "extension-definition"
            and o.id == EXTENSION_ID
            and str(o.version).split(".")[0] != EXTENSION_VERSION.split(".")[0]
        ):
            raise _fail(
                f"{where}: {o.id}",
                f"extension version {o.version} is not supported (need {EXTENSION_VERSION.split('.')[0]}.x)",
            )
    targets = {r.source_ref: r.target_ref for r in bundle.objects
               if r.type == "relationship" and r.relationship_type == "indicates"}  # fmt: skip
    for o in bundle.objects:
        if o.type == "opinion" and o.opinion in ("disagree", "strongly-disagree"):
            result.disputed |= {ref for ref in o.object_refs if ref.startswith("indicator--")}
    for o in bundle.objects:
        if o.type == "campaign":
            facts = dict((o.get("extensions") or {}).get(EXTENSION_ID, {}))
            result.campaigns[o.id] = {
                "name": o.name,
                "source": identities.get(o.get("created_by_ref"), "?"),
                **facts,
            }
    for o in bundle.objects:
        if o.type != "indicator":
            continue
        facts = (o.get("extensions") or {}).get(EXTENSION_ID)
        if facts is None:
            continue  # someone else's indicator type: nothing we can match
        kind = facts.get("kind")
        if kind not in FAMILY:
            raise _fail(
                f"{where}: {o.id}", f"extensions.kind {str(kind)[:40]!r} is not an artefact kind"
            )
        value = _artefact_value(kind, o.pattern)
        if value is None or not _value_ok(kind, value):
            raise _fail(f"{where}: {o.id}", f"pattern is not a valid {kind} indicator")
        rate = facts.get("false_match_rate")
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise _fail(
                f"{where}: {o.id}", "extensions.false_match_rate must be a number in [0, 1]"
            )
        outside = facts.get("outside_accounts")
        if not isinstance(outside, int) or isinstance(outside, bool) or outside < 0:
            raise _fail(f"{where}: {o.id}", "extensions.outside_accounts must be a count")
        campaign = targets.get(o.id)
        if campaign not in result.campaigns:
            raise _fail(f"{where}: {o.id}", "indicates no campaign of this bundle")
        valid_until = o.get("valid_until")
        if valid_until is not None and valid_until.replace(tzinfo=None) < now:
            result.expired += 1
            continue
        if kind in PRIVATE_KINDS and facts.get("key_id"):
            result.key_ids.add(str(facts["key_id"]))
        result.links.setdefault(f"{kind}:{value}", []).append(Link(
            campaign, identities.get(o.get("created_by_ref"), "?"), FAMILY[kind], float(rate),
            outside, facts.get("key_id"), str(facts.get("last_seen") or "")[:40] or None, o.id,
        ))  # fmt: skip
    return result


def bundle_files(paths: list[Path]) -> list[Path]:
    """Bundle files named by ``paths``: a folder stands for every ``*.json`` in it."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.glob("*.json") if p.is_file())[:1000]
        else:
            files.append(path)
    return files


def read_bundles(paths: list[Path]) -> IndicatorSet:
    """Every bundle in ``paths`` merged (each validated; the first bad one raises)."""
    merged = IndicatorSet()
    for path in bundle_files(paths):
        merged.merge(read_bundle(path))
    return merged.without_disputed()


def false_positive_report(indicator_ids: list[str], explanation: str, producer: str,
                          tlp: str = "amber") -> dict[str, Any]:  # fmt: skip
    """A bundle telling a partner that some of its indicators matched accounts we know to be
    innocent: a STIX ``opinion`` (strongly-disagree) on those indicators, by ``producer``. A
    partner that imports it stops linking on them (:meth:`IndicatorSet.without_disputed`)."""
    from stix2 import Bundle, Identity, Opinion, parse

    if not indicator_ids or not all(i.startswith("indicator--") for i in indicator_ids):
        raise ValueError("give the ids of the indicators (indicator--...) that matched wrongly")
    if _MARKUP.search(explanation) or len(explanation) > 2000:
        raise ValueError("the explanation must be plain text of at most 2,000 characters")
    identity = Identity(id=_id("identity", producer), name=producer[:200],
                        identity_class="organization", created="2026-01-01T00:00:00.000Z",
                        modified="2026-01-01T00:00:00.000Z")  # fmt: skip
    marking = parse(tlp_marking(tlp))
    opinion = Opinion(opinion="strongly-disagree", object_refs=sorted(set(indicator_ids)),
                      explanation=explanation, created_by_ref=identity.id,
                      object_marking_refs=[marking.id])  # fmt: skip
    return orjson.loads(Bundle(identity, marking, opinion).serialize())
