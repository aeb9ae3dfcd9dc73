"""The interval questions of docs/forensics.md (Q6: bytes moved in an interval; Q15:
half-open states by source) give what the history says happened in the interval.

Each answer is checked against one computed another way: Q6 against the histories
recorded from the first snapshots only, up to each end of the interval (a state's
values there are its values at that collection, read through the connections view:
no sample involved), and against `pfhistory report`'s bytes moved; Q15 against the
states rebuilt at the collection that first saw each one (History) and against the
report's table of half-open states. Each question's sqlite3 query runs on SQLite,
its psql query on PostgreSQL, both with their example values replaced.
"""

import json
import re
import shutil
import sqlite3
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import START, run_cli, simulated
from test_forensics_doc import sqlite_rows
from pfhistory.history import History
from pfhistory.pfvar import PF_OUT, TCPS_ESTABLISHED

DOC = Path(__file__).resolve().parent.parent / "docs" / "forensics.md"
T0 = int(START.timestamp())


def _question(name):
    """(sqlite3 query, psql query) of question name: its ```sql block, and the
    ```sql postgresql block after it if there is one."""
    text = DOC.read_text()
    m = re.search(rf"^### {name}\..*?(?=^#{{2,3}} |\Z)", text, re.M | re.S)
    assert m, f"{name} is not in {DOC.name}"
    blocks = re.findall(r"^```(sql[^\n]*)\n(.*?)^```", m.group(0), re.M | re.S)
    assert blocks and blocks[0][0].strip() == "sql", name
    pg = next((body for info, body in blocks[1:] if info.strip() == "sql postgresql"),
              blocks[0][1])
    return blocks[0][1], pg


def _iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _normal(v):
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (memoryview, bytearray)):
        return bytes(v)
    return v


def _ask_sqlite(db, name, limit=True, **params):
    sql = _question(name)[0]
    if not limit:
        sql = re.sub(r"\bLIMIT \d+\s*;", ";", sql)
    return sqlite_rows(db, sql, params)


def _ask_pg(url, name, **params):
    """The psql query with its :'name' values bound (they are all quoted text here)."""
    import psycopg
    from psycopg.rows import dict_row

    sql = _question(name)[1]
    sql = re.sub(r"--[^\n]*", "", sql).replace("%", "%%")
    sql = re.sub(r":'(\w+)'", r"%(\1)s", sql)
    with psycopg.connect(url, options="-c default_transaction_read_only=on",
                         row_factory=dict_row) as conn:
        return [{k: _normal(v) for k, v in r.items()} for r in conn.execute(sql, params)]


# -- the histories -------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A 3,000-state firewall, a snapshot a minute from 22:00 to 22:06 but for 22:03
    (cron missed it), recorded one snapshot at a time: {"db": the whole history,
    "snapshots": [path], "times": [epoch], "upto": {epoch: a copy of the history as
    it was once the snapshot of that time was recorded}}."""
    out = tmp_path_factory.mktemp("forensic-intervals")
    series = simulated(out / "snapshots", 3000, 360.0, seed=33, missing=(3,), truth=False)
    db = out / "history.db"
    upto = {}
    times = []
    for t, path in series.snapshots:
        result = run_cli("collect", "--db", db, "--from-file", path)
        assert result.returncode == 0, result.stderr
        at = int(t.timestamp())
        times.append(at)
        upto[at] = out / f"upto-{at}.db"
        shutil.copy(db, upto[at])
    return {"db": db, "snapshots": [p for _t, p in series.snapshots], "times": times,
            "upto": upto}


@pytest.fixture(scope="module")
def recorded_pg(recorded, pg_server):
    url = pg_server.create_database()
    result = run_cli("collect", "--db", url, "--from-file", *recorded["snapshots"])
    assert result.returncode == 0, result.stderr
    return url


@pytest.fixture(scope="module")
def short_retention(recorded):
    """The same snapshots recorded keeping samples for two minutes only."""
    db = recorded["db"].parent / "short-retention.db"
    result = run_cli("collect", "--db", db, "--sample-retention", "2m",
                     "--from-file", *recorded["snapshots"])
    assert result.returncode == 0, result.stderr
    return db


# -- Q6 --------------------------------------------------------------------------------

def _view_counters(db):
    """{(creatorid, id): (local_addr, local_bin, bytes_out, bytes_in)} of every state
    of a history, as its connections view shows them."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {(c, i): (addr, bytes(b), o, n) for c, i, addr, b, o, n in con.execute(
            "SELECT creatorid, id, local_addr, local_bin, bytes_out, bytes_in "
            "FROM connections")}
    finally:
        con.close()


