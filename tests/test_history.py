"""Looking back: History rebuilds what pfctl showed, and every filter is right."""

import csv
import dataclasses
import io
import ipaddress
import json
import os
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from conftest import foreign_database, run_cli, simulated
from golden_records import Key, Peer, build_state
from pfhistory import pf
from pfhistory.exceptions import PFError
from pfhistory.history import History
from pfhistory.output import csv_header
from pfhistory.pfctl_text import format_records


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Eight snapshots a minute apart (one missing), recorded by the CLI."""
    out = tmp_path_factory.mktemp("history")
    result = simulated(out / "snapshots", 1500, 480.0, seed=9, missing=(4,))
    db = out / "history.db"
    rc = run_cli("collect", "--db", db, "--from-file", *[p for _t, p in result.snapshots])
    assert rc.returncode == 0, rc.stderr
    return result, db


@pytest.fixture(scope="module")
def history(series):
    with History(str(series[1])) as h:
        yield h


def _observations(series):
    """Brute force: every decoded state of every snapshot, by identity."""
    result, _db = series
    seen = {}
    for index, (when, path) in enumerate(result.snapshots):
        for s in pf.parse_states(path.read_bytes()):
            seen.setdefault((s.creatorid, s.id), []).append((index, when, s))
    return seen


def test_every_collection_is_rebuilt_exactly(series, history):
    result, _db = series
    for when, path in result.snapshots:
        expected = pf.parse_states(path.read_bytes())
        rebuilt = list(history.states(at=when))
        assert len(rebuilt) == len(expected)
        assert sorted(map(str, rebuilt)) == sorted(map(str, expected))
        for s in rebuilt:
            assert s.history.exact and s.history.collection[1] == when
        # table_at: exactly pfctl -ss -vv of that snapshot (the simulator, like
        # the kernel, lists states in insertion = id order).
        assert history.table_at(when) == format_records(path.read_bytes(), 2)


def _extreme_states(packets):
    """Records with every field at the edges of its width (and of the sign
    of the columns that store it), in id order as the kernel lists them."""
    wide = Peer(seqlo=0xFFFFFFFF, seqhi=0xFFFFFFFF, seqdiff=0xFFFFFFFF, max_win=0xFFFF,
                mss=0xFFFF, state=10, wscale=0x8E, pfss_flags=1, pfss_ttl=0xFF,
                scrub_flag=0xFF, pfss_ts_mod=0xFFFFFFFF)
    return [
        build_state(wire=Key("0.0.0.0", 0, "0.0.0.0", 0), id=1, ifname=b"lo0", proto=17,
                    rule=0, anchor=0, nat_rule=0, creatorid=0, rtableid=(0, 0),
                    packets=(packets, 0)),
        build_state(wire=Key("192.0.2.1", 32768, "10.0.0.1", 32767, rdomain=0x8000),
                    id=1 << 63, ifname=b"em0", creatorid=0x80000000,
                    rtableid=(-0x80000000, 0x7FFFFFFF), rt_addr="192.0.2.254",
                    packets=(1 << 32, packets), bytes_=((1 << 63) - 1, packets)),
        build_state(wire=Key("2001:db8::ffff", 0xFFFF, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                             0xFFFF, rdomain=0xFFFF),
                    stack=Key("2001:db8::ffff", 0xFFFF, "fd00::1", 0xFFFE, rdomain=0xFFFF),
                    id=(1 << 64) - 1, ifname=b"pppoe65535abcdef", src=wide,
                    dst=dataclasses.replace(wide, seqlo=packets),
                    rt_addr="fe80::ffff", rule=0xFFFFFFFE, anchor=0xFFFFFFFE,
                    creation=0xFFFFFF, expire=0xFFFFFFFF, creatorid=0xFFFFFFFF,
                    rtableid=(-1, -1), max_mss=0xFFFF, direction=pf.PF_IN, log=0xFF, rt=3,
                    timeout=0xFF, sync_flags=0xFF, updates=0xFF, min_ttl=0xFF, set_tos=0xFF,
                    state_flags=0xFFFF, set_prio=(0xFF, 0xFF), packets=(packets, packets),
                    bytes_=(packets, (1 << 63) - 1)),
    ]


def _extreme_snapshots(tmp_path):
    """Two state files of _extreme_states a minute apart: [(when, path)]."""
    t0 = 1_795_000_000
    snapshots = []
    for k, packets in enumerate((5, 6)):
        path = tmp_path / f"{k}.pf"
        path.write_bytes(b"".join(_extreme_states(packets)))
        os.utime(path, (t0 + 60 * k, t0 + 60 * k))
        snapshots.append((datetime.fromtimestamp(t0 + 60 * k, timezone.utc), path))
    return snapshots


def test_fields_at_their_extremes_come_back_byte_for_byte(tmp_path):
    snapshots = _extreme_snapshots(tmp_path)
    db = tmp_path / "h.db"
    result = run_cli("collect", "--db", db, "--from-file", *[p for _t, p in snapshots])
    assert result.returncode == 0, result.stderr
    with History(str(db)) as h:
        for when, path in snapshots:
            data = path.read_bytes()
            rebuilt = list(h.states(at=when))
            assert sorted(s.record for s in rebuilt) == sorted(
                data[i:i + 264] for i in range(0, len(data), 264))
            assert all(s.history.exact for s in rebuilt)
            assert h.table_at(when) == format_records(data, 2)
        assert sorted(s.record for s in h.states()) == sorted(
            data[i:i + 264] for i in range(0, len(data), 264))


def _record_snapshots(tmp_path, snapshots, *options):
    """Collect [(epoch, [records])] as state files; [(datetime, bytes)]."""
    files, out = [], []
    for k, (t, recs) in enumerate(snapshots):
        path = tmp_path / f"{k}.pf"
        path.write_bytes(b"".join(recs))
        os.utime(path, (t, t))
        files.append(path)
        out.append((datetime.fromtimestamp(t, timezone.utc), path.read_bytes()))
    result = run_cli("collect", "--db", tmp_path / "h.db", "--from-file", *files, *options)
    assert result.returncode == 0, result.stderr
    return out


def test_escaped_interface_names_come_back_raw(tmp_path):
    # Names pfhistory stores escaped (vis(3)): control bytes, a backslash,
    # a space, bytes after the NUL, all 16 bytes used.
    names = (b"em\x01\n\\ x\0junk", b"\\\\", b"\\abcdefghijklmn\xff", b"vio0")
    recs = [build_state(wire=Key("192.0.2.1", 1000 + i, "10.0.0.1", 53), id=i + 1, ifname=name,
                        proto=17)
            for i, name in enumerate(names)]
    (when, data), = _record_snapshots(tmp_path, [(1_795_000_000, recs)])
    with History(str(tmp_path / "h.db")) as h:
        assert h.table_at(when) == format_records(data, 2)
        assert sorted(s.ifname for s in h.states(at=when)) == sorted(
            s.ifname for s in pf.parse_states(data))
        assert {s.ifname for s in h.states(ifname="em\\001\\012\\\\\\040x")} == {
            "em\\001\\012\\\\\\040x"}


def test_values_outside_retention_stay_in_the_record_range(tmp_path):
    # The state's clock went back (pf restarted with the same id) and its
    # values at the first collection are gone (retention): the current ones
    # are seconds before creation there, and expire beyond the u32 an hour
    # before, so the record carries 0 and 4294967295, as pfctl could show.
    t0 = 1_795_000_000
    key = Key("192.0.2.1", 1000, "10.0.0.1", 53)
    first = build_state(wire=key, id=7, creation=100, expire=50, packets=(1, 1))
    later = build_state(wire=key, id=7, creation=10, expire=0xFFFFFFFF, packets=(9, 9))
    (at0, _), (at1, data1) = _record_snapshots(
        tmp_path, [(t0, [first]), (t0 + 3600, [later])], "--sample-retention", "60s")
    with History(str(tmp_path / "h.db")) as h:
        (s,) = h.states(at=at0)
        assert not s.history.exact and s.packets == (9, 9)
        assert (s.creation, s.expire) == (0, 0xFFFFFFFF)
        assert s.history.created_at == at1 - timedelta(seconds=10)
        assert h.table_at(at0) == format_records(s.record, 2)
        assert h.table_at(at1) == format_records(data1, 2)


def test_at_between_collections_uses_the_one_before(series, history):
    result, _db = series
    when, path = result.snapshots[2]
    later = list(history.states(at=when + timedelta(seconds=59)))
    assert sorted(map(str, later)) == sorted(map(str, pf.parse_states(path.read_bytes())))
    assert list(history.states(at=result.snapshots[0][0] - timedelta(seconds=1))) == []


def test_show_at_outside_the_history_says_so(series, tmp_path):
    """--at before the first collection is refused with where the history starts;
    --at long after the last collection shows that table, named on stderr, while
    standard output stays pfctl's text of it."""
    result, db = series
    first, last = result.snapshots[0][0], result.snapshots[-1]
    before = run_cli("show", "--db", db, "--at", (first - timedelta(seconds=1)).isoformat())
    assert "before the history, which starts at " in _one_sentence(before)
    assert before.stderr.rstrip().endswith(first.astimezone().isoformat())
    assert before.stdout == ""

    late = run_cli("show", "--db", db, "--at", (last[0] + timedelta(hours=2)).isoformat())
    assert late.returncode == 0, late.stderr
    assert late.stderr == (f"pfhistory: --at {(last[0] + timedelta(hours=2)).isoformat()}: "
                           f"no collection in the 2h00m before it; the table shown is that "
                           f"of {last[0].astimezone().isoformat()}\n")
    assert late.stdout == run_cli("show", "--db", db, "--at", last[0].isoformat()).stdout != ""
    # Within the five minutes a collection may be late, nothing is said.
    near = run_cli("show", "--db", db, "--at", (last[0] + timedelta(seconds=299)).isoformat())
    assert near.returncode == 0 and near.stderr == "" and near.stdout == late.stdout

    empty = tmp_path / "empty.db"
    assert run_cli("db", "upgrade", "--db", empty).returncode == 0
    assert "no collections yet" in _one_sentence(run_cli("show", "--db", empty, "--at", "1h"))


