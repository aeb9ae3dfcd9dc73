"""Collector speed, memory and database growth, beside a plain-sqlite3 baseline.

Usage:  python bench/collect.py [--states 100000 1000000] [--repeat 3] [--keep DIR]

For each size: a simulated snapshot (the first collection), then a steady-state
snapshot made from it: 5% of states gone, 5% new, every other state with
grown counters and a new expiry, a third of them with changed TCP peers.
Each collection runs in a fresh subprocess (`pfhistory collect`), so peak
memory (VmHWM) is that collection's, and its CPU seconds are printed beside
the wall-clock ones (on a shared machine the difference is mostly time other
processes held the CPU). The baseline records the same rows into the same
tables with the sqlite3 module's executemany, no SQLAlchemy, in the same
run, on the same files.
"""

import argparse
import json
import os
import random
import resource
import sqlite3
import statistics
import struct
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RECORD = 264
T0 = int(datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc).timestamp())


def make_steady(first, out, seed=1):
    """The steady-state snapshot: 5% gone, 5% new, all counters grown, a third
    with changed TCP peers (seqlo/seqhi, and ESTABLISHED -> FIN_WAIT_2 for some)."""
    rng = random.Random(seed)
    data = first.read_bytes()
    n = len(data) // RECORD
    ids = struct.unpack_from
    max_id = max(ids(">Q", data, i * RECORD)[0] for i in range(n))
    records = []
    gone = set(rng.sample(range(n), n // 20))
    u64 = struct.Struct(">Q")
    u32 = struct.Struct(">I")
    for i in range(n):
        if i in gone:
            continue
        rec = bytearray(data[i * RECORD:(i + 1) * RECORD])
        for off in (204, 212, 220, 228):       # packets[2], bytes[2] (BE u64 each)
            u64.pack_into(rec, off, u64.unpack_from(rec, off)[0] + rng.randrange(1, 5000))
        u32.pack_into(rec, 196, u32.unpack_from(rec, 196)[0] + 60)      # creation: 60 s older
        u32.pack_into(rec, 200, rng.randrange(30, 86400))                # expire
        if i % 3 == 0 and rec[251] == 6:
            for peer in (104, 136):
                seqlo = u32.unpack_from(rec, peer + 8)[0]
                u32.pack_into(rec, peer + 8, (seqlo + 1000) & 0xFFFFFFFF)
                u32.pack_into(rec, peer + 12, (seqlo + 66000) & 0xFFFFFFFF)
        records.append(bytes(rec))
    for j in range(n // 20):
        start = rng.randrange(n) * RECORD
        rec = bytearray(data[start:start + RECORD])
        u64.pack_into(rec, 0, max_id + 1 + j)
        u32.pack_into(rec, 196, rng.randrange(0, 60))
        records.append(bytes(rec))
    out.write_bytes(b"".join(records))
    os.utime(out, (T0 + 60, T0 + 60))
    return out


ROLLUP_S = {}


def run_collect(db, snapshot):
    """`pfhistory collect` in a subprocess; seconds, CPU seconds and peak RSS (bytes).

    Both snapshots are dated in one UTC hour (the first one second after T0, the
    steady one at T0 + 60), so neither run completes an hour and the figures are a
    collection's: the hourly rollup pass, once an hour, is bench/rollup.py's."""
    at = max(int(os.stat(snapshot).st_mtime), T0 + 1)
    code = ("import sys, time; sys.path.insert(0, sys.argv[3]); from decode import peak_rss_kb; "
            "from pfhistory.cli import main; t = time.perf_counter(); c = time.process_time(); "
            "rc = main(['collect', '-v', '--db', sys.argv[1], '--from-file', sys.argv[2], "
            "'--at', sys.argv[4]]); "
            "print(time.perf_counter() - t, time.process_time() - c, peak_rss_kb()); "
            "sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, str(db), str(snapshot),
                          str(Path(__file__).resolve().parent),
                          datetime.fromtimestamp(at, timezone.utc).isoformat()],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    *said, last = out.stdout.strip().splitlines()
    seconds, cpu, rss = last.split()
    # -v says how long rolling up the hours the collection completed took
    # (pfhistory.rollup): part of the run, shown apart because the baseline makes
    # none; 0 here, as neither collection completes an hour.
    ROLLUP_S[str(snapshot)] = int(said[-1].rsplit("rollups ", 1)[1].split()[0]) / 1000
    return float(seconds), float(cpu), int(rss) * 1024


def run_baseline(db, snapshot, collection_id):
    """The same rows with plain sqlite3 executemany, in a subprocess."""
    out = subprocess.run([sys.executable, __file__, "--baseline", str(db), str(snapshot),
                          str(collection_id)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    seconds, cpu, rss = out.stdout.split()
    return float(seconds), float(cpu), int(rss) * 1024


def baseline(db, snapshot, collection_id):
    """A minimal collector: our decoder, then sqlite3 executemany of the same
    rows pfhistory writes (states, keys, peers, addresses; samples, peer samples,
    updates and closes for a steady-state collection). No SQLAlchemy."""
    from pfhistory import sources
    from pfhistory.addresses import ntop
    from pfhistory.models import PEER_FIELDS
    from pfhistory.pf import ifname_text

    started = time.perf_counter()
    cpu_started = time.process_time()
    t = int(os.stat(snapshot).st_mtime)
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA synchronous = FULL")
    con.execute("BEGIN IMMEDIATE")
    open_ = {(c, s): (pk, d, ca, ea, ph) for c, s, pk, d, ca, ea, ph in con.execute(
        "SELECT creatorid, state_id, pk, dyn_hash, created_at, expires_at, peer_hash "
        "FROM states WHERE ended_before IS NULL")}
    next_pk = (con.execute("SELECT max(pk) FROM states").fetchone()[0] or 0) + 1
    next_addr = (con.execute("SELECT max(id) FROM addresses").fetchone()[0] or 0) + 1
    addr_ids = {(af, bytes(b)): i for i, af, b in con.execute("SELECT id, af, bin FROM addresses")}
    con.execute("INSERT INTO collections (id, collected_at, source, host, creatorid, states, "
                "inserted, updated, reopened, closed, packets, bytes, samples, duration_ms) "
                "VALUES (?, ?, ?, 'bench', NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
                (collection_id, t, str(snapshot)))
    peer_names = [f"{side}_{f}" for side in ("src", "dst") for f in PEER_FIELDS]
    for c in sources.iter_columns(snapshot):
        uniq = c["uniq"]
        created = [t - x for x in c["creation"]]
        expires = [t + x for x in c["expire"]]
        cols = {name: c[name] for name in (
            "creatorid", "id", "dyn_hash", "peer_hash", "rule", "anchor", "nat_rule", "proto",
            "direction", "af", "log", "rt", "rtableid0", "rtableid1", "max_mss", "min_ttl", "set_tos",
            "set_prio0", "set_prio1", "packets0", "packets1", "bytes0", "bytes1", "timeout",
            "sync_flags", "updates", "state_flags", "ifname_ref", *peer_names,
            *(f"{s}_{f}" for s in ("wire", "stack") for f in
              ("af", "addr0_ref", "port0", "addr1_ref", "port1", "rdomain")))}
        new_states, keys, peers, addresses, changed, samples = [], [], [], [], [], []
        peer_samples = []
        for i in range(c.n):
            key = (cols["creatorid"][i], cols["id"][i])
            rec = open_.pop(key, None)
            dyn = (cols["dyn_hash"][i], created[i], expires[i], cols["packets0"][i],
                   cols["packets1"][i], cols["bytes0"][i], cols["bytes1"][i],
                   cols["timeout"][i], cols["sync_flags"][i], cols["updates"][i],
                   cols["state_flags"][i])
            if rec is not None:
                if rec[1:4] != dyn[:3]:
                    changed.append((*dyn, cols["peer_hash"][i], collection_id, rec[0]))
                    samples.append((rec[0], collection_id))
                    if rec[4] != cols["peer_hash"][i]:
                        peer_samples.append((rec[0], collection_id))
                        for side, prefix in ((0, "src_"), (1, "dst_")):
                            peers.append(("update", tuple(cols[prefix + f][i]
                                                          for f in PEER_FIELDS)
                                          + (rec[0], side)))
                continue
            pk = next_pk
            next_pk += 1
            ids = []
            for side in ("wire", "stack"):
                for ref in (cols[f"{side}_addr0_ref"][i], cols[f"{side}_addr1_ref"][i]):
                    _k, af, raw = uniq[ref]
                    b = raw[:4] if af == 2 else raw
                    if (af, b) not in addr_ids:
                        addr_ids[(af, b)] = next_addr
                        addresses.append((next_addr, af, b, ntop(af, raw)))
                        next_addr += 1
                    ids.append(addr_ids[(af, b)])
            new_states.append((pk, key[0], key[1], ifname_text(uniq[cols["ifname_ref"][i]][2]),
                               *(cols[n][i] for n in (
                                   "rule", "anchor", "nat_rule", "proto", "direction", "af",
                                   "log", "rt")), None,
                               *(cols[n][i] for n in ("rtableid0", "rtableid1", "max_mss",
                                                      "min_ttl", "set_tos", "set_prio0",
                                                      "set_prio1")),
                               created[i], expires[i], *dyn[3:], dyn[0], collection_id,
                               collection_id, None, None, None, None, cols["peer_hash"][i]))
            both = [(cols[f"{side}_af"][i], ids[2 * side_no], cols[f"{side}_port0"][i],
                     ids[2 * side_no + 1], cols[f"{side}_port1"][i], cols[f"{side}_rdomain"][i])
                    for side_no, side in enumerate(("wire", "stack"))]
            keys.append((pk, 0, *both[0], int(both[0] == both[1])))
            keys.append((pk, 1, *both[1], 0))
            for side_no, prefix in ((0, "src_"), (1, "dst_")):
                peers.append(("insert", (pk, side_no,
                                         *(cols[prefix + f][i] for f in PEER_FIELDS))))
        con.executemany(f"INSERT INTO addresses VALUES (?, ?, ?, ?)", addresses)
        # The first 38 columns as migrations made them (later ones stay NULL).
        names = [r[1] for r in con.execute("PRAGMA table_info(states)")][:38]
        con.executemany(f"INSERT INTO states ({', '.join(names)}) "
                        f"VALUES ({', '.join('?' * 38)})", new_states)
        con.executemany("INSERT INTO state_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", keys)
        con.executemany(f"INSERT INTO state_peers VALUES ({', '.join('?' * 13)})",
                        [p for kind, p in peers if kind == "insert"])
        # The previous values become samples (and peers, where they changed, peer
        # samples), then the rows take the new ones.
        con.executemany(
            "INSERT INTO samples SELECT s.pk, ?, s.values_since, 1, s.created_at, s.expires_at, "
            "s.packets0, s.packets1, s.bytes0, s.bytes1, s.timeout, s.sync_flags, s.updates, "
            "s.state_flags FROM states s WHERE s.pk = ?",
            [(cid, pk) for pk, cid in samples])
        con.executemany(
            "INSERT INTO peer_samples SELECT ps.state_pk, ?, "
            + ", ".join(f"ps.{f}" for f in PEER_FIELDS) + ", "
            + ", ".join(f"pd.{f}" for f in PEER_FIELDS) + " FROM state_peers ps "
            "JOIN state_peers pd ON pd.state_pk = ps.state_pk AND pd.side = 1 "
            "WHERE ps.state_pk = ? AND ps.side = 0",
            [(cid, pk) for pk, cid in peer_samples])
        con.executemany(
            "UPDATE states SET dyn_hash = ?, created_at = ?, expires_at = ?, packets0 = ?, "
            "packets1 = ?, bytes0 = ?, bytes1 = ?, timeout = ?, sync_flags = ?, updates = ?, "
            "state_flags = ?, peer_hash = ?, values_since = ? WHERE pk = ?", changed)
        con.executemany(
            "UPDATE state_peers SET " + ", ".join(f"{f} = ?" for f in PEER_FIELDS)
            + " WHERE state_pk = ? AND side = ?", [p for kind, p in peers if kind == "update"])
    con.executemany("UPDATE states SET last_seen = ?, ended_before = ? WHERE pk = ?",
                    [(collection_id - 1, collection_id, rec[0]) for rec in open_.values()])
    con.execute("COMMIT")
    con.close()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from decode import peak_rss_kb

    print(time.perf_counter() - started, time.process_time() - cpu_started, peak_rss_kb())


def db_size(db):
    return sum(os.path.getsize(p) for p in (db, Path(f"{db}-wal")) if os.path.exists(p))


def checkpoint(db):
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def table_bytes(db, table):
    """Bytes a table and its indexes take (dbstat), if SQLite has dbstat."""
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ? OR name IN "
                           "(SELECT name FROM sqlite_master WHERE tbl_name = ? AND type = 'index')",
                           (table, table)).fetchone()[0] or 0
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()


def sample_bytes(db):
    """Bytes of both kinds of samples (values, and peers where they changed)."""
    sizes = [table_bytes(db, table) for table in ("samples", "peer_samples")]
    return None if None in sizes else sum(sizes)


def first_snapshot(states, work):
    """The simulated first snapshot of a firewall of that many states, dated T0;
    made once and kept in work."""
    from pfhistory.simulate import SimulationConfig, simulate

    work.mkdir(parents=True, exist_ok=True)
    first = work / f"first-{states}.pfstate"
    if not first.exists():
        cfg = SimulationConfig(states=states, interval=60.0, duration=0.0, seed=1,
                               start=datetime.fromtimestamp(T0, timezone.utc),
                               creatorid=0x1A2B3C4D, missing=())
        (_, path), = simulate(cfg, work / f"sim-{states}", truth=False).snapshots
        path.rename(first)
        os.utime(first, (T0, T0))
    return first


def measure(label, states, work, first, steady):
    """One run of a collector (pfhistory, or the baseline): a fresh database, the
    first collection, then the steady one; their times and the database growth."""
    runner = run_baseline if label == "baseline" else None
    n_first = first.stat().st_size // RECORD
    db = work / f"{label}-{states}.db"
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if p.exists():
            p.unlink()
    # Both start from pfhistory's schema (made by `pfhistory db upgrade`).
    subprocess.run([sys.executable, "-m", "pfhistory", "db", "upgrade", "--db", str(db)],
                   check=True, capture_output=True)
    checkpoint(db)
    empty = db_size(db)
    s1, c1, m1 = run_collect(db, first) if runner is None else runner(db, first, 1)
    checkpoint(db)
    after_first = db_size(db)
    samples_before = sample_bytes(db) or 0
    s2, c2, m2 = run_collect(db, steady) if runner is None else runner(db, steady, 2)
    checkpoint(db)
    samples_after = sample_bytes(db)
    return {
        "first_s": s1, "first_cpu": c1, "first_rss": m1,
        "steady_s": s2, "steady_cpu": c2, "steady_rss": m2,
        "bytes_per_state": (after_first - empty) / n_first,
        "sample_bytes": None if samples_after is None else samples_after - samples_before,
    }


def bench(states, work, repeat=3):
    first = first_snapshot(states, work)
    steady = make_steady(first, work / f"steady-{states}.pfstate")
    n_first = first.stat().st_size // RECORD
    n_steady = steady.stat().st_size // RECORD

    # The two collectors take turns, repeat times each, and each figure is the
    # median of its runs: on a shared machine one run can be a quarter slower
    # than the next for reasons of its neighbours.
    runs = {"pfhistory": [], "baseline": []}
    for _ in range(repeat):
        for label, got in runs.items():
            got.append(measure(label, states, work, first, steady))
    results = {label: {key: statistics.median(run[key] for run in got)
                       if key.endswith(("_s", "_cpu", "_rss")) else got[-1][key]
                       for key in got[0]}
               for label, got in runs.items()}
    for label, got in runs.items():
        results[label]["runs"] = got
    p, b = results["pfhistory"], results["baseline"]
    print(f"\n== {states:,} states (first collection {n_first:,} states, steady {n_steady:,}; "
          f"median of {repeat} runs each) ==")
    print(f"{'':28}{'pfhistory':>14}{'baseline':>14}{'ratio':>8}   pfhistory's runs")
    # CPU seconds of the collecting process: on a shared machine, wall time
    # also counts the time other processes held the CPU.
    for name, key in (("first collection, s", "first_s"), ("steady collection, s", "steady_s"),
                      ("first, CPU s", "first_cpu"), ("steady, CPU s", "steady_cpu")):
        each = " ".join(f"{run[key]:.1f}" for run in runs["pfhistory"])
        print(f"{name:28}{p[key]:>14.2f}{b[key]:>14.2f}{p[key] / b[key]:>8.2f}   {each}")
    for name, key, n in (("first, states/s", "first_s", n_first),
                         ("steady, states/s", "steady_s", n_steady)):
        print(f"{name:28}{n / p[key]:>14,.0f}{n / b[key]:>14,.0f}")
    for name, key in (("first, peak RSS MB", "first_rss"), ("steady, peak RSS MB", "steady_rss")):
        print(f"{name:28}{p[key] / 1e6:>14.0f}{b[key] / 1e6:>14.0f}")
    print(f"{'db growth per new state, B':28}{p['bytes_per_state']:>14.0f}"
          f"{b['bytes_per_state']:>14.0f}")
    print(f"{'of which rollups, s':28}{ROLLUP_S.get(str(first), 0):>14.2f} first, "
          f"{ROLLUP_S.get(str(steady), 0):.2f} steady   (hourly: bench/rollup.py)")
    if p["sample_bytes"] is not None:
        per_collection = p["sample_bytes"]
        print(f"{'samples per collection, MB':28}{per_collection / 1e6:>14.1f}"
              f"   (every state changed; x1440 a day = {per_collection * 1440 / 1e9:.1f} GB)")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--keep", default=str(Path(__file__).resolve().parent / "out" / "collect"))
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each collector per size; figures are their medians")
    parser.add_argument("--baseline", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        db, snapshot, cid = args.baseline
        baseline(db, snapshot, int(cid))
        return
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    all_results = {n: bench(n, Path(args.keep), args.repeat) for n in args.states}
    Path(args.keep, "results.json").write_text(json.dumps(all_results, indent=2))


if __name__ == "__main__":
    main()
