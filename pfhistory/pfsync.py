"""pfsync(4) version 6 packets: strict decoding of what a firewall announces, and encoding.

Wire format: shared reference pf-formats.md section 4, from OpenBSD's sys/net/if_pfsync.h
(1.65) and the receive path of sys/net/if_pfsync.c (1.332). A packet is an IPv4 datagram
of protocol 240 with TTL 255, holding a 20-byte header (version 6, total length in bytes)
and blocks of a 4-byte subheader (action, message length in 4-byte words, count) followed
by count messages of that length. Full states travel as the 264-byte pfsync_state record
the state files use; they are kept as bytes here and decoded later, a batch at a time, by
the native decoder.

A packet is either decoded whole or refused whole (MalformedPacket, with a short reason
a counter can key on): nothing of a refused packet is ever applied.
"""

import operator
import struct
from typing import NamedTuple

from pfhistory.exceptions import PFError
from pfhistory.pfvar import (
    OPENBSD_AF_INET,
    OPENBSD_AF_INET6,
    PF_IN,
    PF_OUT,
    PF_TCPS_PROXY_DST,
    PFTM_MAX,
)
from pfhistory.records import PEER, RECORD_SIZE

__all__ = [
    "IPPROTO_PFSYNC", "PFSYNC_VERSION", "PFSYNC_DFLTTL", "PFSYNC_GROUP", "HEADER_SIZE",
    "ACT_CLR", "ACT_OINS", "ACT_INS_ACK", "ACT_OUPD", "ACT_UPD_C", "ACT_UPD_REQ", "ACT_DEL",
    "ACT_DEL_C", "ACT_INS_F", "ACT_DEL_F", "ACT_BUS", "ACT_OTDB", "ACT_EOF", "ACT_INS",
    "ACT_UPD", "ACT_TDB", "ACT_MAX", "ACTION_NAMES", "MESSAGE_SIZE", "BUS_START", "BUS_END",
    "MalformedPacket", "Message", "Packet", "strip_ip", "decode", "decode_ip",
    "encode", "encode_ip", "clr", "del_c", "upd_c", "ins_ack", "upd_req", "bus",
]

IPPROTO_PFSYNC = 240            # netinet/in.h
PFSYNC_VERSION = 6              # net/if_pfsync.h
PFSYNC_DFLTTL = 255             # net/if_pfsync.h: the sender's TTL; anything else is refused
PFSYNC_GROUP = "224.0.0.240"    # INADDR_PFSYNC_GROUP, netinet/in.h
HEADER_SIZE = 20                # struct pfsync_header: version, _pad, len, pfcksum[16]
SUBHEADER_SIZE = 4              # struct pfsync_subheader: action, len (words), count

# PFSYNC_ACT_* (net/if_pfsync.h 1.65).
ACT_CLR = 0
ACT_OINS = 1
ACT_INS_ACK = 2
ACT_OUPD = 3
ACT_UPD_C = 4
ACT_UPD_REQ = 5
ACT_DEL = 6
ACT_DEL_C = 7
ACT_INS_F = 8
ACT_DEL_F = 9
ACT_BUS = 10
ACT_OTDB = 11
ACT_EOF = 12
ACT_INS = 13
ACT_UPD = 14
ACT_TDB = 15
ACT_MAX = 16

ACTION_NAMES = ("CLR", "OINS", "INS_ACK", "OUPD", "UPD_C", "UPD_REQ", "DEL", "DEL_C",
                "INS_F", "DEL_F", "BUS", "OTDB", "EOF", "INS", "UPD", "TDB")

# Bytes of one message of each action the receive path handles (pf-formats.md 4.3);
# the sender's subheader may announce longer messages (newer senders append fields), never
# shorter. Deprecated and unimplemented actions are skipped by their announced length.
MESSAGE_SIZE = {
    ACT_CLR: 20,        # struct pfsync_clr: ifname[16], creatorid
    ACT_INS_ACK: 12,    # struct pfsync_ins_ack: id, creatorid
    ACT_UPD_C: 84,      # struct pfsync_upd_c
    ACT_UPD_REQ: 12,    # struct pfsync_upd_req
    ACT_DEL: RECORD_SIZE,
    ACT_DEL_C: 12,      # struct pfsync_del_c
    ACT_BUS: 12,        # struct pfsync_bus: creatorid, endtime, status, _pad[3]
    ACT_INS: RECORD_SIZE,
    ACT_UPD: RECORD_SIZE,
}
# TDB (struct pfsync_tdb, 52 bytes: IPsec replay counters) carries nothing of PF's state
# table: its blocks are skipped by their announced length, like the deprecated ones.

