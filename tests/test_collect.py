"""`pfhistory collect` on real SQLite files, checked against the simulator's truth."""

import importlib.util
import json
import os
import sqlite3
import stat
import sys
from datetime import datetime

import pytest

from conftest import run_cli
from golden_records import Key, Peer, build_state
from pfhistory import pf

U64 = 1 << 64


def _signed(v):
    return v - U64 if v >= 1 << 63 else v


def _db(path):
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    return con


def _truth(series):
    with open(series.truth_path) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if "id" in r]


def _epoch(text):
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


@pytest.fixture(scope="module")
def recorded(small_series, tmp_path_factory):
    """The small simulated series, recorded by the real CLI."""
    path = tmp_path_factory.mktemp("collect") / "history.db"
    files = [p for _t, p in small_series.snapshots]
    result = run_cli("collect", "--db", path, "--from-file", *files, "-v")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(files)
    return path


def test_history_matches_ground_truth(small_series, recorded):
    con = _db(recorded)
    collections = [r["id"] for r in con.execute("SELECT id FROM collections ORDER BY id")]
    written = [i for i, (_t, _p) in enumerate(small_series.snapshots)]
    assert len(collections) == len(written)
    coll = dict(zip(written, collections))
    last_index = written[-1]
    truth = _truth(small_series)
    seen = [t for t in truth if t["snapshots"]]
    assert con.execute("SELECT count(*) FROM states").fetchone()[0] == len(seen)
    assert any(not t["snapshots"] for t in truth), "short-lived states exist in the truth"
    for t in seen:
        row = con.execute("SELECT * FROM states WHERE creatorid = ? AND state_id = ?",
                          (t["creatorid"], _signed(t["id"]))).fetchone()
        assert row is not None, t
        first, last = t["snapshots"][0], t["snapshots"][-1]
        assert row["first_seen"] == coll[first]
        if last == last_index:
            assert row["last_seen"] is None and row["ended_before"] is None
        else:
            assert row["last_seen"] == coll[last]
            assert row["ended_before"] == coll[written[written.index(last) + 1]]
        final = t["final"]
        assert [row["packets0"], row["packets1"]] == final["packets"]
        assert [row["bytes0"], row["bytes1"]] == final["bytes"]
        t_last = int(small_series.snapshots[last][0].timestamp())
        assert row["expires_at"] - t_last == final["expire"]
        assert t_last - row["created_at"] == final["creation"]
        assert row["proto"] == t["proto"] and row["direction"] == t["direction"]
        assert row["ifname"] == t["ifname"] and row["rule"] == t["rule"]
        for side, name in ((0, "wire"), (1, "stack")):
            key = con.execute(
                "SELECT a0.text AS a0, k.port0, a1.text AS a1, k.port1, k.rdomain "
                "FROM state_keys k JOIN addresses a0 ON a0.id = k.addr0 "
                "JOIN addresses a1 ON a1.id = k.addr1 WHERE k.state_pk = ? AND k.side = ?",
                (row["pk"], side)).fetchone()
            assert [key["a0"], key["a1"]] == t[name]["addr"]
            assert [key["port0"], key["port1"]] == t[name]["port"]
            assert key["rdomain"] == t[name]["rdomain"]
        peers = {p["side"]: p for p in con.execute(
            "SELECT * FROM state_peers WHERE state_pk = ?", (row["pk"],))}
        assert set(peers) == {0, 1}


def test_keys_never_duplicate(recorded):
    con = _db(recorded)
    n_states = con.execute("SELECT count(*) FROM states").fetchone()[0]
    assert con.execute("SELECT count(*) FROM state_keys").fetchone()[0] == 2 * n_states
    assert con.execute("SELECT count(*) FROM state_peers").fetchone()[0] == 2 * n_states
    assert con.execute("SELECT count(*) FROM (SELECT af, bin FROM addresses "
                       "GROUP BY af, bin HAVING count(*) > 1)").fetchone()[0] == 0


def test_every_reference_is_whole(recorded):
    """The collector writes with SQLite's per-row foreign-key checks off (pfhistory.db):
    every key, peer and sample still names a state, every key an address."""
    con = _db(recorded)
    assert con.execute("SELECT count(*) FROM samples").fetchone()[0] > 0
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert con.execute("SELECT count(*) FROM state_keys k WHERE NOT EXISTS (SELECT 1 FROM "
                       "addresses a WHERE a.id = k.addr0) OR NOT EXISTS (SELECT 1 FROM "
                       "addresses a WHERE a.id = k.addr1)").fetchone()[0] == 0


