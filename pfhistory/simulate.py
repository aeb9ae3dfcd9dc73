"""Seeded, deterministic simulator of a busy OpenBSD PF firewall: pfctl -S snapshots and truth.

We develop on Linux without OpenBSD, so the collector, history and reports are tested
against this model. It is event based with exact times: every state has a creation time,
a few protocol steps (TCP handshake, FIN/RST close, UDP/other SINGLE/MULTIPLE, ICMP
reply), a data phase whose counters grow by fixed amounts every ``g`` seconds, and an
end time (its last activity plus the PFTM_* timeout of its last step, plus up to ten
seconds until pf's purge finds it). A snapshot samples that model; nothing in the ground
truth is ever read back from the files.

Times inside the model are seconds of uptime (since a simulated boot), the clock pf
itself keeps (``getuptime()``): ``creation`` and ``expire`` in the record are whole
uptime seconds, exactly as ``pf_state_export()`` computes them.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import random
import socket
import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, NamedTuple

from pfhistory.exceptions import PFError
from pfhistory.gcpause import cyclic_gc_paused
from pfhistory.statefile import write_state_file
from pfhistory.timespec import format_duration
from pfhistory.pfvar import (
    OPENBSD_AF_INET as AF4,
    OPENBSD_AF_INET6 as AF6,
    PF_IN,
    PF_LOG_ALL,
    PF_OUT,
    PF_REPLYTO,
    PF_ROUTETO,
    PF_RULE_NONE,
    PFOTHERS_MULTIPLE,
    PFOTHERS_NO_TRAFFIC,
    PFOTHERS_SINGLE,
    PFSS_TIMESTAMP,
    PFSTATE_PFLOW,
    PFSTATE_RANDOMID,
    PFSTATE_SCRUB_TCP,
    PFSTATE_SETPRIO,
    PFSTATE_SETTOS,
    PFSTATE_SLOPPY,
    PFSYNC_FLAG_SRCNODE,
    PFSYNC_SCRUB_FLAG_VALID,
    PF_WSCALE_FLAG,
    PF_WSCALE_MASK,
    PFTM_ICMP_ERROR_REPLY,
    PFTM_ICMP_FIRST_PACKET,
    PFTM_OTHER_FIRST_PACKET,
    PFTM_OTHER_MULTIPLE,
    PFTM_OTHER_SINGLE,
    PFTM_TCP_CLOSED,
    PFTM_TCP_CLOSING,
    PFTM_TCP_ESTABLISHED,
    PFTM_TCP_FIN_WAIT,
    PFTM_TCP_FIRST_PACKET,
    PFTM_TCP_OPENING,
    PFTM_UDP_FIRST_PACKET,
    PFTM_UDP_MULTIPLE,
    PFTM_UDP_SINGLE,
    PFUDPS_MULTIPLE,
    PFUDPS_NO_TRAFFIC,
    PFUDPS_SINGLE,
    TCPS_CLOSED,
    TCPS_CLOSING,
    TCPS_ESTABLISHED,
    TCPS_FIN_WAIT_2,
    TCPS_SYN_SENT,
    TCPS_TIME_WAIT,
)
from pfhistory.records import (
    KEY,
    NO_PEER,
    OFF_KEY_STACK,
    OFF_KEY_WIRE,
    StateKey,
    encode_state,
    pack_addr,
)

__all__ = [
    "SimulationConfig",
    "SimulationConfigError",
    "SimulationResult",
    "SimState",
    "simulate",
    "iter_events",
    "snapshot_path",
    "MAX_STATES",
    "MAX_SNAPSHOTS",
    "PFTM_DEFAULT",
]

MAX_STATES = 2_000_000
# A year of one snapshot a minute: more than cron ever keeps of pfctl -S, and already half
# a million files (each also a pass over the whole table). Beyond it is a typo, such as a
# duration in days meant in minutes, that would otherwise run for days filling the disk.
MAX_SNAPSHOTS = 366 * 1440 + 1

# Default seconds of each PFTM_* timeout 0..13 (pf.conf(5); pf-formats.md section 5.7).
# We assume no adaptive scaling: the simulated admin raised "set limit states" well above
# the table size, so adaptive.start (60% of the limit) is never reached.
PFTM_DEFAULT = (120, 30, 86400, 900, 45, 90, 60, 30, 60, 20, 10, 60, 30, 60)

# pf_purge_expired_states() visits every state within timeout[PFTM_INTERVAL] (10 s), so an
# expired state stays listed (with expire 0) for up to that long.
_PURGE = 10.0

_IPPROTO_ICMP, _IPPROTO_TCP, _IPPROTO_UDP = 1, 6, 17
_IPPROTO_GRE, _IPPROTO_ESP, _IPPROTO_ICMPV6 = 47, 50, 58
_ICMP_ECHO, _ICMP6_ECHO_REQUEST = 8, 128

_INF = float("inf")
_M32 = 0xFFFFFFFF
_DAY = 86400.0

# The simulated firewall boots 20-40 days before the first snapshot. pf_status.stateid is
# gettime() << 32 when pf is enabled (a minute after boot), so that time must fit in 32
# unsigned bits: the run starts at least 40 days after 1970 and ends by 2^32 - 1 seconds
# (2106-02-07T06:28:15Z), which also keeps its ids within 64 bits.
_BOOT_AGE = (20 * _DAY, 40 * _DAY)
_EARLIEST_START = _BOOT_AGE[1]
_LATEST_END = float(_M32)

_TCP, _UDP, _ICMP, _OTHER = 0, 1, 2, 3

# SYN, ACK (= IP + TCP header with timestamps), FIN and RST packet sizes.
_TCP_LEN = {AF4: (60, 52, 52, 40), AF6: (80, 72, 72, 60)}

# Fields rewritten at every sample, at their fixed offsets (records.py).
_DYN = struct.Struct(">IIQQQQ")      # 196 creation, expire, packets[2], bytes[2]
_SEQ = struct.Struct(">II")          # a peer's seqlo, seqhi (src at 112, dst at 144)
_U16 = struct.Struct(">H")           # dst max_win at 156
_ID = struct.Struct(">Q")            # 0 id
_KEYS = struct.Struct(">" + KEY.format[1:] * 2)   # 24 key[PF_SK_WIRE], key[PF_SK_STACK]

# Per-state timeline, packed to keep 2,000,000 states in memory: ticks K, creation and
# opening steps t0 e1 e2 e3, data start te, burst period g, closing steps c1..c4 (uptime
# seconds); isn_s, isn_d, burst bytes s0 s1, burst payload pay0 pay1, window bytes of src
# and dst, first-packet bytes q0 q1; dst max_win, k0, k1, dst wscale, seq mode. The state
# id lives in the record the model builds (big-endian at offset 0).
_TL = struct.Struct("<Q10d10IH4B")
_TL_unpack = _TL.unpack
_T0 = struct.Struct("<8xd")         # t0 alone
_ID_unpack = struct.Struct(">Q").unpack_from

_bisect = bisect.bisect_right


def _cum_table(weighted):
    """(names, cumulative weights, total) for drawing by weight with bisect."""
    names, cum, acc = [], [], 0.0
    for name, w in weighted:
        acc += w
        names.append(name)
        cum.append(acc)
    return names, cum, acc


# ----------------------------------------------------------------------------------------
# Configuration and result

class SimulationConfigError(PFError, ValueError):
    """A simulation that cannot be run as asked (one sentence, for the CLI)."""


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate; the same config always gives the same bytes."""

    states: int = 1000
    interval: float = 60.0
    duration: float = 3600.0
    seed: int = 1
    start: datetime = datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc)
    creatorid: int = 0x1A2B3C4D
    missing: tuple = ()

    def __post_init__(self):
        bad = SimulationConfigError
        if not isinstance(self.states, int) or not 0 <= self.states <= MAX_STATES:
            raise bad(f"the simulator takes 0 to {MAX_STATES} states, not {self.states!r}")
        if not self.duration >= 0:
            raise bad("the simulated duration must not be negative")
        if self.duration == _INF:
            raise bad("the simulated duration must be finite")
        if self.duration > 0 and not self.interval >= 1:
            # Snapshot files are named to the second.
            raise bad("the interval between snapshots must be at least one second")
        if self.duration > 0 and self.interval == _INF:
            raise bad("the interval between snapshots must be finite")
        if not 0 <= self.creatorid <= _M32:
            raise bad("the creatorid must fit in 32 bits")
        if self.start.tzinfo is None:
            raise bad("the start time must be timezone-aware (UTC)")
        start = self.start.timestamp()
        if start < _EARLIEST_START:
            raise bad(f"the start {_utc(start)} is too early: it must be {_utc(_EARLIEST_START)}"
                      f" or later (the simulated firewall boots up to 40 days before it, and"
                      f" pf's state ids hold that time as 32-bit seconds since 1970)")
        if start + self.duration > _LATEST_END:
            what = (f"the start {_utc(start)}" if start > _LATEST_END else
                    f"the simulated period (start {_utc(start)} plus the duration) ends at"
                    f" {_utc(start + self.duration)}, which")
            raise bad(f"{what} is after {_utc(_LATEST_END)}, the last second pf's state ids"
                      f" and pcap's packet times hold (32-bit seconds since 1970)")
        if self.snapshot_count > MAX_SNAPSHOTS:
            raise bad(f"{format_duration(self.duration)} of one snapshot every"
                      f" {format_duration(self.interval)} is {self.snapshot_count} snapshots,"
                      f" more than the simulator's {MAX_SNAPSHOTS} (a year of one a minute):"
                      f" take a longer interval or a shorter duration")
        object.__setattr__(self, "missing", tuple(sorted({int(i) for i in self.missing})))

    @property
    def snapshot_count(self) -> int:
        """Snapshots at start, start+interval, ... up to start+duration inclusive."""
        if self.duration == 0:
            return 1
        return int(math.floor(self.duration / self.interval + 1e-9)) + 1

    def snapshot_time(self, index: int) -> datetime:
        """UTC time of snapshot ``index``."""
        return (self.start + timedelta(seconds=index * (self.interval if self.duration else 0)))\
            .astimezone(timezone.utc)


def _utc(epoch):
    """Epoch seconds as ISO 8601 UTC to the second, for messages (any epoch)."""
    try:
        return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")\
            .replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return "beyond the year 9999" if epoch > 0 else "before the year 1"


def snapshot_path(out_dir, when: datetime) -> Path:
    """Where the snapshot taken at ``when`` is written."""
    return Path(out_dir) / f"states-{when.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}.pfstate"


@dataclass
class SimulationResult:
    """The files a simulation wrote."""

    snapshots: list = field(default_factory=list)   # [(datetime_utc, Path)], time order
    truth_path: Path | None = None
    summary_path: Path | None = None
    config: SimulationConfig | None = None


# ----------------------------------------------------------------------------------------
# Protocol programs: the steps pf's state machine goes through, shared by many states.

class _Prog:
    """Steps of one kind of state: cumulative counters, peer states and PFTM_* timeout
    after each opening step (``pre``) and each closing step (``post``, counted from the
    end of the data phase)."""

    __slots__ = ("kind", "tcp", "pre", "post", "name", "opened")

    def __init__(self, name, kind, pre, post=()):
        self.name = name
        self.kind = kind
        self.tcp = kind == _TCP
        self.pre = tuple(pre)
        self.post = tuple(post)
        self.opened = self.pre[-1]      # the step the data phase runs in


def _step(p0, p1, b0, b1, nq0, nq1, ss, ds, tmo, sa_s=0, sa_d=0, flag=0):
    # (packets, bytes, first-packet multiples, peer states, timeout index, its seconds,
    #  sequence advance of src and dst, TCP opening flag: 1 = only SYN seen, 2 = SYN-ACK)
    return (p0, p1, b0, b1, nq0, nq1, ss, ds, tmo, PFTM_DEFAULT[tmo], sa_s, sa_d, flag)


_PROGS: dict = {}


def _prog(key):
    """The shared program for ``key`` (built once)."""
    prog = _PROGS.get(key)
    if prog is None:
        prog = _PROGS[key] = _build_prog(key)
    return prog


def _build_prog(key):
    kind = key[0]
    if kind == "tcp":
        _, af, opening, close = key
        syn, ack, fin, rst = _TCP_LEN[af]
        if opening == "open":
            # pf_create_state: SYN_SENT:CLOSED, tcp.first; the SYN-ACK makes the initiator
            # ESTABLISHED and the responder SYN_SENT (tcp.opening); the ACK both ESTABLISHED.
            pre = [_step(1, 0, syn, 0, 0, 0, TCPS_SYN_SENT, TCPS_CLOSED, PFTM_TCP_FIRST_PACKET,
                         flag=1),
                   _step(1, 1, syn, syn, 0, 0, TCPS_ESTABLISHED, TCPS_SYN_SENT, PFTM_TCP_OPENING,
                         0, 1, flag=2),
                   _step(2, 1, syn + ack, syn, 0, 0, TCPS_ESTABLISHED, TCPS_ESTABLISHED,
                         PFTM_TCP_ESTABLISHED, 1, 1)]
        else:
            # Half-open: a SYN nobody answers, maybe retransmitted (then tcp.opening).
            n = int(opening[4:])
            pre = [_step(1, 0, syn, 0, 0, 0, TCPS_SYN_SENT, TCPS_CLOSED, PFTM_TCP_FIRST_PACKET,
                         flag=1)]
            pre += [_step(i + 1, 0, (i + 1) * syn, 0, 0, 0, TCPS_SYN_SENT, TCPS_CLOSED,
                          PFTM_TCP_OPENING, flag=1) for i in range(1, n)]
        post = []
        est = TCPS_ESTABLISHED
        if close in ("fin_s", "stuck_s"):
            # FIN -> CLOSING, its ACK -> FIN_WAIT_2 (pf_tcp_track_full), then the other side.
            post = [_step(1, 0, fin, 0, 0, 0, TCPS_CLOSING, est, PFTM_TCP_CLOSING, 1, 0),
                    _step(1, 1, fin, ack, 0, 0, TCPS_FIN_WAIT_2, est, PFTM_TCP_CLOSING, 1, 0),
                    _step(1, 2, fin, ack + fin, 0, 0, TCPS_FIN_WAIT_2, TCPS_CLOSING,
                          PFTM_TCP_FIN_WAIT, 1, 1),
                    _step(2, 2, fin + ack, ack + fin, 0, 0, TCPS_FIN_WAIT_2, TCPS_FIN_WAIT_2,
                          PFTM_TCP_CLOSED, 1, 1)]
        elif close in ("fin_d", "stuck_d"):
            post = [_step(0, 1, 0, fin, 0, 0, est, TCPS_CLOSING, PFTM_TCP_CLOSING, 0, 1),
                    _step(1, 1, ack, fin, 0, 0, est, TCPS_FIN_WAIT_2, PFTM_TCP_CLOSING, 0, 1),
                    _step(2, 1, ack + fin, fin, 0, 0, TCPS_CLOSING, TCPS_FIN_WAIT_2,
                          PFTM_TCP_FIN_WAIT, 1, 1),
                    _step(2, 2, ack + fin, fin + ack, 0, 0, TCPS_FIN_WAIT_2, TCPS_FIN_WAIT_2,
                          PFTM_TCP_CLOSED, 1, 1)]
        elif close == "rst_s":
            post = [_step(1, 0, rst, 0, 0, 0, TCPS_TIME_WAIT, TCPS_TIME_WAIT, PFTM_TCP_CLOSED)]
        elif close == "rst_d":
            post = [_step(0, 1, 0, rst, 0, 0, TCPS_TIME_WAIT, TCPS_TIME_WAIT, PFTM_TCP_CLOSED)]
        if close.startswith("stuck"):
            post = post[:2]          # the other side never sends its FIN
        return _Prog("-".join(map(str, key)), _TCP, pre, post)
    if kind in ("udp", "other"):
        _, n, reply = key
        if kind == "udp":
            single, multiple, none_ = PFUDPS_SINGLE, PFUDPS_MULTIPLE, PFUDPS_NO_TRAFFIC
            t_first, t_single, t_multi = PFTM_UDP_FIRST_PACKET, PFTM_UDP_SINGLE, PFTM_UDP_MULTIPLE
            k = _UDP
        else:
            single, multiple, none_ = PFOTHERS_SINGLE, PFOTHERS_MULTIPLE, PFOTHERS_NO_TRAFFIC
            t_first, t_single, t_multi = (PFTM_OTHER_FIRST_PACKET, PFTM_OTHER_SINGLE,
                                          PFTM_OTHER_MULTIPLE)
            k = _OTHER
        # pf_create_state: SINGLE:NO_TRAFFIC; the reply gives MULTIPLE:SINGLE, the next
        # packet MULTIPLE:MULTIPLE (pf_test_state); timeouts first/single/multiple.
        pre = [_step(1, 0, 0, 0, 1, 0, single, none_, t_first)]
        if reply:
            pre.append(_step(1, 1, 0, 0, 1, 1, multiple, single, t_single))
            if n > 2:
                pre.append(_step(2, 1, 0, 0, 2, 1, multiple, multiple, t_multi))
        else:
            pre += [_step(i + 1, 0, 0, 0, i + 1, 0, single, none_, t_single)
                    for i in range(1, n)]
        return _Prog("-".join(map(str, key)), k, pre)
    if kind == "icmp":
        _, n = key
        pre = [_step(1, 0, 0, 0, 1, 0, 0, 0, PFTM_ICMP_FIRST_PACKET)]
        if n > 1:
            pre.append(_step(1, 1, 0, 0, 1, 1, 0, 0, PFTM_ICMP_ERROR_REPLY))
        return _Prog("-".join(map(str, key)), _ICMP, pre)
    raise ValueError(key)


# ----------------------------------------------------------------------------------------
# Traffic classes: what kinds of connections fill the table, and for how long.

class _Class(NamedTuple):
    name: str
    share: float          # of the live table at steady state
    kind: int
    v6: float             # share of IPv6 (wire side)
    D: tuple | None       # data-phase duration, log-uniform (lo, hi) seconds
    g: tuple | None       # seconds between traffic bursts, log-uniform
    close: tuple = ()     # TCP: ((kind, weight), ...)


_CLASSES = (
    _Class("web_short", 0.16, _TCP, 0.30, (0.05, 60.0), (0.01, 2.0),
           (("fin", 0.80), ("rst", 0.17), ("stuck", 0.03))),
    _Class("web_long", 0.18, _TCP, 0.30, (60.0, 7200.0), (0.5, 60.0),
           (("fin", 0.74), ("rst", 0.20), ("stuck", 0.06))),
    # Clients that vanished: ESTABLISHED until tcp.established (24 h) runs out.
    _Class("stale", 0.14, _TCP, 0.25, (1.0, 1800.0), (0.1, 30.0), (("idle", 1.0),)),
    # ssh, IMAP IDLE, XMPP, MQTT: low rate, open for hours to two weeks.
    _Class("interactive", 0.06, _TCP, 0.30, (600.0, 14 * _DAY), (5.0, 600.0),
           (("fin", 0.85), ("rst", 0.15))),
    # Elephants: downloads, backups, scp at up to ~6 MB/s (2**32 bytes after ~12 min).
    _Class("bulk", 0.015, _TCP, 0.30, (5.0, 7200.0), (2e-3, 0.2),
           (("fin", 0.90), ("rst", 0.10))),
    _Class("halfopen", 0.02, _TCP, 0.25, None, None),
    _Class("dns", 0.06, _UDP, 0.30, None, None),
    _Class("udp_flow", 0.13, _UDP, 0.25, (1.0, 3600.0), (0.02, 20.0)),
    _Class("udp_noreply", 0.02, _UDP, 0.20, None, None),
    _Class("ping", 0.008, _ICMP, 0.35, None, None),
    _Class("ping_stream", 0.01, _ICMP, 0.35, (3.0, 1800.0), None),
    # IPsec ESP and GRE tunnels of the firewall itself: days long, heavy.
    _Class("tunnel", 0.006, _OTHER, 0.0, (1800.0, 10 * _DAY), (0.002, 10.0)),
)
_CLASS_NAMES = tuple(c.name for c in _CLASSES)
_C_WEB_SHORT, _C_WEB_LONG, _C_STALE, _C_INTERACTIVE, _C_BULK, _C_HALFOPEN = range(6)
_C_DNS, _C_UDP_FLOW, _C_UDP_NOREPLY, _C_PING, _C_PING_STREAM, _C_TUNNEL = range(6, 12)
# (lo, log(hi/lo)) of the log-uniform draws, precomputed.
_D_LOG = tuple((c.D[0], math.log(c.D[1] / c.D[0])) if c.D else None for c in _CLASSES)
_G_LOG = tuple((c.g[0], math.log(c.g[1] / c.g[0])) if c.g else None for c in _CLASSES)
_CLOSE_CUM = tuple(_cum_table(c.close) if c.close else None for c in _CLASSES)
# Mean time from the end of the data phase to removal, by close: the FIN (or RST) comes
# a little after the last data, then tcp.closed (90 s), or tcp.closing (900 s) for a
# half-close the other side never finishes, or tcp.established (24 h) for a vanished peer;
# plus half the purge lag.
_TAIL = {"fin": 90.0 + 10.0, "rst": 90.0 + 6.0, "stuck": 900.0 + 10.0, "idle": 86400.0 + 5.0}
# Closes as found among live states: weighted by how long each keeps a state.
_CLOSE_CUM_ALIVE = tuple(_cum_table((k, w * _TAIL[k]) for k, w in c.close) if c.close
                         else None for c in _CLASSES)

# Shared programs, built once.
_P_TCP = {(af, close): _prog(("tcp", af, "open", close)) for af in (AF4, AF6)
          for close in ("none", "fin_s", "fin_d", "stuck_s", "stuck_d", "rst_s", "rst_d")}
_P_HALF = {(af, n): _prog(("tcp", af, f"half{n}", "none")) for af in (AF4, AF6) for n in (1, 4)}
_P_DNS = {2: _prog(("udp", 2, True)), 3: _prog(("udp", 3, True))}
_P_NOREPLY = {1: _prog(("udp", 1, False)), 3: _prog(("udp", 3, False))}
_P_UDP = _prog(("udp", 3, True))
_P_ICMP = {1: _prog(("icmp", 1)), 2: _prog(("icmp", 2))}
_P_OTHER = _prog(("other", 3, True))

# Spans of log-uniform delays: ln(hi/lo).
_LN_RTT = math.log(0.25 / 0.003)       # round trip 3 ms .. 250 ms
_LN_LAN = math.log(0.01 / 0.0002)      # LAN side 0.2 ms .. 10 ms
_LN_ACK = math.log(0.2 / 0.0005)       # ACK of a FIN 0.5 ms .. 200 ms
_LN_HALF = math.log(60 / 0.5)          # half-close 0.5 s .. 60 s
_LN_900, _LN_480 = math.log(900), math.log(480)
_LN_1S, _LN_2S, _LN_5S = math.log(1 / 0.001), math.log(2 / 0.0005), math.log(5 / 0.001)
_LN_30S, _LN_120S = math.log(30 / 0.001), math.log(120 / 0.001)

# A timeline (relative to creation) is a plain tuple, for speed; these name its fields.
(_T_CLS, _T_PROTO, _T_AF, _T_PROG, _T_PRE, _T_G, _T_K, _T_POST, _T_TEND,
 _T_K0, _T_K1, _T_S0, _T_S1, _T_PAY0, _T_PAY1, _T_Q0, _T_Q1) = range(17)


def _timeline(r, ci, biased=0):
    """Draw one state's timeline of class ``ci``: times relative to its creation, its
    program and its traffic per burst.

    States found alive at a given moment are a length-biased sample: ``biased`` 1 draws
    the data duration with density proportional to D (for log-uniform: uniform), 2 draws
    the close with weights proportional to how long it keeps the state."""
    rnd = r.random
    exp = math.exp
    c = _CLASSES[ci]
    kind = c.kind
    af = AF6 if rnd() < c.v6 else AF4
    rtt = 0.003 * exp(rnd() * _LN_RTT)                # log-uniform 3 ms .. 250 ms
    k0 = k1 = s0 = s1 = pay0 = pay1 = q0 = q1 = 0
    g, K, post = 1.0, 0, ()
    if c.D is not None:
        lo, lr = _D_LOG[ci]
        D = lo + rnd() * (c.D[1] - lo) if biased == 1 else lo * exp(rnd() * lr)
        if c.g is not None:
            lo, lr = _G_LOG[ci]
            g = lo * exp(rnd() * lr)
    if kind == _TCP:
        proto = _IPPROTO_TCP
        hdr = 52 if af == AF4 else 72
        if ci == _C_HALFOPEN:
            if rnd() < 0.5:
                pre = (0.0, 1.0, 3.0, 7.0)      # SYN retransmitted after 1, 3, 7 s
            else:
                pre = (0.0,)
            prog = _P_HALF[af, len(pre)]
            last = pre[-1]
        else:
            te = rtt + 0.0002 * exp(rnd() * _LN_LAN)     # the initiator's ACK
            pre = (0.0, rtt, te)
            K = int(D / g)
            if ci == _C_BULK:
                big = 1448 if af == AF4 else 1428
                n = 2 + int(rnd() * 7)
                if rnd() < 0.7:       # download: data flows back to the initiator
                    k0, k1, pay0, pay1 = 1, n, 0, n * big
                else:
                    k0, k1, pay0, pay1 = n, 1, n * big, 0
            elif ci == _C_INTERACTIVE:
                k0, k1 = 1, 1 + int(rnd() * 2)
                pay0 = 36 + int(rnd() * 160)
                pay1 = k1 * (36 + int(rnd() * 900))
            else:
                k0, k1 = 1, 1 + int(rnd() * 4)
                pay0 = int(exp(rnd() * _LN_900))             # 1 .. 900 bytes
                pay1 = k1 * (200 + int(rnd() * 1248))
            s0, s1 = k0 * hdr + pay0, k1 * hdr + pay1
            tc = te + K * g
            names, cum, total = (_CLOSE_CUM_ALIVE if biased == 2 else _CLOSE_CUM)[ci]
            close = names[_bisect(cum, rnd() * total)]
            side = "_s" if rnd() < 0.4 else "_d"        # servers close first more often
            if close == "idle":
                prog = _P_TCP[af, "none"]
                last = tc
            elif close == "rst":
                prog = _P_TCP[af, "rst" + side]
                post = (tc + 0.001 * exp(rnd() * _LN_5S),)         # 1 ms .. 5 s
                last = post[0]
            else:
                # FIN some time after the last data, ACKed; the other side's FIN follows
                # at once (FIN|ACK) or after a half-close; its ACK closes.
                c1 = tc + 0.001 * exp(rnd() * (_LN_30S if ci == _C_WEB_SHORT else _LN_120S))
                c2 = c1 + 0.0005 * exp(rnd() * _LN_ACK)
                if close == "stuck":
                    prog = _P_TCP[af, "stuck" + side]
                    post = (c1, c2)
                else:
                    prog = _P_TCP[af, "fin" + side]
                    c3 = c2 if rnd() < 0.8 else c2 + 0.5 * exp(rnd() * _LN_HALF)
                    post = (c1, c2, c3, c3 + 0.0005 * exp(rnd() * _LN_ACK))
                last = post[-1]
    elif kind == _UDP:
        proto = _IPPROTO_UDP
        hdr = 28 if af == AF4 else 48
        if ci == _C_DNS:
            q0 = hdr + 28 + int(rnd() * 40)
            q1 = q0 + 16 + int(exp(rnd() * _LN_480))             # answers up to ~500 bytes
            if rnd() < 0.1:                                      # a second query, same port
                pre = (0.0, rtt, rtt + 0.001 * exp(rnd() * _LN_5S))
            else:
                pre = (0.0, rtt)
            prog = _P_DNS[len(pre)]
            last = pre[-1]
        elif ci == _C_UDP_NOREPLY:
            q0 = hdr + 40 + int(rnd() * 60)
            pre = (0.0, 1.0, 3.0) if rnd() < 0.5 else (0.0,)
            prog = _P_NOREPLY[len(pre)]
            last = pre[-1]
        else:
            pre = (0.0, rtt, rtt + 0.0005 * exp(rnd() * _LN_2S))
            prog = _P_UDP
            K = int(D / g)
            k0, k1 = 1 + int(rnd() * 3), 1 + int(rnd() * 3)
            q0 = hdr + 40 + int(rnd() * 1310)
            q1 = hdr + 40 + int(rnd() * 1310)
            s0, s1 = k0 * q0, k1 * q1
            last = pre[2] + K * g
    elif kind == _ICMP:
        proto = _IPPROTO_ICMP if af == AF4 else _IPPROTO_ICMPV6
        q0 = q1 = (84 if af == AF4 else 104) if rnd() < 0.8 else (60 if af == AF4 else 80)
        if ci == _C_PING and rnd() < 0.2:
            pre = (0.0,)                         # no echo reply
        else:
            pre = (0.0, rtt)
        prog = _P_ICMP[len(pre)]
        if ci == _C_PING_STREAM:
            g = 1.0 if rnd() < 0.8 else 0.2
            K = int(D / g)
            k0 = k1 = 1
            s0 = s1 = q0
        last = pre[-1] + K * g
    else:
        proto = _IPPROTO_ESP if rnd() < 0.6 else _IPPROTO_GRE
        pre = (0.0, rtt, rtt + 0.001 * exp(rnd() * _LN_1S))
        prog = _P_OTHER
        K = int(D / g)
        k0, k1 = 1 + int(rnd() * 4), 1 + int(rnd() * 4)
        q0 = 100 + int(rnd() * 1300)
        q1 = 100 + int(rnd() * 1300)
        s0, s1 = k0 * q0, k1 * q1
        last = pre[2] + K * g
    final = (prog.post or prog.pre)[-1]
    tend = last + final[9] + rnd() * _PURGE
    return (ci, proto, af, prog, pre, g, K, post, tend, k0, k1, s0, s1, pay0, pay1, q0, q1)


_STATS: dict = {}


def _class_stats(ci):
    """(mean lifetime, weight of the length-biased draw, longest lifetime without a data
    phase) of a class: what the birth rates and the initial population need.

    The part of a lifetime outside the data phase is measured once on a fixed generator
    (it does not depend on the seed); the data-phase mean is exact (log-uniform)."""
    got = _STATS.get(ci)
    if got is None:
        c = _CLASSES[ci]
        r = random.Random(f"pfhistory-class-{c.name}")
        n = 2000
        tail = longest = 0.0
        for _ in range(n):
            t = _timeline(r, ci)
            tail += t[_T_TEND] - t[_T_K] * t[_T_G]
            longest = max(longest, t[_T_TEND])
        tail /= n
        mean_d = (c.D[1] - c.D[0]) / math.log(c.D[1] / c.D[0]) if c.D else 0.0
        # Without a data phase lifetimes are bounded: the longest timeout plus the purge.
        got = _STATS[ci] = (mean_d + tail, mean_d / (mean_d + tail),
                            1.05 * longest if c.D is None else 0.0)
    return got


def _timeline_alive(r, ci, stats):
    """A timeline of a state found alive at a random moment of the steady state, and its
    age then: lifetimes length-biased, ages uniform over the lifetime. ``stats`` is
    ``_class_stats(ci)``."""
    _mean, w_biased, longest = stats
    rnd = r.random
    if longest:
        while True:                       # rejection: accept with probability L / longest
            t = _timeline(r, ci)
            if rnd() * longest < t[_T_TEND]:
                break
    else:
        # Alive density ~ (D + tail) f(D) g(tail): the D term or the tail term.
        t = _timeline(r, ci, 1 if rnd() < w_biased else 2)
    return t, rnd() * t[_T_TEND]


# ----------------------------------------------------------------------------------------
# The network: hosts, servers, remote peers, interfaces and rules.

def _pool(addrs, s=1.0):
    """Addresses with Zipf-like popularity (a few hosts do most of the talking), as a
    (names, cumulative weights, total) table for ``_draw``."""
    return _cum_table((a, 1.0 / (i + 1) ** s) for i, a in enumerate(addrs))


def _draw(r, table):
    names, cum, total = table
    return names[_bisect(cum, r.random() * total)]


def _addr16(text):
    """16-byte pf_addr of an IPv4 or IPv6 address."""
    return pack_addr(text)


_RESERVED4 = [(0x00000000, 8), (0x0A000000, 8), (0x64400000, 10), (0x7F000000, 8),
              (0xA9FE0000, 16), (0xAC100000, 12), (0xC0000000, 24), (0xC0000200, 24),
              (0xC0A80000, 16), (0xC6120000, 15), (0xC6336400, 24), (0xCB007100, 24),
              (0xE0000000, 3)]


# First octets that need a closer look (or are wholly reserved: 0, 10, 127, 224-255).
_OCTET_CHECK = frozenset(net >> 24 for net, n in _RESERVED4)


def _public4(r):
    """A random public unicast IPv4 address (not private, reserved or documentation)."""
    while True:
        a = r.getrandbits(32)
        if (a >> 24) not in _OCTET_CHECK and a < 0xE0000000:
            return a.to_bytes(4, "big") + bytes(12)
        if not any((a >> (32 - n)) == (net >> (32 - n)) for net, n in _RESERVED4):
            return a.to_bytes(4, "big") + bytes(12)


_GLOBAL6 = (0x2a00, 0x2a01, 0x2a02, 0x2a03, 0x2a05, 0x2600, 0x2601, 0x2602, 0x2603, 0x2604,
            0x2605, 0x2606, 0x2607, 0x2610, 0x2620, 0x2400, 0x2401, 0x2403, 0x2404, 0x2405,
            0x2001, 0x2003, 0x2800, 0x2c0f)


def _public6(r):
    """A random global IPv6 address from prefixes in real use (outside 2001:db8::/32)."""
    while True:
        hi = r.choice(_GLOBAL6)
        rest = r.getrandbits(112)
        a = (hi << 112 | rest).to_bytes(16, "big")
        if a[:4] != b"\x20\x01\x0d\xb8":
            return a


def _doc6(r):
    """An address in 2001:db8::/32 outside our own 2001:db8:1::/48."""
    while True:
        mid = r.getrandbits(16)
        if mid != 1:
            return (0x20010DB8 << 96 | mid << 80 | r.getrandbits(16) << 64
                    | r.getrandbits(64 if r.random() < 0.5 else 16)).to_bytes(16, "big")


class _Variant(NamedTuple):
    """One pass rule: what its states carry (pf_create_state copies these)."""

    name: str
    weight: float
    rule: int
    anchor: int = PF_RULE_NONE
    ifname: str = "all"
    direction: int = PF_IN
    log: int = 0
    rt: int = 0
    gw: str = ""          # route-to / reply-to next hop, v4 (v6 in gw6)
    gw6: str = ""
    rtable: int = 0       # act->rtableid (the rule's rtable, else the packet's rdomain)
    wire_rd: int = 0
    stack_rd: int = 0
    max_mss: int = 0
    min_ttl: int = 0
    set_tos: int = 0
    set_prio: tuple = (0, 0)
    state_flags: int = 0
    sync_flags: int = 0
    scrub: bool = False   # scrub (reassemble tcp): peers carry scrub data
    modulate: bool = False
    synproxy: bool = False
    tcp_only: bool = False
    v4_only: bool = False
    special: bool = False  # TCP states carry more than the usual peer fields (set below)


_E0_4, _E0_6 = "203.0.113.1", "2001:db8:1:1::1"   # em0, the main uplink
_PPP_4, _PPP_GW = "192.0.2.1", "192.0.2.254"       # pppoe0 and its peer
_GW6 = "2001:db8:1:ff::1"
_FW_LAN4, _FW_LAN6 = "10.0.0.1", "fd00::1"
_NAT64 = bytes.fromhex("0064ff9b0000000000000000")   # 64:ff9b::/96

_VARIANTS = {
    "nat4_out": (
        _Variant("nat4_all", 0.50, 21, direction=PF_OUT),
        _Variant("nat4_em0_pflow", 0.30, 22, ifname="em0", direction=PF_OUT,
                 state_flags=PFSTATE_PFLOW),
        _Variant("nat4_users_modulate", 0.20, 1, anchor=17, direction=PF_OUT, log=PF_LOG_ALL,
                 modulate=True),
    ),
    "nat6_out": (
        _Variant("nat6_all", 0.60, 23, direction=PF_OUT),
        _Variant("nat6_em0_scrub", 0.40, 24, ifname="em0", direction=PF_OUT, scrub=True,
                 state_flags=PFSTATE_SCRUB_TCP),
    ),
    "lan_in": (
        _Variant("lan_all", 0.55, 6),
        _Variant("lan_em1_log", 0.25, 7, ifname="em1", log=PF_LOG_ALL),
        _Variant("lan_em1_prio", 0.20, 8, ifname="em1", set_prio=(3, 6), set_tos=0x10,
                 state_flags=PFSTATE_SETPRIO | PFSTATE_SETTOS),
    ),
    "fw_services": (
        _Variant("fw_all", 0.70, 3),
        _Variant("fw_ssh_srctrack", 0.30, 4, ifname="em1", log=PF_LOG_ALL,
                 sync_flags=PFSYNC_FLAG_SRCNODE, tcp_only=True),
    ),
    "wan_in": (
        _Variant("wan_em0", 0.60, 9, ifname="em0"),
        _Variant("wan_ssh_srctrack", 0.40, 11, ifname="em0", log=PF_LOG_ALL,
                 sync_flags=PFSYNC_FLAG_SRCNODE, tcp_only=True),
    ),
    "rdr_in": (
        _Variant("rdr_synproxy", 0.25, 12, ifname="em0", synproxy=True, tcp_only=True),
        _Variant("rdr_relayd_sticky", 0.20, 0, anchor=5, sync_flags=PFSYNC_FLAG_SRCNODE),
        _Variant("rdr_relayd", 0.20, 1, anchor=5),
        _Variant("rdr_smtp_log", 0.15, 13, ifname="em0", log=PF_LOG_ALL, tcp_only=True),
        _Variant("rdr_pppoe_replyto", 0.10, 26, ifname="pppoe0", rt=PF_REPLYTO, gw=_PPP_GW,
                 v4_only=True),
        _Variant("rdr_em0_modulate", 0.10, 14, ifname="em0", modulate=True, tcp_only=True),
    ),
    "afto": (
        _Variant("afto_all", 0.60, 16),
        _Variant("afto_em1", 0.40, 15, ifname="em1"),
    ),
    "vlan10": (
        # vlan10 lives in rdomain 1; "rtable 0" rules cross into rdomain 0.
        _Variant("vlan10_rtable0", 0.50, 18, ifname="vlan10", wire_rd=1, stack_rd=0, rtable=0),
        _Variant("vlan10_sloppy", 0.30, 19, ifname="vlan10", wire_rd=1, stack_rd=1, rtable=1,
                 state_flags=PFSTATE_SLOPPY),
        _Variant("vlan10_pflow", 0.20, 20, wire_rd=1, stack_rd=1, rtable=1,
                 state_flags=PFSTATE_PFLOW),
    ),
    "routeto": (
        _Variant("routeto_em1", 0.70, 10, ifname="em1", rt=PF_ROUTETO, gw=_PPP_GW, gw6=_GW6),
        _Variant("routeto_sticky", 0.30, 2, anchor=17, rt=PF_ROUTETO, gw=_PPP_GW, gw6=_GW6,
                 sync_flags=PFSYNC_FLAG_SRCNODE),
    ),
    "pppoe_out": (
        # match on pppoe0 scrub (max-mss 1440, min-ttl 64, random-id, reassemble tcp)
        _Variant("pppoe_scrub", 1.0, 25, ifname="pppoe0", direction=PF_OUT, max_mss=1440,
                 min_ttl=64, scrub=True,
                 state_flags=PFSTATE_SCRUB_TCP | PFSTATE_RANDOMID),
    ),
    "self_out": (
        _Variant("vpn_em0", 0.60, 0, anchor=9, ifname="em0", direction=PF_OUT),
        _Variant("vpn_all", 0.40, 1, anchor=9, direction=PF_OUT),
    ),
}

_VARIANTS = {path: tuple(v._replace(special=bool(
    v.synproxy or v.modulate or v.scrub or v.state_flags & PFSTATE_SLOPPY)) for v in vs)
    for path, vs in _VARIANTS.items()}

_PATH_AF = {"nat4_out": (AF4,), "nat6_out": (AF6,), "lan_in": (AF4, AF6),
            "fw_services": (AF4, AF6), "wan_in": (AF4, AF6), "rdr_in": (AF4, AF6),
            "afto": (AF6,), "vlan10": (AF4,), "routeto": (AF4, AF6), "pppoe_out": (AF4,),
            "self_out": (AF4,)}

_CLIENT_PATHS = {"nat4_out": 0.40, "nat6_out": 0.14, "lan_in": 0.12, "rdr_in": 0.10,
                 "pppoe_out": 0.07, "routeto": 0.05, "vlan10": 0.06, "afto": 0.03}
_CLASS_PATHS = {
    _C_WEB_SHORT: _CLIENT_PATHS,
    _C_WEB_LONG: _CLIENT_PATHS,
    _C_STALE: _CLIENT_PATHS,
    _C_INTERACTIVE: dict(_CLIENT_PATHS, fw_services=0.06, wan_in=0.05),
    _C_BULK: dict(_CLIENT_PATHS, rdr_in=0.15, afto=0.01),
    _C_HALFOPEN: {"nat4_out": 0.45, "nat6_out": 0.15, "lan_in": 0.15, "rdr_in": 0.10,
                  "vlan10": 0.10, "pppoe_out": 0.05},
    _C_DNS: {"fw_services": 0.45, "nat4_out": 0.20, "nat6_out": 0.08, "lan_in": 0.05,
             "vlan10": 0.08, "afto": 0.06, "pppoe_out": 0.04, "routeto": 0.04},
    _C_UDP_FLOW: {"nat4_out": 0.38, "nat6_out": 0.15, "lan_in": 0.10, "fw_services": 0.05,
                  "pppoe_out": 0.08, "vlan10": 0.08, "rdr_in": 0.08, "routeto": 0.05,
                  "afto": 0.03},
    _C_UDP_NOREPLY: {"nat4_out": 0.50, "lan_in": 0.20, "vlan10": 0.15, "nat6_out": 0.15},
    _C_PING: {"nat4_out": 0.30, "nat6_out": 0.12, "fw_services": 0.20, "wan_in": 0.12,
              "lan_in": 0.10, "vlan10": 0.06, "afto": 0.06, "routeto": 0.04},
    _C_PING_STREAM: {"nat4_out": 0.35, "nat6_out": 0.15, "fw_services": 0.15, "wan_in": 0.10,
                     "lan_in": 0.10, "afto": 0.10, "routeto": 0.05},
    _C_TUNNEL: {"self_out": 1.0},
}

# Destination ports by class: (port, weight).
_PORTS_WEB = ((443, 0.72), (80, 0.18), (8443, 0.03), (993, 0.03), (25, 0.02), (587, 0.02))
_PORTS = {
    _C_WEB_SHORT: _PORTS_WEB, _C_WEB_LONG: _PORTS_WEB, _C_STALE: _PORTS_WEB,
    _C_HALFOPEN: _PORTS_WEB,
    _C_INTERACTIVE: ((22, 0.40), (993, 0.25), (5222, 0.10), (8883, 0.10), (443, 0.15)),
    _C_BULK: ((443, 0.60), (80, 0.15), (22, 0.15), (873, 0.10)),
    _C_DNS: ((53, 1.0),),
    _C_UDP_FLOW: ((443, 0.45), (123, 0.10), (51820, 0.10), (3478, 0.10), (4500, 0.10),
                  (5060, 0.05), (27015, 0.10)),
    _C_UDP_NOREPLY: ((123, 0.40), (161, 0.30), (514, 0.30)),
}
# Published service -> internal server for rdr-to (public port -> (server, port)).
_RDR = {443: ("web", 443), 80: ("web", 80), 8443: ("web2", 8443), 993: ("mail", 993),
        25: ("mail", 25), 587: ("mail", 587), 22: ("git", 22), 873: ("git", 873),
        5222: ("web2", 5222), 8883: ("web2", 8883), 51820: ("git", 51820), 4500: ("git", 4500),
        3478: ("web2", 3478), 5060: ("web2", 5060), 27015: ("web2", 27015), 123: ("git", 123)}


class _Network:
    """Hosts and peers of the simulated site, drawn once from the seed."""

    def __init__(self, r):
        clients = [f"10.0.{net}.{host}" for net in range(2, 10) for host in range(1, 255)]
        r.shuffle(clients)
        self.clients4 = _pool([_addr16(a) for a in clients], 1.0)
        # The same machines' IPv6 addresses in fd00::/64: SLAAC (EUI-64) or privacy IIDs.
        v6 = []
        for _ in clients:
            if r.random() < 0.3:
                mac = r.getrandbits(48) & ~(1 << 40)
                iid = ((mac >> 24) << 40 | 0xFFFE << 24 | (mac & 0xFFFFFF)) ^ (0x02 << 56)
            else:
                iid = r.getrandbits(64)
            v6.append((0xFD00 << 112 | iid).to_bytes(16, "big"))
        self.clients6 = _pool(v6, 1.0)
        vlan = [f"10.0.10.{h}" for h in range(2, 251)]
        r.shuffle(vlan)
        self.vlan10 = _pool([_addr16(a) for a in vlan], 1.1)
        self.servers4 = {"web": _addr16("10.0.1.10"), "web2": _addr16("10.0.1.11"),
                         "mail": _addr16("10.0.1.12"), "git": _addr16("10.0.1.20")}
        self.servers6 = {"web": _addr16("fd00::10"), "web2": _addr16("fd00::11"),
                         "mail": _addr16("fd00::12"), "git": _addr16("fd00::20")}
        ours = {_E0_4, _PPP_4, _PPP_GW}
        doc = [f"{net}.{h}" for net in ("192.0.2", "198.51.100", "203.0.113")
               for h in range(1, 255) if f"{net}.{h}" not in ours]
        remote4 = [_addr16(a) for a in doc] + [_public4(r) for _ in range(11000)]
        r.shuffle(remote4)
        self.remote4 = _pool(remote4, 1.05)
        remote6 = [_doc6(r) for _ in range(1600)] + [_public6(r) for _ in range(2400)]
        r.shuffle(remote6)
        self.remote6 = _pool(remote6, 1.05)
        self.resolvers4 = _pool([_addr16(a) for a in ("9.9.9.9", "1.1.1.1", "198.51.100.53",
                                                  "8.8.8.8", "208.67.222.222")], 1.0)
        self.resolvers6 = _pool([_addr16(a) for a in ("2620:fe::fe", "2606:4700:4700::1111",
                                                  "2001:db8:53::53", "2001:4860:4860::8888")],
                                1.0)
        self.vpn_peers = _pool(remote4[:40], 0.8)
        self.e0_4, self.e0_6 = _addr16(_E0_4), _addr16(_E0_6)
        self.ppp_4 = _addr16(_PPP_4)
        self.fw4, self.fw6 = _addr16(_FW_LAN4), _addr16(_FW_LAN6)


def _ntop(af, packed):
    if af == AF4:
        return socket.inet_ntop(socket.AF_INET, packed[:4])
    return socket.inet_ntop(socket.AF_INET6, packed)


# ----------------------------------------------------------------------------------------
# States

# A live state is a plain list, the cheapest object to make two million of:
# [removal time, record (bytearray, static fields pre-encoded), packed timeline, program,
#  truth bookkeeping or None, time of its last packet, frozen]. Once a snapshot after its
# last packet has written its final values, only creation and expire still change:
# frozen is then (creation time, last packet + timeout) in whole uptime seconds.
# SimState wraps one for the event API.
_S_TEND, _S_REC, _S_TL, _S_PROG, _S_INFO, _S_LAST, _S_FROZEN = range(7)
_CE = struct.Struct(">II")          # 196 creation, expire

# TCP peer fields that are zero for most states, at their record offsets.
_SCRUB = struct.Struct(">HBBI")     # pfss_flags, pfss_ttl, scrub_flag, pfss_ts_mod (+0)
_U32 = struct.Struct(">I")          # seqdiff (+16)
_SRC, _DST = 104, 136
_exp = math.exp

# Window scale shifts and windows as common stacks send them.
_WS_SRC = _cum_table(((7, 0.55), (8, 0.2), (6, 0.1), (9, 0.05), (2, 0.05), (0, 0.05)))
_WS_DST = _cum_table(((7, 0.35), (9, 0.25), (8, 0.15), (10, 0.1), (6, 0.1), (0, 0.05)))
_WIN_UNSCALED = _cum_table(((65535, 0.4), (64240, 0.2), (29200, 0.1), (16384, 0.1),
                            (8192, 0.1), (65160, 0.1)))
_MSS = _cum_table(((1460, 0.5), (1440, 0.15), (1452, 0.1), (1380, 0.1), (1360, 0.1),
                   (1220, 0.05)))
_LN_WIN = math.log(32000 / 200)


def sample(tl, prog, u):
    """The fields of a state that change with time, at uptime ``u``:
    (creation, expire, packets0, packets1, bytes0, bytes1, src state, dst state, timeout,
    src seqlo, src seqhi, dst seqlo, dst seqhi, dst max_win, dst wscale).

    ``creation`` and ``expire`` are whole uptime seconds as pf_state_export() computes
    them: age = now - creation; expire = last packet + timeout - now, 0 once past."""
    (K, t0, e1, e2, _e3, te, g, c1, c2, c3, c4,
     isn_s, isn_d, s0, s1, pay0, pay1, win_s, win_d, q0, q1,
     dmw, k0, k1, dws, seqmode) = _TL_unpack(tl)
    n = 0
    post = None
    if u >= te:
        pre = prog.opened
        last = te
        if K:
            n = int((u - te) / g)
            if n > K:
                n = K
            if n:
                last = te + n * g
        if u >= c1:
            ps = prog.post
            if u >= c4:
                post, last = ps[3], c4
            elif u >= c3:
                post, last = ps[2], c3
            elif u >= c2:
                post, last = ps[1], c2
            else:
                post, last = ps[0], c1
    elif u >= e2:
        pre, last = prog.pre[2], e2
    elif u >= e1:
        pre, last = prog.pre[1], e1
    else:
        pre, last = prog.pre[0], t0
    p0 = pre[0] + n * k0
    p1 = pre[1] + n * k1
    b0 = pre[2] + pre[4] * q0 + n * s0
    b1 = pre[3] + pre[5] * q1 + n * s1
    st = pre
    if post is not None:
        st = post
        p0 += post[0]
        p1 += post[1]
        b0 += post[2] + post[4] * q0
        b1 += post[3] + post[5] * q1
    uu = int(u)
    expire = int(last) + st[9] - uu
    if expire < 0:
        expire = 0
    if not prog.tcp:
        return (uu - int(t0), expire, p0, p1, b0, b1, st[6], st[7], st[8],
                0, 0, 0, 0, 0, 0)
    flag = pre[12]
    if flag == 0 and not seqmode:
        # seqlo = highest sequence sent; seqhi = what the peer's window allows beyond it.
        sa_s = pre[10] + n * pay0
        sa_d = pre[11] + n * pay1
        if post is not None:
            sa_s += post[10]
            sa_d += post[11]
        s_lo = (isn_s + sa_s) & _M32
        d_lo = (isn_d + sa_d) & _M32
        return (uu - int(t0), expire, p0, p1, b0, b1, st[6], st[7], st[8],
                s_lo, (s_lo + win_d) & _M32, d_lo, (d_lo + win_s) & _M32, dmw, dws)
    if flag == 2 and not seqmode:
        d_lo = (isn_d + 1) & _M32
        return (uu - int(t0), expire, p0, p1, b0, b1, st[6], st[7], st[8],
                isn_s, (isn_s + 1 + win_d) & _M32, d_lo, (d_lo + win_s) & _M32, dmw, dws)
    # Only the SYN seen (pf_create_state: dst seqhi 1, max_win 1), or sloppy tracking,
    # which never updates sequence numbers or windows.
    return (uu - int(t0), expire, p0, p1, b0, b1, st[6], st[7], st[8],
            isn_s, (isn_s + 2) & _M32, 0, 1, 1, 0)


def patch(rec, tcp, v):
    """Write sampled values ``v`` into a record at their offsets (records.py layout)."""
    _DYN.pack_into(rec, 196, v[0], v[1], v[2], v[3], v[4], v[5])
    rec[128] = v[6]
    rec[160] = v[7]
    rec[255] = v[8]
    if tcp:
        _SEQ.pack_into(rec, 112, v[9], v[10])
        _SEQ.pack_into(rec, 144, v[11], v[12])
        _U16.pack_into(rec, 156, v[13])
        rec[161] = v[14]


class SimState:
    """A simulated PF state, as the event iterator hands it out. Times are epoch seconds
    (UTC); the model keeps uptime seconds internally."""

    __slots__ = ("_s", "_boot", "creatorid")

    def __init__(self, s, boot, creatorid):
        self._s = s
        self._boot = boot
        self.creatorid = creatorid

    @property
    def id(self) -> int:
        return _ID_unpack(self._s[_S_REC])[0]

    @property
    def created_at(self) -> float:
        """Creation (pf_state_insert) time."""
        return self._boot + _T0.unpack_from(self._s[_S_TL])[0]

    @property
    def ended_at(self) -> float:
        """Removal from the table (may lie after the simulated period)."""
        return self._boot + self._s[_S_TEND]

    def step_times(self) -> list:
        """Times at which pf changes this state's peers or timeout, after its creation."""
        v = _TL_unpack(self._s[_S_TL])
        return [self._boot + t for t in v[2:5] + v[7:11] if t != _INF]

    def values_at(self, epoch: float) -> tuple:
        """The changing fields at ``epoch`` (see ``sample``)."""
        s = self._s
        return sample(s[_S_TL], s[_S_PROG], epoch - self._boot)

    def record_at(self, epoch: float) -> bytes:
        """The 264-byte record pf_state_export() would write at ``epoch``."""
        s = self._s
        rec = bytearray(s[_S_REC])
        patch(rec, s[_S_PROG].tcp, sample(s[_S_TL], s[_S_PROG], epoch - self._boot))
        return bytes(rec)

    def __repr__(self):
        return f"<SimState id={self.id:016x} creatorid={self.creatorid:08x}>"


class _Info:
    """Ground-truth bookkeeping of one state (truth mode only): model values, never
    read back from the records."""

    __slots__ = ("cls", "proto", "af", "stack_af", "direction", "ifname", "rule", "anchor",
                 "wire", "stack", "local", "src_static", "log", "rt", "rt_addr",
                 "state_flags", "sync_flags", "snapshots", "final", "prev", "at_start")

    def __init__(self):
        self.snapshots = []
        self.final = None
        self.prev = None        # (packets, bytes) at the previous snapshot time
        self.at_start = 0       # bytes (both directions) at the start of the run


# ----------------------------------------------------------------------------------------
# The engine

class _Checkpoint(NamedTuple):
    index: int            # snapshot index, or -1 for the end of the period
    u: float              # uptime
    epoch: float
    live: list            # states alive at u, in insertion (id) order
    alloc: list           # the same, in the order their memory was allocated
    ended: list           # states of the previous live table that ended by u (full mode)
    n_ended: int          # how many ended
    new: list             # states born since the previous checkpoint, alive at u
    ephemeral: list       # born and ended in between (truth mode; else empty)
    born: int             # all births since the previous checkpoint


_FIXED_RULE_PATHS = ("fw_services", "wan_in")   # rule chosen by protocol: ssh or the rest


class _Engine:
    """Draws the population and advances it from checkpoint to checkpoint.

    Three random streams keep the files independent of truth mode: ``tl`` (timelines,
    drawn for every state), ``id`` (identity of every state some snapshot sees) and
    ``eph`` (identity of states no snapshot sees, drawn only when someone needs them:
    the ground truth and the event iterator)."""

    def __init__(self, cfg: SimulationConfig, full: bool):
        self.cfg = cfg
        self.full = full
        seed = cfg.seed
        self.r_tl = random.Random(f"{seed}:timeline")
        self.r_id = random.Random(f"{seed}:identity")
        self.r_eph = random.Random(f"{seed}:ephemeral")
        rw = random.Random(f"{seed}:world")
        self.net = _Network(rw)
        start_ep = cfg.start.timestamp()
        # Booted 20-40 days before the first snapshot; pf enabled a minute later.
        boot_age = rw.uniform(*_BOOT_AGE)
        self.boot = start_ep - boot_age
        self.enable_u = 30.0 + rw.random() * 60.0
        # pf_status.stateid = gettime() << 32 at pfctl -e; ids count up from there.
        self.id_base = int(self.boot + self.enable_u) << 32
        self.start_u = boot_age
        # Snapshot i is at start_u + i * step, computed when reached: a list of them all
        # would grow with the duration before anything is written.
        self.snap_n = cfg.snapshot_count
        self.snap_step = cfg.interval if cfg.duration else 0.0
        self.end_u = self.start_u + cfg.duration
        # Per-class birth rates that keep the table at its target size (Little's law).
        self.counts = _apportion(cfg.states, [c.share for c in _CLASSES])
        total_share = sum(c.share for c in _CLASSES)
        rates = [cfg.states * c.share / total_share / _class_stats(ci)[0]
                 for ci, c in enumerate(_CLASSES)]
        self.rate = sum(rates)
        self.class_cum = _cum_table(list(enumerate(rates)))
        self.next_birth = (self.start_u + self.r_tl.expovariate(self.rate)
                           if self.rate > 0 else _INF)
        self.counter = 0
        self.templates = {}
        # (path, rule) by (class, v6): a class fixes the protocol family, so which rules
        # can have passed its packets is known in advance.
        self.pathrule = {}
        for ci, c in enumerate(_CLASSES):
            tcp = c.kind == _TCP
            for v6 in (False, True):
                items = []
                for path, pw in _CLASS_PATHS[ci].items():
                    if (AF6 if v6 else AF4) not in _PATH_AF[path]:
                        continue
                    vs = _VARIANTS[path]
                    if path in _FIXED_RULE_PATHS:
                        ok = [(vs[1] if tcp else vs[0], 1.0)]
                    else:
                        ok = [(v, v.weight) for v in vs
                              if (tcp or not v.tcp_only) and not (v6 and v.v4_only)
                              and not (ci == _C_HALFOPEN and v.synproxy)]
                    total = sum(w for _, w in ok)
                    items += [((path, v), pw * w / total) for v, w in ok]
                if items:
                    self.pathrule[ci, v6] = _cum_table(items)
        self.ports = {ci: _cum_table(t) for ci, t in _PORTS.items()}
        net = self.net
        self.clients = (net.clients4, net.clients6)
        self.remotes = (net.remote4, net.remote6)
        self.resolvers = (net.resolvers4, net.resolvers6)

    # -- population ----------------------------------------------------------------------

    def initial(self) -> list:
        """The states alive at the first snapshot, oldest first (insertion order).

        Each is made as soon as its timeline is drawn (holding a million timelines until
        the sort would double the peak memory), then numbered in creation order."""
        r, r_id = self.r_tl, self.r_id
        start_u = self.start_u
        make = self._make
        states = []
        append = states.append
        for ci, count in enumerate(self.counts):
            stats = _class_stats(ci)
            for _ in range(count):
                t, age = _timeline_alive(r, ci, stats)
                append(make(r_id, 0, start_u - age, t))
        t0_of = _T0.unpack_from
        self.alloc = states[:]
        states.sort(key=lambda s: t0_of(s[_S_TL]))
        # Ids of states created before the run: the counter advances with the birth rate
        # (states created and gone in between used the numbers we skip).
        prev = -1
        rate, enable_u, base = self.rate, self.enable_u, self.id_base
        pack_id = _ID.pack_into
        for s in states:
            c = int(rate * (t0_of(s[_S_TL])[0] - enable_u))
            if c <= prev:
                c = prev + 1
            prev = c
            pack_id(s[_S_REC], 0, base + c)
        self.counter = max(prev + 1, int(rate * (start_u - enable_u)))
        return states

    def checkpoints(self) -> Iterator[_Checkpoint]:
        """Yield the table at every snapshot time, then at the end of the period."""
        live = self.initial()
        start_u, step, n = self.start_u, self.snap_step, self.snap_n
        yield _Checkpoint(0, start_u, self.boot + start_u, live, self.alloc,
                          [], 0, live, [], 0)
        marks = ((i, start_u + i * step) for i in range(1, n))
        if self.end_u > start_u + (n - 1) * step + 1e-6:
            marks = itertools.chain(marks, [(-1, self.end_u)])
        make = self._make
        full = self.full
        for index, u in marks:
            # Deaths first, so the newcomers reuse their memory; the ended states are
            # only kept for whoever needs them (the ground truth and the events).
            ended = [s for s in live if s[_S_TEND] <= u] if full else ()
            before = len(live)
            live = [s for s in live if s[_S_TEND] > u]
            alloc = self.alloc = [s for s in self.alloc if s[_S_TEND] > u]
            n_ended = before - len(live)
            new, eph = [], []
            sid = self.id_base + self.counter
            for t0, t in self._births(u):
                if index >= 0 and t0 + t[_T_TEND] > u:
                    new.append(make(self.r_id, sid, t0, t))
                elif full:
                    eph.append(make(self.r_eph, sid, t0, t))
                sid += 1
            born = sid - self.id_base - self.counter
            self.counter += born
            live.extend(new)
            alloc.extend(new)
            yield _Checkpoint(index, u, self.boot + u, live, alloc, ended, n_ended, new, eph,
                              born)

    def _births(self, until):
        """Yield (time, timeline) of the states created after the previous checkpoint up
        to ``until``: a Poisson process, classes drawn by their birth rates. A generator,
        so an interval's newcomers are never all held as timelines at once."""
        r = self.r_tl
        times = []
        t = self.next_birth
        expo = r.expovariate
        rate = self.rate
        while t <= until:
            times.append(t)
            t += expo(rate)
        self.next_birth = t
        if times:
            names, cum, _total = self.class_cum
            classes = r.choices(names, cum_weights=cum, k=len(times))
            for t0, ci in zip(times, classes):
                yield t0, _timeline(r, ci)

    # -- one state -----------------------------------------------------------------------

    def _template(self, v, proto, af, stack_af):
        """The record of a rule's states with everything but keys, peers and times."""
        key = (v.name, proto, af, stack_af)
        tmpl = self.templates.get(key)
        if tmpl is None:
            gw = v.gw6 if af == AF6 and stack_af == AF6 else v.gw
            # pf_create_state: rtableid[didx] = act->rtableid, rtableid[sidx] = -1.
            rtable = (-1, v.rtable) if v.direction == PF_IN else (v.rtable, -1)
            zero = StateKey(bytes(16), bytes(16), 0, 0, 0, af)
            tmpl = self.templates[key] = encode_state(
                id=0, ifname=v.ifname, wire=zero, stack=zero._replace(af=stack_af),
                src=NO_PEER, dst=NO_PEER, proto=proto, direction=v.direction,
                creatorid=self.cfg.creatorid, rule=v.rule, anchor=v.anchor, rt=v.rt,
                rt_addr=pack_addr(gw) if v.rt and gw else b"", rtableid=rtable,
                max_mss=v.max_mss, log=v.log, sync_flags=v.sync_flags, min_ttl=v.min_ttl,
                set_tos=v.set_tos, state_flags=v.state_flags, set_prio=v.set_prio)
        return tmpl

    def _make(self, r, sid, t0, t):
        """Give a timeline its addresses, rule and TCP details: a complete state."""
        rnd = r.random
        net = self.net
        ci, proto, af = t[0], t[1], t[2]
        v6 = af == AF6
        names, cum, total = self.pathrule[ci, v6]
        path, v = names[_bisect(cum, rnd() * total)]
        # Ports: ICMP keeps its echo id where a port would be and the type on the other
        # side (pf_icmp_mapping: virtual id / virtual type).
        icmp = proto == _IPPROTO_ICMP or proto == _IPPROTO_ICMPV6
        if icmp:
            sport = r.getrandbits(16) or 1
            dport = _ICMP_ECHO if af == AF4 else _ICMP6_ECHO_REQUEST
        elif proto == _IPPROTO_ESP or proto == _IPPROTO_GRE:
            sport = dport = 0
        else:
            x = rnd()          # ephemeral port as Linux, Windows/macOS or OpenBSD pick it
            if x < 0.6:
                sport = 32768 + int(rnd() * 28232)
            elif x < 0.9:
                sport = 49152 + int(rnd() * 16384)
            else:
                sport = 1024 + int(rnd() * 64512)
            names, cum, total = self.ports[ci]
            dport = names[_bisect(cum, rnd() * total)]
        stack_af = af
        if path == "nat4_out" or path == "nat6_out" or path == "pppoe_out":
            names, cum, total = self.clients[v6]
            lhost = local = names[_bisect(cum, rnd() * total)]
            names, cum, total = (self.resolvers if ci == _C_DNS else self.remotes)[v6]
            remote = names[_bisect(cum, rnd() * total)]
            egress = net.ppp_4 if path == "pppoe_out" else (net.e0_6 if v6 else net.e0_4)
            # PF_OUT: index 1 is the local initiator, 0 the remote target; nat-to gives a
            # new source port from 50001-65535, or a new echo id from 1-65535
            # (pf_get_sport).
            stack = (remote, lhost, dport, sport, 0, af)
            wire = (remote, egress, dport,
                    1 + int(rnd() * 65535) if icmp else 50001 + int(rnd() * 15535), 0, af)
        elif path == "lan_in" or path == "routeto" or path == "vlan10":
            names, cum, total = net.vlan10 if path == "vlan10" else self.clients[v6]
            lhost = local = names[_bisect(cum, rnd() * total)]
            names, cum, total = (self.resolvers if ci == _C_DNS else self.remotes)[v6]
            remote = names[_bisect(cum, rnd() * total)]
            # PF_IN on the inside interface: index 0 is the initiator; no translation,
            # but a rule's rtable may move the stack side to another rdomain.
            wire = (lhost, remote, sport, dport, v.wire_rd, af)
            stack = wire if v.wire_rd == v.stack_rd else (lhost, remote, sport, dport,
                                                          v.stack_rd, af)
        elif path == "afto":
            # NAT64: v6 client to 64:ff9b::a.b.c.d, translated to v4 from em0. The stack
            # key is built for the outgoing v4 packet (pf_state_key_setup swaps sides).
            lhost = local = _draw(r, net.clients6)
            remote = _draw(r, net.resolvers4 if ci == _C_DNS else net.remote4)
            stack_af = AF4
            wire = (lhost, _NAT64 + remote[:4], sport, dport, 0, AF6)
            if icmp:
                stack = (remote, net.e0_4, _ICMP_ECHO, 1 + int(rnd() * 65535), 0, AF4)
            else:
                stack = (remote, net.e0_4, dport, 50001 + int(rnd() * 15535), 0, AF4)
        elif path == "fw_services":
            lhost = local = _draw(r, self.clients[v6])
            if not icmp:
                dport = {_C_DNS: 53, _C_UDP_FLOW: 123, _C_INTERACTIVE: 22}.get(ci, dport)
            wire = stack = (lhost, net.fw6 if v6 else net.fw4, sport, dport, 0, af)
        elif path == "wan_in":
            local = None
            client = _public6(r) if v6 else _public4(r)
            if proto == _IPPROTO_TCP:
                dport = 22
            wire = stack = (client, net.e0_6 if v6 else net.e0_4, sport, dport, 0, af)
        elif path == "rdr_in":
            if rnd() < 0.5:
                client = _draw(r, self.remotes[v6])
            else:
                client = _public6(r) if v6 else _public4(r)
            server, svc = _RDR.get(dport, ("web", dport))
            if v.name == "rdr_smtp_log":
                server, dport, svc = "mail", 25, 25
            elif v.synproxy and dport not in (80, 443):
                server, dport, svc = "web", 443, 443
            local = (net.servers6 if v6 else net.servers4)[server]
            public = net.e0_6 if v6 else (net.ppp_4 if v.rt else net.e0_4)
            # PF_IN: the wire key has the public address, the stack key the server.
            wire = (client, public, sport, dport, 0, af)
            stack = (client, local, sport, svc, 0, af)
        else:  # self_out: the firewall's own tunnels from em0
            local = None
            wire = stack = (_draw(r, net.vpn_peers), net.e0_4, 0, 0, 0, AF4)
        tmpl = self.templates.get((v.name, proto, af, stack_af))
        if tmpl is None:
            tmpl = self._template(v, proto, af, stack_af)
        rec = bytearray(tmpl)
        _ID.pack_into(rec, 0, sid)
        if stack is wire:
            KEY.pack_into(rec, OFF_KEY_WIRE, *wire)
            rec[OFF_KEY_STACK:OFF_KEY_STACK + 40] = rec[OFF_KEY_WIRE:OFF_KEY_WIRE + 40]
        else:
            _KEYS.pack_into(rec, OFF_KEY_WIRE, *wire, *stack)
        isn_s = isn_d = win_s = win_d = dmw = dws = smw = sws = seqmode = 0
        pay0, pay1 = t[_T_PAY0], t[_T_PAY1]
        if proto == _IPPROTO_TCP:
            isn = r.getrandbits(64)
            isn_s, isn_d = isn & _M32, isn >> 32
            if rnd() < 0.88:
                # Window scaling negotiated: both peers carry PF_WSCALE_FLAG | shift, and
                # max_win is the largest unscaled window seen.
                names, cum, total = _WS_SRC
                sws = PF_WSCALE_FLAG | names[_bisect(cum, rnd() * total)]
                names, cum, total = _WS_DST
                dws = PF_WSCALE_FLAG | names[_bisect(cum, rnd() * total)]
                smw = int(200 * _exp(rnd() * _LN_WIN))
                dmw = int(200 * _exp(rnd() * _LN_WIN))
                win_s = smw << (sws & PF_WSCALE_MASK)
                win_d = dmw << (dws & PF_WSCALE_MASK)
            else:
                names, cum, total = _WIN_UNSCALED
                win_s = smw = names[_bisect(cum, rnd() * total)]
                win_d = dmw = 5840 + int(rnd() * 59695)
            _U16.pack_into(rec, _SRC + 20, smw)
            rec[_SRC + 25] = sws
            if v.special:
                if v.state_flags & PFSTATE_SLOPPY:
                    seqmode = 1
                    pay0 = pay1 = 0
                if v.synproxy:
                    # synproxy keeps both MSS values and shifts the server's sequences.
                    _U16.pack_into(rec, _SRC + 22, _draw(r, _MSS) - (20 if v6 else 0))
                    _U16.pack_into(rec, _DST + 22, 1440 if v6 else 1460)
                    _U32.pack_into(rec, _DST + 16, r.getrandbits(32) | 1)
                if v.modulate:
                    _U32.pack_into(rec, _SRC + 16, r.getrandbits(32) | 1)  # modulate state
                if v.scrub:
                    # scrub (reassemble tcp): TTL seen, timestamp modulation.
                    ts = rnd() < 0.85
                    _SCRUB.pack_into(rec, _SRC, PFSS_TIMESTAMP if ts else 0,
                                     64 if rnd() < 0.7 else 128, PFSYNC_SCRUB_FLAG_VALID,
                                     r.getrandbits(32) if ts else 0)
                    _SCRUB.pack_into(rec, _DST, PFSS_TIMESTAMP if ts else 0,
                                     40 + int(rnd() * 215), PFSYNC_SCRUB_FLAG_VALID,
                                     r.getrandbits(32) if ts else 0)
        pre, post = t[_T_PRE], t[_T_POST]
        npre = len(pre)
        if npre == 3:
            e1, e2, e3, te = t0 + pre[1], t0 + pre[2], _INF, t0 + pre[2]
        elif npre == 2:
            e1, e2, e3, te = t0 + pre[1], _INF, _INF, t0 + pre[1]
        elif npre == 1:
            e1 = e2 = e3 = _INF
            te = t0
        else:
            e1, e2, e3, te = t0 + pre[1], t0 + pre[2], t0 + pre[3], t0 + pre[3]
        g, K = t[_T_G], t[_T_K]
        npost = len(post)
        # The last packet, computed from the same floats ``sample`` uses.
        if npost == 4:
            c1, c2, c3, c4 = t0 + post[0], t0 + post[1], t0 + post[2], t0 + post[3]
            last = c4
        elif npost == 0:
            c1 = c2 = c3 = c4 = _INF
            last = te + K * g
        elif npost == 1:
            c1 = last = t0 + post[0]
            c2 = c3 = c4 = _INF
        else:
            c1, c2, c3, c4 = t0 + post[0], t0 + post[1], _INF, _INF
            last = c2
        tl = _TL.pack(K, t0, e1, e2, e3, te, g, c1, c2, c3, c4,
                      isn_s, isn_d, t[_T_S0], t[_T_S1], pay0, pay1, win_s, win_d,
                      t[_T_Q0], t[_T_Q1], dmw, t[_T_K0], t[_T_K1], dws, seqmode)
        info = None
        if self.full:
            info = _Info()
            info.cls = ci
            info.proto = proto
            info.af = af
            info.stack_af = stack_af
            info.direction = v.direction
            info.ifname = v.ifname
            info.rule = v.rule
            info.anchor = v.anchor
            info.wire = wire
            info.stack = stack
            info.local = None if local is None else (af, local)
            info.src_static = (smw, sws)
            info.log = v.log
            info.rt = v.rt
            info.rt_addr = (v.gw6 if af == AF6 and stack_af == AF6 else v.gw) if v.rt else None
            info.state_flags = v.state_flags
            info.sync_flags = v.sync_flags
        return [t0 + t[_T_TEND], rec, tl, t[_T_PROG], info, last, None]


def _apportion(total, shares):
    """Split ``total`` by ``shares`` into whole numbers that add up (largest remainder)."""
    s = sum(shares)
    raw = [total * x / s for x in shares]
    counts = [int(x) for x in raw]
    rest = total - sum(counts)
    order = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[:rest]:
        counts[i] += 1
    return counts


# ----------------------------------------------------------------------------------------
# Writing

def _write_snapshot(path, cp, epoch, truth):
    """Sample every live state into its record, and write the file in table order.

    Records are patched in the order their memory was allocated: with a million states
    that is ~40% faster than visiting them in table order."""
    if truth:
        _patch_truth(cp.alloc, cp.u, cp.index)
    else:
        _patch_fast(cp.alloc, cp.u)
    write_state_file(path, [s[1] for s in cp.live], mtime=epoch)


def _patch_truth(live, u, index):
    """Patch records with ``sample``, keeping each state's values for the ground truth."""
    smp = sample
    for s in live:
        prog = s[3]
        v = smp(s[2], prog, u)
        patch(s[1], prog.tcp, v)
        info = s[4]
        info.final = v
        info.snapshots.append(index)


def _patch_fast(live, u):
    """Patch records for a snapshot: ``sample`` and ``patch`` inlined, plus the frozen
    shortcut, because this loop runs over every state of every snapshot.

    It must write exactly what ``sample`` gives: tests compare the files written with and
    without truth (which uses ``sample``) byte for byte."""
    dyn = _DYN.pack_into
    seq = _SEQ.pack_into
    u16 = _U16.pack_into
    ce = _CE.pack_into
    unpack = _TL_unpack
    uu = int(u)
    for s in live:
        rec = s[1]
        frozen = s[6]
        if frozen is not None:
            expire = frozen[1] - uu
            ce(rec, 196, uu - frozen[0], expire if expire > 0 else 0)
            continue
        prog = s[3]
        (K, t0, e1, e2, _e3, te, g, c1, c2, c3, c4,
         isn_s, isn_d, s0, s1, pay0, pay1, win_s, win_d, q0, q1,
         dmw, k0, k1, dws, seqmode) = unpack(s[2])
        n = 0
        post = None
        if u >= te:
            pre = prog.opened
            last = te
            if K:
                n = int((u - te) / g)
                if n > K:
                    n = K
                if n:
                    last = te + n * g
            if u >= c1:
                ps = prog.post
                if u >= c4:
                    post, last = ps[3], c4
                elif u >= c3:
                    post, last = ps[2], c3
                elif u >= c2:
                    post, last = ps[1], c2
                else:
                    post, last = ps[0], c1
        elif u >= e2:
            pre, last = prog.pre[2], e2
        elif u >= e1:
            pre, last = prog.pre[1], e1
        else:
            pre, last = prog.pre[0], t0
        expire = int(last) - uu
        creation = uu - int(t0)
        if post is None:
            st = pre
            expire += pre[9]
            dyn(rec, 196, creation, expire if expire > 0 else 0,
                pre[0] + n * k0, pre[1] + n * k1,
                pre[2] + pre[4] * q0 + n * s0, pre[3] + pre[5] * q1 + n * s1)
        else:
            st = post
            expire += post[9]
            dyn(rec, 196, creation, expire if expire > 0 else 0,
                pre[0] + n * k0 + post[0], pre[1] + n * k1 + post[1],
                pre[2] + pre[4] * q0 + n * s0 + post[2] + post[4] * q0,
                pre[3] + pre[5] * q1 + n * s1 + post[3] + post[5] * q1)
        rec[128] = st[6]
        rec[160] = st[7]
        rec[255] = st[8]
        if prog.tcp:
            flag = pre[12]
            if flag == 0 and not seqmode:
                sa_s = pre[10] + n * pay0
                sa_d = pre[11] + n * pay1
                if post is not None:
                    sa_s += post[10]
                    sa_d += post[11]
                s_lo = (isn_s + sa_s) & _M32
                d_lo = (isn_d + sa_d) & _M32
                seq(rec, 112, s_lo, (s_lo + win_d) & _M32)
                seq(rec, 144, d_lo, (d_lo + win_s) & _M32)
                u16(rec, 156, dmw)
                rec[161] = dws
            elif flag == 2 and not seqmode:
                d_lo = (isn_d + 1) & _M32
                seq(rec, 112, isn_s, (isn_s + 1 + win_d) & _M32)
                seq(rec, 144, d_lo, (d_lo + win_s) & _M32)
                u16(rec, 156, dmw)
                rec[161] = dws
            else:
                seq(rec, 112, isn_s, (isn_s + 2) & _M32)
                seq(rec, 144, 0, 1)
                u16(rec, 156, 1)
                rec[161] = 0
        if u >= s[5]:
            # Past its last packet: from now on only creation and expire change (an
            # expire already 0 stays 0).
            s[6] = (uu - creation, uu + (expire if expire > 0 else 0))


def _iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _key_json(k):
    a0, a1, p0, p1, rd, af = k
    return {"addr": [_ntop(af, a0), _ntop(af, a1)], "port": [p0, p1], "rdomain": rd}


def _peer_json(state, seqlo, seqhi, max_win, wscale):
    return {"state": state, "seqlo": seqlo, "seqhi": seqhi, "max_win": max_win,
            "wscale": wscale}


class _Truth:
    """Writes truth.jsonl as states end, and truth-summary.json at the end."""

    def __init__(self, out: Path, eng: _Engine):
        self.eng = eng
        self.path = out / "truth.jsonl"
        self.summary_path = out / "truth-summary.json"
        self.tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.f = os.fdopen(fd, "w", buffering=1 << 20)
        self.snaps = []
        self.hosts = {}
        self.states = 0

    def row(self, s):
        """Write one state's row."""
        i = s[_S_INFO]
        eng = self.eng
        end_u = eng.end_u
        tend = s[_S_TEND]
        created = eng.boot + _T0.unpack_from(s[_S_TL])[0]
        ended = eng.boot + tend if tend <= end_u else None
        last = sample(s[_S_TL], s[_S_PROG], min(tend, end_u))
        run_bytes = last[4] + last[5] - i.at_start
        local = None
        if i.local is not None:
            local = _ntop(*i.local)
            self.hosts[local] = self.hosts.get(local, 0) + run_bytes
        final = None
        if i.final is not None:
            f = i.final
            tcp = s[_S_PROG].tcp
            smw, sws = i.src_static if tcp else (0, 0)
            final = {"packets": [f[2], f[3]], "bytes": [f[4], f[5]], "expire": f[1],
                     "creation": f[0], "timeout": f[8],
                     "src": _peer_json(f[6], f[9], f[10], smw, sws),
                     "dst": _peer_json(f[7], f[11], f[12], f[13], f[14])}
        row = {
            "creatorid": eng.cfg.creatorid, "id": _ID_unpack(s[_S_REC])[0], "proto": i.proto, "af": i.af,
            "stack_af": i.stack_af, "direction": i.direction, "ifname": i.ifname,
            "rule": i.rule, "anchor": i.anchor,
            "wire": _key_json(i.wire), "stack": _key_json(i.stack),
            "created_at": _iso(created), "ended_at": None if ended is None else _iso(ended),
            "snapshots": i.snapshots, "final": final,
            "class": _CLASS_NAMES[i.cls], "local_host": local,
            "log": i.log, "rt": i.rt, "rt_addr": i.rt_addr, "state_flags": i.state_flags,
            "sync_flags": i.sync_flags, "created_ts": created, "ended_ts": ended,
            "bytes_in_run": run_bytes,
        }
        self.f.write(json.dumps(row, separators=(",", ":")))
        self.f.write("\n")
        self.states += 1

    def account(self, cp: _Checkpoint, written: bool):
        """Bookkeeping at one checkpoint: counter growth since the previous one, rows of
        the states that ended, the summary line of a snapshot."""
        packets = nbytes = 0
        u = cp.u
        if cp.index == 0:
            for s in cp.live:
                v = sample(s[_S_TL], s[_S_PROG], u)
                s[_S_INFO].prev = (v[2] + v[3], v[4] + v[5])
                s[_S_INFO].at_start = v[4] + v[5]
        else:
            for s in cp.ended:
                v = sample(s[_S_TL], s[_S_PROG], s[_S_TEND])
                pp, pb = s[_S_INFO].prev
                packets += v[2] + v[3] - pp
                nbytes += v[4] + v[5] - pb
                self.row(s)
            new = set(map(id, cp.new))
            for s in cp.live:
                v = sample(s[_S_TL], s[_S_PROG], u)
                p, b = v[2] + v[3], v[4] + v[5]
                pp, pb = (0, 0) if id(s) in new else s[_S_INFO].prev
                packets += p - pp
                nbytes += b - pb
                s[_S_INFO].prev = (p, b)
            for s in cp.ephemeral:
                v = sample(s[_S_TL], s[_S_PROG], min(s[_S_TEND], u))
                packets += v[2] + v[3]
                nbytes += v[4] + v[5]
                self.row(s)
        if cp.index < 0:
            return
        first = cp.index == 0
        self.snaps.append({
            "index": cp.index,
            "time": _iso(cp.epoch),
            "written": written,
            "alive": len(cp.live),
            "new": None if first else len(cp.new),
            "ended": None if first else cp.n_ended,
            "born": None if first else cp.born,
            "died": None if first else cp.n_ended + len(cp.ephemeral),
            "ephemeral": None if first else len(cp.ephemeral),
            "packets": None if first else packets,
            "bytes": None if first else nbytes,
        })

    def close(self, live, cfg: SimulationConfig):
        """Rows of the states still alive, then the summary."""
        for s in live:
            self.row(s)
        self.f.close()
        os.replace(self.tmp, self.path)
        top = sorted(self.hosts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        summary = {
            "config": {"states": cfg.states, "interval": cfg.interval,
                       "duration": cfg.duration, "seed": cfg.seed,
                       "start": _iso(cfg.start.timestamp()), "creatorid": cfg.creatorid,
                       "missing": list(cfg.missing)},
            "boot": _iso(self.eng.boot),
            "states_total": self.states,
            "snapshots": self.snaps,
            "top_local_host_by_bytes": ({"host": top[0][0], "bytes": top[0][1]}
                                        if top else None),
            "top_local_hosts_by_bytes": [{"host": h, "bytes": b} for h, b in top],
        }
        tmp = self.summary_path.with_name(self.summary_path.name + f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
        os.replace(tmp, self.summary_path)


def simulate(cfg: SimulationConfig, out_dir, truth: bool = False) -> SimulationResult:
    """Simulate ``cfg`` and write its snapshots (and ground truth) into ``out_dir``.

    Snapshot files are named and dated (mtime) by their time; ``cfg.missing`` indexes are
    skipped, as a cron job that did not run. With ``truth``, also writes truth.jsonl (one
    row per state that existed in the period) and truth-summary.json. The snapshots are
    the same bytes with or without ``truth``."""
    out = Path(out_dir)
    created = not out.is_dir()
    if created:
        out.mkdir(mode=0o700, parents=True)
        os.chmod(out, 0o700)
    try:
        return _simulate(cfg, out, truth)
    except BaseException:
        if created:
            try:
                out.rmdir()     # only if nothing was written: a failed run leaves no trace
            except OSError:
                pass
        raise


def _simulate(cfg, out, truth):
    """The run itself, into the directory ``out``."""
    result = SimulationResult(config=cfg)
    missing = set(cfg.missing)
    with cyclic_gc_paused():
        eng = _Engine(cfg, full=truth)
        tr = _Truth(out, eng) if truth else None
        live = []
        try:
            for cp in eng.checkpoints():
                written = cp.index >= 0 and cp.index not in missing
                if written:
                    when = cfg.snapshot_time(cp.index)
                    path = snapshot_path(out, when)
                    _write_snapshot(path, cp, when.timestamp(), truth)
                    result.snapshots.append((when, path))
                if tr is not None:
                    tr.account(cp, written)
                    live = cp.live
                del cp          # hold no table while the engine draws the next one
            if tr is not None:
                tr.close(live, cfg)
                result.truth_path = tr.path
                result.summary_path = tr.summary_path
        finally:
            if tr is not None and not tr.f.closed:
                tr.f.close()
                try:
                    os.unlink(tr.tmp)
                except OSError:
                    pass
    return result


# ----------------------------------------------------------------------------------------
# Events, for a later pfsync emitter

def iter_events(cfg: SimulationConfig) -> Iterator[tuple]:
    """Yield (epoch seconds, "insert" | "update" | "delete", SimState) in time order.

    The same model as ``simulate`` (same seed, same states, same ids). States alive at
    the start are inserted at their creation time, before everything else (their earlier
    steps are not repeated); an "update" is a change of pf's peer states or timeout
    (handshake, FIN and RST steps), not every packet; ``state.record_at(t)`` gives the
    full record at any time. Removals after the simulated period are not yielded."""
    with cyclic_gc_paused():
        eng = _Engine(cfg, full=True)
        boot, cid = eng.boot, cfg.creatorid
        kinds = ("insert", "update", "delete")
        wrapped = {}

        def wrap(s):
            w = wrapped.get(id(s))
            if w is None:
                w = wrapped[id(s)] = SimState(s, boot, cid)
            return w

        live = []
        lo = 0.0
        for cp in eng.checkpoints():
            if cp.index == 0:
                for s in cp.live:
                    yield (boot + _T0.unpack_from(s[_S_TL])[0], "insert", wrap(s))
                live, lo = cp.live, cp.u
                continue
            hi = cp.u
            events = []
            fresh = cp.new + cp.ephemeral
            for s in fresh:
                events.append((_T0.unpack_from(s[_S_TL])[0], 0, s))
            for s in live + fresh:
                v = _TL_unpack(s[_S_TL])
                for t in v[2:5] + v[7:11]:
                    if lo < t <= hi:
                        events.append((t, 1, s))
                if lo < s[_S_TEND] <= hi:
                    events.append((s[_S_TEND], 2, s))
            events.sort(key=lambda e: (e[0], e[1], _ID_unpack(e[2][_S_REC])[0]))
            for t, k, s in events:
                yield (boot + t, kinds[k], wrap(s))
                if k == 2:
                    wrapped.pop(id(s), None)
            live, lo = cp.live, hi
