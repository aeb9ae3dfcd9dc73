"""pfhistory report: every section's figures against the snapshots and the simulator's truth.

The history is a simulated firewall recorded through the CLI (with three missed
cron runs and, at the end, a scanner opening 300 half-open states); the
expected figures are computed here by brute force from the raw snapshot
records, decoded with struct (not the C decoder), and from truth-summary.json.
"""

import csv
import io
import ipaddress
import json
import os
import struct
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import pytest

from conftest import START, run_cli, simulated
from pfhistory.records import OFF_DST, OFF_SRC, PEER_OFF_STATE
from pfhistory.rollup import DEFAULT_LOCAL_NETWORKS
from pfhistory.statefile import write_state_file

MISSING = (40, 41, 42)
DURATION = 5400.0            # 22:00 .. 23:30, one snapshot a minute
SCAN_AT = START + timedelta(seconds=DURATION + 60)
SCANNER = "10.0.9.250"
SINCE = START.isoformat()
UNTIL = SCAN_AT.isoformat()
R = 264
_NETS = [ipaddress.ip_network(n) for n in DEFAULT_LOCAL_NETWORKS]


def _addr(rec, off, af):
    raw = rec[off:off + 16]
    return str(ipaddress.ip_address(raw[:4] if af == 2 else raw))


def _decode(path):
    """{state id: fields} of a snapshot, straight from the bytes."""
    data = path.read_bytes()
    return dict(_fields(data[i:i + R]) for i in range(0, len(data), R))


def _fields(rec):
    """(state id, fields) of one 264-byte record."""
    waf, saf = rec[24 + 38], rec[64 + 38]
    return struct.unpack_from(">Q", rec, 0)[0], dict(
        direction=rec[252], proto=rec[251],
        ifname=rec[8:24].split(b"\0")[0].decode(),
        rule=struct.unpack_from(">I", rec, 184)[0],
        anchor=struct.unpack_from(">I", rec, 188)[0],
        wa0=_addr(rec, 24, waf), wa1=_addr(rec, 40, waf),
        wp0=struct.unpack_from(">H", rec, 56)[0], wp1=struct.unpack_from(">H", rec, 58)[0],
        sa0=_addr(rec, 64, saf), sa1=_addr(rec, 80, saf),
        sp1=struct.unpack_from(">H", rec, 98)[0],
        mirror=rec[24:64] == rec[64:104], afto=waf != saf,
        creation=struct.unpack_from(">I", rec, 196)[0],
        b=struct.unpack_from(">QQ", rec, 220), p=struct.unpack_from(">QQ", rec, 204),
        src_state=rec[OFF_SRC + PEER_OFF_STATE], dst_state=rec[OFF_DST + PEER_OFF_STATE])


def _local(a):
    ip = ipaddress.ip_address(a)
    return any(ip in n for n in _NETS)


