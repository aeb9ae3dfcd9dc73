"""How long `pfhistory report` takes over a day of a 100,000-state firewall.

Usage:  python bench/report.py [--states 100000] [--collections 288] [--interval 300]
                               [--formats text html json csv]

The history is built once and cached under bench/out/report/: the simulator
writes one snapshot every --interval seconds (a subprocess), and this script
records each file as soon as it appears, then deletes it (288 snapshots of
100,000 states would take 7.6 GB). Building it takes about an hour on a
2-core machine; a second run reuses it. Then each format of the report over
the whole day runs in a fresh `pfhistory report` subprocess, timed from the
outside, and the peak memory of that subprocess is read from its VmHWM. Its
last hour is not complete, so each report also computes that hour (one pass
over its states, as pfhistory.rollup.open_rollups does).
"""

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

START = datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc)


def build(out, states, collections, interval, seed):
    """Simulate and record the history, unless a complete one is cached."""
    from sqlalchemy import func, select

    from pfhistory import db
    from pfhistory.collector import Snapshot, record_snapshot
    from pfhistory.models import Collection
    from pfhistory.rollup import roll_up_complete_hours

    path = out / f"history-{states}x{collections}.db"
    url = db.resolve_url(str(path))
    if path.exists():
        engine = db.open_engine(url)
        db.upgrade_to_head(engine, url)
        with engine.connect() as conn:
            have = conn.execute(select(func.count()).select_from(Collection)).scalar()
        if have == collections:
            t0 = time.monotonic()
            n = roll_up_complete_hours(engine)   # hours a migration left to roll up
            if n:
                print(f"  rolled up {n} hours ({time.monotonic() - t0:.0f} s)",
                      file=sys.stderr)
            engine.dispose()
            return path
        engine.dispose()
        sys.exit(f"{path} holds {have} of {collections} collections: delete it and run again")
    snaps = out / f"snapshots-{states}x{collections}"
    duration = (collections - 1) * interval
    sim = None
    if not snaps.is_dir() or not any(snaps.iterdir()):
        sim = subprocess.Popen(
            [sys.executable, "-m", "pfhistory", "simulate", "--out", str(snaps),
             "--states", str(states), "--interval", f"{interval}s",
             "--duration", f"{duration}s", "--seed", str(seed)],
            stdout=subprocess.DEVNULL)
    engine = db.open_engine(url, create=True)
    db.require_current_schema(engine, url, create=True)
    done = 0
    t0 = time.monotonic()
    while done < collections:
        files = sorted(snaps.glob("states-*.pfstate")) if snaps.is_dir() else []
        if not files:
            if sim is not None and sim.poll() not in (None, 0):
                sys.exit("the simulator failed")
            time.sleep(1)
            continue
        for f in files:
            when = START + timedelta(seconds=done * interval)
            record_snapshot(engine, Snapshot(f, int(when.timestamp()), str(f)))
            roll_up_complete_hours(engine)       # as `pfhistory collect` does
            f.unlink()
            done += 1
            print(f"  recorded {done}/{collections} ({time.monotonic() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    if sim is not None:
        sim.wait()
    engine.dispose()
    return path


def run_report(path, fmt, since, until, out_file):
    """One report in a subprocess: (seconds, peak MB)."""
    cmd = [sys.executable, "-m", "pfhistory", "report", "--db", f"sqlite:///{path}",
           "--since", since, "--until", until, "--format", fmt, "-o", str(out_file)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) // 1024)
        except OSError:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read()
    if proc.returncode != 0:
        sys.exit(f"report failed: {err}")
    return seconds, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, default=100_000)
    ap.add_argument("--collections", type=int, default=288)
    ap.add_argument("--interval", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--formats", nargs="+", default=["text", "html", "json", "csv"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "report")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = build(args.out, args.states, args.collections, args.interval, args.seed)
    size = path.stat().st_size / 1e9
    since = START.isoformat()
    until = (START + timedelta(seconds=(args.collections - 1) * args.interval)).isoformat()
    print(f"history: {path.name}, {size:.2f} GB, {args.collections} collections of "
          f"{args.states:,} states every {args.interval} s")
    print(f"command: pfhistory report --db sqlite:///{path} --since {since} --until {until} "
          f"--format FORMAT -o FILE")
    for fmt in args.formats:
        seconds, peak = run_report(path, fmt, since, until, args.out / f"report.{fmt}")
        verdict = "met" if seconds <= 30 else "MISSED"
        print(f"  {fmt:5s} {seconds:7.2f} s   peak {peak} MB   (target <= 30 s: {verdict})")


if __name__ == "__main__":
    main()
