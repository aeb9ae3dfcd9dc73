"""The `pfhistory` command line: one argparse parser, one sub-command per job.

argparse rather than click keeps the collector's runtime dependencies to
cffi, SQLAlchemy and alembic on small firewalls. Every PFError becomes one
sentence on stderr and exit status 1; usage errors exit 2.
"""

import argparse
import os
import sys

from pfhistory import _version
from pfhistory.exceptions import PFError

__all__ = ["main", "build_parser"]

PROG = "pfhistory"
_MAX_INT64 = 2**63 - 1   # the database's integers


class _Parser(argparse.ArgumentParser):
    """argparse, with examples kept verbatim in the help text, and a usage error
    said in one line (argparse prints the whole usage first)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse, but arguments no command knows are blamed on the command
        given (argparse names the top level, whose help does not list them)."""
        argv = list(sys.argv[1:] if args is None else args)
        parsed, extras = self.parse_known_args(argv, namespace)
        if extras:
            commands = getattr(self, "commands", None)   # set by build_parser
            name = getattr(parsed, commands.dest, None) if commands is not None else None
            if name is None:
                self.error(f"unrecognized arguments: {' '.join(extras)}")
            # An option before the command (pfhistory --db X show): the command's own.
            early = [a for a in argv[:argv.index(name)] if a in extras]
            if early:
                self.error(f"{early[0]} given before the command: options go after it "
                           f"({self.prog} {name} {early[0]} ...)")
            commands.choices[name].error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _add_states(sub):
    p = sub.add_parser(
        "states",
        help="print a pfctl -S state file as pfctl -ss would",
        description="Print a pfctl -S state file exactly as `pfctl -ss` printed it "
                    "on the firewall that wrote it.",
        epilog="Example:\n  pfhistory states /var/db/states.pf -vv -i em0\n",
    )
    p.add_argument("file", help="a state file written by `pfctl -S FILE`")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v adds counters and age, -vv also the id line (as pfctl)")
    p.add_argument("-i", "--interface", metavar="IFNAME",
                   help="only states on this interface (pfctl -i)")
    p.add_argument("-R", "--rule", metavar="RULE", type=_rule_number,
                   help="only states created by this rule number (pfctl -R)")
    p.set_defaults(func=_cmd_states)


def _rule_number(text):
    try:
        n = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rule number") from None
    if not 0 <= n <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rule number")
    return n


def _cmd_states(args):
    from pfhistory.statetext import write_states

    write_states(args.file, sys.stdout, verbose=min(args.verbose, 2),
                 ifname=args.interface, rule=args.rule)
    return 0


def _add_simulate(sub):
    p = sub.add_parser(
        "simulate",
        help="write a simulated firewall's state files (pfctl -S snapshots)",
        description="Simulate a busy OpenBSD firewall and write one pfctl -S state file "
                    "per snapshot, named and dated by its snapshot time. Seeded: the "
                    "same arguments always write the same bytes.",
        epilog="Examples:\n  pfhistory simulate --out /tmp/fw --states 5000 "
               "--interval 1m --duration 1h --seed 7 --truth\n"
               "  pfhistory simulate --pfsync /tmp/fw.pcap --states 5000 --duration 10m\n"
               "  pfhistory simulate --pfsync /tmp/fw.pcap --send 224.0.0.240 "
               "--send-iface em1\n",
    )
    p.add_argument("--out", metavar="DIR",
                   help="directory for the snapshots: a new or empty one (one already "
                        "holding files is refused, so two runs never mix)")
    p.add_argument("--states", type=_positive_int, default=1000,
                   help="concurrent states (default 1000, up to 2000000)")
    p.add_argument("--interval", default="60s", help="time between snapshots (default 60s)")
    p.add_argument("--duration", default="1h", help="simulated time (default 1h)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--start", help="time of the first snapshot (default 2026-11-24T22:00Z)")
    p.add_argument("--creatorid", type=_hex_u32, default=0x1A2B3C4D,
                   help="the firewall's hostid in hex (default 1a2b3c4d)")
    p.add_argument("--missing", default="", metavar="I,J,...",
                   help="snapshot indexes not written, to model missed cron runs (0 is "
                        "the first; --duration 1h with the default --interval is 0 to 60)")
    p.add_argument("--truth", action="store_true",
                   help="also write the simulator's ground truth (truth.jsonl)")
    p.add_argument("--pfsync", metavar="PCAP",
                   help="instead of snapshots, write the firewall's changes as the pfsync "
                        "packets OpenBSD sends (a pcap file, dated by simulated time)")
    p.add_argument("--send", metavar="ADDR",
                   help="also send those packets to ADDR now (raw IP, root), e.g. "
                        "224.0.0.240 or a listener's unicast address")
    p.add_argument("--send-iface", metavar="NAME", help="interface for multicast --send")
    p.add_argument("--pps", type=_positive_int, default=20000,
                   help="packets per second --send sends at most (default 20000)")
    p.set_defaults(func=_cmd_simulate)


