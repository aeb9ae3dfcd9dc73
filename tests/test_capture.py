"""pcap and pcapng files: what tcpdump -w writes on a sync interface, read back exactly;
pcapng files are built here from the specification, independently of pfhistory."""

import errno
import os
import signal
import sqlite3
import stat
import struct
import subprocess
import sys

import pytest

from conftest import START, run_cli
from pfhistory import capture, pfsync
from pfhistory.capture import CaptureError, PcapWriter
from pfhistory.exceptions import PFError
from pfhistory.simulate import SimulationConfig

DGRAM = pfsync.encode_ip(pfsync.encode([pfsync.del_c(0x1A2B3C4D, 42)]))
ETH = bytes(6) + bytes(6)


def _pcap(path, linktype, frames, order="<", magic=0xA1B2C3D4, per=1_000_000):
    with open(path, "wb") as f:
        f.write(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype))
        for at, data, *orig in frames:
            ticks = round(at * per)
            f.write(struct.pack(order + "IIII", ticks // per, ticks % per, len(data),
                                orig[0] if orig else len(data)))
            f.write(data)


def _block(order, btype, body):
    body += bytes(-len(body) % 4)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def _pcapng(path, frames, order="<", linktype=1, tsresol=None):
    shb = _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = b""
    if tsresol is not None:
        opts = struct.pack(order + "HH", 9, 1) + bytes((tsresol,)) + bytes(3)
        opts += struct.pack(order + "HH", 0, 0)
    idb = _block(order, 1, struct.pack(order + "HHI", linktype, 0, 65535) + opts)
    per = 1_000_000 if tsresol is None else 10 ** tsresol
    blocks = [shb, idb, _block(order, 5, bytes(8))]   # an Interface Statistics Block too
    for at, data in frames:
        ticks = round(at * per)
        blocks.append(_block(order, 6, struct.pack(order + "IIIII", 0, ticks >> 32,
                                                   ticks & 0xFFFFFFFF, len(data), len(data))
                             + data))
    with open(path, "wb") as f:
        f.write(b"".join(blocks))


def _read(path):
    return list(capture.read_frames(path))


def test_our_writer_reads_back(tmp_path):
    path = tmp_path / "out.pcap"
    with PcapWriter(path) as w:
        w.write(1795557600.25, DGRAM)
        w.write(1795557601.5, DGRAM)
    assert (path.stat().st_mode & 0o777) == 0o600
    frames = _read(path)
    assert [(f.at, f.kind, f.data) for f in frames] == [
        (1795557600.25, "ip", DGRAM), (1795557601.5, "ip", DGRAM)]


@pytest.mark.parametrize("order,magic,per", [
    ("<", 0xA1B2C3D4, 10 ** 6), (">", 0xA1B2C3D4, 10 ** 6), ("<", 0xA1B23C4D, 10 ** 9)])
def test_pcap_byte_orders_and_nanoseconds(tmp_path, order, magic, per):
    path = tmp_path / "x.pcap"
    _pcap(path, 1, [(1000.5, ETH + b"\x08\x00" + DGRAM)], order, magic, per)
    assert [(f.at, f.kind, f.data) for f in _read(path)] == [(1000.5, "ip", DGRAM)]


@pytest.mark.parametrize("linktype,frame", [
    (1, ETH + b"\x81\x00\x00\x05\x08\x00" + DGRAM),          # VLAN tagged
    (101, DGRAM),                                           # raw IP
    (14, DGRAM),                                            # OpenBSD DLT_RAW
    (0, struct.pack("<I", 2) + DGRAM),                      # DLT_NULL, little-endian host
    (12, struct.pack(">I", 2) + DGRAM),                     # OpenBSD DLT_LOOP
    (113, bytes(14) + b"\x08\x00" + DGRAM),                 # Linux cooked
    (276, b"\x08\x00" + bytes(18) + DGRAM),                 # Linux cooked v2
])
def test_link_types_of_a_sync_interface(tmp_path, linktype, frame):
    path = tmp_path / "x.pcap"
    _pcap(path, linktype, [(5.0, frame)])
    assert [(f.kind, f.data) for f in _read(path)] == [("ip", DGRAM)]


