"""Shared test data: simulated firewalls written once per test session."""

import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone

import pytest

START = datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc)

# The modules that take longest, longest first (from about 140 s down to 15 s each
# in `make test` on two cores).
# `make test` runs whole modules on parallel workers (pytest-xdist, --dist loadfile,
# which keeps a module's fixtures on one worker) in collection order: starting with
# the long ones lets the short ones fill in at the end, so the workers finish
# together. Any order is correct; this one is only faster.
LONGEST_FIRST = ("test_report.py", "test_postgres.py", "test_cli_mistakes.py",
                 "test_syncrecorder.py", "test_collect.py", "test_collect_robustness.py",
                 "test_forensics_doc.py", "test_prune.py", "test_history.py",
                 "test_migrations.py")


def pytest_collection_modifyitems(items):
    """Run the modules of LONGEST_FIRST first, in that order; the rest as collected."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def run_cli(*args, env=None, input=None, cwd=None):
    """Run `python -m pfhistory ARGS` as a user would; return CompletedProcess."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "pfhistory", *map(str, args)],
                          capture_output=True, text=True, env=full_env, input=input,
                          cwd=cwd, timeout=600)


def foreign_database(path, table="notes (body TEXT)"):
    """Another application's SQLite file: one table of its own, no pfhistory schema."""
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE {table}")
    con.commit()
    con.close()
    return path


def simulated(out, states, duration, seed, creatorid=0x1A2B3C4D, missing=(), truth=True):
    """A simulated firewall, one snapshot a minute from START, written to out."""
    from pfhistory.simulate import SimulationConfig, simulate

    cfg = SimulationConfig(states=states, interval=60.0, duration=duration, seed=seed,
                           start=START, creatorid=creatorid, missing=missing)
    return simulate(cfg, out, truth=truth)


@pytest.fixture(scope="session")
def small_series(tmp_path_factory):
    """A 2,000-state firewall, five snapshots a minute apart, with ground truth."""
    return simulated(tmp_path_factory.mktemp("small-series"), 2000, 240.0, seed=11)


@pytest.fixture(scope="session")
def small_history(small_series, tmp_path_factory):
    """small_series (22:00Z to 22:04Z, one a minute) recorded by the CLI into
    SQLite, for tests that only read it."""
    db = tmp_path_factory.mktemp("small-history") / "history.db"
    files = [path for _t, path in small_series.snapshots]
    result = run_cli("collect", "--db", db, "--from-file", *files)
    assert result.returncode == 0, result.stderr
    return db


@pytest.fixture(scope="session")
def big_snapshot(tmp_path_factory):
    """One snapshot of a 12,000-state firewall with ground truth."""
    return simulated(tmp_path_factory.mktemp("big-snapshot"), 12000, 0.0, seed=5,
                     creatorid=0x0BADCAFE)


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for the session (tests/pg_server.py): a throwaway one
    started here, or the one $PFHISTORY_TEST_PG_URL names; skipped if neither."""
    pytest.importorskip("psycopg", reason="psycopg is not installed "
                                          "(pip install -e '.[postgresql]')")
    import pg_server as pg

    try:
        server = pg.server_from_env() or pg.start_server()
    except pg.Unavailable as e:
        pytest.skip(f"no PostgreSQL server: {e}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    """The URL (plain postgresql://, as users write it) of a new, empty database."""
    return pg_server.create_database()
