"""Every query of docs/forensics.md runs in SQLite and in PostgreSQL and agrees with
the Python API.

A question's ```sql block is its sqlite3 query, and its psql query too unless a
```sql postgresql block follows it. Each test asking a question runs once per
database: on PostgreSQL the psql query runs on a history recorded by the CLI from
the same snapshots, and its rows must be the sqlite3 query's rows (in the same
order where the query orders them) before the test checks them against the API.
psql's :'name' (a quoted text value) and :name (pasted as it is: numbers) become
bound parameters; the PostgreSQL tests skip, saying why, without a server.
"""

import ipaddress
import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections import Counter, defaultdict
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import START, run_cli, simulated
from pfhistory import pf
from pfhistory.history import History

DOC = Path(__file__).resolve().parent.parent / "docs" / "forensics.md"
T0 = int(START.timestamp())
BACKENDS = ("sqlite", "postgresql")

# The parts of a query text that matter for its parameters, as the shells read it:
# string literals and comments hold none; "::" is PostgreSQL's cast.
_TOKENS = re.compile(r"(?P<string>'(?:[^']|'')*')|(?P<comment>--[^\n]*)|(?P<cast>::)"
                     r"|:'(?P<quoted>\w+)'|:(?P<raw>\w+)|(?P<percent>%)")


def _sections(text):
    """[(question, [(info string, body)])] of the document, in order."""
    parts = re.split(r"^(#{1,3} .*)$", text, flags=re.M)
    out = []
    for heading, body in zip(parts[1::2], parts[2::2]):
        m = re.match(r"### (Q\d+)\.", heading)
        if m:
            out.append((m.group(1),
                        re.findall(r"^```(sql[^\n]*)\n(.*?)^```", body, re.M | re.S)))
    return out


def _value(text):
    """A parameter value as a shell line sets it: 'quoted' text, or a number."""
    text = text.strip()
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    return int(text)


def _queries():
    """{"Q1": {"sqlite": (sql, {param: example}), "postgresql": (sql, {param: example})}}"""
    out = {}
    for name, blocks in _sections(DOC.read_text()):
        infos = [info.strip() for info, _body in blocks]
        assert infos in (["sql"], ["sql", "sql postgresql"]), \
            f"{name}: a sqlite3 query, then at most one psql variant: got {infos}"
        sqlite_sql = blocks[0][1]
        pg_sql = blocks[1][1] if len(blocks) == 2 else sqlite_sql
        out[name] = {
            "sqlite": (sqlite_sql, {k: _value(v) for k, v in re.findall(
                r"^-- \.param set :(\w+) (.+)$", sqlite_sql, re.M)}),
            "postgresql": (pg_sql, {k: _value(v) for k, v in re.findall(
                r"^-- \\set (\w+) (.+)$", pg_sql, re.M)}),
        }
    return out


QUERIES = _queries()


def _psql_params(sql):
    """(the text for psycopg, {name: "quoted" or "raw"}) of a psql query: :'name'
    and :name become %(name)s, a literal % becomes %%."""
    used = {}

    def sub(m):
        if m["quoted"] or m["raw"]:
            name = m["quoted"] or m["raw"]
            used[name] = "quoted" if m["quoted"] else "raw"
            return f"%({name})s"
        return m.group(0).replace("%", "%%")

    return _TOKENS.sub(sub, sql), used


def _sqlite_params(sql):
    """The names of the parameters a sqlite3 query uses (:name)."""
    return {m["raw"] for m in _TOKENS.finditer(sql) if m["raw"]} | \
        {m["quoted"] for m in _TOKENS.finditer(sql) if m["quoted"]}


def _iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _ordered(sql):
    """Whether the statement itself (not a window or subquery) says ORDER BY."""
    sql = re.sub(r"--[^\n]*", "", sql)
    while True:
        flat = re.sub(r"\([^()]*\)", "", sql)
        if flat == sql:
            return re.search(r"\bORDER\s+BY\b", sql, re.I) is not None
        sql = flat


