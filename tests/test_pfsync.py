"""The pfsync v6 decoder against packets built here from the spec (pf-formats.md section 4),
malformed ones, and fuzzing: a packet is decoded whole or refused whole, never a crash."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from golden_records import Key, Peer, build_state
from pfhistory import _native, pfsync
from pfhistory.pfsync import MalformedPacket

CREATOR = 0x1A2B3C4D


def state(sid, **kw):
    kw.setdefault("wire", Key("203.0.113.7", 443, "10.0.0.23", 51234))
    kw.setdefault("src", Peer(seqlo=1000, seqhi=2000, max_win=512, state=4, wscale=7))
    kw.setdefault("dst", Peer(seqlo=3000, seqhi=4000, max_win=1024, state=4))
    kw.setdefault("timeout", 2)
    kw.setdefault("direction", 2)
    return build_state(id=sid, creatorid=CREATOR, creation=5, expire=86400, **kw)


# An independent encoder of the wire format (struct only), so the decoder is not
# checked against its own encoder.
def block(action, messages, words=None):
    size = len(messages[0]) if messages else 0
    words = size // 4 if words is None else words
    return struct.pack(">BBH", action, words, len(messages)) + b"".join(messages)


def packet(*blocks, version=6, length=None, trailer=b""):
    body = b"".join(blocks)
    n = 20 + len(body) if length is None else length
    return struct.pack(">BBH16s", version, 0, n, b"\x55" * 16) + body + trailer


def ip(payload, ttl=255, proto=240, version=4, ihl=5, total=None):
    n = 4 * ihl + len(payload) if total is None else total
    hdr = struct.pack(">BBHHHBBH4s4s", version << 4 | ihl, 0x10, n, 1, 0x4000, ttl, proto, 0,
                      bytes((192, 0, 2, 1)), bytes((224, 0, 0, 240)))
    return hdr + bytes(max(4 * ihl - 20, 0)) + payload


def upd_c(sid, src_state=4, dst_state=4, timeout=2):
    src = Peer(seqlo=5000, seqhi=6000, max_win=900, state=src_state, wscale=7).pack()
    dst = Peer(seqlo=7000, seqhi=8000, max_win=800, state=dst_state).pack()
    return struct.pack(">Q32s32sIIBB2x", sid, src, dst, CREATOR, 0, timeout, 0)


def short(sid):
    return struct.pack(">QI", sid, CREATOR)


def test_every_action_decodes_in_order():
    rec_ins, rec_upd, rec_del = state(1), state(2), state(3)
    data = packet(
        block(0, [b"em1".ljust(16, b"\0") + struct.pack(">I", CREATOR)]),     # CLR
        block(2, [short(10)]),                                               # INS_ACK
        block(4, [upd_c(11), upd_c(12)]),                                    # UPD_C
        block(5, [short(13)]),                                               # UPD_REQ
        block(6, [rec_del]),                                                 # DEL
        block(7, [short(14), short(15)]),                                    # DEL_C
        block(10, [struct.pack(">IIB3x", CREATOR, 1234, 2)]),                # BUS END
        block(13, [rec_ins]),                                                # INS
        block(14, [rec_upd]),                                                # UPD
        block(15, [bytes(52)]),                                              # TDB
        block(1, [bytes(8)]),                                                # OINS: skipped
    )
    result = pfsync.decode(data)
    assert result.skipped == 2                     # TDB and OINS: nothing of PF's states
    got = [(m.action, m.creatorid, m.id) for m in result.messages]
    assert got == [(0, CREATOR, 0), (2, CREATOR, 10), (4, CREATOR, 11), (4, CREATOR, 12),
                   (5, CREATOR, 13), (6, CREATOR, 3), (7, CREATOR, 14), (7, CREATOR, 15),
                   (10, CREATOR, 0), (13, CREATOR, 1), (14, CREATOR, 2)]
    msgs = result.messages
    assert msgs[0].ifname == b"em1"
    assert msgs[8].status == pfsync.BUS_END and msgs[8].endtime == 1234
    assert msgs[9].record == rec_ins and msgs[10].record == rec_upd and msgs[5].record == rec_del
    # UPD_C peers in PEER_FIELDS order, host values.
    assert msgs[2].src[:7] == (5000, 6000, 0, 900, 0, 4, 7)
    assert msgs[2].dst[:7] == (7000, 8000, 0, 800, 0, 4, 0)
    assert msgs[2].timeout == 2


def test_full_records_go_through_the_native_decoder():
    recs = [state(0x0123456789ABCDEF + i) for i in range(3)]
    msgs = pfsync.decode(packet(block(13, recs))).messages
    cols = _native.decode(b"".join(m.record for m in msgs))
    assert cols["id"] == [m.id for m in msgs] == [0x0123456789ABCDEF + i for i in range(3)]
    assert cols["creatorid"] == [CREATOR] * 3


def test_messages_are_read_at_the_announced_stride():
    # A newer sender may announce longer messages; the extra bytes are skipped.
    recs = [state(1) + b"\xee" * 8, state(2) + b"\xee" * 8]
    msgs = pfsync.decode(packet(block(13, recs))).messages
    assert [m.id for m in msgs] == [1, 2]
    assert msgs[1].record == state(2)
    longer = [short(7) + bytes(4), short(8) + bytes(4)]
    assert [m.id for m in pfsync.decode(packet(block(7, longer))).messages] == [7, 8]


def test_bytes_after_the_header_length_are_ignored():
    body = block(7, [short(1)])
    data = packet(body, trailer=b"garbage")
    assert [m.id for m in pfsync.decode(data).messages] == [1]


def test_an_ip_datagram_is_checked_then_decoded():
    payload = packet(block(7, [short(9)]))
    src, result = pfsync.decode_ip(ip(payload) + b"ethernet padding")
    assert src == bytes((192, 0, 2, 1))
    assert [m.id for m in result.messages] == [9]
    # IP options are skipped by the header length.
    assert [m.id for m in pfsync.decode_ip(ip(payload, ihl=6))[1].messages] == [9]


@pytest.mark.parametrize("data,reason", [
    (ip(packet(), ttl=254), "ttl"),
    (ip(packet(), ttl=1), "ttl"),
    (ip(packet(), proto=112), "proto"),
    (ip(packet(), version=6), "ip"),
    (ip(packet(), ihl=4), "ip"),
    (ip(packet(), total=400), "ip"),
    (b"\x45\x00", "short"),
])
def test_bad_ip_is_refused(data, reason):
    with pytest.raises(MalformedPacket) as e:
        pfsync.decode_ip(data)
    assert e.value.reason == reason


@pytest.mark.parametrize("data,reason", [
    (b"", "short"),
    (packet()[:19], "short"),
    (packet(version=5), "version"),
    (packet(version=2), "version"),
    (packet(block(7, [short(1)]), length=19), "length"),
    (packet(block(7, [short(1)]), length=100), "length"),
    (packet(block(7, [short(1)]), length=22), "length"),           # stray 2 bytes
    (packet(block(7, [short(1)])) + b"", "ok"),
    (packet(block(7, [short(1)], words=4)), "length"),              # 16 x 1 overruns
    (packet(block(7, [short(1)[:8]])), "length"),                   # 8 < 12 bytes
    (packet(block(13, [state(1)[:260]])), "length"),                # INS of 260 bytes
    (packet(block(4, [upd_c(1)[:80]])), "length"),
    (packet(block(0, [bytes(16)])), "length"),                      # CLR of 16 bytes
    (packet(block(1, [])), "action"),                               # empty unknown block
    (packet(block(99, [b""], words=0)), "action"),
    (packet(block(13, [state(1, timeout=20)])), "value"),           # timeout >= PFTM_MAX
    (packet(block(14, [state(1, src=Peer(state=13))])), "value"),   # > PF_TCPS_PROXY_DST
    (packet(block(13, [state(1, af=10)])), "value"),                # Linux's AF_INET6
    (packet(block(13, [state(1, wire=Key("10.0.0.1", 1, "10.0.0.2", 2, af=10))])), "value"),
    (packet(block(4, [upd_c(1, dst_state=200)])), "value"),
    (packet(block(4, [upd_c(1, timeout=99)])), "value"),
])
def test_malformed_packets_are_refused_whole(data, reason):
    if reason == "ok":
        pfsync.decode(data)
        return
    with pytest.raises(MalformedPacket) as e:
        pfsync.decode(data)
    assert e.value.reason == reason
    assert "malformed pfsync packet" in str(e.value)


def test_a_bad_record_refuses_the_packet_even_after_good_messages():
    data = packet(block(7, [short(1)]), block(13, [state(2), state(3, direction=0)]))
    with pytest.raises(MalformedPacket):
        pfsync.decode(data)


def test_our_encoder_matches_the_spec_encoder():
    recs = [state(1), state(2)]
    ours = pfsync.encode([(pfsync.ACT_INS, recs[0]), (pfsync.ACT_INS, recs[1]),
                          pfsync.del_c(CREATOR, 5), pfsync.clr(CREATOR, b"em1".ljust(16, b"\0")),
                          pfsync.bus(CREATOR, pfsync.BUS_START, 77)])
    spec = packet(block(13, recs), block(7, [short(5)]),
                  block(0, [b"em1".ljust(16, b"\0") + struct.pack(">I", CREATOR)]),
                  block(10, [struct.pack(">IIB3x", CREATOR, 77, 1)]))
    assert ours[:4] == spec[:4] and ours[20:] == spec[20:]
    # UPD_C built from a record carries its peers and timeout, expire and flags zero.
    action, raw = pfsync.upd_c(state(3))
    (msg,) = pfsync.decode(pfsync.encode([(action, raw)])).messages
    full = pfsync.decode(packet(block(13, [state(3)]))).messages[0].record
    cols = _native.decode(full)
    assert msg.src[:7] == tuple(cols[f"src_{f}"][0] for f in
                                ("seqlo", "seqhi", "seqdiff", "max_win", "mss", "state", "wscale"))
    assert msg.timeout == 2 and raw[-8:] == bytes(4) + b"\x02\x00" + bytes(2)
    # And the IP header: TTL 255, protocol 240, a checksum that sums to zero.
    dgram = pfsync.encode_ip(ours)
    words = struct.unpack(">10H", dgram[:20])
    assert (sum(words) + (sum(words) >> 16)) & 0xFFFF == 0xFFFF
    assert pfsync.decode_ip(dgram)[1].messages[0].id == 1


# -- fuzzing ---------------------------------------------------------------------------

def _outcome(data):
    try:
        result = pfsync.decode(data)
    except MalformedPacket as e:
        assert e.reason in {"short", "version", "length", "action", "value"}
        return None
    for m in result.messages:
        assert 0 <= m.action < pfsync.ACT_MAX
        if m.record:
            assert len(m.record) == 264
    return result


VALID = packet(block(13, [state(1), state(2)]), block(4, [upd_c(3)]),
               block(7, [short(4)]), block(10, [struct.pack(">IIB3x", CREATOR, 0, 1)]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes_never_crash(data):
    _outcome(data)
    try:
        pfsync.decode_ip(data)
    except MalformedPacket:
        pass


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                min_size=1, max_size=6),
       st.integers(0, len(VALID)))
def test_fuzz_mutated_packets_are_decoded_whole_or_refused(flips, cut):
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    data = bytes(data[:cut]) if cut < len(data) else bytes(data)
    result = _outcome(data)
    if result is not None:
        # What decodes is self-consistent: re-encoding its full records decodes the same.
        full = [m.record for m in result.messages if m.record]
        cols = _native.decode(b"".join(full))
        assert cols.n == len(full)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["ins", "upd_c", "del_c", "clr", "bus"]), max_size=12))
def test_fuzz_encoded_sequences_round_trip(kinds):
    msgs, want = [], []
    for i, k in enumerate(kinds):
        if k == "ins":
            msgs.append((pfsync.ACT_INS, state(i)))
            want.append((13, i))
        elif k == "upd_c":
            msgs.append(pfsync.upd_c(state(i)))
            want.append((4, i))
        elif k == "del_c":
            msgs.append(pfsync.del_c(CREATOR, i))
            want.append((7, i))
        elif k == "clr":
            msgs.append(pfsync.clr(CREATOR))
            want.append((0, 0))
        else:
            msgs.append(pfsync.bus(CREATOR, 1))
            want.append((10, 0))
    got = pfsync.decode_ip(pfsync.encode_ip(pfsync.encode(msgs)))[1].messages
    assert [(m.action, m.id) for m in got] == want
