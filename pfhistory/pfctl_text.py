"""pfctl's text for a state: what OpenBSD's ``pfctl -ss [-v|-vv]`` prints.

Follows print_state(), print_host() and print_seq() of OpenBSD's
sbin/pfctl/pf_print_state.c (1.69) branch by branch; the golden tests in
tests/test_pfctl_golden.py were written from that file, not from this one.
Works on any object with PFState's attributes (live, file or history).
"""

from pfhistory.addresses import aneq, azero, ntop
from pfhistory.pfvar import (
    OPENBSD_AF_INET,
    PF_IN,
    PF_OUT,
    PF_RULE_NONE,
    PF_TCPS_PROXY_DST,
    PF_TCPS_PROXY_SRC,
    PF_WSCALE_MASK,
    PFOTHERS_NAMES,
    PFOTHERS_NSTATES,
    PFSTATE_PFLOW,
    PFSTATE_SLOPPY,
    PFSYNC_FLAG_NATSRCNODE,
    PFSYNC_FLAG_SRCNODE,
    PFUDPS_NAMES,
    PFUDPS_NSTATES,
    TCP_STATE_NAMES,
    TCPS_TIME_WAIT,
)
from pfhistory.protocols import PROTOCOL_NAMES

__all__ = ["format_state", "VERBOSITY_FLAGS"]

# -ss, -ss -v, -ss -vv
VERBOSITY_FLAGS = ("", "-v", "-vv")

_IPPROTO_ICMP = 1
_IPPROTO_TCP = 6
_IPPROTO_UDP = 17
_IPPROTO_ICMPV6 = 58


def _addr_text(addr, record_af):
    """An address printed with a key's af (PFAddr caches its own af's text)."""
    if addr.record_af == record_af:
        return addr.addr
    return ntop(record_af, addr.packed)


def _host(addr, port, record_af, rdomain):
    """print_host() without -r/-P: "(rdomain) " prefix, address, ":port"/"[port]"."""
    text = _addr_text(addr, record_af)
    if rdomain:
        text = f"({rdomain}) {text}"
    port = int(port)
    if port:
        if record_af == OPENBSD_AF_INET:
            return f"{text}:{port}"
        return f"{text}[{port}]"
    return text


def _seq(peer):
    """print_seq(): "[seqlo + window]" and "(+seqdiff)" when modulated."""
    seqlo = peer.seqlo
    text = f"[{seqlo} + {(peer.seqhi - seqlo) & 0xFFFFFFFF}]"
    if peer.seqdiff:
        text += f"(+{peer.seqdiff})"
    return text


def _hms(seconds):
    """%.2u:%.2u:%.2u of hours (unbounded), minutes and seconds."""
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{sec:02d}"


def _state_column(proto, src, dst):
    """The state names after the hosts, including pfctl's three spaces."""
    s, d = src.state, dst.state
    if proto == _IPPROTO_TCP:
        if s <= TCPS_TIME_WAIT and d <= TCPS_TIME_WAIT:
            return f"   {TCP_STATE_NAMES[s]}:{TCP_STATE_NAMES[d]}\n"
        if s == PF_TCPS_PROXY_SRC or d == PF_TCPS_PROXY_SRC:
            return "   PROXY:SRC\n"
        if s == PF_TCPS_PROXY_DST or d == PF_TCPS_PROXY_DST:
            return "   PROXY:DST\n"
        return f"   <BAD STATE LEVELS {s}:{d}>\n"
    if proto == _IPPROTO_UDP and s < PFUDPS_NSTATES and d < PFUDPS_NSTATES:
        return f"   {PFUDPS_NAMES[s]}:{PFUDPS_NAMES[d]}\n"
    if (proto != _IPPROTO_ICMP and proto != _IPPROTO_ICMPV6
            and s < PFOTHERS_NSTATES and d < PFOTHERS_NSTATES):
        return f"   {PFOTHERS_NAMES[s]}:{PFOTHERS_NAMES[d]}\n"
    return f"   {s}:{d}\n"


def format_state(st, verbose=0):
    """pfctl's lines for one state, each ending in a newline.

    verbose is 0 for ``-ss``, 1 for ``-ss -v`` and 2 for ``-ss -vv``.
    """
    nk, sk = st.nk, st.sk
    src, dst = st.src, st.dst
    direction = st.direction
    proto = st.proto
    nk_af, sk_af = nk.record_af, sk.record_af
    afto = nk_af != sk_af
    nk_addr, nk_port, nk_rd = nk.addr, nk.port, nk.rdomain
    sk_addr, sk_port, sk_rd = sk.addr, sk.port, sk.rdomain

    name = PROTOCOL_NAMES.get(proto)
    parts = [st.ifname, " ", name if name is not None else str(proto), " ",
             _host(nk_addr[1], nk_port[1], nk_af, nk_rd)]
    if (afto or aneq(nk_addr[1].packed, sk_addr[1].packed, nk_af)
            or nk_port[1] != sk_port[1] or nk_rd != sk_rd):
        i = 0 if afto else 1
        parts += [" (", _host(sk_addr[i], sk_port[i], sk_af, sk_rd), ")"]
    rt_packed = st.rt_addr.packed
    if direction == PF_IN and not azero(rt_packed, sk_af):
        parts += [" {", ntop(sk_af, rt_packed), "}"]
    if direction == PF_OUT or (afto and direction == PF_IN):
        parts.append(" -> ")
    else:
        parts.append(" <- ")
    parts.append(_host(nk_addr[0], nk_port[0], nk_af, nk_rd))
    if (afto or aneq(nk_addr[0].packed, sk_addr[0].packed, nk_af)
            or nk_port[0] != sk_port[0] or nk_rd != sk_rd):
        i = 1 if afto else 0
        parts += [" (", _host(sk_addr[i], sk_port[i], sk_af, sk_rd), ")"]
    if direction == PF_OUT and not azero(rt_packed, nk_af):
        parts += [" {", ntop(nk_af, rt_packed), "}"]
    parts.append("    ")
    parts.append(_state_column(proto, src, dst))

    if verbose >= 1:
        if proto == _IPPROTO_TCP:
            both_scale = src.wscale and dst.wscale
            parts += ["   ", _seq(src)]
            if both_scale:
                parts.append(f" wscale {src.wscale & PF_WSCALE_MASK}")
            parts += ["  ", _seq(dst)]
            if both_scale:
                parts.append(f" wscale {dst.wscale & PF_WSCALE_MASK}")
            parts.append("\n")
        packets, nbytes = st.packets, st.bytes
        parts.append(
            f"   age {_hms(st.creation)}, expires in {_hms(st.expire)}, "
            f"{packets[0]}:{packets[1]} pkts, {nbytes[0]}:{nbytes[1]} bytes")
        if st.anchor != PF_RULE_NONE:
            parts.append(f", anchor {st.anchor}")
        if st.rule != PF_RULE_NONE:
            parts.append(f", rule {st.rule}")
        if st.state_flags & PFSTATE_SLOPPY:
            parts.append(", sloppy")
        if st.state_flags & PFSTATE_PFLOW:
            parts.append(", pflow")
        if st.sync_flags & PFSYNC_FLAG_SRCNODE:
            parts.append(", source-track")
        if st.sync_flags & PFSYNC_FLAG_NATSRCNODE:
            parts.append(", sticky-address")
        parts.append("\n")
    if verbose >= 2:
        parts.append(f"   id: {st.id:016x} creatorid: {st.creatorid:08x}\n")
    return "".join(parts)
