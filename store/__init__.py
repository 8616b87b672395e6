"""The bridge's store: one contract (``store.base``), one module per backend.

``open_store(cfg)`` picks the backend from ``[store] database``: a file path is SQLite (the
embedded default), a ``postgresql://`` URL is PostgreSQL (several instances on one database).
"""

from __future__ import annotations

from typing import Any

from store.base import (
    SCHEMA_VERSION,
    Claim,
    Delivery,
    IssueState,
    LostClaim,
    Store,
    StoreError,
)

__all__ = [
    "SCHEMA_VERSION",
    "Claim",
    "Delivery",
    "IssueState",
    "LostClaim",
    "Store",
    "StoreError",
    "open_store",
]


def open_store(cfg: Any) -> Store:
    """The store a ``config.Config`` describes (not yet set up: call ``setup``)."""
    if cfg.postgresql:
        from store.postgres import PostgresStore

        return PostgresStore.from_config(cfg)
    from store.sqlite import SqliteStore

    return SqliteStore.from_config(cfg)