def test_collections_log_and_aggregates(small_series, recorded):
    con = _db(recorded)
    summary = json.loads((small_series.truth_path.parent / "truth-summary.json").read_text())
    rows = list(con.execute("SELECT * FROM collections ORDER BY id"))
    for row, (when, path) in zip(rows, small_series.snapshots):
        assert row["collected_at"] == int(when.timestamp())
        assert row["source"] == os.path.abspath(path)
        assert row["states"] == os.path.getsize(path) // 264
        assert row["creatorid"] == 0x1A2B3C4D
    assert rows[0]["inserted"] == rows[0]["states"]
    # Every state alive in one collection is either still there or closed in the next.
    for prev, row in zip(rows, rows[1:]):
        assert prev["states"] - row["closed"] + row["inserted"] + row["reopened"] == row["states"]
    assert summary  # the simulator wrote its summary beside the snapshots


def test_samples_rebuild_every_collection_exactly(small_series, recorded):
    """For each collection, the values and peers in force then equal the snapshot's:
    values from the first sample after it (else the row's), peers from the first
    peer sample after it (else the current ones)."""
    con = _db(recorded)
    peer_samples = con.execute("SELECT count(*) FROM peer_samples").fetchone()[0]
    samples = con.execute("SELECT count(*) FROM samples WHERE present = 1").fetchone()[0]
    # Peers are kept only where they changed: fewer peer samples than samples.
    assert 0 < peer_samples < samples
    for cid, (when, path) in enumerate(small_series.snapshots, start=1):
        t = int(when.timestamp())
        expected = {(s.creatorid, _signed(s.id)): s for s in
                    pf.parse_states(path.read_bytes())}
        alive = {}
        for row in con.execute(
                "SELECT s.*, x.valid_until AS x_until, x.present AS x_present, "
                "x.packets0 AS x_packets0, x.packets1 AS x_packets1, x.bytes0 AS x_bytes0, "
                "x.bytes1 AS x_bytes1, x.expires_at AS x_expires_at, "
                "x.created_at AS x_created_at, COALESCE(y.src_seqlo, ps.seqlo) AS src_seqlo, "
                "COALESCE(y.dst_seqlo, pd.seqlo) AS dst_seqlo, "
                "COALESCE(y.src_state, ps.state) AS src_state, "
                "COALESCE(y.dst_state, pd.state) AS dst_state "
                "FROM states s LEFT JOIN samples x ON x.state_pk = s.pk AND x.valid_until = "
                "(SELECT min(valid_until) FROM samples WHERE state_pk = s.pk "
                " AND valid_until > ?) "
                "LEFT JOIN peer_samples y ON y.state_pk = s.pk AND y.valid_until = "
                "(SELECT min(valid_until) FROM peer_samples WHERE state_pk = s.pk "
                " AND valid_until > ?) "
                "JOIN state_peers ps ON ps.state_pk = s.pk AND ps.side = 0 "
                "JOIN state_peers pd ON pd.state_pk = s.pk AND pd.side = 1 "
                "WHERE s.first_seen <= ? AND (s.ended_before IS NULL OR s.ended_before > ?)",
                (cid, cid, cid, cid)):
            if row["x_until"] is not None and row["x_present"] == 0:
                continue
            alive[(row["creatorid"], row["state_id"])] = row
        assert set(alive) == set(expected), f"collection {cid}"
        for key, s in expected.items():
            row = alive[key]
            pre = "x_" if row["x_until"] is not None else ""
            assert (row[pre + "packets0"], row[pre + "packets1"]) == s.packets
            assert (row[pre + "bytes0"], row[pre + "bytes1"]) == s.bytes
            assert row[pre + "expires_at"] - t == s.expire
            assert t - row[pre + "created_at"] == s.creation
            # The record's src peer is the PFState's src for outbound states.
            src, dst = (s.src, s.dst) if s.direction == pf.PF_OUT else (s.dst, s.src)
            assert (row["src_seqlo"], row["src_state"]) == (src.seqlo, src.state), key
            assert (row["dst_seqlo"], row["dst_state"]) == (dst.seqlo, dst.state), key


