"""How long the hourly rollup pass takes for an hour of a busy firewall.

Usage:  python bench/rollup.py [--states 1000000] [--steady 4] [--keep DIR] [--inputs DIR]

The hour is bench/collect.py's: its first snapshot (taken at 21:59, the history's
baseline, in the hour before), then --steady steady-state snapshots one a minute
from 22:01 (each made from the one before by bench/collect.py's make_steady: 5% of
states gone, 5% new, every counter grown), then one more steady snapshot at 23:01,
whose collection completes the hour 22:00-23:00 and rolls it up. Each collection is
a `pfhistory collect -v` subprocess; the rollup figure is the "rollups N ms" of
its -v line, and the states the pass read come from rollup_hours. The first
snapshot is read from --inputs (default bench/out/collect, bench/collect.py's
cache) or simulated there; the steady ones are written under --keep.

A real hour has 60 collections, not a few: the pass reads each state once however
many collections changed it (two sample lookups per state), so its time grows with
the states alive in the hour, not with the collections.
"""

import argparse
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from collect import make_steady  # noqa: E402  (bench/collect.py)

HOUR = int(datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc).timestamp())
RECORD = 264


def collect(db, snapshot, at):
    """`pfhistory collect -v` of one snapshot dated at: (collect ms, rollups ms)."""
    out = subprocess.run([sys.executable, "-m", "pfhistory", "collect", "-v", "--db", str(db),
                          "--from-file", str(snapshot), "--at", str(at)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    line = out.stdout.strip().splitlines()[-1]
    collect_ms = int(line.rsplit(" ms, rollups ", 1)[0].rsplit(", ", 1)[1])
    rollup_ms = int(line.rsplit("rollups ", 1)[1].split()[0])
    return collect_ms, rollup_ms


def first_snapshot(states, inputs):
    first = inputs / f"first-{states}.pfstate"
    if first.exists():
        return first
    from pfhistory.simulate import SimulationConfig, simulate

    inputs.mkdir(parents=True, exist_ok=True)
    cfg = SimulationConfig(states=states, interval=60.0, duration=0.0, seed=1,
                           start=datetime.fromtimestamp(HOUR, timezone.utc),
                           creatorid=0x1A2B3C4D, missing=())
    (_, path), = simulate(cfg, inputs / f"sim-{states}", truth=False).snapshots
    path.rename(first)
    return first


def iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, default=1_000_000)
    ap.add_argument("--steady", type=int, default=4, help="steady snapshots in the hour")
    ap.add_argument("--keep", type=Path, default=HERE / "out" / "rollup")
    ap.add_argument("--inputs", type=Path, default=HERE / "out" / "collect")
    args = ap.parse_args()
    args.keep.mkdir(parents=True, exist_ok=True)
    first = first_snapshot(args.states, args.inputs)
    steady = []
    previous = first
    for k in range(args.steady + 1):
        path = args.keep / f"steady-{args.states}-{k}.pfstate"
        if not path.exists():
            make_steady(previous, path, seed=k + 1)
        steady.append(path)
        previous = path
    db = args.keep / f"hour-{args.states}.db"
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if p.exists():
            p.unlink()
    times = [HOUR - 60] + [HOUR + 60 * (k + 1) for k in range(args.steady)] + [HOUR + 3660]
    print(f"== an hour of {args.states:,} states: {args.steady} steady collections in "
          f"22:00-23:00 after the first at 21:59, then one at 23:01 ==")
    for i, (snap, at) in enumerate(zip([first, *steady], times)):
        collect_ms, rollup_ms = collect(db, snap, iso(at))
        n = snap.stat().st_size // RECORD
        print(f"  collection {i + 1} at {iso(at)[11:19]}: {n:,} states, collect "
              f"{collect_ms / 1000:.1f} s, rollups {rollup_ms / 1000:.2f} s", flush=True)
    con = sqlite3.connect(db)
    hours = con.execute("SELECT hour, first_collection, last_collection, states, duration_ms "
                        "FROM rollup_hours ORDER BY hour").fetchall()
    con.close()
    for hour, lo, hi, states, ms in hours:
        print(f"hour {iso(hour)[11:16]}: collections {lo}-{hi}, {states:,} states read, "
              f"pass {ms / 1000:.2f} s")
    hour, lo, hi, states, ms = hours[-1]
    print(f"hourly pass of the steady hour: {ms / 1000:.2f} s for {states:,} states "
          f"({ms * 1000 / max(states, 1):.1f} us a state); at one collection a minute, "
          f"{ms / 60 / 1000:.2f} s per collection")


if __name__ == "__main__":
    main()