def _scan_snapshot(last_path, out):
    """The last snapshot again a minute later, plus 300 SYN_SENT states of a scanner."""
    data = bytearray(last_path.read_bytes())
    for i in range(0, len(data), R):       # a minute later, every state is a minute older
        struct.pack_into(">I", data, i + 196, struct.unpack_from(">I", data, i + 196)[0] + 60)
    template = next(bytes(data[i:i + R]) for i in range(0, len(data), R)
                    if data[i + 251] == 6 and data[i + 252] == 2 and data[i + 250] == 2
                    and data[i + 24:i + 64] != data[i + 64:i + 104])
    extra = []
    for j in range(300):
        rec = bytearray(template)
        struct.pack_into(">Q", rec, 0, 0x7E57000000000000 + j)
        rec[80:84] = ipaddress.ip_address(SCANNER).packed          # stack addr[1]
        struct.pack_into(">H", rec, 98, 40000 + j)                  # its port
        struct.pack_into(">H", rec, 58, 50001 + j)                  # nat port
        struct.pack_into(">H", rec, 56, 1 + j)                      # target port
        struct.pack_into(">H", rec, 96, 1 + j)
        rec[OFF_SRC + PEER_OFF_STATE] = 2                           # SYN_SENT
        rec[OFF_DST + PEER_OFF_STATE] = 0                           # CLOSED
        struct.pack_into(">II", rec, 196, 5, 25)                    # age 5 s, expires 25
        struct.pack_into(">QQQQ", rec, 204, 1, 0, 60, 0)
        extra.append(bytes(rec))
    path = out / f"states-{SCAN_AT:%Y%m%dT%H%M%SZ}.pfstate"
    write_state_file(path, [bytes(data), *extra], mtime=SCAN_AT.timestamp())
    return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(db path, [(time, decoded snapshot)], truth summary, snapshot paths)."""
    tmp = tmp_path_factory.mktemp("report")
    result = simulated(tmp / "sim", 2000, DURATION, seed=23, missing=MISSING)
    snaps = list(result.snapshots)
    snaps.append((SCAN_AT, _scan_snapshot(snaps[-1][1], tmp / "sim")))
    db = tmp / "history.db"
    out = run_cli("collect", "--db", db, "--from-file", *(p for _t, p in snaps))
    assert out.returncode == 0, out.stderr
    decoded = [(t, _decode(p)) for t, p in snaps]
    truth = json.loads(result.summary_path.read_text())
    return db, decoded, truth, snaps


@pytest.fixture(scope="module")
def report(recorded):
    out = run_cli("report", "--db", recorded[0], "--since", SINCE, "--until", UNTIL,
                  "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    return {t["key"]: t for s in doc["sections"] for t in s["tables"]} | {"_doc": doc}


def _rows(report, key):
    t = report[key]
    return [dict(zip(t["columns"], r)) for r in t["rows"]]


def _hour(t):
    """The rollup hour a snapshot time closes: (h, h + 3600]."""
    e = int(t.timestamp())
    return (e - 1) - (e - 1) % 3600


def _moved_by_hour(decoded):
    """{hour: {state id: (state at its first snapshot in the hour, (bytes0, bytes1), new)}},
    the rollups' definition from
    the snapshots alone: a state seen in an hour moved its counters at its last snapshot
    in the hour minus those at its last snapshot before it (all of them if it is new,
    but for the first snapshot's states, a baseline); a counter that went back moved 0."""
    baseline = decoded[0][1]
    last = {}
    hours = {}
    for t, snap in decoded:
        hours.setdefault(_hour(t), []).append(snap)
    out = {}
    for hour in sorted(hours):
        seen, first = {}, {}
        for snap in hours[hour]:
            seen.update(snap)
            for sid, s in snap.items():
                first.setdefault(sid, s)
        moved = out[hour] = {}
        for sid, s in seen.items():
            old = last.get(sid) or baseline.get(sid)
            b0, b1 = s["b"]
            if old is not None:
                b0, b1 = max(b0 - old["b"][0], 0), max(b1 - old["b"][1], 0)
            moved[sid] = (first[sid], (b0, b1), sid not in last)
        last.update(seen)
    return out


def _brute(decoded, since=SINCE, until=UNTIL):
    """What the report's top lists should say over the hours of [since, until]
    (None: every hour), from the snapshots alone."""
    hosts = {"local": defaultdict(lambda: [0, 0, 0]), "remote": defaultdict(lambda: [0, 0, 0])}
    rules, ifs, sources = Counter(), Counter(), defaultdict(lambda: [0, 0])
    lo = hi = None
    if since is not None:
        t = int(datetime.fromisoformat(since).timestamp())
        lo = t - t % 3600
        hi = -(-int(datetime.fromisoformat(until).timestamp()) // 3600) * 3600
    for hour, moved in _moved_by_hour(decoded).items():
        if lo is not None and not lo <= hour < hi:
            continue
        for s, (b0, b1), new in moved.values():
            out = s["direction"] == 2
            init = s["sa1"] if out else s["wa0"]
            resp = s["sa0"] if out else s["sa1"]
            peer = s["wa0"] if out else s["wa1"]
            if s["afto"]:
                # af-to (in): the stack key, of the other family, has its sides
                # swapped; its [0] is the responder, as the initiator's packets reach it.
                resp = peer = s["sa0"]
            if _local(init):
                pairs = [("local", init, b0, b1), ("remote", peer, b1, b0)]
            elif _local(resp):
                pairs = [("local", resp, b1, b0), ("remote", init, b0, b1)]
            elif out:
                pairs = [("remote", peer, b1, b0)]
            else:
                pairs = [("remote", init, b0, b1)]
            for kind, host, sent, received in pairs:
                h = hosts[kind][host]
                h[0] += sent
                h[1] += received
                h[2] += new
            rules[(s["rule"], s["anchor"])] += b0 + b1
            ifs[s["ifname"]] += b0 + b1
            if new:
                sources[init][0] += 1
                if s["proto"] == 6 and max(s["src_state"], s["dst_state"]) < 4:
                    sources[init][1] += 1
    return hosts, rules, ifs, sources


def test_coverage_names_the_missed_runs_as_one_gap(report):
    cov = _rows(report, "coverage")[0]
    assert cov["collections"] == 91 + 1 - len(MISSING)
    assert cov["usual interval"] == 60
    gaps = _rows(report, "gaps")
    before = START + timedelta(minutes=MISSING[0] - 1)
    after = START + timedelta(minutes=MISSING[-1] + 1)
    assert [(g["from"], g["to"], g["length"]) for g in gaps] == [
        (int(before.timestamp()), int(after.timestamp()), 240)]


def test_overview_and_peak_match_the_simulator(report, recorded):
    _db, decoded, truth, _snaps = recorded
    written = {int(datetime.fromisoformat(s["time"].replace("Z", "+00:00")).timestamp()):
               s["alive"] for s in truth["snapshots"] if s["written"]}
    timeline = _rows(report, "timeline")
    # Every simulated snapshot's size is the simulator's; the last is the scan.
    assert {r["time"]: r["concurrent states"] for r in timeline[:-1]} == written
    assert timeline[-1]["concurrent states"] == written[max(written)] + 300
    ov = {r["measure"]: r["value"] for r in _rows(report, "overview")}
    peak = max(timeline, key=lambda r: (r["concurrent states"], -r["time"]))
    assert ov["peak concurrent states"] == peak["concurrent states"] == \
        max(len(s) for _t, s in decoded)
    line = next(x for x in report["_doc"]["sections"][1]["lines"] if x.startswith("Peak"))
    assert datetime.fromtimestamp(peak["time"], timezone.utc).astimezone().isoformat(
        timespec="seconds") in line
    ids = [set(s) for _t, s in decoded]
    seen = set().union(*ids)
    new = sum(len(b - a) for a, b in zip(ids, ids[1:]))
    ended = sum(len(a - b) for a, b in zip(ids, ids[1:]))
    assert (ov["states seen"], ov["new states"], ov["ended states"]) == (len(seen), new, ended)


def test_top_hosts_match_a_brute_force_pass_over_the_snapshots(report, recorded):
    hosts, _rules, _ifs, _sources = _brute(recorded[1])
    for kind in ("local", "remote"):
        h = hosts[kind]
        for key, order in (("bytes_out", lambda kv: (-kv[1][0], -kv[1][1], kv[0])),
                           ("bytes_in", lambda kv: (-kv[1][1], -kv[1][0], kv[0])),
                           ("connections", lambda kv: (-kv[1][2], -(kv[1][0] + kv[1][1]),
                                                       kv[0]))):
            got = [(r["host"], r["sent"], r["received"], r["connections"])
                   for r in _rows(report, f"{kind}_{key}")]
            want = sorted(h.items(), key=order)[:10]
            # ties in the sort key may order differently: compare figures, then hosts
            assert [g[1:] for g in got] == [tuple(v) for _k, v in want], (kind, key)
            assert {g[0] for g in got} == {k for k, _v in want} or len(got) == 10


def test_the_host_that_moved_most_is_the_simulators(report, recorded):
    truth = recorded[2]
    totals = {}
    for key in ("local_bytes_out", "local_bytes_in"):
        for r in _rows(report, key):
            totals[r["host"]] = r["sent"] + r["received"]
    top = max(totals, key=totals.get)
    assert top == truth["top_local_host_by_bytes"]["host"]
    # The history cannot see what a state moved after its last collection.
    assert 0.9 * truth["top_local_host_by_bytes"]["bytes"] <= totals[top] \
        <= truth["top_local_host_by_bytes"]["bytes"]


def test_rules_and_interfaces_add_up(report, recorded):
    _hosts, rules, ifs, _sources = _brute(recorded[1])
    by_rule = {r["rule"]: r["bytes"] for r in _rows(report, "rules_bytes")}
    for (rule, anchor), total in rules.most_common(5):
        name = str(rule) if anchor == 0xFFFFFFFF else f"{rule} (anchor {anchor})"
        assert by_rule[name] == total
    assert {r["interface"]: r["bytes"] for r in _rows(report, "interfaces")} == \
        {k: v for k, v in ifs.items()}


def test_the_scanner_is_odd_twice(report, recorded):
    _hosts, _rules, _ifs, sources = _brute(recorded[1])
    half = _rows(report, "halfopen")
    assert half[0]["source"] == SCANNER and half[0]["half-open"] == 300
    want = sorted(((h, v) for h, v in sources.items() if v[1]),
                  key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))[:10]
    assert [(r["half-open"], r["new states"]) for r in half] == \
        [(v[1], v[0]) for _h, v in want]
    bursts = _rows(report, "bursts")
    assert SCANNER in [b["source"] for b in bursts]
    scan = next(b for b in bursts if b["source"] == SCANNER)
    # usual: the median of its other hours (the simulator's own few states)
    assert scan["new states"] == 300 and scan["usual per hour"] <= 2
    # The simulated clients open as many states every hour: none is flagged.
    assert [b["source"] for b in bursts] == [SCANNER]


def test_open_for_days_and_longest_lived(report, recorded):
    decoded = recorded[1]
    last_t, last = decoded[-1]
    old = sorted((s["creation"] for s in last.values() if s["creation"] >= 86400),
                 reverse=True)
    t = report["open_for_days"]
    assert t["note"].startswith(f"{len(old):,} in all")
    assert [r["lived"] for r in _rows(report, "open_for_days")] == old[:10]
    # Longest-lived: of the states alive at the start or the end, lifetime up to
    # their last sighting.
    created, last_seen = {}, {}
    for t, snap in decoded:
        for sid, s in snap.items():
            created.setdefault(sid, int(t.timestamp()) - s["creation"])
            last_seen[sid] = int(t.timestamp())
    candidates = set(decoded[0][1]) | set(last)
    lived = sorted((last_seen[i] - created[i] for i in candidates), reverse=True)
    assert [r["lived"] for r in _rows(report, "longest")] == lived[:10]


def test_open_for_days_counts_only_up_to_the_last_sighting(tmp_path):
    """A state seen open for 23h50m is not "open for more than 1d", however long
    after its last sighting the period ends: two hours after the last collection,
    or just before the collection that found it gone. One seen open for 25 h is."""
    from golden_records import Key, Peer, build_state

    t = 1_795_000_000
    short, long_ = 23 * 3600 + 50 * 60, 25 * 3600

    def state(i, age):
        return build_state(wire=Key("192.0.2.1", 443, "10.0.0.%d" % (i + 1), 40000 + i),
                           id=i + 1, ifname=b"em0", proto=6, src=Peer(state=4),
                           dst=Peer(state=4), creation=age, expire=86400, creatorid=7)

    first, second = tmp_path / "0.pfstate", tmp_path / "1.pfstate"
    write_state_file(first, state(0, short) + state(1, long_), mtime=t)
    write_state_file(second, state(1, long_ + 1200), mtime=t + 1200)   # the short one ended
    db = tmp_path / "h.db"
    assert run_cli("collect", "--db", db, "--from-file", first, second).returncode == 0

    def open_for_days(until):
        doc = _report_json(db, since=_iso(t - 3600), until=_iso(until))
        table, = [tab for sec in doc["sections"] for tab in sec["tables"]
                  if tab["key"] == "open_for_days"]
        return table["note"], [dict(zip(table["columns"], r))["lived"] for r in table["rows"]]

    # Ended between t and t + 1200, so alive at t + 900, but last seen at t.
    note, lived = open_for_days(t + 900)
    assert lived == [long_ + 900] and note.startswith("1 in all")
    note, lived = open_for_days(t + 7200)
    assert lived == [long_ + 1200] and note.startswith("1 in all")


def _iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def test_largest_connections_are_the_hours_top_movers(report, recorded):
    """Largest: of the 25 states that moved the most in each hour of the period, those
    with the most bytes in their life (their last observed counters)."""
    lifetime = {}
    for _t, snap in recorded[1]:
        for sid, s in snap.items():
            lifetime[sid] = sum(s["b"])
    lo = _hour(START + timedelta(seconds=1))
    candidates = set()
    for hour, moved in _moved_by_hour(recorded[1]).items():
        if hour >= lo:
            ranked = sorted(((sum(b), sid) for sid, (_s, b, _n) in moved.items() if sum(b)),
                            reverse=True)
            candidates.update(sid for _b, sid in ranked[:25])
    assert len(candidates) <= 50        # the report looks at 5 x --top of them
    want = sorted((lifetime[sid] for sid in candidates), reverse=True)[:10]
    assert [r["bytes"] for r in _rows(report, "largest")] == want


def test_charts_and_tables_are_in_the_html_and_it_parses(recorded, report, tmp_path):
    out_file = tmp_path / "r.html"
    out = run_cli("report", "--db", recorded[0], "--since", SINCE, "--until", UNTIL,
                  "--format", "html", "-o", out_file)
    assert out.returncode == 0, out.stderr
    assert os.stat(out_file).st_mode & 0o777 == 0o600

    class Ids(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids, self.tags = set(), Counter()

        def handle_starttag(self, tag, attrs):
            self.tags[tag] += 1
            self.ids.update(v for k, v in attrs if k == "id")

    p = Ids()
    text = out_file.read_text()
    p.feed(text)
    doc = report["_doc"]
    for s in doc["sections"]:
        for t in s["tables"]:
            assert f"table-{t['key']}" in p.ids
        for c in s["charts"]:
            assert f"chart-{c['key']}" in p.ids
    assert {"concurrent", "new", "bytes", "top_hosts"} <= {
        c["key"] for s in doc["sections"] for c in s["charts"]}
    assert p.tags["svg"] == 4 and p.tags["polyline"] >= 2 and p.tags["rect"] > 50
    assert "<script" not in text and "http://" not in text.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert 'name="viewport"' in text


def test_csv_and_text_carry_the_json_numbers(recorded, report):
    base = ("report", "--db", recorded[0], "--since", SINCE, "--until", UNTIL)
    rows = list(csv.DictReader(io.StringIO(run_cli(*base, "--format", "csv").stdout)))
    doc = report["_doc"]
    cells = {(r["table"], int(r["row"]), r["column"]): r for r in rows if r["table"]}
    text = run_cli(*base).stdout
    for s in doc["sections"]:
        for t in s["tables"]:
            for i, row in enumerate(t["rows"]):
                for col, value in zip(t["columns"], row):
                    cell = cells[(t["key"], i, col)]
                    assert cell["value"] == ("" if value is None else str(value))
                    if t["key"] not in ("timeline", "top_host_bytes"):
                        assert cell["shown"] in text, (t["key"], col, cell["shown"])


def test_empty_period_is_a_report_that_says_so(recorded):
    out = run_cli("report", "--db", recorded[0], "--since", "2026-01-01T00:00Z",
                  "--until", "2026-01-02T00:00Z")
    assert out.returncode == 0, out.stderr
    assert "No collection was taken between" in out.stdout
    assert "the history knows nothing of this period" in out.stdout


@pytest.mark.parametrize("args, message", [
    (("--since", "2026-11-25T00:00Z", "--until", "2026-11-24T00:00Z"), "--until is before --since"),
    (("--since", "yesterday"), "--since 'yesterday' is not an ISO 8601 time"),
])
def test_bad_periods_are_one_sentence(recorded, args, message):
    out = run_cli("report", "--db", recorded[0], *args)
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_top_needs_a_row(recorded):
    out = run_cli("report", "--db", recorded[0], "--top", "0")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == ("pfhistory report: argument --top: must be at least 1, "
                                  "not '0' (see pfhistory report --help)")


def test_missing_and_foreign_databases_are_refused(tmp_path):
    out = run_cli("report", "--db", tmp_path / "nope.db")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "nope.db" in out.stderr
    assert not (tmp_path / "nope.db").exists()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    out = run_cli("report", "--db", empty)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_unwritable_output_leaves_nothing(recorded, tmp_path):
    target = tmp_path / "no-such-dir" / "r.html"
    out = run_cli("report", "--db", recorded[0], "--format", "html", "-o", target)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "cannot write the report" in out.stderr
    assert not target.parent.exists()


def _tables(doc):
    return {t["key"]: t["rows"] for s in doc["sections"] for t in s["tables"]}


def _report_json(db, since=SINCE, until=UNTIL):
    out = run_cli("report", "--db", db, "--since", since, "--until", until, "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _sql(db, sql, *args):
    import sqlite3

    with sqlite3.connect(db) as c:
        return c.execute(sql, args).fetchall()


def test_complete_hours_are_rolled_up_once_and_sum_to_the_collections(recorded, tmp_path):
    """Each hour goes into rollups once, when a collection lies after its end; the
    report computes the open one, and the stored hour is what it computed."""
    import shutil

    db = tmp_path / "h.db"
    shutil.copy(recorded[0], db)
    snaps = recorded[3]
    hours = sorted({_hour(t) for t, _p in snaps})
    times = dict(_sql(db, "SELECT id, collected_at FROM collections"))
    done = _sql(db, "SELECT hour, first_collection, last_collection, rolled_up "
                    "FROM rollup_hours ORDER BY hour")
    # 21:00 (the first collection alone, the baseline) and 22:00; 23:00 is still open.
    assert [d[0] for d in done] == hours[:-1] and len(hours) == 3
    for hour, first, last, rolled in done:
        assert rolled == 1
        assert {i for i, at in times.items() if hour < at <= hour + 3600} == \
            set(range(first, last + 1))
    open_hour = hours[-1]
    assert _sql(db, "SELECT count(*) FROM rollups WHERE hour >= ?", open_hour) == [(0,)]
    assert _sql(db, "SELECT count(*) FROM collections WHERE rolled_up = 0")[0][0] == \
        sum(1 for t, _p in snaps if _hour(t) == open_hour)
    bytes_sql = "SELECT sum(bytes_out + bytes_in) FROM rollups WHERE dim = 3"
    # Every byte the collections counted between them is in some service's rollup.
    assert _sql(db, bytes_sql)[0][0] == _sql(
        db, "SELECT sum(bytes) FROM collections WHERE id > 1 AND rolled_up <> 0")[0][0]
    stored = _sql(db, "SELECT * FROM rollups ORDER BY hour, dim, key, key2, label")
    # Recording the last snapshot again (its hour still open) changes no rollup.
    last = snaps[-1][1]
    out = run_cli("collect", "--db", db, "--from-file", last, "--at", SCAN_AT.isoformat(), "-v")
    assert out.returncode == 0 and " ms, rollups " in out.stdout, out.stderr
    assert _sql(db, "SELECT * FROM rollups ORDER BY hour, dim, key, key2, label") == stored
    before = _report_json(db)
    assert any(line.startswith("Hours not yet in the rollups, computed for this report")
               for s in before["sections"] for line in s["lines"])
    # A collection an hour later completes 23:00: rolled up now, once.
    later = (SCAN_AT + timedelta(hours=1)).isoformat()
    for _ in range(2):
        out = run_cli("collect", "--db", db, "--from-file", last, "--at", later)
        assert out.returncode == 0, out.stderr
    assert [h for h, in _sql(db, "SELECT hour FROM rollup_hours ORDER BY hour")] == hours
    newest = max(_sql(db, "SELECT id FROM collections"))[0]
    assert _sql(db, "SELECT last_collection FROM rollup_hours WHERE hour = ?",
                open_hour) == [(newest - 2,)]
    assert _sql(db, bytes_sql)[0][0] == _sql(
        db, "SELECT sum(bytes) FROM collections WHERE id > 1 AND id < ?", newest - 1)[0][0]
    # What the report computed for the open hour is what was stored. (The states
    # themselves changed: the same snapshot an hour later makes them an hour younger.)
    after, before = _tables(_report_json(db)), _tables(before)
    for key in ("open_for_days", "longest"):
        del after[key], before[key]
    for rows in (after["largest"], before["largest"]):
        rows[:] = [r[:3] for r in rows]
    assert after == before
    assert not any(line.startswith("Hours not yet") for s in
                   _report_json(db)["sections"] for line in s["lines"])


def test_rollups_left_to_their_own_cron_line_come_out_the_same(recorded, tmp_path):
    """collect --no-rollups stores no hour; `pfhistory rollup` then adds exactly the
    hours, and the rows, that collect would have added itself."""
    db = tmp_path / "h.db"
    snaps = recorded[3]
    out = run_cli("collect", "--no-rollups", "--db", db, "--from-file", *(p for _t, p in snaps),
                  "-v")
    assert out.returncode == 0, out.stderr
    assert all(line.endswith("rollups 0 ms") for line in out.stdout.splitlines())
    assert _sql(db, "SELECT count(*) FROM rollup_hours") == [(0,)]
    assert _sql(db, "SELECT count(*) FROM rollups") == [(0,)]
    out = run_cli("rollup", "--db", db, "-v")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("2 hour(s) rolled up in "), out.stdout
    # Address ids depend on the order a run met them: compare addresses as text.
    everything = ("SELECT r.hour, r.dim, CASE WHEN r.dim IN (1, 2, 6, 7, 8) THEN a.text "
                  "ELSE r.key END, CASE WHEN r.dim = 7 THEN b.text ELSE r.key2 END, r.label, "
                  "r.states, r.halfopen, r.packets_out, r.packets_in, r.bytes_out, r.bytes_in "
                  "FROM rollups r LEFT JOIN addresses a ON a.id = r.key "
                  "LEFT JOIN addresses b ON b.id = r.key2 ORDER BY 1, 2, 3, 4, 5")
    assert _sql(db, everything) == _sql(recorded[0], everything)
    hours = "SELECT hour, first_collection, last_collection, rolled_up FROM rollup_hours"
    assert _sql(db, hours) == _sql(recorded[0], hours)
    # Nothing left to do the second time; a database that is not one is refused.
    assert run_cli("rollup", "--db", db, "-v").stdout.startswith("0 hour(s) rolled up")
    bad = run_cli("rollup", "--db", tmp_path / "missing.db")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_prune_keeps_what_the_rollups_name(recorded, tmp_path):
    import shutil

    db = tmp_path / "pruned.db"
    shutil.copy(recorded[0], db)
    base = ("report", "--db", db, "--since", SINCE, "--until", UNTIL, "--format", "json")
    before = json.loads(run_cli(*base).stdout)
    out = run_cli("prune", "--db", db, "--before", UNTIL)
    assert out.returncode == 0, out.stderr
    after = json.loads(run_cli(*base).stdout)

    def tables(doc, keys):
        return {t["key"]: t["rows"] for s in doc["sections"] for t in s["tables"]
                if t["key"] in keys}

    keys = {"local_bytes_out", "remote_connections", "services", "rules_bytes", "nat_ports",
            "halfopen", "bursts", "coverage", "timeline"}
    assert tables(after, keys) == tables(before, keys)


def test_summary_names_the_same_top_talkers(recorded):
    """summary counts every hour, the one not yet complete too."""
    out = run_cli("summary", "--db", recorded[0], "--top", "3")
    assert out.returncode == 0, out.stderr
    hosts, *_ = _brute(recorded[1], None)
    for kind in ("local", "remote"):
        want = sorted(hosts[kind].items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0]))[:3]
        block = out.stdout.split(f"top {kind} hosts by bytes:\n")[1].splitlines()[:3]
        got = [(line.split()[0], int(line.split()[1].replace(",", "")),
                int(line.split()[3].replace(",", ""))) for line in block]
        assert [line.split()[4] for line in block] == ["states"] * 3
        # Bytes moved since the history began, and every state of the host (the
        # first snapshot's too: each state counts in the hour it was first seen).
        assert got == [(h, v[0] + v[1], v[2]) for h, v in want]


PFSYNC_ID = 0x5EED0001
PFSYNC_START = SCAN_AT + timedelta(minutes=1)
PFSYNC_MINUTES = 20


@pytest.fixture(scope="module")
def mixed(recorded, tmp_path_factory):
    """The recorded history, then 20 minutes of pfsync traffic of another firewall
    (its own creatorid: only pfsync sees its states), then the last snapshot again
    after midnight, which completes the hour 23:00. Returns (db, pcap config)."""
    import shutil

    from pfhistory.simulate import SimulationConfig

    tmp = tmp_path_factory.mktemp("mixed")
    db = tmp / "mixed.db"
    shutil.copy(recorded[0], db)
    pcap = tmp / "sync.pcap"
    out = run_cli("simulate", "--pfsync", pcap, "--states", 300, "--duration",
                  f"{PFSYNC_MINUTES}m", "--start", PFSYNC_START.isoformat(), "--seed", 5,
                  "--creatorid", f"{PFSYNC_ID:x}")
    assert out.returncode == 0, out.stderr
    out = run_cli("collect", "--db", db, "--from-pcap", pcap, "-v")
    assert out.returncode == 0 and "; rollups " in out.stderr + out.stdout, out.stderr
    out = run_cli("collect", "--db", db, "--from-file", recorded[3][-1][1],
                  "--at", (START + timedelta(hours=2, minutes=1)).isoformat())
    assert out.returncode == 0, out.stderr
    cfg = SimulationConfig(states=300, interval=60.0, duration=PFSYNC_MINUTES * 60.0, seed=5,
                           start=PFSYNC_START, creatorid=PFSYNC_ID)
    return db, cfg


def _pfsync_states(cfg):
    """{state id: fields} of every state the pfsync firewall announced, with the values
    pfsync gave: its whole record at the start (bulk update) or at its insert. Its later
    messages (UPD_C, DEL_C) carry no counters."""
    from pfhistory.simulate import iter_events

    start = cfg.start.timestamp()
    out = {}
    for at, kind, state in iter_events(cfg):
        if kind == "insert" and state.id not in out:
            sid, fields = _fields(state.record_at(max(at, start)))
            out[sid] = fields
    return out


def test_pfsync_batches_count_in_the_rollups(recorded, mixed):
    """Snapshots and pfsync events in one history: the hour holds the states only pfsync
    saw, and the rollups still add up to the collections' bytes (a pfsync batch counts
    its new states' counters and what whole records added to known states')."""
    db, cfg = mixed
    hour = _hour(SCAN_AT)
    synced = _pfsync_states(cfg)
    assert len(synced) > 300
    snapshots = _moved_by_hour(recorded[1])[hour]
    new = sum(n for _s, _b, n in snapshots.values()) + len(synced)
    moved = sum(sum(b) for _s, b, _n in snapshots.values()) + sum(
        sum(f["b"]) for f in synced.values())
    assert _sql(db, "SELECT sum(states), sum(bytes_out + bytes_in) FROM rollups "
                    "WHERE hour = ? AND dim = 5", hour) == [(new, moved)]
    assert _sql(db, "SELECT first_collection < last_collection FROM rollup_hours "
                    "WHERE hour = ?", hour) == [(1,)]
    assert _sql(db, "SELECT sum(bytes_out + bytes_in) FROM rollups WHERE dim = 3")[0][0] == \
        _sql(db, "SELECT sum(bytes) FROM collections WHERE id > 1 AND rolled_up <> 0")[0][0]
    assert _sql(db, "SELECT count(*) FROM collections WHERE kind = 1 AND rolled_up = 0") == \
        [(0,)]


def test_pfsync_batches_are_not_collections_in_the_report(recorded, mixed):
    """Coverage counts the snapshots (the batches neither hide gaps nor are counted as
    collections); the top lists count the states only pfsync saw."""
    db, cfg = mixed
    snapshots = _sql(db, "SELECT count(*) FROM collections WHERE kind = 0 "
                         "AND collected_at <= ?", int(SCAN_AT.timestamp()))[0][0]
    until = (PFSYNC_START + timedelta(minutes=PFSYNC_MINUTES)).isoformat()
    doc = _report_json(db, SINCE, until)
    tables = {t["key"]: t for s in doc["sections"] for t in s["tables"]}
    assert tables["coverage"]["rows"][0][0] == snapshots
    # The minutes after the last snapshot are a blind spot for snapshots.
    assert tables["gaps"]["rows"][-1][0] == int(SCAN_AT.timestamp())
    _hosts, _rules, ifs, _sources = _brute(recorded[1], SINCE, until)
    for f in _pfsync_states(cfg).values():
        ifs[f["ifname"]] += sum(f["b"])
    assert {r[0]: r[2] for r in tables["interfaces"]["rows"]} == dict(ifs)
    # The overview counts what the batches saw too, as the rollups of its hours do.
    overview = dict(tables["overview"]["rows"])
    assert (overview["new states"], overview["bytes moved"]) == _sql(
        db, "SELECT sum(states), sum(bytes_out + bytes_in) FROM rollups "
            "WHERE dim = 5 AND hour >= ?", int(START.timestamp()))[0]
    out = run_cli("summary", "--db", db)
    assert out.returncode == 0, out.stderr
    assert f"snapshots: {snapshots + 1} from " in out.stdout
    batches = _sql(db, "SELECT count(*) FROM collections WHERE kind = 1")[0][0]
    assert f"pfsync batches: {batches} from " in out.stdout


def test_collect_from_pcap_rolls_up_the_hours_its_batches_complete(tmp_path):
    """A history of pfsync batches alone: the batch after 23:00 completes 22:00-23:00,
    which collect --from-pcap rolls up then; 23:00 stays open."""
    pcap = tmp_path / "fw.pcap"
    out = run_cli("simulate", "--pfsync", pcap, "--states", 200, "--duration", "20m",
                  "--start", (START + timedelta(minutes=50)).isoformat(), "--seed", 9)
    assert out.returncode == 0, out.stderr
    db = tmp_path / "h.db"
    out = run_cli("collect", "--db", db, "--from-pcap", pcap, "-v")
    assert out.returncode == 0, out.stderr
    hour = int(START.timestamp())
    assert _sql(db, "SELECT hour, first_collection FROM rollup_hours") == [(hour, 1)]
    last = _sql(db, "SELECT last_collection FROM rollup_hours")[0][0]
    times = dict(_sql(db, "SELECT id, collected_at FROM collections WHERE kind = 1"))
    assert {i for i, at in times.items() if at <= hour + 3600} == set(range(1, last + 1))
    # Every state a batch of the hour first saw is new in it (the first batch is the
    # history's baseline: its states count, what they moved before it does not).
    assert _sql(db, "SELECT sum(states) FROM rollups WHERE hour = ? AND dim = 5", hour) == \
        _sql(db, "SELECT count(*) FROM states WHERE first_seen <= ?", last)
    assert _sql(db, "SELECT sum(bytes_out + bytes_in) FROM rollups WHERE dim = 3") == _sql(
        db, "SELECT sum(bytes) FROM collections WHERE id > 1 AND rolled_up <> 0")
    assert _sql(db, "SELECT count(*) FROM collections WHERE rolled_up = 0")[0][0] == \
        len(times) - last > 0
    out = run_cli("summary", "--db", db)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"snapshots: 0\npfsync batches: {len(times)} from ")