def _normal(v):
    """A value as both databases can give it: PostgreSQL's timestamps as SQLite's UTC
    text, its NUMERIC sums as int, quotients as float (to 9 places)."""
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else round(float(v), 9)
    if isinstance(v, float):
        return int(v) if v.is_integer() else round(v, 9)
    if isinstance(v, (memoryview, bytearray)):
        return bytes(v)
    return v


def _rows(rows):
    return [{k: _normal(v) for k, v in r.items()} for r in rows]


# -- the histories ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    out = tmp_path_factory.mktemp("forensics")
    series = simulated(out / "snapshots", 3000, 360.0, seed=21, missing=(3,), truth=False)
    return [p for _t, p in series.snapshots]


def _close_the_hour(target, snapshots):
    """One more collection after 23:00: it completes the hour 22:00, which collect
    rolls up (Q16)."""
    out = run_cli("collect", "--db", target, "--from-file", snapshots[-1],
                  "--at", _iso(T0 + 3600 + 60) + "Z")
    assert out.returncode == 0, out.stderr


def _recorded(target, snapshots):
    """target (a SQLite path or a URL) with the snapshots recorded by the CLI."""
    result = run_cli("collect", "--db", target, "--from-file", *snapshots)
    assert result.returncode == 0, result.stderr
    return target


@pytest.fixture(scope="module")
def forensic_db(snapshots):
    return _recorded(snapshots[0].parent.parent / "history.db", snapshots)


@pytest.fixture(scope="module")
def forensic_pg(snapshots, pg_server):
    """The same snapshots recorded into PostgreSQL: the database's URL."""
    return _recorded(pg_server.create_database(), snapshots)


@pytest.fixture(scope="module")
def closed_db(forensic_db, snapshots):
    db = forensic_db.parent / "closed.db"
    shutil.copy(forensic_db, db)
    _close_the_hour(db, snapshots)
    return db


@pytest.fixture(scope="module")
def closed_pg(snapshots, pg_server):
    url = _recorded(pg_server.create_database(), snapshots)
    _close_the_hour(url, snapshots)
    return url


@pytest.fixture(scope="module")
def history(forensic_db):
    with History(str(forensic_db)) as h:
        yield h


# -- running a question ----------------------------------------------------------------

def _run(db, name, **overrides):
    """The sqlite3 query's rows on a SQLite history, as dicts."""
    sql, params = QUERIES[name]["sqlite"]
    return sqlite_rows(db, sql, {**params, **overrides})


def sqlite_rows(db, sql, params):
    """Rows of sql on a SQLite history opened read-only, as dicts."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, params)]
    finally:
        con.close()


def _run_pg(url, name, **overrides):
    """The psql query's rows on a PostgreSQL history, as dicts, its parameters bound."""
    import psycopg
    from psycopg.rows import dict_row

    sql, params = QUERIES[name]["postgresql"]
    text, used = _psql_params(sql)
    params = {**params, **overrides}
    with psycopg.connect(url, options="-c default_transaction_read_only=on",
                         row_factory=dict_row) as conn:
        return conn.execute(text, {k: params[k] for k in used}).fetchall()


def _both(db, url, name, **overrides):
    """The psql query's rows, checked equal to the sqlite3 query's: same columns in the
    same order, same rows (in the same order if the query orders them)."""
    pg_rows = [list(r.items()) for r in _rows(_run_pg(url, name, **overrides))]
    lite_rows = [list(r.items()) for r in _rows(_run(db, name, **overrides))]
    if not _ordered(QUERIES[name]["postgresql"][0]):
        pg_rows, lite_rows = sorted(pg_rows, key=repr), sorted(lite_rows, key=repr)
    assert pg_rows == lite_rows, f"{name}: PostgreSQL and SQLite differ ({overrides})"
    return [dict(r) for r in pg_rows]


@pytest.fixture(params=BACKENDS)
def ask(request, forensic_db):
    """ask(question, **params): its rows on this backend (values as _normal gives them);
    on PostgreSQL, only once they equal SQLite's."""
    if request.param == "sqlite":
        return lambda name, **kw: _rows(_run(forensic_db, name, **kw))
    url = request.getfixturevalue("forensic_pg")
    return lambda name, **kw: _both(forensic_db, url, name, **kw)


