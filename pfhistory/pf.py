"""py-pf compatible state objects: PacketFilter, PFState, PFStateKey, PFStatePeer,
PFAddr, PFPort and PF's constants, as py-pf's "Managing state tables" describes.

Records are decoded in C (pfhistory._native); this module only shapes the
decoded values into objects. Address families: the record says 2 or 24
(OpenBSD's AF_INET6); ``af`` attributes give the host's socket constants,
while ``record_af`` keeps the record's byte.
"""

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
        self.num = (num, 0) if isinstance(num, int) else tuple(num)
        self.op = op
        self.proto = proto

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


_PORTS = [None] * 65536


def _ports_for(values):
    """Make sure a shared PFPort exists for each port number in values."""
    ports = _PORTS
    for v in set(values):
        if ports[v] is None:
            ports[v] = PFPort(v)


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


for _cls in (PFStatePeer, PFStateKey):
    for _i, _name in enumerate(_cls._fields):
        setattr(_cls, _name, property(itemgetter(_i), doc=f"{_name} (read-only)"))
del _cls, _i, _name

_PFSTATE_FIELDS = (
    "id", "ifname", "rule", "anchor", "nat_rule", "creation", "expire",
    "packets", "bytes", "creatorid", "af", "record_af", "proto", "direction",
    "log", "rt", "rt_addr", "rtableid", "max_mss", "timeout", "sync_flags",
    "updates", "min_ttl", "set_tos", "set_prio", "state_flags",
    "src", "dst", "nk", "sk", "wire_key", "stack_key",
)


class PFState:
    """One entry of PF's state table, with py-pf's attribute names.

    ``nk``/``sk`` and ``src``/``dst`` are oriented by direction as pfctl does;
    ``wire_key``/``stack_key`` are the record's key[PF_SK_WIRE] and
    key[PF_SK_STACK] as exported, before pfctl's ICMP display fix-up.
    """

    __slots__ = _PFSTATE_FIELDS + ("__weakref__",)
    _fields = _PFSTATE_FIELDS

    def __eq__(self, other):
        if not isinstance(other, PFState):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    __hash__ = None

    def __str__(self):
        """What OpenBSD's ``pfctl -ss -vv`` prints for this state."""
        return format_state(self, 2)[:-1]

    def __repr__(self):
        return f"<PFState id={self.id:016x} creatorid={self.creatorid:08x} {self.ifname}>"


def _orient(direction, proto, wire, stack, src, dst):
    """nk, sk, src, dst as pfctl's print_state() picks them by direction."""
    if direction == PF_OUT:
        nk, sk = wire, stack
        if proto in _ICMP_PROTOS and sk[1][0] != nk[1][0]:
            sk = tuple.__new__(PFStateKey, (sk[0], (nk[1][0], sk[1][1]), sk[2], sk[3], sk[4]))
        return nk, sk, src, dst
    nk, sk = stack, wire
    if proto in _ICMP_PROTOS and sk[1][1] != nk[1][1]:
        sk = tuple.__new__(PFStateKey, (sk[0], (sk[1][0], nk[1][1]), sk[2], sk[3], sk[4]))
    return nk, sk, dst, src


def _addresses(afs, raws, cache):
    """PFAddr objects for a column, sharing one object per distinct address."""
    out = []
    append = out.append
    for key in zip(afs, raws):
        a = cache.get(key)
        if a is None:
            a = cache[key] = PFAddr._from_record(*key)
        append(a)
    return out


def _peers(c, prefix):
    names = [prefix + f for f in PFStatePeer._fields]
    return list(map(tuple.__new__, repeat(PFStatePeer), zip(*(c[n] for n in names))))


def _keys(c, side, cache):
    afs = c[side + "_af"]
    a0 = _addresses(afs, c[side + "_addr0"], cache)
    a1 = _addresses(afs, c[side + "_addr1"], cache)
    p0, p1 = c[side + "_port0"], c[side + "_port1"]
    _ports_for(p0)
    _ports_for(p1)
    ports = _PORTS
    rows = zip(zip(a0, a1), [(ports[x], ports[y]) for x, y in zip(p0, p1)],
               c[side + "_rdomain"], map(host_af, afs), afs)
    return list(map(tuple.__new__, repeat(PFStateKey), rows))


_ifname_cache = {}


def _ifnames(raws):
    cache = _ifname_cache
    if len(cache) > 4096:  # hostile input: do not grow without bound
        cache.clear()
    out = []
    append = out.append
    for raw in raws:
        name = cache.get(raw)
        if name is None:
            name = cache[raw] = ifname_text(raw)
        append(name)
    return out


def states_from_columns(c):
    """Build PFState objects from decoded Columns (see pfhistory._native)."""
    if c.n == 0:
        return []
    cache = {}
    wire = _keys(c, "wire", cache)
    stack = _keys(c, "stack", cache)
    srcs = _peers(c, "src_")
    dsts = _peers(c, "dst_")
    rt_addrs = _addresses(c["af"], c["rt_addr"], cache)
    new = object.__new__
    cls = PFState
    orient = _orient
    out = []
    append = out.append
    for (id_, ifname, rule, anchor, nat_rule, creation, expire, p0, p1, b0, b1,
         creatorid, af, proto, direction, log, rt, rt_addr, rt0, rt1, max_mss,
         timeout, sync_flags, updates, min_ttl, set_tos, prio0, prio1,
         state_flags, w, s, src, dst) in zip(
            c["id"], _ifnames(c["ifname"]), c["rule"], c["anchor"], c["nat_rule"],
            c["creation"], c["expire"], c["packets0"], c["packets1"], c["bytes0"],
            c["bytes1"], c["creatorid"], c["af"], c["proto"], c["direction"], c["log"],
            c["rt"], rt_addrs, c["rtableid0"], c["rtableid1"], c["max_mss"],
            c["timeout"], c["sync_flags"], c["updates"], c["min_ttl"], c["set_tos"],
            c["set_prio0"], c["set_prio1"], c["state_flags"], wire, stack, srcs, dsts):
        st = new(cls)
        st.id = id_
        st.ifname = ifname
        st.rule = rule
        st.anchor = anchor
        st.nat_rule = nat_rule
        st.creation = creation
        st.expire = expire
        st.packets = (p0, p1)
        st.bytes = (b0, b1)
        st.creatorid = creatorid
        st.af = _HOST_AF.get(af, af)
        st.record_af = af
        st.proto = proto
        st.direction = direction
        st.log = log
        st.rt = rt
        st.rt_addr = rt_addr
        st.rtableid = (rt0, rt1)
        st.max_mss = max_mss
        st.timeout = timeout
        st.sync_flags = sync_flags
        st.updates = updates
        st.min_ttl = min_ttl
        st.set_tos = set_tos
        st.set_prio = (prio0, prio1)
        st.state_flags = state_flags
        st.wire_key = w
        st.stack_key = s
        st.nk, st.sk, st.src, st.dst = orient(direction, proto, w, s, src, dst)
        append(st)
    return out


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


class PacketFilter:
    """py-pf's entry point, for state tables: the live /dev/pf on OpenBSD, or
    a ``pfctl -S`` state file on any system when ``dev`` names a regular file."""

    def __init__(self, dev="/dev/pf"):
        self.dev = dev

    def get_states(self):
        """A tuple of PFState objects, one per state in the table."""
        return tuple(self.iter_states())

    def iter_states(self, chunk_records=16384):
        """Yield PFState objects without building the whole tuple."""
        return iter_states(self.dev, chunk_records=chunk_records)

