"""Encoder for OpenBSD's 264-byte struct pfsync_state: the record of pfctl -S files and pfsync."""

# Layout and byte orders: shared reference pf-formats.md section 1 (OpenBSD sys/net/pfvar.h
# 1.543, written by pf_state_export() in sys/net/pf.c).  Every multi-byte field is big-endian
# as the exporter writes it (htons/htonl/htobe64); pf keeps ports in network order, so packing
# them with ">H" gives the same bytes.  Pads are zero because the exporter zeroes the record.
# Constants (address families, PF_*, PFSS_*) come from pfvar.py, never redefined here.

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from pfhistory.pfvar import PF_NOPFROUTE, PF_RULE_NONE, PFSS_TIMESTAMP

__all__ = [
    "RECORD_SIZE", "STATE", "PEER", "KEY",
    "OFF_ID", "OFF_IFNAME", "OFF_KEY_WIRE", "OFF_KEY_STACK", "OFF_SRC", "OFF_DST",
    "OFF_RT_ADDR", "OFF_RULE", "OFF_ANCHOR", "OFF_CREATION", "OFF_EXPIRE", "OFF_PACKETS",
    "OFF_BYTES", "OFF_CREATORID", "OFF_RTABLEID", "OFF_MAX_MSS", "OFF_AF", "OFF_PROTO",
    "OFF_DIRECTION", "OFF_LOG", "OFF_RT", "OFF_TIMEOUT", "OFF_SYNC_FLAGS", "OFF_STATE_FLAGS",
    "PEER_OFF_SEQLO", "PEER_OFF_MAX_WIN", "PEER_OFF_STATE", "PEER_OFF_WSCALE",
    "StateKey", "StatePeer", "NO_PEER", "pack_addr", "encode_key", "encode_peer",
    "encode_state",
]

RECORD_SIZE = 264

# struct pfsync_state_scrub (8) + the rest of struct pfsync_state_peer (24): 32 bytes.
_PEER_FMT = "HBBI" "IIIHHBB6x"
# struct pfsync_state_key: addr[2], port[2], rdomain, af, pad: 40 bytes.
_KEY_FMT = "16s16sHHHBx"
_STATE_FMT = (
    ">"
    "Q16s"                 # 0 id (BE u64), 8 ifname
    + _KEY_FMT             # 24 key[PF_SK_WIRE]
    + _KEY_FMT             # 64 key[PF_SK_STACK]
    + _PEER_FMT            # 104 src
    + _PEER_FMT            # 136 dst
    + "16s"                # 168 rt_addr
    "III"                  # 184 rule, 188 anchor, 192 nat_rule
    "II"                   # 196 creation (age), 200 expire (seconds left)
    "QQQQ"                 # 204 packets[0], packets[1], 220 bytes[0], bytes[1] (hi,lo = BE u64)
    "I"                    # 236 creatorid
    "ii"                   # 240 rtableid[2]
    "H"                    # 248 max_mss
    "BBBBBB"               # 250 af, proto, direction, log, rt, timeout
    "BBBB"                 # 256 sync_flags, updates, min_ttl, set_tos
    "H"                    # 260 state_flags
    "BB"                   # 262 set_prio[2]
)

STATE = struct.Struct(_STATE_FMT)
PEER = struct.Struct(">" + _PEER_FMT)
KEY = struct.Struct(">" + _KEY_FMT)

OFF_ID = 0
OFF_IFNAME = 8
OFF_KEY_WIRE = 24
OFF_KEY_STACK = 64
OFF_SRC = 104
OFF_DST = 136
OFF_RT_ADDR = 168
OFF_RULE = 184
OFF_ANCHOR = 188
OFF_CREATION = 196
OFF_EXPIRE = 200
OFF_PACKETS = 204
OFF_BYTES = 220
OFF_CREATORID = 236
OFF_RTABLEID = 240
OFF_MAX_MSS = 248
OFF_AF = 250
OFF_PROTO = 251
OFF_DIRECTION = 252
OFF_LOG = 253
OFF_RT = 254
OFF_TIMEOUT = 255
OFF_SYNC_FLAGS = 256
OFF_STATE_FLAGS = 260
PEER_OFF_SEQLO = 8      # inside a peer: seqlo, then seqhi at +12
PEER_OFF_MAX_WIN = 20
PEER_OFF_STATE = 24
PEER_OFF_WSCALE = 25