def _hex(s):
    return f"{s.id:016x}"


def _packed(text):
    return ipaddress.ip_address(text).packed


# -- the document ----------------------------------------------------------------------

def test_the_document_has_at_least_twelve_questions():
    assert len(QUERIES) >= 12
    assert [int(n[1:]) for n in QUERIES] == list(range(1, len(QUERIES) + 1))
    assert all(sql.strip() for q in QUERIES.values() for sql, _ in q.values())


@pytest.mark.parametrize("name", sorted(QUERIES, key=lambda n: int(n[1:])))
def test_every_query_sets_the_parameters_it_uses(name):
    """Each query's comment lines set exactly the parameters it uses, to the same
    example values in both shells; psql pastes :name unquoted, so only numbers."""
    sqlite_sql, sqlite_params = QUERIES[name]["sqlite"]
    pg_sql, pg_params = QUERIES[name]["postgresql"]
    assert _sqlite_params(sqlite_sql) == set(sqlite_params), \
        f"{name}: the sqlite3 query's -- .param set lines"
    _text, used = _psql_params(pg_sql)
    assert set(used) == set(pg_params), f"{name}: the psql query's -- \\set lines"
    assert pg_params == sqlite_params, f"{name}: the example values differ"
    for param, how in used.items():
        assert how == "quoted" or isinstance(pg_params[param], int), \
            f"{name}: psql pastes :{param} as it is: write :'{param}' for a text value"


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_query_runs(backend, request, forensic_db):
    """With the document's example values; on PostgreSQL, to SQLite's answers."""
    for name in QUERIES:
        if backend == "sqlite":
            _run(forensic_db, name)
        else:
            _both(forensic_db, request.getfixturevalue("forensic_pg"), name)


def _psql():
    found = shutil.which("psql")
    if found:
        return found
    import pg_server as pg

    try:
        return os.path.join(pg.find_binaries(), "psql")
    except pg.Unavailable:
        return None


def _psql_text(v):
    """A value as psql --csv prints it."""
    if v is None:
        return ""
    if isinstance(v, Decimal):
        return format(v, "f")
    if isinstance(v, datetime):
        return v.isoformat(" ")
    return str(v)


def test_psql_runs_the_document_as_written(forensic_pg):
    """Each psql query pasted into psql after its own \\set lines, uncommented, gives
    the rows the test harness gets with bound parameters."""
    import csv

    psql = _psql()
    if not psql or not os.access(psql, os.X_OK):
        pytest.skip("no psql on PATH nor beside initdb")
    env = dict(os.environ, PGOPTIONS="-c default_transaction_read_only=on", LC_ALL="C")
    for name in QUERIES:
        sql, _params = QUERIES[name]["postgresql"]
        sets = re.findall(r"^-- (\\set .+)$", sql, re.M)
        out = subprocess.run([psql, "-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1",
                              "-d", forensic_pg], input="\n".join(sets + [sql]),
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, f"{name}: {out.stderr}"
        printed = list(csv.reader(out.stdout.splitlines()))
        rows = _run_pg(forensic_pg, name)
        header = list(rows[0]) if rows else printed[0]
        assert printed == [header] + [[_psql_text(v) for v in r.values()] for r in rows], name


# -- the questions ---------------------------------------------------------------------

def _top_local(history):
    totals = Counter()
    for s in history.states():
        totals[str(s.stack_key.addr[1])] += sum(s.bytes)
    return next(h for h, _ in totals.most_common() if h.startswith("10."))


def test_q1_host_during_interval(ask, history):
    since, until = T0 + 60, T0 + 180
    # A local host that is the local end of some states and the remote end of
    # others (it sent into its own interface).
    local = {str(s.stack_key.addr[1]) for s in history.states(since=since, until=until)}
    host = min(str(s.wire_key.addr[0]) for s in history.states(since=since, until=until)
               if str(s.wire_key.addr[0]) in local and str(s.wire_key.addr[0]).startswith("10."))
    rows = ask("Q1", host=host, since=_iso(since), until=_iso(until))
    # Either end: a host is the remote end of the in states on its own interface.
    expected = [s for s in history.states(host=host, since=since, until=until)
                if host in (str(s.stack_key.addr[1]), str(s.wire_key.addr[0]))]
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}
    assert {r["direction"] for r in rows if r["remote_addr"] == host} == {"in"}


