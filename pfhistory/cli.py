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


class _Parser(argparse.ArgumentParser):
    """argparse, with examples kept verbatim in the help text."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


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
        epilog="Example:\n  pfhistory simulate --out /tmp/fw --states 5000 "
               "--interval 1m --duration 1h --seed 7 --truth\n",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the snapshots")
    p.add_argument("--states", type=_positive_int, default=1000,
                   help="concurrent states (default 1000, up to 2000000)")
    p.add_argument("--interval", default="60s", help="time between snapshots (default 60s)")
    p.add_argument("--duration", default="1h", help="simulated time (default 1h)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--start", help="time of the first snapshot (default 2026-11-24T22:00Z)")
    p.add_argument("--creatorid", type=_hex_u32, default=0x1A2B3C4D,
                   help="the firewall's hostid in hex (default 1a2b3c4d)")
    p.add_argument("--missing", default="", metavar="I,J,...",
                   help="snapshot indexes not written, to model missed cron runs")
    p.add_argument("--truth", action="store_true",
                   help="also write the simulator's ground truth (truth.jsonl)")
    p.set_defaults(func=_cmd_simulate)


def _positive_int(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
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
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise PFError(f"--out {args.out}: exists and is not a directory")
    cfg = SimulationConfig(states=args.states, interval=interval, duration=duration,
                           seed=args.seed, start=start, creatorid=args.creatorid,
                           missing=missing)
    try:
        result = simulate(cfg, args.out, truth=args.truth)
    except OSError as e:
        raise PFError(f"--out {args.out}: cannot write the snapshots: {e.strerror}") from None
    for when, path in result.snapshots:
        print(path)
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
    _add_states(sub)
    _add_simulate(sub)
    return parser


def main(argv=None):
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PFError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader (head, less) went away: not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
