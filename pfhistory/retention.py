"""Pruning: delete states that ended before a time, a little at a time.

Each batch is its own short transaction (the collector can take the write
lock between two), sized so a batch takes about a second; freed pages go
back to the file system with SQLite's incremental vacuum, never a full VACUUM.
"""

import time

from pfhistory import queries
from pfhistory.db import write_transaction

__all__ = ["prune", "kept_back"]

_FIRST_BATCH = 2000
_TARGET_S = 0.5
_VACUUM_PAGES = 2000


def prune(engine, before_at):
    """Delete states that ended at or before before_at; returns (states, addresses).

    States an hour not yet in rollups still counts are kept until it is rolled up."""
    batch = _FIRST_BATCH
    states = addresses = 0
    with engine.connect() as conn:
        frontier = queries.rollup_frontier(conn)
    rolled_up_to = frontier[1] if frontier else 0
    while True:
        started = time.monotonic()
        with write_transaction(engine) as conn:
            n = queries.prune_states_batch(conn, before_at, batch, rolled_up_to)
        states += n
        elapsed = time.monotonic() - started
        if n < batch:
            break
        # Aim each batch at about half a second of write lock.
        batch = max(100, min(100_000, int(batch * _TARGET_S / max(elapsed, 1e-3))))
    with write_transaction(engine) as conn:
        queries.prune_partial_states(conn, before_at)
    while True:
        with write_transaction(engine) as conn:
            n = queries.prune_orphan_addresses(conn, 10_000)
        addresses += n
        if n < 10_000:
            break
    while True:
        # A few thousand pages at a time, each step its own short transaction.
        with write_transaction(engine) as conn:
            free = _freelist(conn)
            if free:
                queries.sqlite_incremental_vacuum(conn, _VACUUM_PAGES)
                left = _freelist(conn)
        if not free or left >= free:
            break
    return states, addresses


def _freelist(conn):
    if conn.dialect.name != "sqlite":
        return 0
    return conn.exec_driver_sql("PRAGMA freelist_count").scalar()


def kept_back(engine, before_at):
    """(states that ended by before_at but wait for their hour's rollups, the
    oldest recorded end or None): what prune -v says when it left states."""
    with engine.connect() as conn:
        frontier = queries.rollup_frontier(conn)
        return queries.prune_kept_back(conn, before_at, frontier[1] if frontier else 0)
