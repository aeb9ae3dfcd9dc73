"""The per-state index of samples holds only what the primary key cannot find.

Samples are keyed by time, (valid_until, state_pk), since 0008; a second
index, (state_pk, valid_until), found a state's sample holding collection c
as its first one after c. In a busy table most samples last one collection
(the state changed again at the next one), and that index took one entry per
changed state per collection, each in the middle of the state's run: at
100,000 states, a third of all the pages a collection writes once a state's
run outgrows a page. A sample that ends at c + 1 holds c, and the primary key
finds it at (c + 1, state). So only samples that span more than one
collection, and absences (present = 0, which the forensic queries look up by
state), stay in the index; readers probe the primary key first.

On SQLite only. PostgreSQL enforces the cascade from states on every delete
(pfhistory's SQLite writers keep references whole themselves, foreign keys
off): it finds a deleted state's samples by this index, so there it stays whole.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 01:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_INDEXED = "valid_until - valid_from > 1 OR present = 0"


def upgrade():
    if op.get_bind().dialect.name != "sqlite":
        return
    op.drop_index("ix_samples_state_pk", table_name="samples")
    op.create_index("ix_samples_state_pk", "samples", ["state_pk", "valid_until"],
                    sqlite_where=sa.text(_INDEXED))


def downgrade():
    if op.get_bind().dialect.name != "sqlite":
        return
    op.drop_index("ix_samples_state_pk", table_name="samples")
    op.create_index("ix_samples_state_pk", "samples", ["state_pk", "valid_until"])
