"""Addresses as PF sees them: pfctl's text and pfvar.h's comparisons.

The record's af byte is OpenBSD's (2, or 24 for IPv6); these helpers take
that byte, never the host's socket constant.
"""

import socket

from pfhistory.pfvar import OPENBSD_AF_INET, OPENBSD_AF_INET6

__all__ = ["ntop", "aneq", "azero"]


def ntop(record_af, packed):
    """print_addr_str() of pfctl: inet_ntop by af, "?" where it would fail."""
    if record_af == OPENBSD_AF_INET:
        return socket.inet_ntop(socket.AF_INET, packed[:4])
    if record_af == OPENBSD_AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, packed)
    return "?"


def aneq(a, b, record_af):
    """PF_ANEQ() of sys/net/pfvar.h on two 16-byte pf_addr: never for other afs."""
    if record_af == OPENBSD_AF_INET:
        return a[:4] != b[:4]
    if record_af == OPENBSD_AF_INET6:
        return a != b
    return False


def azero(packed, record_af):
    """PF_AZERO() of sys/net/pfvar.h on a 16-byte pf_addr: never for other afs."""
    if record_af == OPENBSD_AF_INET:
        return not any(packed[:4])
    if record_af == OPENBSD_AF_INET6:
        return not any(packed)
    return False
