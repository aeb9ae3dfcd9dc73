"""Looking back: PFState objects for past connections, from the history database.

History never writes and never migrates. A state is rebuilt by exporting
its stored values again as the 264-byte record pf_state_export() wrote and
decoding that with the same native decoder as a live table, so its
attributes and str() are the ones pfctl showed when it was observed.
"""

import ipaddress
import re
from collections import namedtuple
from operator import itemgetter
from datetime import datetime, timezone

from pfhistory import _native, queries, records
from pfhistory.db import DatabaseError, open_engine, require_current_schema, resolve_url
from pfhistory.exceptions import PFError
from pfhistory.pf import states_from_columns
from pfhistory.pfctl_text import format_records
from pfhistory.pfvar import OPENBSD_AF_INET, OPENBSD_AF_INET6, PF_IN, PF_OUT
from pfhistory.protocols import PROTOCOL_NUMBERS

__all__ = ["History", "HistoryInfo", "parse_host", "parse_port", "parse_proto"]

HistoryInfo = namedtuple("HistoryInfo", (
    "first_seen",      # datetime of the first collection that saw the state
    "last_seen",       # datetime of the last one (the newest collection while open)
    "created_at",      # datetime the state was created (collection time minus its age)
    "ended",           # None while open, else (last_seen, ended_before): it ended between
    "collection",      # (id, datetime) of the collection whose values it carries
    "exact",           # True: the values of that collection; False: its last observed ones
))

_BATCH = 5000
_VIS = re.compile(r"\\(\\|[0-7]{3})")


def _utc(epoch):
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)


def _epoch(t):
    if t is None:
        return None
    if isinstance(t, (int, float)):
        return int(t)
    if t.tzinfo is None:
        t = t.astimezone()
    return int(t.timestamp())


def ifname_raw(text):
    """The 16 bytes of an interface name shown escaped (the inverse of
    pf.ifname_text)."""
    raw = _VIS.sub(lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(1), 8)), text)
    return raw.encode("latin-1")[:16]


def parse_host(text, what="--host"):
    """(af, first, last) binary bounds of an address or CIDR, as stored."""
    try:
        net = ipaddress.ip_network(str(text).strip(), strict=False)
    except ValueError:
        raise PFError(f"{what} {text!r} is not an IPv4 or IPv6 address or CIDR "
                      f"(192.0.2.7, 10.0.0.0/8, 2001:db8::/32)") from None
    af = OPENBSD_AF_INET if net.version == 4 else OPENBSD_AF_INET6
    return af, net.network_address.packed, net.broadcast_address.packed


def parse_port(value, what="--port"):
    try:
        port = int(str(value), 10)
    except ValueError:
        raise PFError(f"{what} {value!r} is not a port number (0-65535)") from None
    if not 0 <= port <= 65535:
        raise PFError(f"{what} {value!r} is not a port number (0-65535)")
    return port


def parse_proto(value, what="--proto"):
    text = str(value).strip().lower()
    if text.isdigit() and int(text) < 256:
        return int(text)
    if text in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[text]
    raise PFError(f"{what} {value!r} is not a protocol name or number (tcp, udp, icmp, 47)")


def _direction(value):
    if value in (None, PF_IN, PF_OUT):
        return value
    text = str(value).lower()
    if text in ("in", "1"):
        return PF_IN
    if text in ("out", "2"):
        return PF_OUT
    raise PFError(f"--direction {value!r} is not in or out")


def _af(value):
    import socket

    if value in (None,):
        return None
    text = str(value).lower()
    if value == socket.AF_INET or text in ("inet", "4", "ipv4", str(OPENBSD_AF_INET)):
        return OPENBSD_AF_INET
    if value == socket.AF_INET6 or text in ("inet6", "6", "ipv6", str(OPENBSD_AF_INET6)):
        return OPENBSD_AF_INET6
    raise PFError(f"--af {value!r} is not inet or inet6")


