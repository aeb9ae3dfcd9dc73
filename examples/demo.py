"""`make demo`: simulate an hour of a busy firewall, record it, report on it; then its pfsync.

Runs the commands an administrator would type, as subprocesses, and prints
each before its output. The demo keeps its own database (demo/history.db,
made anew each run) so simulated history never mixes with a real one.
"""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

DURATION = "61m"


def run(*args, show=True, env=None):
    """Print a pfhistory command line, run it, and return its stdout."""
    line = " ".join(map(str, args))
    if show:
        print(f"$ pfhistory {line}", flush=True)
    result = subprocess.run([sys.executable, "-m", "pfhistory", *map(str, args)],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(result.stderr.strip() or f"pfhistory {args[0]} failed")
    return result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="demo", help="where the demo writes its files")
    parser.add_argument("--states", type=int, default=5000)
    args = parser.parse_args()
    out = Path(args.dir)
    snapshots = out / "snapshots"
    db = out / "history.db"
    pcap, sync_db = out / "pfsync.pcap", out / "pfsync.db"
    for old in (snapshots, db, Path(f"{db}-wal"), Path(f"{db}-shm"), pcap, sync_db,
                Path(f"{sync_db}-wal"), Path(f"{sync_db}-shm"), out / "report.html"):
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()

    # 22:00 to 23:01: the snapshot a minute past the hour completes the hour
    # 22:00-23:00, which recording it adds to the rollups (docs/forensics.md Q16).
    files = run("simulate", "--out", snapshots, "--states", args.states,
                "--interval", "1m", "--duration", DURATION, "--seed", "7",
                # cron missed three runs: the report shows the blind spot
                "--missing", "31,32,33").split()
    print(f"{len(files)} snapshots, one a minute (three missed), in {snapshots}/\n")

    print(f"The firewall's state table at {Path(files[-1]).name}, first states, as pfctl -ss -vv:")
    text = run("states", files[-1], "-vv")
    print("".join(text.splitlines(keepends=True)[:12]))

    env = dict(os.environ, PFHISTORY_DB=str(db))
    print(f"$ PFHISTORY_DB={db} pfhistory collect --from-file {snapshots}/*.pfstate")
    run("collect", "--from-file", *files, show=False, env=env)
    print(f"recorded {len(files)} collections into {db}\n")
    print(run("summary", env=env), end="")
    print("\nThe same firewall's pfsync traffic: every insert, update and removal, so also "
          "the states that lived between two snapshots.")
    print(run("simulate", "--pfsync", pcap, "--states", args.states, "--interval", "1m",
              "--duration", DURATION, "--seed", "7"), end="")
    print(run("collect", "--db", sync_db, "--from-pcap", pcap, "--batch-ms", 1000, "-v"), end="")
    print(run("summary", "--db", sync_db), end="")
    print("\n(`pfhistory listen --iface em1` records the same from the network, as root.)")

    period = ("--since", "2026-11-24T22:00Z", "--until", "2026-11-24T23:00Z")
    html = out / "report.html"
    print()
    print(run("report", *period, env=env), end="")
    run("report", *period, "--format", "html", "-o", html, env=env)
    print(f"\nThe same report as a page with charts: {html.resolve()}")

if __name__ == "__main__":
    main()