def test_recording_the_same_snapshot_twice_changes_only_the_log(tmp_path, small_series):
    path = tmp_path / "h.db"
    snap = small_series.snapshots[1][1]
    assert run_cli("collect", "--db", path, "--from-file", snap).returncode == 0
    con = _db(path)
    tables = ("states", "state_keys", "state_peers", "samples", "addresses")
    before = {t: list(map(tuple, con.execute(f"SELECT * FROM {t} ORDER BY 1, 2")))
              for t in tables}
    con.close()
    assert run_cli("collect", "--db", path, "--from-file", snap).returncode == 0
    con = _db(path)
    after = {t: list(map(tuple, con.execute(f"SELECT * FROM {t} ORDER BY 1, 2")))
             for t in tables}
    assert after == before
    second = con.execute("SELECT * FROM collections WHERE id = 2").fetchone()
    assert (second["inserted"], second["updated"], second["closed"], second["reopened"]) == (0,) * 4


def _write(path, records, epoch):
    path.write_bytes(b"".join(records))
    os.utime(path, (epoch, epoch))
    return path


def _tcp(i, packets):
    return build_state(wire=Key("192.0.2.1", 443, "10.0.0.%d" % (i + 1), 40000 + i),
                       id=i + 1, ifname=b"em0", direction=pf.PF_OUT, proto=6,
                       src=Peer(state=4, seqlo=packets), dst=Peer(state=4),
                       packets=(packets, 1), bytes_=(packets * 100, 60), creation=10,
                       expire=86400, creatorid=7)


def test_a_state_that_comes_back_is_reopened_not_duplicated(tmp_path):
    t0 = 1_795_000_000
    s0 = _write(tmp_path / "0.pf", [_tcp(0, 1), _tcp(1, 1)], t0)
    s1 = _write(tmp_path / "1.pf", [_tcp(0, 2)], t0 + 60)
    s2 = _write(tmp_path / "2.pf", [_tcp(0, 3), _tcp(1, 5)], t0 + 120)
    db = tmp_path / "h.db"
    assert run_cli("collect", "--db", db, "--from-file", s0, s1, s2).returncode == 0
    con = _db(db)
    assert con.execute("SELECT count(*) FROM states").fetchone()[0] == 2
    back = con.execute("SELECT * FROM states WHERE state_id = 2").fetchone()
    assert back["ended_before"] is None and back["packets0"] == 5
    reopened = [r["reopened"] for r in con.execute("SELECT reopened FROM collections ORDER BY id")]
    assert reopened == [0, 0, 1]
    gap = con.execute("SELECT valid_from, valid_until FROM samples "
                      "WHERE state_pk = ? AND present = 0", (back["pk"],)).fetchall()
    assert [tuple(g) for g in gap] == [(2, 3)]


def _from(creatorid, state_id, packets):
    """A TCP state of creator creatorid (a pfsync peer's states share the table)."""
    return build_state(wire=Key("192.0.2.9", 22, "10.1.%d.%d" % (creatorid, state_id), 50000),
                       id=state_id, ifname=b"em1", direction=pf.PF_IN, proto=6,
                       src=Peer(state=4, seqlo=packets), dst=Peer(state=4),
                       packets=(packets, 1), bytes_=(packets * 100, 60), creation=10,
                       expire=86400, creatorid=creatorid)


@pytest.mark.parametrize("second", [
    # Both open at once: the collector must match them by (creatorid, id).
    [_from(5, 9, 2), _from(6, 9, 3)],
    # Only creator 6's is open: creator 5's record comes first in the chunk and must
    # neither take creator 6's state nor keep it from its own record.
    [_from(5, 9, 2), _from(6, 9, 3), _from(6, 10, 1)],
])
def test_states_of_two_creators_with_one_id_stay_apart(tmp_path, second):
    t0 = 1_795_000_000
    first = [_from(6, 9, 1)] if len(second) == 3 else [_from(5, 9, 1), _from(6, 9, 1)]
    s0 = _write(tmp_path / "0.pf", first, t0)
    s1 = _write(tmp_path / "1.pf", second, t0 + 60)
    s2 = _write(tmp_path / "2.pf", [_from(6, 9, 4)], t0 + 120)
    db = tmp_path / "h.db"
    assert run_cli("collect", "--db", db, "--from-file", s0, s1, s2).returncode == 0
    con = _db(db)
    rows = {(r["creatorid"], r["state_id"]): r for r in con.execute("SELECT * FROM states")}
    assert set(rows) == {(5, 9), (6, 9)} | ({(6, 10)} if len(second) == 3 else set())
    assert rows[(5, 9)]["packets0"] == 2 and rows[(5, 9)]["ended_before"] == 3
    assert rows[(6, 9)]["packets0"] == 4 and rows[(6, 9)]["ended_before"] is None
    log = [tuple(r) for r in con.execute(
        "SELECT inserted, updated, closed FROM collections ORDER BY id")]
    assert log[1] == ((2, 1, 0) if len(second) == 3 else (0, 2, 0))
    assert log[2] == ((0, 1, 2) if len(second) == 3 else (0, 1, 1))