def _positive_int(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    if n > _MAX_INT64:
        raise argparse.ArgumentTypeError(f"{text!r} is too large (at most {_MAX_INT64})")
    return n


# SQLite's busy timeout is a 32-bit count of milliseconds.
_MAX_WAIT_S = (2**31 - 1) // 1000


def _wait_seconds(text):
    try:
        wait = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= wait <= _MAX_WAIT_S:   # also refuses nan
        raise argparse.ArgumentTypeError(
            f"{text!r} is not between 0 and {_MAX_WAIT_S} seconds (24 days)")
    return wait


def _at_least_one(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text!r}")
    if n > _MAX_INT64:
        raise argparse.ArgumentTypeError(f"{text!r} is too large (at most {_MAX_INT64})")
    return n


def _hex_u32(text):
    try:
        n = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a hex number") from None
    if not 0 <= n <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} does not fit in 32 bits")
    return n


def _cmd_simulate(args):
    from datetime import datetime, timezone

    from pfhistory.simulate import SimulationConfig, simulate
    from pfhistory.timespec import parse_duration, parse_time

    if args.states > 2_000_000:
        raise PFError(f"--states {args.states} is more than the simulator's 2000000")
    interval = parse_duration(args.interval, "--interval")
    duration = parse_duration(args.duration, "--duration")
    if interval <= 0:
        raise PFError("--interval must be longer than zero")
    start = (parse_time(args.start, what="--start") if args.start
             else datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc))
    try:
        missing = tuple(int(x) for x in args.missing.split(",") if x.strip())
    except ValueError:
        raise PFError(f"--missing {args.missing!r} is not a list of snapshot numbers") from None
    if args.pfsync or args.send:
        if args.out or args.truth or missing:
            raise PFError("--pfsync writes packets, not snapshots: leave out --out, --truth "
                          "and --missing")
        if not args.pfsync:
            raise PFError("--send needs --pfsync PCAP (the packets sent are also written there)")
        from pfhistory import syncsim

        cfg = SimulationConfig(states=args.states, interval=interval, duration=duration,
                               seed=args.seed, start=start, creatorid=args.creatorid)
        # A capture written to standard output (/dev/stdout, > file) must not get our
        # line appended: it would read as a truncated packet.
        said = sys.stderr if _is_standard_output(args.pfsync) else sys.stdout
        sent = syncsim.write_and_send(cfg, args.pfsync, send=args.send,
                                      iface=args.send_iface, pps=args.pps)
        print(f"{args.pfsync}: {sent} pfsync packets", file=said)
        return 0
    if not args.out:
        raise PFError("give --out DIR for snapshots, or --pfsync PCAP for pfsync packets")
    cfg = SimulationConfig(states=args.states, interval=interval, duration=duration,
                           seed=args.seed, start=start, creatorid=args.creatorid,
                           missing=missing)
    last = cfg.snapshot_count - 1
    for index in cfg.missing:
        if not 0 <= index <= last:
            raise PFError(f"--missing {index} is out of range: this run's snapshots are "
                          f"0 to {last}")
    _refuse_used_directory(args.out)
    try:
        result = simulate(cfg, args.out, truth=args.truth)
    except OSError as e:
        raise PFError(f"--out {args.out}: cannot write the snapshots: {e.strerror}") from None
    for when, path in result.snapshots:
        print(path)
    return 0


