"""alembic owns the schema: head equals the models, every revision goes both ways."""

import sqlite3

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from conftest import foreign_database, run_cli
from pfhistory import db
from pfhistory.models import Base


def _engine(path, create=True):
    url = db.resolve_url(str(path))
    return url, db.open_engine(url, create=create)


def test_upgrade_from_empty_gives_exactly_the_models(tmp_path):
    url, engine = _engine(tmp_path / "h.db")
    db.upgrade(engine, url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []
    assert db.schema_status(engine, url)[0] == "current"


def walk_every_revision(engine, url, unchanged):
    """Walk down to each revision's parent and back up to head, asserting unchanged()
    after each; then down to nothing and up again."""
    cfg = db.alembic_config(url)
    revisions = [r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions()]
    for rev in revisions[:-1]:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, f"{rev}-1")
        db.upgrade(engine, url)
        assert unchanged(), f"down below {rev} and up again"
    # The base revision: down to nothing and up again.
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert db.schema_status(engine, url)[0] in ("empty", "foreign")
    db.upgrade(engine, url)
    assert db.schema_status(engine, url)[0] == "current"


def test_every_revision_downgrades_and_upgrades_keeping_data(tmp_path, small_series):
    path = tmp_path / "h.db"
    files = [p for _t, p in small_series.snapshots[:2]]
    assert run_cli("collect", "--db", path, "--from-file", *files).returncode == 0
    url, engine = _engine(path, create=False)
    before = _table_counts(path)
    walk_every_revision(engine, url, lambda: _table_counts(path) == before)


def _table_counts(path):
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("collections", "states", "state_keys", "state_peers", "samples",
                          "addresses")}
    finally:
        con.close()


def test_db_commands(tmp_path):
    path = tmp_path / "h.db"
    result = run_cli("db", "upgrade", "--db", path)
    assert result.returncode == 0, result.stderr
    current = run_cli("db", "current", "--db", path)
    assert current.returncode == 0 and "(current)" in current.stdout
    history = run_cli("db", "history")
    assert history.returncode == 0 and "(head)" in history.stdout


def test_newer_schema_is_refused(tmp_path, small_series):
    path = tmp_path / "h.db"
    assert run_cli("db", "upgrade", "--db", path).returncode == 0
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = 'ffff_from_the_future'")
    con.commit()
    con.close()
    result = run_cli("collect", "--db", path, "--from-file", small_series.snapshots[0][1])
    assert result.returncode == 1
    assert "newer than this pfhistory knows" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_older_schema_is_refused_with_the_command(tmp_path, small_series):
    path = tmp_path / "h.db"
    url, engine = _engine(path)
    db.upgrade(engine, url, "0008")
    engine.dispose()
    result = run_cli("collect", "--db", path, "--from-file", small_series.snapshots[0][1])
    assert result.returncode == 1
    assert result.stderr.strip() == (f"pfhistory: sqlite:///{path}: its schema (0008) is older "
                                     f"than this pfhistory's; run: pfhistory db upgrade "
                                     f"--db sqlite:///{path}")
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM collections").fetchone() == (0,)
    con.close()


def test_the_head_known_without_alembic_is_alembics(tmp_path):
    # require_current_schema takes a database at SCHEMA_HEAD as current without
    # loading the migrations: a new migration must move it.
    url, _ = _engine(tmp_path / "h.db")
    assert ScriptDirectory.from_config(db.alembic_config(url)).get_heads() == [db.SCHEMA_HEAD]


def test_a_database_that_is_not_pfhistorys(tmp_path, small_series):
    path = foreign_database(tmp_path / "other.db", "customers (id INTEGER)")
    result = run_cli("collect", "--db", path, "--from-file", small_series.snapshots[0][1])
    assert result.returncode == 1 and "is not a pfhistory database" in result.stderr
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    result = run_cli("collect", "--db", junk, "--from-file", small_series.snapshots[0][1])
    assert result.returncode == 1 and "not a pfhistory database" in result.stderr
    assert "Traceback" not in result.stderr
    # Too short for SQLite's header: SQLite would write a database over it.
    short = tmp_path / "short.db"
    short.write_bytes(b"x")
    result = run_cli("collect", "--db", short, "--from-file", small_series.snapshots[0][1])
    assert result.returncode == 1
    assert result.stderr == f"pfhistory: {short}: is not a SQLite database (1 byte, too short " \
                            f"to be one)\n"
    assert short.read_bytes() == b"x"
    # A version table with two revisions is no schema of ours either.
    two = tmp_path / "two.db"
    con = sqlite3.connect(two)
    con.execute("CREATE TABLE alembic_version (version_num TEXT)")
    con.execute("INSERT INTO alembic_version VALUES ('0010'), ('0009')")
    con.commit()
    con.close()
    for args in (("collect", "--from-file", small_series.snapshots[0][1]), ("db", "upgrade")):
        result = run_cli(*args, "--db", two)
        assert result.returncode == 1, args
        assert "is not a pfhistory database" in result.stderr and "Traceback" not in result.stderr


def test_db_upgrade_refuses_a_foreign_database(tmp_path):
    other = foreign_database(tmp_path / "other.db", "customers (id INTEGER)")
    result = run_cli("db", "upgrade", "--db", other)
    assert result.returncode == 1 and "is not a pfhistory database" in result.stderr
    con = sqlite3.connect(other)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["customers"]
    con.close()


