"""pfsync events recorded into real SQLite histories: every action of pf-formats.md 4.4,
the simulator's traffic against its ground truth, and reconciliation with the collector."""

import functools
import os
import sqlite3
import struct
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_cli
from golden_records import Key, Peer, build_state
from pfhistory import collector, db, pfsync
from pfhistory.capture import PcapWriter, read_frames
from pfhistory.simulate import SimulationConfig, iter_events
from pfhistory.statefile import write_state_file
from pfhistory.syncrecorder import SyncRecorder

CID = 0x1A2B3C4D
OTHER = 0x0BADCAFE
T0 = 1795557600          # 2026-11-24T22:00:00Z
M32 = 0xFFFFFFFF


def rec(sid, creatorid=CID, ifname=b"em0", state=4, packets=(10, 20), creation=30, seq=100,
        **kw):
    return build_state(id=sid, creatorid=creatorid, ifname=ifname, direction=2,
                       wire=Key("203.0.113.7", 443, "10.0.0.23", 50000 + sid % 1000),
                       src=Peer(seqlo=seq, seqhi=(seq + 100) & M32, max_win=10, state=state),
                       dst=Peer(seqlo=(seq + 200) & M32, seqhi=(seq + 300) & M32, max_win=20,
                                state=state),
                       creation=creation, expire=86400, packets=packets, timeout=2, **kw)


def dgram(*messages):
    return pfsync.encode_ip(pfsync.encode(list(messages)))


@pytest.fixture
def history(tmp_path):
    url = db.resolve_url(str(tmp_path / "h.db"))
    engine = db.open_engine(url, create=True)
    db.require_current_schema(engine, url, create=True)
    yield engine, tmp_path / "h.db"
    engine.dispose()


def feed(engine, *packets, origin="pfsync test"):
    """Each (time, datagram) in its own batch, as a slow trickle would be."""
    r = SyncRecorder(engine, origin, batch_packets=1)
    for at, data in packets:
        r.add(at, data)
        r.flush()
    return r


def states(path):
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    try:
        return {r["state_id"]: dict(r) for r in con.execute(
            "SELECT s.*, p.state AS src_state, p.seqlo AS src_seqlo FROM states s "
            "JOIN state_peers p ON p.state_pk = s.pk AND p.side = 0")}
    finally:
        con.close()


def rows(path, sql):
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_insert_update_compressed_update_delete(history):
    engine, path = history
    r = feed(engine,
             (T0 + 0.5, dgram((pfsync.ACT_INS, rec(1)))),
             (T0 + 10.2, dgram((pfsync.ACT_UPD, rec(1, packets=(50, 60), creation=40)))),
             (T0 + 20.9, dgram(pfsync.upd_c(rec(1, state=9)))),
             (T0 + 31.0, dgram(pfsync.del_c(CID, 1))))
    s = states(path)[1]
    assert s["created_at"] == T0 - 30
    assert s["packets0"] == 50 and s["packets1"] == 60        # from the full UPD
    assert s["src_state"] == 9                               # from the UPD_C
    assert s["ended_before_at"] == s["last_seen_at"] == T0 + 31 and s["ended_by"] == 1
    # Every change kept the previous values as a sample.
    assert rows(path, "SELECT count(*) FROM samples")[0][0] == 2
    kinds = rows(path, "SELECT kind, source, states, malformed FROM collections ORDER BY id")
    assert kinds == [(1, "pfsync test", 1, 0)] * 4
    assert r.totals["inserted"] == 1 and r.totals["ended"] == 1 and not r.malformed


def test_full_delete_and_messages_that_change_nothing(history):
    engine, path = history
    feed(engine,
         (T0, dgram((pfsync.ACT_INS, rec(1)), (pfsync.ACT_INS, rec(2)))),
         (T0 + 1, dgram(pfsync.ins_ack(CID, 1), pfsync.upd_req(CID, 0),
                        pfsync.bus(CID, pfsync.BUS_START), (pfsync.ACT_TDB, bytes(52)))),
         (T0 + 2, dgram((pfsync.ACT_DEL, rec(2)))))
    s = states(path)
    assert s[1]["ended_before"] is None
    assert s[2]["ended_before_at"] == T0 + 2 and s[2]["ended_by"] == 1


