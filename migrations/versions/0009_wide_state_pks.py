"""PostgreSQL: 64-bit state pks, and the connections view's bytes summed in NUMERIC.

On PostgreSQL INTEGER is 32 bits: at 50,000 new states a minute the state
pks would run out in about a month. SQLite's INTEGER is 64 bits already
(and states.pk must stay INTEGER there to be the rowid), so this revision
changes nothing on SQLite. PostgreSQL refuses to change the type of a column
a view reads, so the two views on states are dropped and made again from
their own definitions, with connections.bytes (both directions, each up to
2**63 - 1) summed in NUMERIC, which PostgreSQL never overflows.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 23:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_COLUMNS = (("states", "pk"), ("state_keys", "state_pk"), ("state_peers", "state_pk"),
            ("samples", "state_pk"), ("peer_samples", "state_pk"))
_SUM = "s.bytes0 + s.bytes1 AS bytes"
_NUMERIC_SUM = "s.bytes0::numeric + s.bytes1::numeric AS bytes"


def _retype(new_type, old_sum, new_sum):
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    views = {name: bind.exec_driver_sql(f"SELECT pg_get_viewdef('{name}'::regclass, true)")
             .scalar() for name in ("connections", "nat")}
    if views["connections"].count(old_sum) != 1:
        raise RuntimeError(f"the connections view does not read {old_sum!r} once; "
                           f"not the view this revision knows")
    views["connections"] = views["connections"].replace(old_sum, new_sum)
    op.execute("DROP VIEW nat")
    op.execute("DROP VIEW connections")
    for table, column in _COLUMNS:
        op.alter_column(table, column, type_=new_type)
    for name in ("connections", "nat"):
        op.execute(f"CREATE VIEW {name} AS {views[name]}")


def upgrade():
    _retype(sa.BigInteger(), _SUM, _NUMERIC_SUM)


def downgrade():
    _retype(sa.Integer(), _NUMERIC_SUM, _SUM)
