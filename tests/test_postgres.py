"""PostgreSQL: the CLI run against a real server, the history checked against the
simulator's snapshots and against the same replay recorded into SQLite.

The server is a throwaway one started for the session, or the one
$PFHISTORY_TEST_PG_URL names (tests/pg_server.py, the pg_server fixture);
without either these tests are skipped with the reason.
"""

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from conftest import run_cli
from pfhistory import db, pf, pfsync
from pfhistory.models import Base

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed "
                                                "(pip install -e '.[postgresql]')")

U64 = 1 << 64
R = 264
# Twelve snapshot times, 22:53 to 23:04, two cron runs missed: the first collection
# after 23:00 completes the hour 22:00, which collect rolls up.
START = datetime(2026, 11, 24, 22, 53, tzinfo=timezone.utc)
MISSING = (3, 8)
# In this written snapshot every 8th state its neighbours both hold is left out:
# those states close there and are reopened by the next one.
HOLE = 5


def _signed(v):
    return v - U64 if v >= 1 << 63 else v


def _records(data):
    return [data[i:i + R] for i in range(0, len(data), R)]


# What differs between two recordings of the same snapshots: how long they took.
_TIMINGS = {"collections": {"duration_ms"}, "rollup_hours": {"duration_ms"}}


def _dump(target, skip=_TIMINGS):
    """Every table of a history (SQLite path or URL), rows in primary-key order.

    Addresses are numbered as a collection meets them, in an order that differs
    from run to run (Python's hashing): they are given as (af, bin) wherever an
    id of one stands, so two recordings of the same snapshots compare equal."""
    from pfhistory.rollup import LOCAL, NAT, PUBLISHED, REMOTE, SOURCE

    url = db.resolve_url(str(target))
    engine = db.open_engine(url)
    try:
        with engine.connect() as conn:
            out = {}
            for table in Base.metadata.sorted_tables:
                columns = [c for c in table.columns if c.name not in skip.get(table.name, ())]
                rows = conn.execute(select(*columns).order_by(*table.primary_key.columns))
                out[table.name] = [[bytes(v) if isinstance(v, memoryview) else v for v in row]
                                   for row in rows]
    finally:
        engine.dispose()
    names = {t.name: [c.name for c in t.columns if c.name not in skip.get(t.name, ())]
             for t in Base.metadata.sorted_tables}
    where = {n: i for i, n in enumerate(names["addresses"])}
    address = {row[where["id"]]: (row[where["af"]], row[where["bin"]])
               for row in out["addresses"]}
    refs = {"addresses": ("id",), "state_keys": ("addr0", "addr1"), "states": ("rt_addr",)}
    for table, columns in refs.items():
        for column in columns:
            if column in names[table]:
                i = names[table].index(column)
                for row in out[table]:
                    row[i] = address.get(row[i], row[i])
    dim, key, key2 = (names["rollups"].index(c) for c in ("dim", "key", "key2"))
    for row in out["rollups"]:
        if row[dim] in (LOCAL, REMOTE, NAT, PUBLISHED, SOURCE):
            row[key] = address[row[key]]
        if row[dim] == PUBLISHED:
            row[key2] = address[row[key2]]
    return {table: sorted(map(tuple, rows), key=repr) if table in ("addresses", "rollups")
            else list(map(tuple, rows)) for table, rows in out.items()}


def _query(target, sql, params=None):
    engine = db.open_engine(db.resolve_url(str(target)))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql, params or ())]
    finally:
        engine.dispose()


