"""pfhistory report on histories with pfsync batches, alone or beside snapshots.

Each history is recorded through the CLI from state files (write_state_file) and pfsync
captures written here (PcapWriter, as tcpdump -w would), so every expected figure
comes from the records and times given below.
"""

import json
import sqlite3
from datetime import datetime, timezone

import pytest

from conftest import START, run_cli
from golden_records import Key, Peer, build_state
from pfhistory import pfsync
from pfhistory.capture import PcapWriter
from pfhistory.statefile import write_state_file

T0 = int(START.timestamp())         # 2026-11-24T22:00:00Z, an hour's start
H = 3600
DAY = 86400


def _iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _state(sid, age, src=None, bytes_=(500, 60)):
    """An established TCP state out of em0 from src (default 10.0.0.<sid>), age
    seconds old; its initiator (the report's source) is src."""
    src = src or f"10.0.0.{sid}"
    return build_state(wire=Key("192.0.2.1", 443, src, 10000 + sid), id=sid, ifname=b"em0",
                       proto=6, src=Peer(state=4), dst=Peer(state=4), creation=age,
                       expire=86400, creatorid=7, packets=(5, 1), bytes_=bytes_)


def _snapshot(db, path, at, records):
    write_state_file(path, b"".join(records), mtime=at)
    out = run_cli("collect", "--db", db, "--from-file", path, "--at", _iso(at))
    assert out.returncode == 0, out.stderr


def _capture(db, path, packets, *args):
    """Record a capture of packets [(time, [(action, record), ...])]."""
    with PcapWriter(path) as w:
        for at, messages in packets:
            w.write(at, pfsync.encode_ip(pfsync.encode(messages)))
    out = run_cli("collect", "--db", db, "--from-pcap", path, *args)
    assert out.returncode == 0, out.stderr