def test_q2_nat_reverse_lookup(ask, history):
    at = T0 + 120
    nat_states = [s for s in history.states(nat=True, since=at, until=at, direction="out")
                  if s.wire_key.port[1]]
    target = nat_states[len(nat_states) // 2]
    addr, port = str(target.wire_key.addr[1]), int(target.wire_key.port[1])
    rows = ask("Q2", addr=addr, port=port, at=_iso(at))
    expected = [s for s in history.states(host=addr, port=port, nat=True, since=at, until=at)
                if str(s.wire_key.addr[1]) == addr and s.wire_key.port[1] == port]
    assert {r["id"] for r in rows} == {_hex(s) for s in expected}
    assert str(target.stack_key.addr[1]) in {r["internal_addr"] for r in rows}


def test_q3_port_open_at_a_moment(ask, history):
    at = T0 + 120
    rows = ask("Q3", port=443, at=_iso(at))
    expected = [s for s in history.states(port=443, since=at, until=at)
                if (s.direction == pf.PF_IN and s.stack_key.port[1] == 443)
                or (s.direction == pf.PF_OUT and s.wire_key.port[0] == 443)]
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}


def test_q4_table_size_at_a_moment(ask, history):
    for offset in (0, 150, 200, 330):
        rows = ask("Q4", at=_iso(T0 + offset))
        assert rows[0]["states"] == len(list(history.states(at=T0 + offset)))


def test_q5_open_for_days(ask, history):
    rows = ask("Q5", days=3)
    expected = list(history.states(open=True, min_duration=3 * 86400))
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}


def test_q6_top_local_hosts(ask, history):
    """What each state moved between the collections at the interval's ends (its
    values there, rebuilt by History; gone by the end: its last ones), by local_addr
    (of an af-to state its initiator, the wire key's [0])."""
    since, until = T0, T0 + 240
    rows = ask("Q6", since=_iso(since), until=_iso(until))
    start = {(s.creatorid, s.id): s.bytes for s in history.states(at=since)}
    end = {(s.creatorid, s.id): s.bytes for s in history.states(at=until)}
    totals = defaultdict(int)
    for s in history.states(since=since, until=until):
        key = (s.creatorid, s.id)
        moved = sum(max(0, now - was) for now, was in
                    zip(end.get(key, s.bytes), start.get(key, (0, 0))))
        afto = s.wire_key.record_af != s.stack_key.record_af
        if moved:
            totals[str(s.wire_key.addr[0] if afto else s.stack_key.addr[1])] += moved
    top = sorted(totals.items(), key=lambda kv: (-kv[1], _packed(kv[0])))[:10]
    assert [(r["local_addr"], r["sent"] + r["received"]) for r in rows] == top
    assert {r["unknown"] for r in rows} == {0}


def test_q7_remote_hosts_by_connections(ask, history):
    rows = ask("Q7")
    counts = Counter(str(s.wire_key.addr[0]) for s in history.states(direction="out"))
    top = sorted(counts.items(), key=lambda kv: (-kv[1], _packed(kv[0])))[:10]
    assert [(r["remote_addr"], r["connections"]) for r in rows] == top


def test_q8_translations_of_a_host(ask, history):
    host = _top_local(history)
    rows = ask("Q8", host=host)
    expected = [s for s in history.states(local=host, nat=True)
                if str(s.stack_key.addr[1]) == host]
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}


def test_q9_rules(ask, history):
    rows = ask("Q9")
    counts = Counter(s.rule for s in history.states())
    # anchors split a rule number into several rows
    merged = Counter()
    for r in rows:
        merged[r["rule"] if r["rule"] is not None else 0xFFFFFFFF] += r["states"]
    assert rows and merged == counts