def test_pfsync0_captures_carry_no_ip(tmp_path):
    path = tmp_path / "x.pcap"
    _pcap(path, 18, [(5.0, DGRAM[20:])])
    assert [(f.kind, f.data) for f in _read(path)] == [("pfsync", DGRAM[20:])]


def test_other_frames_and_truncation(tmp_path):
    path = tmp_path / "x.pcap"
    _pcap(path, 1, [(1.0, ETH + b"\x86\xdd" + bytes(40)),               # IPv6
                    (2.0, (ETH + b"\x08\x00" + DGRAM)[:30], 200),       # snap length
                    (3.0, ETH + b"\x08\x00" + DGRAM)])
    with open(path, "ab") as f:
        f.write(struct.pack("<IIII", 4, 0, 100, 100) + b"cut")          # killed mid-write
    assert [f.kind for f in _read(path)] == ["other", "truncated", "ip", "truncated"]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("tsresol", [None, 9])
def test_pcapng(tmp_path, order, tsresol):
    path = tmp_path / "x.pcapng"
    _pcapng(path, [(1795557600.125, ETH + b"\x08\x00" + DGRAM), (1795557601.0, DGRAM)],
            order=order, tsresol=tsresol)
    frames = _read(path)
    assert [f.at for f in frames] == [1795557600.125, 1795557601.0]
    assert [f.kind for f in frames] == ["ip", "other"]   # the second is no Ethernet frame
    assert frames[0].data == DGRAM


@pytest.mark.parametrize("content,message", [
    (b"", "too short"),
    (b"hello world, not a capture at all", "not a pcap or pcapng"),
    (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 105), "link type 105"),
    (struct.pack("<IHH", 0xA1B2C3D4, 2, 4), "cut short"),
])
def test_bad_captures_are_one_sentence(tmp_path, content, message):
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError) as e:
        _read(path)
    assert message in str(e.value)


def test_missing_capture(tmp_path):
    with pytest.raises(CaptureError, match="no such capture"):
        _read(tmp_path / "nope.pcap")
    with pytest.raises(CaptureError, match="is a directory"):
        _read(tmp_path)


def test_simulate_pfsync_cli(tmp_path):
    out = tmp_path / "sim.pcap"
    r = run_cli("simulate", "--pfsync", out, "--states", 200, "--duration", "5m", "--seed", 3)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("pfsync packets")
    assert (out.stat().st_mode & 0o777) == 0o600
    assert all(f.kind == "ip" for f in _read(out))
    bad = run_cli("simulate", "--pfsync", out, "--out", tmp_path / "d")
    assert bad.returncode == 1 and "leave out --out" in bad.stderr and "Traceback" not in bad.stderr
    neither = run_cli("simulate")
    assert neither.returncode == 1 and "--out DIR" in neither.stderr


def test_writer_replaces_an_existing_file_owner_only(tmp_path):
    """An existing capture is replaced, as report -o replaces its file, not truncated in
    place: the new one is owner-only, and whoever holds the old file keeps the old bytes.
    A symbolic link is refused (pfhistory.outfile), what it points to left alone."""
    path, other, link = tmp_path / "out.pcap", tmp_path / "other-name", tmp_path / "link"
    path.write_bytes(b"someone's notes")
    path.chmod(0o644)
    os.link(path, other)
    link.symlink_to(path)
    with PcapWriter(path) as w:
        w.write(1.0, DGRAM)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert [f.data for f in _read(path)] == [DGRAM]
    assert other.read_bytes() == b"someone's notes" and (other.stat().st_mode & 0o777) == 0o644
    with pytest.raises(OSError) as e:
        PcapWriter(link)
    assert e.value.strerror == "is a symbolic link: give the file it points to"
    assert [f.data for f in _read(path)] == [DGRAM]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "other-name", "out.pcap"]
    path.chmod(0o644)
    r = run_cli("simulate", "--pfsync", path, "--states", 10, "--duration", "1m")
    assert r.returncode == 0, r.stderr
    assert (path.stat().st_mode & 0o777) == 0o600
    r = run_cli("simulate", "--pfsync", link, "--states", 10, "--duration", "1m")
    assert r.returncode == 1 and r.stderr.strip().endswith("is a symbolic link: give the file "
                                                           "it points to")