def _report(db, since, until):
    out = run_cli("report", "--db", db, "--since", _iso(since), "--until", _iso(until),
                  "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    return doc, {t["key"]: t for s in doc["sections"] for t in s["tables"]}


def _connections(table):
    """(from, created, lived, state) of each row of a connections table."""
    cols = table["columns"]
    return [tuple(dict(zip(cols, r))[c] for c in ("from", "created", "lived", "state"))
            for r in table["rows"]]


def _sql(db, sql, *args):
    with sqlite3.connect(db) as c:
        return c.execute(sql, args).fetchall()


def test_states_pfsync_first_reported_after_the_last_snapshot_are_alive(tmp_path):
    """A snapshot at T0, then a pfsync batch a minute later reporting a state opened
    two days ago and one just opened: both were alive at the end of the period, and
    the old one had been open for more than a day."""
    db = tmp_path / "h.db"
    _snapshot(db, tmp_path / "s.pfstate", T0, [_state(1, 3 * DAY)])
    _capture(db, tmp_path / "a.pcap", [(T0 + 60, [(pfsync.ACT_UPD, _state(2, 2 * DAY)),
                                                  (pfsync.ACT_INS, _state(3, 30))])])
    doc, tables = _report(db, T0 - 600, T0 + 120)
    # Lifetimes run up to the newest collection, T0 + 60 (nothing saw them later).
    old = [("10.0.0.1:10001", T0 - 3 * DAY, 3 * DAY + 60, "open"),
           ("10.0.0.2:10002", T0 + 60 - 2 * DAY, 2 * DAY, "open")]
    assert _connections(tables["open_for_days"]) == old
    assert tables["open_for_days"]["note"].startswith("2 in all")
    assert "2 connection(s) had been open for more than 1d00h00m" in " ".join(
        doc["sections"][-1]["lines"])
    assert _connections(tables["longest"]) == old + [("10.0.0.3:10003", T0 + 30, 30, "open")]


def test_states_alive_when_a_snapshot_is_recorded_after_a_later_batch(tmp_path):
    """Collection ids follow recording, not time: a snapshot read at T0 + 50 and
    recorded after a pfsync batch of T0 + 100 (ids 1 snapshot T0, 2 batch T0 + 100,
    3 snapshot T0 + 50, 4 batch T0 + 200). At T0 + 150 the states of all three
    collections by then are alive (the newest by time, the batch, has the smaller id);
    at T0 + 300 the one the last batch first reported too."""
    db = tmp_path / "h.db"
    _snapshot(db, tmp_path / "s1.pfstate", T0, [_state(1, 3 * DAY)])
    _capture(db, tmp_path / "a.pcap", [(T0 + 100, [(pfsync.ACT_INS, _state(2, 2 * DAY))])])
    _snapshot(db, tmp_path / "s2.pfstate", T0 + 50,
              [_state(1, 3 * DAY + 50), _state(2, 2 * DAY - 50), _state(3, DAY + DAY // 2)])
    _capture(db, tmp_path / "b.pcap", [(T0 + 200, [(pfsync.ACT_INS, _state(4, 10))])])
    assert _sql(db, "SELECT id, kind, collected_at - ? FROM collections ORDER BY id", T0) == [
        (1, 0, 0), (2, 1, 100), (3, 0, 50), (4, 1, 200)]
    created = {1: T0 - 3 * DAY, 2: T0 + 100 - 2 * DAY, 3: T0 + 50 - DAY - DAY // 2,
               4: T0 + 190}

    def row(sid, until):
        # lived: up to the newest collection (T0 + 200) or the period's end
        return (f"10.0.0.{sid}:{10000 + sid}", created[sid],
                min(T0 + 200, until) - created[sid], "open")

    _doc, tables = _report(db, T0 - 600, T0 + 150)
    assert _connections(tables["longest"]) == [row(i, T0 + 150) for i in (1, 2, 3)]
    assert _connections(tables["open_for_days"]) == [row(i, T0 + 150) for i in (1, 2, 3)]
    _doc, tables = _report(db, T0 - 600, T0 + 300)
    assert _connections(tables["longest"]) == [row(i, T0 + 300) for i in (1, 2, 3, 4)]
    assert _connections(tables["open_for_days"]) == [row(i, T0 + 300) for i in (1, 2, 3)]
    assert tables["open_for_days"]["note"].startswith("3 in all")


# New states by source and hour: (first seen at, source, how many). At 22:05 the
# history's first collection finds 120 states of 10.0.0.9 and 2 of 10.0.0.5 (the
# baseline: all new to the history, none opened in a burst); 10.0.0.5 then opens 1,
# 3, 0, 2 states in the hours 22:00 to 01:00 and 150 in the hour 02:00; 10.0.0.9
# one an hour.
BURST_PLAN = [(T0 + 300, "10.0.0.9", 120), (T0 + 300, "10.0.0.5", 2),
              (T0 + 1800, "10.0.0.5", 1),
              (T0 + H + 600, "10.0.0.5", 3), (T0 + H + 700, "10.0.0.9", 1),
              (T0 + 2 * H + 700, "10.0.0.9", 1),
              (T0 + 3 * H + 600, "10.0.0.5", 2), (T0 + 3 * H + 700, "10.0.0.9", 1),
              (T0 + 4 * H + 600, "10.0.0.5", 150), (T0 + 4 * H + 700, "10.0.0.9", 1)]


@pytest.mark.parametrize("recorded_by", ["pfsync", "snapshots"])
def test_bursts_count_the_hours_of_pfsync_batches_and_leave_out_the_baseline(tmp_path,
                                                                             recorded_by):
    """The same new states recorded by pfsync batches alone (one INS each) or by
    snapshots (one at each time of the plan, every state so far still open). 10.0.0.5's
    150 states in the hour 02:00 are a burst: its usual is the median of the hours
    23:00, 00:00 (some collection, none of its states: 0) and 01:00, 3, 0, 2, so 2.
    The hour 22:00 holds the baseline: 10.0.0.9's 120 states there are no burst, and
    it tells nothing usual."""
    states = [(at, src) for at, src, n in BURST_PLAN for _ in range(n)]
    db = tmp_path / "h.db"
    if recorded_by == "pfsync":
        _capture(db, tmp_path / "fw.pcap",
                 [(at + k * 0.5, [(pfsync.ACT_INS, _state(k + 1, 1, src))])
                  for k, (at, src) in enumerate(states)])
        assert _sql(db, "SELECT DISTINCT kind FROM collections") == [(1,)]
    else:
        times = sorted({at for at, _src in states})
        files = []
        for t in times:
            files.append(tmp_path / f"{t}.pfstate")
            write_state_file(files[-1], b"".join(
                _state(k + 1, t - at + 1, src) for k, (at, src) in enumerate(states)
                if at <= t), mtime=t)
        out = run_cli("collect", "--db", db, "--from-file", *files)
        assert out.returncode == 0, out.stderr
        assert _sql(db, "SELECT DISTINCT kind FROM collections") == [(0,)]
    _doc, tables = _report(db, T0, T0 + 5 * H)
    assert tables["bursts"]["rows"] == [["10.0.0.5", T0 + 4 * H, 150, 2, "75x"]]


def test_pfsync_hours_rolled_up_after_their_samples_expired_are_said(tmp_path):
    """pfsync batches alone, recorded with a one-minute sample retention and rolled up
    afterwards: the hour 23:00 needed the values state 1 had at 22:01:40 (its UPDs at
    23:01:40 and 23:03:20 moved its counters), long expired. The report says that its
    two batches were rolled up so, as it says it of snapshots."""
    db = tmp_path / "h.db"
    _capture(db, tmp_path / "fw.pcap", [
        (T0 + 100, [(pfsync.ACT_INS, _state(1, 1))]),
        (T0 + H + 100, [(pfsync.ACT_UPD, _state(1, H + 1, bytes_=(5000, 600)))]),
        (T0 + H + 200, [(pfsync.ACT_UPD, _state(1, H + 101, bytes_=(9000, 900)))]),
        (T0 + 2 * H + 100, [(pfsync.ACT_INS, _state(2, 1))]),
    ], "--no-rollups", "--sample-retention", "1m")
    out = run_cli("rollup", "--db", db)
    assert out.returncode == 0, out.stderr
    assert _sql(db, "SELECT rolled_up FROM rollup_hours WHERE hour = ?", T0 + H) == [(2,)]
    doc, _tables = _report(db, T0 + H, T0 + 2 * H)
    overview = next(s for s in doc["sections"] if s["key"] == "overview")
    assert "2 collection(s) were rolled up after samples they needed expired: top lists " \
           "count what moved only where the samples were kept, and all new states." in \
           overview["lines"]
