"""Samples clustered by time: primary key (valid_until, state_pk).

Keyed by state first, every collection inserted one row into each changed
state's own cluster, so it dirtied about one page per changed state, and
expiry as many again: with a few dozen collections of samples kept, each
collection rewrote about the whole samples table (WAL and checkpoint). By
time first, a collection's samples are appended together at the end and
expiry deletes from the front; a narrow index (state_pk, valid_until) keeps
the per-state lookups the readers make. SQLite has no way to change a
primary key in place, so it copies each table in the new order; PostgreSQL
swaps the constraints.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 23:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Columns as pfhistory.models had them at this revision (frozen here).
_DYNAMIC = ("created_at", "expires_at", "packets0", "packets1", "bytes0", "bytes1",
            "timeout", "sync_flags", "updates", "state_flags")
_NARROW = ("timeout", "sync_flags", "updates", "state_flags")
_PEER_FIELDS = ("seqlo", "seqhi", "seqdiff", "max_win", "mss", "state", "wscale",
                "pfss_flags", "pfss_ttl", "scrub_flag", "pfss_ts_mod")
_WIDE = ("seqlo", "seqhi", "seqdiff", "pfss_ts_mod")
_PEER_COLUMNS = [f"{side}_{f}" for side in ("src", "dst") for f in _PEER_FIELDS]


def _sample_columns():
    return [sa.Column("valid_from", sa.Integer(), nullable=False),
            sa.Column("present", sa.SmallInteger(), nullable=False),
            *[sa.Column(name, sa.Integer() if name in _NARROW else sa.BigInteger(),
                        nullable=False) for name in _DYNAMIC]]


def _peer_sample_columns():
    return [sa.Column(name, sa.BigInteger() if name.split("_", 1)[1] in _WIDE
                      else sa.Integer(), nullable=False) for name in _PEER_COLUMNS]


_TABLES = {"samples": _sample_columns, "peer_samples": _peer_sample_columns}


def _rekey(table, key, old_index, new_index):
    """Give table the primary key key, dropping index old_index (columns) and
    creating new_index (columns); on SQLite a copy in the new key's order."""
    old_name, old_columns = old_index
    new_name, new_columns = new_index
    op.drop_index(old_name, table_name=table)
    if op.get_bind().dialect.name == "sqlite":
        copy = f"{table}_before_0008"
        op.rename_table(table, copy)
        op.create_table(
            table,
            sa.Column("state_pk", sa.Integer(), nullable=False),
            sa.Column("valid_until", sa.Integer(), nullable=False),
            *_TABLES[table](),
            sa.ForeignKeyConstraint(["state_pk"], ["states.pk"],
                                    name=f"fk_{table}_state_pk_states", ondelete="CASCADE"),
            sa.PrimaryKeyConstraint(*key, name=f"pk_{table}"),
            sqlite_with_rowid=False,
        )
        names = ", ".join(["state_pk", "valid_until",
                           *(c.name for c in _TABLES[table]())])
        op.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {copy} "
                   f"ORDER BY {', '.join(key)}")
        op.drop_table(copy)
    else:
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.create_primary_key(f"pk_{table}", table, list(key))
    op.create_index(new_name, table, list(new_columns))


def upgrade():
    for table in _TABLES:
        _rekey(table, ("valid_until", "state_pk"),
               (f"ix_{table}_valid_until", ("valid_until",)),
               (f"ix_{table}_state_pk", ("state_pk", "valid_until")))


def downgrade():
    for table in _TABLES:
        _rekey(table, ("state_pk", "valid_until"),
               (f"ix_{table}_state_pk", ("state_pk", "valid_until")),
               (f"ix_{table}_valid_until", ("valid_until",)))
