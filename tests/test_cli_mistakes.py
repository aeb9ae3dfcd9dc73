"""A user's mistakes and a hostile environment, through the real CLI: one line on
stderr, a non-zero exit (0 when the reader of our output went away), and
nothing touched that is not pfhistory's."""

import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from conftest import foreign_database, run_cli

FIRST, SECOND = 0, 1


@pytest.fixture(scope="module")
def series(small_series):
    return [path for _t, path in small_series.snapshots]


@pytest.fixture(scope="module")
def history(series, tmp_path_factory):
    """The small series recorded once (read by the read-side tests only)."""
    db = tmp_path_factory.mktemp("mistakes") / "h.db"
    assert run_cli("collect", "--db", db, "--from-file", *series).returncode == 0
    return db


def _one_line(result, code=1):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


def _foreign(path):
    """Another application's SQLite file, readable by all, in rollback mode."""
    foreign_database(path)
    con = sqlite3.connect(path)
    con.execute("INSERT INTO notes VALUES ('mine')")
    con.commit()
    con.close()
    os.chmod(path, 0o644)


def _as_it_was(path):
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert con.execute("SELECT body FROM notes").fetchall() == [("mine",)]
    con.close()
    assert not os.path.exists(f"{path}-wal")


# -- where the history lives -------------------------------------------------------

@pytest.mark.parametrize("command", [["collect", "--from-file", "SNAP"], ["db", "upgrade"],
                                     ["rollup"], ["prune", "--before", "1d"],
                                     ["summary"], ["show"]])
def test_another_applications_sqlite_file_is_refused_and_left_as_it_was(tmp_path, series,
                                                                       command):
    db = tmp_path / "theirs.db"
    _foreign(db)
    args = [series[FIRST] if a == "SNAP" else a for a in command]
    message = _one_line(run_cli(*args, "--db", db))
    assert "is not a pfhistory database" in message
    _as_it_was(db)


def test_db_current_names_a_foreign_file_without_changing_it(tmp_path):
    db = tmp_path / "theirs.db"
    _foreign(db)
    result = run_cli("db", "current", "--db", db)
    assert result.returncode == 1 and result.stdout == ""
    assert "is not a pfhistory database" in result.stderr and "Traceback" not in result.stderr
    _as_it_was(db)


@pytest.mark.parametrize("revision", ["abc123", "0003", "0010"])
def test_another_applications_alembic_history_is_not_taken_for_ours(tmp_path, series,
                                                                     revision):
    """Not "newer", not "old" (to upgrade), not current (to record into), whatever
    its revision is called: pfhistory's tables are not there."""
    db = tmp_path / "theirs.db"
    _foreign(db)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
    con.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    con.commit()
    con.close()
    for args in (["db", "upgrade"], ["collect", "--from-file", series[FIRST]]):
        message = _one_line(run_cli(*args, "--db", db))
        assert "is not a pfhistory database" in message and "newer" not in message
        _as_it_was(db)


