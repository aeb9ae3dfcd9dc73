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
from pfhistory.pfvar import OPENBSD_AF_INET, OPENBSD_AF_INET6, PF_OUT

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
    out = []
    for text in nets:
        net = ipaddress.ip_network(text)
        af = OPENBSD_AF_INET if net.version == 4 else OPENBSD_AF_INET6
        out.append((af, net.network_address.packed, net.broadcast_address.packed))
    return out


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
        for row in queries.rollup_new_states(conn, collection_id, *span):
            # The first collection of a history is its baseline: what its
            # states moved before it cannot be placed in any hour.
            acc.add(row, new=True, moved=not first)
    complete = 1
    if queries.samples_until(conn, collection_id):
        for row in queries.rollup_changed_states(conn, collection_id):
            acc.add(row, new=False, moved=True)
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

    def _add(self, key, new, half, p_out, p_in, b_out, b_in):
        s = self.sums.get(key)
        if s is None:
            self.sums[key] = [new, half, p_out, p_in, b_out, b_in]
        else:
            s[0] += new
            s[1] += half
            s[2] += p_out
            s[3] += p_in
            s[4] += b_out
            s[5] += b_in

    def add(self, row, new, moved):
        (pk, direction, proto, rule, anchor, ifname, wa0, wp0, wa1, wp1, sa0, _sp0,
         sa1, sp1, mirror, p0, p1, b0, b1, src_state, dst_state) = row
        if moved:
            p0, p1 = max(p0, 0), max(p1, 0)
            b0, b1 = max(b0, 0), max(b1, 0)
        else:
            p0 = p1 = b0 = b1 = 0
        n = 1 if new else 0
        half = 1 if (new and proto == 6 and src_state is not None
                     and max(src_state, dst_state) < _TCPS_ESTABLISHED) else 0
        local = self.local
        if direction == PF_OUT:
            # PF_OUT: [1] is the initiator (the stack key keeps it before NAT),
            # [0] the responder.
            initiator, responder, its_peer, port = sa1, sa0, wa0, wp0
        else:
            initiator, responder, its_peer, port = wa0, sa1, wa1, wp1
        fwd = (p0, p1, b0, b1)          # bytes[0]: sent by the initiator
        back = (p1, p0, b1, b0)
        add = self._add
        if initiator in local:
            add((LOCAL, initiator, 0, ""), n, half, *fwd)
            add((REMOTE, its_peer, 0, ""), n, half, *back)
        elif responder in local:
            add((LOCAL, responder, 0, ""), n, half, *back)
            add((REMOTE, initiator, 0, ""), n, half, *fwd)
        elif direction == PF_OUT:
            # The firewall's own connections out: the remote end answers.
            add((REMOTE, its_peer, 0, ""), n, half, *back)
        else:
            add((REMOTE, initiator, 0, ""), n, half, *fwd)
        out = fwd
        svc_port = 0 if proto in _ICMP else port
        add((SERVICE, svc_port, proto, ""), n, half, *out)
        add((RULE, rule, anchor, ""), n, half, *out)
        add((INTERFACE, 0, 0, ifname), n, half, *out)
        # A translation of the local side: nat-to (out) or rdr-to (in) gives
        # the wire key's [1] another address or port than the stack key's.
        if not mirror and (wa1 != sa1 or wp1 != sp1):
            add((NAT, wa1, 0, ""), n, half, *out)
            if direction != PF_OUT:
                add((PUBLISHED, wa1, sa1, f"{proto}/{wp1}/{sp1}"), n, half, *out)
        if new:
            add((SOURCE, initiator, 0, ""), 1, half, 0, 0, 0, 0)
        total = b0 + b1
        if total:
            self.largest.append((total, pk, p0 + p1))

    def rows(self):
        hour = self.hour
        rows = [(hour, dim, key, key2, label, s[0], s[1], min(s[2], _U63), min(s[3], _U63),
                 min(s[4], _U63), min(s[5], _U63))
                for (dim, key, key2, label), s in self.sums.items()]
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
