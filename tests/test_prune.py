"""`pfhistory prune`: states that ended before a time go, with everything of theirs."""

import os
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from conftest import run_cli, simulated


@pytest.fixture(scope="module")
def recorded_once(tmp_path_factory):
    """Ten minutes of a firewall, then its last snapshot again an hour later: their hour
    is complete and rolled up, so prune may take the states that ended in it."""
    tmp = tmp_path_factory.mktemp("prune")
    series = simulated(tmp / "snapshots", 1500, 600.0, seed=13, truth=False)
    db = tmp / "h.db"
    assert run_cli("collect", "--db", db, "--from-file",
                   *[p for _t, p in series.snapshots]).returncode == 0
    when, last = series.snapshots[-1]
    assert run_cli("collect", "--db", db, "--from-file", last,
                   "--at", (when + timedelta(hours=1)).isoformat()).returncode == 0
    assert not os.path.exists(f"{db}-wal")      # closed: the file alone is the history
    return series, db


@pytest.fixture
def recorded(recorded_once, tmp_path):
    """recorded_once's history, copied for this test alone: prune changes it."""
    series, db = recorded_once
    mine = tmp_path / "h.db"
    shutil.copy(db, mine)
    return series, mine


def _count(con, sql, *args):
    return con.execute(sql, args).fetchone()[0]


def test_prune_deletes_ended_states_and_keeps_the_rest(recorded):
    series, db = recorded
    cutoff = int(series.snapshots[5][0].timestamp())
    con = sqlite3.connect(db)
    before_total = _count(con, "SELECT count(*) FROM states")
    doomed = _count(con, "SELECT count(*) FROM states WHERE ended_before_at <= ?", cutoff)
    # Their samples include both kinds: those of one collection, which only the
    # primary key finds, and longer ones, in the index by state (migration 0010).
    for kind in ("=", ">"):
        assert _count(con, f"SELECT count(*) FROM samples WHERE valid_until - valid_from {kind} 1 "
                           f"AND state_pk IN (SELECT pk FROM states WHERE ended_before_at <= ?)",
                      cutoff) > 0
    open_before = _count(con, "SELECT count(*) FROM states WHERE ended_before IS NULL")
    collections = _count(con, "SELECT count(*) FROM collections")
    con.close()
    assert doomed > 0

    result = run_cli("prune", "--db", db, "--before", series.snapshots[5][0].isoformat(), "-v")
    assert result.returncode == 0, result.stderr
    assert f"pruned {doomed} states" in result.stdout

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    n = _count(con, "SELECT count(*) FROM states")
    assert n == before_total - doomed
    assert _count(con, "SELECT count(*) FROM states WHERE ended_before_at <= ?", cutoff) == 0
    assert _count(con, "SELECT count(*) FROM states WHERE ended_before IS NULL") == open_before
    assert _count(con, "SELECT count(*) FROM state_keys") == 2 * n
    assert _count(con, "SELECT count(*) FROM state_peers") == 2 * n
    assert _count(con, "SELECT count(*) FROM samples WHERE state_pk NOT IN "
                       "(SELECT pk FROM states)") == 0
    # No address is left that no state and no rollup uses; the rollups' are kept.
    unused = ("SELECT count(*) FROM addresses a WHERE NOT EXISTS "
              "(SELECT 1 FROM state_keys k WHERE k.addr0 = a.id OR k.addr1 = a.id) "
              "AND NOT EXISTS (SELECT 1 FROM states s WHERE s.rt_addr = a.id)")
    assert _count(con, unused + " AND NOT EXISTS (SELECT 1 FROM rollups r WHERE "
                  "(r.dim IN (1, 2, 6, 7, 8) AND r.key = a.id) OR "
                  "(r.dim = 7 AND r.key2 = a.id))") == 0
    assert _count(con, unused) > 0
    assert _count(con, "SELECT count(*) FROM rollups r WHERE r.dim IN (1, 2, 6, 7, 8) "
                       "AND r.key NOT IN (SELECT id FROM addresses)") == 0
    # The collections' aggregates stay for as long as the history.
    assert _count(con, "SELECT count(*) FROM collections") == collections
    con.close()
    # The history still answers, and prune is idempotent.
    assert run_cli("show", "--db", db, "--limit", "1").returncode == 0
    again = run_cli("prune", "--db", db, "--before", series.snapshots[5][0].isoformat(), "-v")
    assert "pruned 0 states" in again.stdout
    # -v says why nothing went: the oldest end left is after --before.
    con = sqlite3.connect(db)
    oldest = _count(con, "SELECT min(ended_before_at) FROM states")
    con.close()
    assert oldest > cutoff
    assert "no state ended by" in again.stdout
    assert again.stdout.rstrip().endswith(
        datetime.fromtimestamp(oldest, timezone.utc).astimezone().isoformat())


