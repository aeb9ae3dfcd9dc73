"""Samples are found by state through the primary key first, then a partial index.

ix_samples_state_pk holds only samples that span more than one collection, and
absences (migration 0010): a sample ending at c + 1 is found at (c + 1, state)
in the primary key. These tests check that claim on a real history, and that
no reader of samples scans the table.
"""

import os
import re
import sqlite3
from pathlib import Path

import pytest

from conftest import run_cli, simulated
from pfhistory import queries
from pfhistory._native import RECORD_SIZE

DOC = Path(__file__).resolve().parent.parent / "docs" / "forensics.md"


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Twelve minutes of a 1,500-state firewall; every 37th state is missing from
    two snapshots (absences: one of one collection, one of two)."""
    out = tmp_path_factory.mktemp("lookup")
    series = simulated(out / "snapshots", 1500, 720.0, seed=5, truth=False)
    for gone in ((4,), (7, 8)):
        for k in gone:
            path = series.snapshots[k][1]
            stat = path.stat()
            data = path.read_bytes()
            records = [data[i:i + RECORD_SIZE] for i in range(0, len(data), RECORD_SIZE)]
            path.write_bytes(b"".join(r for i, r in enumerate(records) if i % 37))
            os.utime(path, (stat.st_atime, stat.st_mtime))
    db = out / "h.db"
    result = run_cli("collect", "--db", db, "--from-file", *[p for _t, p in series.snapshots])
    assert result.returncode == 0, result.stderr
    return db


def test_the_lookup_finds_the_sample_holding_each_collection(history):
    con = sqlite3.connect(history)
    # The history has every kind: samples of one collection (the primary
    # key's), longer ones and absences of either length (the index's).
    kinds = con.execute(
        "SELECT sum(valid_until - valid_from = 1 AND present = 1), "
        "sum(valid_until - valid_from > 1 AND present = 1), "
        "sum(valid_until - valid_from = 1 AND present = 0), "
        "sum(valid_until - valid_from > 1 AND present = 0) FROM samples").fetchone()
    assert all(n and n >= 10 for n in kinds), kinds
    lookup = queries._sample_after("s", ":c")
    checked = 0
    for (c,) in con.execute("SELECT id FROM collections ORDER BY id").fetchall():
        # By definition: the first sample after c, over every sample of the state.
        want = con.execute(
            "SELECT s.pk, (SELECT min(w.valid_until) FROM samples w NOT INDEXED "
            "WHERE w.state_pk = s.pk AND w.valid_until > :c) FROM states s "
            "WHERE s.first_seen <= :c ORDER BY s.pk", {"c": c}).fetchall()
        got = con.execute(f"SELECT s.pk, {lookup} FROM states s WHERE s.first_seen <= :c "
                          f"ORDER BY s.pk", {"c": c}).fetchall()
        holder = {pk: u for pk, u in want if u is not None and con.execute(
            "SELECT valid_from <= ? FROM samples WHERE valid_until = ? AND state_pk = ?",
            (c, u, pk)).fetchone()[0]}
        # Where a sample holds c, the lookup finds it; where none does, it finds
        # none or one that began after c (which readers reject).
        for pk, u in got:
            if pk in holder:
                assert u == holder[pk], (c, pk)
            elif u is not None:
                assert con.execute("SELECT valid_from > ? FROM samples WHERE valid_until = ? "
                                   "AND state_pk = ?", (c, u, pk)).fetchone()[0] == 1
        checked += len(holder)
    con.close()
    assert checked > 5000


def _plan(con, sql, params):
    return [row[3] for row in con.execute("EXPLAIN QUERY PLAN " + sql, params)]


def test_no_reader_scans_the_samples(history):
    doc = DOC.read_text()
    forensic_q4 = re.search(r"### Q4\..*?```sql\n(.*?)```", doc, re.S).group(1)
    readers = {
        "history at a collection": (
            f"SELECT s.pk, x.packets0 FROM states s LEFT JOIN samples x "
            f"ON x.state_pk = s.pk AND x.valid_until = {queries._sample_after('s', ':c')} "
            f"AND x.valid_from <= :c WHERE s.pk = 7", {"c": 3}),
        "hourly rollup": (queries._ROLLUP_HOUR_SQL.format(where="s.pk = 7"),
                          {"last": 5, "before": 2, "first_id": 1}),
        "forensics Q4": (forensic_q4, {"at": "2026-11-24 22:05:00"}),
    }
    con = sqlite3.connect(history)
    for name, (sql, params) in readers.items():
        plan = _plan(con, sql, params)
        assert not [p for p in plan if re.match(r"SCAN (samples|w|x|e|f|n)\b", p)], (name, plan)
        assert any("ix_samples_state_pk" in p or "PRIMARY KEY (valid_until=?" in p
                   for p in plan), (name, plan)
    con.close()