def test_an_older_snapshot_is_refused(tmp_path):
    t0 = 1_795_000_000
    s0 = _write(tmp_path / "0.pf", [_tcp(0, 1)], t0)
    s1 = _write(tmp_path / "1.pf", [_tcp(0, 2)], t0 + 60)
    db = tmp_path / "h.db"
    assert run_cli("collect", "--db", db, "--from-file", s1).returncode == 0
    result = run_cli("collect", "--db", db, "--from-file", s0)
    assert result.returncode == 1
    assert "before the newest collection" in result.stderr
    assert result.stderr.rstrip().endswith("(record them into a history of their own with --db)")
    assert len(result.stderr.splitlines()) == 1
    assert _db(db).execute("SELECT count(*) FROM collections").fetchone()[0] == 1
    # As the message says: a history of its own takes it.
    assert run_cli("collect", "--db", tmp_path / "own.db", "--from-file", s0).returncode == 0


def test_at_dates_a_snapshot(tmp_path):
    s0 = _write(tmp_path / "0.pf", [_tcp(0, 1)], 1_795_000_000)
    db = tmp_path / "h.db"
    result = run_cli("collect", "--db", db, "--from-file", s0, "--at", "2026-11-24T22:00:00Z")
    assert result.returncode == 0, result.stderr
    at = _db(db).execute("SELECT collected_at FROM collections").fetchone()[0]
    assert at == _epoch("2026-11-24T22:00:00+00:00")


def test_database_and_directory_are_owner_only_and_wal(tmp_path):
    s0 = _write(tmp_path / "0.pf", [_tcp(0, 1)], 1_795_000_000)
    db = tmp_path / "new" / "dir" / "h.db"
    assert run_cli("collect", "--db", db, "--from-file", s0).returncode == 0
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    for extra in (db.parent / "h.db-wal", db.parent / "h.db-shm"):
        if extra.exists():
            assert stat.S_IMODE(extra.stat().st_mode) & 0o077 == 0


def test_pfhistory_db_environment_variable(tmp_path):
    s0 = _write(tmp_path / "0.pf", [_tcp(0, 1)], 1_795_000_000)
    db = tmp_path / "env.db"
    result = run_cli("collect", "--from-file", s0, env={"PFHISTORY_DB": str(db)})
    assert result.returncode == 0, result.stderr
    assert db.exists()


def test_sample_retention_drops_old_samples(tmp_path, small_series):
    db = tmp_path / "h.db"
    files = [p for _t, p in small_series.snapshots]
    assert run_cli("collect", "--db", db, "--from-file", *files,
                   "--sample-retention", "90s").returncode == 0
    con = _db(db)
    last = con.execute("SELECT max(id), max(collected_at) FROM collections").fetchone()
    first_kept = con.execute("SELECT min(id) FROM collections WHERE collected_at >= ?",
                             (last[1] - 90,)).fetchone()[0]
    assert con.execute("SELECT count(*) FROM samples WHERE present = 1 AND valid_until <= ?",
                       (first_kept,)).fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM samples").fetchone()[0] > 0


def _peers_of_samples(con):
    """{(state_pk, valid_until): peers} of every values sample still kept: those of
    the first peer sample at or after its valid_until, else the current ones."""
    return {(r[0], r[1]): tuple(r[2:]) for r in con.execute(
        "SELECT x.state_pk, x.valid_until, COALESCE(y.src_seqlo, ps.seqlo), "
        "COALESCE(y.src_state, ps.state), COALESCE(y.dst_seqlo, pd.seqlo) FROM samples x "
        "LEFT JOIN peer_samples y ON y.state_pk = x.state_pk AND y.valid_until = "
        "(SELECT min(valid_until) FROM peer_samples WHERE state_pk = x.state_pk "
        " AND valid_until >= x.valid_until) "
        "JOIN state_peers ps ON ps.state_pk = x.state_pk AND ps.side = 0 "
        "JOIN state_peers pd ON pd.state_pk = x.state_pk AND pd.side = 1 "
        "WHERE x.present = 1")}


