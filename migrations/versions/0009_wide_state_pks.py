"""PostgreSQL: 64-bit state pks, and the connections view's bytes summed in NUMERIC.

On PostgreSQL INTEGER is 32 bits: at 50,000 new states a minute the state
pks would run out in about a month. SQLite's INTEGER is 64 bits already
(and states.pk must stay INTEGER there to be the rowid), so this revision
changes nothing on SQLite. PostgreSQL refuses to change the type of a column
a view reads, so the two views on states are dropped and made again from
their own definitions, with connections.bytes (both directions, each up to
2**63 - 1) summed in NUMERIC, which PostgreSQL never overflows. Anything of
the administrator's that reads those columns or our two views through a rule
(a view, a materialized view, a rule on a table, and what reads those) would
stop it half-way: all of it is named first, and nothing is changed.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 23:30:00
"""
import sqlalchemy as sa
from alembic import op

from pfhistory.exceptions import PFError

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_COLUMNS = (("states", "pk"), ("state_keys", "state_pk"), ("state_peers", "state_pk"),
            ("samples", "state_pk"), ("peer_samples", "state_pk"))
_SUM = "s.bytes0 + s.bytes1 AS bytes"
_NUMERIC_SUM = "s.bytes0::numeric + s.bytes1::numeric AS bytes"


# What reads a column (or, column NULL, any column) of a relation through a rewrite
# rule (views, materialized views, rules on tables), and what reads those in turn,
# ours (connections, nat) left out: PostgreSQL records each rule's reads in pg_depend.
_RULE_READS = ("SELECT r.ev_class AS reader, d.refobjid AS read, d.refobjsubid AS col "
               "FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
               "WHERE d.classid = 'pg_rewrite'::regclass "
               "AND d.refclassid = 'pg_class'::regclass AND r.ev_class <> d.refobjid")
_READERS = sa.text(
    f"WITH RECURSIVE readers(oid) AS ("
    f"SELECT x.reader FROM ({_RULE_READS}) x WHERE x.read = to_regclass(:relation) "
    f"AND (CAST(:column AS text) IS NULL OR x.col = (SELECT a.attnum FROM pg_attribute a "
    f"WHERE a.attrelid = x.read AND a.attname = CAST(:column AS text))) "
    f"UNION SELECT x.reader FROM readers JOIN ({_RULE_READS}) x ON x.read = readers.oid) "
    f"SELECT c.oid::regclass::text, c.relkind FROM readers JOIN pg_class c ON c.oid = readers.oid "
    f"WHERE c.oid <> ALL (ARRAY[to_regclass('connections'), to_regclass('nat')]::oid[])")
_KINDS = {"v": "view", "m": "materialized view"}


def _refuse_other_readers(bind, command):
    """A view of the administrator's reading a retyped column (or one of our views,
    which are dropped and made again) would make PostgreSQL refuse half-way, with
    a message that names neither the view nor what to do: say both, before."""
    reads = [(relation, column) for relation, column in _COLUMNS]
    reads += [(view, None) for view in ("connections", "nat")]
    found = sorted({(name, kind) for relation, column in reads for name, kind in bind.execute(
        _READERS, {"relation": relation, "column": column})})
    if found:
        named = ", ".join(f"{_KINDS.get(kind, 'the rules on table')} {name}"
                          for name, kind in found)
        raise PFError(
            f"revision 0009 changes the type of states.pk and the state_pk columns, which "
            f"PostgreSQL refuses while anything reads them or the views connections and "
            f"nat: drop {named} (psql's \\d+ shows a definition), run {command} again, "
            f"then create them again; nothing was changed")


def _retype(new_type, old_sum, new_sum, command):
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    _refuse_other_readers(bind, command)
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
    _retype(sa.BigInteger(), _SUM, _NUMERIC_SUM, "`pfhistory db upgrade`")


def downgrade():
    _retype(sa.Integer(), _NUMERIC_SUM, _SUM, "the downgrade")
