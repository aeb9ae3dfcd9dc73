"""Packet captures: pcap and pcapng files read (as tcpdump -w writes them) and pcap written.

Only what pfsync ingestion needs: each packet's time and its IPv4 datagram, from the link
types a sync interface is captured on (Ethernet with or without VLAN tags, raw IP, BSD
loopback, Linux cooked), or its pfsync payload from OpenBSD's pfsync0 (DLT_PFSYNC). Formats:
https://www.tcpdump.org/manpages/pcap-savefile.5.html and the pcapng specification
(draft-ietf-opsawg-pcapng); link types from https://www.tcpdump.org/linktypes.html.
"""

import os
import struct
from typing import NamedTuple

from pfhistory import outfile
from pfhistory.exceptions import PFError

__all__ = ["CaptureError", "Frame", "read_frames", "is_capture", "PcapWriter", "KIND_IP",
           "KIND_PFSYNC", "KIND_OTHER", "KIND_TRUNCATED"]


class CaptureError(PFError):
    """A capture file that cannot be read at all."""


KIND_IP = "ip"              # data is an IPv4 datagram
KIND_PFSYNC = "pfsync"      # data is a pfsync packet without IP (captured on pfsync0)
KIND_OTHER = "other"        # not IPv4 (ARP, IPv6, ...): not for us
KIND_TRUNCATED = "truncated"  # captured shorter than it was (snap length), or cut off


class Frame(NamedTuple):
    at: float       # seconds since the epoch
    kind: str
    data: bytes


_PCAP_MAGIC = {  # magic as read little-endian -> (byte order, fraction per second)
    0xA1B2C3D4: ("<", 1_000_000), 0xD4C3B2A1: (">", 1_000_000),
    0xA1B23C4D: ("<", 1_000_000_000), 0x4D3CB2A1: (">", 1_000_000_000),
}
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D


def is_capture(head):
    """True if a file's first four bytes begin a pcap or pcapng capture."""
    magic = int.from_bytes(head, "little") if len(head) == 4 else None
    return magic in _PCAP_MAGIC or magic == _PCAPNG_SHB


# Link types (LINKTYPE_*), plus the DLT_* numbers OpenBSD's libpcap writes as they are.
_ETHERNET = 1
_NULL = 0               # 4-byte address family, host order of the capturing machine
_LOOP_OR_RAW = 12       # OpenBSD DLT_LOOP (4-byte family, network order); DLT_RAW elsewhere
_OPENBSD_RAW = 14       # OpenBSD DLT_RAW
_RAW = (101, 228)       # LINKTYPE_RAW, LINKTYPE_IPV4
_SLL = 113              # Linux cooked v1: 16 bytes, protocol at 14
_SLL2 = 276             # Linux cooked v2: 20 bytes, protocol at 0
_PFSYNC = (18, 246)     # OpenBSD DLT_PFSYNC, LINKTYPE_PFSYNC
_ETH_IPV4 = 0x0800
_ETH_VLAN = (0x8100, 0x88A8, 0x9100)
_AF_INET = 2


def _link_payload(linktype, data):
    """(kind, data) of one captured frame."""
    if linktype == _ETHERNET:
        off = 12
        while len(data) >= off + 2:
            etype = int.from_bytes(data[off:off + 2], "big")
            if etype in _ETH_VLAN:
                off += 4
                continue
            return (KIND_IP, data[off + 2:]) if etype == _ETH_IPV4 else (KIND_OTHER, b"")
        return KIND_TRUNCATED, b""
    if linktype in _RAW or linktype == _OPENBSD_RAW or (
            linktype == _LOOP_OR_RAW and data[:1] and data[0] >> 4 == 4):
        return (KIND_IP, data) if data[:1] and data[0] >> 4 == 4 else (KIND_OTHER, b"")
    if linktype in (_NULL, _LOOP_OR_RAW):
        if len(data) < 4:
            return KIND_TRUNCATED, b""
        family = data[:4]
        if _AF_INET in (int.from_bytes(family, "big"), int.from_bytes(family, "little")):
            return KIND_IP, data[4:]
        return KIND_OTHER, b""
    if linktype == _SLL:
        if len(data) < 16:
            return KIND_TRUNCATED, b""
        proto = int.from_bytes(data[14:16], "big")
        return (KIND_IP, data[16:]) if proto == _ETH_IPV4 else (KIND_OTHER, b"")
    if linktype == _SLL2:
        if len(data) < 20:
            return KIND_TRUNCATED, b""
        proto = int.from_bytes(data[0:2], "big")
        return (KIND_IP, data[20:]) if proto == _ETH_IPV4 else (KIND_OTHER, b"")
    if linktype in _PFSYNC:
        return KIND_PFSYNC, data
    return KIND_OTHER, b""


