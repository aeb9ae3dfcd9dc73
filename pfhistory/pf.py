"""py-pf compatible state objects: PacketFilter, PFState, PFStateKey, PFStatePeer,
PFAddr, PFPort and PF's constants, as py-pf's "Managing state tables" describes.

Records are decoded in C (pfhistory._native); this module only shapes the
decoded values into objects. Address families: the record says 2 or 24
(OpenBSD's AF_INET6); ``af`` attributes give the host's socket constants,
while ``record_af`` keeps the record's byte.
"""

import os
import socket
from itertools import repeat
from operator import itemgetter

from pfhistory import _native, sources
from pfhistory.addresses import azero, ntop
from pfhistory.exceptions import PFError
from pfhistory.pfvar import *  # noqa: F403 - the constants are part of this API
from pfhistory.pfctl_text import format_state
from pfhistory.pfvar import __all__ as _pfvar_all

__all__ = [
    "PFError",
    "PFAddr",
    "PFPort",
    "PFStatePeer",
    "PFStateKey",
    "PFState",
    "PacketFilter",
    "parse_states",
    "iter_states",
    "states_from_columns",
    "format_state",
    "host_af",
    "ifname_text",
    *_pfvar_all,
]

_HOST_AF = {OPENBSD_AF_INET: socket.AF_INET, OPENBSD_AF_INET6: socket.AF_INET6}
_ICMP_PROTOS = (socket.IPPROTO_ICMP, 58)  # 58 = IPPROTO_ICMPV6 on every BSD


def host_af(record_af):
    """The host's socket constant for a record's af byte (unknown stays as is)."""
    return _HOST_AF.get(record_af, record_af)


# Bytes vis(3) leaves alone: graphic ASCII except the backslash.
_VIS_PLAIN = bytes(b for b in range(0x21, 0x7F) if b != 0x5C)


def ifname_text(raw):
    """An interface name field as text: up to its NUL (or all 16 bytes), with
    every byte outside 0x21-0x7e as a vis(3) octal escape and backslash doubled,
    so a hostile name cannot forge output lines."""
    raw = raw.split(b"\0", 1)[0]
    if not raw.translate(None, _VIS_PLAIN):
        return raw.decode("ascii")
    out = []
    for byte in raw:
        if byte == 0x5C:
            out.append("\\\\")
        elif 0x21 <= byte <= 0x7E:
            out.append(chr(byte))
        else:
            out.append("\\%03o" % byte)
    return "".join(out)


class PFAddr:
    """An address of a state key: compares by value, prints as pfctl does."""

    __slots__ = ("af", "record_af", "packed", "_text")
    type = PF_ADDR_ADDRMASK

    def __init__(self, addr=None, af=socket.AF_UNSPEC):
        """From text ("192.0.2.1", "2001:db8::1") or a 16-byte pf_addr."""
        if isinstance(addr, str):
            if af == socket.AF_UNSPEC:
                af = socket.AF_INET6 if ":" in addr else socket.AF_INET
            try:
                packed = socket.inet_pton(af, addr)
            except (OSError, ValueError):
                raise PFError(f"{addr!r} is not an IPv4 or IPv6 address") from None
        elif addr is None:
            packed = b""
        else:
            packed = bytes(addr)
        self.packed = packed.ljust(16, b"\0")[:16]
        self.af = af
        self.record_af = {socket.AF_INET: OPENBSD_AF_INET,
                          socket.AF_INET6: OPENBSD_AF_INET6}.get(af, af)
        self._text = None

    @classmethod
    def _from_record(cls, record_af, packed):
        """Fast constructor for decoded records."""
        self = object.__new__(cls)
        self.af = _HOST_AF.get(record_af, record_af)
        self.record_af = record_af
        self.packed = packed
        self._text = None
        return self

    @property
    def addr(self):
        """The address as pfctl prints it."""
        text = self._text
        if text is None:
            text = self._text = ntop(self.record_af, self.packed)
        return text

    @property
    def mask(self):
        """State addresses are host addresses: the mask is all ones."""
        return "255.255.255.255" if self.record_af == OPENBSD_AF_INET else "ffff:" * 7 + "ffff"

    def _key(self):
        if self.record_af == OPENBSD_AF_INET:
            return (OPENBSD_AF_INET, self.packed[:4])
        return (self.record_af, self.packed)

    def is_zero(self):
        """PF_AZERO(addr, af) of sys/net/pfvar.h; False for an unknown af."""
        return azero(self.packed, self.record_af)

    def __eq__(self, other):
        if isinstance(other, PFAddr):
            return self._key() == other._key()
        if isinstance(other, str):
            return self.addr == other
        return NotImplemented

    def __hash__(self):
        return hash(self._key())

    def __str__(self):
        return self.addr

    def __repr__(self):
        return f"PFAddr({self.addr!r})"


