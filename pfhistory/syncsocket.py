"""Raw IP sockets for pfsync (protocol 240): a receiver joined to 224.0.0.240, a sender.

The same calls work on Linux and OpenBSD: a raw socket of protocol 240 receives every
pfsync datagram with its IP header (the TTL check needs it), multicast or unicast from a
sync peer; IP_ADD_MEMBERSHIP joins the group on one interface, found by its address
(ip_mreq, which both systems take). Needs root (CAP_NET_RAW on Linux).
"""

import errno
import fcntl
import socket
import struct
import sys

from pfhistory.exceptions import PFError
from pfhistory.pfsync import IPPROTO_PFSYNC, PFSYNC_GROUP

__all__ = ["SocketError", "open_receiver", "open_sender", "interface_address"]

# SIOCGIFADDR: Linux <linux/sockios.h>; OpenBSD _IOWR('i', 33, struct ifreq) of 32 bytes
# (sys/sockio.h). Both answer a struct ifreq whose sockaddr_in puts the address at 20.
_SIOCGIFADDR = 0xC0206921 if sys.platform.startswith("openbsd") else 0x8915
_RCVBUF = 16 << 20


class SocketError(PFError):
    """A pfsync socket cannot be opened or configured."""


def _why(e):
    if e.errno in (errno.EPERM, errno.EACCES):
        return "permission denied (raw sockets need root)"
    return e.strerror or str(e)


def interface_address(name):
    """The IPv4 address of interface ``name`` (for IP_ADD_MEMBERSHIP), as 4 bytes."""
    if sys.platform.startswith(("linux", "openbsd")):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                req = struct.pack("16s16x", name.encode()[:15])
                return fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)[20:24]
            except OSError as e:
                if e.errno in (errno.ENODEV, errno.ENXIO):
                    raise SocketError(f"--iface {name}: no such interface") from None
                raise SocketError(f"--iface {name}: has no IPv4 address to join "
                                  f"{PFSYNC_GROUP} on ({_why(e)})") from None
    try:
        socket.if_nametoindex(name)
    except OSError:
        raise SocketError(f"--iface {name}: no such interface") from None
    return None


def open_receiver(iface=None):
    """A raw socket receiving pfsync datagrams (with IP header), joined to the group."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_PFSYNC)
    except OSError as e:
        raise SocketError(f"cannot open a raw socket for pfsync: {_why(e)}") from None
    try:
        try:
            s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), _RCVBUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        group = socket.inet_aton(PFSYNC_GROUP)
        if iface is not None:
            local = interface_address(iface) or socket.inet_aton("0.0.0.0")
            try:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + local)
            except OSError as e:
                raise SocketError(f"--iface {iface}: cannot join {PFSYNC_GROUP}: "
                                  f"{_why(e)}") from None
            if hasattr(socket, "SO_BINDTODEVICE"):
                # Linux: only what arrives on that interface, as pfsync_input() checks
                # the sync device. (OpenBSD has no such option; the join selects it.)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
        else:
            try:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                             group + socket.inet_aton("0.0.0.0"))
            except OSError:
                pass    # no multicast route: unicast from a sync peer still arrives
    except BaseException:
        s.close()
        raise
    return s


def open_sender(iface=None):
    """A raw socket sending whole IPv4 datagrams (our header, TTL 255)."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as e:
        raise SocketError(f"cannot open a raw socket to send pfsync: {_why(e)}") from None
    try:
        if iface is not None:
            local = interface_address(iface) or socket.inet_aton("0.0.0.0")
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    except BaseException:
        s.close()
        raise
    return s
