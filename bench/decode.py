"""Decoding speed and memory, beside py-pf 0.2.3 and a pure-stdlib decoder.

Usage:  python bench/decode.py [--states 1000000] [--file F] [--pypf-limit N]

Writes a simulated snapshot (unless --file is given), then measures, each in
a fresh subprocess so that peak memory (ru_maxrss) belongs to one task:

  (a) columns  - decoding to the values the collector writes (every field
                 as host-order ints / 16-byte strings, chunk by chunk)
      stdlib   - the same values with struct.iter_unpack, no native code
  (b) objects  - PFState objects (pfhistory.pf.iter_states); and the same
                 with the chapter's attributes read on every state, beside
                 py-pf doing the same (its objects are built eagerly, ours on access)
  (c) states   - `pfhistory states -vv FILE > /dev/null`, a real subprocess
  py-pf        - PFState construction, and construction plus str()

Figures are states per second and ratios measured in the same run.
"""

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RECORD = 264
CHUNK = 16384

# The whole record, big-endian where pf_state_export() wrote big-endian.
_KEY = "16s16sHHHBx"
_PEER = "HBBI" "IIIHHBB6x"
STDLIB_FORMAT = (">Q16s" + _KEY * 2 + _PEER * 2 + "16s" + "IIIII" + "QQQQ" + "I" + "ii"
                 + "H" + "BBBBBBBBBB" + "H" + "BB")
assert struct.calcsize(STDLIB_FORMAT) == RECORD


def _chunks(path, limit=None):
    with open(path, "rb") as f:
        done = 0
        while limit is None or done < limit:
            want = CHUNK if limit is None else min(CHUNK, limit - done)
            data = f.read(want * RECORD)
            if not data:
                return
            done += len(data) // RECORD
            yield data


def measure_columns(path, limit):
    from pfhistory import sources

    n = 0
    for columns in sources.iter_columns(path, chunk_records=CHUNK):
        for name in columns.names():
            columns[name]
        n += columns.n
    return n


def measure_stdlib(path, limit):
    unpack = struct.Struct(STDLIB_FORMAT).iter_unpack
    n = 0
    for data in _chunks(path):
        rows = list(unpack(data))
        columns = list(zip(*rows))  # the same column lists (a) hands out
        n += len(columns[0]) if columns else 0
    return n


# The attributes of the chapter "Managing state tables", read on every state
# by the "read" measures (py-pf builds them all up front; pfhistory on access).
ATTRIBUTES = ("id", "ifname", "rule", "anchor", "creation", "expire", "packets", "bytes",
              "creatorid", "af", "proto", "direction", "state_flags", "sync_flags")


def _read_all(state):
    for name in ATTRIBUTES:
        getattr(state, name)
    for peer in (state.src, state.dst):
        peer.seqlo, peer.seqhi, peer.state, peer.max_win, peer.wscale
    for key in (state.nk, state.sk):
        key.addr[0], key.addr[1], key.port[0], key.port[1], key.rdomain


def measure_objects(path, limit, read=False):
    from pfhistory import pf

    n = 0
    for state in pf.iter_states(path):
        if read:
            _read_all(state)
        n += 1
    return n


def measure_pypf(path, limit, with_str=False, read=False):
    import pf._struct as pypf_struct
    import pf.state as pypf_state

    n = 0
    for data in _chunks(path, limit):
        count = len(data) // RECORD
        array = (pypf_struct.pfsync_state * count).from_buffer_copy(data)
        for record in array:
            if record.af != 2:
                # py-pf cannot decode IPv6 records on a non-OpenBSD host
                # (KeyError on af 24); they are left out of its count.
                continue
            state = pypf_state.PFState(record)
            if read:
                _read_all(state)
            if with_str:
                str(state)
            n += 1
    return n


MEASURES = {
    "columns": measure_columns,
    "stdlib": measure_stdlib,
    "objects": measure_objects,
    "objects_read": lambda path, limit: measure_objects(path, limit, read=True),
    "pypf": measure_pypf,
    "pypf_read": lambda path, limit: measure_pypf(path, limit, read=True),
    "pypf_str": lambda path, limit: measure_pypf(path, limit, with_str=True),
}