def test_a_capped_expiry_never_takes_peers_that_kept_samples_need(tmp_path, recorded,
                                                                  monkeypatch):
    """Expiry stops after a number of batches; values samples it leaves for the next
    pass keep the peer samples they read their peers from."""
    import shutil

    from pfhistory import collector
    from pfhistory.db import open_engine, resolve_url, write_transaction

    db = tmp_path / "h.db"
    shutil.copy(recorded, db)
    con = _db(db)
    before = _peers_of_samples(con)
    third_at = con.execute("SELECT collected_at FROM collections WHERE id = 3").fetchone()[0]
    expiring = [con.execute(f"SELECT count(*) FROM {table} WHERE valid_until <= 3").fetchone()[0]
                for table in ("samples", "peer_samples")]
    con.close()
    # A cap between the two: the values pass stops short, the peers pass would not.
    cap = (expiring[1] + expiring[0]) // 2
    assert expiring[1] < cap < expiring[0]
    monkeypatch.setattr(collector, "_EXPIRE_BATCH", cap)
    engine = open_engine(resolve_url(str(db)))
    with write_transaction(engine) as conn:
        dropped = collector.expire_samples(conn, third_at, max_batches=1)
    engine.dispose()
    con = _db(db)
    after = _peers_of_samples(con)
    assert dropped == cap and len(after) == len(before) - dropped
    assert after == {k: v for k, v in before.items() if k in after}
    con.close()


def _one_sentence(result):
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pfhistory: "), result.stderr
    return lines[0]


def test_bad_inputs_write_nothing(tmp_path, small_series):
    good = small_series.snapshots[0][1]
    db = tmp_path / "h.db"
    truncated = tmp_path / "truncated.pf"
    truncated.write_bytes(good.read_bytes()[:-100])
    assert "264-byte" in _one_sentence(run_cli("collect", "--db", db, "--from-file", truncated))
    foreign = tmp_path / "foreign.pf"
    foreign.write_bytes(b"<html>" * 264)
    assert "not a pfctl -S state file" in _one_sentence(
        run_cli("collect", "--db", db, "--from-file", foreign))
    assert "ISO 8601" in _one_sentence(
        run_cli("collect", "--db", db, "--from-file", good, "--at", "yesterday-ish"))
    # A driver pfhistory does not install (pg8000), and a server that is not there
    # (a socket directory that does not exist: nothing is sent anywhere).
    assert importlib.util.find_spec("pg8000") is None, "this case needs pg8000 missing"
    nowhere = tmp_path / "no-server-here"
    line = _one_sentence(run_cli("collect", "--db", f"postgresql+pg8000://nobody@/x?host={nowhere}",
                                 "--from-file", good))
    assert "no driver for 'postgresql'" in line and "pfhistory[postgresql]" in line
    assert line.endswith("which postgresql:// uses, not pg8000")
    # postgres:// (libpq's scheme) is read as postgresql://: it reaches the connection.
    line = _one_sentence(run_cli("collect", "--db", f"postgres://nobody@/x?host={nowhere}",
                                 "--from-file", good))
    assert "cannot connect to the database" in line and str(nowhere) in line
    line = _one_sentence(run_cli("collect", "--db", f"postgresql://nobody@/x?host={nowhere}",
                                 "--from-file", good))
    assert "cannot connect to the database" in line and str(nowhere) in line
    assert "cannot create" in _one_sentence(
        run_cli("collect", "--db", "/etc/passwd/h.db", "--from-file", good))
    assert "no driver for 'bogus'" in _one_sentence(
        run_cli("collect", "--db", "bogus://", "--from-file", good))
    # Nothing was made by any of them: not even an empty database.
    assert not db.exists()


def test_duplicate_records_are_refused(tmp_path):
    s0 = _write(tmp_path / "0.pf", [_tcp(0, 1), _tcp(0, 2)], 1_795_000_000)
    db = tmp_path / "h.db"
    # Into a new history the file is read through first: nothing is made.
    assert "two records of one state" in _one_sentence(
        run_cli("collect", "--db", db, "--from-file", s0))
    assert not db.exists()
    # Into an existing one the collection finds them and rolls back.
    s1 = _write(tmp_path / "1.pf", [_tcp(0, 1)], 1_794_999_000)
    assert run_cli("collect", "--db", db, "--from-file", s1).returncode == 0
    assert "two records of one state" in _one_sentence(
        run_cli("collect", "--db", db, "--from-file", s0))
    con = _db(db)
    assert con.execute("SELECT count(*) FROM collections").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM states").fetchone()[0] == 1
    con.close()


