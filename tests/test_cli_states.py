"""`pfhistory states` as a user runs it, including every bad input."""

import os

import pytest

from conftest import run_cli
from golden_records import Key, Peer, build_state
from pfhistory import pf

TCP_EM0 = build_state(
    wire=Key("198.51.100.7", 443, "10.0.0.23", 51234), id=1, ifname=b"em0",
    direction=pf.PF_OUT, proto=6, src=Peer(state=4), dst=Peer(state=4), rule=3,
    creatorid=0x1A2B3C4D)
UDP_EM1 = build_state(
    wire=Key("192.0.2.53", 53, "10.0.0.5", 40000), id=2, ifname=b"em1",
    direction=pf.PF_OUT, proto=17, src=Peer(state=2), dst=Peer(state=1), rule=7,
    creatorid=0x1A2B3C4D)


@pytest.fixture
def state_file(tmp_path):
    path = tmp_path / "states.pf"
    path.write_bytes(TCP_EM0 + UDP_EM1)
    return path


def _assert_one_sentence_error(result):
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pfhistory: ")
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("flags,verbose", [([], 0), (["-v"], 1), (["-vv"], 2), (["-v", "-v"], 2)])
def test_prints_like_pfctl_at_each_verbosity(state_file, flags, verbose):
    result = run_cli("states", state_file, *flags)
    assert result.returncode == 0, result.stderr
    expected = "".join(pf.format_state(s, verbose) for s in pf.parse_states(state_file.read_bytes()))
    assert result.stdout == expected
    assert result.stdout.startswith("em0 tcp 10.0.0.23:51234 -> 198.51.100.7:443       "
                                    "ESTABLISHED:ESTABLISHED\n")


def test_interface_and_rule_filters(state_file):
    only_em1 = run_cli("states", state_file, "-i", "em1")
    assert only_em1.stdout.startswith("em1 udp ") and "em0" not in only_em1.stdout
    rule3 = run_cli("states", state_file, "-R", "3")
    assert rule3.stdout.startswith("em0 tcp ") and "udp" not in rule3.stdout
    none = run_cli("states", state_file, "-i", "em1", "-R", "3")
    assert none.returncode == 0 and none.stdout == ""


def test_empty_file_is_zero_states(tmp_path):
    path = tmp_path / "empty.pf"
    path.write_bytes(b"")
    result = run_cli("states", path)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


@pytest.mark.parametrize("size,hint", [(263, None), (265, None), (242 * 3, "242-byte"),
                                       (224 * 5, "224-byte"), (360, "360-byte")])
def test_size_not_a_multiple_of_264(tmp_path, size, hint):
    path = tmp_path / "odd.pf"
    path.write_bytes(b"\x01" * size)
    line = _assert_one_sentence_error(run_cli("states", path))
    assert f"{size} bytes" in line and str(path) in line
    assert "224/240/242/277/360-byte records" in line
    if hint:
        assert hint in line


def test_truncated_state_file(state_file):
    data = state_file.read_bytes()
    state_file.write_bytes(data[:-10])
    line = _assert_one_sentence_error(run_cli("states", state_file))
    assert f"{len(data) - 10} bytes" in line


def test_foreign_content_of_the_right_size(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a state table, just text. " * 264)
    line = _assert_one_sentence_error(run_cli("states", path))
    assert "record 0" in line and "not a pfctl -S state file" in line


def test_missing_file_and_directory(tmp_path):
    line = _assert_one_sentence_error(run_cli("states", tmp_path / "nope.pf"))
    assert "no such state file" in line
    line = _assert_one_sentence_error(run_cli("states", tmp_path))
    assert "is a directory" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(state_file):
    state_file.chmod(0)
    line = _assert_one_sentence_error(run_cli("states", state_file))
    assert "permission denied" in line


def test_bad_rule_number_is_a_usage_error(state_file):
    result = run_cli("states", state_file, "-R", "three")
    assert result.returncode == 2 and "not a rule number" in result.stderr
    assert "Traceback" not in result.stderr


def test_hostile_ifname_is_escaped(tmp_path):
    path = tmp_path / "hostile.pf"
    path.write_bytes(build_state(wire=Key("10.0.0.1", 1, "10.0.0.2", 2), ifname=b"em0\nfake",
                                 direction=pf.PF_OUT, proto=17))
    out = run_cli("states", path).stdout
    assert out.startswith("em0\\012fake udp ") and out.count("\n") == 1


def test_version_and_module_entry_point():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("pfhistory ")


def test_every_command_has_an_example_in_its_help():
    from pfhistory.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        assert "Example" in command.format_help(), name
