"""Hourly rollups: what each host, service, rule and interface moved, for reports.

A day of a busy firewall is millions of states; a report cannot scan them in
seconds. So once a UTC hour is complete (some collection lies after its end),
one pass adds it to the table ``rollups``: hour h counts the collections
taken in (h, h + 3600], snapshots and pfsync batches alike. Every state some
collection of the hour saw counts: what it moved in the hour is its counters
at its last observation in the hour minus those at its last observation
before it (all of them if it was first seen in the hour, except the states of
the history's first collection: a baseline, whose bytes belong to no hour);
a counter that went back counts 0. Bytes summed over the hours therefore equal
the collections' ``bytes``. New states, half-open ones (judged at their first
observation) and initiating hosts count the states first seen in the hour;
"largest" keeps the hour's 25 states that moved the most.

The values at those two collections come from samples, which are kept for the
sample retention only: an hour is rolled up as soon as it is complete, once
(``rollup_hours`` lists the hours done), and an hour whose samples already
expired is counted without them (``rolled_up`` = 2), never guessed. The hour
not yet complete is not stored: reports and ``summary`` compute it when they
run (``open_rollups``), so they cover it too.

Collections are counted in id order, which is time order but for one race: a
snapshot read before a pfsync batch and recorded after it. Such a collection
counts in the hour being filled when it was recorded (each collection in the
latest hour seen so far), so no hour is ever reopened.

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
           "hour_of", "pending_hours", "roll_up_complete_hours", "timed_roll_up",
           "open_rollups"]

# Dimension numbers stored in rollups.dim.
LOCAL, REMOTE, SERVICE, RULE, INTERFACE, NAT, PUBLISHED, SOURCE, LARGEST = range(1, 10)
DIMENSIONS = {LOCAL: "local host", REMOTE: "remote host", SERVICE: "service",
              RULE: "rule", INTERFACE: "interface", NAT: "translated address",
              PUBLISHED: "published service", SOURCE: "initiating host",
              LARGEST: "largest states"}

DEFAULT_LOCAL_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                          "169.254.0.0/16", "fc00::/7", "fe80::/10")
LOCAL_NETWORKS_SETTING = "local_networks"
# The states that moved the most in an hour, kept as the largest.
LARGEST_PER_HOUR = 25
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


class Window:
    """An hour not yet in rollups: its collections first..last (by id), after
    collection before; complete once a later collection exists."""

    __slots__ = ("hour", "before", "first", "last", "complete")

    def __init__(self, hour, before, first, last, complete):
        self.hour, self.before, self.first, self.last = hour, before, first, last
        self.complete = complete


def hour_of(collected_at):
    """The rollup hour h of a collection: it closes the hour (h, h + 3600]."""
    return (collected_at - 1) - (collected_at - 1) % 3600


def pending_hours(conn):
    """The hours not yet in rollups, oldest first (Window), the newest incomplete.

    Each collection falls in the hour of the latest time seen up to it (by id),
    so hours follow one another in id order and a complete hour never grows."""
    newest = queries.newest_collection(conn)
    if newest is None:
        return []
    frontier = queries.rollup_frontier(conn)
    hour, done = frontier if frontier else (None, 0)
    out = []
    while done < newest[0]:
        nxt = queries.next_collection(conn, done)
        if nxt is None:
            break
        first, at = nxt
        hour = hour_of(at) if hour is None else max(hour + 3600, hour_of(at))
        end = queries.first_collection_after(conn, done, hour + 3600)
        if end is None:
            out.append(Window(hour, done, first, newest[0], False))
            break
        out.append(Window(hour, done, first, end - 1, True))
        done = end - 1
    return out


def roll_up_complete_hours(engine):
    """Add every complete hour not yet in rollups, oldest first. Returns how many.

    Each hour is read in one read transaction (a writer is not held up meanwhile)
    and written in a short write transaction that first checks no one else added
    it: the collector and the pfsync listener may both try."""
    with engine.connect() as conn:
        hours = [w for w in pending_hours(conn) if w.complete]
        ranges = _ranges(local_networks(conn))
    done = 0
    for w in hours:
        t0 = time.monotonic()
        with engine.connect() as conn:
            rows, expired, states = _count_hour(conn, w, ranges)
        with write_transaction(engine) as conn:
            frontier = queries.rollup_frontier(conn)
            if (frontier[1] if frontier else 0) != w.before:
                break               # another process rolled it up meanwhile
            queries.upsert_rollups(conn, rows)
            queries.insert_rollup_hour(conn, w.hour, w.first, w.last, 2 if expired else 1,
                                       states, int((time.monotonic() - t0) * 1000))
        done += 1
    return done


def open_rollups(conn, hour_lo, hour_hi):
    """Compute the hours in [hour_lo, hour_hi) not yet in rollups (the incomplete
    newest, or complete ones a collector has not added yet) into a temporary table
    of this connection (queries.fill_open_rollups). Returns their Windows and whether
    some samples they needed had expired; queries then read them with pending=True."""
    hours = [w for w in pending_hours(conn) if hour_lo <= w.hour < hour_hi]
    rows, expired = [], False
    if hours:
        ranges = _ranges(local_networks(conn))
        for w in hours:
            r, x, _n = _count_hour(conn, w, ranges)
            rows += r
            expired = expired or x
    queries.fill_open_rollups(conn, rows)
    return hours, expired


def _count_hour(conn, window, ranges):
    """(rollup rows, whether samples were missing, states read) of one hour."""
    acc = _Accumulator(window.hour, queries.address_ids_in(conn, ranges))
    first_id = queries.first_collection_id(conn)
    expired = False
    states = 0
    for closed in (False, True):
        cursor = queries.rollup_hour_states(conn, window.before, window.last, first_id,
                                            closed)
        try:
            while True:
                rows = cursor.fetchmany(20000)
                if not rows:
                    break
                states += len(rows)
                expired |= acc.add(rows)
        finally:
            cursor.close()
    return acc.rows(), expired, states


class _Accumulator:
    """Sums of one hour's states by dimension, then rollup rows."""

    def __init__(self, hour, local):
        self.hour = hour
        self.local = local
        self.sums = {}
        self.largest = []

    def add(self, rows):
        """Add states (queries.rollup_hour_states rows). Returns True if some value
        the hour needed was in a sample that has expired (such a state's bytes are not
        counted; if it is new in the hour, it is still counted as a new state).

        One tight loop, the common dimensions added inline (the lists a state's
        sums start as are copied where another dimension may add to them): at a
        million states an hour every call and attribute lookup shows."""
        sums = self.sums
        local = self.local
        largest = self.largest
        expired = False
        d_local, d_remote, d_service, d_rule, d_if, d_nat, d_pub, d_src = (
            sums.setdefault(dim, {}) for dim in (LOCAL, REMOTE, SERVICE, RULE, INTERFACE,
                                                 NAT, PUBLISHED, SOURCE))

        def bump(sums, key, n, half, a, b, c, d):
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

        for (pk, direction, proto, rule, anchor, ifname, wa0, wp0, wa1, wp1, sa0, sp0, sa1,
             sp1, mirror, afto, n, half, p0, p1, b0, b1) in rows:
            if p0 is None:
                expired = True          # a sample it needed has expired
                if not n:
                    continue
                p0 = p1 = b0 = b1 = 0
            else:
                if p0 < 0:              # a counter that went back moved nothing
                    p0 = 0
                if p1 < 0:
                    p1 = 0
                if b0 < 0:
                    b0 = 0
                if b1 < 0:
                    b1 = 0
                if not (n or p0 or p1 or b0 or b1):
                    continue
            if half is None:
                expired = True
                half = 0
            if afto:
                # af-to (always in): the wire key's [0] is the initiator; the stack
                # key, of the other family, has its sides swapped: [0] is the
                # responder as the translated packet reaches it, [1] the
                # initiator's new source.
                initiator, responder, its_peer, port = wa0, sa0, sa0, sp0
            elif direction == PF_OUT:
                # PF_OUT: [1] is the initiator (the stack key keeps it before
                # NAT), [0] the responder.
                initiator, responder, its_peer, port = sa1, sa0, wa0, wp0
            else:
                initiator, responder, its_peer, port = wa0, sa1, wa1, wp1
            # bytes[0] went from the initiator to the responder: the initiator's
            # sums (sent first) are fwd, the responder's back.
            fwd = [n, half, p0, p1, b0, b1]
            if initiator in local:
                lkey, lsum, rkey, rsum = initiator, fwd, its_peer, [n, half, p1, p0, b1, b0]
            elif responder in local:
                lkey, lsum, rkey, rsum = responder, [n, half, p1, p0, b1, b0], initiator, fwd
            elif direction == PF_OUT:
                # The firewall's own connections out: the remote end answers.
                lkey, rkey, rsum = None, its_peer, [n, half, p1, p0, b1, b0]
            else:
                lkey, rkey, rsum = None, initiator, fwd
            if lkey is not None:
                s = d_local.get(lkey)
                if s is None:
                    d_local[lkey] = lsum
                else:
                    s[0] += n
                    s[1] += half
                    s[2] += lsum[2]
                    s[3] += lsum[3]
                    s[4] += lsum[4]
                    s[5] += lsum[5]
            s = d_remote.get(rkey)
            if s is None:
                d_remote[rkey] = rsum[:]
            else:
                s[0] += n
                s[1] += half
                s[2] += rsum[2]
                s[3] += rsum[3]
                s[4] += rsum[4]
                s[5] += rsum[5]
            # The small dimensions: initiators' side first.
            key = (0 if proto in _ICMP else port, proto)
            s = d_service.get(key)
            if s is None:
                d_service[key] = fwd[:]
            else:
                s[0] += n
                s[1] += half
                s[2] += p0
                s[3] += p1
                s[4] += b0
                s[5] += b1
            key = (rule, anchor)
            s = d_rule.get(key)
            if s is None:
                d_rule[key] = fwd[:]
            else:
                s[0] += n
                s[1] += half
                s[2] += p0
                s[3] += p1
                s[4] += b0
                s[5] += b1
            s = d_if.get(ifname)
            if s is None:
                d_if[ifname] = fwd[:]
            else:
                s[0] += n
                s[1] += half
                s[2] += p0
                s[3] += p1
                s[4] += b0
                s[5] += b1
            # A translation of the local side: nat-to (out) or rdr-to (in)
            # gives the wire key's [1] another address or port than the stack's;
            # af-to gives the initiator the stack key's [1] as its new source.
            if afto:
                bump(d_nat, sa1, n, half, p0, p1, b0, b1)
            elif not mirror and (wa1 != sa1 or wp1 != sp1):
                bump(d_nat, wa1, n, half, p0, p1, b0, b1)
                if direction != PF_OUT:
                    bump(d_pub, (wa1, sa1, proto, wp1, sp1), n, half, p0, p1, b0, b1)
            if n:
                bump(d_src, initiator, 1, half, 0, 0, 0, 0)
            if b0 or b1:
                largest.append((b0 + b1, pk, p0 + p1))
                # keep the candidates for the largest states few
                if len(largest) > 4 * LARGEST_PER_HOUR:
                    largest.sort(reverse=True)
                    del largest[LARGEST_PER_HOUR:]
        return expired

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
        for total, pk, packets in self.largest[:LARGEST_PER_HOUR]:
            rows.append((hour, LARGEST, pk, 0, "", 0, 0, min(packets, _U63), 0,
                         min(total, _U63), 0))
        return rows


def timed_roll_up(engine):
    """roll_up_complete_hours with its duration in ms, for -v."""
    t0 = time.monotonic()
    n = roll_up_complete_hours(engine)
    return n, int((time.monotonic() - t0) * 1000)