def test_compressed_messages_about_unknown_states_are_partial_never_invented(history):
    engine, path = history
    feed(engine,
         (T0, dgram(pfsync.upd_c(rec(7, state=3)), pfsync.upd_c(rec(7, state=4)))),
         (T0 + 5, dgram(pfsync.del_c(CID, 8))))
    assert states(path) == {}
    assert sorted(rows(path, "SELECT state_id, first_at, last_at, ended_at, updates, "
                             "src_state FROM partial_states")) == [
        (7, T0, T0, None, 2, 4), (8, T0 + 5, T0 + 5, T0 + 5, 0, None)]
    # A full record later makes 7 a state; the partial row goes.
    feed(engine, (T0 + 9, dgram((pfsync.ACT_UPD, rec(7)))))
    assert list(states(path)) == [7]
    assert rows(path, "SELECT state_id FROM partial_states") == [(8,)]
    # pfhistory prune forgets partial states like the states that ended.
    r = run_cli("prune", "--db", path, "--before", "2026-11-24T22:00:04Z")
    assert r.returncode == 0, r.stderr
    assert rows(path, "SELECT state_id FROM partial_states") == [(8,)]
    assert run_cli("prune", "--db", path, "--before", "2026-11-24T22:00:05Z").returncode == 0
    assert rows(path, "SELECT state_id FROM partial_states") == []


def test_clear_ends_one_creators_states_or_one_interface(history):
    engine, path = history
    feed(engine, (T0, dgram(*[(pfsync.ACT_INS, r) for r in (
        rec(1), rec(2, ifname=b"em1"), rec(3, creatorid=OTHER), rec(4)) ])),
        (T0 + 3, dgram(pfsync.clr(CID, b"em1"))))
    s = states(path)
    assert [sid for sid in s if s[sid]["ended_before"] is not None] == [2]
    feed(engine, (T0 + 7, dgram(pfsync.clr(CID))))
    s = states(path)
    assert {sid: s[sid]["ended_before_at"] for sid in s} == {1: T0 + 7, 2: T0 + 3, 3: None,
                                                            4: T0 + 7}


def test_ended_stays_ended_and_one_batch_nets_out(history):
    engine, path = history
    r = SyncRecorder(engine, "pfsync test")          # all in one batch
    r.add(T0, dgram((pfsync.ACT_INS, rec(1)), pfsync.upd_c(rec(1, state=9))))
    r.add(T0 + 0.1, dgram(pfsync.del_c(CID, 1), (pfsync.ACT_UPD, rec(1, state=4))))
    result = r.flush()
    s = states(path)[1]
    assert s["src_state"] == 9 and s["ended_before_at"] == T0 and s["ended_by"] == 1
    assert result.inserted == 1 and result.ended == 1
    # Later news of it is stale: it stays ended when pfsync said.
    r = feed(engine, (T0 + 60, dgram((pfsync.ACT_UPD, rec(1, state=5)))))
    assert states(path)[1]["src_state"] == 9 and r.totals["stale"] == 1


def test_updates_that_move_peers_backwards_are_ignored_as_the_kernel_does(history):
    engine, path = history
    feed(engine, (T0, dgram((pfsync.ACT_INS, rec(1, state=4, seq=1000)),
                            (pfsync.ACT_INS, rec(2, state=2, seq=0xFFFFFF00, proto=17)),
                            (pfsync.ACT_INS, rec(3, state=4, seq=0xFFFFFF00)))))
    r = feed(engine,
             (T0 + 1, dgram(pfsync.upd_c(rec(1, state=2, seq=1000)))),      # state back
             (T0 + 2, dgram(pfsync.upd_c(rec(1, state=4, seq=900)))),       # seq back
             (T0 + 3, dgram((pfsync.ACT_UPD, rec(1, state=4, seq=999)))),   # whole, back
             (T0 + 4, dgram(pfsync.upd_c(rec(2, state=1, proto=17)))),      # UDP back
             (T0 + 5, dgram(pfsync.upd_c(rec(3, state=9, seq=0x10)))))      # wraps: forward
    s = states(path)
    assert (s[1]["src_state"], s[1]["src_seqlo"]) == (4, 1000)
    assert s[2]["src_state"] == 2
    assert (s[3]["src_state"], s[3]["src_seqlo"]) == (9, 0x10)
    assert r.totals["stale"] == 4 and r.totals["updated"] == 1


