"""Turn validated exchanges into Arrow batches with the store's ``exchanges`` columns."""

from __future__ import annotations

from operator import attrgetter

import pyarrow as pa

from distillwatch.schema import EXCHANGE_COLUMNS, Exchange
from distillwatch.store import EXCHANGE_SCHEMA

_as_tuple = attrgetter(*EXCHANGE_COLUMNS)


def exchanges_to_table(rows: list[Exchange], source: str) -> pa.Table:
    """Build one Arrow table (every store column, ``source`` included) from validated rows."""
    if not rows:
        return EXCHANGE_SCHEMA.empty_table()
    columns = dict(zip(EXCHANGE_COLUMNS, zip(*map(_as_tuple, rows), strict=True), strict=True))
    columns["source"] = [source] * len(rows)
    arrays = [pa.array(columns[f.name], type=f.type) for f in EXCHANGE_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=EXCHANGE_SCHEMA)
