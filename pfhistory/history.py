"""Looking back: PFState objects for past connections, from the history database.

History never writes and never migrates. A state is rebuilt by exporting
its stored values again as the 264-byte record pf_state_export() wrote and
decoding that with the same native decoder as a live table, so its
attributes and str() are the ones pfctl showed when it was observed.
"""

import ipaddress
import re
import struct
from collections import namedtuple
from datetime import datetime, timezone
from itertools import starmap
from operator import itemgetter

from pfhistory import _native, queries
from pfhistory.db import DatabaseError, open_engine, require_current_schema, resolve_url
from pfhistory.exceptions import PFError
from pfhistory.pf import states_from_columns
from pfhistory.pfctl_text import format_records
from pfhistory.pfvar import OPENBSD_AF_INET, OPENBSD_AF_INET6, PF_IN, PF_OUT
from pfhistory.protocols import PROTOCOL_NUMBERS
from pfhistory.timespec import TimeSpecError, parse_duration, parse_time

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


def _epoch(t, what="time"):
    """Epoch seconds for a time given as the CLI takes it ("2026-11-24T22:00",
    "2h"), as a datetime (naive: local time) or as epoch seconds."""
    if t is None:
        return None
    if isinstance(t, str):
        return int(parse_time(t, what=what).timestamp())
    if isinstance(t, (int, float)):
        return int(t)
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.astimezone()
        return int(t.timestamp())
    raise TimeSpecError(f"{what} {t!r} is not a time: give a datetime, epoch seconds or "
                        f"a string such as 2026-11-24T22:00 or 2h")


def _seconds(d, what):
    """Seconds for a duration given as the CLI takes it ("3d") or as a number."""
    if d is None or isinstance(d, (int, float)):
        return d
    if isinstance(d, str):
        return int(parse_duration(d, what))
    raise TimeSpecError(f"{what} {d!r} is not a duration: give seconds or a string "
                        f"such as 90m or 3d")


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

        Times (at, since, until) are what the CLI takes ("2026-11-24T22:00",
        local unless an offset is given; "2h" back from now), datetimes or
        epoch seconds; min_duration is "3d" or seconds. One that cannot be read
        raises TimeSpecError (a PFError).

        at: the state table of the newest collection at or before that time,
        every state carrying its values of that collection where the samples
        still hold them (history.exact tells). Without at, each state carries
        its last observed values.
        """
        filters = queries.HistoryFilters(
            since=_epoch(since, "since"), until=_epoch(until, "until"),
            host=parse_host(host) if host is not None else None,
            local=parse_host(local, "--local") if local is not None else None,
            remote=parse_host(remote, "--remote") if remote is not None else None,
            port=parse_port(port) if port is not None else None,
            proto=parse_proto(proto) if proto is not None else None,
            af=_af(af), ifname=ifname, direction=_direction(direction),
            rule=rule, anchor=anchor, creatorid=creatorid,
            state_id=None if id is None else (id - (1 << 64) if id >= 1 << 63 else id),
            nat=nat, open=open, closed=closed, min_bytes=min_bytes,
            min_duration=_seconds(min_duration, "min_duration"), order=order, limit=limit)
        at_row = None
        if at is not None:
            with self.engine.connect() as conn:
                at_row = queries.collection_at_or_before(conn, _epoch(at, "at"))
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
        or before t (a time as states() takes it), in the order of that
        snapshot's records."""
        with self.engine.connect() as conn:
            at_row = queries.collection_at_or_before(conn, _epoch(t))
            if at_row is None:
                return format_records(b"", verbose)
            data = _records(queries.table_rows(conn, at_row), _Lookups(conn))
        # The kernel lists states in insertion order, which is id order for
        # the ids one firewall hands out (pf_state_insert in sys/net/pf.c).
        return format_records(_native.sort_by_id(data), verbose)


# The row's first columns are the record's (queries.RECORD_NAMES). Each row
# is packed once as it comes, a native 64-bit slot a value (the interface
# name's 16 bytes take two), and _native.pack writes the records from the
# slots: fields big-endian, address ids as their 16-byte forms, creation and
# expire clamped to the record's u32 (a state's own values fit; values of
# another collection, where retention dropped its own, may not).
_FIELDS = len(queries.RECORD_NAMES)
_FORMATS = re.findall(r"\d*[a-zA-Z]", queries.RECORD_FORMAT.lstrip("<>=!@"))
assert len(_FORMATS) == _FIELDS
_IFNAME = queries.RECORD_NAMES.index("ifname")
_ADDRS = tuple(queries.RECORD_NAMES.index(n)
               for n in ("w_addr0", "w_addr1", "s_addr0", "s_addr1", "rt_addr"))
