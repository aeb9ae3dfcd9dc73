"""Golden tests: pfhistory prints each state exactly as OpenBSD's ``pfctl -ss [-v|-vv]`` would.

Every record is built here from plain values (tests/golden_records.py, encoded as
``pf_state_export()`` writes it). Every expected string was written by hand from reading
OpenBSD's ``sbin/pfctl/pf_print_state.c`` (``$OpenBSD: pf_print_state.c,v 1.69 2019/02/02``):
``print_state()``, ``print_host()``, ``print_seq()``; the address macros ``PF_ANEQ`` /
``PF_AZERO`` of ``sys/net/pfvar.h`` 1.543; OpenBSD's ``inet_ntop()``
(lib/libc/net/inet_ntop.c) and OpenBSD's ``etc/protocols`` 1.23. None of them was produced
by running pfhistory.

Shape of pfctl's output for one state (pf_print_state.c, print_state()):

* line 1, always: ``ifname proto hostA [(skA)] [{rt} if IN] ->|<- hostB [(skB)] [{rt} if OUT]``
  then ``"    "`` and ``"   SRC:DST\\n"`` (so 7 spaces before the state column);
* TCP only, with -v: ``"   " seq(src) [" wscale n"] "  " seq(dst) [" wscale n"] "\\n"``;
* with -v: ``"   age HH:MM:SS, expires in HH:MM:SS, P:P pkts, B:B bytes[, ...]\\n"``;
* with -vv: ``"   id: %016llx creatorid: %08x\\n"``.

The ifname is expected escaped vis(3)-style (bytes outside 0x21..0x7e as ``\\ooo``, a
backslash as ``\\\\``, all 16 bytes when there is no NUL); that is a pfhistory decision:
pfctl 1.69 prints ``s->ifname`` with a plain ``printf("%s ")``. For ordinary interface names
the two agree.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest

try:  # tests/ may or may not become a package
    from . import golden_records as gr
except ImportError:  # pragma: no cover - depends on how pytest imports this file
    import golden_records as gr

Key = gr.Key
Peer = gr.Peer

pf = pytest.importorskip("pfhistory.pf")

IN = gr.PF_IN
OUT = gr.PF_OUT

# Written by hand: "age 00:00:00, expires in 00:00:00, 0:0 pkts, 0:0 bytes" is what
# print_state() prints for creation = expire = 0, zero counters, rule = anchor = -1 and
# no flags (the defaults of build_state()).
V_ZERO = "   age 00:00:00, expires in 00:00:00, 0:0 pkts, 0:0 bytes"
SEQ_ZERO = "   [0 + 0]  [0 + 0]"


@dataclass(frozen=True)
class Golden:
    """One record and the lines pfctl prints for it."""

    name: str
    record: bytes
    line1: str  # always printed
    seq: str | None  # TCP only, with -v
    vline: str  # with -v
    idline: str  # with -vv

    def expected(self, verbose: int) -> str:
        lines = [self.line1]
        if verbose >= 1:
            if self.seq is not None:
                lines.append(self.seq)
            lines.append(self.vline)
        if verbose >= 2:
            lines.append(self.idline)
        return "".join(line + "\n" for line in lines)


CASES: list[Golden] = [
    # --- print_state(): direction PF_OUT -> src = s->src, sk = key[STACK], nk = key[WIRE];
    # arrow " -> "; print_host(): IPv4 "addr:port"; print_seq() without seqdiff; wscale
    # printed because both peers' wscale != 0, masked with PF_WSCALE_MASK (0x87 & 0x0f = 7);
    # -v: %.2u times, "rule N" (anchor == -1 not shown); -vv: %016llx id, %08x creatorid.
    Golden(
        "tcp4_out_plain",
        gr.build_state(
            id=0x5F0C1A2B00000001,
            ifname=b"em0",
            wire=Key("203.0.113.5", 443, "192.168.1.10", 51234),
            proto=6,
            direction=OUT,
            src=Peer(seqlo=1000, seqhi=65240, state=4, wscale=0x87),
            dst=Peer(seqlo=2000, seqhi=67160, state=4, wscale=0x87),
            creation=65,
            expire=86398,
            packets=(12, 10),
            bytes_=(1500, 9000),
            rule=3,
            creatorid=0x1A2B3C4D,
        ),
        "em0 tcp 192.168.1.10:51234 -> 203.0.113.5:443       ESTABLISHED:ESTABLISHED",
        "   [1000 + 64240] wscale 7  [2000 + 65160] wscale 7",
        "   age 00:01:05, expires in 23:59:58, 12:10 pkts, 1500:9000 bytes, rule 3",
        "   id: 5f0c1a2b00000001 creatorid: 1a2b3c4d",
    ),
    # --- direction PF_IN -> src = s->dst, dst = s->src (state column and seq line swapped),
    # sk = key[WIRE], nk = key[STACK]; arrow " <- "; rt_addr zero -> no "{...}";
    # print_seq() with seqdiff "(+N)"; wscale suppressed because one peer's wscale is 0;
    # -v: hours > 99 ("100:00:01"), 64-bit counters above 2^32, "anchor 2, rule 17",
    # sloppy (state_flags 0x0002 big-endian), source-track (sync_flags 0x04).
    Golden(
        "tcp4_in_plain",
        gr.build_state(
            id=0xABCDEF,
            ifname=b"em1",
            wire=Key("198.51.100.7", 40001, "10.0.0.2", 22),
            proto=6,
            direction=IN,
            src=Peer(seqlo=100, seqhi=29300, state=9, wscale=0),
            dst=Peer(seqlo=3000000000, seqhi=3000005000, seqdiff=12345, state=4, wscale=0x82),
            creation=360001,
            expire=0,
            packets=(4294967301, 7),
            bytes_=(1 << 40, (1 << 33) + 1),
            anchor=2,
            rule=17,
            state_flags=0x0002,
            sync_flags=0x04,
            creatorid=0xBEEF,
        ),
        "em1 tcp 10.0.0.2:22 <- 198.51.100.7:40001       ESTABLISHED:FIN_WAIT_2",
        "   [3000000000 + 5000](+12345)  [100 + 29200]",
        "   age 100:00:01, expires in 00:00:00, 4294967301:7 pkts,"
        " 1099511627776:8589934593 bytes, anchor 2, rule 17, sloppy, source-track",
        "   id: 0000000000abcdef creatorid: 0000beef",
    ),
    # --- NAT out (nat-to): nk->addr[1] != sk->addr[1] -> " (" sk->addr[1]:port[1] ")" after
    # the first host; second host unchanged. print_seq(): seqhi - seqlo wraps modulo 2^32
    # (200 - 4294967000 = 496). "rule 0" is shown (0 != -1). id all ones, creatorid lowercase.
    Golden(
        "tcp4_out_nat_to",
        gr.build_state(
            id=0xFFFFFFFFFFFFFFFF,
            ifname=b"em0",
            wire=Key("203.0.113.5", 80, "198.51.100.1", 61234),
            stack=Key("203.0.113.5", 80, "192.168.1.10", 51234),
            proto=6,
            direction=OUT,
            src=Peer(seqlo=4294967000, seqhi=200, state=2, wscale=2),
            dst=Peer(state=0),
            creation=0,
            expire=30,
            packets=(1, 0),
            bytes_=(60, 0),
            rule=0,
            creatorid=0xDEADBEEF,
        ),
        "em0 tcp 198.51.100.1:61234 (192.168.1.10:51234) -> 203.0.113.5:80       SYN_SENT:CLOSED",
        "   [4294967000 + 496]  [0 + 0]",
        "   age 00:00:00, expires in 00:00:30, 1:0 pkts, 60:0 bytes, rule 0",
        "   id: ffffffffffffffff creatorid: deadbeef",
    ),
    # --- rdr-to in: for PF_IN nk = key[STACK] (the redirect target), so the wire address
    # appears in "(...)" after the FIRST host; then route-to "{rt_addr}" (direction PF_IN,
    # printed right after the first host's parentheses, before the arrow).
    # TCP state name SYN_RCVD (tcpstates[3]); wscale 0x9e & 0x0f = 14; -v: pflow (0x0004),
    # no rule (rule == -1).
    Golden(
        "tcp4_in_rdr_to_route_to",
        gr.build_state(
            id=1,
            ifname=b"em0",
            wire=Key("198.51.100.7", 40002, "203.0.113.10", 80),
            stack=Key("198.51.100.7", 40002, "10.0.0.80", 8080),
            rt_addr="192.0.2.254",
            proto=6,
            direction=IN,
            src=Peer(seqlo=7, seqhi=65542, state=4, wscale=0x9E),
            dst=Peer(seqlo=5, seqhi=10, state=3, wscale=0x03),
            creation=59,
            expire=3599,
            state_flags=0x0004,
            creatorid=0,
        ),
        "em0 tcp 10.0.0.80:8080 (203.0.113.10:80) {192.0.2.254} <- 198.51.100.7:40002"
        "       SYN_RCVD:ESTABLISHED",
        "   [5 + 5] wscale 3  [7 + 65535] wscale 14",
        "   age 00:00:59, expires in 00:59:59, 0:0 pkts, 0:0 bytes, pflow",
        "   id: 0000000000000001 creatorid: 00000000",
    ),
    # --- rdr-to out: nk->addr[0] != sk->addr[0] -> "(...)" after the SECOND host; route-to
    # "{rt_addr}" for PF_OUT comes after that. UDP names MULTIPLE:SINGLE; no seq line (not
    # TCP). -v: anchor before rule, then sloppy, pflow, source-track, sticky-address in
    # that order (state_flags 0x0006, sync_flags 0x0c).
    Golden(
        "udp4_out_rdr_to_route_to",
        gr.build_state(
            id=0x0123456789ABCDEF,
            ifname=b"em0",
            wire=Key("192.0.2.53", 53, "192.168.1.20", 33333),
            stack=Key("8.8.8.8", 53, "192.168.1.20", 33333),
            rt_addr="10.0.0.254",
            proto=17,
            direction=OUT,
            src=Peer(state=2),
            dst=Peer(state=1),
            creation=7322,
            expire=45,
            packets=(3, 1),
            bytes_=(180, 90),
            anchor=1,
            rule=5,
            state_flags=0x0006,
            sync_flags=0x0C,
            creatorid=0x0000000A,
        ),
        "em0 udp 192.168.1.20:33333 -> 192.0.2.53:53 (8.8.8.8:53) {10.0.0.254}"
        "       MULTIPLE:SINGLE",
        None,
        "   age 02:02:02, expires in 00:00:45, 3:1 pkts, 180:90 bytes,"
        " anchor 1, rule 5, sloppy, pflow, source-track, sticky-address",
        "   id: 0123456789abcdef creatorid: 0000000a",
    ),
    # --- nat-to on an inbound state (source translated on the way in): for PF_IN the
    # second host is nk->addr[0] and the wire source appears in "(...)" after it. UDP
    # state column swapped for PF_IN (s->dst first): NO_TRAFFIC:SINGLE.
    Golden(
        "udp4_in_nat_to",
        gr.build_state(
            id=2,
            ifname=b"vio0",
            wire=Key("198.51.100.9", 5000, "10.0.0.53", 53),
            stack=Key("10.255.0.1", 5000, "10.0.0.53", 53),
            proto=17,
            direction=IN,
            src=Peer(state=1),
            dst=Peer(state=0),
            creation=1,
            expire=59,
            packets=(1, 0),
            bytes_=(76, 0),
            rule=12,
            creatorid=0x01020304,
        ),
        "vio0 udp 10.0.0.53:53 <- 10.255.0.1:5000 (198.51.100.9:5000)       NO_TRAFFIC:SINGLE",
        None,
        "   age 00:00:01, expires in 00:00:59, 1:0 pkts, 76:0 bytes, rule 12",
        "   id: 0000000000000002 creatorid: 01020304",
    ),
    # --- both sides translated (binat-like): "(...)" after both hosts. TIME_WAIT
    # (tcpstates[10], the last name); seqdiff on both peers ((+4294967295) is u32 max).
    Golden(
        "tcp4_out_both_sides_translated",
        gr.build_state(
            id=3,
            ifname=b"em0",
            wire=Key("198.51.100.25", 25, "203.0.113.2", 2025),
            stack=Key("10.1.1.1", 25, "192.168.1.10", 1025),
            proto=6,
            direction=OUT,
            src=Peer(seqlo=1, seqhi=2, seqdiff=4294967295, state=10, wscale=1),
            dst=Peer(seqlo=10, seqhi=20, seqdiff=7, state=10, wscale=1),
            creation=3599,
            expire=90,
            packets=(40, 38),
            bytes_=(4000, 52000),
            rule=1,
            creatorid=0xCAFE0001,
        ),
        "em0 tcp 203.0.113.2:2025 (192.168.1.10:1025) -> 198.51.100.25:25 (10.1.1.1:25)"
        "       TIME_WAIT:TIME_WAIT",
        "   [1 + 1](+4294967295) wscale 1  [10 + 10](+7) wscale 1",
        "   age 00:59:59, expires in 00:01:30, 40:38 pkts, 4000:52000 bytes, rule 1",
        "   id: 0000000000000003 creatorid: cafe0001",
    ),
    # --- only the port differs between nk and sk (nk->port[1] != sk->port[1]) -> "(...)".
    Golden(
        "tcp4_out_port_only_translated",
        gr.build_state(
            id=4,
            ifname=b"em0",
            wire=Key("203.0.113.5", 443, "192.168.1.10", 60000),
            stack=Key("203.0.113.5", 443, "192.168.1.10", 5000),
            proto=6,
            direction=OUT,
            src=Peer(state=4),
            dst=Peer(state=4),
        ),
        "em0 tcp 192.168.1.10:60000 (192.168.1.10:5000) -> 203.0.113.5:443"
        "       ESTABLISHED:ESTABLISHED",
        SEQ_ZERO,
        V_ZERO,
        "   id: 0000000000000004 creatorid: 00000000",
    ),
    # --- print_host(): non-zero rdomain -> "(N) " prefix, on both hosts (nk->rdomain);
    # keys identical, so no parentheses.
    Golden(
        "tcp4_in_rdomain",
        gr.build_state(
            id=5,
            ifname=b"em2",
            wire=Key("198.51.100.7", 40001, "10.0.0.2", 22, rdomain=1),
            proto=6,
            direction=IN,
            src=Peer(state=4),
            dst=Peer(state=4),
        ),
        "em2 tcp (1) 10.0.0.2:22 <- (1) 198.51.100.7:40001       ESTABLISHED:ESTABLISHED",
        SEQ_ZERO,
        V_ZERO,
        "   id: 0000000000000005 creatorid: 00000000",
    ),
    # --- only the rdomain differs (nk->rdomain != sk->rdomain): both "(...)" are printed,
    # each with sk's own rdomain prefix; rdomain is big-endian u16 (256 = bytes 01 00).
    Golden(
        "tcp4_in_rdomain_differs",
        gr.build_state(
            id=6,
            ifname=b"em0",
            wire=Key("192.0.2.1", 40000, "10.0.0.2", 22, rdomain=3),
            stack=Key("192.0.2.1", 40000, "10.0.0.2", 22, rdomain=256),
            proto=6,
            direction=IN,
            src=Peer(state=4),
            dst=Peer(state=4),
        ),
        "em0 tcp (256) 10.0.0.2:22 ((3) 10.0.0.2:22) <- (256) 192.0.2.1:40000"
        " ((3) 192.0.2.1:40000)       ESTABLISHED:ESTABLISHED",
        SEQ_ZERO,
        V_ZERO,
        "   id: 0000000000000006 creatorid: 00000000",
    ),
    # --- IPv6 (record af 24): print_host() puts the port in "[port]"; inet_ntop compresses
    # the longest zero run only, never a single zero group ("2001:db8:0:1::80").
    # wscale 0x80 (flag only) is non-zero, so wscale is printed, as 0x80 & 0x0f = 0.
    # -v: age 72 hours, creatorid ffffffff.
    Golden(
        "tcp6_out",
        gr.build_state(
            id=7,
            ifname=b"em0",
            wire=Key("2001:db8:0:1::80", 443, "2001:db8::10", 51000),
            proto=6,
            direction=OUT,
            src=Peer(seqlo=10, seqhi=20, state=4, wscale=0x80),
            dst=Peer(seqlo=30, seqhi=45, state=4, wscale=0x85),
            creation=259200,
            expire=86400,
            rule=7,
            creatorid=0xFFFFFFFF,
        ),
        "em0 tcp 2001:db8::10[51000] -> 2001:db8:0:1::80[443]       ESTABLISHED:ESTABLISHED",
        "   [10 + 10] wscale 0  [30 + 15] wscale 5",
        "   age 72:00:00, expires in 24:00:00, 0:0 pkts, 0:0 bytes, rule 7",
        "   id: 0000000000000007 creatorid: ffffffff",
    ),
    # --- IPv6 inbound: IPv4-mapped address printed "::ffff:192.0.2.1" (OpenBSD inet_ntop's
    # encapsulated-IPv4 form); two equal zero runs -> the first is compressed
    # ("2001:db8::1:0:0:1"); rdomain prefix on IPv6 hosts; route-to for PF_IN with an
    # IPv6 rt_addr (PF_AZERO checks all 16 bytes for AF_INET6). UDP MULTIPLE:MULTIPLE.
    Golden(
        "udp6_in_mapped_route_to",
        gr.build_state(
            id=8,
            ifname=b"em0",
            wire=Key("::ffff:192.0.2.1", 5353, "2001:db8:0:0:1:0:0:1", 53, rdomain=3),
            rt_addr="fe80::1",
            proto=17,
            direction=IN,
            src=Peer(state=2),
            dst=Peer(state=2),
        ),
        "em0 udp (3) 2001:db8::1:0:0:1[53] {fe80::1} <- (3) ::ffff:192.0.2.1[5353]"
        "       MULTIPLE:MULTIPLE",
        None,
        V_ZERO,
        "   id: 0000000000000008 creatorid: 00000000",
    ),
    # --- af-to (NAT64): key[STACK].af (2) != key[WIRE].af (24) -> afto. For PF_IN:
    # nk = key[STACK] printed with AF_INET, sk = key[WIRE] printed with AF_INET6; the
    # parenthesised index is swapped (sk->addr[0] after the first host, sk->addr[1] after
    # the second); the arrow is " -> " although the direction is PF_IN.
    Golden(
        "tcp_afto_in_nat64",
        gr.build_state(
            id=9,
            ifname=b"em0",
            wire=Key("2001:db8::5", 40000, "64:ff9b::c000:201", 80),
            stack=Key("192.0.2.1", 80, "198.51.100.1", 52000),
            proto=6,
            direction=IN,
            src=Peer(state=4),
            dst=Peer(state=4),
        ),
        "em0 tcp 198.51.100.1:52000 (2001:db8::5[40000]) -> 192.0.2.1:80"
        " (64:ff9b::c000:201[80])       ESTABLISHED:ESTABLISHED",
        SEQ_ZERO,
        V_ZERO,
        "   id: 0000000000000009 creatorid: 00000000",
    ),
    # --- ICMP, PF_OUT: before printing, sk->port[0] = nk->port[0], so the second host has
    # no "(...)" although the stack key's port[0] differs; the first host still shows the
    # NAT. ICMP never gets state names: "0:0".
    Golden(
        "icmp4_out_nat_port_fixup",
        gr.build_state(
            id=10,
            ifname=b"em0",
            wire=Key("8.8.8.8", 54321, "198.51.100.1", 54321),
            stack=Key("8.8.8.8", 8, "192.168.1.10", 12345),
            proto=1,
            direction=OUT,
            creation=2,
            expire=10,
            packets=(1, 1),
            bytes_=(84, 84),
            rule=2,
        ),
        "em0 icmp 198.51.100.1:54321 (192.168.1.10:12345) -> 8.8.8.8:54321       0:0",
        None,
        "   age 00:00:02, expires in 00:00:10, 1:1 pkts, 84:84 bytes, rule 2",
        "   id: 000000000000000a creatorid: 00000000",
    ),
    # --- control for the fix-up above: the same keys with UDP get no fix-up, so the
    # second host does show "(8.8.8.8:8)". UDP SINGLE:SINGLE.
    Golden(
        "udp4_out_no_icmp_fixup",
        gr.build_state(
            id=11,
            ifname=b"em0",
            wire=Key("8.8.8.8", 54321, "198.51.100.1", 54321),
            stack=Key("8.8.8.8", 8, "192.168.1.10", 12345),
            proto=17,
            direction=OUT,
            src=Peer(state=1),
            dst=Peer(state=1),
        ),
        "em0 udp 198.51.100.1:54321 (192.168.1.10:12345) -> 8.8.8.8:54321 (8.8.8.8:8)"
        "       SINGLE:SINGLE",
        None,
        V_ZERO,
        "   id: 000000000000000b creatorid: 00000000",
    ),
    # --- ICMPv6 (58, "ipv6-icmp"), PF_IN: sk->port[1] = nk->port[1] before printing, so no
    # "(...)". States 1 and 2 are < 3 but ICMPv6 is excluded from the PFOTHERS names, so
    # they print as numbers, swapped for PF_IN: "2:1".
    Golden(
        "icmp6_in_port_fixup_numeric_states",
        gr.build_state(
            id=12,
            ifname=b"em0",
            wire=Key("2001:db8::99", 4242, "2001:db8::1", 0),
            stack=Key("2001:db8::99", 4242, "2001:db8::1", 128),
            proto=58,
            direction=IN,
            src=Peer(state=1),
            dst=Peer(state=2),
        ),
        "em0 ipv6-icmp 2001:db8::1[128] <- 2001:db8::99[4242]       2:1",
        None,
        V_ZERO,
        "   id: 000000000000000c creatorid: 00000000",
    ),
    # --- control for the ICMPv6 fix-up: the same keys with UDP -> "(...)" after the first
    # host, and sk's port 0 is not printed at all; UDP names swapped: MULTIPLE:SINGLE.
    Golden(
        "udp6_in_no_icmp_fixup_port0",
        gr.build_state(
            id=13,
            ifname=b"em0",
            wire=Key("2001:db8::99", 4242, "2001:db8::1", 0),
            stack=Key("2001:db8::99", 4242, "2001:db8::1", 128),
            proto=17,
            direction=IN,
            src=Peer(state=1),
            dst=Peer(state=2),
        ),
        "em0 udp 2001:db8::1[128] (2001:db8::1) <- 2001:db8::99[4242]       MULTIPLE:SINGLE",
        None,
        V_ZERO,
        "   id: 000000000000000d creatorid: 00000000",
    ),
    # --- other protocol (GRE 47): PFOTHERS names; port 0 -> no ":port" at all.
    Golden(
        "gre_other_names_port0",
        gr.build_state(
            id=14,
            ifname=b"gre0",
            wire=Key("198.51.100.2", 0, "192.168.1.1", 0),
            proto=47,
            direction=OUT,
            src=Peer(state=2),
            dst=Peer(state=1),
        ),
        "gre0 gre 192.168.1.1 -> 198.51.100.2       MULTIPLE:SINGLE",
        None,
        V_ZERO,
        "   id: 000000000000000e creatorid: 00000000",
    ),
    # --- other protocol (ESP 50) with a state >= PFOTHERS_NSTATES -> numbers; swapped for
    # PF_IN (s->dst first): "5:0".
    Golden(
        "esp_other_out_of_range_numeric",
        gr.build_state(
            id=15,
            ifname=b"enc0",
            wire=Key("198.51.100.3", 0, "203.0.113.9", 0),
            proto=50,
            direction=IN,
            src=Peer(state=0),
            dst=Peer(state=5),
        ),
        "enc0 esp 203.0.113.9 <- 198.51.100.3       5:0",
        None,
        V_ZERO,
        "   id: 000000000000000f creatorid: 00000000",
    ),
    # --- UDP with a state >= PFUDPS_NSTATES: neither the UDP nor the PFOTHERS branch
    # applies -> numbers "3:1".
    Golden(
        "udp_out_of_range_numeric",
        gr.build_state(
            id=16,
            ifname=b"em0",
            wire=Key("192.0.2.7", 123, "192.168.1.5", 123),
            proto=17,
            direction=OUT,
            src=Peer(state=3),
            dst=Peer(state=1),
        ),
        "em0 udp 192.168.1.5:123 -> 192.0.2.7:123       3:1",
        None,
        V_ZERO,
        "   id: 0000000000000010 creatorid: 00000000",
    ),
    # --- unknown protocol: getprotobynumber(254) finds nothing in OpenBSD's
    # /etc/protocols -> printf("%u ", s->proto); PFOTHERS names apply.
    Golden(
        "unknown_proto_254",
        gr.build_state(
            id=17,
            ifname=b"em0",
            wire=Key("192.0.2.2", 0, "192.168.1.1", 0),
            proto=254,
            direction=OUT,
        ),
        "em0 254 192.168.1.1 -> 192.0.2.2       NO_TRAFFIC:NO_TRAFFIC",
        None,
        V_ZERO,
        "   id: 0000000000000011 creatorid: 00000000",
    ),
    # --- TCP state >= PF_TCPS_PROXY_SRC (11) -> "PROXY:SRC"; the -v seq line is still
    # printed.
    Golden(
        "tcp_proxy_src",
        gr.build_state(
            id=18,
            ifname=b"em0",
            wire=Key("192.0.2.80", 80, "198.51.100.4", 41000),
            proto=6,
            direction=OUT,
            src=Peer(state=11),
            dst=Peer(state=0),
        ),
        "em0 tcp 198.51.100.4:41000 -> 192.0.2.80:80       PROXY:SRC",
        SEQ_ZERO,
        V_ZERO,
        "   id: 0000000000000012 creatorid: 00000000",
    ),
    # --- PROXY_SRC is tested before PROXY_DST: src 12, dst 11 -> "PROXY:SRC".
    Golden(
        "tcp_proxy_src_before_dst",
        gr.build_state(
            id=19,
            ifname=b"em0",
            wire=Key("192.0.2.80", 80, "198.51.100.4", 41001),
            proto=6,
            direction=OUT,
            src=Peer(state=12),
            dst=Peer(state=11),
        ),
        "em0 tcp 198.51.100.4:41001 -> 192.0.2.80:80       PROXY:SRC",
        SEQ_ZERO,
        V_ZERO,
        "   id: 0000000000000013 creatorid: 00000000",
    ),
    # --- PF_TCPS_PROXY_DST (12) on one peer, the other a normal state -> "PROXY:DST".
    Golden(
        "tcp_proxy_dst",
        gr.build_state(
            id=20,
            ifname=b"em0",
            wire=Key("192.0.2.80", 80, "198.51.100.4", 41002),
            proto=6,
            direction=OUT,
            src=Peer(state=4),
            dst=Peer(state=12),
        ),
        "em0 tcp 198.51.100.4:41002 -> 192.0.2.80:80       PROXY:DST",
        SEQ_ZERO,
        V_ZERO,
        "   id: 0000000000000014 creatorid: 00000000",
    ),
    # --- any other TCP level -> "<BAD STATE LEVELS s:d>", in printed (swapped for PF_IN)
    # order: s->dst 200 first.
    Golden(
        "tcp_bad_state_levels",
        gr.build_state(
            id=21,
            ifname=b"em0",
            wire=Key("198.51.100.4", 41003, "192.0.2.80", 80),
            proto=6,
            direction=IN,
            src=Peer(state=4),
            dst=Peer(state=200),
        ),
        "em0 tcp 192.0.2.80:80 <- 198.51.100.4:41003       <BAD STATE LEVELS 200:4>",
        SEQ_ZERO,
        V_ZERO,
        "   id: 0000000000000015 creatorid: 00000000",
    ),
    # --- -v flags that must NOT print: state_flags 0x0200|0x0400|0x0008|0x0001 (SETPRIO,
    # INP_UNLINKED, NOSYNC, ALLOWOPTS) are neither SLOPPY (0x0002) nor PFLOW (0x0004) once
    # read big-endian; sync_flags 0x03 has neither 0x04 nor 0x08. anchor 0xfffffffe != -1
    # -> shown; rule == -1 -> not shown. Counters at 2^64-1 and 2^32 +- 1; expire
    # 0xffffffff -> "1193046:28:15".
    Golden(
        "udp_flags_not_shown_big_counters",
        gr.build_state(
            id=22,
            ifname=b"em0",
            wire=Key("192.0.2.9", 514, "192.168.1.9", 514),
            proto=17,
            direction=OUT,
            src=Peer(state=1),
            dst=Peer(state=0),
            expire=0xFFFFFFFF,
            packets=((1 << 64) - 1, 1 << 32),
            bytes_=((1 << 32) - 1, (1 << 32) + 1),
            anchor=0xFFFFFFFE,
            state_flags=0x0200 | 0x0400 | 0x0008 | 0x0001,
            sync_flags=0x03,
        ),
        "em0 udp 192.168.1.9:514 -> 192.0.2.9:514       SINGLE:NO_TRAFFIC",
        None,
        "   age 00:00:00, expires in 1193046:28:15, 18446744073709551615:4294967296 pkts,"
        " 4294967295:4294967297 bytes, anchor 4294967294",
        "   id: 0000000000000016 creatorid: 00000000",
    ),
    # --- PF_ANEQ / PF_AZERO with AF_INET look at addr32[0] only (pfvar.h 1.543): keys that
    # differ only in bytes 4..15 print no "(...)", and an rt_addr whose first 4 bytes are
    # zero prints no "{...}".
    Golden(
        "ipv4_compares_first_word_only",
        gr.build_state(
            id=23,
            ifname=b"em0",
            wire=Key("192.0.2.80", 80, bytes([192, 168, 1, 10]) + b"\x01" * 12, 1234),
            stack=Key("192.0.2.80", 80, "192.168.1.10", 1234),
            rt_addr=bytes(4) + b"\xff" * 12,
            rt=1,
            proto=6,
            direction=OUT,
            src=Peer(state=4),
            dst=Peer(state=4),
        ),
        "em0 tcp 192.168.1.10:1234 -> 192.0.2.80:80       ESTABLISHED:ESTABLISHED",
        SEQ_ZERO,
        V_ZERO,
        "   id: 0000000000000017 creatorid: 00000000",
    ),
]

CASE_IDS = [c.name for c in CASES]


def _parse_one(record: bytes):
    states = pf.parse_states(record)
    assert len(states) == 1
    return states[0]


@pytest.fixture(scope="module")
def parsed() -> dict[str, object]:
    return {c.name: _parse_one(c.record) for c in CASES}


def test_case_names_unique():
    assert len(set(CASE_IDS)) == len(CASE_IDS)


@pytest.mark.parametrize("verbose", [0, 1, 2], ids=["ss", "ss-v", "ss-vv"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_format_state(case: Golden, verbose: int):
    state = _parse_one(case.record)
    assert pf.format_state(state, verbose=verbose) == case.expected(verbose)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_str_is_pfctl_ss_vv(case: Golden):
    state = _parse_one(case.record)
    assert str(state) == case.expected(2)[:-1]


def test_state_file_of_many_records():
    """A ``pfctl -S`` file is the records back to back; each decodes in order."""
    data = b"".join(c.record for c in CASES)
    states = pf.parse_states(data)
    assert isinstance(states, tuple)
    assert len(states) == len(CASES)
    assert all(isinstance(s, pf.PFState) for s in states)
    text = "".join(pf.format_state(s, verbose=2) for s in states)
    assert text == "".join(c.expected(2) for c in CASES)


def test_empty_state_file():
    assert pf.parse_states(b"") == ()


# --- every TCP state name (tcpstates[] of tcp_fsm.h, note SYN_RCVD), src:dst order, PF_OUT.
TCP_NAMES = [
    "CLOSED",
    "LISTEN",
    "SYN_SENT",
    "SYN_RCVD",
    "ESTABLISHED",
    "CLOSE_WAIT",
    "FIN_WAIT_1",
    "CLOSING",
    "LAST_ACK",
    "FIN_WAIT_2",
    "TIME_WAIT",
]


@pytest.mark.parametrize("level", range(11), ids=TCP_NAMES)
def test_tcp_state_names(level: int):
    record = gr.build_state(
        ifname=b"em0",
        wire=Key("192.0.2.80", 80, "192.168.1.2", 40000),
        proto=6,
        direction=OUT,
        src=Peer(state=level),
        dst=Peer(state=10 - level),
    )
    expected = (
        "em0 tcp 192.168.1.2:40000 -> 192.0.2.80:80       "
        + TCP_NAMES[level]
        + ":"
        + TCP_NAMES[10 - level]
        + "\n"
    )
    assert pf.format_state(_parse_one(record), verbose=0) == expected


# --- protocol names as OpenBSD's getprotobynumber() returns them (etc/protocols 1.23);
# port 0, states 0:0 -> PFOTHERS "NO_TRAFFIC:NO_TRAFFIC".
@pytest.mark.parametrize(
    "proto, printed",
    [
        (0, "ip"),
        (2, "igmp"),
        (4, "ipencap"),
        (41, "ipv6"),
        (47, "gre"),
        (50, "esp"),
        (51, "ah"),
        (61, "any"),  # 61, 63, 68, 99 are all listed as "any"
        (99, "any"),
        (89, "ospf"),
        (103, "pim"),
        (112, "carp"),  # not "vrrp": that is an alias on the carp line
        (132, "sctp"),
        (240, "pfsync"),
        (255, "reserved"),
        (114, "114"),  # commented out in OpenBSD's file
        (253, "253"),
        (254, "254"),
    ],
)
def test_protocol_names(proto: int, printed: str):
    record = gr.build_state(
        ifname=b"em0",
        wire=Key("192.0.2.2", 0, "192.168.1.1", 0),
        proto=proto,
        direction=OUT,
    )
    expected = f"em0 {printed} 192.168.1.1 -> 192.0.2.2       NO_TRAFFIC:NO_TRAFFIC\n"
    assert pf.format_state(_parse_one(record), verbose=0) == expected


# --- ifname: everything up to the first NUL, or all 16 bytes when there is none, escaped
# vis(3)-style: bytes outside 0x21..0x7e as three octal digits, a backslash doubled.
@pytest.mark.parametrize(
    "ifname, printed",
    [
        (b"pppoe0", "pppoe0"),
        (b"all", "all"),
        (b"abcdefghijklmnop", "abcdefghijklmnop"),  # 16 bytes, no NUL
        (b"0123456789abcde\x1b", "0123456789abcde\\033"),  # 16 bytes, no NUL, ESC last
        (b"em\x01\n", "em\\001\\012"),
        (b"a\\b", "a\\\\b"),
        (b"my if", "my\\040if"),
        (b"\xff\x7f\t", "\\377\\177\\011"),
        (b"!~", "!~"),  # 0x21 and 0x7e are printed as they are
        (b"em0\x00junk", "em0"),  # stops at the first NUL
        (b"", ""),  # empty name: the line starts with the separating space
    ],
    ids=[
        "plain",
        "all",
        "16-no-nul",
        "16-no-nul-esc",
        "control",
        "backslash",
        "space",
        "high-del-tab",
        "edges",
        "after-nul",
        "empty",
    ],
)
def test_ifname_escaping(ifname: bytes, printed: str):
    record = gr.build_state(
        ifname=ifname,
        wire=Key("192.0.2.2", 80, "192.0.2.1", 1025),
        proto=6,
        direction=OUT,
        src=Peer(state=4),
        dst=Peer(state=4),
    )
    expected = printed + " tcp 192.0.2.1:1025 -> 192.0.2.2:80       ESTABLISHED:ESTABLISHED\n"
    assert pf.format_state(_parse_one(record), verbose=0) == expected


# --- py-pf compatible attributes on the same records.


def test_attributes_out_plain(parsed):
    s = parsed["tcp4_out_plain"]
    assert s.direction == pf.PF_OUT
    assert s.af == socket.AF_INET
    assert s.proto == 6
    assert s.id == 0x5F0C1A2B00000001
    assert s.creatorid == 0x1A2B3C4D
    assert s.packets == (12, 10)
    assert s.bytes == (1500, 9000)
    # PF_OUT: src is the record's src peer, nk the wire key (key[0])
    assert s.src.seqlo == 1000 and s.src.state == 4
    assert s.dst.seqlo == 2000
    assert str(s.nk.addr[1]) == "192.168.1.10"
    assert str(s.nk.addr[0]) == "203.0.113.5"
    assert s.nk.port[1]
    assert str(s.nk.port[1]) == "51234"
    assert str(s.nk.port[0]) == "443"


def test_attributes_in_swaps_peers(parsed):
    s = parsed["tcp4_in_plain"]
    assert s.direction == pf.PF_IN
    # PF_IN: state.src is the record's dst peer and state.dst the record's src peer
    assert s.src.seqlo == 3000000000
    assert s.src.seqhi == 3000005000
    assert s.src.seqdiff == 12345
    assert s.src.state == 4
    assert s.dst.seqlo == 100
    assert s.dst.state == 9
    assert s.packets == (4294967301, 7)
    assert s.bytes == (1 << 40, (1 << 33) + 1)


def test_attributes_in_nk_is_stack_key(parsed):
    s = parsed["tcp4_in_rdr_to_route_to"]
    assert s.direction == pf.PF_IN
    # key[1] (stack) holds the redirect target, key[0] (wire) the public address
    assert str(s.nk.addr[1]) == "10.0.0.80"
    assert str(s.nk.port[1]) == "8080"
    assert str(s.sk.addr[1]) == "203.0.113.10"
    assert str(s.sk.port[1]) == "80"


def test_attributes_out_nk_is_wire_key(parsed):
    s = parsed["tcp4_out_nat_to"]
    assert s.direction == pf.PF_OUT
    assert str(s.nk.addr[1]) == "198.51.100.1"
    assert str(s.sk.addr[1]) == "192.168.1.10"
    assert s.nk.addr[1] != s.sk.addr[1]


def test_addresses_compare_by_value(parsed):
    # 198.51.100.1 is nk.addr[1] of two different states
    a = parsed["tcp4_out_nat_to"].nk.addr[1]
    b = parsed["icmp4_out_nat_port_fixup"].nk.addr[1]
    assert a == b
    assert not (a != b)
    assert a != parsed["tcp4_out_plain"].nk.addr[1]


def test_port_zero_is_falsy(parsed):
    s = parsed["gre_other_names_port0"]
    assert not s.nk.port[0]
    assert not s.nk.port[1]


def test_attributes_ipv6(parsed):
    s = parsed["tcp6_out"]
    # the record says 24 (OpenBSD's AF_INET6); the object uses the host's constant
    assert s.af == socket.AF_INET6
    assert str(s.nk.addr[0]) == "2001:db8:0:1::80"
    assert str(s.nk.addr[1]) == "2001:db8::10"
    assert str(s.nk.port[0]) == "443"
    mapped = parsed["udp6_in_mapped_route_to"]
    assert mapped.af == socket.AF_INET6
    assert str(mapped.nk.addr[0]) == "::ffff:192.0.2.1"
    assert str(mapped.nk.addr[1]) == "2001:db8::1:0:0:1"


def test_attributes_afto(parsed):
    s = parsed["tcp_afto_in_nat64"]
    # the record's af is the wire key's (IPv6); nk is the stack key (IPv4) for PF_IN
    assert s.af == socket.AF_INET6
    assert s.direction == pf.PF_IN
    assert str(s.nk.addr[1]) == "198.51.100.1"
    assert str(s.sk.addr[0]) == "2001:db8::5"


# --- pfhistory/protocols.py (OpenBSD etc/protocols 1.23)


def test_protocols_table():
    from pfhistory import protocols

    assert protocols.protocol_name(1) == "icmp"
    assert protocols.protocol_name(6) == "tcp"
    assert protocols.protocol_name(17) == "udp"
    assert protocols.protocol_name(58) == "ipv6-icmp"
    assert protocols.protocol_name(112) == "carp"
    assert protocols.protocol_name(254) is None
    assert protocols.protocol_name(114) is None
    assert protocols.PROTOCOL_NAMES[255] == "reserved"
    assert protocols.PROTOCOL_NAMES[258] == "divert"
    assert protocols.PROTOCOL_NUMBERS["icmp6"] == 58
    assert protocols.PROTOCOL_NUMBERS["ipv6-icmp"] == 58
    assert protocols.PROTOCOL_NUMBERS["vrrp"] == 112
    assert protocols.PROTOCOL_NUMBERS["hopopt"] == 0
    assert protocols.PROTOCOL_NUMBERS["ipsec-esp"] == 50
    assert protocols.PROTOCOL_NUMBERS["ospfigp"] == 89
    assert protocols.PROTOCOL_NUMBERS["any"] == 61
    assert all(k == k.lower() for k in protocols.PROTOCOL_NUMBERS)
    for number, name in protocols.PROTOCOL_NAMES.items():
        assert protocols.PROTOCOL_NAMES[protocols.PROTOCOL_NUMBERS[name]] == name