@pytest.mark.parametrize("start, end", [(2, 4), (30, 45), (38, 44), (0, 91)])
def test_states_seen_counts_each_state_once_in_any_period(recorded, start, end):
    """States seen: the distinct states of the period's collections, wherever the
    period starts (its first collection's new states are among that collection's)."""
    db, decoded, _truth, _snaps = recorded
    since, until = (START + timedelta(minutes=m) for m in (start, end))
    doc = _report_json(db, since.isoformat(), until.isoformat())
    seen = dict(_tables(doc)["overview"])["states seen"]
    ids = set().union(*(set(s) for t, s in decoded if since <= t <= until))
    lo, hi = _sql(db, "SELECT min(id), max(id) FROM collections WHERE collected_at "
                      "BETWEEN ? AND ?", int(since.timestamp()), int(until.timestamp()))[0]
    assert seen == len(ids) == _sql(
        db, "SELECT count(*) FROM states WHERE first_seen <= ? "
            "AND (last_seen IS NULL OR last_seen >= ?)", hi, lo)[0][0]


def test_a_pfsync_only_history_is_reported_from_its_batches(tmp_path):
    """pfsync batches are collections: a period they cover is described from them
    (what began, ended and moved, the top lists, the states alive at its end); a
    period before them is still one the history knows nothing of."""
    pcap, db = tmp_path / "fw.pcap", tmp_path / "h.db"
    out = run_cli("simulate", "--pfsync", pcap, "--states", 50, "--duration", "3m",
                  "--start", START.isoformat(), "--seed", 5)
    assert out.returncode == 0, out.stderr
    out = run_cli("collect", "--db", db, "--from-pcap", pcap)
    assert out.returncode == 0, out.stderr
    since, until = START - timedelta(hours=1), START + timedelta(hours=2)
    doc = _report_json(db, since.isoformat(), until.isoformat())
    tables = {t["key"]: t["rows"] for s in doc["sections"] for t in s["tables"]}
    cover = " ".join(doc["sections"][0]["lines"])
    assert "knows nothing" not in cover and "pfsync batches" in cover
    # Not one blind spot the length of the period: pfsync covered it.
    assert tables["gaps"] == []
    assert tables["batches"] == [list(r) for r in _sql(
        db, "SELECT count(*), min(collected_at), max(collected_at) FROM collections "
            "WHERE kind = 1")]
    # The first batch is the baseline, as a first snapshot is.
    overview = dict(tables["overview"])
    assert (overview["new states"], overview["ended states"], overview["bytes moved"]) == (
        _sql(db, "SELECT count(*) FROM states WHERE first_seen > 1")[0][0],
        _sql(db, "SELECT count(*) FROM states WHERE ended_before > 1")[0][0],
        _sql(db, "SELECT sum(bytes) FROM collections WHERE id > 1")[0][0])
    assert overview["new states"] > 0 and overview["ended states"] > 0
    # What the bytes are: UPD_C carries no counters (if_pfsync.h), so pfsync alone
    # undercounts, and the report says so.
    said = " ".join(line for sec in doc["sections"] if sec["key"] == "overview"
                    for line in sec["lines"])
    assert "compressed updates carry no counters" in said
    # The top lists count every state the batches saw (the baseline's too) and
    # add up to what the collections moved.
    assert sorted(tuple(r[:2]) for r in tables["interfaces"]) == _sql(
        db, "SELECT ifname, count(*) FROM states GROUP BY ifname ORDER BY ifname")
    assert sum(r[2] for r in tables["interfaces"]) == overview["bytes moved"]
    # Longest-lived: the states open at the end of the period, from their creation.
    latest = _sql(db, "SELECT max(collected_at) FROM collections")[0][0]
    lived = sorted((min(last, int(until.timestamp())) - created for created, last in _sql(
        db, "SELECT created_at, COALESCE(last_seen_at, ?) FROM states "
            "WHERE ended_before IS NULL", latest)), reverse=True)
    assert [r[7] for r in tables["longest"]] == lived[:10] != []
    before = run_cli("report", "--db", db, "--since", (since - timedelta(days=1)).isoformat(),
                     "--until", since.isoformat())
    assert before.returncode == 0, before.stderr
    assert "the history knows nothing of this period" in before.stdout


