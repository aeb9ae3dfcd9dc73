"""Crash safety and concurrency of the collector: kill -9, two writers, a
read-only database, a full disk. Real processes, real SQLite files."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from conftest import run_cli, simulated

PY = sys.executable


@pytest.fixture(scope="module")
def medium_series(tmp_path_factory):
    """Six snapshots of a 12,000-state firewall: enough work per collection to
    be killed in the middle of it."""
    series = simulated(tmp_path_factory.mktemp("medium"), 12000, 300.0, seed=3, truth=False)
    return [p for _t, p in series.snapshots]


def _collect_cmd(db, *files):
    return [PY, "-m", "pfhistory", "collect", "--db", str(db), "--from-file", *map(str, files)]


def _check_consistent(db):
    """integrity_check passes and every recorded collection is complete."""
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "collections" not in tables:
            # Killed while creating the database: the schema is made in one
            # transaction, so the file holds nothing at all (collect makes it anew).
            assert tables == set()
            return 0
        rows = con.execute("SELECT id, states, duration_ms FROM collections ORDER BY id").fetchall()
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
        if rows:
            last_id, last_states, _ = rows[-1]
            # The newest collection's states are exactly the open ones.
            open_states = con.execute(
                "SELECT count(*) FROM states WHERE ended_before IS NULL").fetchone()[0]
            assert open_states == last_states
            assert con.execute("SELECT count(*) FROM states WHERE first_seen > ?",
                               (last_id,)).fetchone()[0] == 0
            n = con.execute("SELECT count(*) FROM states").fetchone()[0]
            assert con.execute("SELECT count(*) FROM state_keys").fetchone()[0] == 2 * n
            assert con.execute("SELECT count(*) FROM state_peers").fetchone()[0] == 2 * n
        return len(rows)
    finally:
        con.close()


def test_kill_9_at_random_moments_leaves_before_or_after(tmp_path, medium_series):
    rng = random.Random(42)
    db = tmp_path / "h.db"
    done = 0
    kills = 0
    for attempt in range(14):
        if done == len(medium_series):
            break
        snap = medium_series[done]
        before = _check_consistent(db) if db.exists() else 0
        proc = subprocess.Popen(_collect_cmd(db, snap), stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.05, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        after = _check_consistent(db) if db.exists() else 0
        assert after in (before, before + 1)
        done = after
    # Whatever was killed, finishing the series gives the complete history.
    for snap in medium_series[done:]:
        result = subprocess.run(_collect_cmd(db, snap), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert _check_consistent(db) == len(medium_series)
    assert kills >= 3


HOLD_LOCK = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("ROLLBACK")
"""


@contextmanager
def _writer_holding_lock(db, seconds):
    proc = subprocess.Popen([PY, "-c", HOLD_LOCK, str(db), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    try:
        yield
    finally:
        proc.wait()


def test_second_collector_waits_a_bounded_time_then_says_so(tmp_path, medium_series):
    db = tmp_path / "h.db"
    assert run_cli("collect", "--db", db, "--from-file", medium_series[0]).returncode == 0
    with _writer_holding_lock(db, 4):
        started = time.monotonic()
        result = run_cli("collect", "--db", db, "--from-file", medium_series[1], "--wait", "1")
        waited = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"pfhistory: sqlite:///{db}: another pfhistory is writing; gave up after waiting "
        f"1 s, nothing was recorded"]
    assert 0.9 <= waited < 4
    assert _check_consistent(db) == 1


def test_two_collectors_at_once_both_record_or_one_says_why(tmp_path, medium_series):
    db = tmp_path / "h.db"
    assert run_cli("collect", "--db", db, "--from-file", medium_series[0]).returncode == 0
    # Two different tables a minute apart, started together: the second to get
    # the lock waits, then records its changes, unless it is the older one,
    # which the history refuses (it only moves forward). Never "gave up".
    procs = []
    for snap, at in ((medium_series[1], "2026-11-24T23:00:00Z"),
                     (medium_series[2], "2026-11-24T23:01:00Z")):
        procs.append(subprocess.Popen(_collect_cmd(db, snap) + ["--at", at],
                                      stderr=subprocess.PIPE, text=True))
        time.sleep(0.2)     # the older one usually takes the lock first
    (rc_old, err_old), (rc_new, err_new) = [(p.wait(), p.stderr.read()) for p in procs]
    assert (rc_new, err_new) == (0, "")
    assert (rc_old, err_old) == (0, "") or (
        rc_old == 1 and "the history only moves forward" in err_old), err_old
    assert _check_consistent(db) == 2 + (rc_old == 0)


def _can_mount():
    if os.geteuid() != 0:
        return False
    probe = "/tmp/pfhistory-mount-probe"
    os.makedirs(probe, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", probe])
    return ok


needs_tmpfs = pytest.mark.skipif(not _can_mount(),
                                 reason="needs root and permission to mount a tmpfs")


@contextmanager
def _tmpfs(path, size):
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


@needs_tmpfs
def test_full_disk_is_one_sentence_and_the_database_stays_intact(tmp_path, medium_series):
    with _tmpfs(tmp_path / "small", "3m") as mnt:
        db = mnt / "h.db"
        first = run_cli("collect", "--db", db, "--from-file", medium_series[0])
        if first.returncode != 0:
            assert "disk is full" in first.stderr
        # Fill what is left, then try to record more.
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        result = run_cli("collect", "--db", db, "--from-file", *medium_series[1:3])
        assert result.returncode == 1
        assert result.stderr.splitlines()[0].endswith(
            "the disk is full; nothing of this run was recorded") or \
            "disk is full" in result.stderr
        assert len(result.stderr.splitlines()) == 1
        filler.unlink()
        count = _check_consistent(db) if db.exists() and db.stat().st_size else 0
        assert count in (0, 1)


@needs_tmpfs
def test_read_only_database_is_one_sentence(tmp_path, medium_series):
    with _tmpfs(tmp_path / "ro", "64m") as mnt:
        db = mnt / "h.db"
        assert run_cli("collect", "--db", db, "--from-file", medium_series[0]).returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        result = run_cli("collect", "--db", db, "--from-file", medium_series[1])
        assert result.returncode == 1
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "read-only" in result.stderr or "cannot open" in result.stderr
        con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM collections").fetchone()[0] == 1
        con.close()
        # The history stays readable where it cannot be written.
        shown = run_cli("show", "--db", db, "--limit", "3")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.count("history:") == 3
