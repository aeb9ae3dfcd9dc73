"""`make demo`: simulate a small firewall and show its state table as pfctl would.

Runs the same commands an administrator would type, as subprocesses, and
prints each before its output.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def run(*args):
    """Print a pfhistory command line, run it, and return its stdout."""
    print(f"$ pfhistory {' '.join(map(str, args))}", flush=True)
    result = subprocess.run([sys.executable, "-m", "pfhistory", *map(str, args)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr.strip() or f"pfhistory {args[0]} failed")
    return result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="demo", help="where the demo writes its files")
    parser.add_argument("--states", type=int, default=40)
    args = parser.parse_args()
    out = Path(args.dir)
    snapshots = out / "snapshots"
    if snapshots.exists():
        shutil.rmtree(snapshots)

    listing = run("simulate", "--out", snapshots, "--states", args.states,
                  "--interval", "1m", "--duration", "5m", "--seed", "7")
    files = listing.split()
    print(f"{len(files)} snapshots written to {snapshots}/\n")
    last = files[-1]
    print(run("states", last, "-vv"))
    print(run("states", last, "-i", "em0"), end="")


if __name__ == "__main__":
    main()
