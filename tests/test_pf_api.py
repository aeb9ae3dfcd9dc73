"""The py-pf compatible API: objects, constants, PacketFilter on files and live."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from golden_records import Key, Peer, build_state
from pfhistory import pf
from pfhistory.exceptions import LiveTableError, StateFileError

ROOT = Path(__file__).resolve().parent.parent

NAT_OUT = build_state(
    wire=Key("198.51.100.7", 443, "203.0.113.5", 61000),
    stack=Key("198.51.100.7", 443, "10.0.0.23", 51234),
    id=0x42, ifname=b"em0", direction=pf.PF_OUT, proto=6,
    src=Peer(state=4), dst=Peer(state=4), packets=(10, 20), bytes_=(1000, 2000),
    creation=65, expire=86000, creatorid=0x1A2B3C4D, rule=3)
IN_V6 = build_state(
    wire=Key("2001:db8::1", 50000, "2001:db8:1::80", 443),
    id=0x43, ifname=b"em1", direction=pf.PF_IN, proto=6,
    src=Peer(seqlo=100, state=4), dst=Peer(seqlo=200, state=2), creatorid=1)
ICMP_OUT = build_state(
    wire=Key("192.0.2.9", 7, "203.0.113.5", 7),
    stack=Key("192.0.2.9", 99, "10.0.0.9", 5),
    id=0x44, ifname=b"em0", direction=pf.PF_OUT, proto=1, creatorid=1)


def test_nat_state_orientation_and_values():
    s, = pf.parse_states(NAT_OUT)
    assert s.direction == pf.PF_OUT
    assert s.nk == s.wire_key and s.sk == s.stack_key
    assert s.nk.addr[1] != s.sk.addr[1]          # translated local side
    assert str(s.nk.addr[1]) == "203.0.113.5" and str(s.sk.addr[1]) == "10.0.0.23"
    assert s.nk.port[1] == 61000 and "{}".format(s.sk.port[1]) == "51234"
    assert s.nk.addr[0] == s.sk.addr[0] and s.nk.port[0] == s.sk.port[0]
    assert s.packets == (10, 20) and s.bytes == (1000, 2000)
    assert s.af == socket.AF_INET and s.proto == socket.IPPROTO_TCP
    assert s.id == 0x42 and s.creatorid == 0x1A2B3C4D and s.rule == 3
    assert s.anchor == 0xFFFFFFFF


def test_inbound_ipv6_uses_host_constants_and_swaps_peers():
    s, = pf.parse_states(IN_V6)
    assert s.af == socket.AF_INET6 and s.record_af == 24
    assert s.nk.af == socket.AF_INET6
    assert s.nk == s.stack_key and s.sk == s.wire_key
    # PF_IN: src is the record's dst peer.
    assert s.src.seqlo == 200 and s.dst.seqlo == 100
    assert str(s.nk.addr[1]) == "2001:db8:1::80"


def test_icmp_port_fixup_only_in_sk():
    s, = pf.parse_states(ICMP_OUT)
    assert s.stack_key.port[0] == 99           # as exported
    assert s.sk.port[0] == 7                   # pfctl shows nk's id there


def test_addr_and_port_value_semantics():
    a = pf.PFAddr("192.0.2.1")
    assert a == pf.PFAddr("192.0.2.1") and a != pf.PFAddr("192.0.2.2")
    assert a == "192.0.2.1" and hash(a) == hash(pf.PFAddr("192.0.2.1"))
    assert str(pf.PFAddr("2001:db8::1")) == "2001:db8::1"
    assert not pf.PFPort(0) and pf.PFPort(22) and pf.PFPort(22) == 22
    assert pf.PFPort(22).num == (22, 0) and "{:>5}".format(pf.PFPort(22)) == "   22"
    with pytest.raises(pf.PFError):
        pf.PFAddr("not-an-address")
    with pytest.raises(AttributeError):
        pf.PFPort(1).num = (2, 0)


def test_states_are_read_only_values():
    a, = pf.parse_states(NAT_OUT)
    b, = pf.parse_states(NAT_OUT)
    assert a == b and a is not b
    with pytest.raises(AttributeError):
        a.rule = 4


def test_constants_have_openbsd_values():
    assert (pf.PF_IN, pf.PF_OUT, pf.PF_SK_WIRE, pf.PF_SK_STACK) == (1, 2, 0, 1)
    assert (pf.PFSYNC_FLAG_SRCNODE, pf.PFSYNC_FLAG_NATSRCNODE) == (0x04, 0x08)
    assert pf.PFSTATE_SLOPPY == 0x0002 and pf.PFSTATE_NOSYNC == 0x0008
    assert pf.TCPS_ESTABLISHED == 4 and pf.TCPS_TIME_WAIT == 10
    assert (pf.PF_TCPS_PROXY_SRC, pf.PF_TCPS_PROXY_DST) == (11, 12)
    assert pf.PFUDPS_MULTIPLE == 2 and pf.PFOTHERS_SINGLE == 1
    assert pf.PFTM_TCP_ESTABLISHED == 2 and pf.PFTM_UNLINKED == 22
    assert pf.PFSYNC_SCRUB_FLAG_VALID == 1
    assert issubclass(StateFileError, pf.PFError)


def test_packetfilter_reads_a_state_file_as_tuple_and_iterator(tmp_path):
    path = tmp_path / "states.pf"
    path.write_bytes(NAT_OUT + IN_V6 + ICMP_OUT)
    states = pf.PacketFilter(str(path)).get_states()
    assert isinstance(states, tuple) and [s.id for s in states] == [0x42, 0x43, 0x44]
    it = pf.PacketFilter(path).iter_states(chunk_records=1)
    assert not isinstance(it, tuple)
    assert [s.id for s in it] == [0x42, 0x43, 0x44]


def test_packetfilter_empty_file_is_no_states(tmp_path):
    path = tmp_path / "empty.pf"
    path.write_bytes(b"")
    assert pf.PacketFilter(str(path)).get_states() == ()


@pytest.mark.skipif(sys.platform.startswith("openbsd"), reason="the live table exists here")
def test_live_table_off_openbsd_fails_with_one_sentence():
    with pytest.raises(LiveTableError) as e:
        pf.PacketFilter().get_states()
    assert str(e.value) == ("reading the live state table from /dev/pf needs OpenBSD; "
                            "give a pfctl -S state file instead")


@pytest.mark.skipif(not sys.platform.startswith("openbsd") or os.geteuid() != 0,
                    reason="needs OpenBSD and root to read /dev/pf")
def test_live_table_matches_pfctl():  # pragma: no cover - OpenBSD only
    states = pf.PacketFilter("/dev/pf").get_states()
    out = subprocess.run(["pfctl", "-ss", "-vv"], capture_output=True, text=True).stdout
    ids = {line.split()[1] for line in out.splitlines() if line.strip().startswith("id:")}
    assert {f"{s.id:016x}" for s in states} & ids


def test_chapter_example_runs_against_a_state_file(tmp_path):
    path = tmp_path / "states.pf"
    path.write_bytes(NAT_OUT + IN_V6)
    env = dict(os.environ, PFHISTORY_PF_DEVICE=str(path))
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "pypf_state_table.py")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "State 0x42 on em0 (203.0.113.5:61000 (10.0.0.23:51234) -> 198.51.100.7:443)",
        " Packets: 10:20",
        " Bytes: 1000:2000",
        " Expires in 86000 seconds",
        "State 0x43 on em1 (2001:db8:1::80[443] <- 2001:db8::1[50000])",
        " Packets: 0:0",
        " Bytes: 0:0",
        " Expires in 0 seconds",
    ]