class PFPort:
    """A state port: compares by value, prints as its number, false when 0."""

    __slots__ = ("num", "op", "proto")

    def __init__(self, num=0, proto=None, op=PF_OP_NONE):
        setattr_ = object.__setattr__
        setattr_(self, "num", (num, 0) if isinstance(num, int) else tuple(num))
        setattr_(self, "op", op)
        setattr_(self, "proto", proto)

    def __setattr__(self, name, value):
        raise AttributeError("PFPort is read-only: decoded ports are shared")

    def __bool__(self):
        return self.num[0] != 0

    def __int__(self):
        return self.num[0]

    __index__ = __int__

    def __str__(self):
        return str(self.num[0])

    def __format__(self, spec):
        return format(self.num[0], spec)

    def __eq__(self, other):
        if isinstance(other, PFPort):
            return (self.num, self.op, self.proto) == (other.num, other.op, other.proto)
        if isinstance(other, int):
            return self.num[0] == other and self.num[1] == 0
        return NotImplemented

    def __hash__(self):
        return hash(self.num[0])

    def __repr__(self):
        return f"PFPort({self.num[0]})"


class PFStatePeer(tuple):
    """One side's TCP/UDP tracking values (struct pfsync_state_peer)."""

    __slots__ = ()
    _fields = ("seqlo", "seqhi", "seqdiff", "max_win", "mss", "state", "wscale",
               "pfss_flags", "pfss_ttl", "scrub_flag", "pfss_ts_mod")

    def __new__(cls, seqlo=0, seqhi=0, seqdiff=0, max_win=0, mss=0, state=0,
                wscale=0, pfss_flags=0, pfss_ttl=0, scrub_flag=0, pfss_ts_mod=0):
        return tuple.__new__(cls, (seqlo, seqhi, seqdiff, max_win, mss, state,
                                   wscale, pfss_flags, pfss_ttl, scrub_flag, pfss_ts_mod))

    def __repr__(self):
        inner = ", ".join(f"{name}={value}" for name, value in zip(self._fields, self))
        return f"PFStatePeer({inner})"


class PFStateKey(tuple):
    """Addresses, ports and rdomain of one side of a state (pfsync_state_key)."""

    __slots__ = ()
    _fields = ("addr", "port", "rdomain", "af", "record_af")

    def __new__(cls, addr, port, rdomain=0, af=socket.AF_INET, record_af=None):
        if record_af is None:
            record_af = {socket.AF_INET: OPENBSD_AF_INET,
                         socket.AF_INET6: OPENBSD_AF_INET6}.get(af, af)
        return tuple.__new__(cls, (tuple(addr), tuple(port), rdomain, af, record_af))

    def __repr__(self):
        a, p = self[0], self[1]
        return f"PFStateKey({a[0]}:{p[0]}, {a[1]}:{p[1]}, rdomain={self[2]})"


_PLAIN = ("id", "rule", "anchor", "nat_rule", "creation", "expire", "creatorid", "proto",
          "direction", "log", "rt", "max_mss", "timeout", "sync_flags", "updates", "min_ttl",
          "set_tos", "state_flags")
_PAIRS = {"packets": ("packets0", "packets1"), "bytes": ("bytes0", "bytes1"),
          "rtableid": ("rtableid0", "rtableid1"), "set_prio": ("set_prio0", "set_prio1")}
_OBJECTS = "pfhistory.pf objects"