def test_two_creators_may_share_a_state_id(tmp_path):
    """Ids are per creator (pfsync'd tables hold several): a shared id is no
    duplicate, into a new history (read through first) or an existing one."""
    other = build_state(wire=Key("192.0.2.9", 443, "10.0.0.9", 40009), id=1, ifname=b"em0",
                        direction=pf.PF_OUT, proto=6, src=Peer(state=4), dst=Peer(state=4),
                        creation=10, expire=86400, creatorid=8)
    s0 = _write(tmp_path / "0.pf", [_tcp(0, 1), other], 1_795_000_000)
    s1 = _write(tmp_path / "1.pf", [_tcp(0, 2), other], 1_795_000_060)
    db = tmp_path / "h.db"
    assert run_cli("collect", "--db", db, "--from-file", s0).returncode == 0
    assert run_cli("collect", "--db", db, "--from-file", s1).returncode == 0
    con = _db(db)
    rows = con.execute("SELECT creatorid, state_id FROM states ORDER BY creatorid").fetchall()
    assert [tuple(r) for r in rows] == [(7, 1), (8, 1)]
    con.close()


@pytest.mark.skipif(sys.platform.startswith("openbsd"), reason="the live table exists here")
def test_live_collection_needs_openbsd(tmp_path):
    line = _one_sentence(run_cli("collect", "--db", tmp_path / "h.db"))
    assert "needs OpenBSD" in line and "--from-file" in line
    assert not (tmp_path / "h.db").exists()


def _tcp_peer(seqlo, packets):
    return build_state(wire=Key("192.0.2.1", 443, "10.0.0.1", 40000), id=1, ifname=b"em0",
                       direction=pf.PF_OUT, proto=6, src=Peer(state=4, seqlo=seqlo),
                       dst=Peer(state=4), packets=(packets, 1), bytes_=(packets * 100, 60),
                       creation=10, expire=86400, creatorid=7)


def test_peers_change_only_when_they_do_and_samples_keep_them(tmp_path):
    """Counters move every collection, peers only sometimes: the current peers
    and every sample's are those of the snapshot they came from."""
    t0 = 1_795_000_000
    snaps = [_write(tmp_path / f"{k}.pf", [_tcp_peer(seqlo, packets)], t0 + 60 * k)
             for k, (seqlo, packets) in enumerate([(1, 1), (1, 2), (9, 3), (9, 4)])]
    db = tmp_path / "h.db"
    con = None
    for k, snap in enumerate(snaps):
        assert run_cli("collect", "--db", db, "--from-file", snap).returncode == 0
        con = _db(db)
        # The record's src peer is side 0 of state_peers.
        assert con.execute("SELECT seqlo FROM state_peers WHERE side = 0").fetchone()[0] == \
            (1, 1, 9, 9)[k]
        assert con.execute("SELECT packets0 FROM states").fetchone()[0] == k + 1
    samples = [(r["valid_from"], r["valid_until"], r["packets0"])
               for r in con.execute("SELECT * FROM samples ORDER BY valid_until")]
    assert samples == [(1, 2, 1), (2, 3, 2), (3, 4, 3)]
    # The peers changed once, in collection 3: one peer sample, the ones before it.
    peers = [(r["valid_until"], r["src_seqlo"])
             for r in con.execute("SELECT * FROM peer_samples ORDER BY valid_until")]
    assert peers == [(3, 1)]


def test_states_recorded_before_peer_hash_get_their_peers_written(tmp_path, small_series,
                                                                 recorded):
    """Rows from before migration 0004 have no peer hash (NULL): the next
    collection that sees them writes their peers, so the history comes out
    exactly as if the hash had always been there."""
    db = tmp_path / "h.db"
    files = [p for _t, p in small_series.snapshots]
    assert run_cli("collect", "--db", db, "--from-file", files[0]).returncode == 0
    con = sqlite3.connect(db)
    con.execute("UPDATE states SET peer_hash = NULL")
    con.commit()
    con.close()
    assert run_cli("collect", "--db", db, "--from-file", *files[1:]).returncode == 0
    for table in ("state_peers", "samples", "peer_samples"):
        got, want = (sqlite3.connect(p).execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                     for p in (db, recorded))
        assert got == want, table


