"""What a fresh user's trial tripped over: the README's Python example, a
simulation into a used directory, and options whose mistakes were accepted
or told confusingly. Real files, the real CLI, no mocks."""

import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import foreign_database, run_cli
from pfhistory.exceptions import PFError
from pfhistory.history import History
from pfhistory.statefile import RECORD_SIZE

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def history_db(small_history):
    return small_history


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """The pfsync traffic of a small simulated firewall, as a pcap file."""
    pcap = tmp_path_factory.mktemp("capture") / "pfsync.pcap"
    result = run_cli("simulate", "--pfsync", pcap, "--states", "50", "--duration", "2m")
    assert result.returncode == 0, result.stderr
    return pcap


def _one_line(result, code=1):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _records_in(series, index):
    """States in snapshot index of a simulated series."""
    return series.snapshots[index][1].stat().st_size // RECORD_SIZE


def _tree(directory):
    """Every file under directory with its bytes and mtime."""
    return {p.relative_to(directory): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


# -- 1. History takes the times the CLI takes ------------------------------------------

def _readme_history_example():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    examples = [b for b in blocks if "History(" in b]
    assert len(examples) == 1
    return examples[0]


def test_the_readme_history_example_runs_as_written(history_db):
    code = _readme_history_example()
    assert '"/var/db/pfhistory/history.db"' in code
    code = code.replace('"/var/db/pfhistory/history.db"', repr(str(history_db)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, TZ="UTC"), timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_history_reads_time_strings_as_the_cli_does(history_db, small_series):
    when = small_series.snapshots[2][0]                     # 22:02Z
    with History(str(history_db)) as h:
        by_text = list(map(str, h.states(since="2026-11-24T22:03Z",
                                         until="2026-11-24 23:02+01:00")))
        by_datetime = list(map(str, h.states(since=datetime(2026, 11, 24, 22, 3,
                                                            tzinfo=timezone.utc),
                                             until=when)))
        assert by_text and by_text == by_datetime
        local = datetime(2026, 11, 24, 22, 2)     # naive: local time, as the string
        assert (list(map(str, h.states(at="2026-11-24T22:02")))
                == list(map(str, h.states(at=local))))
        table = h.table_at("2026-11-24T22:02:30Z")
        assert table.count("creatorid: ") == _records_in(small_series, 2)
        assert table == h.table_at(when.timestamp() + 30)
        long_ones = list(h.states(at=when, min_duration="3d"))
        assert long_ones and [str(s) for s in long_ones] == [
            str(s) for s in h.states(at=when, min_duration=3 * 86400)]


@pytest.mark.parametrize("call, words", [
    (lambda h: list(h.states(since="2026-13-45T22:00")), "since '2026-13-45T22:00'"),
    (lambda h: list(h.states(until="tuesday")), "until 'tuesday'"),
    (lambda h: list(h.states(at=[2026])), "at [2026] is not a time"),
    (lambda h: list(h.states(min_duration="forever")), "min_duration 'forever'"),
    (lambda h: h.table_at("noon"), "'noon' is not an ISO 8601 time"),
])
def test_a_time_history_cannot_read_is_one_clear_error(history_db, call, words):
    with History(str(history_db)) as h:
        with pytest.raises(PFError) as caught:
            call(h)
    assert isinstance(caught.value, ValueError)     # a bad argument, as Python has it
    assert words in str(caught.value)


# -- 2. simulate --out never mixes two runs ----------------------------------------------

def test_simulate_refuses_a_directory_that_holds_files(tmp_path):
    out = tmp_path / "fw"
    first = run_cli("simulate", "--out", out, "--states", "20", "--duration", "3m", "--truth")
    assert first.returncode == 0, first.stderr
    before = _tree(out)
    again = run_cli("simulate", "--out", out, "--states", "30", "--duration", "1m",
                    "--seed", "2", "--start", "2026-11-24T22:01Z")
    message = _one_line(again)
    assert message.startswith(f"pfhistory: --out {out}: already holds ")
    assert "new or empty directory" in message
    assert again.stdout == ""
    assert _tree(out) == before
    # An empty directory (made ahead, as by mktemp -d) is taken.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("simulate", "--out", empty, "--states", "20",
                   "--duration", "1m").returncode == 0
    assert len(list(empty.iterdir())) == 2


def test_simulate_refuses_a_missed_snapshot_out_of_range(tmp_path):
    out = tmp_path / "fw"
    message = _one_line(run_cli("simulate", "--out", out, "--states", "20",
                                "--duration", "2m", "--missing", "1,99"))
    assert message == "pfhistory: --missing 99 is out of range: this run's snapshots are 0 to 2"
    assert not out.exists()
    pcap = tmp_path / "fw.pcap"
    message = _one_line(run_cli("simulate", "--pfsync", pcap, "--states", "20",
                                "--duration", "2m", "--missing", "1"))
    assert "--missing" in message
    assert not pcap.exists()


# -- 3. messages that say what was wrong ------------------------------------------------

@pytest.mark.parametrize("args", [
    ["collect", "--batch-packets", "0"],
    ["collect", "--batch-ms", "-5"],
    ["listen", "--batch-packets", "0"],
    ["report", "--top", "0"],
    ["summary", "--top", "0"],
])
def test_a_count_below_one_names_the_option_and_the_minimum(args):
    message = _one_line(run_cli(*args), code=2)
    assert f"argument {args[1]}: must be at least 1, not '{args[2]}'" in message


@pytest.mark.parametrize("period", [
    ["--since", "1h", "--until", "2h"],
    ["--since", "2026-11-24T22:02Z", "--until", "2026-11-24T23:01+01:00"],
])
def test_a_report_period_that_is_empty_is_refused_truthfully(history_db, period):
    message = _one_line(run_cli("report", "--db", history_db, *period))
    assert message == "pfhistory: --until is before --since: the period would be empty"


@pytest.mark.parametrize("period", [
    ["--since", "0m"],
    ["--since", "1h", "--until", "1h"],
    ["--since", "2026-11-24T22:02Z", "--until", "2026-11-24T23:02+01:00"],
])
def test_a_report_of_one_instant_is_the_table_then(history_db, period):
    """Both ends counted from one now: --since 0m is now, not a moment after it."""
    result = run_cli("report", "--db", history_db, *period)
    assert result.returncode == 0, result.stderr


def test_db_current_refuses_another_applications_database(tmp_path, history_db):
    theirs = foreign_database(tmp_path / "theirs.db")
    before = theirs.read_bytes()
    result = run_cli("db", "current", "--db", theirs)
    message = _one_line(result)
    assert message == (f"pfhistory: sqlite:///{theirs}: is not a pfhistory database "
                       f"(it has tables but no pfhistory schema version)")
    assert result.stdout == ""
    assert theirs.read_bytes() == before and not Path(f"{theirs}-wal").exists()
    # A history says its revision, as before.
    ours = run_cli("db", "current", "--db", history_db)
    assert ours.returncode == 0 and ours.stdout.strip().endswith(" (current)")


# -- 4. small ones -----------------------------------------------------------------------

@pytest.mark.parametrize("command", ["collect", "listen", "show", "report", "summary",
                                     "prune", "rollup", "db"])
def test_db_help_says_where_the_default_database_is_on_every_system(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for where in ("$PFHISTORY_DB", "/var/db/pfhistory/history.db on OpenBSD",
                  "/var/lib/pfhistory/history.db for root",
                  "~/.local/share/pfhistory/history.db for other users",
                  "$XDG_DATA_HOME"):
        assert where in text


@pytest.mark.parametrize("source", ["file", "pcap", "listen"])
@pytest.mark.parametrize("retention", ["0", "0s", "0.5"])
def test_a_sample_retention_of_nothing_is_refused(tmp_path, small_series, capture, source,
                                                  retention):
    db = tmp_path / "h.db"
    # listen: an interface that does not exist, as the retention is checked first
    # (on a real one listen would run until stopped).
    args = {"file": ["collect", "--from-file", small_series.snapshots[0][1]],
            "pcap": ["collect", "--from-pcap", capture],
            "listen": ["listen", "--iface", "pfh-none0"]}[source]
    message = _one_line(run_cli(*args, "--db", db, "--sample-retention", retention))
    assert message == (f"pfhistory: --sample-retention '{retention}' would keep no samples: "
                       f"give at least 1s (default 24h)")
    assert not db.exists()


@pytest.mark.parametrize("command", [["states"], ["collect", "--db", "DB", "--from-file"]])
def test_a_capture_given_as_a_state_file_points_to_from_pcap(tmp_path, capture, command):
    assert capture.stat().st_size % RECORD_SIZE     # else it would decode as records
    db = tmp_path / "h.db"
    args = [db if a == "DB" else a for a in command]
    message = _one_line(run_cli(*args, capture))
    assert message == (f"pfhistory: {capture}: is a pcap capture, not a pfctl -S state "
                       f"file; record a capture of pfsync traffic with "
                       f"pfhistory collect --from-pcap {capture}")
    assert not db.exists()
