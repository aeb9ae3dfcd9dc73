"""History lookups on a history of millions of states.

Usage:  python bench/query.py [--bulk 5] [--bulk-states 1000000] [--keep DIR]

Builds (once, kept in --keep) a history with the simulator and the real
collector: --bulk snapshots of --bulk-states states each, every one a new
set of states (so the history holds bulk x bulk-states states), then a
simulated 100,000-state firewall for ten minutes. Then times, each the best
of five runs:
  - a host lookup over the whole history (every state of one address),
  - a NAT reverse lookup (who was behind public address:port at a moment),
  - table_at for the last collection of the 100,000-state firewall, and for
    one in the middle of its ten minutes (values partly in samples).

The history is only read (History opens it read-only), after `pfhistory db
upgrade` brings a kept one to this checkout's schema: --keep may point at a
database another checkout built.
"""

import argparse
import os
import struct
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

RECORD = 264
T0 = datetime(2026, 11, 20, 0, 0, tzinfo=timezone.utc)


def _collect(db, files):
    result = subprocess.run([sys.executable, "-m", "pfhistory", "collect", "--db", str(db),
                             "--from-file", *map(str, files)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr)


def build(work, bulk, bulk_states):
    """The history database, built once."""
    from pfhistory.simulate import SimulationConfig, simulate

    db = work / f"history-{bulk}x{bulk_states}.db"
    if db.exists():
        # A history kept from an older pfhistory is brought to this one's schema.
        subprocess.run([sys.executable, "-m", "pfhistory", "db", "upgrade", "--db", str(db)],
                       check=True, stdout=subprocess.DEVNULL)
        return db
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base_cfg = SimulationConfig(states=bulk_states, interval=60.0, duration=0.0, seed=5,
                                start=T0, creatorid=0x1A2B3C4D, missing=())
    (_, base), = simulate(base_cfg, work / "bulk-base", truth=False).snapshots
    data = base.read_bytes()
    n = len(data) // RECORD
    u64 = struct.Struct(">Q")
    for k in range(bulk):
        # The same traffic, new state ids: every snapshot is a new set of states.
        rec = bytearray(data)
        for i in range(n):
            off = i * RECORD
            u64.pack_into(rec, off, u64.unpack_from(rec, off)[0] + ((k + 1) << 40))
        path = work / f"bulk-{k}.pfstate"
        path.write_bytes(rec)
        t = (T0 + timedelta(minutes=k)).timestamp()
        os.utime(path, (t, t))
        _collect(db, [path])
        path.unlink()
        print(f"  bulk snapshot {k + 1}/{bulk} recorded ({time.perf_counter() - started:.0f} s)",
              flush=True)
    cfg = SimulationConfig(states=100_000, interval=60.0, duration=600.0, seed=6,
                           start=T0 + timedelta(hours=1), creatorid=0x1A2B3C4D, missing=())
    series = simulate(cfg, work / "fw-100k", truth=False)
    _collect(db, [p for _t, p in series.snapshots])
    print(f"history built in {time.perf_counter() - started:.0f} s", flush=True)
    return db


def best_of(fn, runs=5):
    times = []
    result = None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk", type=int, default=5)
    parser.add_argument("--bulk-states", type=int, default=1_000_000)
    parser.add_argument("--keep", default=str(Path(__file__).resolve().parent / "out" / "query"))
    args = parser.parse_args()

    from pfhistory.history import History

    db = build(Path(args.keep), args.bulk, args.bulk_states)
    import sqlite3

    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    total = con.execute("SELECT count(*) FROM states").fetchone()[0]
    # The firewall's collections: those after the bulk snapshots.
    series = con.execute("SELECT collected_at, states FROM collections WHERE id > ? "
                         "ORDER BY id", (args.bulk,)).fetchall()
    last_at, in_last = series[-1]
    # A local host with a typical number of states, and a NAT mapping alive
    # in the last collection.
    host = con.execute(
        "SELECT local_addr, count(*) AS n FROM connections GROUP BY local_addr "
        "HAVING n BETWEEN 20 AND 2000 ORDER BY n DESC LIMIT 1").fetchone()
    mapping = con.execute(
        "SELECT external_addr, external_port FROM nat WHERE open = 1 AND direction = 'out' "
        "AND external_port > 1024 LIMIT 1").fetchone()
    con.close()
    print(f"history: {total:,} states, {db.stat().st_size / 1e9:.2f} GB; last collection "
          f"holds {in_last:,} states")

    with History(str(db)) as h:
        at = datetime.fromtimestamp(last_at, timezone.utc)
        secs, found = best_of(lambda: list(h.states(local=host[0])))
        print(f"host lookup ({host[0]}, {len(found)} states over the whole history): "
              f"{secs * 1000:.0f} ms (target 100 ms)")
        secs, found = best_of(lambda: [
            s for s in h.states(host=mapping[0], port=mapping[1], nat=True, at=at)
            if str(s.wire_key.addr[1]) == mapping[0] and s.wire_key.port[1] == mapping[1]])
        print(f"NAT reverse lookup ({mapping[0]}:{mapping[1]} at the last collection, "
              f"{len(found)} found): {secs * 1000:.0f} ms (target 100 ms)")
        for what, (when, n) in (("last", series[-1]), ("middle", series[len(series) // 2])):
            secs, text = best_of(lambda: h.table_at(datetime.fromtimestamp(when, timezone.utc)))
            # pfctl -vv indents every line of a state but its first.
            printed = sum(1 for line in text.splitlines() if not line.startswith(" "))
            print(f"table_at of the {what} collection, {n:,} states ({printed:,} printed): "
                  f"{secs:.2f} s (target 2 s)")


if __name__ == "__main__":
    main()