@pytest.mark.parametrize("second_rolled, finished", [(1, 2), (0, 1)])
def test_0006_keeps_the_hours_old_rollups_finished(tmp_path, second_rolled, finished):
    """Rollups per collection (0005) become hourly ones: the hours the old rollups
    finished (each snapshot in, a collection after the hour) stay and are listed; any
    later hour is left to the hourly pass, its rows gone, its collections waiting."""
    path = tmp_path / "h.db"
    url, engine = _engine(path)
    db.upgrade(engine, url, "0005")
    hour = 1795554000
    # (id, collected_at, kind, rolled_up): the baseline closing the hour before, two
    # snapshots and a pfsync batch (never rolled up before) in the hour, one after it.
    collections = [(1, hour, 0, 1), (2, hour + 60, 0, second_rolled), (3, hour + 90, 1, 0),
                   (4, hour + 120, 0, 1), (5, hour + 3660, 0, 1)]
    con = sqlite3.connect(path)
    con.executemany("INSERT INTO collections (id, collected_at, kind, rolled_up, source, host, "
                    "states, inserted, updated, reopened, closed, packets, bytes, samples, "
                    "duration_ms) VALUES (?, ?, ?, ?, 'test', 'test', 0, 0, 0, 0, 0, 0, 0, 0, 0)",
                    collections)
    con.executemany("INSERT INTO rollups VALUES (?, 3, 443, 6, '', 1, 0, 1, 1, 10, 10)",
                    [(hour - 3600,), (hour,), (hour + 3600,)])
    con.commit()
    con.close()
    db.upgrade(engine, url)
    con = sqlite3.connect(path)
    hours = [(hour - 3600, 1, 1, 1), (hour, 2, 4, 1)][:finished]
    assert con.execute("SELECT hour, first_collection, last_collection, rolled_up "
                       "FROM rollup_hours ORDER BY hour").fetchall() == hours
    assert [h for h, in con.execute("SELECT hour FROM rollups ORDER BY hour")] == \
        [h for h, *_ in hours]
    waiting = hours[-1][2] + 1
    assert con.execute("SELECT id FROM collections WHERE rolled_up = 0").fetchall() == \
        [(i,) for i in range(waiting, 6)]
    assert con.execute("SELECT kind FROM collection_log ORDER BY id").fetchall() == \
        [("snapshot",), ("snapshot",), ("pfsync",), ("snapshot",), ("snapshot",)]
    con.close()


def _peers_in_force(con, cid, peers_apart):
    """{(creatorid, state_id): (src seqlo, src state, dst seqlo, dst state)} of the
    states alive in collection cid, read as the schema of the time keeps them: in the
    sample holding cid (0006), or in the first peer sample after cid (0007 on); else
    in state_peers."""
    if peers_apart:
        held = ("LEFT JOIN peer_samples y ON y.state_pk = s.pk AND y.valid_until = "
                "(SELECT min(valid_until) FROM peer_samples WHERE state_pk = s.pk "
                "AND valid_until > :c)")
    else:
        held = "LEFT JOIN samples y ON y.state_pk = x.state_pk AND y.valid_until = x.valid_until"
    rows = con.execute(
        "SELECT s.creatorid, s.state_id, x.present, COALESCE(y.src_seqlo, ps.seqlo), "
        "COALESCE(y.src_state, ps.state), COALESCE(y.dst_seqlo, pd.seqlo), "
        "COALESCE(y.dst_state, pd.state) FROM states s "
        "LEFT JOIN samples x ON x.state_pk = s.pk AND x.valid_until = "
        "(SELECT min(valid_until) FROM samples WHERE state_pk = s.pk AND valid_until > :c) "
        f"{held} "
        "JOIN state_peers ps ON ps.state_pk = s.pk AND ps.side = 0 "
        "JOIN state_peers pd ON pd.state_pk = s.pk AND pd.side = 1 "
        "WHERE s.first_seen <= :c AND (s.ended_before IS NULL OR s.ended_before > :c)",
        {"c": cid}).fetchall()
    return {(r[0], r[1]): r[3:] for r in rows if r[2] != 0}


def test_0007_moves_peers_out_of_samples_and_back(tmp_path, small_series):
    """Recorded at 0006, every sample held both peers. Up to 0007 they become peer
    samples, down again they come back, and in every state of the schema the peers
    of each collection are the snapshot's."""
    from pfhistory import pf

    path = tmp_path / "h.db"
    url, engine = _engine(path)
    truth = []
    for when, snap in small_series.snapshots:
        truth.append({(s.creatorid, s.id - (1 << 64) if s.id >= 1 << 63 else s.id):
                      (s.src.seqlo, s.src.state, s.dst.seqlo, s.dst.state)
                      if s.direction == pf.PF_OUT else
                      (s.dst.seqlo, s.dst.state, s.src.seqlo, s.src.state)
                      for s in pf.parse_states(snap.read_bytes())})
    files = [p for _t, p in small_series.snapshots]
    assert run_cli("collect", "--db", path, "--from-file", *files).returncode == 0

    def check(peers_apart):
        con = sqlite3.connect(path)
        try:
            for cid, want in enumerate(truth, start=1):
                assert _peers_in_force(con, cid, peers_apart) == want, (peers_apart, cid)
            return con.execute("SELECT count(*) FROM samples").fetchone()[0]
        finally:
            con.close()

    samples = check(True)
    cfg = db.alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    assert check(False) == samples
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM samples WHERE src_seqlo IS NULL").fetchone() == (0,)
    con.close()
    db.upgrade(engine, url)
    assert check(True) == samples
    con = sqlite3.connect(path)
    sql = con.execute("SELECT sql FROM sqlite_master WHERE name = 'samples'").fetchone()[0]
    con.close()
    assert "WITHOUT ROWID" in sql.upper()