def test_malformed_packets_are_counted_and_skipped_whole(history):
    engine, path = history
    r = SyncRecorder(engine, "pfsync test")
    good = dgram((pfsync.ACT_INS, rec(1)))
    bad_ttl = bytearray(dgram((pfsync.ACT_INS, rec(2))))
    bad_ttl[8] = 64
    half = dgram((pfsync.ACT_INS, rec(3)), (pfsync.ACT_INS, build_state(
        id=4, creatorid=CID, wire=Key("10.0.0.1", 1, "10.0.0.2", 2), timeout=99)))
    for at, data in ((T0, good), (T0, bytes(bad_ttl)), (T0, half), (T0, b"\x45junk")):
        r.add(at, data)
    result = r.flush()
    assert list(states(path)) == [1]
    assert dict(r.malformed) == {"ttl": 1, "value": 1, "short": 1}
    assert result.malformed == 3
    assert rows(path, "SELECT malformed FROM collections") == [(3,)]


# -- the simulator's traffic -------------------------------------------------------------

CFG = SimulationConfig(states=600, duration=900.0, seed=8,
                       start=datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc))


@functools.lru_cache(maxsize=4)
def truth(cfg):
    """{signed id: [created_at, ended_at or None]} from the model itself."""
    out = {}
    for t, kind, s in iter_events(cfg):
        sid = s.id - (1 << 64) if s.id >= 1 << 63 else s.id
        if kind == "insert":
            out[sid] = [s.created_at, None]
        elif kind == "delete":
            out[sid][1] = t
    return out


def check_against_truth(path, expected, interval=60.0):
    got = states(path)
    assert set(got) == set(expected)
    short = 0
    for sid, (created, ended) in expected.items():
        s = got[sid]
        assert abs(s["created_at"] - created) <= 1.0
        if ended is None:
            assert s["ended_before"] is None
        else:
            # pfsync sends within a second; times are whole seconds.
            assert s["ended_by"] == 1 and -1.0 <= s["ended_before_at"] - ended <= 1.0
            short += ended - created < interval
    assert short > 20, "states shorter than a collection interval are in the truth"
    assert rows(path, "SELECT count(*) FROM partial_states") == [(0,)]


def test_simulated_pcap_gives_the_ground_truth(tmp_path):
    pcap = tmp_path / "fw.pcap"
    args = ("--states", CFG.states, "--duration", "15m", "--seed", CFG.seed)
    assert run_cli("simulate", "--pfsync", pcap, *args).returncode == 0
    r = run_cli("collect", "--db", tmp_path / "h.db", "--from-pcap", pcap, "-v")
    assert r.returncode == 0, r.stderr
    assert "0 malformed" in r.stdout and "0 partial" in r.stdout
    check_against_truth(tmp_path / "h.db", truth(CFG))
    # Recording it again is refused: the history only moves forward.
    again = run_cli("collect", "--db", tmp_path / "h.db", "--from-pcap", pcap)
    assert again.returncode == 1 and "older captures are refused" in again.stderr
    assert again.stderr.rstrip().endswith("(record it into a history of its own with --db)")
    # pfhistory show reads it like any history.
    shown = run_cli("show", "--db", tmp_path / "h.db", "--closed", "--limit", 3, "-v")
    assert shown.returncode == 0 and shown.stdout.count("history:") == 3
    assert shown.stdout.count(", ended at ") == 3          # pfsync gave the instants


def test_pcapng_of_the_same_traffic_gives_the_same_history(tmp_path):
    pcap = tmp_path / "fw.pcap"
    assert run_cli("simulate", "--pfsync", pcap, "--states", 200, "--duration", "5m").returncode == 0
    ng = tmp_path / "fw.pcapng"
    blocks = [struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28),
              struct.pack("<IIHHII", 1, 20, 101, 0, 65535, 20)]        # raw IP interface
    for f in read_frames(pcap):
        us = round(f.at * 1e6)
        body = struct.pack("<IIIII", 0, us >> 32, us & 0xFFFFFFFF, len(f.data), len(f.data))
        body += f.data + bytes(-len(f.data) % 4)
        blocks.append(struct.pack("<II", 6, len(body) + 12) + body
                      + struct.pack("<I", len(body) + 12))
    ng.write_bytes(b"".join(blocks))
    shown = []
    for src, name in ((pcap, "a.db"), (ng, "b.db")):
        assert run_cli("collect", "--db", tmp_path / name, "--from-pcap", src).returncode == 0
        r = run_cli("show", "--db", tmp_path / name, "--format", "csv")
        assert r.returncode == 0
        shown.append(r.stdout)
    assert shown[0] == shown[1] and len(shown[0].splitlines()) > 200


