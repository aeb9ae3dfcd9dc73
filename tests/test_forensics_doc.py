"""Every query of docs/forensics.md runs in SQLite and agrees with the Python API."""

import ipaddress
import re
import sqlite3
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import START, run_cli, simulated
from pfhistory import pf
from pfhistory.history import History

DOC = Path(__file__).resolve().parent.parent / "docs" / "forensics.md"
T0 = int(START.timestamp())


def _queries():
    """{"Q1": (sql, {param: default})} from the document."""
    text = DOC.read_text()
    out = {}
    for title, body in re.findall(r"### (Q\d+)\..*?```sql\n(.*?)```", text, re.S):
        params = {}
        for name, value in re.findall(r"^-- \.param set :(\w+) (.+)$", body, re.M):
            value = value.strip()
            params[name] = value.strip("'") if value.startswith("'") else int(value)
        out[title] = (body, params)
    return out


QUERIES = _queries()


def _iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture(scope="module")
def forensic_db(tmp_path_factory):
    out = tmp_path_factory.mktemp("forensics")
    series = simulated(out / "snapshots", 3000, 360.0, seed=21, missing=(3,), truth=False)
    db = out / "history.db"
    result = run_cli("collect", "--db", db, "--from-file", *[p for _t, p in series.snapshots])
    assert result.returncode == 0, result.stderr
    return db


@pytest.fixture(scope="module")
def history(forensic_db):
    with History(str(forensic_db)) as h:
        yield h


def _run(db, name, **overrides):
    sql, params = QUERIES[name]
    params.update(overrides)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, params)]
    finally:
        con.close()


def _hex(s):
    return f"{s.id:016x}"


def test_the_document_has_at_least_twelve_questions():
    assert len(QUERIES) >= 12
    assert all(sql.strip() for sql, _ in QUERIES.values())


def test_every_query_runs(forensic_db):
    for name in QUERIES:
        _run(forensic_db, name)


def _top_local(history):
    totals = Counter()
    for s in history.states():
        totals[str(s.stack_key.addr[1])] += sum(s.bytes)
    return next(h for h, _ in totals.most_common() if h.startswith("10."))


def test_q1_host_during_interval(forensic_db, history):
    since, until = T0 + 60, T0 + 180
    # A local host that is the local end of some states and the remote end of
    # others (it sent into its own interface).
    local = {str(s.stack_key.addr[1]) for s in history.states(since=since, until=until)}
    host = min(str(s.wire_key.addr[0]) for s in history.states(since=since, until=until)
               if str(s.wire_key.addr[0]) in local and str(s.wire_key.addr[0]).startswith("10."))
    rows = _run(forensic_db, "Q1", host=host, since=_iso(since), until=_iso(until))
    # Either end: a host is the remote end of the in states on its own interface.
    expected = [s for s in history.states(host=host, since=since, until=until)
                if host in (str(s.stack_key.addr[1]), str(s.wire_key.addr[0]))]
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}
    assert {r["direction"] for r in rows if r["remote_addr"] == host} == {"in"}


def test_q2_nat_reverse_lookup(forensic_db, history):
    at = T0 + 120
    nat_states = [s for s in history.states(nat=True, since=at, until=at, direction="out")
                  if s.wire_key.port[1]]
    target = nat_states[len(nat_states) // 2]
    addr, port = str(target.wire_key.addr[1]), int(target.wire_key.port[1])
    rows = _run(forensic_db, "Q2", addr=addr, port=port, at=_iso(at))
    expected = [s for s in history.states(host=addr, port=port, nat=True, since=at, until=at)
                if str(s.wire_key.addr[1]) == addr and s.wire_key.port[1] == port]
    assert {r["id"] for r in rows} == {_hex(s) for s in expected}
    assert str(target.stack_key.addr[1]) in {r["internal_addr"] for r in rows}


def test_q3_port_open_at_a_moment(forensic_db, history):
    at = T0 + 120
    rows = _run(forensic_db, "Q3", port=443, at=_iso(at))
    expected = [s for s in history.states(port=443, since=at, until=at)
                if (s.direction == pf.PF_IN and s.stack_key.port[1] == 443)
                or (s.direction == pf.PF_OUT and s.wire_key.port[0] == 443)]
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}


def test_q4_table_size_at_a_moment(forensic_db, history):
    for offset in (0, 150, 200, 330):
        rows = _run(forensic_db, "Q4", at=_iso(T0 + offset))
        assert rows[0]["states"] == len(list(history.states(at=T0 + offset)))


def test_q5_open_for_days(forensic_db, history):
    rows = _run(forensic_db, "Q5", days=3)
    expected = list(history.states(open=True, min_duration=3 * 86400))
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}