def _moved(recorded, since, until):
    """What each local_addr moved between the collection at or before since (the
    first, if none) and the one at or before until, from the histories as they were
    then: {local_addr: (sent, received, states that moved bytes)}, and local_bin."""
    times = recorded["times"]
    c0 = max([t for t in times if t <= since], default=times[0])
    c1 = max(t for t in times if t <= until)
    before, after = _view_counters(recorded["upto"][c0]), _view_counters(recorded["upto"][c1])
    sums = defaultdict(lambda: [0, 0, 0])
    bins = {}
    for key, (addr, bin_, out, in_) in after.items():
        was = before.get(key)
        sent = max(0, out - was[2]) if was else out
        received = max(0, in_ - was[3]) if was else in_
        if sent or received:
            s = sums[addr]
            s[0] += sent
            s[1] += received
            s[2] += 1
            bins[addr] = bin_
    return {a: tuple(s) for a, s in sums.items()}, bins


def _top(moved, bins, limit=10):
    ranked = sorted(moved.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), bins[kv[0]]))
    return [(addr, *s, 0) for addr, s in ranked[:limit]]


def _q6_rows(rows):
    return [(r["local_addr"], r["sent"], r["received"], r["states"], r["unknown"])
            for r in rows]


# since, until: from the first collection, across the missed one; collection-aligned;
# between collections; from before the history began (its first is the baseline).
INTERVALS = [(0, 240), (60, 360), (90, 330), (-3600, 120), (120, 120)]


@pytest.mark.parametrize("since, until", INTERVALS)
def test_q6_counts_what_moved_between_the_collections_at_the_ends(recorded, since, until):
    since, until = T0 + since, T0 + until
    rows = _ask_sqlite(recorded["db"], "Q6", since=_iso(since), until=_iso(until))
    moved, bins = _moved(recorded, since, until)
    assert _q6_rows(rows) == _top(moved, bins)
    if until > since:
        assert rows


def test_q6_in_postgresql_is_the_same(recorded, recorded_pg):
    for since, until in INTERVALS:
        params = {"since": _iso(T0 + since), "until": _iso(T0 + until)}
        assert _q6_rows(_ask_pg(recorded_pg, "Q6", **params)) == \
            _q6_rows(_ask_sqlite(recorded["db"], "Q6", **params)), (since, until)


def test_q6_over_every_endpoint_is_what_the_collections_and_the_report_counted(recorded):
    """Without its LIMIT, Q6's bytes add up to the bytes of the collections after since
    up to until, and for the period of the history's first collection to the hour's
    end to the report's bytes moved."""
    db = recorded["db"]
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for since, until in INTERVALS:
            since, until = T0 + since, T0 + until
            rows = _ask_sqlite(db, "Q6", limit=False, since=_iso(since), until=_iso(until))
            first = con.execute("SELECT min(id) FROM collections").fetchone()[0]
            expected = con.execute(
                "SELECT COALESCE(sum(bytes), 0) FROM collections WHERE collected_at > ? "
                "AND collected_at <= ? AND id <> ?", (since, until, first)).fetchone()[0]
            assert sum(r["sent"] + r["received"] for r in rows) == expected
            assert expected > 0 or since == until
    finally:
        con.close()
    rows = _ask_sqlite(db, "Q6", limit=False, since=_iso(T0), until=_iso(T0 + 3600))
    out = run_cli("report", "--db", db, "--since", _iso(T0) + "Z",
                  "--until", _iso(T0 + 3600) + "Z", "--format", "json")
    assert out.returncode == 0, out.stderr
    overview = next(t for s in json.loads(out.stdout)["sections"] for t in s["tables"]
                    if t["key"] == "overview")
    assert sum(r["sent"] + r["received"] for r in rows) == \
        dict(map(tuple, overview["rows"]))["bytes moved"]