@pytest.mark.parametrize("content,message", [
    (None, "no such capture"),
    (b"not a capture", "not a pcap or pcapng"),
    (struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
     + struct.pack("<IIIIIIII", 6, 32, 3, 0, 0, 0, 0, 32), "never described"),
])
def test_bad_captures_write_nothing(tmp_path, content, message):
    pcap = tmp_path / "x.pcap"
    if content is not None:
        pcap.write_bytes(content)
    r = run_cli("collect", "--db", tmp_path / "h.db", "--from-pcap", pcap)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "h.db").exists()
    both = run_cli("collect", "--db", tmp_path / "h.db", "--from-pcap", pcap, "--at", "1h")
    assert both.returncode == 1 and "leave out" in both.stderr


# -- beside the cron collector -----------------------------------------------------------

def snapshot(engine, tmp_path, at, records):
    path = tmp_path / f"s{at}.pfstate"
    write_state_file(path, b"".join(records))
    return collector.record_snapshot(engine, collector.Snapshot(path, at, str(path)))


def test_pfsync_and_snapshots_reconcile(history, tmp_path):
    engine, path = history
    snapshot(engine, tmp_path, T0, [rec(1), rec(2), rec(3)])
    # pfsync: 1 deleted at T0+30, 4 created at T0+40 (age 0).
    feed(engine, (T0 + 30, dgram(pfsync.del_c(CID, 1))),
         (T0 + 40, dgram((pfsync.ACT_INS, rec(4, creation=0)))))
    # A snapshot read at T0+20 (before both) is recorded after them: it is not refused
    # (no newer snapshot), 1 stays ended when pfsync said, 4 is not closed by it.
    result = snapshot(engine, tmp_path, T0 + 20, [rec(1), rec(2), rec(3, packets=(99, 99))])
    s = states(path)
    assert result.reopened == 0 and result.closed == 0
    assert s[1]["ended_before_at"] == T0 + 30 and s[1]["ended_by"] == 1
    assert s[4]["ended_before"] is None
    assert s[3]["packets0"] == 99                        # the snapshot's counters
    # The next snapshot lacks 2: closed in a window; pfsync's DEL_C then gives the instant.
    snapshot(engine, tmp_path, T0 + 80, [rec(3), rec(4)])
    assert states(path)[2]["ended_by"] is None
    feed(engine, (T0 + 81, dgram(pfsync.del_c(CID, 2))))
    s = states(path)
    assert s[2]["ended_by"] is None                      # T0+81 is outside the window
    assert (s[2]["last_seen_at"], s[2]["ended_before_at"]) == (T0 + 20, T0 + 80)
    # No state was recorded twice, and the collection kinds say who recorded what.
    assert rows(path, "SELECT count(*), count(DISTINCT state_id) FROM states") == [(4, 4)]
    assert [k for (k,) in rows(path, "SELECT kind FROM collections ORDER BY id")] == \
        [0, 1, 1, 0, 0, 1]