def test_a_fifo_as_the_database_is_refused_and_nothing_is_made_beside_it(tmp_path, series):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo, 0o644)
    message = _one_line(run_cli("collect", "--db", fifo, "--from-file", series[FIRST]))
    assert "is not a regular file" in message
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_IMODE(os.stat(fifo).st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["pipe"]


@pytest.mark.parametrize("db, said", [("", "--db is empty"),
                                      ("sqlite://", "in-memory database"),
                                      ("sqlite:///:memory:", "in-memory database"),
                                      ("postgresql://u:secret@h:notaport/x", "not a database URL"),
                                      # URLs mistyped: never a SQLite file of that name
                                      ("postgresql:/fleet", "looks like a database URL"),
                                      ("postgres:fleet", "looks like a database URL"),
                                      ("postgresql//u:secret@h/fleet", "looks like a database URL"),
                                      ("postgresql+psycopg;//h/fleet", "looks like a database URL"),
                                      ("sqlite:h.db", "looks like a database URL")])
def test_a_database_that_would_keep_nothing_or_is_no_url_is_refused(tmp_path, series, db, said):
    message = _one_line(run_cli("collect", "--db", db, "--from-file", series[FIRST],
                                cwd=tmp_path, env={"PFHISTORY_DB": str(tmp_path / "env.db")}))
    assert said in message and "secret" not in message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("relative", ["sqlite/h.db", "Postgres/fw1.db", "postgresql.db"])
def test_a_relative_path_named_like_a_backend_is_a_file(tmp_path, series, relative):
    """Only a backend's name followed by ':', ';' or '//' looks like a URL mistyped:
    a directory called sqlite or postgres holds SQLite files like any other."""
    result = run_cli("collect", "--db", relative, "--from-file", series[FIRST], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / relative).stat().st_size > 0


def _with_a_foreign_record_at_the_end(good, path):
    """good's records, then one that no kernel exports (af 165): found only by
    reading the whole file."""
    path.write_bytes(good.read_bytes() + b"\xa5" * 264)
    return path


def test_a_bad_state_file_makes_no_database_and_no_directory(tmp_path, series):
    bad = _with_a_foreign_record_at_the_end(series[FIRST], tmp_path / "bad.pfstate")
    db = tmp_path / "new" / "h.db"
    message = _one_line(run_cli("collect", "--db", db, "--from-file", bad))
    assert "not a pfctl -S state file" in message and "bad.pfstate" in message
    assert not (tmp_path / "new").exists()


def test_of_several_state_files_none_is_recorded_when_one_is_bad(tmp_path, series, history):
    db = tmp_path / "h.db"
    db.write_bytes(history.read_bytes())
    before = _counts(db)
    newer = tmp_path / "newer.pfstate"
    newer.write_bytes(series[SECOND].read_bytes())
    last = os.stat(series[-1]).st_mtime
    os.utime(newer, (last + 60, last + 60))
    bad = _with_a_foreign_record_at_the_end(series[FIRST], tmp_path / "bad.pfstate")
    os.utime(bad, (last + 120, last + 120))
    message = _one_line(run_cli("collect", "--db", db, "--from-file", newer, bad))
    assert "bad.pfstate" in message
    assert _counts(db) == before


def _counts(db):
    con = sqlite3.connect(db)
    try:
        return [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("collections", "states", "samples")]
    finally:
        con.close()


def test_a_sqlite_file_without_tables_is_a_new_history(tmp_path):
    """A header and no tables (an empty WAL-mode file) is made into a history only
    by good input, as a missing or 0-byte file is."""
    db = tmp_path / "empty.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode = WAL")
    con.close()
    twice = tmp_path / "twice.pfstate"
    one = _first_record(tmp_path)
    twice.write_bytes(one * 2)
    assert "two records of one state" in _one_line(
        run_cli("collect", "--db", db, "--from-file", twice))
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    con.close()


def _first_record(tmp_path):
    out = run_cli("simulate", "--out", tmp_path / "sim", "--states", 5, "--duration", "0s")
    assert out.returncode == 0, out.stderr
    snap, = (tmp_path / "sim").glob("*.pfstate")
    return snap.read_bytes()[:264]


@pytest.mark.parametrize("command", [["db", "current"], ["prune", "--before", "1d"],
                                     ["rollup"], ["summary"], ["show"], ["report"]])
def test_an_empty_file_stays_empty_under_every_command_but_collect(tmp_path, command):
    """Only a collector (or db upgrade) makes a database of an empty file."""
    db = tmp_path / "empty.db"
    db.write_bytes(b"")
    result = run_cli(*command, "--db", db)
    assert "Traceback" not in result.stderr
    assert db.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


# -- when a snapshot was taken -------------------------------------------------------

def test_a_snapshot_dated_in_the_future_is_refused_and_the_history_goes_on(tmp_path, series):
    db = tmp_path / "h.db"
    assert run_cli("collect", "--db", db, "--from-file", *series[:2]).returncode == 0
    con = sqlite3.connect(db)
    before = con.execute("SELECT (SELECT count(*) FROM collections), "
                         "(SELECT count(*) FROM samples)").fetchone()
    message = _one_line(run_cli("collect", "--db", db, "--from-file", series[2],
                                "--at", "9999-01-01T00:00Z"))
    assert "later than this machine's clock" in message
    late = tmp_path / "late.pfstate"
    late.write_bytes(open(series[2], "rb").read())
    os.utime(late, (4_000_000_000, 4_000_000_000))   # 2096
    message = _one_line(run_cli("collect", "--db", db, "--from-file", late))
    assert "(its mtime)" in message
    assert con.execute("SELECT (SELECT count(*) FROM collections), "
                       "(SELECT count(*) FROM samples)").fetchone() == before
    assert run_cli("collect", "--db", db, "--from-file", *series[2:]).returncode == 0
    assert con.execute("SELECT count(*) FROM collections").fetchone()[0] == len(series)