def _objects(c):
    """One PFAddr or interface name per distinct 16-byte value of a chunk,
    made once per chunk (the values are interned in C)."""
    objects = c.extras.get(_OBJECTS)
    if objects is None:
        objects = c.extras[_OBJECTS] = [
            PFAddr._from_record(af, raw) if kind == _UNIQ_ADDR else ifname_text(raw)
            for kind, af, raw in c["uniq"]]
    return objects


def _column(c, name):
    """A chunk's column as a list (made on first use, then cached)."""
    col = c._cache.get(name)
    return c[name] if col is None else col


def _plain(name):
    def get(self):
        c, i, _h = self
        col = c._cache.get(name)
        return (c[name] if col is None else col)[i]
    get.__name__ = name
    return property(get, doc=f"{name} (read-only)")


def _pair(first, second):
    def get(self):
        c, i, _h = self
        return (_column(c, first)[i], _column(c, second)[i])
    return property(get)


def _object(name):
    ref = name + "_ref"

    def get(self):
        c, i, _h = self
        return _objects(c)[_column(c, ref)[i]]
    get.__name__ = name
    return property(get, doc=f"{name} (read-only)")


_KEY_NAMES = {side: tuple(f"{side}_{f}" for f in ("addr0_ref", "addr1_ref", "port0", "port1",
                                                  "rdomain", "af"))
              for side in ("wire", "stack")}
_PEER_NAMES = {side: tuple(f"{side}_{f}" for f in PFStatePeer._fields) for side in ("src", "dst")}


def _key(self, side):
    c, i, _h = self
    objects, ports = _objects(c), _port_table()
    get = c._cache.get
    a0, a1, p0, p1, rdomain, af = [(get(name) or c[name])[i] for name in _KEY_NAMES[side]]
    return tuple.__new__(PFStateKey, ((objects[a0], objects[a1]), (ports[p0], ports[p1]),
                                      rdomain, _HOST_AF.get(af, af), af))


def _peer(self, side):
    c, i, _h = self
    get = c._cache.get
    return tuple.__new__(PFStatePeer, [(get(name) or c[name])[i] for name in _PEER_NAMES[side]])


class PFState(tuple):
    """One entry of PF's state table, with py-pf's attribute names.

    ``nk``/``sk`` and ``src``/``dst`` are oriented by direction as pfctl does;
    ``wire_key``/``stack_key`` are the record's key[PF_SK_WIRE] and
    key[PF_SK_STACK] as exported, before pfctl's ICMP display fix-up.
    ``af`` is the host's socket constant, ``record_af`` the record's byte;
    ``record`` is the 264-byte record itself, which pfctl's text is made from;
    ``history`` is None for a live or file state, and for a state rebuilt from
    the history a HistoryInfo (first_seen, last_seen, created_at, end window,
    the collection whose values it carries, exact or last observed), whose
    fields also read as attributes of the state.

    A view: it holds its chunk of decoded columns and its place in them, and
    makes each attribute when asked, so a million states cost little until
    they are read. States compare by record (and history). Read-only, like
    the table they came from.
    """

    __slots__ = ()

    packets = _pair(*_PAIRS["packets"])
    bytes = _pair(*_PAIRS["bytes"])
    rtableid = _pair(*_PAIRS["rtableid"])
    set_prio = _pair(*_PAIRS["set_prio"])
    ifname = _object("ifname")
    rt_addr = _object("rt_addr")

    @property
    def record_af(self):
        """The record's af byte (2, or 24 for IPv6 on OpenBSD)."""
        c, i, _h = self
        return _column(c, "af")[i]

    @property
    def af(self):
        """The host's socket.AF_INET / AF_INET6 for the record's af."""
        af = self.record_af
        return _HOST_AF.get(af, af)

    @property
    def wire_key(self):
        """key[PF_SK_WIRE] as exported."""
        return _key(self, "wire")

    @property
    def stack_key(self):
        """key[PF_SK_STACK] as exported."""
        return _key(self, "stack")

    @property
    def src(self):
        """The PFStatePeer pfctl shows first: the record's dst for PF_IN."""
        return _peer(self, "src" if self.direction == PF_OUT else "dst")

    @property
    def dst(self):
        """The other PFStatePeer."""
        return _peer(self, "dst" if self.direction == PF_OUT else "src")

    @property
    def nk(self):
        """The wire key for PF_OUT, the stack key for PF_IN (as pfctl)."""
        return self.wire_key if self.direction == PF_OUT else self.stack_key

    @property
    def sk(self):
        """The other key, with pfctl's ICMP display fix-up of its ports."""
        out = self.direction == PF_OUT
        sk = self.stack_key if out else self.wire_key
        if self.proto in _ICMP_PROTOS:
            nk_port = self.nk[1]
            port = (nk_port[0], sk[1][1]) if out else (sk[1][0], nk_port[1])
            sk = tuple.__new__(PFStateKey, (sk[0], port, sk[2], sk[3], sk[4]))
        return sk

    @property
    def record(self):
        """The 264-byte record as exported."""
        c, i, _h = self
        return c.record(i)

    @property
    def history(self):
        """HistoryInfo of a state rebuilt from the history, else None."""
        return tuple.__getitem__(self, 2)

    def __getattr__(self, name):
        """History attributes (first_seen, last_seen, ...) of rebuilt states."""
        history = tuple.__getitem__(self, 2)
        if history is not None and name in history._fields:
            return getattr(history, name)
        raise AttributeError(f"PFState has no attribute {name!r}")

    def __eq__(self, other):
        if not isinstance(other, PFState):
            return NotImplemented
        return self.record == other.record and self.history == other.history

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self):
        return hash(self.record)

    def __str__(self):
        """What OpenBSD's ``pfctl -ss -vv`` prints for this state."""
        return format_state(self, 2)[:-1]

    def __repr__(self):
        return f"<PFState id={self.id:016x} creatorid={self.creatorid:08x} {self.ifname}>"


