"""A long steady run: what a collection costs once samples have piled up.

Usage:  python bench/retention.py [--states 100000] [--collections 40] [--retention 20m]

bench/collect.py measures the second collection of a history, when no sample
is kept yet. Here one simulated firewall is collected again and again (each
snapshot made from the one before, as bench/collect.py makes its steady one:
5% of states gone, 5% new, all counters grown, a third with new TCP peers)
with a short sample retention, so that the samples reach the size they keep
and expiry runs in every collection, as on a firewall collected every minute
for days. Each collection runs in a fresh subprocess; printed per collection:
wall and CPU seconds, the bytes the process had written to disk (WAL and
checkpoint; /proc/self/io, Linux), the database size and the samples kept.
The figures to read are the ratios of the last collections to early
ones (2-4, few samples kept), measured in the same run.
"""

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import T0, first_snapshot, make_steady  # noqa: E402

_RUN = ("import sys, time; from pfhistory.cli import main; t = time.perf_counter(); "
        "rc = main(['collect', '--db', sys.argv[1], '--from-file', sys.argv[2], '--at', "
        "sys.argv[3], '--sample-retention', sys.argv[4]]); wall = time.perf_counter() - t; "
        "io = dict(line.split(': ') for line in open('/proc/self/io').read().splitlines()) "
        "if __import__('os').path.exists('/proc/self/io') else {'write_bytes': -1}; "
        "print(wall, time.process_time(), io['write_bytes']); sys.exit(rc)")


def collect(db, snapshot, at, retention):
    """One `pfhistory collect` in a subprocess: (seconds, CPU seconds, bytes written)."""
    out = subprocess.run([sys.executable, "-c", _RUN, str(db), str(snapshot),
                          datetime.fromtimestamp(at, timezone.utc).isoformat(), retention],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    wall, cpu, written = out.stdout.split()
    return float(wall), float(cpu), int(written)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=100_000)
    parser.add_argument("--collections", type=int, default=40)
    parser.add_argument("--retention", default="20m",
                        help="sample retention given to collect (default 20m: 20 collections)")
    parser.add_argument("--keep", default=str(Path(__file__).resolve().parent / "out" / "retention"))
    args = parser.parse_args()
    work = Path(args.keep)
    work.mkdir(parents=True, exist_ok=True)
    db = work / f"history-{args.states}.db"
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        p.unlink(missing_ok=True)
    snapshot = first_snapshot(args.states, work)
    print(f"{args.states:,} states, one collection a minute, sample retention {args.retention}")
    print(f"{'#':>3} {'s':>7} {'CPU s':>7} {'written MB':>11} {'db MB':>8} {'samples':>10}")
    rows = []
    for k in range(args.collections):
        if k:
            # Alternate two files: each snapshot is made from the one before.
            snapshot = make_steady(snapshot, work / f"steady-{k % 2}.pfstate", seed=k)
        wall, cpu, written = collect(db, snapshot, T0 + 60 * k, args.retention)
        con = sqlite3.connect(db)
        kept = con.execute("SELECT count(*) FROM samples").fetchone()[0]
        con.close()
        rows.append((wall, cpu, written))
        print(f"{k:>3} {wall:>7.2f} {cpu:>7.2f} {written / 1e6:>11.1f} "
              f"{os.path.getsize(db) / 1e6:>8.1f} {kept:>10,}", flush=True)
    if len(rows) < 12:
        return
    # The baseline: collections 2-4, with few samples kept (collection 1, the
    # first to update rows the bulk load packed full, splits pages and is slower).
    # The last ten are the steady state, retention full and expiry running.
    early, tail = rows[2:5], rows[-10:]
    for name, i in (("seconds", 0), ("CPU seconds", 1), ("MB written", 2)):
        base = statistics.median(r[i] for r in early)
        last = statistics.median(r[i] for r in tail)
        scale = 1e6 if i == 2 else 1
        print(f"{name:>12}: collections 2-4 {base / scale:.2f}, last ten {last / scale:.2f} "
              f"(medians), ratio {last / base:.2f}")


if __name__ == "__main__":
    main()