_SUPPORTED = {_ETHERNET, _NULL, _LOOP_OR_RAW, _OPENBSD_RAW, _SLL, _SLL2, *_RAW, *_PFSYNC}


def _open(path):
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such capture file") from None
    except IsADirectoryError:
        raise CaptureError(f"{path}: is a directory, not a capture file") from None
    except PermissionError:
        raise CaptureError(f"{path}: permission denied reading the capture") from None
    except OSError as e:
        raise CaptureError(f"{path}: cannot open the capture: {e.strerror}") from None
    return f


def read_frames(path):
    """Yield every packet of a pcap or pcapng file as a Frame, in file order.

    Raises CaptureError, before yielding anything, for a file that is neither format or
    whose link type carries no IPv4; a record cut short at the end of the file (tcpdump
    killed mid-write) is yielded as KIND_TRUNCATED.
    """
    f = _open(path)
    with f:
        head = f.read(24)
        if len(head) < 4:
            raise CaptureError(f"{path}: too short to be a pcap or pcapng capture")
        magic = int.from_bytes(head[:4], "little")
        if magic in _PCAP_MAGIC:
            yield from _read_pcap(path, f, head, *_PCAP_MAGIC[magic])
        elif magic == _PCAPNG_SHB:
            f.seek(0)
            yield from _read_pcapng(path, f)
        else:
            raise CaptureError(f"{path}: not a pcap or pcapng capture (tcpdump -w writes one)")


def _read_pcap(path, f, head, order, per_second):
    if len(head) < 24:
        raise CaptureError(f"{path}: its pcap header is cut short")
    _major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack(order + "HHiIII", head[4:])
    linktype &= 0x0FFFFFFF  # the top bits carry FCS information
    if linktype not in _SUPPORTED:
        raise CaptureError(f"{path}: link type {linktype} carries no IPv4 packets pfhistory reads "
                           f"(capture on the sync interface: Ethernet, raw IP or pfsync0)")
    record = struct.Struct(order + "IIII")
    while True:
        rh = f.read(16)
        if not rh:
            return
        if len(rh) < 16:
            yield Frame(0.0, KIND_TRUNCATED, b"")
            return
        sec, frac, caplen, origlen = record.unpack(rh)
        data = f.read(caplen)
        at = sec + frac / per_second
        if len(data) < caplen:
            yield Frame(at, KIND_TRUNCATED, b"")
            return
        if caplen < origlen:
            yield Frame(at, KIND_TRUNCATED, b"")
            continue
        kind, payload = _link_payload(linktype, data)
        yield Frame(at, kind, payload)


def _tsresol(options, order):
    """Ticks per second of an interface from its if_tsresol option (default 10**6)."""
    off = 0
    while off + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, off)
        value = options[off + 4:off + 4 + length]
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = value[0]
            return 2 ** (v & 0x7F) if v & 0x80 else 10 ** v
        off += 4 + ((length + 3) & ~3)
    return 1_000_000