def test_states_seen_counts_a_state_that_came_back_only_where_it_was_seen(tmp_path):
    """A state missing from some snapshots is reopened when it comes back: the
    periods in which it was absent do not count it, those that saw it do."""
    from golden_records import Key, Peer, build_state
    from pfhistory import pf

    def tcp(i):
        return build_state(wire=Key("192.0.2.1", 443, f"10.0.0.{i + 1}", 40000 + i),
                           id=i + 1, ifname=b"em0", direction=pf.PF_OUT, proto=6,
                           src=Peer(state=4), dst=Peer(state=4), packets=(5, 1),
                           bytes_=(500, 60), creation=10, expire=86400, creatorid=7)

    t0 = int(START.timestamp())
    present = [(0, 1), (0,), (0,), (0, 1)]         # state 1 is away from minutes 1 and 2
    files = []
    for minute, ids in enumerate(present):
        path = tmp_path / f"{minute}.pf"
        path.write_bytes(b"".join(tcp(i) for i in ids))
        os.utime(path, (t0 + 60 * minute, t0 + 60 * minute))
        files.append(path)
    db = tmp_path / "h.db"
    assert run_cli("collect", "--db", db, "--from-file", *files).returncode == 0
    assert _sql(db, "SELECT reopened FROM collections ORDER BY id") == [(0,), (0,), (0,), (1,)]
    for first, last in ((0, 0), (1, 1), (1, 2), (2, 3), (1, 3), (0, 3)):
        doc = _report_json(db, (START + timedelta(minutes=first)).isoformat(),
                           (START + timedelta(minutes=last)).isoformat())
        seen = dict(_tables(doc)["overview"])["states seen"]
        assert seen == len(set().union(*present[first:last + 1])), (first, last)