class History:
    """Read-only access to a pfhistory database (any SQLAlchemy URL or path)."""

    def __init__(self, url=None):
        self.url = resolve_url(url)
        self.engine = open_engine(self.url, readonly=True)
        try:
            require_current_schema(self.engine, self.url)
        except DatabaseError:
            self.engine.dispose()
            raise
        except Exception as e:
            self.engine.dispose()
            from pfhistory.db import describe_db_error, is_db_error

            if is_db_error(e):
                raise DatabaseError(describe_db_error(e, self.url)) from None
            raise

    def close(self):
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def collections(self):
        """[(id, datetime)] of every collection, oldest first."""
        with self.engine.connect() as conn:
            return [(cid, _utc(at)) for cid, at in queries.collection_times(conn)]

    def collection_at(self, t):
        """(id, datetime) of the newest collection at or before t, or None."""
        with self.engine.connect() as conn:
            row = queries.collection_at_or_before(conn, _epoch(t))
        return None if row is None else (row[0], _utc(row[1]))

    def states(self, at=None, since=None, until=None, host=None, local=None, remote=None,
               port=None, proto=None, af=None, ifname=None, direction=None, rule=None,
               anchor=None, creatorid=None, id=None, nat=None, open=None, closed=None,
               min_bytes=None, min_duration=None, order="first_seen", limit=None):
        """PFState objects for past connections, filtered (all filters combine).

        at: the state table of the newest collection at or before that time,
        every state carrying its values of that collection where the samples
        still hold them (history.exact tells). Without at, each state carries
        its last observed values.
        """
        filters = queries.HistoryFilters(
            since=_epoch(since), until=_epoch(until),
            host=parse_host(host) if host is not None else None,
            local=parse_host(local, "--local") if local is not None else None,
            remote=parse_host(remote, "--remote") if remote is not None else None,
            port=parse_port(port) if port is not None else None,
            proto=parse_proto(proto) if proto is not None else None,
            af=_af(af), ifname=ifname, direction=_direction(direction),
            rule=rule, anchor=anchor, creatorid=creatorid,
            state_id=None if id is None else (id - (1 << 64) if id >= 1 << 63 else id),
            nat=nat, open=open, closed=closed, min_bytes=min_bytes,
            min_duration=min_duration, order=order, limit=limit)
        at_row = None
        if at is not None:
            with self.engine.connect() as conn:
                at_row = queries.collection_at_or_before(conn, _epoch(at))
            if at_row is None:
                return iter(())
        return self._stream(filters, at_row)

    def _stream(self, filters, at_row):
        with self.engine.connect() as conn:
            latest = queries.latest_collection(conn)
            if latest is None:
                return
            result = queries.history_rows(conn, filters, at_row)
            lookups = _Lookups(conn)
            while True:
                rows = result.fetchmany(_BATCH)
                if not rows:
                    break
                yield from _rebuild(rows, latest, at_row, lookups)

    def table_at(self, t, verbose=2):
        """What ``pfctl -ss`` printed (``-vv`` by default) at the collection at
        or before t, in the order of that snapshot's records."""
        with self.engine.connect() as conn:
            at_row = queries.collection_at_or_before(conn, _epoch(t))
            if at_row is None:
                return format_records(b"", verbose)
            rows = queries.history_rows(conn, queries.HistoryFilters(), at_row).fetchall()
            columns = _Columns(rows)
            records = _records(rows, columns, at_row, _Lookups(conn))
        # The kernel lists states in insertion order, which is id order for
        # the ids one firewall hands out (pf_state_insert in sys/net/pf.c).
        ids = map(_unsigned, map(columns.get("state_id"), rows))
        keyed = sorted(zip(ids, map(columns.get("creatorid"), rows), records))
        return format_records(b"".join([rec for _id, _creatorid, rec in keyed]), verbose)


_PEER_ORDER = ("pfss_flags", "pfss_ttl", "scrub_flag", "pfss_ts_mod", "seqlo", "seqhi",
               "seqdiff", "max_win", "mss", "state", "wscale")
# The row's columns in the record's field order (records.STATE); the ones
# marked None are made in Python: creation and expire (relative to the
# collection), and the 16-byte forms of the addresses and name.
_PACK_ORDER = (
    "state_id", "ifname",
    "w_addr0", "w_addr1", "w_port0", "w_port1", "w_rdomain", "w_af",
    "s_addr0", "s_addr1", "s_port0", "s_port1", "s_rdomain", "s_af",
    *(f"src_{f}" for f in _PEER_ORDER), *(f"dst_{f}" for f in _PEER_ORDER),
    "rt_addr", "rule", "anchor", "nat_rule", "v_created_at", "v_expires_at",
    "v_packets0", "v_packets1", "v_bytes0", "v_bytes1", "creatorid", "rtableid0",
    "rtableid1", "max_mss", "af", "proto", "direction", "log", "rt", "v_timeout",
    "v_sync_flags", "v_updates", "min_ttl", "set_tos", "v_state_flags", "set_prio0",
    "set_prio1")