def test_rebuilt_attributes_equal_the_decoded_ones(series, history):
    result, _db = series
    when, path = result.snapshots[3]
    expected = {(s.creatorid, s.id): s for s in pf.parse_states(path.read_bytes())}
    for s in history.states(at=when):
        e = expected[(s.creatorid, s.id)]
        for name in ("id", "ifname", "rule", "anchor", "nat_rule", "creation", "expire",
                     "packets", "bytes", "creatorid", "af", "proto", "direction",
                     "state_flags", "sync_flags", "src", "dst", "nk", "sk", "rt", "rt_addr",
                     "rtableid", "max_mss", "log", "timeout", "updates", "min_ttl", "set_tos",
                     "set_prio", "record"):
            assert getattr(s, name) == getattr(e, name), name


def test_without_at_states_carry_their_last_observed_values(series, history):
    obs = _observations(series)
    states = list(history.states())
    assert len(states) == len(obs)
    for s in states:
        last_index, last_when, last = obs[(s.creatorid, s.id)][-1]
        assert str(s) == str(last)
        first_when = obs[(s.creatorid, s.id)][0][1]
        assert s.history.first_seen == first_when
        assert s.first_seen == first_when  # history fields read as attributes too
        assert s.history.collection[1] == last_when
        assert s.history.created_at == last_when - timedelta(seconds=last.creation)
        if last_index == len(series[0].snapshots) - 1:
            assert s.history.ended is None
        else:
            assert s.history.ended[0] == last_when