def _ok(result):
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def _on_both(targets, *args, env=None):
    """`pfhistory ARGS --db T` for each target at once (the machine has two cores);
    their outputs, in targets' order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(targets)) as pool:
        results = list(pool.map(lambda t: run_cli(*args, "--db", t, env=env), targets))
    return [_ok(r) for r in results]


def _untimed(text):
    return re.sub(r"\d+ ms\b", "N ms", text)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Ten snapshots of a 300-state firewall (two runs missed), one with a hole;
    [(datetime, path)] as recorded, and the simulator's truth by identity."""
    from pfhistory.simulate import SimulationConfig, simulate

    out = tmp_path_factory.mktemp("pg-series")
    cfg = SimulationConfig(states=300, interval=60.0, duration=660.0, seed=17, start=START,
                           missing=MISSING)
    result = simulate(cfg, out / "sim", truth=True)
    fed = out / "fed"
    fed.mkdir()
    snapshots = []
    ids = [{s.id for s in pf.parse_states(p.read_bytes())} for _t, p in result.snapshots]
    for k, (when, path) in enumerate(result.snapshots):
        target = fed / path.name
        data = path.read_bytes()
        if k == HOLE:
            both = sorted(ids[k - 1] & ids[k] & ids[k + 1])
            dropped = set(both[::8])
            data = b"".join(r for r, s in zip(_records(data), pf.parse_states(data))
                            if s.id not in dropped)
        target.write_bytes(data)
        os.utime(target, (when.timestamp(), when.timestamp()))
        snapshots.append((when, target))
    with open(result.truth_path) as f:
        truth = {(t["creatorid"], _signed(t["id"])): t
                 for t in map(json.loads, f) if "id" in t}
    return snapshots, truth


@pytest.fixture(scope="module")
def replayed(series, pg_server, tmp_path_factory):
    """The series recorded by `pfhistory collect` into SQLite and into PostgreSQL:
    (sqlite path, postgresql URL, -v output of each)."""
    snapshots, _truth = series
    files = [p for _t, p in snapshots]
    sqlite = tmp_path_factory.mktemp("pg-replay") / "h.db"
    pg = pg_server.create_database()
    # Two processes, two hash seeds: addresses are numbered alike all the same (in
    # (af, bin) order), so reports break ties between equal rows (by id) alike.
    outputs = _on_both((sqlite, pg), "collect", "--from-file", *files, "-v")
    return sqlite, pg, outputs


# -- the schema ---------------------------------------------------------------------------