assert STATE.size == RECORD_SIZE and PEER.size == 32 and KEY.size == 40


class StateKey(NamedTuple):
    """One ``pfsync_state_key``: addresses as 16 raw bytes, ports as numbers."""

    addr0: bytes
    addr1: bytes
    port0: int
    port1: int
    rdomain: int
    af: int


class StatePeer(NamedTuple):
    """One ``pfsync_state_peer`` in host values (the encoder applies the byte orders)."""

    seqlo: int = 0
    seqhi: int = 0
    seqdiff: int = 0
    max_win: int = 0
    mss: int = 0
    state: int = 0
    wscale: int = 0
    pfss_flags: int = 0
    pfss_ttl: int = 0
    scrub_flag: int = 0
    pfss_ts_mod: int = 0


NO_PEER = StatePeer()


def pack_addr(text: str) -> bytes:
    """16-byte ``struct pf_addr`` for an address: IPv4 in the first 4 bytes, rest zero."""
    return ipaddress.ip_address(text).packed.ljust(16, b"\0")


def encode_key(k: StateKey) -> bytes:
    """40-byte ``pfsync_state_key``."""
    return KEY.pack(k.addr0, k.addr1, k.port0, k.port1, k.rdomain, k.af)


def encode_peer(p: StatePeer) -> bytes:
    """32-byte ``pfsync_state_peer`` as ``pf_state_peer_hton`` writes it
    (only the PFSS_TIMESTAMP bit of the scrub flags survives export)."""
    return PEER.pack(p.pfss_flags & PFSS_TIMESTAMP, p.pfss_ttl, p.scrub_flag, p.pfss_ts_mod,
                     p.seqlo, p.seqhi, p.seqdiff, p.max_win, p.mss, p.state, p.wscale)


def encode_state(*, id: int, ifname: str, wire: StateKey, stack: StateKey,
                 src: StatePeer, dst: StatePeer, proto: int, direction: int,
                 creatorid: int, creation: int = 0, expire: int = 0,
                 packets: tuple[int, int] = (0, 0), bytes: tuple[int, int] = (0, 0),
                 rule: int = PF_RULE_NONE, anchor: int = PF_RULE_NONE,
                 rt: int = PF_NOPFROUTE, rt_addr: bytes = b"",
                 rtableid: tuple[int, int] = (-1, -1), max_mss: int = 0, log: int = 0,
                 timeout: int = 0, sync_flags: int = 0, min_ttl: int = 0, set_tos: int = 0,
                 state_flags: int = 0, set_prio: tuple[int, int] = (0, 0)) -> bytes:
    """One 264-byte record exactly as OpenBSD's ``pf_state_export()`` lays it out.

    The record's ``af`` is the wire key's af (as the kernel does); ``id`` is the 64-bit
    state counter, stored big-endian; ``creatorid`` is the host id as pfctl prints it;
    ``nat_rule`` is always 0xffffffff ("left for compat"); ``updates`` is never written.
    """
    return STATE.pack(
        id, ifname.encode("ascii"),
        wire.addr0, wire.addr1, wire.port0, wire.port1, wire.rdomain, wire.af,
        stack.addr0, stack.addr1, stack.port0, stack.port1, stack.rdomain, stack.af,
        src.pfss_flags & PFSS_TIMESTAMP, src.pfss_ttl, src.scrub_flag, src.pfss_ts_mod,
        src.seqlo, src.seqhi, src.seqdiff, src.max_win, src.mss, src.state, src.wscale,
        dst.pfss_flags & PFSS_TIMESTAMP, dst.pfss_ttl, dst.scrub_flag, dst.pfss_ts_mod,
        dst.seqlo, dst.seqhi, dst.seqdiff, dst.max_win, dst.mss, dst.state, dst.wscale,
        rt_addr, rule, anchor, PF_RULE_NONE, creation, expire,
        packets[0], packets[1], bytes[0], bytes[1],
        creatorid, rtableid[0], rtableid[1], max_mss,
        wire.af, proto, direction, log, rt, timeout,
        sync_flags, 0, min_ttl, set_tos, state_flags, set_prio[0], set_prio[1])
