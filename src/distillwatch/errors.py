"""Every exception distillwatch raises on purpose, in one tree.

Third-party errors (DuckDB, Redis, aiohttp, YAML, Arrow) are translated into these at the module
that talks to the library, so callers catch distillwatch's own names::

    DistillwatchError
    ├── InputError (ValueError)          untrusted input broke a rule; the message names it
    │   ├── RecordError                  one record or request field (.field, .reason)
    │   ├── PolicyError                  an enforcement policy file
    │   ├── ScenarioError                a simulator scenario file
    │   └── BundleError                  a STIX indicator bundle (ours or a partner's)
    └── ResourceError (RuntimeError)     something outside the input is unusable
        ├── FileFormatError              a file is not what its name or format claims
        ├── StoreError                   the DuckDB store (version, not a store, locked)
        │   └── SqlPathUnavailable       the SQL ingest path ran out of memory (fall back)
        ├── StateError                   the enforcement state backend (Redis) is unreachable
        ├── SharingKeyError              a sharing group's key, a signing key or a trusted-keys file is missing or malformed
        └── ProvenanceKeyError           a watermark key or keyring is missing or malformed

Each module that raises one re-exports it (``from distillwatch.schema import RecordError`` keeps
working); this file is where they are defined.
"""

from __future__ import annotations

from typing import Any


class DistillwatchError(Exception):
    """Base of every error distillwatch raises on purpose."""


class InputError(DistillwatchError, ValueError):
    """Untrusted input (a record, a request, a file the user wrote) broke a rule."""


class ResourceError(DistillwatchError, RuntimeError):
    """A file, store or service cannot be used as it is."""


class RecordError(InputError):
    """A record or request that breaks Contract 1 / the OpenAI request shape.

    ``field`` names the offending field (``messages[2].content[0].text``); ``reason`` says what
    is wrong with it, without echoing more than a short, bounded piece of the value.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class PolicyError(InputError):
    """An invalid policy file; the message names the field."""


class ScenarioError(InputError):
    """A scenario file that does not describe a valid simulation; names the field."""


class BundleError(InputError):
    """A STIX bundle refused on import (size, schema, extension, expiry, trust); nothing of it
    is applied. The message names the object and the field."""


class FileFormatError(ResourceError):
    """The file is not what its name or the chosen format claims."""


class StoreError(ResourceError):
    """The store cannot be opened or used (wrong version, not a DuckDB file, ...)."""


class SqlPathUnavailable(StoreError):
    """DuckDB could not run the SQL ingest path within its memory limit; use the Python path."""


class StateError(ResourceError):
    """The enforcement state backend cannot be reached."""


class SharingKeyError(ResourceError):
    """A sharing key, signing key or trusted-keys file that is missing, unreadable or malformed."""


def type_name(value: Any) -> str:
    """A JSON-ish name for ``value``'s type, for error messages about untrusted input."""
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


class ProvenanceKeyError(ResourceError):
    """A watermark key or keyring that cannot be used; the message names the key or file."""