def _read_pcapng(path, f):
    order = None
    interfaces = []
    first = True
    while True:
        bh = f.read(8)
        if not bh:
            return
        if len(bh) < 8:
            yield Frame(0.0, KIND_TRUNCATED, b"")
            return
        if int.from_bytes(bh[:4], "little") == _PCAPNG_SHB:
            bom = f.read(4)
            if len(bom) < 4:
                raise CaptureError(f"{path}: its pcapng section header is cut short")
            if int.from_bytes(bom, "little") == _PCAPNG_BOM:
                order = "<"
            elif int.from_bytes(bom, "big") == _PCAPNG_BOM:
                order = ">"
            else:
                raise CaptureError(f"{path}: not a pcapng capture (bad byte-order magic)")
            total = struct.unpack(order + "I", bh[4:])[0]
            if total < 28 or total % 4:
                raise CaptureError(f"{path}: its pcapng section header has a bad length")
            f.read(total - 12)
            interfaces = []    # interface ids restart in every section
            first = False
            continue
        if first or order is None:
            raise CaptureError(f"{path}: not a pcapng capture")
        btype, total = struct.unpack(order + "II", bh)
        if total < 12 or total % 4:
            yield Frame(0.0, KIND_TRUNCATED, b"")
            return
        body = f.read(total - 8)
        if len(body) < total - 8:
            yield Frame(0.0, KIND_TRUNCATED, b"")
            return
        body = body[:-4]
        if btype == 1:      # Interface Description Block
            if len(body) < 8:
                raise CaptureError(f"{path}: a pcapng interface description is cut short")
            linktype = struct.unpack_from(order + "H", body)[0]
            interfaces.append((linktype, _tsresol(body[8:], order)))
        elif btype in (6, 2):   # Enhanced Packet Block, obsolete Packet Block
            if btype == 6:
                if len(body) < 20:
                    yield Frame(0.0, KIND_TRUNCATED, b"")
                    continue
                ifid, hi, lo, caplen, origlen = struct.unpack_from(order + "IIIII", body)
            else:
                if len(body) < 20:
                    yield Frame(0.0, KIND_TRUNCATED, b"")
                    continue
                ifid, _drops, hi, lo, caplen, origlen = struct.unpack_from(order + "HHIIII", body)
            if ifid >= len(interfaces):
                raise CaptureError(f"{path}: a packet names pcapng interface {ifid}, "
                                   f"which was never described")
            linktype, per_second = interfaces[ifid]
            data = body[20:20 + caplen]
            at = ((hi << 32) | lo) / per_second
            if len(data) < caplen or caplen < origlen:
                yield Frame(at, KIND_TRUNCATED, b"")
                continue
            if linktype not in _SUPPORTED:
                yield Frame(at, KIND_OTHER, b"")
                continue
            kind, payload = _link_payload(linktype, data)
            yield Frame(at, kind, payload)
        # Simple Packet Blocks carry no time; name resolution, statistics and custom
        # blocks carry no packet: skipped.


class PcapWriter:
    """Write Ethernet frames carrying IPv4 datagrams to a pcap file (microseconds),
    owner-only (0600); what tcpdump -w on the sync interface would have written.

    The file goes where pfhistory.outfile says (a regular file replaced by a new
    owner-only one, a device or FIFO written in place, a symlink refused). The header
    is written at once, so a target that cannot be written raises OSError from the
    constructor, before anything is recorded, and leaves an existing file as it was.
    A write that fails later does not raise there: the caller's database is the product
    and the capture a copy, so writing stops and close() raises PFError.
    """

    # IPv4 multicast MAC of 224.0.0.240 (RFC 1112: 01:00:5e + low 23 bits).
    DST_MAC = bytes((0x01, 0x00, 0x5E, 0x00, 0x00, 0xF0))
    SRC_MAC = bytes((0x02, 0x00, 0x00, 0x00, 0x00, 0x01))   # locally administered
    BUFFER = 1 << 20

    def __init__(self, path, snaplen=65535):
        self.path = os.fspath(path)
        self.packets = 0
        self.error = None       # the OSError that stopped writing, raised by close()
        self._buf = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen,
                                          _ETHERNET))
        self._fd, tmp = outfile.open_output(self.path)
        try:
            self._flush()
            outfile.commit(tmp, self.path)
        except OSError:
            os.close(self._fd)
            outfile.discard(tmp)
            raise

    def write(self, at, datagram):
        if self.error is not None or self._fd is None:
            return
        frame = self.DST_MAC + self.SRC_MAC + _ETH_IPV4.to_bytes(2, "big") + datagram
        usec = int(round(at * 1_000_000))
        self._buf += struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000,
                                 len(frame), len(frame))
        self._buf += frame
        self.packets += 1
        if len(self._buf) >= self.BUFFER:
            try:
                self._flush()
            except OSError as e:
                self.error = e

    def _flush(self):
        """Write all that is buffered: os.write may take only part of it."""
        done = 0
        try:
            while done < len(self._buf):
                with memoryview(self._buf) as view:
                    done += os.write(self._fd, view[done:])
        finally:
            del self._buf[:done]

    def close(self):
        """Write what is buffered and close; PFError if any write failed (once)."""
        if self._fd is None:
            return
        try:
            if self.error is None:
                self._flush()
        except OSError as e:
            self.error = e
        finally:
            fd, self._fd = self._fd, None
            self._buf.clear()
            try:
                os.close(fd)
            except OSError as e:    # NFS reports a failed write at close
                self.error = self.error or e
        if self.error is not None:
            raise PFError(f"cannot write the capture to {self.path}: "
                          f"{self.error.strerror or self.error}")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            try:
                self.close()
            except PFError:
                pass        # the error already on its way out says more
