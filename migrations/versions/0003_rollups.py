"""Hourly rollups for reports, and which collections they already count.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 15:50:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "rollups",
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("dim", sa.SmallInteger(), nullable=False),
        sa.Column("key", sa.BigInteger(), nullable=False),
        sa.Column("key2", sa.BigInteger(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("states", sa.Integer(), nullable=False),
        sa.Column("halfopen", sa.Integer(), nullable=False),
        sa.Column("packets_out", sa.BigInteger(), nullable=False),
        sa.Column("packets_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "dim", "key", "key2", "label", name=op.f("pk_rollups")),
        sqlite_with_rowid=False,
    )
    # Plain ALTER TABLE (SQLite >= 3.35, PostgreSQL): a batch copy of the
    # table would break the views that read it.
    op.add_column("collections", sa.Column("rolled_up", sa.SmallInteger(), nullable=False,
                                           server_default="0"))


def downgrade():
    op.execute("ALTER TABLE collections DROP COLUMN rolled_up")
    op.drop_table("rollups")
