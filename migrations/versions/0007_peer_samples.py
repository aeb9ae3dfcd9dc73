"""Peer samples: a state's earlier peers kept apart from its earlier values, and only
when they changed.

Every sample held both peers (22 columns) although a collection changes the
peers of a third of the states whose counters it changes. Existing samples give
one peer sample each (the peers they held, in force until the same collection),
which is exact; the columns then leave samples. Downgrading puts back into each
sample the peers in force then: those of the first peer sample from its
valid_until on, else the state's current ones.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 21:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# PFStatePeer's fields, as pfhistory.models had them at this revision (frozen here).
_PEER_FIELDS = ("seqlo", "seqhi", "seqdiff", "max_win", "mss", "state", "wscale",
                "pfss_flags", "pfss_ttl", "scrub_flag", "pfss_ts_mod")
_WIDE = ("seqlo", "seqhi", "seqdiff", "pfss_ts_mod")
_PEER_COLUMNS = [f"{side}_{f}" for side in ("src", "dst") for f in _PEER_FIELDS]


def _peer_column(name, nullable=False):
    field = name.split("_", 1)[1]
    return sa.Column(name, sa.BigInteger() if field in _WIDE else sa.Integer(),
                     nullable=nullable)


def upgrade():
    op.create_table(
        "peer_samples",
        sa.Column("state_pk", sa.Integer(), nullable=False),
        sa.Column("valid_until", sa.Integer(), nullable=False),
        *[_peer_column(name) for name in _PEER_COLUMNS],
        sa.ForeignKeyConstraint(["state_pk"], ["states.pk"],
                                name=op.f("fk_peer_samples_state_pk_states"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("state_pk", "valid_until", name=op.f("pk_peer_samples")),
        sqlite_with_rowid=False,
    )
    columns = ", ".join(_PEER_COLUMNS)
    op.execute(f"INSERT INTO peer_samples (state_pk, valid_until, {columns}) "
               f"SELECT state_pk, valid_until, {columns} FROM samples WHERE present = 1")
    op.create_index(op.f("ix_peer_samples_valid_until"), "peer_samples", ["valid_until"])
    if op.get_bind().dialect.name == "sqlite":
        # One copy of the table, not one per dropped column.
        with op.batch_alter_table("samples", recreate="always",
                                  table_kwargs={"sqlite_with_rowid": False}) as batch:
            for name in _PEER_COLUMNS:
                batch.drop_column(name)
    else:
        for name in _PEER_COLUMNS:
            op.drop_column("samples", name)


def downgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        with op.batch_alter_table("samples", recreate="always",
                                  table_kwargs={"sqlite_with_rowid": False}) as batch:
            for name in _PEER_COLUMNS:
                batch.add_column(_peer_column(name, nullable=True))
    else:
        for name in _PEER_COLUMNS:
            op.add_column("samples", _peer_column(name, nullable=True))
    for side, prefix in ((0, "src_"), (1, "dst_")):
        targets = ", ".join(prefix + f for f in _PEER_FIELDS)
        op.execute(f"UPDATE samples SET ({targets}) = (SELECT {', '.join(_PEER_FIELDS)} "
                   f"FROM state_peers p WHERE p.state_pk = samples.state_pk "
                   f"AND p.side = {side})")
    targets = ", ".join(_PEER_COLUMNS)
    op.execute(f"UPDATE samples SET ({targets}) = (SELECT {targets} FROM peer_samples p "
               f"WHERE p.state_pk = samples.state_pk AND p.valid_until = (SELECT "
               f"min(q.valid_until) FROM peer_samples q WHERE q.state_pk = samples.state_pk "
               f"AND q.valid_until >= samples.valid_until)) "
               f"WHERE EXISTS (SELECT 1 FROM peer_samples q WHERE q.state_pk = samples.state_pk "
               f"AND q.valid_until >= samples.valid_until)")
    if sqlite:
        with op.batch_alter_table("samples", recreate="always",
                                  table_kwargs={"sqlite_with_rowid": False}) as batch:
            for name in _PEER_COLUMNS:
                batch.alter_column(name, existing_type=_peer_column(name).type,
                                   nullable=False)
    else:
        for name in _PEER_COLUMNS:
            op.alter_column("samples", name, nullable=False)
    op.drop_index(op.f("ix_peer_samples_valid_until"), table_name="peer_samples")
    op.drop_table("peer_samples")