def test_nat_reverse_lookup_finds_the_internal_host(series, history):
    result, _db = series
    when, path = result.snapshots[5]
    nat = [s for s in pf.parse_states(path.read_bytes())
           if s.direction == pf.PF_OUT and s.wire_key != s.stack_key and s.wire_key.port[1]]
    target = nat[0]
    public, port = str(target.wire_key.addr[1]), int(target.wire_key.port[1])
    found = [s for s in history.states(host=public, port=port, nat=True, at=when)
             if str(s.wire_key.addr[1]) == public and s.wire_key.port[1] == port]
    assert [str(s.stack_key.addr[1]) for s in found] == [str(target.stack_key.addr[1])]
    out = run_cli("show", "--db", series[1], "--host", public, "--port", port, "--nat",
                  "--at", when.isoformat(), "--format", "json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert any(r["sk"]["addr"][1] == str(target.stack_key.addr[1]) for r in rows)


def _in(addr, bounds):
    return ipaddress.ip_address(str(addr)) in ipaddress.ip_network(bounds, strict=False)


def _lifetime(obs_list):
    first_when, last = obs_list[0][1], obs_list[-1][2]
    return first_when, obs_list[-1][1], last


def _ends(s, local):
    """(key, address index) of a state's local (or remote) end on each key: [1]
    (remote [0]) of both, but an af-to state's stack key has its sides swapped."""
    afto = s.wire_key.record_af != s.stack_key.record_af
    i = 1 if local else 0
    return [(s.wire_key, 1 - i if afto else i), (s.stack_key, i)]


def _end_in(s, local, bounds, af):
    return any(_in(k.addr[i], bounds) for k, i in _ends(s, local) if k.record_af == af)


FILTERS = [
    ({"host": "10.0.0.0/16"}, lambda s: any(_in(a, "10.0.0.0/16") for k in (s.wire_key, s.stack_key)
                                             for a in k.addr if k.record_af == 2)),
    ({"local": "fd00::/64"}, lambda s: _end_in(s, True, "fd00::/64", 24)),
    ({"remote": "203.0.113.0/24"}, lambda s: _end_in(s, False, "203.0.113.0/24", 2)),
    ({"port": 53}, lambda s: 53 in [int(p) for k in (s.wire_key, s.stack_key) for p in k.port]),
    ({"proto": "udp"}, lambda s: s.proto == 17),
    ({"proto": 58}, lambda s: s.proto == 58),
    ({"af": "inet6"}, lambda s: s.record_af == 24),
    ({"ifname": "em0"}, lambda s: s.ifname == "em0"),
    ({"direction": "in"}, lambda s: s.direction == pf.PF_IN),
    ({"nat": True}, lambda s: s.wire_key != s.stack_key),
    ({"proto": "tcp", "direction": "out", "nat": True},
     lambda s: s.proto == 6 and s.direction == pf.PF_OUT and s.wire_key != s.stack_key),
    ({"min_bytes": 1_000_000}, lambda s: sum(s.bytes) >= 1_000_000),
]


@pytest.mark.parametrize("kwargs,predicate", FILTERS, ids=[str(f[0]) for f in FILTERS])
def test_filters_match_a_brute_force_scan(series, history, kwargs, predicate):
    obs = _observations(series)
    expected = {key for key, o in obs.items() if predicate(o[-1][2])}
    got = {(s.creatorid, s.id) for s in history.states(**kwargs)}
    assert got == expected
    assert expected, "the simulated data exercises this filter"


def test_rule_anchor_creatorid_and_id_filters(series, history):
    obs = _observations(series)
    some = next(iter(obs.values()))[-1][2]
    assert {(s.creatorid, s.id) for s in history.states(rule=some.rule)} == \
        {k for k, o in obs.items() if o[-1][2].rule == some.rule}
    assert {(s.creatorid, s.id) for s in history.states(anchor=some.anchor)} == \
        {k for k, o in obs.items() if o[-1][2].anchor == some.anchor}
    assert len(list(history.states(creatorid=0x1A2B3C4D))) == len(obs)
    assert [s.id for s in history.states(id=some.id)] == [some.id]


def test_open_closed_and_duration_filters(series, history):
    obs = _observations(series)
    last_index = len(series[0].snapshots) - 1
    open_keys = {k for k, o in obs.items() if o[-1][0] == last_index}
    assert {(s.creatorid, s.id) for s in history.states(open=True)} == open_keys
    assert {(s.creatorid, s.id) for s in history.states(closed=True)} == set(obs) - open_keys
    long = {(s.creatorid, s.id) for s in history.states(min_duration=86400)}
    for key in long:
        _first, last_when, last = _lifetime(obs[key])
        assert last.creation + 0 >= 0
    assert long, "some simulated connections are days old"


def test_since_until_overlap(series, history):
    result, _db = series
    obs = _observations(series)
    since = result.snapshots[2][0]
    until = result.snapshots[3][0]
    got = {(s.creatorid, s.id) for s in history.states(since=since, until=until)}
    for key, o in obs.items():
        first_when, last_when, last = _lifetime(o)
        created = last_when - timedelta(seconds=last.creation)
        if first_when <= until and last_when >= since:
            assert key in got  # seen inside the interval
        if created > until:
            assert key not in got


def test_ordering_and_limit(history):
    biggest = list(history.states(order="bytes", limit=5))
    sizes = [sum(s.bytes) for s in biggest]
    assert len(biggest) == 5 and sizes == sorted(sizes, reverse=True)
    everything = max(sum(s.bytes) for s in history.states())
    assert sizes[0] == everything


def test_show_formats_carry_the_same_states(series):
    _result, db = series
    text = run_cli("show", "--db", db, "--proto", "icmp", "-vv")
    js = run_cli("show", "--db", db, "--proto", "icmp", "--format", "json")
    cs = run_cli("show", "--db", db, "--proto", "icmp", "--format", "csv")
    assert text.returncode == js.returncode == cs.returncode == 0
    rows = [json.loads(line) for line in js.stdout.splitlines()]
    table = list(csv.DictReader(io.StringIO(cs.stdout)))
    assert rows and len(rows) == len(table) == text.stdout.count("   history: ")
    assert [r["id"] for r in rows] == [r["id"] for r in table]
    for name in ("id", "ifname", "rule", "anchor", "creation", "expire", "packets", "bytes",
                 "creatorid", "af", "proto", "direction", "state_flags", "sync_flags", "src",
                 "dst", "nk", "sk", "first_seen", "last_seen", "created_at", "collection",
                 "exact"):
        assert name in rows[0], name
    assert list(table[0]) == csv_header()
    assert "src_seqlo" in table[0] and "nk_addr1" in table[0] and "packets0" in table[0]
    assert f"id: {rows[0]['id']}" in text.stdout


def _one_sentence(result):
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pfhistory: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("args,words", [
    (["--at", "last tuesday"], "ISO 8601"),
    (["--host", "10.0.0.300"], "not an IPv4 or IPv6 address or CIDR"),
    (["--host", "1.2.3.4'; DROP TABLE states; --"], "not an IPv4 or IPv6"),
    (["--port", "http"], "not a port number"),
    (["--port", "70000"], "not a port number"),
    (["--proto", "carrier-pigeon"], "not a protocol name"),
    (["--min-duration", "forever"], "not a duration"),
    (["--since", "2026-11-24T23:00Z", "--until", "2026-11-24T22:00Z"], "--until is before --since"),
])
def test_bad_filter_values_are_one_sentence(series, args, words):
    assert words in _one_sentence(run_cli("show", "--db", series[1], *args))


def test_hostile_strings_only_reach_sql_as_parameters(series, history):
    hostile = "em0' OR '1'='1'; DROP TABLE states; --"
    assert list(history.states(ifname=hostile)) == []
    result = run_cli("show", "--db", series[1], "-i", hostile)
    assert result.returncode == 0 and result.stdout == ""
    con = sqlite3.connect(series[1])
    assert con.execute("SELECT count(*) FROM states").fetchone()[0] > 0
    con.close()


def test_missing_empty_and_foreign_databases(tmp_path):
    assert "no such database" in _one_sentence(run_cli("show", "--db", tmp_path / "none.db"))
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert "empty" in _one_sentence(run_cli("show", "--db", empty))
    other = foreign_database(tmp_path / "other.db", "t (x)")
    assert "not a pfhistory database" in _one_sentence(run_cli("show", "--db", other))
    with pytest.raises(PFError):
        History(str(other))


def test_times_are_local_unless_an_offset_is_given(series):
    result, db = series
    when = result.snapshots[1][0]
    berlin = (when + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")  # naive, local
    a = run_cli("show", "--db", db, "--at", berlin, "--format", "json", "--limit", "3",
                env={"TZ": "Europe/Berlin"})
    b = run_cli("show", "--db", db, "--at", when.isoformat(), "--format", "json", "--limit", "3",
                env={"TZ": "UTC"})
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    rows_a = [json.loads(line) for line in a.stdout.splitlines()]
    rows_b = [json.loads(line) for line in b.stdout.splitlines()]
    assert [r["id"] for r in rows_a] == [r["id"] for r in rows_b] and rows_a
    assert rows_a[0]["collection"] == rows_b[0]["collection"] == 2
    assert rows_a[0]["collection_at"].endswith("+01:00")
    assert rows_b[0]["collection_at"].endswith("+00:00")
    # Durations count back from now: the simulated November is in the past.
    ago = run_cli("show", "--db", db, "--since", "1h", "--closed")
    assert ago.returncode == 0 and ago.stdout == ""


def test_outside_sample_retention_the_set_stays_exact(series, tmp_path):
    result, _db = series
    db = tmp_path / "short.db"
    files = [p for _t, p in result.snapshots]
    assert run_cli("collect", "--db", db, "--from-file", *files,
                   "--sample-retention", "60s").returncode == 0
    with History(str(db)) as h:
        when, path = result.snapshots[1]
        expected = pf.parse_states(path.read_bytes())
        rebuilt = list(h.states(at=when))
        assert {(s.creatorid, s.id) for s in rebuilt} == {(s.creatorid, s.id) for s in expected}
        inexact = [s for s in rebuilt if not s.history.exact]
        assert inexact, "retention dropped the values of some states"
        last = {(s.creatorid, s.id): s for s in h.states()}
        for s in inexact:
            assert s.packets == last[(s.creatorid, s.id)].packets
        # Inside the retention every answer is exact.
        recent = result.snapshots[-1][0]
        assert all(s.history.exact for s in h.states(at=recent))
