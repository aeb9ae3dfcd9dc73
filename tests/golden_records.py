"""Builds OpenBSD ``struct pfsync_state`` records (264 bytes) from plain values, for golden tests.

Every field is encoded the way OpenBSD's ``pf_state_export()`` (sys/net/pf.c) writes it, as
described in shared/reference/pf-formats.md section 1.5: id big-endian, ports copied raw (so
already network order), rdomain big-endian, counters as big-endian high/low u32 pairs,
state_flags big-endian, OpenBSD's address family numbers (AF_INET 2, AF_INET6 24).

This module is deliberately independent of pfhistory: it only uses ``struct`` and
``ipaddress``, so the tests check the decoder against an encoder written from the spec.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "AF_INET",
    "AF_INET6",
    "NONE",
    "PF_IN",
    "PF_OUT",
    "RECORD_SIZE",
    "Key",
    "Peer",
    "addr_bytes",
    "build_state",
]

RECORD_SIZE = 264

# OpenBSD sys/sys/socket.h values, as they sit in the record (not the host's).
AF_INET = 2
AF_INET6 = 24

# enum { PF_INOUT, PF_IN, PF_OUT, PF_FWD } (sys/net/pfvar.h)
PF_IN = 1
PF_OUT = 2

# enum { PF_NOPFROUTE, PF_ROUTETO, PF_DUPTO, PF_REPLYTO } (sys/net/pfvar.h)
PF_ROUTETO = 1

# htonl(-1): "no rule" / "no anchor"
NONE = 0xFFFFFFFF


def addr_bytes(addr: str | bytes) -> bytes:
    """Return the 16-byte ``struct pf_addr`` for an address.

    ``""`` is the all-zero address; an IPv4 address fills the first 4 bytes and leaves 12
    zero bytes (export starts from a zeroed record); 16 raw bytes are used as they are.
    """
    if isinstance(addr, bytes):
        if len(addr) != 16:
            raise ValueError("a raw pf_addr is 16 bytes")
        return addr
    if addr == "":
        return bytes(16)
    packed = ipaddress.ip_address(addr).packed
    return packed + bytes(16 - len(packed))


def _af_of(addr: str | bytes) -> int:
    if isinstance(addr, str) and ":" in addr:
        return AF_INET6
    return AF_INET


@dataclass(frozen=True)
class Key:
    """A ``struct pfsync_state_key`` (40 bytes): addr[2], port[2], rdomain, af, pad."""

    addr0: str | bytes
    port0: int
    addr1: str | bytes
    port1: int
    rdomain: int = 0
    af: int | None = None

    def pack(self) -> bytes:
        af = self.af if self.af is not None else _af_of(self.addr1)
        return (
            addr_bytes(self.addr0)
            + addr_bytes(self.addr1)
            # ports: pf keeps them in network order and export copies them raw;
            # rdomain: htons(); af: u8; then one pad byte.
            + struct.pack(">HHHBx", self.port0, self.port1, self.rdomain, af)
        )


@dataclass(frozen=True)
class Peer:
    """A ``struct pfsync_state_peer`` (32 bytes), as ``pf_state_peer_hton()`` writes it."""

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

    def pack(self) -> bytes:
        scrub = struct.pack(
            ">HBBI", self.pfss_flags, self.pfss_ttl, self.scrub_flag, self.pfss_ts_mod
        )
        body = struct.pack(
            ">IIIHHBB6x",
            self.seqlo,
            self.seqhi,
            self.seqdiff,
            self.max_win,
            self.mss,
            self.state,
            self.wscale,
        )
        return scrub + body


def _counter(value: int) -> bytes:
    # pf_state_counter_hton(): [0] = htonl(high 32 bits), [1] = htonl(low 32 bits)
    return struct.pack(">II", value >> 32, value & 0xFFFFFFFF)


def build_state(
    *,
    wire: Key,
    stack: Key | None = None,
    id: int = 0,
    ifname: bytes = b"all",
    src: Peer = Peer(),
    dst: Peer = Peer(),
    rt_addr: str | bytes = "",
    rule: int = NONE,
    anchor: int = NONE,
    nat_rule: int = NONE,
    creation: int = 0,
    expire: int = 0,
    packets: tuple[int, int] = (0, 0),
    bytes_: tuple[int, int] = (0, 0),
    creatorid: int = 0,
    rtableid: tuple[int, int] = (0, 0),
    max_mss: int = 0,
    af: int | None = None,
    proto: int = 6,
    direction: int = PF_OUT,
    log: int = 0,
    rt: int | None = None,
    timeout: int = 0,
    sync_flags: int = 0,
    updates: int = 0,
    min_ttl: int = 0,
    set_tos: int = 0,
    state_flags: int = 0,
    set_prio: tuple[int, int] = (0, 0),
) -> bytes:
    """Return one 264-byte record. ``wire`` is key[PF_SK_WIRE]; ``stack`` defaults to it."""
    if stack is None:
        stack = wire
    if len(ifname) > 16:
        raise ValueError("ifname is at most 16 bytes")
    if af is None:
        # pf_state_export: sp->af = st->key[PF_SK_WIRE]->af
        af = wire.af if wire.af is not None else _af_of(wire.addr1)
    if rt is None:
        rt = PF_ROUTETO if addr_bytes(rt_addr) != bytes(16) else 0
    record = b"".join(
        [
            struct.pack(">Q", id),  # st->id is htobe64() already
            ifname.ljust(16, b"\0"),
            wire.pack(),
            stack.pack(),
            src.pack(),
            dst.pack(),
            addr_bytes(rt_addr),
            struct.pack(">IIIII", rule, anchor, nat_rule, creation, expire),
            _counter(packets[0]),
            _counter(packets[1]),
            _counter(bytes_[0]),
            _counter(bytes_[1]),
            struct.pack(">I", creatorid),
            struct.pack(">ii", *rtableid),
            struct.pack(">H", max_mss),
            struct.pack(
                ">BBBBBBBBBB",
                af,
                proto,
                direction,
                log,
                rt,
                timeout,
                sync_flags,
                updates,
                min_ttl,
                set_tos,
            ),
            struct.pack(">H", state_flags),
            bytes(set_prio),
        ]
    )
    assert len(record) == RECORD_SIZE, len(record)
    return record
