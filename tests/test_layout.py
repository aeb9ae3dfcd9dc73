"""Our C declaration of struct pfsync_state against py-pf 0.2.3's ctypes one."""

import ctypes

import pytest

pypf_struct = pytest.importorskip("pf._struct", reason="py-pf 0.2.3 is a test dependency")

from pfhistory import _native  # noqa: E402

RECORD = pypf_struct.pfsync_state
KEY = pypf_struct.pfsync_state_key
PEER = pypf_struct.pfsync_state_peer
SCRUB = pypf_struct.pfsync_state_scrub


def test_record_size_is_264_like_pypf():
    assert _native.record_size() == 264 == ctypes.sizeof(RECORD)
    assert _native.RECORD_SIZE == 264


@pytest.mark.parametrize("name", [f[0] for f in RECORD._fields_])
def test_record_field_offset_matches_pypf(name):
    assert _native.field_offset(name) == getattr(RECORD, name).offset


@pytest.mark.parametrize("prefix,struct", [("key", KEY), ("peer", PEER), ("scrub", SCRUB)])
def test_nested_offsets_match_pypf(prefix, struct):
    for name, _type in struct._fields_:
        assert _native.field_offset(f"{prefix}.{name}") == getattr(struct, name).offset, name


def test_nested_sizes_match_pypf():
    assert ctypes.sizeof(KEY) == 40
    assert ctypes.sizeof(PEER) == 32
    assert ctypes.sizeof(SCRUB) == 8
    # The record's nested structs start where ours do and are as long.
    assert _native.field_offset("dst") - _native.field_offset("src") == ctypes.sizeof(PEER)
    assert _native.field_offset("src") - _native.field_offset("key") == 2 * ctypes.sizeof(KEY)


def test_unknown_field_is_refused():
    with pytest.raises(KeyError):
        _native.field_offset("no_such_field")