BUS_START = 1           # PFSYNC_BUS_START
BUS_END = 2             # PFSYNC_BUS_END

_HEADER = struct.Struct(">BxH16s")
_SUBHEADER = struct.Struct(">BBH")
_ID_CREATOR = struct.Struct(">QI")          # ins_ack, upd_req, del_c: id, creatorid
_CLR = struct.Struct(">16sI")
_BUS = struct.Struct(">IIB3x")
_UPD_C = struct.Struct(">Q32s32sIIBB2x")    # id, src, dst, creatorid, expire, timeout, flags
# The same message with both peers' fields (records.PEER) spread out, read in one call.
_UPD_C_FIELDS = struct.Struct(">Q" + PEER.format.lstrip("<>!=@") * 2 + "IIBB2x")
# Indexes of each peer's fields in PEER_FIELDS order (seqlo ... wscale, then the scrub
# fields that lead the struct), and of creatorid and timeout.
_SRC = operator.itemgetter(5, 6, 7, 8, 9, 10, 11, 1, 2, 3, 4)
_DST = operator.itemgetter(16, 17, 18, 19, 20, 21, 22, 12, 13, 14, 15)
_REC_ID = struct.Struct(">Q")               # a record's id at offset 0
_REC_CREATOR = struct.Struct(">I")          # its creatorid at offset 236
_IPV4 = struct.Struct(">BBHHHBBH4s4s")

# Offsets in the 264-byte record (pf-formats.md 1.5) the insert checks read.
_OFF_SRC_STATE, _OFF_DST_STATE = 104 + 24, 136 + 24
_OFF_WIRE_AF, _OFF_STACK_AF = 24 + 38, 64 + 38
_OFF_AF, _OFF_DIRECTION, _OFF_TIMEOUT = 250, 252, 255
_VALID_AF = (OPENBSD_AF_INET, OPENBSD_AF_INET6)


class MalformedPacket(PFError):
    """A packet that is not a valid pfsync v6 packet; ``reason`` names the check it failed."""

    def __init__(self, reason, detail):
        super().__init__(f"malformed pfsync packet ({reason}): {detail}")
        self.reason = reason


class Message(NamedTuple):
    """One pfsync message, in host values.

    ``creatorid`` and ``id`` are as pfctl prints them (ntohl, betoh64). ``record`` is the
    264-byte pfsync_state of INS, UPD and DEL. ``src``/``dst`` are an UPD_C's peers as
    ``records.PEER`` fields in PEER_FIELDS order; ``timeout`` its PFTM_* index. ``ifname``
    is a CLR's interface (b"" for all); ``status``/``endtime`` a BUS's.
    """

    action: int
    creatorid: int = 0
    id: int = 0
    record: bytes = b""
    src: tuple = ()
    dst: tuple = ()
    timeout: int = 0
    ifname: bytes = b""
    status: int = 0
    endtime: int = 0


class Packet(NamedTuple):
    """A decoded packet: its messages in order, and the blocks of unknown actions skipped."""

    messages: list
    skipped: int


def _name(action):
    return ACTION_NAMES[action] if action < ACT_MAX else f"action {action}"


def _check_record(rec, action):
    """The checks pfsync_in_ins() makes before importing a state (pf-formats.md 4.3)."""
    if rec[_OFF_TIMEOUT] >= PFTM_MAX:
        return f"timeout {rec[_OFF_TIMEOUT]} is not below PFTM_MAX"
    if rec[_OFF_SRC_STATE] > PF_TCPS_PROXY_DST or rec[_OFF_DST_STATE] > PF_TCPS_PROXY_DST:
        return "a peer state is beyond PF_TCPS_PROXY_DST"
    if rec[_OFF_DIRECTION] not in (PF_IN, PF_OUT):
        return f"direction {rec[_OFF_DIRECTION]} is neither in nor out"
    for off in (_OFF_AF, _OFF_WIRE_AF, _OFF_STACK_AF):
        if rec[off] not in _VALID_AF:
            return f"address family {rec[off]} is neither inet nor inet6"
    return None