def test_the_report_names_who_recorded_the_period(recorded, mixed):
    """Coverage names the machine and the pf (creatorid) of the period's collections:
    the snapshots of the simulated firewall, then the pfsync batches of the other one,
    counted from the collections as recorded, not from the table being reported."""
    import socket

    db, cfg = mixed
    snapshots = len(recorded[3])
    until = PFSYNC_START + timedelta(minutes=PFSYNC_MINUTES)
    batches = _sql(db, "SELECT count(*), min(collected_at), max(collected_at) FROM collections "
                       "WHERE kind = 1")[0]
    doc = _report_json(db, SINCE, until.isoformat())
    tables = {t["key"]: t for s in doc["sections"] for t in s["tables"]}
    host = socket.gethostname()
    assert tables["recorded_by"]["rows"] == [
        ["snapshots", host, "1a2b3c4d", snapshots, int(START.timestamp()),
         int(SCAN_AT.timestamp())],
        ["pfsync", host, f"{PFSYNC_ID:08x}", *batches]]
    coverage = next(s for s in doc["sections"] if s["key"] == "coverage")
    assert not any("(creatorids)" in line for line in coverage["lines"])
    # The snapshot after midnight, of a table pf restarted with another hostid, makes two.
    later = recorded[3][-1][1].read_bytes()
    restarted = bytearray(later)
    for i in range(0, len(restarted), R):
        struct.pack_into(">I", restarted, i + 236, 0x5EED0002)        # creatorid
    path = db.parent / "restarted.pfstate"
    write_state_file(path, [bytes(restarted)], mtime=(START + timedelta(hours=2, minutes=2))
                     .timestamp())
    copy = db.parent / "restarted.db"
    copy.write_bytes(db.read_bytes())
    assert run_cli("collect", "--db", copy, "--from-file", path).returncode == 0
    doc = _report_json(copy, SINCE, (START + timedelta(hours=3)).isoformat())
    coverage = next(s for s in doc["sections"] if s["key"] == "coverage")
    assert [line for line in coverage["lines"] if "(creatorids)" in line] == [
        "Most states of the period's snapshots were created by 2 pfs (creatorids): the other "
        "member of a CARP pair took over creating states (pfsync brings them to both tables), "
        "pf was restarted (a reboot), or another firewall's table was recorded into this "
        "history, which cannot keep two firewalls apart (one history per firewall)."]