def test_db_upgrade_and_current_on_an_empty_database(pg_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from alembic.script import ScriptDirectory

    url = db.resolve_url(pg_url)
    head, = ScriptDirectory.from_config(db.alembic_config(url)).get_heads()
    assert _ok(run_cli("db", "current", "--db", pg_url)).strip() == "no schema (empty)"
    assert _ok(run_cli("db", "upgrade", "--db", pg_url)).rstrip().endswith(f": schema at {head}")
    assert _ok(run_cli("db", "current", "--db", pg_url)).strip() == f"{head} (current)"
    engine = db.open_engine(url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()


def test_every_revision_downgrades_and_upgrades_keeping_data(pg_url, series):
    from pfhistory.history import History
    from test_migrations import walk_every_revision

    snapshots, _truth = series
    recorded = snapshots[:8]
    _ok(run_cli("collect", "--db", pg_url, "--from-file", *[p for _t, p in recorded]))
    # What every revision keeps going down and up again: a revision's own columns come
    # back empty (rollups, peer_hash, ended_by), 0007 makes a peer sample of every values
    # sample (more rows, the same peers). The peers: by what every collection shows.
    kept = {"collections": {"duration_ms", "rolled_up", "kind", "malformed"},
            "states": {"peer_hash", "ended_by"}, "state_keys": (), "state_peers": (),
            "samples": (), "addresses": (), "settings": (), "protocols": ()}

    def history():
        tables = _dump(pg_url, kept)
        with History(pg_url) as h:
            shown = [h.table_at(when) for when, _p in recorded]
        return {t: rows for t, rows in tables.items() if t in kept}, shown

    before, shown = history()
    assert before["samples"] and len(set(shown)) == len(recorded)
    url = db.resolve_url(pg_url)
    engine = db.open_engine(url)
    try:
        walk_every_revision(engine, url, lambda: history() == (before, shown))
    finally:
        engine.dispose()


def test_0009_names_the_administrators_views_that_stop_it_and_changes_nothing(pg_url):
    """0009 changes the type of columns; PostgreSQL refuses that under a view that
    reads them (or reads our views, which it drops and makes again), with a message
    naming neither. Views on those views, views in other schemas and materialized
    views are named too; a view reading other columns is no obstacle and stays."""
    from alembic.script import ScriptDirectory

    url = db.resolve_url(pg_url)
    head, = ScriptDirectory.from_config(db.alembic_config(url)).get_heads()
    engine = db.open_engine(url)
    mine = {
        "my_talkers": "VIEW my_talkers AS SELECT s.pk, k.addr0 FROM states s "
                      "JOIN state_keys k ON k.state_pk = s.pk",
        "my_conns": "VIEW my_conns AS SELECT * FROM connections",
        "my_conns_daily": "VIEW my_conns_daily AS SELECT count(*) AS n FROM my_conns",
        "rep.talkers": "VIEW rep.talkers AS SELECT state_pk FROM samples",
        "mv_pks": "MATERIALIZED VIEW mv_pks AS SELECT pk FROM states",
    }
    try:
        db.upgrade(engine, url, "0008")
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE SCHEMA rep")
            for definition in mine.values():
                conn.exec_driver_sql(f"CREATE {definition}")
            conn.exec_driver_sql("CREATE VIEW my_rules AS SELECT rule, count(*) AS n "
                                 "FROM states GROUP BY rule")
        result = run_cli("db", "upgrade", "--db", pg_url)
        assert result.returncode == 1
        line, = result.stderr.splitlines()
        assert ("drop materialized view mv_pks, view my_conns, view my_conns_daily, "
                "view my_talkers, view rep.talkers (") in line, line
        assert "my_rules" not in line
        assert "`pfhistory db upgrade` again" in line and "nothing was changed" in line
        assert _ok(run_cli("db", "current", "--db", pg_url)).strip() == "0008 (old)"
        with engine.begin() as conn:
            for name in ("my_conns_daily", "my_conns", "my_talkers", "rep.talkers"):
                conn.exec_driver_sql(f"DROP VIEW {name}")
            conn.exec_driver_sql("DROP MATERIALIZED VIEW mv_pks")
        assert _ok(run_cli("db", "upgrade", "--db", pg_url)).rstrip().endswith(
            f": schema at {head}")
        with engine.connect() as conn:
            assert conn.exec_driver_sql(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'states' AND column_name = 'pk'").scalar() == "bigint"
            assert conn.exec_driver_sql("SELECT count(*) FROM my_rules").scalar() == 0
    finally:
        engine.dispose()


def test_a_plain_postgresql_url_takes_psycopg():
    """Whatever SQLAlchemy's default driver (psycopg2 in 2.0); an explicit one stays."""
    url = db.resolve_url("postgresql://nobody@/x?host=/nonexistent")
    assert db._with_driver(url).drivername == "postgresql+psycopg"
    other = db.resolve_url("postgresql+pg8000://nobody@/x")
    assert db._with_driver(other) == other
    engine = db.open_engine(url)
    try:
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_a_database_that_does_not_exist_is_one_sentence(pg_server):
    url = pg_server.url("no_such_database", driver="postgresql")
    result = run_cli("show", "--db", url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line, = result.stderr.splitlines()
    assert "cannot connect" in line and "no_such_database" in line


def test_a_bad_state_file_leaves_an_empty_database_without_tables(pg_url, series, tmp_path):
    bad = tmp_path / "bad.pfstate"
    bad.write_bytes(series[0][0][1].read_bytes() + b"\xa5" * R)
    result = run_cli("collect", "--db", pg_url, "--from-file", bad)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line, = result.stderr.splitlines()
    assert "not a pfctl -S state file" in line
    assert _ok(run_cli("db", "current", "--db", pg_url)).strip() == "no schema (empty)"


# -- snapshots ----------------------------------------------------------------------------

def test_replay_matches_the_snapshots(series, replayed):
    """Each state's lifetime, absences, last values and keys, from the snapshot files
    fed (every state of the hole is closed there and reopened after it)."""
    snapshots, truth = series
    _sqlite, pg, _out = replayed
    seen, last = {}, {}
    for cid, (when, path) in enumerate(snapshots, start=1):
        for s in pf.parse_states(path.read_bytes()):
            key = (s.creatorid, _signed(s.id))
            seen.setdefault(key, []).append(cid)
            last[key] = (when, s)
    n = len(snapshots)
    assert _query(pg, "SELECT id, collected_at FROM collections ORDER BY id") == \
        [(cid, int(when.timestamp())) for cid, (when, _p) in enumerate(snapshots, start=1)]
    rows = {(r[0], r[1]): r[2:] for r in _query(
        pg, "SELECT creatorid, state_id, pk, first_seen, last_seen, ended_before, packets0, "
            "packets1, bytes0, bytes1, created_at, expires_at FROM states")}
    assert set(rows) == set(seen)
    absent = {}
    for pk, valid_from, valid_until in _query(
            pg, "SELECT state_pk, valid_from, valid_until FROM samples WHERE present = 0"):
        absent.setdefault(pk, []).append((valid_from, valid_until))
    keys = {(r[0], r[1]): r[2:] for r in _query(
        pg, "SELECT k.state_pk, k.side, a0.text, k.port0, a1.text, k.port1, k.rdomain "
            "FROM state_keys k JOIN addresses a0 ON a0.id = k.addr0 "
            "JOIN addresses a1 ON a1.id = k.addr1")}
    reopened = 0
    for key, cids in seen.items():
        pk, first, last_seen, ended_before, p0, p1, b0, b1, created, expires = rows[key]
        assert first == cids[0]
        if cids[-1] == n:
            assert (last_seen, ended_before) == (None, None)
        else:
            assert (last_seen, ended_before) == (cids[-1], cids[-1] + 1)
        gaps = [(a + 1, b) for a, b in zip(cids, cids[1:]) if b != a + 1]
        assert sorted(absent.get(pk, [])) == gaps, key
        reopened += len(gaps)
        when, s = last[key]
        t = int(when.timestamp())
        assert ((p0, p1), (b0, b1)) == (s.packets, s.bytes)
        assert (expires - t, t - created) == (s.expire, s.creation)
        for side, name in ((0, "wire"), (1, "stack")):
            a0, port0, a1, port1, rdomain = keys[(pk, side)]
            want = truth[key][name]
            assert ([a0, a1], [port0, port1], rdomain) == (want["addr"], want["port"],
                                                           want["rdomain"])
    assert reopened > 5
    assert sum(r for r, in _query(pg, "SELECT reopened FROM collections")) == reopened


def test_every_collection_is_rebuilt_exactly_and_alike(series, replayed):
    """History.table_at and states(at=) give back each snapshot, from PostgreSQL as
    from SQLite."""
    from pfhistory.history import History
    from pfhistory.pfctl_text import format_records

    snapshots, _truth = series
    sqlite, pg, _out = replayed
    with History(pg) as hp, History(str(sqlite)) as hs:
        for when, path in snapshots:
            data = path.read_bytes()
            table = hp.table_at(when)
            assert table == format_records(data, 2) == hs.table_at(when)
            rebuilt = list(hp.states(at=when))
            assert sorted(s.record for s in rebuilt) == sorted(_records(data))
            assert all(s.history.exact and s.history.collection[1] == when for s in rebuilt)


def test_sqlite_and_postgresql_hold_the_same_history(replayed):
    sqlite, pg, (out_sqlite, out_pg) = replayed
    assert _untimed(out_pg) == _untimed(out_sqlite)
    assert " 0 reopened" not in out_pg.splitlines()[HOLE + 1]
    mine, theirs = _dump(pg), _dump(sqlite)
    assert mine == theirs
    assert all(mine[t] for t in ("samples", "peer_samples", "rollups", "rollup_hours"))


@pytest.mark.parametrize("args", [
    ("show", "-v"),
    ("show", "--format", "json", "--order", "duration"),
    ("show", "--at", "2026-11-24T22:59:00Z", "-vv"),
    ("show", "--order", "bytes", "--format", "csv"),
    ("show", "--host", "10.0.0.0/8", "--closed", "--min-bytes", "1000", "--order", "last_seen"),
    ("summary",),
    ("report", "--since", "2026-11-24T22:00Z", "--until", "2026-11-24T23:10Z", "--format",
     "json"),
])
def test_commands_read_the_same_from_both(replayed, args):
    sqlite, pg, _out = replayed
    mine, theirs = _on_both((pg, sqlite), *args)
    if args[0] == "report":
        mine, theirs = (json.loads(text) for text in (mine, theirs))
        for rep in (mine, theirs):
            del rep["generated_at"], rep["database"]
        top = [t for s in mine["sections"] for t in s["tables"]
               if t["key"] == "local_bytes_out"]
        assert top and top[0]["rows"]
    assert mine == theirs
    assert len(mine) > 3


def test_recording_the_same_snapshot_twice_changes_only_the_log(pg_url, series):
    snapshots, _truth = series
    snap = snapshots[1][1]
    _ok(run_cli("collect", "--db", pg_url, "--from-file", snap))
    before = _dump(pg_url)
    _ok(run_cli("collect", "--db", pg_url, "--from-file", snap))
    after = _dump(pg_url)
    assert after.pop("collections")[:1] == before.pop("collections")
    assert after == before and before["states"]
    log = _query(pg_url, "SELECT inserted, updated, closed, reopened, samples FROM collections "
                         "ORDER BY id")
    assert log == [(len(before["states"]), 0, 0, 0, 0), (0, 0, 0, 0, 0)]


def test_rollup_then_prune(series, replayed, pg_server, tmp_path):
    """`collect --no-rollups` then `rollup` gives what collect rolled up; `prune`
    then deletes from PostgreSQL exactly what it deletes from SQLite."""
    snapshots, _truth = series
    sqlite, pg_replayed, _out = replayed
    pg = pg_server.create_database()
    _ok(run_cli("collect", "--db", pg, "--no-rollups", "--from-file",
                *[p for _t, p in snapshots]))
    assert _query(pg, "SELECT count(*) FROM rollup_hours") == [(0,)]
    assert _ok(run_cli("rollup", "--db", pg, "-v")).startswith("1 hour(s) rolled up")
    assert _dump(pg) == _dump(pg_replayed)
    copy = tmp_path / "h.db"
    with closing(sqlite3.connect(sqlite)) as src, closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    before = "2026-11-24T23:00:00Z"
    going = _query(pg, "SELECT count(*) FROM states WHERE ended_before_at <= %s AND "
                       "ended_before <= (SELECT max(last_collection) FROM rollup_hours)",
                   (int(datetime.fromisoformat(before.replace("Z", "+00:00")).timestamp()),))
    said = _on_both((pg, copy), "prune", "--before", before, "-v")
    assert said[0] == said[1]
    assert said[0].startswith(f"pruned {going[0][0]} states and ") and going[0][0] > 50
    mine = _dump(pg)
    assert mine == _dump(copy)
    assert len(mine["states"]) == len(_dump(pg_replayed)["states"]) - going[0][0]
    assert _query(pg, "SELECT count(*) FROM state_keys k WHERE NOT EXISTS "
                      "(SELECT 1 FROM states s WHERE s.pk = k.state_pk)") == [(0,)]


def test_fields_at_their_extremes_come_back_byte_for_byte(pg_url, tmp_path):
    """64-bit ids and counters at 2**63 - 1 and beyond, negative rtableids, every
    narrow field full: BIGINT's limits, not SQLite's."""
    from pfhistory.history import History
    from pfhistory.pfctl_text import format_records
    from test_history import _extreme_snapshots

    snapshots = _extreme_snapshots(tmp_path)
    sqlite = tmp_path / "h.db"
    _on_both((pg_url, sqlite), "collect", "--from-file", *[p for _t, p in snapshots])
    with History(pg_url) as h:
        for when, path in snapshots:
            data = path.read_bytes()
            assert h.table_at(when) == format_records(data, 2)
            assert sorted(s.record for s in h.states(at=when)) == sorted(_records(data))
    for args in (("show", "--order", "bytes", "-vv"), ("show", "--min-bytes", 1 << 62)):
        mine, theirs = _on_both((pg_url, sqlite), *args)
        assert mine == theirs and mine
    assert _dump(pg_url) == _dump(sqlite)


def test_counters_that_jump_to_the_cap(pg_url, tmp_path):
    """A state whose counters go from one to 2**64 - 1 (stored as 2**63 - 1) on both
    sides between two collections, in an hour that is then rolled up: what it moved
    is past BIGINT's range, which PostgreSQL refuses where SQLite goes to REAL."""
    from golden_records import Key, Peer, build_state

    hour = 1_795_557_600                        # 2026-11-24T22:00Z

    def snapshot(k, at, n):
        path = tmp_path / f"{k}.pf"
        path.write_bytes(build_state(
            wire=Key("192.0.2.1", 443, "10.0.0.1", 40000), id=1, ifname=b"em0",
            direction=pf.PF_OUT, proto=6, src=Peer(state=4), dst=Peer(state=4),
            packets=(n, n), bytes_=(n, n), creation=10, expire=86400, creatorid=7))
        os.utime(path, (at, at))
        return path

    files = [snapshot(0, hour - 30, 1), snapshot(1, hour + 30, U64 - 1),
             snapshot(2, hour + 3630, U64 - 1)]
    sqlite = tmp_path / "h.db"
    _on_both((pg_url, sqlite), "collect", "--from-file", *files)
    cap = (1 << 63) - 1
    assert _query(pg_url, "SELECT packets, bytes FROM collections WHERE id = 2") == \
        [(cap, cap)]
    assert _dump(pg_url) == _dump(sqlite)
    # The connections view sums both directions in NUMERIC (migration 0009).
    assert _query(pg_url, "SELECT bytes FROM connections") == [(2 * cap,)]
    summary = _ok(run_cli("summary", "--db", pg_url))
    # Both sides moved 2**63 - 2 in the hour: their sum, exactly.
    assert f"{2 * (cap - 1):,} bytes" in summary
    mine, theirs = (json.loads(text) for text in _on_both(
        (pg_url, sqlite), "report", "--since", "2026-11-24T21:00Z", "--until",
        "2026-11-24T23:30Z", "--format", "json"))
    for rep in (mine, theirs):
        del rep["generated_at"], rep["database"]
    assert mine == theirs


# -- two writers ----------------------------------------------------------------------------

def test_a_second_writer_waits_a_bounded_time_then_says_so(pg_url, series):
    snapshots, _truth = series
    _ok(run_cli("collect", "--db", pg_url, "--from-file", snapshots[0][1]))
    url = db.resolve_url(pg_url)
    engine = db.open_engine(url)
    try:
        with db.write_transaction(engine):
            started = time.monotonic()
            result = run_cli("collect", "--db", pg_url, "--from-file", snapshots[1][1],
                             "--wait", "1")
            waited = time.monotonic() - started
    finally:
        engine.dispose()
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"pfhistory: {url.render_as_string(hide_password=True)}: another pfhistory is "
        f"writing; gave up after waiting 1 s, nothing was recorded"]
    assert 0.9 <= waited < 10
    assert _query(pg_url, "SELECT count(*) FROM collections") == [(1,)]


def test_two_collectors_at_once_both_record(pg_url, series):
    snapshots, _truth = series
    _ok(run_cli("collect", "--db", pg_url, "--from-file", snapshots[0][1]))
    # Two different tables a minute apart, started together: the second to get the
    # writers' lock waits, then records, unless it is the older one, which the
    # history refuses (it only moves forward). Never "gave up".
    procs = []
    for (_t, path), at in zip(snapshots[1:3], ("2026-11-24T23:30:00Z", "2026-11-24T23:31:00Z")):
        procs.append(subprocess.Popen([sys.executable, "-m", "pfhistory", "collect", "--db",
                                       pg_url, "--from-file", str(path), "--at", at],
                                      stderr=subprocess.PIPE, text=True))
        time.sleep(0.2)     # the older one usually takes the lock first
    (rc_old, err_old), (rc_new, err_new) = [(p.wait(timeout=120), p.stderr.read())
                                            for p in procs]
    for p in procs:
        p.stderr.close()
    assert (rc_new, err_new) == (0, "")
    assert (rc_old, err_old) == (0, "") or (
        rc_old == 1 and "the history only moves forward" in err_old), err_old
    log = _query(pg_url, "SELECT id, states FROM collections ORDER BY id")
    recorded = snapshots[1:3] if rc_old == 0 else snapshots[2:3]
    assert [i for i, _n in log] == list(range(1, 2 + len(recorded)))
    assert [n for _i, n in log[1:]] == [os.path.getsize(p) // R for _t, p in recorded]
    n, = _query(pg_url, "SELECT count(*) FROM states")[0]
    assert _query(pg_url, "SELECT count(*) FROM state_keys") == [(2 * n,)]


# -- pfsync -----------------------------------------------------------------------------------

def _messages(pcap):
    from collections import Counter

    from pfhistory.capture import read_frames

    return Counter(m.action for f in read_frames(pcap)
                   for m in pfsync.decode_ip(f.data)[1].messages)


def test_a_pfsync_capture_gives_the_ground_truth(pg_url, tmp_path):
    from pfhistory.simulate import SimulationConfig
    from test_syncrecorder import truth

    pcap = tmp_path / "fw.pcap"
    _ok(run_cli("simulate", "--pfsync", pcap, "--states", 200, "--duration", "3m",
                "--seed", 3))
    kinds = _messages(pcap)
    assert kinds[pfsync.ACT_UPD_C] > 100 and kinds[pfsync.ACT_DEL_C] > 100
    sqlite = tmp_path / "h.db"
    mine, theirs = _on_both((pg_url, sqlite), "collect", "--from-pcap", pcap, "-v")
    assert _untimed(mine) == _untimed(theirs) and "0 malformed" in mine
    assert _dump(pg_url) == _dump(sqlite)
    cfg = SimulationConfig(states=200, duration=180.0, seed=3,
                           start=datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc))
    expected = truth(cfg)
    got = {r[0]: r[1:] for r in _query(
        pg_url, "SELECT state_id, created_at, ended_before, ended_before_at, ended_by "
                "FROM states")}
    assert set(got) == set(expected)
    for sid, (created, ended) in expected.items():
        created_at, ended_before, ended_at, ended_by = got[sid]
        # The record's age and the packet's time are whole seconds, and a message
        # waits up to a second for its packet (syncsim.SEND_DELAY).
        assert -1.0 <= created_at - created <= 2.0
        if ended is None:
            assert ended_before is None
        else:
            assert ended_by == 1 and -1.0 <= ended_at - ended <= 1.0
    assert _query(pg_url, "SELECT count(*) FROM partial_states") == [(0,)]


def test_compressed_updates_stale_partial_and_clear(pg_url, tmp_path):
    """A capture of every compressed path: updates that move peers back (ignored, as
    the kernel does, through SEQ_GT in SQL), one across the sequence wrap, messages
    about states never seen whole (partial), DEL_C and CLR."""
    from pfhistory.capture import PcapWriter
    from test_syncrecorder import CID, OTHER, T0, dgram, rec

    story = [
        (T0, dgram((pfsync.ACT_INS, rec(1, state=4, seq=1000)),
                   (pfsync.ACT_INS, rec(2, state=2, seq=0xFFFFFF00, proto=17)),
                   (pfsync.ACT_INS, rec(3, state=4, seq=0xFFFFFF00)),
                   (pfsync.ACT_INS, rec(4, ifname=b"em1")),
                   (pfsync.ACT_INS, rec(5, creatorid=OTHER)))),
        (T0 + 1, dgram(pfsync.upd_c(rec(1, state=2, seq=1000)))),      # state back
        (T0 + 2, dgram(pfsync.upd_c(rec(1, state=4, seq=900)))),       # seq back
        (T0 + 3, dgram((pfsync.ACT_UPD, rec(1, state=4, seq=999)))),   # whole, back
        (T0 + 4, dgram(pfsync.upd_c(rec(2, state=1, proto=17)))),      # UDP back
        (T0 + 5, dgram(pfsync.upd_c(rec(3, state=9, seq=0x10)))),      # wraps: forward
        (T0 + 6, dgram(pfsync.upd_c(rec(7, state=3)), pfsync.del_c(CID, 8))),  # partial
        (T0 + 7, dgram((pfsync.ACT_UPD, rec(7)))),                     # 7 made whole
        (T0 + 8, dgram(pfsync.clr(CID, b"em1"))),
        (T0 + 9, dgram(pfsync.del_c(CID, 3))),
        (T0 + 10, dgram(pfsync.clr(CID))),
    ]
    pcap = tmp_path / "story.pcap"
    with PcapWriter(pcap) as w:
        for at, data in story:
            w.write(at, data)
    sqlite = tmp_path / "h.db"
    mine, theirs = _on_both((pg_url, sqlite), "collect", "--from-pcap", pcap, "-v")
    assert _untimed(mine) == _untimed(theirs)
    assert " 4 stale" in mine and " 2 partial" in mine
    got = {r[0]: r[1:] for r in _query(
        pg_url, "SELECT s.state_id, p.state, p.seqlo, s.ended_before_at, s.ended_by "
                "FROM states s JOIN state_peers p ON p.state_pk = s.pk AND p.side = 0")}
    assert got == {1: (4, 1000, T0 + 10, 1), 2: (2, 0xFFFFFF00, T0 + 10, 1),
                   3: (9, 0x10, T0 + 9, 1), 4: (4, 100, T0 + 8, 1),
                   5: (4, 100, None, None), 7: (4, 100, T0 + 10, 1)}
    assert _query(pg_url, "SELECT state_id, ended_at FROM partial_states") == [(8, T0 + 6)]
    assert _dump(pg_url) == _dump(sqlite)


def test_seq_gt_in_sql_is_the_kernels_rule_on_postgresql(pg_url):
    """SEQ_GT(a, b), (int32)(a - b) > 0, as queries writes it (without %, which
    PostgreSQL's drivers read as a placeholder), across the u32 wrap."""
    import random

    from pfhistory.queries import _SEQ_GT

    rng = random.Random(3)
    edges = [0, 1, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1]
    pairs = [(a, b) for a in edges for b in edges]
    pairs += [(rng.randrange(2**32), rng.randrange(2**32)) for _ in range(500)]
    engine = db.open_engine(db.resolve_url(pg_url))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TEMP TABLE pairs (a BIGINT, b BIGINT)")
            conn.exec_driver_sql("INSERT INTO pairs VALUES (%s, %s)", pairs)
            got = conn.exec_driver_sql(
                "SELECT a, b, CASE WHEN " + _SEQ_GT.format(a="a", b="b")
                + " THEN 1 ELSE 0 END FROM pairs").fetchall()
    finally:
        engine.dispose()
    assert len(got) == len(pairs)
    for a, b, gt in got:
        assert bool(gt) == (0 < ((a - b) & 0xFFFFFFFF) < 2**31), (a, b)
