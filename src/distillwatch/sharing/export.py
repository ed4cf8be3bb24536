"""Writing indicator bundles: ``detect`` (OUT/indicators.json) and ``share export``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from distillwatch.sharing.indicators import DEFAULT_BOUND, CampaignIndicators, campaign_indicators
from distillwatch.sharing.keys import SharingKey
from distillwatch.sharing.stix import to_bundle
from distillwatch.store import Store

DEFAULT_PRODUCER = "distillwatch"


@dataclass
class BundleWritten:
    path: Path
    campaigns: list[CampaignIndicators]
    objects: int


def write_indicators(store: Store, doc: dict[str, Any], path: Path, key: SharingKey,
                     producer: str = DEFAULT_PRODUCER, tlp: str = "amber",
                     bound: float = DEFAULT_BOUND) -> BundleWritten:  # fmt: skip
    """Compute every campaign's indicators and write them as one STIX bundle (atomically)."""
    campaigns = campaign_indicators(store, doc, key, bound)
    bundle = to_bundle(campaigns, producer, key.key_id, tlp)
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
    os.replace(scratch, path)  # a gateway hot-reloading it never sees half a file
    return BundleWritten(path, campaigns, len(bundle["objects"]))