def test_state_files_given_newest_first_are_refused_before_any_is_recorded(tmp_path, series):
    db = tmp_path / "h.db"
    message = _one_line(run_cli("collect", "--db", db, "--from-file", series[SECOND],
                                series[FIRST]))
    assert "oldest first" in message and os.path.basename(series[FIRST]) in message
    assert not db.exists()
    assert run_cli("collect", "--db", db, "--from-file", *series).returncode == 0


def test_state_files_of_one_second_must_hold_one_table(tmp_path, series):
    """Copies made without cp -p all carry the copy's time: refused before
    anything is made, not after the first one is recorded."""
    copies = []
    for k in (FIRST, SECOND):
        copy = tmp_path / f"copy{k}.pfstate"
        copy.write_bytes(series[k].read_bytes())
        os.utime(copy, (1_795_000_000, 1_795_000_000))
        copies.append(copy)
    db = tmp_path / "h.db"
    message = _one_line(run_cli("collect", "--db", db, "--from-file", *copies))
    assert "copy1.pfstate" in message and "the same second as" in message
    assert "cp -p" in message and not db.exists()
    # The same table twice at one second is no change: recorded.
    assert run_cli("collect", "--db", db, "--from-file", copies[0], copies[0]).returncode == 0
    assert _counts(db)[0] == 2


def test_a_different_table_at_the_newest_collections_time_is_refused(tmp_path, series):
    """Its states would end and begin at one instant; the same table again is
    no change (recording a snapshot twice changes only the log)."""
    db = tmp_path / "h.db"
    at = "2026-11-24T22:00:00Z"
    assert run_cli("collect", "--db", db, "--from-file", series[FIRST], "--at", at).returncode == 0
    before = _counts(db)
    message = _one_line(run_cli("collect", "--db", db, "--from-file", series[SECOND],
                                "--at", at))
    assert "the time of the newest collection" in message and "refused" in message
    assert _counts(db) == before
    assert run_cli("collect", "--db", db, "--from-file", series[FIRST], "--at", at).returncode == 0
    assert _counts(db) == [before[0] + 1, *before[1:]]


@pytest.mark.parametrize("args, said", [
    (["--at", ""], "not an ISO 8601 time"),
    (["--at", "0001-01-01T00:00"], "out of range"),
    (["--at", "99999999999d"], "too long"),
    (["--sample-retention", "99999999999999999999d"], "too long"),
    (["--local-networks", ""], "names no network"),
])
def test_times_and_options_out_of_range_get_one_line(tmp_path, series, args, said):
    db = tmp_path / "h.db"
    message = _one_line(run_cli("collect", "--db", db, "--from-file", series[FIRST], *args))
    assert said in message
    assert not db.exists()


@pytest.mark.parametrize("wait", ["nan", "inf", "-1", "1e308"])
def test_wait_must_be_a_number_of_seconds_sqlite_can_wait(tmp_path, series, wait):
    result = run_cli("collect", "--db", tmp_path / "h.db", "--from-file", series[FIRST],
                     "--wait", wait)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--wait" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("args, said", [
    (["show", "--at", "0001-01-01"], "out of range"),
    (["show", "--until", "0001-01-01T00:00+14:00"], "out of range"),
    (["show", "--min-duration", "99999999999999999999d"], "too long"),
    (["report", "--since", "99999999d"], "too long"),
])
def test_read_side_times_out_of_range_get_one_line(history, args, said):
    assert said in _one_line(run_cli(*args, "--db", history))


@pytest.mark.parametrize("option", [["show", "--limit"], ["show", "--min-bytes"],
                                    ["summary", "--top"], ["report", "--top"]])
def test_counts_beyond_the_databases_integers_are_refused(history, option):
    result = run_cli(*option, str(2**63), "--db", history)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "too large" in result.stderr.splitlines()[-1]


# -- where the output goes -----------------------------------------------------------

