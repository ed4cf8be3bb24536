"""Indicators of campaigns, as STIX 2.1, for every gateway and for partner labs."""

from distillwatch.sharing.artefacts import ip_prefix, request_artefacts
from distillwatch.sharing.export import BundleWritten, write_indicators
from distillwatch.sharing.indicators import (
    DEFAULT_BOUND,
    Artefact,
    CampaignIndicators,
    campaign_indicators,
    links,
)
from distillwatch.sharing.keys import SharingKey, load_or_create
from distillwatch.sharing.signing import SigningKey, read_trusted_keys, verify
from distillwatch.sharing.stix import IndicatorSet, Link, read_bundle, to_bundle

__all__ = [
    "DEFAULT_BOUND", "Artefact", "BundleWritten", "CampaignIndicators", "IndicatorSet", "Link",
    "SharingKey", "SigningKey", "campaign_indicators", "ip_prefix", "links", "load_or_create",
    "read_bundle", "read_trusted_keys", "request_artefacts", "to_bundle", "verify",
    "write_indicators",
]  # fmt: skip