def _refuse_used_directory(out):
    """--out must be new or empty: snapshots of another run left beside this
    one's (other times, other seeds, a stale truth.jsonl) would be collected
    as one firewall's history."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise PFError(f"--out {out}: exists and is not a directory")
    try:
        entries = sorted(os.listdir(out))
    except (FileNotFoundError, NotADirectoryError):
        return      # to be made (making it says what is in the way)
    except OSError as e:
        raise PFError(f"--out {out}: cannot read the directory: {e.strerror}") from None
    if entries:
        more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
        raise PFError(f"--out {out}: already holds {entries[0]}{more}; give a new or empty "
                      f"directory (remove the old snapshots first to simulate again)")


def _add_db_option(p):
    p.add_argument("--db", metavar="URL",
                   help="SQLAlchemy URL or SQLite file path (default: $PFHISTORY_DB, "
                        "else /var/db/pfhistory/history.db on OpenBSD; elsewhere "
                        "/var/lib/pfhistory/history.db for root, "
                        "~/.local/share/pfhistory/history.db for other users, under "
                        "$XDG_DATA_HOME if set)")


def _add_collect(sub):
    p = sub.add_parser(
        "collect",
        help="record the state table (or state files) into the history",
        description="Record one collection per snapshot: the live table (/dev/pf, OpenBSD "
                    "only) or each --from-file in order, dated --at or by the file's mtime; "
                    "then add every UTC hour it completed to the hourly rollups reports "
                    "read. Quiet on success unless -v; one line and a non-zero exit on "
                    "failure. A snapshot older than the newest collection is refused.",
        epilog="Examples:\n  pfhistory collect                      # cron, every minute\n"
               "  pfhistory collect --db /tmp/h.db --from-file /tmp/fw/states-*.pfstate -v\n"
               "  pfhistory collect --db /tmp/h.db --from-pcap /tmp/pfsync.pcap -v\n",
    )
    _add_db_option(p)
    p.add_argument("--from-file", nargs="+", metavar="PATH",
                   help="pfctl -S state files, recorded in the order given")
    p.add_argument("--from-pcap", metavar="FILE",
                   help="a pcap or pcapng capture of pfsync traffic (tcpdump -w on the sync "
                        "interface), recorded as pfsync events dated by packet time")
    _add_batch_options(p)
    p.add_argument("--at", metavar="TIME",
                   help="when the snapshot was taken (ISO 8601, local unless an offset is "
                        "given); default: now, or the file's mtime")
    p.add_argument("--sample-retention", default="24h", metavar="DURATION",
                   help="how long per-collection samples are kept (default 24h)")
    p.add_argument("--local-networks", metavar="CIDR,...",
                   help="which addresses are local hosts in reports, kept for later runs "
                        "(default: 10/8, 172.16/12, 192.168/16, 100.64/10, 169.254/16, "
                        "fc00::/7, fe80::/10)")
    p.add_argument("--wait", type=_wait_seconds, default=30.0, metavar="SECONDS",
                   help="how long to wait for another collector to finish (default 30)")
    p.add_argument("--no-rollups", action="store_true",
                   help="leave the hours its snapshots complete to `pfhistory rollup` (a "
                        "second cron line), so a big table's hourly pass never delays the "
                        "next minute")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="one line per collection, ending with how long rolling up the hours "
                        "it completed took (rollups N ms); with --from-pcap one line in all")
    p.add_argument("--syslog", action="store_true",
                   help="also send failures, and with -v each collection's line, to syslog "
                        "(daemon facility)")
    p.set_defaults(func=_cmd_collect)


def _add_rollup(sub):
    p = sub.add_parser(
        "rollup",
        help="add the complete hours not yet rolled up to the hourly rollups",
        description="Add every complete UTC hour not yet in the rollups reports read, oldest "
                    "first, as collect does after each collection. For firewalls whose hourly "
                    "pass takes a good part of a minute: collect --no-rollups every minute, "
                    "and this a few minutes past each hour. It reads while collectors write "
                    "and holds the write lock only to store each hour. It must run within "
                    "the sample retention (24h by default), while the hours' samples are kept.",
        epilog="Example:\n  pfhistory rollup -v --db /var/db/pfhistory/history.db\n",
    )
    _add_db_option(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say how many hours were added and how long it took")
    p.add_argument("--syslog", action="store_true", help="also send failures to syslog")
    p.set_defaults(func=_cmd_rollup)


def _cmd_rollup(args):
    from pfhistory import rollup
    from pfhistory.db import require_current_schema

    url, engine = _open_db(args.db)
    try:
        require_current_schema(engine, url)
        hours, ms = rollup.timed_roll_up(engine)
        if args.verbose:
            _say(args, f"{hours} hour(s) rolled up in {ms} ms")
    finally:
        engine.dispose()
    return 0


def _add_batch_options(p):
    p.add_argument("--batch-packets", type=_at_least_one, default=512, metavar="N",
                   help="pfsync: one transaction per N packets at most (default 512)")
    p.add_argument("--batch-ms", type=_at_least_one, default=200, metavar="MS",
                   help="pfsync: or per MS milliseconds of traffic (default 200)")


def _pfsync_summary(recorder):
    t, bad = recorder.totals, recorder.malformed
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(bad.items()))
    return (f"{t['packets']} packets ({sum(bad.values())} malformed"
            f"{': ' + reasons if reasons else ''}), {t['messages']} messages, "
            f"{t['batches']} batches: {t['inserted']} states new, {t['updated']} updated, "
            f"{t['ended']} ended, {t['partial']} partial, {t['stale']} stale; "
            f"rollups {t['rollup_ms']} ms")


def _cmd_collect_pcap(args):
    from pfhistory import collector, queries, rollup, syncrecorder
    from pfhistory.db import require_current_schema, write_transaction

    if args.from_file or args.at is not None:
        raise PFError("--from-pcap takes its times from the packets: leave out "
                      "--from-file and --at")
    retention = _sample_retention(args)
    # A file that is no capture, or dated in the future, is refused before any database.
    span = syncrecorder.capture_span(args.from_pcap)
    collector.refuse_future(args.from_pcap, span[1], "its last packet")
    networks = (rollup.parse_networks(args.local_networks)
                if args.local_networks is not None else None)
    url, engine = _open_db(args.db, create=True, wait=args.wait)
    try:
        require_current_schema(engine, url, create=True)
        if networks is not None:
            with write_transaction(engine) as conn:
                queries.set_setting(conn, rollup.LOCAL_NETWORKS_SETTING, ",".join(networks))
        # Rolls up every hour the batches complete, as they complete (not with --no-rollups).
        recorder = syncrecorder.ingest_capture(
            engine, args.from_pcap, batch_packets=args.batch_packets, batch_ms=args.batch_ms,
            sample_retention=retention, rollups=not args.no_rollups, span=span)
        if args.verbose:
            _say(args, f"{args.from_pcap}: {_pfsync_summary(recorder)}")
    finally:
        engine.dispose()
    return 0


def _cmd_collect(args):
    from pfhistory import collector, queries, rollup

    if args.from_pcap:
        return _cmd_collect_pcap(args)
    retention = _sample_retention(args)
    networks = (rollup.parse_networks(args.local_networks)
                if args.local_networks is not None else None)
    snapshots = _snapshots(args)
    _check_before_writing(args, snapshots)
    url, engine = _open_db(args.db, create=True, wait=args.wait)
    try:
        from pfhistory.db import require_current_schema, write_transaction

        require_current_schema(engine, url, create=True)
        if networks is not None:
            with write_transaction(engine) as conn:
                queries.set_setting(conn, rollup.LOCAL_NETWORKS_SETTING, ",".join(networks))
        for snapshot in snapshots:
            result = collector.record_snapshot(engine, snapshot,
                                               sample_retention=retention)
            # The hours this collection completed go into the rollups now, while
            # their samples are kept (own transactions: the collection is safe);
            # with --no-rollups, `pfhistory rollup` does it from its own cron line.
            _hours, rollup_ms = (0, 0) if args.no_rollups else rollup.timed_roll_up(engine)
            if args.verbose:
                _say(args, f"{snapshot.origin}: collection {result.collection_id}: "
                           f"{result.states} states, {result.inserted} new, "
                           f"{result.updated} changed, {result.reopened} reopened, "
                           f"{result.closed} closed, {result.samples} samples, "
                           f"{result.duration_ms} ms, rollups {rollup_ms} ms")
    finally:
        engine.dispose()
    return 0


def _sample_retention(args):
    """--sample-retention in whole seconds; none at all is refused: 0 would keep
    no samples (show --at and the hourly rollups read them), not keep them forever."""
    from pfhistory.timespec import parse_duration

    seconds = int(parse_duration(args.sample_retention, "--sample-retention"))
    if seconds < 1:
        raise PFError(f"--sample-retention {args.sample_retention!r} would keep no samples: "
                      f"give at least 1s (default 24h)")
    return seconds


def _check_before_writing(args, snapshots):
    """Bad records anywhere leave nothing written: a new history is not made,
    and of several files none is recorded. Each file is then read twice (the
    check costs a fraction of the recording); a cron run of one file into an
    existing history is not: its one transaction rolls back."""
    from pfhistory import sources
    from pfhistory.db import history_absent, resolve_url

    files = [s.source for s in snapshots if s.source is not None]
    if files and (len(files) > 1 or history_absent(resolve_url(args.db))):
        for path in files:
            sources.check_records(path)


def _snapshots(args):
    """The snapshots to record, checked before anything is written: every file
    readable, in time order, none dated in the future. A wrong date would stay:
    the history only moves forward, and samples expire by it."""
    import filecmp
    import time as _time

    from pfhistory import live, statefile
    from pfhistory.collector import Snapshot, refuse_future
    from pfhistory.timespec import format_epoch, parse_time

    at = int(parse_time(args.at, what="--at").timestamp()) if args.at is not None else None
    now = int(_time.time())
    if not args.from_file:
        if not live.is_openbsd():
            raise PFError(live.NOT_OPENBSD + " (--from-file PATH)")
        # A device it cannot open (not root) is refused before a database is made.
        live.check_device()
        # Without --at, dated when read: after any wait for the write lock.
        snapshots = [Snapshot(None, at if at is not None else now, live.DEFAULT_DEVICE,
                              dated_when_read=at is None)]
    elif at is not None and len(args.from_file) > 1:
        raise PFError("--at gives one time; record one state file with it")
    else:
        snapshots = []
        for path in args.from_file:
            f, _count = statefile.open_state_file(path)
            with f:
                mtime = int(os.fstat(f.fileno()).st_mtime)
            snapshots.append(Snapshot(path, at if at is not None else mtime,
                                      os.path.abspath(path)))
    for before, snapshot in zip([None, *snapshots], snapshots):
        refuse_future(snapshot.origin, snapshot.collected_at,
                      "--at" if at is not None else "its mtime")
        if before is not None and snapshot.collected_at < before.collected_at:
            raise PFError(f"{snapshot.origin}: taken at {format_epoch(snapshot.collected_at)}, "
                          f"before {before.origin} given ahead of it: give the state files "
                          f"oldest first; nothing recorded")
        if before is not None and snapshot.collected_at == before.collected_at and \
                not filecmp.cmp(before.source, snapshot.source, shallow=False):
            # Refused when recorded (collector), after the files before it: so here.
            raise PFError(f"{snapshot.origin}: dated {format_epoch(snapshot.collected_at)}, the "
                          f"same second as {before.origin} but a different table (files copied "
                          f"without their times? cp -p keeps them); nothing recorded")
    return snapshots


def _is_standard_output(path):
    """True if path is the file our standard output writes to."""
    try:
        target, out = os.stat(path), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (target.st_dev, target.st_ino) == (out.st_dev, out.st_ino)


def _open_db(db, create=False, readonly=False, wait=30.0):
    from pfhistory.db import open_engine, resolve_url

    url = resolve_url(db)
    return url, open_engine(url, create=create, readonly=readonly, wait=wait)


def _say(args, line):
    try:
        print(line)
    except BrokenPipeError:
        # The reader went away (collect -v | head): the recording goes on.
        _discard_stdout()
    except _OutputError as e:
        # A full disk under -v's lines: the recording goes on, the run still fails.
        _discard_stdout()
        args.output_error = getattr(args, "output_error", None) or e
    if getattr(args, "syslog", False):
        _syslog(line)


def _syslog(line, error=False):
    try:
        import syslog
    except ImportError:  # pragma: no cover - not on Unix
        return
    syslog.openlog(PROG, 0, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_ERR if error else syslog.LOG_INFO, line)
    syslog.closelog()


def _add_db(sub):
    p = sub.add_parser(
        "db",
        help="manage the history database's schema (upgrade, current, history)",
        description="The history's schema is owned by alembic migrations shipped with "
                    "pfhistory. `collect` creates a new database at the newest schema and "
                    "refuses an older one: run `pfhistory db upgrade` after upgrading.",
        epilog="Examples:\n  pfhistory db upgrade --db /var/db/pfhistory/history.db\n"
               "  pfhistory db current\n  pfhistory db history\n",
    )
    p.add_argument("action", choices=("upgrade", "current", "history"))
    _add_db_option(p)
    p.set_defaults(func=_cmd_db)


def _cmd_db(args):
    from pfhistory.db import current_schema, upgrade_to_head

    if args.action == "history":
        from alembic.script import ScriptDirectory

        from pfhistory.db import alembic_config, resolve_url

        script = ScriptDirectory.from_config(alembic_config(resolve_url(args.db)))
        for rev in script.walk_revisions():
            doc = (rev.doc or "").strip().splitlines()[0] if rev.doc else ""
            print(f"{rev.down_revision or '<base>'} -> {rev.revision}"
                  f"{' (head)' if rev.is_head else ''}, {doc}")
        return 0
    url, engine = _open_db(args.db, create=args.action == "upgrade")
    try:
        if args.action == "current":
            status, revision = current_schema(engine, url)
            print(f"{revision} ({status})" if revision else f"no schema ({status})")
            return 0
        head = upgrade_to_head(engine, url)
        print(f"{url.render_as_string(hide_password=True)}: schema at {head}")
    finally:
        engine.dispose()
    return 0


def _add_prune(sub):
    p = sub.add_parser(
        "prune",
        help="delete states that ended before a time",
        description="Delete states that ended before TIME with their keys, peers and "
                    "samples, in short batches (the write lock is never held for more than "
                    "about a second), and hand freed space back incrementally: never a "
                    "blocking full VACUUM. States the hour not yet rolled up still counts "
                    "are kept until it is: the rollups keep the hourly figures reports "
                    "read, while lists of single connections (the largest ones) lose "
                    "the states pruned.",
        epilog="Examples:\n  pfhistory prune --before 90d\n"
               "  pfhistory prune --before 2026-09-01 --db /var/db/pfhistory/history.db\n",
    )
    _add_db_option(p)
    p.add_argument("--before", required=True, metavar="TIME",
                   help="ISO 8601 time, or a duration back from now (90d)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--syslog", action="store_true", help="also send failures to syslog")
    p.set_defaults(func=_cmd_prune)


def _cmd_prune(args):
    from pfhistory import retention
    from pfhistory.db import require_current_schema
    from pfhistory.timespec import parse_time

    before = int(parse_time(args.before, what="--before").timestamp())
    url, engine = _open_db(args.db)
    try:
        require_current_schema(engine, url)
        states, addresses = retention.prune(engine, before)
        if args.verbose:
            print(f"pruned {states} states and {addresses} addresses"
                  f"{_why_kept(engine, before, states)}")
    finally:
        engine.dispose()
    return 0


def _why_kept(engine, before, pruned):
    """What prune -v adds when states that ended before --before were left, or
    none had: the rollups they wait for, or when the oldest end was."""
    from pfhistory import retention
    from pfhistory.timespec import format_epoch

    waiting, oldest = retention.kept_back(engine, before)
    given = format_epoch(before)
    if waiting:
        return (f"; {waiting} states that ended by {given} are kept until their hour, "
                f"once complete, is in the rollups (the next collect or listen batch, or "
                f"pfhistory rollup)")
    if pruned:
        return ""
    if oldest is None:
        return "; no state has ended yet"
    if oldest > before:
        return f"; no state ended by {given}: the oldest end recorded is {format_epoch(oldest)}"
    return ""


def _fail(args, message):
    print(f"{PROG}: {message}", file=sys.stderr)
    if getattr(args, "syslog", False):
        _syslog(message, error=True)
    return 1


def _add_summary(sub):
    p = sub.add_parser(
        "summary",
        help="a short summary of the history: states, open and closed, top talkers",
        description="How many snapshots (collections of the whole table) and pfsync "
                    "batches the history holds, how many states and of those how many "
                    "are open and closed, and the local and remote hosts that moved the "
                    "most bytes since the history began, the hour not yet complete "
                    "included (pfhistory report tells more).",
        epilog="Example:\n  pfhistory summary --db /var/db/pfhistory/history.db\n",
    )
    _add_db_option(p)
    p.add_argument("--top", type=_at_least_one, default=5, help="talkers to list (default 5)")
    p.set_defaults(func=_cmd_summary)


def _cmd_summary(args):
    from pfhistory import queries, rollup
    from pfhistory.db import require_current_schema
    from pfhistory.timespec import format_time

    url, engine = _open_db(args.db, readonly=True)
    try:
        require_current_schema(engine, url)
        with engine.connect() as conn:
            # The hours not yet rolled up too (the open one): computed, not stored.
            rollup.open_rollups(conn, 0, 1 << 62)
            s = queries.summary(conn, top=args.top, pending=True)
    finally:
        engine.dispose()
    from datetime import datetime, timezone

    def when(epoch):
        return format_time(datetime.fromtimestamp(epoch, timezone.utc)) if epoch else "-"

    n, first, last = s["snapshots"]
    print(f"snapshots: {n} from {when(first)} to {when(last)}" if n else "snapshots: 0")
    n, first, last = s["batches"]
    if n:
        print(f"pfsync batches: {n} from {when(first)} to {when(last)}")
    print(f"states recorded: {s['states']} ({s['open']} open, {s['closed']} closed)")
    for title, rows in (("top local hosts by bytes", s["top_local"]),
                        ("top remote hosts by bytes", s["top_remote"])):
        print(f"{title}:")
        for host, nbytes, nstates in rows:
            print(f"  {host:<40} {nbytes:>16,} bytes  {nstates:>7,} states")
    return 0


def _add_show(sub):
    p = sub.add_parser(
        "show",
        help="past connections from the history, as pfctl -ss or as JSON/CSV",
        description="States from the history, filtered. Text is pfctl's, with the history "
                    "times on a further line; json (one object per line) and csv carry every "
                    "field by its py-pf name, the ends as the connections view names them "
                    "(local_addr, nat_addr, remote_addr and their ports, translated, "
                    "bytes_out, bytes_in) and the history fields. Times are ISO 8601 "
                    "(local time unless an offset is given) or durations back from now "
                    "(90m, 2h, 3d).",
        epilog="Examples:\n"
               "  pfhistory show --host 10.0.1.10 --since 2026-11-24T22:10Z --until 2026-11-24T22:20Z\n"
               "  pfhistory show --nat --host 203.0.113.1 --port 50698 --at 2026-11-24T22:30Z\n"
               "  pfhistory show --port 22 --open --format json\n"
               "  pfhistory show --at 2h -vv                 # the table two hours ago\n",
    )
    _add_db_option(p)
    p.add_argument("--at", metavar="TIME",
                   help="the table as of the collection at or before TIME (a TIME before "
                        "the history is refused; one more than 5 minutes after that "
                        "collection is named on stderr)")
    p.add_argument("--since", metavar="TIME", help="states alive at or after TIME")
    p.add_argument("--until", metavar="TIME", help="states alive at or before TIME")
    p.add_argument("--host", metavar="ADDR|CIDR", help="any endpoint on either key (NAT too)")
    p.add_argument("--local", metavar="ADDR|CIDR",
                   help="the endpoint on the firewall's side of the state's interface, "
                        "pfctl's left-hand address (either key): the sender of an out "
                        "state, the receiver of an in state")
    p.add_argument("--remote", metavar="ADDR|CIDR",
                   help="the other end (either key); a host behind the firewall is the "
                        "remote end of the in states on its own interface")
    p.add_argument("--port", metavar="PORT",
                   help="any endpoint's port; with --host, that address and port together")
    p.add_argument("--proto", metavar="NAME|NUMBER", help="tcp, udp, icmp, 47, ...")
    p.add_argument("--af", choices=("inet", "inet6"))
    p.add_argument("-i", "--interface", metavar="IFNAME")
    p.add_argument("--direction", choices=("in", "out"))
    p.add_argument("-R", "--rule", type=_rule_number, metavar="RULE")
    p.add_argument("--anchor", type=_rule_number, metavar="ANCHOR")
    p.add_argument("--creatorid", type=_hex_u32, metavar="HEX")
    p.add_argument("--id", type=_hex_u64, metavar="HEX", help="the state id, as pfctl prints it")
    p.add_argument("--nat", action="store_true", help="only translated states (wire key != stack key)")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--open", action="store_true", help="only states still open")
    state.add_argument("--closed", action="store_true", help="only states that ended")
    p.add_argument("--min-bytes", type=_positive_int, metavar="N")
    p.add_argument("--min-duration", metavar="DURATION", help="e.g. 3d")
    p.add_argument("--order", default="first_seen",
                   choices=("first_seen", "created", "last_seen", "bytes", "duration", "id"))
    p.add_argument("--limit", type=_positive_int, metavar="N")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v, -vv as pfctl")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text")
    p.set_defaults(func=_cmd_show)


def _hex_u64(text):
    try:
        n = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a hex state id") from None
    if not 0 <= n < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} does not fit in 64 bits")
    return n


def _cmd_show(args):
    from pfhistory import output
    from pfhistory.history import History
    from pfhistory.timespec import parse_duration, parse_time

    def when(value, what):
        return None if value is None else parse_time(value, what=what)

    filters = dict(
        at=when(args.at, "--at"), since=when(args.since, "--since"),
        until=when(args.until, "--until"), host=args.host, local=args.local,
        remote=args.remote, port=args.port, proto=args.proto, af=args.af,
        ifname=args.interface, direction=args.direction, rule=args.rule, anchor=args.anchor,
        creatorid=args.creatorid, id=args.id, nat=True if args.nat else None,
        open=args.open or None, closed=args.closed or None, min_bytes=args.min_bytes,
        min_duration=(int(parse_duration(args.min_duration, "--min-duration"))
                      if args.min_duration else None),
        order=args.order, limit=args.limit)
    if filters["since"] and filters["until"] and filters["until"] < filters["since"]:
        raise PFError("--until is before --since")
    with History(args.db) as history:
        if filters["at"] is not None:
            _explain_at(history, args.at, filters["at"])
        states = history.states(**filters)
        if args.format == "json":
            output.write_json(states, sys.stdout)
        elif args.format == "csv":
            output.write_csv(states, sys.stdout)
        else:
            output.write_text(states, sys.stdout, verbose=min(args.verbose, 2))
    sys.stdout.flush()
    return 0


# A table older than --at by more than this is named on standard error: the
# collector stopped, or a long gap in the history, and pfctl's text alone
# would pass that table off as the one asked for.
_AT_GAP_S = 300


def _explain_at(history, given, at):
    """Refuse --at before the history, and name the collection shown when it
    is well before --at (text output must stay pfctl's own)."""
    from pfhistory.timespec import format_duration, format_time

    found = history.collection_at(at)
    if found is None:
        times = history.collections()
        if not times:
            raise PFError("the history holds no collections yet")
        raise PFError(f"--at {given}: before the history, which starts at "
                      f"{format_time(min(at for _id, at in times))}")
    gap = (at - found[1]).total_seconds()
    if gap > _AT_GAP_S:
        print(f"{PROG}: --at {given}: no collection in the {format_duration(int(gap))} "
              f"before it; the table shown is that of {format_time(found[1])}",
              file=sys.stderr)


def _add_report(sub):
    p = sub.add_parser(
        "report",
        help="what happened on the firewall: coverage, top lists, oddities, charts",
        description="A report of a period (default: the last 24 hours): coverage and gaps "
                    "between collections, states seen, new and ended, the peak, top hosts, "
                    "services, rules, interfaces and NAT, half-open and bursty sources, "
                    "connections open for days. Text for terminals and mail, html (one "
                    "offline file with charts), csv or json with the same figures.",
        epilog="Examples:\n"
               "  pfhistory report                           # the last 24 hours, as text\n"
               "  pfhistory report --since 7d --format html -o /var/www/pf/week.html\n"
               "  pfhistory report --since 2026-11-24T00:00 --until 2026-11-25T00:00 "
               "--format json\n",
    )
    _add_db_option(p)
    p.add_argument("--since", metavar="TIME", help="start (default: 24 hours before --until)")
    p.add_argument("--until", metavar="TIME", help="end (default: now)")
    p.add_argument("--format", choices=("text", "html", "csv", "json"), default="text")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE (created owner-only) instead of standard output")
    p.add_argument("--top", type=_at_least_one, default=10, help="rows per top list (default 10)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args):
    import time as _time
    from datetime import datetime, timezone

    from pfhistory.timespec import parse_time

    # Both ends counted back from the same now: "--since 2h --until 1h" is one hour.
    now_utc = datetime.fromtimestamp(_time.time(), timezone.utc)
    now = now_utc.timestamp()   # to the microsecond, as a time counted back from it
    until = (parse_time(args.until, now=now_utc, what="--until").timestamp() if args.until
             else now)
    since = (parse_time(args.since, now=now_utc, what="--since").timestamp() if args.since
             else until - 86400)
    # One instant (--since 0m, or twice the same time) is a period: the table then.
    if int(until) < int(since):      # the report counts whole seconds
        raise PFError("--until is before --since: the period would be empty")
    from pfhistory import report_format

    url, engine = _open_db(args.db, readonly=True)
    try:
        from pfhistory.db import require_current_schema
        from pfhistory.report import build_report

        require_current_schema(engine, url)
        with engine.connect() as conn:
            rep = build_report(conn, int(since), int(until),
                               database=url.render_as_string(hide_password=True),
                               top=args.top, now=now)
    finally:
        engine.dispose()
    report_format.write(rep, args.format, args.output)
    if args.output and args.format == "html" and sys.stderr.isatty():
        print(f"report written to {os.path.abspath(args.output)}", file=sys.stderr)
    return 0


def _add_listen(sub):
    p = sub.add_parser(
        "listen",
        help="record pfsync traffic as it arrives (every state, even short ones)",
        description="Listen for pfsync(4) packets (IP protocol 240) from OpenBSD firewalls, "
                    "on the firewall itself or any Linux or OpenBSD host on the sync "
                    "network, and record every state insert, update and removal into the "
                    "history, one transaction per batch. Joins 224.0.0.240 on --iface; "
                    "unicast from a sync peer (syncpeer) is accepted too. Runs beside the "
                    "cron collector on the same database. SIGTERM or SIGINT writes what was "
                    "received, then exits. Needs root (a raw socket).",
        epilog="Examples:\n  pfhistory listen --iface em1\n"
               "  pfhistory listen --iface em1 --db /var/db/pfhistory/history.db -v\n"
               "  pfhistory listen --iface vio1 --write-pcap /tmp/pfsync.pcap\n",
    )
    _add_db_option(p)
    p.add_argument("--iface", metavar="NAME", help="the sync interface (joins 224.0.0.240 on it)")
    _add_batch_options(p)
    p.add_argument("--write-pcap", metavar="FILE",
                   help="also write every packet received to a pcap file (receive times)")
    p.add_argument("--sample-retention", default="24h", metavar="DURATION",
                   help="how long the values states had before each change are kept "
                        "(default 24h)")
    p.add_argument("--wait", type=_wait_seconds, default=30.0, metavar="SECONDS",
                   help="how long one write waits for the cron collector (default 30)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say when listening starts, and the counts when it stops")
    p.add_argument("--syslog", action="store_true",
                   help="also send failures, and with -v what it logs, to syslog")
    p.set_defaults(func=_cmd_listen)


def _cmd_listen(args):
    from pfhistory.db import require_current_schema
    from pfhistory.listener import Listener
    from pfhistory.syncsocket import open_receiver

    retention = _sample_retention(args)
    sock = open_receiver(args.iface)       # refuse a bad interface before any database
    try:
        url, engine = _open_db(args.db, create=True, wait=args.wait)
    except BaseException:
        sock.close()
        raise
    try:
        require_current_schema(engine, url, create=True)

        def log(line):
            if args.verbose:
                print(f"{PROG}: {line}", file=sys.stderr, flush=True)
                if args.syslog:
                    _syslog(line)

        def warn(line):
            print(f"{PROG}: {line}", file=sys.stderr, flush=True)
            if args.syslog:
                _syslog(line, error=True)

        listener = Listener(engine, url, iface=args.iface, batch_packets=args.batch_packets,
                            batch_ms=args.batch_ms, write_pcap=args.write_pcap, log=log,
                            sock=sock, sample_retention=retention, warn=warn)
        recorder = listener.run()
        log(f"stopped: {_pfsync_summary(recorder)}")
    finally:
        engine.dispose()
    return 0


def build_parser():
    """The whole command line, for main() and the documentation test."""
    parser = _Parser(
        prog=PROG,
        description="Record and query the history of OpenBSD PF's state table.",
        epilog="Example:\n  pfhistory states /tmp/fw/states-20261124T220000Z.pfstate -vv\n",
    )
    parser.add_argument("--version", action="version",
                        version=f"{PROG} {_version.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    parser.commands = sub
    _add_states(sub)
    _add_simulate(sub)
    _add_collect(sub)
    _add_db(sub)
    _add_prune(sub)
    _add_rollup(sub)
    _add_summary(sub)
    _add_show(sub)
    _add_report(sub)
    _add_listen(sub)
    return parser


class _OutputError(PFError):
    """Standard output cannot be written (a full disk, a device that refuses)."""


class _GuardedStdout:
    """sys.stdout while a command runs: a failed write becomes one sentence
    (_OutputError) instead of a traceback; a reader that went away stays a
    BrokenPipeError, which is no error of ours."""

    def __init__(self, stream):
        self._stream = stream

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise _OutputError(f"cannot write to standard output: "
                               f"{e.strerror or e}") from None

    def write(self, text):
        return self._guarded(self._stream.write, text)

    def flush(self):
        return self._guarded(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _discard_stdout():
    """Send what is still buffered for standard output nowhere, so that
    Python's flush at exit does not fail a second time."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return  # not a file (a test's capture): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv=None):
    """Run the command line; return the exit status."""
    os.umask(0o077)  # databases, reports and snapshots: owner-only
    parser = build_parser()
    args = parser.parse_args(argv)
    stdout = sys.stdout
    if stdout is not None:    # None when started with standard output closed (>&-)
        sys.stdout = _GuardedStdout(stdout)
    try:
        status = args.func(args)
        if getattr(args, "output_error", None) is not None:
            raise args.output_error
        if sys.stdout is not None:
            sys.stdout.flush()  # a write that fails fails here, not at exit
        return status
    except BrokenPipeError:
        # The reader (head, less) went away: not an error of ours.
        sys.stdout = stdout
        _discard_stdout()
        return 0
    except PFError as e:
        if isinstance(e, _OutputError):
            sys.stdout = stdout
            _discard_stdout()
        return _fail(args, str(e))
    except Exception as e:  # database errors a user can act on
        from pfhistory.db import describe_db_error, is_db_error, resolve_url

        if not is_db_error(e):
            raise
        return _fail(args, describe_db_error(e, resolve_url(getattr(args, "db", None)),
                                             getattr(args, "wait", 30.0)))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout
