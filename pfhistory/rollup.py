"""Hourly rollups: what each host, service, rule and interface moved, for reports.

A day of a busy firewall is millions of states; a report cannot scan them in
seconds. After each collection we add what it saw to the rollups of its UTC
hour: for every state first seen there or whose counters grew since the
previous collection, the bytes and packets that moved, by dimension. That
needs the state's previous values, which live in samples only for the sample
retention, so rollups are made right after each collection (``pfhistory
collect`` does it) and a collection whose samples already expired is counted
without them (``rolled_up`` = 2), never guessed.

Local and remote: an endpoint is local when its address is inside the local
networks (default: the private and unique-local ranges; ``collect
--local-networks`` changes it). Of a state, the local host is its initiator
when that is local, else its responder when that is local; the remote host is
the other end as seen on the wire. pf counts bytes[0] in the direction of the
packet that created the state (initiator to responder) and bytes[1] back.
"""

import ipaddress
import time

from pfhistory import queries
from pfhistory.db import write_transaction
from pfhistory.exceptions import PFError
from pfhistory.pfvar import PF_OUT

__all__ = ["DIMENSIONS", "DEFAULT_LOCAL_NETWORKS", "parse_networks", "local_networks",
           "roll_up_pending"]

# Dimension numbers stored in rollups.dim.
LOCAL, REMOTE, SERVICE, RULE, INTERFACE, NAT, PUBLISHED, SOURCE, LARGEST = range(1, 10)
DIMENSIONS = {LOCAL: "local host", REMOTE: "remote host", SERVICE: "service",
              RULE: "rule", INTERFACE: "interface", NAT: "translated address",
              PUBLISHED: "published service", SOURCE: "initiating host",
              LARGEST: "largest states"}

DEFAULT_LOCAL_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                          "169.254.0.0/16", "fc00::/7", "fe80::/10")
LOCAL_NETWORKS_SETTING = "local_networks"
# States per collection kept as candidates for the largest connections.
LARGEST_PER_COLLECTION = 25
_TCPS_ESTABLISHED = 4
_ICMP = (1, 58)
_U63 = (1 << 63) - 1


def parse_networks(text, what="--local-networks"):
    """A comma-separated list of CIDRs, checked; returns the canonical strings."""
    nets = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise PFError(f"{what}: {part!r} is not an IPv4 or IPv6 network "
                          f"(10.0.0.0/8, fd00::/8)") from None
    if not nets:
        raise PFError(f"{what} names no network")
    return nets


def local_networks(conn):
    """The local networks rollups use: the stored setting or the default."""
    value = queries.get_setting(conn, LOCAL_NETWORKS_SETTING)
    return parse_networks(value, "the stored local_networks") if value else \
        list(DEFAULT_LOCAL_NETWORKS)


def _ranges(nets):
    """(af, first, last) of each network, as addresses are stored."""
    from pfhistory.history import parse_host

    return [parse_host(n, "a local network") for n in nets]


def roll_up_pending(engine, limit=None):
    """Count every collection not yet in rollups, one transaction each, oldest
    first. Returns how many were counted."""
    with engine.connect() as conn:
        pending = queries.pending_rollups(conn)
        ranges = _ranges(local_networks(conn))
    done = 0
    for collection_id, collected_at in pending[:limit]:
        with write_transaction(engine) as conn:
            roll_up(conn, collection_id, collected_at, ranges)
        done += 1
    return done


def hour_of(collected_at):
    """The rollup hour h of a collection: it closes the hour (h, h + 3600]."""
    return (collected_at - 1) - (collected_at - 1) % 3600


def roll_up(conn, collection_id, collected_at, ranges):
    """Add one collection to the rollups of its hour (inside the caller's
    transaction)."""
    # A collection counts what moved since the previous one: the hour
    # (h, h + 3600] that its time closes.
    hour = hour_of(collected_at)
    local = queries.address_ids_in(conn, ranges)
    first = queries.previous_collection(conn, collection_id) is None
    acc = _Accumulator(hour, local)
    span = queries.first_seen_pk_range(conn, collection_id)
    if span is not None:
        # The first collection of a history is its baseline: what its
        # states moved before it cannot be placed in any hour.
        acc.add(queries.rollup_new_states(conn, collection_id, *span), new=True,
                moved=not first)
    complete = 1
    if queries.samples_until(conn, collection_id):
        acc.add(queries.rollup_changed_states(conn, collection_id), new=False, moved=True)
    elif queries.collection_updated(conn, collection_id):
        complete = 2
    queries.upsert_rollups(conn, acc.rows())
    queries.mark_rolled_up(conn, collection_id, complete)


class _Accumulator:
    """Sums of one collection's states by dimension, then rollup rows."""

    def __init__(self, hour, local):
        self.hour = hour
        self.local = local
        self.sums = {}
        self.largest = []

    def add(self, rows, new, moved):
        """Add states (rollup_new_states / rollup_changed_states rows).

        new: first seen at this collection; moved: count their counters
        (False for the baseline collection). One tight loop: at a million
        states per collection every attribute lookup shows."""
        sums = self.sums
        local = self.local
        largest = self.largest
        n = 1 if new else 0
        d_local, d_remote, d_service, d_rule, d_if, d_nat, d_pub, d_src = (
            sums.setdefault(dim, {}) for dim in (LOCAL, REMOTE, SERVICE, RULE, INTERFACE,
                                                 NAT, PUBLISHED, SOURCE))

        def bump(sums, key, half, a, b, c, d):
            s = sums.get(key)
            if s is None:
                sums[key] = [n, half, a, b, c, d]
            else:
                s[0] += n
                s[1] += half
                s[2] += a
                s[3] += b
                s[4] += c
                s[5] += d

        for (pk, direction, proto, rule, anchor, ifname, wa0, wp0, wa1, wp1, sa0, _sp0,
             sa1, sp1, mirror, p0, p1, b0, b1, src_state, dst_state) in rows:
            if not moved:
                p0 = p1 = b0 = b1 = 0
            else:
                if p0 < 0:
                    p0 = 0
                if p1 < 0:
                    p1 = 0
                if b0 < 0:
                    b0 = 0
                if b1 < 0:
                    b1 = 0
            half = 1 if (new and src_state is not None and proto == 6
                         and src_state < _TCPS_ESTABLISHED
                         and dst_state < _TCPS_ESTABLISHED) else 0
            if direction == PF_OUT:
                # PF_OUT: [1] is the initiator (the stack key keeps it before
                # NAT), [0] the responder.
                initiator, responder, its_peer, port = sa1, sa0, wa0, wp0
            else:
                initiator, responder, its_peer, port = wa0, sa1, wa1, wp1
            # bytes[0] went from the initiator to the responder.
            if initiator in local:
                bump(d_local, initiator, half, p0, p1, b0, b1)
                bump(d_remote, its_peer, half, p1, p0, b1, b0)
            elif responder in local:
                bump(d_local, responder, half, p1, p0, b1, b0)
                bump(d_remote, initiator, half, p0, p1, b0, b1)
            elif direction == PF_OUT:
                # The firewall's own connections out: the remote end answers.
                bump(d_remote, its_peer, half, p1, p0, b1, b0)
            else:
                bump(d_remote, initiator, half, p0, p1, b0, b1)
            bump(d_service, (0 if proto in _ICMP else port, proto), half, p0, p1, b0, b1)
            bump(d_rule, (rule, anchor), half, p0, p1, b0, b1)
            bump(d_if, ifname, half, p0, p1, b0, b1)
            # A translation of the local side: nat-to (out) or rdr-to (in)
            # gives the wire key's [1] another address or port than the stack's.
            if not mirror and (wa1 != sa1 or wp1 != sp1):
                bump(d_nat, wa1, half, p0, p1, b0, b1)
                if direction != PF_OUT:
                    bump(d_pub, (wa1, sa1, proto, wp1, sp1), half, p0, p1, b0, b1)
            if new:
                bump(d_src, initiator, half, 0, 0, 0, 0)
            if b0 or b1:
                largest.append((b0 + b1, pk, p0 + p1))
        # keep the candidates for the largest connections few
        if len(largest) > 4 * LARGEST_PER_COLLECTION:
            largest.sort(reverse=True)
            del largest[LARGEST_PER_COLLECTION:]

    def rows(self):
        hour = self.hour
        rows = []

        def key(dim, k):
            """(key, key2, label) of a dimension's key."""
            if dim in (SERVICE, RULE):
                return k[0], k[1], ""
            if dim == INTERFACE:
                return 0, 0, k
            if dim == PUBLISHED:
                return k[0], k[1], f"{k[2]}/{k[3]}/{k[4]}"
            return k, 0, ""

        for dim, sums in self.sums.items():
            for k, s in sums.items():
                rows.append((hour, dim, *key(dim, k), s[0], s[1], min(s[2], _U63),
                             min(s[3], _U63), min(s[4], _U63), min(s[5], _U63)))
        self.largest.sort(reverse=True)
        for total, pk, packets in self.largest[:LARGEST_PER_COLLECTION]:
            rows.append((hour, LARGEST, pk, 0, "", 0, 0, min(packets, _U63), 0,
                         min(total, _U63), 0))
        return rows


def timed_roll_up(engine):
    """roll_up_pending with its duration in ms, for -v."""
    t0 = time.monotonic()
    n = roll_up_pending(engine)
    return n, int((time.monotonic() - t0) * 1000)
