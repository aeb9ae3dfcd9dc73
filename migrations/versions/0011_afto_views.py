"""The connections view reads af-to (NAT64) states as pfctl prints them.

PF builds the stack key of an af-to state for the translated packet, in the
other family and with its sides swapped (pf_state_key_setup in sys/net/pf.c):
its [1] is the initiator's new source, its [0] the responder as the
translated packet reaches it. Revision 0002 read every state's stack [1] as
the local end, so an af-to state named the firewall's own address as the
local host, the responder's IPv6 form as the NAT address and the real local
host as the remote one. pfctl prints such a state like an outgoing one
(`stack[1] (wire[0]) -> stack[0] (wire[1])`, print_state in
sbin/pfctl/pf_print_state.c), and so does the view now: local is the
initiator as it sent (wire [0]), nat its translated source (stack [1]),
remote the responder after translation (stack [0]), and bytes_out what the
initiator sent (bytes[0]). Other states read as before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 13:00:00
"""
import importlib

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_AFTO = "wk.af <> sk.af"


def _pick(afto, other):
    return f"CASE WHEN {_AFTO} THEN {afto} ELSE {other} END"


# The lines of revision 0002's connections view this one changes.
_CHANGES = (
    ("sk.port1 AS local_port", f"{_pick('wk.port0', 'sk.port1')} AS local_port"),
    ("wk.port1 AS nat_port", f"{_pick('sk.port1', 'wk.port1')} AS nat_port"),
    ("wk.port0 AS remote_port", f"{_pick('sk.port0', 'wk.port0')} AS remote_port"),
    ("la.id = sk.addr1", f"la.id = {_pick('wk.addr0', 'sk.addr1')}"),
    ("ta.id = wk.addr1", f"ta.id = {_pick('sk.addr1', 'wk.addr1')}"),
    ("ra.id = wk.addr0", f"ra.id = {_pick('sk.addr0', 'wk.addr0')}"),
    ("CASE s.direction WHEN 2 THEN s.", f"CASE WHEN s.direction = 2 OR {_AFTO} THEN s."),
)
# Revision 0009 sums bytes in NUMERIC on PostgreSQL.
_SUM = ("s.bytes0 + s.bytes1 AS bytes", "s.bytes0::numeric + s.bytes1::numeric AS bytes")


def _connections(dialect, afto):
    base = importlib.import_module("pfhistory.migrations.versions.0002_views")
    sql = base._views(dialect)[0]
    changes = list(_CHANGES) if afto else []
    if dialect == "postgresql":
        changes.append(_SUM)
    for old, new in changes:
        if old not in sql:
            raise RuntimeError(f"revision 0002's connections view has no {old!r}")
        sql = sql.replace(old, new)
    return sql


def _replace(afto):
    dialect = op.get_bind().dialect.name
    sql = _connections(dialect, afto)
    if dialect == "postgresql":
        # Same columns, so the view is replaced in place and nat (and any view
        # of the administrator's reading it) stays.
        op.execute(sql.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1))
    else:
        # SQLite resolves views when they are read: nat keeps working.
        op.execute("DROP VIEW connections")
        op.execute(sql)


def upgrade():
    _replace(afto=True)


def downgrade():
    _replace(afto=False)