def test_a_reader_that_goes_away_is_one_sentence(tmp_path):
    """A FIFO is written in place; its header at once (a bad target fails before any
    packet), and a write that fails later is a PFError when the capture is closed."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    w = PcapWriter(fifo)
    assert len(os.read(reader, 100)) == 24
    os.close(reader)
    w.write(1.0, DGRAM)
    with pytest.raises(PFError) as e:
        w.close()
    assert str(e.value) == f"cannot write the capture to {fifo}: Broken pipe"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, raw sockets)")


def _full_device(path):
    """A device node like /dev/full: every write fails with ENOSPC (a full disk)."""
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    return path


@needs_root
def test_a_full_device_fails_at_open_and_stays_a_device(tmp_path):
    dev = _full_device(tmp_path / "full")
    with pytest.raises(OSError) as e:
        PcapWriter(dev)
    assert e.value.errno == errno.ENOSPC
    assert stat.S_ISCHR(os.stat(dev).st_mode)


@pytest.fixture
def netns_lo():
    """A network namespace of its own (only lo, up), so no other test's pfsync is heard."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace and raw sockets")
    name = f"pfhcap{os.getpid()}"
    try:
        r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("the ip command (iproute2) is not installed")
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _in(ns, *args):
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "pfhistory", *map(str, args)]


def test_listen_refuses_a_full_capture_target_before_listening(netns_lo, tmp_path):
    dev = _full_device(tmp_path / "myfull")
    r = subprocess.run(_in(netns_lo, "listen", "-v", "--iface", "lo", "--db", tmp_path / "h.db",
                           "--write-pcap", dev), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr == f"pfhistory: --write-pcap {dev}: No space left on device\n"
    assert stat.S_ISCHR(os.stat(dev).st_mode)


def test_a_capture_failing_mid_run_loses_nothing_from_the_database(netns_lo, tmp_path):
    """The database is the product, the capture a copy: when the capture cannot be
    written any more (its reader went away, as a disk fills), listen still records every
    packet, and says so in one sentence with status 1 when it stops."""
    from test_syncrecorder import truth

    fifo, db = tmp_path / "pipe", tmp_path / "h.db"
    os.mkfifo(fifo)
    reader = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.buffer.write("
                               "open(sys.argv[1], 'rb').read(24))", fifo],
                              stdout=subprocess.PIPE)
    listener = subprocess.Popen(_in(netns_lo, "listen", "-v", "--iface", "lo", "--db", db,
                                    "--write-pcap", fifo), stderr=subprocess.PIPE, text=True)
    try:
        line = listener.stderr.readline()
        assert "listening for pfsync" in line, line + listener.stderr.read()
        assert reader.communicate(timeout=30)[0][:4] == struct.pack("<I", 0xA1B2C3D4)
        # About 4 MB of pfsync: more than the capture's buffer, so writes fail mid-run.
        sent = subprocess.run(_in(netns_lo, "simulate", "--pfsync", tmp_path / "sent.pcap",
                                  "--send", "127.0.0.1", "--states", 2000, "--duration", "10m",
                                  "--seed", 5, "--pps", 5000),
                              capture_output=True, text=True, timeout=300)
        assert sent.returncode == 0, sent.stderr
    finally:
        listener.send_signal(signal.SIGINT)
        _out, err = listener.communicate(timeout=120)
        reader.kill()
        reader.wait()
    assert listener.returncode == 1, err
    # Said once when it happens (a listener runs for days), and again as it stops.
    assert err == (f"pfhistory: cannot write the capture to {fifo}: Broken pipe; "
                   f"recording goes on without it\n"
                   f"pfhistory: cannot write the capture to {fifo}: Broken pipe\n")
    cfg = SimulationConfig(states=2000, duration=600.0, seed=5, start=START)
    con = sqlite3.connect(db)
    try:
        got = {r[0] for r in con.execute("SELECT state_id FROM states")}
    finally:
        con.close()
    assert got == set(truth(cfg))
