"""Turn validated exchanges into Arrow batches in the store's column order."""

from __future__ import annotations

from operator import attrgetter

import pyarrow as pa

from distillwatch.schema import EXCHANGE_COLUMNS, Exchange
from distillwatch.store import EXCHANGE_SCHEMA

_as_tuple = attrgetter(*EXCHANGE_COLUMNS)


def exchanges_to_table(rows: list[Exchange], source: str) -> pa.Table:
    """Build one Arrow table (store column order, plus ``source``) from validated rows."""
    if not rows:
        return EXCHANGE_SCHEMA.empty_table()
    columns = list(zip(*map(_as_tuple, rows), strict=True))
    arrays = [
        pa.array(column, type=EXCHANGE_SCHEMA.field(i).type) for i, column in enumerate(columns)
    ]
    arrays.append(pa.array([source] * len(rows), type=pa.string()))
    return pa.Table.from_arrays(arrays, schema=EXCHANGE_SCHEMA)
