"""pfsync listener: sustained state updates recorded without loss, and packet-to-commit latency.

Usage (root; wrap in flock on a shared machine):
    flock /work/bench.lock .venv/bin/python bench/pfsync.py [--rates 10000 20000 40000]
        [--seconds 20] [--states 20000] [--batch-packets 512] [--batch-ms 200]

Two network namespaces joined by a veth pair, as the tests use. A sender in one sends, at
each offered rate, a stream OpenBSD would send for a busy table: first an INS of every
state, then (after --settle seconds) UPD_C messages (17 to a 1500-byte packet) with moving
sequence numbers, paced evenly. The listener in the other is pfhistory's own (pfhistory.listener.Listener on a
fresh SQLite file, synchronous=FULL as shipped), timed at each commit. Reported per rate:
updates offered and recorded, packets lost, the sustained rate (updates recorded / time
from the first UPD_C sent to the last commit), how long recording went on after the last
packet was sent (drain: near zero when the listener keeps up), and the latency from a
update packet's arrival to the commit of its batch (p50, p99, max).
"""

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PER_PACKET = 17            # UPD_C messages of 84 bytes in one 1500-byte packet
INS_PER_PACKET = 5         # INS messages of 264 bytes


def _records(n, creatorid=0x1A2B3C4D):
    from pfhistory.records import StateKey, StatePeer, encode_state, pack_addr

    out = []
    for i in range(n):
        wire = StateKey(pack_addr("203.0.113.7"), pack_addr(f"10.{i >> 16 & 255}.{i >> 8 & 255}."
                                                             f"{i & 255}"), 443, 1024 + i % 60000,
                        0, 2)
        out.append(encode_state(id=(1 << 40) + i, ifname="em0", wire=wire, stack=wire,
                                src=StatePeer(seqlo=i, seqhi=i + 65535, state=4, max_win=512),
                                dst=StatePeer(seqlo=i, seqhi=i + 65535, state=4, max_win=512),
                                proto=6, direction=2, creatorid=creatorid, creation=10,
                                expire=86400, timeout=2, packets=(10, 10), bytes=(1000, 1000)))
    return out


def role_send(args):
    """Send the INS of every state, then UPD_C at the offered rate for --seconds."""
    import socket

    from pfhistory import pfsync
    from pfhistory.records import StatePeer, encode_peer

    dst = socket.inet_aton(args.dst)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(args.src))
    recs = _records(args.states)
    packets = []
    for i in range(0, len(recs), INS_PER_PACKET):
        packets.append(pfsync.encode_ip(pfsync.encode(
            [(pfsync.ACT_INS, r) for r in recs[i:i + INS_PER_PACKET]]), dst=dst))
    updates = int(args.rate * args.seconds)
    upd = struct.Struct(">Q32s32sIIBB2x")
    ids = [(1 << 40) + i for i in range(args.states)]
    n = 0
    while n < updates:
        msgs = []
        for _ in range(min(PER_PACKET, updates - n)):
            k = n % args.states
            step = n // args.states + 1
            peer = encode_peer(StatePeer(seqlo=(k + 1000 * step) & 0xFFFFFFFF,
                                         seqhi=(k + 1000 * step + 65535) & 0xFFFFFFFF,
                                         state=4, max_win=512))
            msgs.append((pfsync.ACT_UPD_C, upd.pack(ids[k], peer, peer, 0x1A2B3C4D, 0, 2, 0)))
            n += 1
        packets.append(pfsync.encode_ip(pfsync.encode(msgs), dst=dst))
    ins = (args.states + INS_PER_PACKET - 1) // INS_PER_PACKET
    # The INS go out at the same packet rate as the updates.
    pps = args.rate / PER_PACKET
    gap = 1.0 / pps
    start = time.monotonic()
    upd_start = None
    for i, p in enumerate(packets):
        due = start + i * gap
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        if i == ins:
            # Let the listener commit the inserts, so the updates are measured alone.
            time.sleep(args.settle)
            start += args.settle
            upd_start = time.time()
        s.sendto(p, (args.dst, 0))
    print(json.dumps({"packets": len(packets), "ins_packets": ins, "updates": updates,
                      "seconds": time.monotonic() - start, "upd_start": upd_start,
                      "upd_end": time.time()}))