def test_prune_hands_space_back_without_a_full_vacuum(recorded):
    series, db = recorded
    result = run_cli("prune", "--db", db, "--before", "2099-01-01T00:00Z")
    assert result.returncode == 0, result.stderr
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert con.execute("PRAGMA freelist_count").fetchone()[0] < 50
    assert _count(con, "SELECT count(*) FROM states WHERE ended_before IS NOT NULL") == 0
    con.close()


def test_prune_bad_input(tmp_path, recorded):
    _series, db = recorded
    result = run_cli("prune", "--db", db, "--before", "someday")
    assert result.returncode == 1 and "ISO 8601" in result.stderr
    missing = run_cli("prune", "--db", tmp_path / "none.db", "--before", "1d")
    assert missing.returncode == 1 and "no such database" in missing.stderr


def test_prune_keeps_what_the_open_hour_needs(tmp_path):
    """States that ended in an hour not yet rolled up stay until it is: the hourly pass
    still counts them."""
    series = simulated(tmp_path / "snapshots", 500, 300.0, seed=3, truth=False)
    db = tmp_path / "h.db"
    assert run_cli("collect", "--db", db, "--from-file",
                   *[p for _t, p in series.snapshots]).returncode == 0
    con = sqlite3.connect(db)
    ended = _count(con, "SELECT count(*) FROM states WHERE ended_before IS NOT NULL")
    con.close()
    assert ended > 0
    result = run_cli("prune", "--db", db, "--before", "2099-01-01T00:00Z", "-v")
    assert result.returncode == 0 and "pruned 0 states" in result.stdout, result.stderr
    # -v says which states were kept, and what they wait for.
    assert f"; {ended} states that ended by " in result.stdout
    assert "in the rollups" in result.stdout
    when, last = series.snapshots[-1]
    assert run_cli("collect", "--db", db, "--from-file", last,
                   "--at", (when + timedelta(hours=1)).isoformat()).returncode == 0
    result = run_cli("prune", "--db", db, "--before", "2099-01-01T00:00Z", "-v")
    assert f"pruned {ended} states" in result.stdout, result.stderr


@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"),
                    reason="sqlite3 sets a connection's limits from Python 3.11 on")
def test_a_batch_larger_than_the_parameter_limit(recorded):
    """A prune batch (up to 100,000 states) may hold more states than one statement
    may have parameters: 32,766 in SQLite's default build (OpenBSD's), 65,535 in
    PostgreSQL's protocol. Here SQLite's limit is lowered to 100, far below the
    first batch; pruning must not notice. In process: a limit is set per connection."""
    from sqlalchemy import event
    from sqlalchemy.engine import make_url

    from pfhistory import db as pfdb, retention

    series, path = recorded
    cutoff = int(series.snapshots[-2][0].timestamp())
    con = sqlite3.connect(path)
    doomed = _count(con, "SELECT count(*) FROM states WHERE ended_before_at <= ?", cutoff)
    kept = _count(con, "SELECT count(*) FROM states") - doomed
    theirs = {table: _count(con, f"SELECT count(*) FROM {table} WHERE state_pk IN (SELECT pk "
                                 f"FROM states WHERE ended_before_at IS NULL "
                                 f"OR ended_before_at > ?)", cutoff)
              for table in ("samples", "peer_samples")}
    con.close()
    assert doomed > 200 and all(theirs.values())

    engine = pfdb.open_engine(make_url(f"sqlite:///{path}"))
    event.listen(engine, "connect", lambda dbapi_conn, _rec: dbapi_conn.setlimit(
        sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100))
    try:
        with engine.connect() as conn:
            limit = conn.connection.dbapi_connection.getlimit(
                sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        assert limit == 100
        assert retention.prune(engine, cutoff)[0] == doomed
    finally:
        engine.dispose()

    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert _count(con, "SELECT count(*) FROM states") == kept
    for table in ("state_keys", "state_peers"):
        assert _count(con, f"SELECT count(*) FROM {table}") == 2 * kept
    for table, n in theirs.items():
        assert _count(con, f"SELECT count(*) FROM {table} WHERE state_pk NOT IN "
                           f"(SELECT pk FROM states)") == 0
        # The states kept keep all their samples.
        assert _count(con, f"SELECT count(*) FROM {table}") == n
    con.close()