def decode(data):
    """Decode one pfsync packet (header onwards) strictly; raise MalformedPacket.

    The header's length must fit the data (anything after it is ignored, as the kernel
    trims it); every block must fit inside that length and the blocks must end exactly
    there. Messages are read at the announced stride, which may exceed the known size.
    """
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise MalformedPacket("short", f"{len(data)} bytes is shorter than the 20-byte header")
    version, length, _cksum = _HEADER.unpack_from(data)
    if version != PFSYNC_VERSION:
        raise MalformedPacket("version", f"version {version}, not {PFSYNC_VERSION}")
    if length < HEADER_SIZE or length > len(data):
        raise MalformedPacket("length", f"header length {length} does not fit the "
                                        f"{len(data)} bytes received")
    messages = []
    skipped = 0
    off = HEADER_SIZE
    while off < length:
        if length - off < SUBHEADER_SIZE:
            raise MalformedPacket("length", f"{length - off} stray bytes after the last block")
        action, words, count = _SUBHEADER.unpack_from(data, off)
        off += SUBHEADER_SIZE
        mlen = words << 2
        if mlen * count > length - off:
            raise MalformedPacket("length", f"{_name(action)} block of {count} x {mlen} "
                                            f"bytes overruns the packet")
        known = MESSAGE_SIZE.get(action)
        if known is None:
            # Deprecated, unimplemented or unknown: skipped by its announced length, as
            # the kernel does; an empty one cannot be told from garbage.
            if mlen == 0 or count == 0:
                raise MalformedPacket("action", f"unknown action {action} with an empty block")
            skipped += 1
            off += mlen * count
            continue
        if mlen < known:
            raise MalformedPacket("length", f"{ACTION_NAMES[action]} messages of {mlen} bytes "
                                            f"are shorter than {known}")
        end = off + mlen * count
        _decode_block(action, data, off, end, mlen, messages)
        off = end
    return Packet(messages, skipped)


def _decode_block(action, data, off, end, mlen, out):
    append = out.append
    if action in (ACT_INS, ACT_UPD, ACT_DEL):
        for o in range(off, end, mlen):
            rec = data[o:o + RECORD_SIZE]
            if action != ACT_DEL:
                problem = _check_record(rec, action)
                if problem is not None:
                    raise MalformedPacket("value", f"{ACTION_NAMES[action]} state: {problem}")
            append(Message(action, _REC_CREATOR.unpack_from(rec, 236)[0],
                           _REC_ID.unpack_from(rec)[0], rec))
    elif action == ACT_UPD_C:
        unpack = _UPD_C_FIELDS.unpack_from
        for o in range(off, end, mlen):
            v = unpack(data, o)
            timeout = v[25]
            if timeout >= PFTM_MAX or v[10] > PF_TCPS_PROXY_DST or v[21] > PF_TCPS_PROXY_DST:
                raise MalformedPacket("value", "UPD_C: timeout or peer state out of range")
            append(Message(action, v[23], v[0], b"", _SRC(v), _DST(v), timeout))
    elif action in (ACT_DEL_C, ACT_INS_ACK, ACT_UPD_REQ):
        for o in range(off, end, mlen):
            sid, creatorid = _ID_CREATOR.unpack_from(data, o)
            append(Message(action, creatorid, sid))
    elif action == ACT_CLR:
        for o in range(off, end, mlen):
            ifname, creatorid = _CLR.unpack_from(data, o)
            append(Message(action, creatorid, ifname=ifname.split(b"\0", 1)[0]))
    elif action == ACT_BUS:
        for o in range(off, end, mlen):
            creatorid, endtime, status = _BUS.unpack_from(data, o)
            append(Message(action, creatorid, status=status, endtime=endtime))


