"""`pfhistory listen` on a real network: two network namespaces joined by a veth pair,
the simulator sending pfsync from one, the listener recording in the other."""

import csv
import io
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from conftest import run_cli
from pfhistory.simulate import SimulationConfig
from test_syncrecorder import truth

PY = sys.executable


def _netns_problem():
    if os.geteuid() != 0:
        return "needs root to create network namespaces and raw sockets"
    name = f"pfhprobe{os.getpid()}"
    try:
        r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    except FileNotFoundError:
        return "the ip command (iproute2) is not installed"
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


_PROBLEM = _netns_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns():
    """(sender namespace, its interface, listener namespace, its interface, its address)."""
    n = os.getpid() % 100000
    a, b, va, vb = f"pfhA{n}", f"pfhB{n}", f"pfha{n}", f"pfhb{n}"
    _ip("netns", "add", a)
    _ip("netns", "add", b)
    try:
        _ip("link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        _ip("-n", a, "addr", "add", "10.99.0.1/24", "dev", va)
        _ip("-n", b, "addr", "add", "10.99.0.2/24", "dev", vb)
        for ns, dev in ((a, va), (b, vb), (a, "lo"), (b, "lo")):
            _ip("-n", ns, "link", "set", dev, "up")
        yield a, va, b, vb, "10.99.0.2"
    finally:
        _ip("netns", "del", a)
        _ip("netns", "del", b)


def _in(ns, *args):
    return ["ip", "netns", "exec", ns, PY, "-m", "pfhistory", *map(str, args)]


def _start_listener(ns, *args):
    proc = subprocess.Popen(_in(ns, "listen", "-v", *args), stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert "listening for pfsync" in line, line + proc.stderr.read()
    return proc


def _stop(proc, sig):
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return err


# Columns of `show --format csv` that depend on how packets were grouped into batches
# (collection times, ages computed from them) rather than on what pfsync said.
_BATCH_COLUMNS = {"first_seen", "last_seen", "collection", "collection_at", "creation",
                  "expire", "exact"}


def _history(db):
    r = run_cli("show", "--db", db, "--format", "csv", "--order", "id")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    return [{k: v for k, v in row.items() if k not in _BATCH_COLUMNS} for row in rows]


def _states(db):
    con = sqlite3.connect(db)
    try:
        return {r[0]: r[1:] for r in con.execute(
            "SELECT state_id, created_at, ended_before_at, ended_by FROM states")}
    finally:
        con.close()


CFG = SimulationConfig(states=300, duration=600.0, seed=21,
                       start=datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc))


def test_live_multicast_matches_truth_and_its_capture(netns, tmp_path):
    sender_ns, sender_if, listener_ns, listener_if, _addr = netns
    db, live_pcap = tmp_path / "live.db", tmp_path / "live.pcap"
    listener = _start_listener(listener_ns, "--iface", listener_if, "--db", db,
                               "--write-pcap", live_pcap)
    try:
        sent = subprocess.run(_in(sender_ns, "simulate", "--pfsync", tmp_path / "sent.pcap",
                                  "--send", "224.0.0.240", "--send-iface", sender_if,
                                  "--states", CFG.states, "--duration", "10m",
                                  "--seed", CFG.seed, "--pps", 5000),
                              capture_output=True, text=True, timeout=300)
        assert sent.returncode == 0, sent.stderr
    finally:
        err = _stop(listener, 15)          # SIGTERM: flush, then exit
    n_sent = int(sent.stdout.split(": ")[1].split()[0])
    assert f"stopped: {n_sent} packets (0 malformed)" in err
    assert "0 partial, 0 stale" in err
    # The live history holds every state of the model, ended ones ended by pfsync,
    # including those that lived less than a collection interval.
    expected = truth(CFG)
    got = _states(db)
    assert set(got) == set(expected)
    short = 0
    for sid, (created, ended) in expected.items():
        _c, ended_at, by = got[sid]
        if ended is None:
            assert ended_at is None
        else:
            assert by == 1 and ended_at is not None
            short += ended - created < 60
    assert short > 10
    assert (os.stat(db).st_mode & 0o777) == 0o600
    # Recording the listener's own capture gives the same history.
    replay = tmp_path / "replay.db"
    r = run_cli("collect", "--db", replay, "--from-pcap", live_pcap, "-v")
    assert r.returncode == 0, r.stderr
    assert _history(replay) == _history(db)


def test_unicast_from_a_sync_peer_and_malformed_packets(netns, tmp_path):
    sender_ns, _sender_if, listener_ns, _listener_if, addr = netns
    db = tmp_path / "live.db"
    listener = _start_listener(listener_ns, "--db", db)        # no --iface: unicast
    script = (
        "import socket, sys\n"
        "from pfhistory import pfsync\n"
        "from golden_records import Key, build_state\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
        "dst = socket.inet_aton(sys.argv[1])\n"
        "rec = build_state(id=77, creatorid=1, wire=Key('192.0.2.1', 1, '192.0.2.2', 2), "
        "timeout=2)\n"
        "good = pfsync.encode([(pfsync.ACT_INS, rec)])\n"
        "s.sendto(pfsync.encode_ip(good, dst=dst, ttl=64), (sys.argv[1], 0))\n"
        "s.sendto(pfsync.encode_ip(good[:30], dst=dst), (sys.argv[1], 0))\n"
        "s.sendto(pfsync.encode_ip(b'\\x05' + good[1:], dst=dst), (sys.argv[1], 0))\n"
        "s.sendto(pfsync.encode_ip(good, dst=dst), (sys.argv[1], 0))\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
    try:
        r = subprocess.run(["ip", "netns", "exec", sender_ns, PY, "-c", script, addr],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
    finally:
        err = _stop(listener, 2)           # SIGINT: flush, then exit
    assert "4 packets (3 malformed: 1 length, 1 ttl, 1 version)" in err
    assert list(_states(db)) == [77]


def test_listen_refuses_a_missing_interface(tmp_path):
    r = run_cli("listen", "--iface", "nosuchif0", "--db", tmp_path / "h.db")
    assert r.returncode == 1
    assert r.stderr.strip() == "pfhistory: --iface nosuchif0: no such interface"
    assert not (tmp_path / "h.db").exists()


def test_a_write_lock_held_by_the_collector_delays_but_loses_nothing(netns, tmp_path):
    """While another writer (the cron collector of a big table) holds the database, the
    listener keeps receiving and retries its batch; released, everything is recorded."""
    sender_ns, sender_if, listener_ns, listener_if, _addr = netns
    db = tmp_path / "live.db"
    listener = _start_listener(listener_ns, "--iface", listener_if, "--db", db,
                               "--wait", "0.2", "--batch-ms", "50")
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        cfg = ("--states", 100, "--duration", "3m", "--seed", 5)
        sent = subprocess.run(_in(sender_ns, "simulate", "--pfsync", tmp_path / "sent.pcap",
                                  "--send", "224.0.0.240", "--send-iface", sender_if, *cfg),
                              capture_output=True, text=True, timeout=300)
        assert sent.returncode == 0, sent.stderr
        line = listener.stderr.readline()
        assert "another pfhistory is writing" in line and "retrying" in line, line
    finally:
        con.execute("ROLLBACK")
        con.close()
    err = _stop(listener, 15)
    assert "0 malformed" in err and "0 partial" in err
    small = SimulationConfig(states=100, duration=180.0, seed=5, start=CFG.start)
    assert set(_states(db)) == set(truth(small))
