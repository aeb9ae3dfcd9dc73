"""Hostile bytes: any 264-byte record decodes and prints without crashing."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pfhistory import pf

RECORDS = st.binary(min_size=264, max_size=264)


PY_PF_ATTRIBUTES = ("id", "ifname", "rule", "anchor", "creation", "expire", "packets",
                    "bytes", "creatorid", "af", "proto", "direction", "state_flags",
                    "sync_flags", "src", "dst", "nk", "sk", "nat_rule", "rt", "rt_addr",
                    "rtableid", "max_mss", "log", "timeout", "updates", "min_ttl",
                    "set_tos", "set_prio")


def _touch_every_attribute(state):
    for name in PY_PF_ATTRIBUTES:
        getattr(state, name)
    for peer in (state.src, state.dst):
        for name in peer._fields:
            assert isinstance(getattr(peer, name), int)
    for key in (state.nk, state.sk, state.wire_key, state.stack_key):
        str(key.addr[0]), str(key.addr[1]), int(key.port[0]), int(key.port[1])
        assert key.rdomain >= 0
    str(state.rt_addr)
    repr(state)


def _lines_expected(state, verbose):
    lines = 1
    if verbose >= 1:
        lines += 2 if state.proto == 6 else 1
    if verbose >= 2:
        lines += 1
    return lines


@settings(max_examples=400, deadline=None)
@given(st.lists(RECORDS, min_size=1, max_size=4))
def test_any_record_decodes_and_prints(records):
    states = pf.parse_states(b"".join(records))
    assert len(states) == len(records)
    for state in states:
        for verbose in (0, 1, 2):
            text = pf.format_state(state, verbose)
            assert text.endswith("\n")
            # Hostile interface names cannot add or break lines.
            assert text.count("\n") == _lines_expected(state, verbose)
            assert all(ch == "\n" or ch.isprintable() for ch in text)
        assert str(state) == pf.format_state(state, 2)[:-1]
        _touch_every_attribute(state)


@settings(max_examples=200, deadline=None)
@given(RECORDS)
def test_counters_and_id_decode_as_big_endian(record):
    state = pf.parse_states(record)[0]
    (id_,) = struct.unpack_from(">Q", record, 0)
    p0, p1, b0, b1 = struct.unpack_from(">QQQQ", record, 204)
    (creatorid,) = struct.unpack_from(">I", record, 236)
    assert state.id == id_
    assert state.packets == (p0, p1)
    assert state.bytes == (b0, b1)
    assert state.creatorid == creatorid
    assert state.rtableid == struct.unpack_from(">ii", record, 240)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_ifname_text_is_one_printable_token(raw):
    name = pf.ifname_text(raw)
    assert all(0x21 <= ord(ch) <= 0x7E for ch in name)


def test_ifname_without_nul_uses_all_sixteen_bytes():
    assert pf.ifname_text(b"abcdefghijklmnop") == "abcdefghijklmnop"


def test_ifname_control_bytes_are_escaped_in_octal():
    assert pf.ifname_text(b"em\x01\n\\ x\0junk\0\0\0\0\0") == "em\\001\\012\\\\\\040x"


def test_empty_input_is_no_states():
    assert pf.parse_states(b"") == ()