_CREATION = queries.RECORD_NAMES.index("creation")
_TIMES = (_CREATION, queries.RECORD_NAMES.index("expire"))
_ROW = struct.Struct("=" + "".join("16s" if i == _IFNAME else "q" for i in range(_FIELDS)))
_PACK = "".join("s" if i == _IFNAME else "A" if i in _ADDRS else "U" if i in _TIMES
                else "I" if fmt == "I" else "q" for i, fmt in enumerate(_FORMATS))
_RECORD_COLUMNS = itemgetter(slice(0, _FIELDS))
_IFNAME_OF = itemgetter(_IFNAME)
_NO_ADDR = bytes(16)
# The history columns that follow the record's.
_REF_COLLECTION, _REF_AT = _FIELDS, _FIELDS + 1   # without at= only


class _Lookups:
    """The 16-byte forms of addresses, the raw forms of interface names and
    the datetimes of collections a query met, each looked up once."""

    def __init__(self, conn):
        self.conn = conn
        self.addresses = {queries.NO_ADDRESS: _NO_ADDR}
        self.ifnames = {}
        self.times = {None: None}     # epoch: datetime
        self.first_seen = {}          # collection id: datetime

    def address_forms(self, data, count):
        """(keys, forms) for _native.pack of count rows packed in data: their
        address ids ascending, and the 16-byte forms of those."""
        keys = _native.pack_keys(data, count, _PACK)
        new = set(keys).difference(self.addresses)
        for id_, raw in queries.address_bins(self.conn, new).items():
            self.addresses[id_] = bytes(raw).ljust(16, b"\0")
        return keys, b"".join(map(self.addresses.__getitem__, keys))

    def raw_ifnames(self, rows):
        """rows with the interface name as the record's bytes. SQLite gives
        the stored text's bytes, which are those but for names shown escaped;
        other databases give the text."""
        names = set(map(_IFNAME_OF, rows))
        for name in names.difference(self.ifnames):
            if isinstance(name, bytes) and b"\\" not in name:
                self.ifnames[name] = name
            else:
                text = name if isinstance(name, str) else bytes(name).decode("latin-1")
                self.ifnames[name] = ifname_raw(text)
        if all(self.ifnames[name] is name for name in names):
            return rows
        raw = self.ifnames.__getitem__
        return [(*r[:_IFNAME], raw(r[_IFNAME]), *r[_IFNAME + 1:]) for r in rows]

    def first_seen_times(self, column):
        for cid, at in queries.collection_times_of(
                self.conn, set(column).difference(self.first_seen)).items():
            self.first_seen[cid] = self.utc(at)
        return list(map(self.first_seen.__getitem__, column))

    def utc(self, epoch):
        """A collection's time as a datetime (the same few, many times)."""
        t = self.times.get(epoch)
        if t is None and epoch is not None:
            t = self.times[epoch] = _utc(epoch)
        return t


def _records(rows, lookups):
    """The 264-byte records pf_state_export() wrote, exported again from rows
    that start with the record's columns, as one bytes object."""
    if not rows:
        return b""
    if len(rows[0]) != _FIELDS:
        rows = list(map(_RECORD_COLUMNS, rows))
    data = b"".join(starmap(_ROW.pack, lookups.raw_ifnames(rows)))
    keys, forms = lookups.address_forms(data, len(rows))
    return _native.pack(data, len(rows), _PACK, keys, forms)


def _rebuild(rows, latest, at_row, lookups):
    """PFState objects from history rows: records exported again, decoded."""
    if not rows:
        return []
    data = _records(rows, lookups)
    # The history columns after the record's (queries.history_rows).
    first = _FIELDS if at_row is not None else _REF_AT + 1
    first_seen = lookups.first_seen_times([r[first] for r in rows])
    utc = lookups.utc
    latest_seen = utc(latest[1])
    collection = None if at_row is None else (at_row[0], utc(at_row[1]))
    infos = []
    for r, first_at in zip(rows, first_seen):
        last_at, ended_at, exact = r[first + 1:first + 4]
        if at_row is None:
            collection = (r[_REF_COLLECTION], utc(r[_REF_AT]))
        last_seen = utc(last_at)
        infos.append(HistoryInfo(
            first_seen=first_at,
            last_seen=latest_seen if last_seen is None else last_seen,
            created_at=_utc((at_row[1] if at_row is not None else r[_REF_AT]) - r[_CREATION]),
            ended=None if ended_at is None else (last_seen, utc(ended_at)),
            collection=collection,
            exact=bool(exact)))
    return states_from_columns(_native.decode(data), history=infos)