def _rows_by_value(con, table):
    """A table's rows, sorted, with address ids replaced by the addresses."""
    address = "(SELECT af || '/' || hex(bin) FROM addresses WHERE id = {})"
    select = {"states": f"*, {address.format('rt_addr')}",
              "state_keys": f"*, {address.format('addr0')}, {address.format('addr1')}",
              "addresses": "af, bin, text"}.get(table, "*")
    ids = {"states": ("rt_addr",), "state_keys": ("addr0", "addr1")}.get(table, ())
    cursor = con.execute(f"SELECT {select} FROM {table}")
    keep = [i for i, d in enumerate(cursor.description) if d[0] not in ids]
    return sorted(tuple(row[i] for i in keep) for row in cursor)


@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"),
                    reason="sqlite3 sets a connection's limits from Python 3.11 on")
@pytest.mark.parametrize("chunks", ["whole", "small"])
def test_an_sqlite_allowing_999_parameters_records_the_same_history(small_series, recorded,
                                                                     tmp_path, monkeypatch,
                                                                     chunks):
    """SQLite before 3.32 allowed 999 parameters per statement: the collector's
    multi-row INSERTs (34 columns a new state, 23 a staged pair of peers) shrink
    to fit, their last rows going by executemany. In process: a limit is set per
    connection. The history must be the one the CLI recorded: row for row, ids
    included (new addresses are numbered in (af, bin) order, whatever this
    process's hashing), when chunks are whole; with chunks of 64 records and an
    apply every 50 staged rows, chunks are laid out while an apply runs, and the
    ids of addresses follow the chunks, so addresses are compared by value.
    Python's cyclic GC, paused during each collection, is on again after it,
    also after a collection that fails."""
    import gc

    from sqlalchemy import event

    from pfhistory import collector, db as pfdb
    from pfhistory.collector import OlderSnapshotError, Snapshot, record_snapshot

    chunk_records = 16384 if chunks == "whole" else 64
    if chunks == "small":
        monkeypatch.setattr(collector, "_APPLY_BATCH", 50)
    path = tmp_path / "few-parameters.db"
    url = pfdb.resolve_url(str(path))
    engine = pfdb.open_engine(url, create=True)
    event.listen(engine, "connect", lambda dbapi_conn, _rec: dbapi_conn.setlimit(
        sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999))
    try:
        pfdb.upgrade_to_head(engine, url)
        with engine.connect() as conn:
            assert conn.connection.dbapi_connection.getlimit(
                sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) == 999
        for _when, snapshot in small_series.snapshots:
            mtime = int(os.stat(snapshot).st_mtime)
            record_snapshot(engine, Snapshot(snapshot, mtime, os.path.abspath(snapshot)),
                            chunk_records=chunk_records)
            assert gc.isenabled()
        first = small_series.snapshots[0][1]
        with pytest.raises(OlderSnapshotError):
            record_snapshot(engine, Snapshot(first, int(os.stat(first).st_mtime), str(first)))
        assert gc.isenabled()
    finally:
        engine.dispose()
    mine, theirs = _db(path), _db(recorded)
    for table in ("states", "state_keys", "state_peers", "samples", "peer_samples",
                  "addresses"):
        if chunks == "whole":
            rows = [sorted(map(tuple, con.execute(f"SELECT * FROM {table}")))
                    for con in (mine, theirs)]
        else:
            rows = [_rows_by_value(con, table) for con in (mine, theirs)]
        assert rows[0] == rows[1] and rows[0], table
    log = "SELECT id, collected_at, states, inserted, updated, reopened, closed, packets, " \
          "bytes, samples FROM collections ORDER BY id"
    assert [tuple(r) for r in mine.execute(log)] == [tuple(r) for r in theirs.execute(log)]


