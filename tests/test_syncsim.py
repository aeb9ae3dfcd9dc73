"""The simulator's pfsync emitter: every change of the model goes out once, in time order,
in valid packets no bigger than the MTU, and the records are the model's."""

import os
import resource
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

from conftest import run_cli
from pfhistory import _native, pfsync, syncsim
from pfhistory.capture import read_frames
from pfhistory.simulate import SimulationConfig, iter_events

CFG = SimulationConfig(states=300, duration=600.0, seed=4,
                       start=datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc))


def test_every_event_is_sent_once_in_order():
    start = CFG.start.timestamp()
    events = list(iter_events(CFG))
    initial = [s.id for t, k, s in events if k == "insert" and t <= start]
    later = Counter(k for t, k, s in events if not (k == "insert" and t <= start))
    got = Counter()
    order = []
    times = []
    for at, dgram in syncsim.iter_datagrams(CFG):
        assert len(dgram) <= syncsim.DEFAULT_MTU
        times.append(at)
        _src, packet = pfsync.decode_ip(dgram)
        for m in packet.messages:
            got[pfsync.ACTION_NAMES[m.action]] += 1
            order.append((m.action, m.id))
    assert times == sorted(times) and times[0] == start
    assert got["UPD"] == len(initial) and got["BUS"] == 2
    assert got["INS"] == later["insert"]
    assert got["UPD_C"] == later["update"]
    assert got["DEL_C"] == later["delete"]
    # The bulk is bracketed by BUS START and END and comes first.
    assert order[0][0] == pfsync.ACT_BUS and order[len(initial) + 1][0] == pfsync.ACT_BUS
    # An INS precedes every other message of its state, and a DEL_C ends it.
    seen = {}
    for action, sid in order:
        if action == pfsync.ACT_INS:
            assert sid not in seen
        if action in (pfsync.ACT_UPD_C, pfsync.ACT_DEL_C):
            assert seen.get(sid) in (pfsync.ACT_INS, pfsync.ACT_UPD, pfsync.ACT_UPD_C)
        if action != pfsync.ACT_BUS:
            seen[sid] = action


def test_records_are_the_models_and_packets_wait_at_most_a_second():
    start = CFG.start.timestamp()
    events = {(s.id, k): (t, s) for t, k, s in iter_events(CFG)
              if k == "insert" and t > start}
    checked = 0
    for at, dgram in syncsim.iter_datagrams(CFG):
        for m in pfsync.decode_ip(dgram)[1].messages:
            if m.action == pfsync.ACT_INS:
                t, s = events[(m.id, "insert")]
                assert t <= at <= t + syncsim.SEND_DELAY + 1e-6
                assert m.record == s.record_at(t)
                checked += 1
    assert checked > 50
    cols = _native.decode(s.record_at(t))
    assert cols["creatorid"] == [CFG.creatorid]


# --- the pcap file: whole or not at all ------------------------------------------------------

EARLIER = b"an earlier capture, kept until a new one is complete"


def _earlier(tmp_path):
    path = tmp_path / "fw.pcap"
    path.write_bytes(EARLIER)
    return path


@pytest.mark.parametrize("args", [
    ["--start", "1970-01-01T00:00Z"],
    ["--start", "2107-01-01T00:00Z"],
    # Valid for state files, but the last packet (a second later) is past pcap's 32 bits.
    ["--start", "2106-02-07T06:00Z", "--duration", "1695"],
])
def test_a_time_a_pcap_cannot_hold_is_refused_and_the_file_kept(tmp_path, args):
    """It was a struct.error traceback that left a header-only file under the name."""
    path = _earlier(tmp_path)
    r = run_cli("simulate", "--pfsync", path, "--states", 10, *args)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("pfhistory: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert path.read_bytes() == EARLIER and os.listdir(tmp_path) == ["fw.pcap"]


def _small_files():
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))


def test_a_failed_write_leaves_the_file_as_it_was_and_a_complete_one_replaces_it(tmp_path):
    """A full disk (here a 256 KiB file size limit): collect --from-pcap would have
    recorded the partial capture left under the name as if it were complete."""
    path = _earlier(tmp_path)
    path.chmod(0o644)
    args = ["simulate", "--pfsync", path, "--states", "3000", "--duration", "10m"]
    r = subprocess.run([sys.executable, "-m", "pfhistory", *args], capture_output=True,
                       text=True, preexec_fn=_small_files, timeout=300)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("pfhistory: ") and r.stderr.count("\n") == 1, r.stderr
    assert "File too large" in r.stderr and str(path) in r.stderr and ".tmp" not in r.stderr
    assert path.read_bytes() == EARLIER and os.listdir(tmp_path) == ["fw.pcap"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    frames = list(read_frames(path))
    assert r.stdout == f"{path}: {len(frames)} pfsync packets\n" and len(frames) > 100
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["fw.pcap"]


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130),
                                            (signal.SIGTERM, -signal.SIGTERM)])
def test_an_interrupted_run_leaves_the_file_as_it_was(tmp_path, signum, status):
    """Ctrl-C, or a kill: no partial capture under the name, and no temporary file."""
    path = _earlier(tmp_path)
    # Ctrl-C as at a terminal: a pytest-xdist worker ignores SIGINT, and a child
    # inherits an ignored signal (Python then never raises KeyboardInterrupt).
    proc = subprocess.Popen([sys.executable, "-m", "pfhistory", "simulate", "--pfsync", path,
                             "--states", "5000", "--duration", "1h"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while (os.listdir(tmp_path) == ["fw.pcap"] and path.stat().st_size == len(EARLIER)
               and proc.poll() is None and time.monotonic() < deadline):
            time.sleep(0.05)
        time.sleep(1.0)                                    # well into writing packets
        assert proc.poll() is None, "finished before it could be interrupted"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err
    assert out == "" and "Traceback" not in err
    assert path.read_bytes() == EARLIER and os.listdir(tmp_path) == ["fw.pcap"]
