"""Forensic views (connections, nat, collection_log) and the protocols table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 13:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# OpenBSD's /etc/protocols as of this revision (pfhistory/protocols.py).
from pfhistory.protocols import PROTOCOL_NAMES  # noqa: E402


def _time(dialect, expr):
    """An epoch-seconds column as readable UTC time."""
    if dialect == "postgresql":
        return f"(to_timestamp({expr}) AT TIME ZONE 'UTC')"
    return f"datetime({expr}, 'unixepoch')"


def _hex(dialect, expr, width):
    if dialect == "postgresql":
        return f"lpad(to_hex({expr}), {width}, '0')"
    return f"printf('%0{width}x', {expr})"


def _views(dialect):
    latest = "(SELECT max(collected_at) FROM collections)"
    last = f"COALESCE(s.last_seen_at, {latest})"
    t = lambda e: _time(dialect, e)  # noqa: E731
    connections = f"""
CREATE VIEW connections AS
SELECT
  s.pk AS state_pk,
  {_hex(dialect, 's.state_id', 16)} AS id,
  {_hex(dialect, 's.creatorid', 8)} AS creatorid,
  COALESCE(p.name, CAST(s.proto AS TEXT)) AS proto,
  CASE s.direction WHEN 1 THEN 'in' WHEN 2 THEN 'out' ELSE CAST(s.direction AS TEXT) END
    AS direction,
  s.ifname AS ifname,
  CASE WHEN s.rule = 4294967295 THEN NULL ELSE s.rule END AS rule,
  CASE WHEN s.anchor = 4294967295 THEN NULL ELSE s.anchor END AS anchor,
  la.text AS local_addr, sk.port1 AS local_port,
  ta.text AS nat_addr, wk.port1 AS nat_port,
  ra.text AS remote_addr, wk.port0 AS remote_port,
  CASE WHEN wk.addr1 <> sk.addr1 OR wk.port1 <> sk.port1 OR wk.addr0 <> sk.addr0
         OR wk.port0 <> sk.port0 OR wk.af <> sk.af OR wk.rdomain <> sk.rdomain
       THEN 1 ELSE 0 END AS translated,
  CASE s.direction WHEN 2 THEN s.bytes0 ELSE s.bytes1 END AS bytes_out,
  CASE s.direction WHEN 2 THEN s.bytes1 ELSE s.bytes0 END AS bytes_in,
  CASE s.direction WHEN 2 THEN s.packets0 ELSE s.packets1 END AS packets_out,
  CASE s.direction WHEN 2 THEN s.packets1 ELSE s.packets0 END AS packets_in,
  s.bytes0 + s.bytes1 AS bytes,
  {t('s.created_at')} AS created,
  {t('fc.collected_at')} AS first_seen,
  {t(last)} AS last_seen,
  {t('s.ended_before_at')} AS ended_before,
  CASE WHEN s.ended_before IS NULL THEN 1 ELSE 0 END AS open,
  {last} - s.created_at AS duration,
  s.created_at AS created_epoch,
  fc.collected_at AS first_seen_epoch,
  {last} AS last_seen_epoch,
  s.ended_before_at AS ended_before_epoch,
  la.af AS local_af, la.bin AS local_bin,
  ta.bin AS nat_bin,
  ra.af AS remote_af, ra.bin AS remote_bin
FROM states s
JOIN collections fc ON fc.id = s.first_seen
JOIN state_keys wk ON wk.state_pk = s.pk AND wk.side = 0
JOIN state_keys sk ON sk.state_pk = s.pk AND sk.side = 1
JOIN addresses la ON la.id = sk.addr1
JOIN addresses ta ON ta.id = wk.addr1
JOIN addresses ra ON ra.id = wk.addr0
LEFT JOIN protocols p ON p.number = s.proto
"""
    nat = """
CREATE VIEW nat AS
SELECT state_pk, id, proto, direction, ifname, rule,
  local_addr AS internal_addr, local_port AS internal_port,
  nat_addr AS external_addr, nat_port AS external_port,
  remote_addr, remote_port, bytes_out, bytes_in,
  created, first_seen, last_seen, ended_before, open,
  created_epoch, first_seen_epoch, last_seen_epoch, ended_before_epoch
FROM connections WHERE translated = 1
"""
    collection_log = f"""
CREATE VIEW collection_log AS
SELECT id, {t('collected_at')} AS collected, collected_at AS collected_epoch, source, host,
  {_hex(dialect, 'creatorid', 8)} AS creatorid, states, inserted, updated, reopened, closed,
  packets, bytes, samples, duration_ms
FROM collections
"""
    return [connections, nat, collection_log]


def upgrade():
    table = op.create_table(
        "protocols",
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_protocols")),
    )
    op.bulk_insert(table, [{"number": n, "name": name}
                           for n, name in sorted(PROTOCOL_NAMES.items())])
    dialect = op.get_bind().dialect.name
    for sql in _views(dialect):
        op.execute(sql)


def downgrade():
    for view in ("collection_log", "nat", "connections"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.drop_table("protocols")
