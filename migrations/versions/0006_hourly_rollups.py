"""Rollups once per complete hour: rollup_hours, an index of ends by collection, and the
collection_log view with each collection's kind.

Rollups made before this revision counted each snapshot as it came, and no pfsync
batch. The hours they finished (every snapshot rolled up, and a later collection past
the hour's end) are kept as they are, their snapshots only, and listed in rollup_hours;
the rows of any later hour are deleted and its collections marked not rolled up, so the
hourly pass counts them whole (pfsync batches included) at the next collection.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _time(dialect, expr):
    """An epoch-seconds column as readable UTC time (as 0002 writes it)."""
    if dialect == "postgresql":
        return f"(to_timestamp({expr}) AT TIME ZONE 'UTC')"
    return f"datetime({expr}, 'unixepoch')"


def _hex(dialect, expr, width):
    if dialect == "postgresql":
        return f"lpad(to_hex({expr}), {width}, '0')"
    return f"printf('%0{width}x', {expr})"


def _collection_log(dialect, with_kind):
    kind = ("CASE kind WHEN 0 THEN 'snapshot' WHEN 1 THEN 'pfsync' "
            "ELSE CAST(kind AS TEXT) END AS kind, " if with_kind else "")
    return (f"CREATE VIEW collection_log AS "
            f"SELECT id, {kind}{_time(dialect, 'collected_at')} AS collected, "
            f"collected_at AS collected_epoch, source, host, "
            f"{_hex(dialect, 'creatorid', 8)} AS creatorid, states, inserted, updated, "
            f"reopened, closed, packets, bytes, samples, duration_ms "
            f"FROM collections")


def _hour_of(at):
    """As pfhistory.rollup.hour_of: the hour (h, h + 3600] a time closes."""
    return (at - 1) - (at - 1) % 3600


def _finished_hours(conn):
    """The hours the per-collection rollups finished, oldest first: (hour, first id,
    last id, rolled_up), and the id from which collections are left to the hourly pass.
    Collections are taken in id order, each in the latest hour seen so far (as
    pfhistory.rollup does)."""
    rows = conn.exec_driver_sql(
        "SELECT id, collected_at, kind, rolled_up FROM collections ORDER BY id").fetchall()
    groups = []
    hour = None
    for cid, at, kind, rolled in rows:
        h = _hour_of(at) if hour is None else max(hour, _hour_of(at))
        if h != hour:
            groups.append([h, cid, cid, True, 1])
            hour = h
        g = groups[-1]
        g[2] = cid
        if kind == 0:
            g[3] = g[3] and rolled != 0
            g[4] = max(g[4], rolled)
    finished = []
    # The newest group has no collection after it: never finished.
    for h, first, last, done, rolled in groups[:-1]:
        if not done:
            break
        finished.append((h, first, last, rolled))
    rest = finished[-1][2] + 1 if finished else 1
    return finished, rest


def upgrade():
    op.create_table(
        "rollup_hours",
        sa.Column("hour", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("first_collection", sa.Integer(), nullable=False),
        sa.Column("last_collection", sa.Integer(), nullable=False),
        sa.Column("rolled_up", sa.SmallInteger(), nullable=False),
        sa.Column("states", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("hour", name=op.f("pk_rollup_hours")),
    )
    op.create_index("ix_states_ended_before", "states", ["ended_before"],
                    sqlite_where=sa.text("ended_before IS NOT NULL"),
                    postgresql_where=sa.text("ended_before IS NOT NULL"))
    conn = op.get_bind()
    finished, rest = _finished_hours(conn)
    ph = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    for h, first, last, rolled in finished:
        conn.exec_driver_sql(
            f"INSERT INTO rollup_hours (hour, first_collection, last_collection, rolled_up, "
            f"states, duration_ms) VALUES ({ph}, {ph}, {ph}, {ph}, 0, 0)",
            (h, first, last, rolled))
        conn.exec_driver_sql(
            f"UPDATE collections SET rolled_up = {ph} WHERE id BETWEEN {ph} AND {ph}",
            (rolled, first, last))
    # Whatever came after the last finished hour is counted again, whole.
    after = finished[-1][0] if finished else None
    if after is None:
        conn.exec_driver_sql("DELETE FROM rollups")
    else:
        conn.exec_driver_sql(f"DELETE FROM rollups WHERE hour > {ph}", (after,))
    conn.exec_driver_sql(f"UPDATE collections SET rolled_up = 0 WHERE id >= {ph}", (rest,))
    dialect = conn.dialect.name
    op.execute("DROP VIEW IF EXISTS collection_log")
    op.execute(_collection_log(dialect, with_kind=True))


def downgrade():
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS collection_log")
    op.execute(_collection_log(dialect, with_kind=False))
    op.drop_index("ix_states_ended_before", table_name="states")
    op.drop_table("rollup_hours")