def test_a_snapshot_far_behind_pfsync_is_refused_a_racing_one_is_not(history, tmp_path):
    """A snapshot read a little before a pfsync batch and recorded after it is the
    race cron and the listener run; one older than the newest batch by more than
    SNAPSHOT_BEHIND_PFSYNC_S is an older table (files collected after a capture),
    refused whole: with it, the table of any time before would be the last one."""
    engine, path = history
    snapshot(engine, tmp_path, T0, [rec(1), rec(2)])
    late = T0 + 3600
    feed(engine, (late, dgram((pfsync.ACT_INS, rec(3, creation=0)))))
    before = rows(path, "SELECT count(*) FROM collections")
    behind = late - collector.SNAPSHOT_BEHIND_PFSYNC_S - 1
    with pytest.raises(collector.OlderSnapshotError, match="before the newest pfsync batch"):
        snapshot(engine, tmp_path, behind, [rec(1), rec(2)])
    assert rows(path, "SELECT count(*) FROM collections") == before
    assert states(path)[1]["ended_before"] is None
    # The CLI says it in one line, with the way out.
    old = tmp_path / "old.pfstate"
    write_state_file(old, [rec(1), rec(2)], mtime=behind)
    result = run_cli("collect", "--db", path, "--from-file", old)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert "more than 5 minutes before the newest pfsync batch" in result.stderr
    assert result.stderr.rstrip().endswith("(record them into a history of their own with --db)")
    assert rows(path, "SELECT count(*) FROM collections") == before
    racing = snapshot(engine, tmp_path, late - collector.SNAPSHOT_BEHIND_PFSYNC_S,
                      [rec(1), rec(3)])
    assert racing.closed == 1 and states(path)[3]["ended_before"] is None


def test_a_collection_window_narrows_to_pfsyncs_instant(history, tmp_path):
    engine, path = history
    snapshot(engine, tmp_path, T0, [rec(1), rec(2)])
    snapshot(engine, tmp_path, T0 + 60, [rec(2)])
    r = SyncRecorder(engine, "pfsync test")
    r.add(T0 + 25, dgram(pfsync.del_c(CID, 1)))
    r.flush()
    s = states(path)[1]
    assert (s["last_seen_at"], s["ended_before_at"], s["ended_by"]) == (T0 + 25, T0 + 25, 1)


def test_snapshots_and_pfsync_of_one_firewall_tell_one_story(tmp_path):
    """The simulator's snapshots and its pfsync traffic, recorded in time order into one
    history (as cron and the listener would): every state once, exact ends from pfsync,
    short ones too, and the snapshots' counters on the states they saw."""
    from pfhistory.simulate import simulate
    from pfhistory.syncrecorder import ingest_capture

    cfg = CFG
    # The model's draws depend on the snapshot times: one config for both.
    snaps = SimulationConfig(states=cfg.states, duration=cfg.duration, seed=cfg.seed,
                             start=cfg.start, interval=180.0)
    series = simulate(snaps, tmp_path / "snaps")
    pcap = tmp_path / "all.pcap"
    assert run_cli("simulate", "--pfsync", pcap, "--states", cfg.states, "--duration", "15m",
                   "--seed", cfg.seed, "--interval", "3m").returncode == 0
    frames = list(read_frames(pcap))
    url = db.resolve_url(str(tmp_path / "h.db"))
    engine = db.open_engine(url, create=True)
    db.require_current_schema(engine, url, create=True)
    times = [when.timestamp() for when, _p in series.snapshots]
    try:
        for i, (when, snap) in enumerate(series.snapshots):
            collector.record_snapshot(engine, collector.Snapshot(snap, int(times[i]), str(snap)))
            hi = times[i + 1] if i + 1 < len(times) else float("inf")
            chunk = tmp_path / f"part{i}.pcap"
            with PcapWriter(chunk) as w:
                for f in frames:
                    if times[i] <= f.at < hi:
                        w.write(f.at, f.data)
            ingest_capture(engine, chunk)
    finally:
        engine.dispose()
    check_against_truth(tmp_path / "h.db", truth(snaps))
    # The snapshots found counters pfsync's compressed updates do not carry.
    assert rows(tmp_path / "h.db", "SELECT count(*) FROM states WHERE packets0 > 0")[0][0] > 100
    assert rows(tmp_path / "h.db", "SELECT count(DISTINCT kind) FROM collections") == [(2,)]
    # Written without SQLite's per-row foreign-key checks (pfhistory.db), yet whole.
    assert rows(tmp_path / "h.db", "PRAGMA foreign_key_check") == []


# -- fuzzing at the recorder -------------------------------------------------------------

STREAM = [
    dgram((pfsync.ACT_INS, rec(1)), (pfsync.ACT_INS, rec(2)), (pfsync.ACT_INS, rec(3))),
    dgram(pfsync.upd_c(rec(1, state=9)), pfsync.del_c(CID, 2)),
    dgram((pfsync.ACT_UPD, rec(3, packets=(70, 80))), pfsync.upd_c(rec(4))),
    dgram(pfsync.clr(CID, b"em9"), (pfsync.ACT_DEL, rec(1))),
]