def test_q10_interface_inbound(ask, history):
    rows = ask("Q10", ifname="em0")
    expected = list(history.states(ifname="em0", direction="in"))
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}


def _view_end(s, local):
    """(record af, address) of the view's local (or remote) end: the stack key's
    [1] (the wire key's [0]); of an af-to state, whose stack key has its sides
    swapped, the wire key's [0] (the stack key's [0]), as pfctl prints it."""
    afto = s.wire_key.record_af != s.stack_key.record_af
    key, i = ((s.wire_key, 0) if afto else (s.stack_key, 1)) if local else \
        ((s.stack_key, 0) if afto else (s.wire_key, 0))
    return key.record_af, ipaddress.ip_address(str(key.addr[i]))


def test_q11_remote_cidr(ask, history):
    rows = ask("Q11")
    net = ipaddress.ip_network("198.51.100.0/24")
    expected = [s for s in history.states(remote="198.51.100.0/24")
                if _view_end(s, False)[0] == 2 and _view_end(s, False)[1] in net]
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}


def test_q12_ipv6_local_prefix(ask, history):
    rows = ask("Q12")
    net = ipaddress.ip_network("fd00::/64")
    expected = [s for s in history.states(local="fd00::/64")
                if _view_end(s, True)[0] == 24 and _view_end(s, True)[1] in net]
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}


def test_q13_largest(ask, history):
    rows = ask("Q13")
    expected = list(history.states(order="bytes", limit=10))
    assert [r["id"] for r in rows] == [_hex(s) for s in expected]


def test_q14_gaps(ask, history):
    rows = ask("Q14", interval=60)
    times = [t for _id, t in history.collections()]
    gaps = [(a, b) for a, b in zip(times, times[1:]) if (b - a).total_seconds() > 90]
    assert len(rows) == len(gaps) == 1
    assert rows[0]["seconds"] == 120
    assert (rows[0]["gap_from"], rows[0]["gap_to"]) == (_iso(T0 + 120), _iso(T0 + 240))


def test_q15_half_open(ask, history):
    """TCP states first seen before either side was ESTABLISHED, judged at the
    collection that first saw each (History), by initiator; and all states first
    seen, by initiator."""
    since, until = T0, T0 + 3600
    rows = ask("Q15", since=_iso(since), until=_iso(until))
    half, new = Counter(), Counter()
    for _cid, t in history.collections():
        if since < t.timestamp() <= until:
            for s in history.states(at=t):
                if s.history.first_seen == t:
                    source = str(s.stack_key.addr[1] if s.direction == pf.PF_OUT
                                 else s.wire_key.addr[0])
                    new[source] += 1
                    half[source] += s.proto == 6 and max(s.src.state, s.dst.state) < 4
    assert rows and {r["source"]: (r["half_open"], r["new_states"]) for r in rows} == \
        {k: (n, new[k]) for k, n in half.items() if n}


@pytest.mark.parametrize("backend", BACKENDS)
def test_q16_rollups_agree_with_the_report(backend, request, forensic_db, closed_db):
    """Rollups hold complete hours: a collection after 23:00 completes 22:00-23:00."""
    since, until = T0, T0 + 3600
    period = {"since": _iso(since), "until": _iso(until)}
    if backend == "sqlite":
        before = _rows(_run(forensic_db, "Q16", **period))
        target = closed_db
        rows = _rows(_run(closed_db, "Q16", **period))
    else:
        before = _both(forensic_db, request.getfixturevalue("forensic_pg"), "Q16", **period)
        target = request.getfixturevalue("closed_pg")
        rows = _both(closed_db, target, "Q16", **period)
    assert before == []
    out = run_cli("report", "--db", target, "--since", _iso(since) + "Z",
                  "--until", _iso(until) + "Z", "--format", "json")
    assert out.returncode == 0, out.stderr
    table = next(t for s in json.loads(out.stdout)["sections"] for t in s["tables"]
                 if t["key"] == "local_bytes_out")
    assert rows and [(r["host"], r["sent"], r["received"], r["connections"]) for r in rows] \
        == [tuple(r) for r in table["rows"]]
