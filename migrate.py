"""Moving from one store to another: ``./gitlab2trello migrate --to postgresql://...``.

Copies what the bridge needs to go on where it stopped: the issue-to-card map (with back-offs),
every delivery not yet done (pending, waiting for a card, dead letters) and the meta table
(watermarks, times). Rows already in the target are kept, so running it twice copies nothing
the second time. Deliveries get new ids in the target; their dedupe keys go with them, so a
repeat of a copied delivery is still recognised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from store import Store

TABLES = ("issues", "deliveries", "meta")
BATCH = 500
# meta keys that describe the target itself, never copied over it
OWN_KEYS = {"schema_version"}

# (table, rows to copy) -> a context whose value is told how many rows were just copied
Progress = Callable[[str, int], contextlib.AbstractContextManager[Callable[[int], Any]]]


def copy(
    source: Store, target: Store, *, progress: Progress | None = None
) -> dict[str, tuple[int, int]]:
    """Copy every table; return table -> (rows new in the target, rows read)."""
    target.setup()
    result: dict[str, tuple[int, int]] = {}
    for table in TABLES:
        total = source.count_rows(table)
        bar = progress(table, total) if progress else contextlib.nullcontext(lambda _n: None)
        with bar as advance:
            new = read = 0
            batch: list[tuple[Any, ...]] = []
            for row in source.export_rows(table):
                if table == "meta" and row[0] in OWN_KEYS:
                    continue
                batch.append(row)
                if len(batch) >= BATCH:
                    new += target.import_rows(table, batch)
                    read += len(batch)
                    advance(len(batch))
                    batch = []
            if batch:
                new += target.import_rows(table, batch)
                read += len(batch)
                advance(len(batch))
        result[table] = (new, read)
    return result