_ADDRS = [_PACK_ORDER.index(n) for n in ("w_addr0", "w_addr1", "s_addr0", "s_addr1", "rt_addr")]
_CREATION, _EXPIRE = _PACK_ORDER.index("v_created_at"), _PACK_ORDER.index("v_expires_at")
_U64 = 1 << 64
_NO_ADDR = bytes(16)


class _Columns:
    """Where each named column sits in a batch of history rows."""

    def __init__(self, rows):
        self.names = list(rows[0]._fields) if rows else []

    def get(self, *names):
        return itemgetter(*[self.names.index(n) for n in names])


class _Lookups:
    """The 16-byte forms of addresses, the raw forms of interface names and
    the datetimes of collections a query met, each looked up once."""

    def __init__(self, conn):
        self.conn = conn
        self.addresses = {None: _NO_ADDR}
        self.ifnames = {}
        self.times = {None: None}     # epoch: datetime
        self.first_seen = {}          # collection id: datetime

    def addresses_of(self, rows, columns):
        """Look up the addresses rows refer to that are not known yet."""
        ids = set()
        for i in _ADDRS:
            ids.update(map(columns.get(_PACK_ORDER[i]), rows))
        ids.difference_update(self.addresses)
        for id_, raw in queries.address_bins(self.conn, ids).items():
            self.addresses[id_] = bytes(raw).ljust(16, b"\0")

    def utc(self, epoch):
        """A collection's time as a datetime (the same few, many times)."""
        t = self.times.get(epoch)
        if t is None and epoch is not None:
            t = self.times[epoch] = _utc(epoch)
        return t


def _unsigned(state_id):
    return state_id + _U64 if state_id < 0 else state_id


def _records(rows, columns, at_row, lookups):
    """The 264-byte records pf_state_export() wrote, exported again from
    history rows: creation and expire are relative to the collection whose
    values a row carries (at_row's, else the row's own)."""
    lookups.addresses_of(rows, columns)
    addresses, ifnames = lookups.addresses, lookups.ifnames
    pack_get = columns.get(*_PACK_ORDER)
    ref_get = None if at_row is not None else columns.get("ref_at")
    ref_at = at_row[1] if at_row is not None else None
    pack = records.STATE.pack
    out = []
    for r in rows:
        v = list(pack_get(r))
        if v[0] < 0:
            v[0] += _U64
        name = ifnames.get(v[1])
        if name is None:
            name = ifnames[v[1]] = ifname_raw(v[1])
        v[1] = name
        for i in _ADDRS:
            v[i] = addresses[v[i]]
        if ref_get is not None:
            ref_at = ref_get(r)
        v[_CREATION] = _u32(ref_at - v[_CREATION])
        v[_EXPIRE] = _u32(v[_EXPIRE] - ref_at)
        out.append(pack(*v))
    return out


def _rebuild(rows, latest, at_row, lookups):
    """PFState objects from history rows: records exported again, decoded."""
    if not rows:
        return []
    columns = _Columns(rows)
    recs = _records(rows, columns, at_row, lookups)
    first_get = columns.get("first_seen")
    first_seen = lookups.first_seen
    new = set(map(first_get, rows)).difference(first_seen)
    for cid, at in queries.collection_times_of(lookups.conn, new).items():
        first_seen[cid] = lookups.utc(at)
    info_get = columns.get("last_seen_at", "ended_before_at", "v_created_at", "exact")
    ref_get = None if at_row is not None else columns.get("ref_collection", "ref_at")
    utc = lookups.utc
    latest_seen = _utc(latest[1])
    collection = None if at_row is None else (at_row[0], _utc(at_row[1]))
    infos = []
    for r in rows:
        last_at, ended_at, created_at, exact = info_get(r)
        if ref_get is not None:
            ref_id, ref_at = ref_get(r)
            collection = (ref_id, utc(ref_at))
        last_seen = utc(last_at)
        infos.append(HistoryInfo(
            first_seen=first_seen[first_get(r)],
            last_seen=latest_seen if last_seen is None else last_seen,
            created_at=_utc(created_at),
            ended=None if ended_at is None else (last_seen, utc(ended_at)),
            collection=collection,
            exact=bool(exact)))
    columns = _native.decode(b"".join(recs))
    return states_from_columns(columns, history=infos)


def _u32(v):
    return 0 if v < 0 else (0xFFFFFFFF if v > 0xFFFFFFFF else v)