def test_q6_says_when_the_samples_it_needs_have_expired(recorded, short_retention):
    """Kept two minutes, the samples of the first collections are gone: an interval
    from the first collection has states Q6 cannot count, and says how many; no
    endpoint is short of bytes without saying so. The last two minutes are whole."""
    since, until = _iso(T0), _iso(T0 + 360)
    full = {r["local_addr"]: r for r in _ask_sqlite(recorded["db"], "Q6", limit=False,
                                                    since=since, until=until)}
    short = _ask_sqlite(short_retention, "Q6", limit=False, since=since, until=until)
    assert sum(r["unknown"] for r in short) > 0
    for r in short:
        # A state it cannot count may have moved nothing: its endpoint is listed
        # all the same.
        whole = full.get(r["local_addr"], {"sent": 0, "received": 0})
        assert r["sent"] <= whole["sent"] and r["received"] <= whole["received"]
        if (r["sent"], r["received"]) != (whole["sent"], whole["received"]):
            assert r["unknown"] > 0, r
    recent = {"since": _iso(T0 + 240), "until": _iso(T0 + 360)}
    assert _q6_rows(_ask_sqlite(short_retention, "Q6", **recent)) == \
        _q6_rows(_ask_sqlite(recorded["db"], "Q6", **recent))


# -- Q15 -------------------------------------------------------------------------------

def _initiator(s):
    """The address that opened a state: the stack key's [1] of an out state, else the
    wire key's [0] (also of an af-to state, whose stack key has its sides swapped)."""
    return str(s.stack_key.addr[1] if s.direction == PF_OUT else s.wire_key.addr[0])


def _half_open(s):
    return s.src.state < TCPS_ESTABLISHED and s.dst.state < TCPS_ESTABLISHED


def _sources(db, since, until):
    """{source: (half_open, never_established, new_states)} of the states first seen
    after since up to until, each judged by its values of the collection that first
    saw it (rebuilt by History) and by its last observed ones."""
    first, last = {}, {}
    with History(str(db)) as h:
        for _cid, t in h.collections():
            at = int(t.timestamp())
            if since < at <= until:
                for s in h.states(at=at):
                    if int(s.history.first_seen.timestamp()) == at:
                        assert s.history.exact
                        first[(s.creatorid, s.id)] = s
        for s in h.states(since=since):
            if (s.creatorid, s.id) in first:
                last[(s.creatorid, s.id)] = s
    counts = defaultdict(lambda: [0, 0, 0])
    for key, s in first.items():
        c = counts[_initiator(s)]
        c[2] += 1
        if s.proto == 6 and _half_open(s):
            c[0] += 1
            c[1] += _half_open(last[key])
    return {k: tuple(v) for k, v in counts.items() if v[0]}


def _q15(rows):
    return {r["source"]: (r["half_open"], r["never_established"], r["new_states"])
            for r in rows}


@pytest.mark.parametrize("since, until", [(0, 3600), (0, 180), (120, 300)])
def test_q15_counts_states_half_open_when_first_seen(recorded, since, until):
    since, until = T0 + since, T0 + until
    rows = _ask_sqlite(recorded["db"], "Q15", since=_iso(since), until=_iso(until))
    expected = _sources(recorded["db"], since, until)
    assert rows and _q15(rows) == expected
    # Some were answered after they were first seen, or the test says nothing.
    if until - since == 3600:
        assert any(h > n for h, n, _new in expected.values())
    ranked = [(-r["half_open"], -r["new_states"]) for r in rows]
    assert ranked == sorted(ranked)


def test_q15_in_postgresql_is_the_same(recorded, recorded_pg):
    params = {"since": _iso(T0), "until": _iso(T0 + 3600)}
    pg = _ask_pg(recorded_pg, "Q15", **params)
    assert pg == _ask_sqlite(recorded["db"], "Q15", **params)


def test_q15_is_the_reports_table_of_half_open_states(recorded):
    """For whole hours, the report's half-open states and new states of each source it
    lists are Q15's."""
    since, until = T0, T0 + 3600
    rows = _q15(_ask_sqlite(recorded["db"], "Q15", since=_iso(since), until=_iso(until)))
    out = run_cli("report", "--db", recorded["db"], "--since", _iso(since) + "Z",
                  "--until", _iso(until) + "Z", "--format", "json")
    assert out.returncode == 0, out.stderr
    table = next(t for s in json.loads(out.stdout)["sections"] for t in s["tables"]
                 if t["key"] == "halfopen")
    assert table["rows"]
    for source, half_open, new_states, _share in table["rows"]:
        assert (rows[source][0], rows[source][2]) == (half_open, new_states), source
    # The report lists the sources with the most: Q15 has no others with more.
    most = sorted((h for h, _n, _new in rows.values()), reverse=True)
    assert most[:len(table["rows"])] == [r[1] for r in table["rows"]]