def test_q6_top_local_hosts(forensic_db, history):
    since, until = T0, T0 + 240
    rows = _run(forensic_db, "Q6", since=_iso(since), until=_iso(until))
    totals = defaultdict(int)
    for s in history.states(since=since, until=until):
        totals[str(s.stack_key.addr[1])] += sum(s.bytes)
    top = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert [(r["local_addr"], r["sent"] + r["received"]) for r in rows] == top


def test_q7_remote_hosts_by_connections(forensic_db, history):
    rows = _run(forensic_db, "Q7")
    counts = Counter(str(s.wire_key.addr[0]) for s in history.states(direction="out"))
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert [(r["remote_addr"], r["connections"]) for r in rows] == top


def test_q8_translations_of_a_host(forensic_db, history):
    host = _top_local(history)
    rows = _run(forensic_db, "Q8", host=host)
    expected = [s for s in history.states(local=host, nat=True)
                if str(s.stack_key.addr[1]) == host]
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}


def test_q9_rules(forensic_db, history):
    rows = _run(forensic_db, "Q9")
    counts = Counter(s.rule for s in history.states())
    got = {(r["rule"] if r["rule"] is not None else 0xFFFFFFFF): r["states"] for r in rows}
    # anchors split a rule number into several rows
    merged = Counter()
    for r in rows:
        merged[r["rule"] if r["rule"] is not None else 0xFFFFFFFF] += r["states"]
    assert merged == counts and got


def test_q10_interface_inbound(forensic_db, history):
    rows = _run(forensic_db, "Q10", ifname="em0")
    expected = list(history.states(ifname="em0", direction="in"))
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}


def test_q11_remote_cidr(forensic_db, history):
    rows = _run(forensic_db, "Q11")
    net = ipaddress.ip_network("198.51.100.0/24")
    expected = [s for s in history.states(remote="198.51.100.0/24")
                if s.wire_key.record_af == 2 and ipaddress.ip_address(str(s.wire_key.addr[0])) in net]
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}


def test_q12_ipv6_local_prefix(forensic_db, history):
    rows = _run(forensic_db, "Q12")
    net = ipaddress.ip_network("fd00::/64")
    expected = [s for s in history.states(local="fd00::/64")
                if s.stack_key.record_af == 24
                and ipaddress.ip_address(str(s.stack_key.addr[1])) in net]
    assert rows and {r["id"] for r in rows} == {_hex(s) for s in expected}


def test_q13_largest(forensic_db, history):
    rows = _run(forensic_db, "Q13")
    expected = list(history.states(order="bytes", limit=10))
    assert [r["id"] for r in rows] == [_hex(s) for s in expected]


def test_q14_gaps(forensic_db, history):
    rows = _run(forensic_db, "Q14", interval=60)
    times = [t for _id, t in history.collections()]
    gaps = [(a, b) for a, b in zip(times, times[1:]) if (b - a).total_seconds() > 90]
    assert len(rows) == len(gaps) == 1
    assert rows[0]["seconds"] == 120


def test_q15_half_open(forensic_db, history):
    rows = _run(forensic_db, "Q15")
    counts = Counter()
    for s in history.states(proto="tcp", direction="in"):
        record_src = s.dst  # PF_IN: pfctl's src is the record's dst
        if record_src.state in (2, 3):
            counts[str(s.wire_key.addr[0])] += 1
    assert rows and {r["source"]: r["half_open"] for r in rows} == dict(counts)


def test_q16_rollups_agree_with_the_report(forensic_db, tmp_path):
    """Rollups hold complete hours: a collection after 23:00 completes 22:00-23:00."""
    import json
    import shutil

    since, until = T0, T0 + 3600
    assert _run(forensic_db, "Q16", since=_iso(since), until=_iso(until)) == []
    db = tmp_path / "history.db"
    shutil.copy(forensic_db, db)
    last = sorted((forensic_db.parent / "snapshots").glob("*.pfstate"))[-1]
    out = run_cli("collect", "--db", db, "--from-file", last, "--at", _iso(until + 60) + "Z")
    assert out.returncode == 0, out.stderr
    rows = _run(db, "Q16", since=_iso(since), until=_iso(until))
    out = run_cli("report", "--db", db, "--since", _iso(since) + "Z",
                  "--until", _iso(until) + "Z",
                  "--format", "json")
    assert out.returncode == 0, out.stderr
    table = next(t for s in json.loads(out.stdout)["sections"] for t in s["tables"]
                 if t["key"] == "local_bytes_out")
    assert rows and [(r["host"], r["sent"], r["received"], r["connections"]) for r in rows] \
        == [tuple(r) for r in table["rows"]]