def role_listen(args):
    """pfhistory's Listener, each commit timed; prints its figures at SIGTERM."""
    from pfhistory import db
    from pfhistory.listener import Listener
    from pfhistory.pfsync import ACT_UPD_C
    from pfhistory.syncrecorder import SyncRecorder

    latencies = []
    commits = []

    class Timed(SyncRecorder):
        def flush(self):
            # Latency of the update packets (the inserts before them are not measured).
            arrived = [at for at, m in self.pending if m[0].action == ACT_UPD_C]
            result = super().flush()
            done = time.time()
            latencies.extend(done - at for at in arrived)
            if result is not None:
                commits.append(done)
            return result

    url = db.resolve_url(args.db)
    engine = db.open_engine(url, create=True)
    db.require_current_schema(engine, url, create=True)
    listener = Listener(engine, url, iface=args.iface, batch_packets=args.batch_packets,
                        batch_ms=args.batch_ms)
    listener.recorder = Timed(engine, "pfsync bench", batch_packets=args.batch_packets,
                              batch_ms=args.batch_ms)
    print("ready", flush=True)
    first = []
    orig_add = listener.recorder.add

    def add(at, data, ip=True, clock=None):
        if not first:
            first.append(at)
        return orig_add(at, data, ip=ip, clock=clock)

    listener.recorder.add = add
    rec = listener.run()
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0

    print(json.dumps({
        "packets": rec.totals["packets"], "messages": rec.totals["messages"],
        "malformed": sum(rec.malformed.values()), "updated": rec.totals["updated"],
        "inserted": rec.totals["inserted"], "batches": rec.totals["batches"],
        "first": first[0] if first else None, "last_commit": commits[-1] if commits else None,
        "p50": pct(0.50), "p99": pct(0.99), "max": latencies[-1] if latencies else 0}),
        flush=True)


def _ip(*a):
    subprocess.run(["ip", *a], check=True, capture_output=True)


def run_rate(rate, args, tmp):
    n = os.getpid() % 100000
    a, b, va, vb = f"pfbA{n}", f"pfbB{n}", f"pfba{n}", f"pfbb{n}"
    _ip("netns", "add", a)
    _ip("netns", "add", b)
    try:
        _ip("link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        _ip("-n", a, "addr", "add", "10.98.0.1/24", "dev", va)
        _ip("-n", b, "addr", "add", "10.98.0.2/24", "dev", vb)
        for ns, dev in ((a, va), (b, vb), (a, "lo"), (b, "lo")):
            _ip("-n", ns, "link", "set", dev, "up")
        dbfile = tmp / f"bench-{rate}.db"
        me = [sys.executable, str(Path(__file__).resolve())]
        listen = subprocess.Popen(
            ["ip", "netns", "exec", b, *me, "--role", "listen", "--db", str(dbfile),
             "--iface", vb, "--batch-packets", str(args.batch_packets),
             "--batch-ms", str(args.batch_ms)], stdout=subprocess.PIPE, text=True)
        assert listen.stdout.readline().strip() == "ready"
        send = subprocess.run(
            ["ip", "netns", "exec", a, *me, "--role", "send", "--rate", str(rate),
             "--seconds", str(args.seconds), "--states", str(args.states),
             "--settle", str(args.settle),
             "--dst", "224.0.0.240", "--src", "10.98.0.1"],
            capture_output=True, text=True, check=True)
        sent = json.loads(send.stdout)
        sent_done = time.time()
        listen.send_signal(signal.SIGTERM)
        got = json.loads(listen.communicate(timeout=3600)[0].splitlines()[-1])
    finally:
        _ip("netns", "del", a)
        _ip("netns", "del", b)
    span = got["last_commit"] - sent["upd_start"]
    updates_recorded = got["messages"] - args.states
    return {
        "offered": rate, "updates_sent": sent["updates"], "packets_sent": sent["packets"],
        "packets_received": got["packets"], "updates_received": updates_recorded,
        "lost_packets": sent["packets"] - got["packets"], "malformed": got["malformed"],
        "send_s": sent["seconds"], "drain_s": got["last_commit"] - sent_done,
        "sustained": updates_recorded / span if span > 0 else 0.0,
        "p50_ms": got["p50"] * 1000, "p99_ms": got["p99"] * 1000, "max_ms": got["max"] * 1000,
        "batches": got["batches"],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=("bench", "send", "listen"), default="bench")
    p.add_argument("--rates", type=int, nargs="+", default=[10000, 20000, 40000])
    p.add_argument("--rate", type=float, default=20000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--states", type=int, default=20000)
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds between the inserts and the updates (default 5)")
    p.add_argument("--batch-packets", type=int, default=512)
    p.add_argument("--batch-ms", type=int, default=200)
    p.add_argument("--db")
    p.add_argument("--iface")
    p.add_argument("--dst")
    p.add_argument("--src")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.role == "send":
        return role_send(args)
    if args.role == "listen":
        return role_listen(args)
    if os.geteuid() != 0:
        sys.exit("bench/pfsync.py: needs root (network namespaces, raw sockets)")
    print(f"pfsync listener: {args.states} states inserted, then UPD_C for {args.seconds:g} s "
          f"at each rate; batches of {args.batch_packets} packets or {args.batch_ms} ms; "
          f"SQLite synchronous=FULL")
    print(f"{'offered/s':>10} {'sent':>9} {'recorded':>9} {'lost pkts':>9} "
          f"{'sustained/s':>11} {'drain s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    with tempfile.TemporaryDirectory(prefix="pfh-bench-") as tmp:
        for rate in args.rates:
            r = run_rate(rate, args, Path(tmp))
            print(f"{r['offered']:>10,} {r['updates_sent']:>9,} {r['updates_received']:>9,} "
                  f"{r['lost_packets']:>9,} {r['sustained']:>11,.0f} {r['drain_s']:>7.2f} "
                  f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['max_ms']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
