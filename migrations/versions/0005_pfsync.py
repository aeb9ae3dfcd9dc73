"""pfsync: collection kinds, exact ends reported by pfsync, partial states.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 15:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    # Plain ALTER TABLE ADD/DROP COLUMN (SQLite >= 3.35, PostgreSQL): a batch copy of the
    # table would break the views of 0002 that read it, and would rewrite a big history.
    op.add_column("collections", sa.Column("kind", sa.SmallInteger(),
                                           server_default=sa.text("0"), nullable=False))
    op.add_column("collections", sa.Column("malformed", sa.Integer(),
                                           server_default=sa.text("0"), nullable=False))
    op.add_column("states", sa.Column("ended_by", sa.SmallInteger(), nullable=True))
    op.create_table(
        "partial_states",
        sa.Column("creatorid", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("state_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("first_at", sa.BigInteger(), nullable=False),
        sa.Column("last_at", sa.BigInteger(), nullable=False),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.Column("updates", sa.Integer(), nullable=False),
        sa.Column("timeout", sa.SmallInteger(), nullable=True),
        sa.Column("src_state", sa.SmallInteger(), nullable=True),
        sa.Column("dst_state", sa.SmallInteger(), nullable=True),
        sa.PrimaryKeyConstraint("creatorid", "state_id", name=op.f("pk_partial_states")),
    )


def downgrade():
    op.drop_table("partial_states")
    op.drop_column("states", "ended_by")
    op.drop_column("collections", "malformed")
    op.drop_column("collections", "kind")