def test_two_firewalls_taking_turns_in_one_history_are_stopped(tmp_path):
    """Firewall B's table recorded after A's closes all of A's states, as a reboot
    would; A's next table then brings them back while keeping none of B's, as a CARP
    member's table does once after a reboot. When B's next table does the same in
    turn, no firewall's own tables would: that collection is refused whole, and the
    administrator told why."""
    from datetime import timedelta

    from conftest import START
    from pfhistory.simulate import SimulationConfig, simulate

    def firewall(name, seed, creatorid, offset):
        cfg = SimulationConfig(states=300, interval=60.0, duration=120.0, seed=seed,
                               start=START + timedelta(seconds=offset), creatorid=creatorid)
        return [p for _t, p in simulate(cfg, tmp_path / name, truth=False).snapshots]

    a = firewall("a", 1, 0x0A0A0A0A, 0)
    b = firewall("b", 2, 0x0B0B0B0B, 30)
    db = tmp_path / "h.db"
    result = run_cli("collect", "--db", db, "--from-file", a[0], b[0], a[1], b[1], a[2])
    assert result.returncode == 1
    assert result.stderr == (
        f"pfhistory: {b[1]}: none of the {_open_states(a[1])} states open in the history is "
        f"in this snapshot (creatorid 0b0b0b0b), yet {_open_states(b[0]) - _gone(b)} that "
        f"had ended are, as in the snapshot before it: the tables of two firewalls recorded "
        f"into one history? Each firewall needs a history of its own (--db); nothing "
        f"recorded\n")
    a0, b0, a1 = _open_states(a[0]), _open_states(b[0]), _open_states(a[1])
    back = a0 - _gone(a)
    con = _db(db)
    assert [tuple(r) for r in con.execute("SELECT states, inserted, closed, reopened "
                                          "FROM collections ORDER BY id")] == [
        (a0, a0, 0, 0), (b0, b0, a0, 0), (a1, a1 - back, b0, back)]
    con.close()
    # Each firewall into its own history: no complaint, the same tables.
    for name, files in (("a", a), ("b", b)):
        own = run_cli("collect", "--db", tmp_path / f"{name}.db", "--from-file", *files)
        assert own.returncode == 0, own.stderr


def test_a_carp_member_that_rebooted_gets_its_states_back(tmp_path):
    """A rebooted member's first table holds only a state of its new boot (pf's new
    hostid): every open state is closed. Its peer's bulk update then brings them
    back, while that first state has ended: a table that keeps none of the open
    states and reopens ended ones, once. It is recorded, and so are the next."""
    t0 = 1_795_000_000
    old = [_tcp(i, 5) for i in range(5)]
    boot = build_state(wire=Key("192.0.2.9", 53, "10.0.0.9", 5353), id=1 << 40, ifname=b"em0",
                       direction=pf.PF_OUT, proto=17, packets=(1, 1), bytes_=(60, 60),
                       creation=5, expire=30, creatorid=0x99)
    files = [_write(tmp_path / "0.pf", old, t0),
             _write(tmp_path / "1.pf", [boot], t0 + 60),
             _write(tmp_path / "2.pf", [_tcp(i, 9) for i in range(6)], t0 + 120),
             _write(tmp_path / "3.pf", [_tcp(i, 12) for i in range(6)], t0 + 180)]
    db = tmp_path / "h.db"
    result = run_cli("collect", "--db", db, "--from-file", *files)
    assert result.returncode == 0, result.stderr
    con = _db(db)
    assert [tuple(r) for r in con.execute("SELECT states, inserted, closed, reopened "
                                          "FROM collections ORDER BY id")] == [
        (5, 5, 0, 0), (1, 1, 5, 0), (6, 1, 1, 5), (6, 0, 0, 0)]
    con.close()


def _open_states(path):
    return len(pf.parse_states(path.read_bytes()))


def _gone(files):
    """States of the first table that are not in the second (they ended)."""
    first = {s.id for s in pf.parse_states(files[0].read_bytes())}
    return len(first - {s.id for s in pf.parse_states(files[1].read_bytes())})


def test_a_live_table_is_dated_when_read_after_waiting_for_the_lock(tmp_path):
    """A live collection that waits for another writer's lock reads /dev/pf only
    then; it is dated then too, so its states' created_at (the time minus their
    age) stays right. A state file stands in for /dev/pf here: the dating is the
    collector's, whatever the source."""
    import threading
    import time

    from pfhistory import collector, db as dbmod

    t0 = 1_795_000_000
    db = tmp_path / "h.db"
    assert run_cli("collect", "--db", db, "--from-file",
                   _write(tmp_path / "0.pf", [_tcp(0, 1)], t0)).returncode == 0
    live = _write(tmp_path / "live.pf", [_tcp(0, 2), _tcp(1, 1)], t0 + 60)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Timer(2.0, holder.execute, ("COMMIT",))
    url = dbmod.resolve_url(str(db))
    engine = dbmod.open_engine(url)
    asked = int(time.time())
    released.start()
    try:
        result = collector.record_snapshot(engine, collector.Snapshot(
            live, asked, "/dev/pf", dated_when_read=True))
    finally:
        released.join()
        engine.dispose()
        holder.close()
    assert result.collected_at >= asked + 2
    con = _db(db)
    assert con.execute("SELECT collected_at FROM collections WHERE id = 2").fetchone()[0] == \
        result.collected_at
    # _tcp's states are 10 s old when read.
    assert con.execute("SELECT created_at FROM states WHERE state_id = 2").fetchone()[0] == \
        result.collected_at - 10
    con.close()