def peak_rss_kb():
    """This process's peak resident memory. ru_maxrss would do, but Linux
    carries it over from the parent across fork and exec; VmHWM does not."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(name, path, limit):
    start = time.perf_counter()
    n = MEASURES[name](path, limit)
    seconds = time.perf_counter() - start
    print(json.dumps({"states": n, "seconds": seconds, "maxrss_kb": peak_rss_kb()}))


def _run(name, path, limit):
    cmd = [sys.executable, __file__, "--measure", name, "--file", str(path)]
    if limit:
        cmd += ["--pypf-limit", str(limit)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _run_states_cli(path):
    start = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        subprocess.run([sys.executable, "-m", "pfhistory", "states", "-vv", str(path)],
                       check=True, stdout=devnull)
    seconds = time.perf_counter() - start
    return seconds


def _baseline_rss_kb():
    cmd = [sys.executable, "-c",
           "import sys; sys.path.insert(0, sys.argv[1]); import decode, pfhistory.pf; "
           "print(decode.peak_rss_kb())", str(Path(__file__).resolve().parent)]
    return int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def _simulate(states, out):
    from pfhistory.simulate import SimulationConfig, simulate

    cfg = SimulationConfig(states=states, interval=60.0, duration=0.0, seed=1,
                           start=datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc),
                           creatorid=0x1A2B3C4D, missing=())
    start = time.perf_counter()
    result = simulate(cfg, out, truth=False)
    print(f"simulated {states} states in {time.perf_counter() - start:.1f} s")
    return result.snapshots[0][1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=1_000_000)
    parser.add_argument("--file", help="an existing state file instead of simulating one")
    parser.add_argument("--pypf-limit", type=int, default=0,
                        help="records py-pf decodes (default: the whole file)")
    parser.add_argument("--measure", choices=sorted(MEASURES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        _child(args.measure, args.file, args.pypf_limit or None)
        return
    path = Path(args.file) if args.file else _simulate(
        args.states, Path(__file__).resolve().parent / "out" / f"decode-{args.states}")
    size = path.stat().st_size
    print(f"file: {path} ({size / 1e6:.1f} MB, {size // RECORD} states)")
    base_kb = _baseline_rss_kb()
    r = {name: _run(name, path, args.pypf_limit) for name in
         ("columns", "stdlib", "objects", "objects_read", "pypf", "pypf_read", "pypf_str")}
    cli_seconds = _run_states_cli(path)
    rate = {k: v["states"] / v["seconds"] for k, v in r.items()}
    rate["states_cli"] = (size // RECORD) / cli_seconds

    def line(label, key, versus, target=None):
        ratio = rate[key] / rate[versus]
        goal = f"  (target >= {target}x)" if target else ""
        print(f"{label:<44}{rate[key]:>12,.0f} states/s  {ratio:7.1f}x {versus}{goal}")

    print(f"{'py-pf 0.2.3 PFState construction':<44}{rate['pypf']:>12,.0f} states/s")
    print(f"{'py-pf 0.2.3 ... and reading the attributes':<44}{rate['pypf_read']:>12,.0f} states/s")
    print(f"{'py-pf 0.2.3 PFState construction + str()':<44}{rate['pypf_str']:>12,.0f} states/s")
    print(f"{'stdlib struct.iter_unpack to columns':<44}{rate['stdlib']:>12,.0f} states/s")
    line("(a) pfhistory columns (collector values)", "columns", "pypf", 20)
    line("(a) pfhistory columns vs stdlib", "columns", "stdlib", 1)
    line("(b) pfhistory PFState objects", "objects", "pypf", 20)
    line("(b) ... and reading the chapter's attributes", "objects_read", "pypf_read")
    line("(c) pfhistory states -vv (subprocess)", "states_cli", "pypf_str", 20)
    peak = r["columns"]["maxrss_kb"] * 1024
    print(f"(a) peak memory: {peak / 1e6:.0f} MB whole process "
          f"({(peak - base_kb * 1024) / 1e6:.0f} MB above an idle interpreter with "
          f"pfhistory imported), {peak / size:.2f}x the file (target <= 2x)")
    print(f"py-pf decoded {r['pypf']['states']} IPv4 states; IPv6 records it cannot decode "
          f"on Linux are left out of its count")


if __name__ == "__main__":
    main()