def _closed_early(args):
    """Run the CLI with a reader that takes one line and goes away (| head -1)."""
    proc = subprocess.Popen([sys.executable, "-m", "pfhistory", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    return proc.wait(timeout=600), stderr


@pytest.mark.parametrize("command", [["show", "-vv"], ["show", "--format", "json"],
                                     ["summary"]])
def test_a_reader_that_goes_away_is_no_error(history, command):
    code, stderr = _closed_early([*command, "--db", history])
    assert code == 0 and stderr == ""


def test_a_capture_onto_a_pipe_stops_when_its_reader_goes_away(tmp_path):
    """simulate --pfsync /dev/stdout | head -c 100: exit 0 at once, not after
    simulating a day of a 20,000-state firewall (minutes) for nobody."""
    proc = subprocess.Popen([sys.executable, "-m", "pfhistory", "simulate", "--pfsync",
                             "/dev/stdout", "--states", "20000", "--duration", "24h"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("simulate went on writing a capture nobody reads")
    assert code == 0 and proc.stderr.read() == b""
    proc.stderr.close()
    assert list(tmp_path.iterdir()) == []


def test_a_small_capture_onto_a_pipe_whose_reader_goes_away_is_no_error(tmp_path):
    """Under a MiB the whole capture is written as simulate ends: the reader gone
    by then (| head -c 10) is no error either."""
    proc = subprocess.Popen([sys.executable, "-m", "pfhistory", "simulate", "--pfsync",
                             "/dev/stdout", "--states", "300", "--duration", "5m"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_a_capture_to_standard_output_is_only_the_capture(tmp_path):
    """simulate --pfsync /dev/stdout > file: the count goes to stderr, so the file
    is a capture collect reads without a malformed packet."""
    pcap = tmp_path / "out.pcap"
    with open(pcap, "wb") as out:
        result = subprocess.run([sys.executable, "-m", "pfhistory", "simulate", "--pfsync",
                                 "/dev/stdout", "--states", "100", "--duration", "2m"],
                                stdout=out, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 0 and result.stderr.endswith(" pfsync packets\n")
    said = run_cli("collect", "-v", "--db", tmp_path / "h.db", "--from-pcap", pcap)
    assert said.returncode == 0, said.stderr
    assert "(0 malformed)" in said.stdout


def test_collect_goes_on_recording_when_its_reader_goes_away(tmp_path, series):
    db = tmp_path / "h.db"
    code, stderr = _closed_early(["collect", "-v", "--db", db, "--from-file", *series])
    assert code == 0 and stderr == ""
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM collections").fetchone()[0] == len(series)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("command", [["show", "--format", "json"], ["summary"],
                                     ["report", "--since", "2026-11-24T21:00Z"]])
def test_a_full_disk_under_standard_output_is_one_line(history, command):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "pfhistory", *command, "--db",
                                 str(history)], stdout=full, stderr=subprocess.PIPE, text=True)
    assert _one_line(result) == "pfhistory: cannot write to standard output: No space left on device"


def test_report_writes_into_a_fifo_and_appends_to_standard_output(history, tmp_path):
    fifo, log = tmp_path / "fifo", tmp_path / "log"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    result = run_cli("report", "--since", "2026-11-24T21:00Z", "--db", history, "-o", fifo)
    got = reader.communicate(timeout=60)[0].decode()
    assert result.returncode == 0 and got.startswith("pfhistory report:")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # report -o /dev/stdout >> log: the shell's descriptor, so earlier lines stay.
    log.write_text("earlier\n")
    with open(log, "a") as out:
        subprocess.run([sys.executable, "-m", "pfhistory", "report", "--since",
                        "2026-11-24T21:00Z", "--db", str(history), "-o", "/dev/stdout"],
                       stdout=out, stderr=subprocess.PIPE, check=True)
    assert log.read_text().startswith("earlier\npfhistory report:")
    assert sorted(os.listdir(tmp_path)) == ["fifo", "log"]


def test_report_refuses_a_symlink_and_writes_nothing_where_it_points(history, tmp_path):
    link, target = tmp_path / "link", tmp_path / "target"
    link.symlink_to(target)      # planted in a shared directory, say
    message = _one_line(run_cli("report", "--since", "2026-11-24T21:00Z", "--db", history,
                                "-o", link))
    assert message.endswith("is a symbolic link: give the file it points to")
    assert os.path.islink(link) and not target.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_report_onto_a_device_that_is_full_says_so_and_keeps_the_device(history, tmp_path):
    full = tmp_path / "full"
    os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))   # what /dev/full is
    message = _one_line(run_cli("report", "--since", "2026-11-24T21:00Z", "--db", history,
                                "-o", full))
    assert message.endswith("No space left on device")
    assert stat.S_ISCHR(os.stat(full).st_mode)
    assert os.listdir(tmp_path) == ["full"]


@pytest.mark.parametrize("output, said", [("", "--output is empty"), (".", "is a directory")])
def test_report_output_that_is_no_file_name(history, tmp_path, output, said):
    message = _one_line(run_cli("report", "--db", history, "-o", output, cwd=tmp_path))
    assert said in message


def test_every_example_of_show_help_runs(history):
    from pfhistory.cli import build_parser

    show = build_parser()._subparsers._group_actions[0].choices["show"]
    examples = [line.split("#")[0].split()[1:] for line in show.epilog.splitlines()
                if line.strip().startswith("pfhistory show")]
    assert len(examples) >= 3
    for example in examples:
        result = run_cli(*example, "--db", history)
        assert result.returncode == 0, (example, result.stderr)


def _pcap(tmp_path, name, *args):
    path = tmp_path / name
    result = run_cli("simulate", "--pfsync", path, "--states", "20", *args)
    assert result.returncode == 0, result.stderr
    return path


def test_collect_from_pcap_leaves_the_hours_to_rollup_with_no_rollups(tmp_path):
    pcap = _pcap(tmp_path, "p.pcap", "--duration", "70m")
    db = tmp_path / "h.db"
    assert run_cli("collect", "--db", db, "--from-pcap", pcap, "--no-rollups").returncode == 0
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM rollup_hours").fetchone()[0] == 0
    assert run_cli("rollup", "--db", db).returncode == 0
    assert con.execute("SELECT count(*) FROM rollup_hours").fetchone()[0] >= 1


def test_a_capture_dated_in_the_future_is_refused(tmp_path):
    pcap = _pcap(tmp_path, "late.pcap", "--duration", "2m", "--start", "2090-01-01T00:00Z")
    db = tmp_path / "h.db"
    message = _one_line(run_cli("collect", "--db", db, "--from-pcap", pcap))
    assert "later than this machine's clock" in message
    assert not db.exists()


@pytest.mark.parametrize("args, said", [(["bogus"], "invalid choice: 'bogus'"),
                                        (["show", "--limit", "-3"], "is negative"),
                                        (["collect", "--wait", "nan"], "--wait")])
def test_a_usage_error_is_one_line_that_points_to_the_help(args, said):
    message = _one_line(run_cli(*args), code=2)
    assert said in message and message.endswith("--help)")


@pytest.mark.parametrize("args", [["--db=h.db", "summary"], ["-v", "collect"]])
def test_an_option_before_the_command_is_said_to_go_after_it(args):
    message = _one_line(run_cli(*args), code=2)
    assert message.startswith(f"pfhistory: {args[0]} given before the command: ")
    assert f"(pfhistory {args[1]} {args[0]} ...)" in message


@pytest.mark.parametrize("args", [["collect", "--bogus"], ["show", "extra", "words"],
                                  ["db", "current", "--bogus"]])
def test_an_unknown_argument_points_to_the_help_of_the_command_given(args):
    """Whose help lists what the command takes: not the top level's."""
    message = _one_line(run_cli(*args), code=2)
    assert message.startswith(f"pfhistory {args[0]}: unrecognized arguments: ")
    assert message.endswith(f"(see pfhistory {args[0]} --help)")


def test_two_collectors_starting_on_a_new_database_both_record(tmp_path, series):
    """The second waits for the first one's schema (and collection), as on an
    existing database, instead of failing at once with 'database is locked'."""
    few = tmp_path / "few.pfstate"       # ten states: the schema is most of the work
    few.write_bytes(open(series[FIRST], "rb").read(264 * 10))
    os.utime(few, (os.stat(series[FIRST]).st_mtime,) * 2)
    for attempt in range(6):
        db = tmp_path / f"new{attempt}.db"
        procs = [subprocess.Popen([sys.executable, "-m", "pfhistory", "collect", "--db",
                                   str(db), "--from-file", str(few)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        for p in procs:
            p.stdout.close()
            p.stderr.close()
        assert outcomes == [(0, ""), (0, "")], outcomes
        con = sqlite3.connect(db)
        assert con.execute("SELECT count(*) FROM collections").fetchone()[0] == 2
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        con.close()