def _fresh_history(template, path):
    import shutil

    shutil.copyfile(template, path)
    url = db.resolve_url(str(path))
    return db.open_engine(url)


def _story(path):
    con = sqlite3.connect(path)
    try:
        return (sorted(con.execute(
            "SELECT s.state_id, s.created_at, s.ended_before_at, s.ended_by, s.packets0, "
            "p.state, p.seqlo FROM states s JOIN state_peers p ON p.state_pk = s.pk "
            "AND p.side = 0")),
            sorted(con.execute("SELECT state_id, ended_at, updates FROM partial_states")),
            con.execute("SELECT (SELECT count(*) FROM state_keys), (SELECT count(*) FROM "
                        "state_peers), (SELECT count(*) FROM states)").fetchone())
    finally:
        con.close()


@pytest.fixture(scope="module")
def empty_history(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "template.db"
    url = db.resolve_url(str(path))
    engine = db.open_engine(url, create=True)
    db.require_current_schema(engine, url, create=True)
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(which=st.integers(0, len(STREAM) - 1),
       flips=st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 255)), min_size=1,
                      max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 1500)))
def test_fuzzed_packets_are_counted_and_never_half_applied(empty_history, tmp_path, which,
                                                          flips, cut):
    packets = list(STREAM)
    bad = bytearray(packets[which])
    for pos, value in flips:
        bad[pos % len(bad)] = value
    packets[which] = bytes(bad if cut is None else bad[:cut])
    timed = [(T0 + i, data) for i, data in enumerate(packets)]
    results = {}
    for name, stream in (("fuzzed", timed), ("without", timed[:which] + timed[which + 1:])):
        path = tmp_path / f"{name}-{which}-{len(flips)}-{cut}.db"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{path}{suffix}"):
                os.unlink(f"{path}{suffix}")
        engine = _fresh_history(empty_history, path)
        try:
            r = SyncRecorder(engine, "fuzz")
            for at, data in stream:
                r.add(at, data)
            r.flush()
        finally:
            engine.dispose()
        results[name] = (r, _story(path))
    r, story = results["fuzzed"]
    assert r.totals["packets"] == len(STREAM)
    keys, peers, n = story[2]
    assert keys == peers == 2 * n                   # every state whole
    if sum(r.malformed.values()):
        assert sum(r.malformed.values()) == 1
        assert story == results["without"][1]        # nothing of it applied


def test_seq_gt_in_sql_is_the_kernels_rule():
    """SEQ_GT(a, b), (int32)(a - b) > 0, in SQL without % (a placeholder to
    PostgreSQL's drivers), across the wrap of u32 sequence numbers."""
    import random

    from pfhistory.queries import _SEQ_GT

    con = sqlite3.connect(":memory:")
    rng = random.Random(3)
    edges = [0, 1, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1]
    pairs = [(a, b) for a in edges for b in edges]
    pairs += [(rng.randrange(2**32), rng.randrange(2**32)) for _ in range(2000)]
    for a, b in pairs:
        want = 0 < ((a - b) & 0xFFFFFFFF) < 2**31
        got = con.execute("SELECT " + _SEQ_GT.format(a=a, b=b)).fetchone()[0]
        assert bool(got) == want, (a, b)


def test_show_at_before_the_history_names_its_earliest_collection(history, tmp_path):
    """A snapshot read before the first pfsync batch and recorded after it is the
    history's earliest collection, though not its first by id: --at before the
    history names its time."""
    engine, path = history
    feed(engine, (T0 + 40, dgram((pfsync.ACT_INS, rec(1, creation=0)))))
    snapshot(engine, tmp_path, T0, [rec(2)])
    start = datetime.fromtimestamp(T0, timezone.utc).astimezone().isoformat()
    result = run_cli("show", "--db", path, "--at", "2026-11-24T21:59:59Z")
    assert result.returncode == 1
    assert result.stderr == (f"pfhistory: --at 2026-11-24T21:59:59Z: before the history, "
                             f"which starts at {start}\n")
    assert run_cli("show", "--db", path, "--at", "2026-11-24T22:00:10Z").stdout != ""