for _name in _PLAIN:
    setattr(PFState, _name, _plain(_name))
for _cls in (PFStatePeer, PFStateKey):
    for _i, _name in enumerate(_cls._fields):
        setattr(_cls, _name, property(itemgetter(_i), doc=f"{_name} (read-only)"))
del _cls, _i, _name

_ports = None


def _port_table():
    """One shared PFPort per port number, made on first use."""
    global _ports
    if _ports is None:
        _ports = [PFPort(v) for v in range(65536)]
    return _ports


_UNIQ_ADDR = _native.UNIQ_ADDR


def states_from_columns(c, history=None):
    """PFState views over decoded Columns (pfhistory._native); history, if
    given, is one HistoryInfo per record (states rebuilt from the history)."""
    n = c.n
    if n == 0:
        return []
    return list(map(tuple.__new__, repeat(PFState),
                    zip(repeat(c, n), range(n), repeat(None) if history is None else history)))


def parse_states(data):
    """PFState objects for a bytes-like object of whole 264-byte records.

    Any bytes decode (nothing is validated); a trailing partial record is an
    error, because it means the data is not what we think it is.
    """
    size = len(data)
    if size % _native.RECORD_SIZE:
        raise PFError(
            f"{size} bytes is not a whole number of {_native.RECORD_SIZE}-byte state records")
    return tuple(states_from_columns(_native.decode(data)))


def iter_states(source, chunk_records=16384):
    """Yield PFState objects from a state file path (or the live table) in
    chunks, without building the whole table in memory."""
    for columns in sources.iter_columns(source, chunk_records=chunk_records):
        yield from states_from_columns(columns)


# What PacketFilter() reads when given no device: lets py-pf scripts run
# unchanged against a state file on any system.
DEVICE_ENV = "PFHISTORY_PF_DEVICE"


class PacketFilter:
    """py-pf's entry point, for state tables: the live /dev/pf on OpenBSD, or
    a ``pfctl -S`` state file on any system when ``dev`` names a regular file.

    Without ``dev``, the path in $PFHISTORY_PF_DEVICE, else /dev/pf.
    """

    def __init__(self, dev=None):
        if dev is None:
            dev = os.environ.get(DEVICE_ENV) or "/dev/pf"
        self.dev = dev

    def get_states(self):
        """A tuple of PFState objects, one per state in the table."""
        return tuple(self.iter_states())

    def iter_states(self, chunk_records=16384):
        """Yield PFState objects without building the whole tuple."""
        return iter_states(self.dev, chunk_records=chunk_records)