def strip_ip(datagram):
    """The pfsync payload of an IPv4 datagram, after the receive path's checks.

    Refuses anything but IPv4 with a whole header, protocol 240 and TTL 255 (a pfsync
    packet that crossed a router is not from our sync network); trims what follows the
    IP total length. Returns (source address bytes, payload).
    """
    if len(datagram) < _IPV4.size:
        raise MalformedPacket("short", f"{len(datagram)} bytes is not an IPv4 header")
    vhl, _tos, total, _ident, _frag, ttl, proto, _sum, src, _dst = _IPV4.unpack_from(datagram)
    if vhl >> 4 != 4:
        raise MalformedPacket("ip", f"IP version {vhl >> 4}, not 4")
    hlen = (vhl & 0x0F) << 2
    if hlen < _IPV4.size or total < hlen or total > len(datagram):
        raise MalformedPacket("ip", f"IP lengths (header {hlen}, total {total}) do not fit "
                                    f"the {len(datagram)} bytes received")
    if proto != IPPROTO_PFSYNC:
        raise MalformedPacket("proto", f"IP protocol {proto}, not {IPPROTO_PFSYNC}")
    if ttl != PFSYNC_DFLTTL:
        raise MalformedPacket("ttl", f"TTL {ttl}, not {PFSYNC_DFLTTL}")
    return src, bytes(datagram[hlen:total])


def decode_ip(datagram):
    """strip_ip then decode: (source address bytes, Packet)."""
    src, payload = strip_ip(datagram)
    return src, decode(payload)


# -- encoding (the simulator's emitter and the tests) ------------------------------------

def clr(creatorid, ifname=b""):
    return ACT_CLR, _CLR.pack(ifname, creatorid)


def del_c(creatorid, sid):
    return ACT_DEL_C, _ID_CREATOR.pack(sid, creatorid)


def ins_ack(creatorid, sid):
    return ACT_INS_ACK, _ID_CREATOR.pack(sid, creatorid)


def upd_req(creatorid, sid):
    return ACT_UPD_REQ, _ID_CREATOR.pack(sid, creatorid)


def bus(creatorid, status, endtime=0):
    return ACT_BUS, _BUS.pack(creatorid, endtime, status)


def upd_c(record, timeout=None):
    """The UPD_C OpenBSD sends for a full record: id, both peers, creatorid, timeout;
    expire and state_flags left zero as pfsync_out_upd_c() leaves them."""
    rec = bytes(record)
    return ACT_UPD_C, _UPD_C.pack(
        _REC_ID.unpack_from(rec)[0], rec[104:136], rec[136:168],
        _REC_CREATOR.unpack_from(rec, 236)[0], 0,
        rec[_OFF_TIMEOUT] if timeout is None else timeout, 0)


def encode(messages):
    """A pfsync packet (header onwards) of (action, message bytes) pairs, in order;
    consecutive messages of one action share a block."""
    blocks = []
    i = 0
    while i < len(messages):
        action, first = messages[i]
        j = i + 1
        while (j < len(messages) and messages[j][0] == action and j - i < 0xFFFF):
            j += 1
        size = len(first)
        blocks.append(_SUBHEADER.pack(action, size >> 2, j - i))
        blocks.extend(m for _a, m in messages[i:j])
        i = j
    body = b"".join(blocks)
    return _HEADER.pack(PFSYNC_VERSION, HEADER_SIZE + len(body), bytes(16)) + body


def encode_ip(payload, src=b"\0\0\0\0", dst=bytes((224, 0, 0, 240)), ttl=PFSYNC_DFLTTL,
              ident=0):
    """An IPv4 datagram carrying a pfsync payload as pfsync_sendout() builds it:
    TTL 255, TOS IPTOS_LOWDELAY (0x10), DF, protocol 240, with a valid header checksum."""
    total = _IPV4.size + len(payload)
    header = bytearray(_IPV4.pack(0x45, 0x10, total, ident & 0xFFFF, 0x4000, ttl,
                                  IPPROTO_PFSYNC, 0, src, dst))
    words = struct.unpack(">10H", header)
    s = sum(words)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into(">H", header, 10, ~s & 0xFFFF)
    return bytes(header) + payload
