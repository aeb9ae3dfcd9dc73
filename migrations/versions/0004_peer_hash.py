"""states.peer_hash: a hash of both peers, so a collection rewrites them only when they change.

Rows recorded before this revision have NULL (unknown): the next collection
that sees such a state writes its peers, as before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 16:10:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


# Plain ALTER TABLE both ways (SQLite >= 3.35 and PostgreSQL drop a column in
# place): a batch copy of states would rename a table the views refer to.
def upgrade():
    op.add_column("states", sa.Column("peer_hash", sa.BigInteger(), nullable=True))


def downgrade():
    op.drop_column("states", "peer_hash")
