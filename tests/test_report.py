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
    out = {}
    for i in range(0, len(data), R):
        rec = data[i:i + R]
        waf, saf = rec[24 + 38], rec[64 + 38]
        out[struct.unpack_from(">Q", rec, 0)[0]] = dict(
            direction=rec[252], proto=rec[251],
            ifname=rec[8:24].split(b"\0")[0].decode(),
            rule=struct.unpack_from(">I", rec, 184)[0],
            anchor=struct.unpack_from(">I", rec, 188)[0],
            wa0=_addr(rec, 24, waf), wa1=_addr(rec, 40, waf),
            wp0=struct.unpack_from(">H", rec, 56)[0], wp1=struct.unpack_from(">H", rec, 58)[0],
            sa0=_addr(rec, 64, saf), sa1=_addr(rec, 80, saf),
            sp1=struct.unpack_from(">H", rec, 98)[0],
            mirror=rec[24:64] == rec[64:104],
            creation=struct.unpack_from(">I", rec, 196)[0],
            b=struct.unpack_from(">QQ", rec, 220), p=struct.unpack_from(">QQ", rec, 204),
            src_state=rec[OFF_SRC + PEER_OFF_STATE], dst_state=rec[OFF_DST + PEER_OFF_STATE])
    return out


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


def _brute(decoded):
    """What the report's top lists should say, from the snapshots alone."""
    hosts = {"local": defaultdict(lambda: [0, 0, 0]), "remote": defaultdict(lambda: [0, 0, 0])}
    rules, ifs, sources = Counter(), Counter(), defaultdict(lambda: [0, 0])
    prev = None
    for _t, snap in decoded:
        if prev is None:
            prev = snap
            continue
        for sid, s in snap.items():
            old = prev.get(sid)
            new = old is None
            b0, b1 = s["b"]
            if old is not None:
                b0, b1 = max(b0 - old["b"][0], 0), max(b1 - old["b"][1], 0)
            out = s["direction"] == 2
            init = s["sa1"] if out else s["wa0"]
            resp = s["sa0"] if out else s["sa1"]
            peer = s["wa0"] if out else s["wa1"]
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
        prev = snap
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


def test_largest_connection_is_the_biggest_counter_seen(report, recorded):
    biggest = {}
    for _t, snap in recorded[1]:
        for sid, s in snap.items():
            biggest[sid] = sum(s["b"])
    want = sorted(biggest.values(), reverse=True)[:3]
    assert [r["bytes"] for r in _rows(report, "largest")][:3] == want


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
    assert out.stderr.strip().splitlines()[-1].endswith("'0': a list needs at least one row")


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


def test_rollups_are_idempotent_and_every_collection_is_counted(recorded, tmp_path):
    import sqlite3

    db = recorded[0]
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM collections WHERE rolled_up <> 1").fetchone() \
            == (0,)
        before = c.execute("SELECT sum(bytes_out + bytes_in), count(*) FROM rollups "
                           "WHERE dim = 3").fetchone()
        coll = c.execute("SELECT sum(bytes) FROM collections WHERE id > 1").fetchone()[0]
    # Every byte the collector counted between collections is in some service's rollup.
    assert before[0] == coll
    # Recording the last snapshot again changes no rollup.
    again = run_cli("collect", "--db", db, "--from-file", recorded[3][-1][1],
                    "--at", SCAN_AT.isoformat())
    with sqlite3.connect(db) as c:
        after = c.execute("SELECT sum(bytes_out + bytes_in), count(*) FROM rollups "
                          "WHERE dim = 3").fetchone()
    assert after == before, again.stderr


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
    out = run_cli("summary", "--db", recorded[0], "--top", "3")
    assert out.returncode == 0, out.stderr
    hosts, *_ = _brute(recorded[1])
    for kind in ("local", "remote"):
        want = sorted(hosts[kind].items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0]))[:3]
        block = out.stdout.split(f"top {kind} hosts by bytes:\n")[1].splitlines()[:3]
        got = [(line.split()[0], int(line.split()[1].replace(",", ""))) for line in block]
        assert got == [(h, v[0] + v[1]) for h, v in want]


def test_pfsync_batches_are_not_collections_in_the_report(recorded, tmp_path):
    """Snapshots and pfsync events in one history: coverage and rollups count the
    snapshots; the batches neither hide gaps nor wait to be rolled up."""
    import shutil
    import sqlite3

    db = tmp_path / "mixed.db"
    shutil.copy(recorded[0], db)
    with sqlite3.connect(db) as c:
        snapshots = c.execute("SELECT count(*) FROM collections").fetchone()[0]
    start = SCAN_AT + timedelta(minutes=1)
    pcap = tmp_path / "sync.pcap"
    out = run_cli("simulate", "--pfsync", pcap, "--states", 300, "--duration", "3m",
                  "--start", start.isoformat(), "--seed", 5)
    assert out.returncode == 0, out.stderr
    out = run_cli("collect", "--db", db, "--from-pcap", pcap)
    assert out.returncode == 0, out.stderr
    with sqlite3.connect(db) as c:
        batches = c.execute("SELECT count(*) FROM collections WHERE kind = 1").fetchone()[0]
    assert batches > 0
    until = (start + timedelta(minutes=3)).isoformat()
    out = run_cli("report", "--db", db, "--since", SINCE, "--until", until, "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    tables = {t["key"]: t for s in doc["sections"] for t in s["tables"]}
    assert tables["coverage"]["rows"][0][0] == snapshots
    lines = [line for s in doc["sections"] for line in s["lines"]]
    assert not any("not yet in the rollups" in line for line in lines)
    # The minutes after the last snapshot are a blind spot for snapshots.
    assert tables["gaps"]["rows"][-1][0] == int(SCAN_AT.timestamp())
