"""Every SQL statement pfhistory runs, in one place, always with bound parameters.

The collector's bulk paths hand lists of tuples straight to the DBAPI's
executemany (through SQLAlchemy's connection) and do set-wise work in SQL
(UPDATE ... FROM a staging table), which SQLite >= 3.33 and PostgreSQL both
understand. Placeholders follow the driver's paramstyle.
"""

from dataclasses import dataclass

from sqlalchemy import delete, func, select, text, update

from pfhistory.models import (
    DYNAMIC_STATE_FIELDS,
    PEER_FIELDS,
    Address,
    Collection,
    Sample,
    Setting,
    State,
    StateKey,
    StatePeer,
)

__all__ = [
    "STATE_COLUMNS", "KEY_COLUMNS", "PEER_COLUMNS", "STAGED_COLUMNS",
    "latest_collection", "next_ids", "insert_collection", "finish_collection",
    "open_states", "closed_states_by_key", "address_ids", "insert_addresses",
    "insert_states", "insert_keys", "insert_peers", "stage", "apply_staged",
    "close_states", "reopen_states", "expire_samples", "prune_states_batch",
    "prune_orphan_addresses", "get_setting", "set_setting", "counts",
    "SYNC_LOOKUP_COLUMNS", "sync_lookup", "end_states", "refine_ends", "clear_states",
    "delete_partial_states", "count_partial_states", "prune_partial_states",
    "COMPRESSED_COLUMNS", "stage_compressed", "compressed_stale", "compressed_closed", "compressed_partial",
    "apply_compressed",
]

# Column orders of the rows the collector builds.
STATE_COLUMNS = tuple(c.name for c in State.__table__.columns)
KEY_COLUMNS = tuple(c.name for c in StateKey.__table__.columns)
PEER_COLUMNS = tuple(c.name for c in StatePeer.__table__.columns)
# A staged change: the state's pk, its new dynamic values, both new peers.
STAGED_COLUMNS = ("pk", "dyn_hash", *DYNAMIC_STATE_FIELDS,
                  *(f"src_{f}" for f in PEER_FIELDS), *(f"dst_{f}" for f in PEER_FIELDS))


def _ph(conn):
    """The driver's placeholder for positional parameters."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _executemany(conn, sql, rows):
    """executemany through the DBAPI, with the driver's placeholders."""
    if rows:
        conn.exec_driver_sql(sql.replace("?", _ph(conn)), rows)


def _insert_sql(table, columns):
    return (f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})")


def _temp_table(conn, name, columns_sql):
    """A session-local staging table, empty."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns_sql}) "
                             f"ON COMMIT DROP")
        conn.exec_driver_sql(f"TRUNCATE {name}")
    else:
        # Kept for the connection and emptied, not dropped: creating a table changes the
        # schema, which makes SQLite prepare every cached statement again (pfsync batches
        # run a few times a second). Each name is always made with the same columns.
        conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns_sql})")
        conn.exec_driver_sql(f"DELETE FROM temp.{name}")


# -- collections ---------------------------------------------------------------

def latest_collection(conn, kind=None):
    """(id, collected_at) of the newest collection (of that kind: 0 snapshots, 1 pfsync
    batches), or None."""
    q = select(Collection.id, Collection.collected_at)
    if kind is not None:
        q = q.where(Collection.kind == kind)
    row = conn.execute(q.order_by(Collection.collected_at.desc(), Collection.id.desc())
                       .limit(1)).first()
    return tuple(row) if row else None


def next_ids(conn):
    """The next free ids of collections, states and addresses."""
    return tuple(
        (conn.execute(select(func.max(col))).scalar() or 0) + 1
        for col in (Collection.id, State.pk, Address.id))


def insert_collection(conn, row):
    conn.execute(Collection.__table__.insert().values(**row))


def finish_collection(conn, collection_id, values):
    conn.execute(update(Collection).where(Collection.id == collection_id).values(**values))


def counts(conn):
    """Rows in each table, for -v and the tests."""
    return {t.__tablename__: conn.execute(select(func.count()).select_from(t)).scalar()
            for t in (Collection, Address, State, StateKey, StatePeer, Sample)}


# -- looking states up -----------------------------------------------------------

def open_states(conn):
    """(creatorid, state_id, pk, dyn_hash, created_at, expires_at) of open states
    (fetched through the DBAPI: a million rows, every collection)."""
    return conn.exec_driver_sql(
        "SELECT creatorid, state_id, pk, dyn_hash, created_at, expires_at FROM states "
        "WHERE ended_before IS NULL").fetchall()


def closed_states_by_key(conn, keys):
    """{(creatorid, state_id): (pk, dyn_hash, created_at, expires_at, last_seen, ended_by)}
    of closed states among keys (states seen again after a collection missed them)."""
    if not keys:
        return {}
    _temp_table(conn, "pfh_lookup", "creatorid BIGINT, state_id BIGINT")
    _executemany(conn, "INSERT INTO pfh_lookup VALUES (?, ?)", keys)
    rows = conn.exec_driver_sql(
        "SELECT s.creatorid, s.state_id, s.pk, s.dyn_hash, s.created_at, s.expires_at, "
        "s.last_seen, s.ended_by FROM pfh_lookup l JOIN states s "
        "ON s.creatorid = l.creatorid AND s.state_id = l.state_id "
        "WHERE s.ended_before IS NOT NULL")
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def address_ids(conn, pairs):
    """{(af, bin): id} of the addresses among pairs that are already known."""
    if not pairs:
        return {}
    _temp_table(conn, "pfh_addr", "af SMALLINT, bin BLOB" if conn.dialect.name == "sqlite"
                else "af SMALLINT, bin BYTEA")
    _executemany(conn, "INSERT INTO pfh_addr VALUES (?, ?)", pairs)
    rows = conn.exec_driver_sql(
        "SELECT a.af, a.bin, a.id FROM pfh_addr l JOIN addresses a "
        "ON a.af = l.af AND a.bin = l.bin")
    return {(r[0], bytes(r[1])): r[2] for r in rows}


# -- writing ---------------------------------------------------------------------

def insert_addresses(conn, rows):
    """rows: (id, af, bin, text)."""
    _executemany(conn, _insert_sql("addresses", ("id", "af", "bin", "text")), rows)


def insert_states(conn, rows):
    _executemany(conn, _insert_sql("states", STATE_COLUMNS), rows)


def insert_keys(conn, rows):
    _executemany(conn, _insert_sql("state_keys", KEY_COLUMNS), rows)


def insert_peers(conn, rows):
    _executemany(conn, _insert_sql("state_peers", PEER_COLUMNS), rows)


def stage(conn, rows, first=False):
    """Stage new values of states that changed (STAGED_COLUMNS order)."""
    if first:
        cols = ", ".join(f"{c} BIGINT" for c in STAGED_COLUMNS)
        _temp_table(conn, "pfh_incoming", cols)
    _executemany(conn, _insert_sql("pfh_incoming", STAGED_COLUMNS), rows)


def apply_staged(conn, collection_id, count_moved=True):
    """Move the staged states' previous values to samples and take the new ones.

    Returns (packets, bytes) the staged states moved since their previous
    values (never negative per state; 0, 0 unless count_moved), and the samples written.
    """
    ph = _ph(conn)
    moved = (0, 0) if not count_moved else conn.exec_driver_sql(
        "SELECT COALESCE(SUM("
        "CASE WHEN i.packets0 > s.packets0 THEN i.packets0 - s.packets0 ELSE 0 END + "
        "CASE WHEN i.packets1 > s.packets1 THEN i.packets1 - s.packets1 ELSE 0 END), 0), "
        "COALESCE(SUM("
        "CASE WHEN i.bytes0 > s.bytes0 THEN i.bytes0 - s.bytes0 ELSE 0 END + "
        "CASE WHEN i.bytes1 > s.bytes1 THEN i.bytes1 - s.bytes1 ELSE 0 END), 0) "
        "FROM pfh_incoming i JOIN states s ON s.pk = i.pk").first()
    dyn = ", ".join(f"s.{f}" for f in DYNAMIC_STATE_FIELDS)
    peers = ", ".join([f"ps.{f}" for f in PEER_FIELDS] + [f"pd.{f}" for f in PEER_FIELDS])
    sample_cols = ", ".join(["state_pk", "valid_until", "valid_from", "present",
                             *DYNAMIC_STATE_FIELDS,
                             *(f"src_{f}" for f in PEER_FIELDS),
                             *(f"dst_{f}" for f in PEER_FIELDS)])
    written = conn.exec_driver_sql(
        f"INSERT INTO samples ({sample_cols}) "
        f"SELECT s.pk, {ph}, s.values_since, 1, {dyn}, {peers} "
        f"FROM pfh_incoming i JOIN states s ON s.pk = i.pk "
        f"JOIN state_peers ps ON ps.state_pk = s.pk AND ps.side = 0 "
        f"JOIN state_peers pd ON pd.state_pk = s.pk AND pd.side = 1 "
        f"WHERE s.values_since < {ph}", (collection_id, collection_id)).rowcount
    sets = ", ".join(f"{f} = i.{f}" for f in ("dyn_hash", *DYNAMIC_STATE_FIELDS))
    conn.exec_driver_sql(
        f"UPDATE states SET {sets}, values_since = {ph} "
        f"FROM pfh_incoming i WHERE states.pk = i.pk", (collection_id,))
    for side, prefix in ((0, "src_"), (1, "dst_")):
        peer_sets = ", ".join(f"{f} = i.{prefix}{f}" for f in PEER_FIELDS)
        conn.exec_driver_sql(
            f"UPDATE state_peers SET {peer_sets} FROM pfh_incoming i "
            f"WHERE state_peers.state_pk = i.pk AND state_peers.side = {side}")
    return int(moved[0]), int(moved[1]), max(written, 0)


def close_states(conn, pks, last_seen, last_seen_at, ended_before, ended_before_at):
    """Close open states a collection did not see: last seen by the previous snapshot
    (last_seen), or by the pfsync batch that first reported them if that came later."""
    _executemany(conn, "UPDATE states SET "
                       "last_seen_at = CASE WHEN first_seen > ? THEN (SELECT collected_at "
                       "FROM collections c WHERE c.id = states.first_seen) ELSE ? END, "
                       "last_seen = CASE WHEN first_seen > ? THEN first_seen ELSE ? END, "
                       "ended_before = ?, ended_before_at = ? WHERE pk = ?",
                 [(last_seen, last_seen_at, last_seen, last_seen, ended_before,
                   ended_before_at, pk) for pk in pks])


def reopen_states(conn, rows, collection_id):
    """Reopen closed states seen again: their absence becomes a sample with
    present = 0, so the state table of the collections they missed stays exact.

    rows: (pk, last_seen, ended_before) as they were before reopening.
    """
    if not rows:
        return
    dyn = ", ".join(f"s.{f}" for f in DYNAMIC_STATE_FIELDS)
    peers = ", ".join([f"ps.{f}" for f in PEER_FIELDS] + [f"pd.{f}" for f in PEER_FIELDS])
    sample_cols = ", ".join(["state_pk", "valid_until", "valid_from", "present",
                             *DYNAMIC_STATE_FIELDS,
                             *(f"src_{f}" for f in PEER_FIELDS),
                             *(f"dst_{f}" for f in PEER_FIELDS)])
    ph = _ph(conn)
    for pk, _last_seen, ended_before in rows:
        # Values it had while present, until it vanished ...
        conn.exec_driver_sql(
            f"INSERT INTO samples ({sample_cols}) "
            f"SELECT s.pk, s.ended_before, s.values_since, 1, {dyn}, {peers} "
            f"FROM states s JOIN state_peers ps ON ps.state_pk = s.pk AND ps.side = 0 "
            f"JOIN state_peers pd ON pd.state_pk = s.pk AND pd.side = 1 "
            f"WHERE s.pk = {ph} AND s.values_since < s.ended_before", (pk,))
        # ... and the collections that did not see it.
        conn.exec_driver_sql(
            f"INSERT INTO samples ({sample_cols}) "
            f"SELECT s.pk, {ph}, s.ended_before, 0, {dyn}, {peers} "
            f"FROM states s JOIN state_peers ps ON ps.state_pk = s.pk AND ps.side = 0 "
            f"JOIN state_peers pd ON pd.state_pk = s.pk AND pd.side = 1 "
            f"WHERE s.pk = {ph}", (collection_id, pk))
    _executemany(conn, "UPDATE states SET last_seen = NULL, last_seen_at = NULL, "
                       "ended_before = NULL, ended_before_at = NULL, values_since = ? "
                       "WHERE pk = ?", [(collection_id, pk) for pk, _l, _e in rows])


# -- retention -------------------------------------------------------------------

def expire_samples(conn, before_collection_id, limit):
    """Delete up to limit samples no longer needed for collections before
    before_collection_id (absences are kept: they make lifetimes exact).
    Returns how many were deleted."""
    ph = _ph(conn)
    return conn.exec_driver_sql(
        f"DELETE FROM samples WHERE (state_pk, valid_until) IN ("
        f"SELECT state_pk, valid_until FROM samples "
        f"WHERE valid_until <= {ph} AND present = 1 LIMIT {int(limit)})",
        (before_collection_id,)).rowcount


def prune_states_batch(conn, before_at, limit):
    """Delete up to limit states that ended before before_at, with their keys,
    peers and samples. Returns how many states were deleted."""
    ph = _ph(conn)
    pks = [r[0] for r in conn.exec_driver_sql(
        f"SELECT pk FROM states WHERE ended_before_at IS NOT NULL "
        f"AND ended_before_at <= {ph} ORDER BY ended_before_at LIMIT {int(limit)}",
        (before_at,))]
    if not pks:
        return 0
    for table in (Sample, StatePeer, StateKey):
        conn.execute(delete(table).where(table.state_pk.in_(pks)))
    conn.execute(delete(State).where(State.pk.in_(pks)))
    return len(pks)


def prune_orphan_addresses(conn, limit):
    """Delete up to limit addresses no state refers to any more."""
    return conn.exec_driver_sql(
        f"DELETE FROM addresses WHERE id IN (SELECT a.id FROM addresses a "
        f"WHERE NOT EXISTS (SELECT 1 FROM state_keys k WHERE k.addr0 = a.id AND k.mirror = 0) "
        f"AND NOT EXISTS (SELECT 1 FROM state_keys k WHERE k.addr1 = a.id AND k.mirror = 0) "
        f"AND a.id NOT IN (SELECT rt_addr FROM states WHERE rt_addr IS NOT NULL) "
        f"LIMIT {int(limit)})").rowcount


def collection_before(conn, at):
    """The id of the first collection at or after at, or None."""
    return conn.execute(select(func.min(Collection.id))
                        .where(Collection.collected_at >= at)).scalar()


# -- looking back -----------------------------------------------------------------

def collection_times(conn):
    return [tuple(r) for r in conn.execute(
        select(Collection.id, Collection.collected_at).order_by(Collection.id))]


def collection_at_or_before(conn, at):
    """(id, collected_at) of the newest collection at or before at, or None."""
    row = conn.execute(select(Collection.id, Collection.collected_at)
                       .where(Collection.collected_at <= at)
                       .order_by(Collection.collected_at.desc(), Collection.id.desc())
                       .limit(1)).first()
    return tuple(row) if row else None


@dataclass
class HistoryFilters:
    """What History.states() may filter on; None means no filter."""

    since: int | None = None
    until: int | None = None
    host: tuple | None = None        # (af, first, last) binary bounds
    local: tuple | None = None
    remote: tuple | None = None
    port: int | None = None
    proto: int | None = None
    af: int | None = None
    ifname: str | None = None
    direction: int | None = None
    rule: int | None = None
    anchor: int | None = None
    creatorid: int | None = None
    state_id: int | None = None
    nat: bool | None = None
    open: bool | None = None
    closed: bool | None = None
    min_bytes: int | None = None
    min_duration: int | None = None
    order: str = "first_seen"
    limit: int | None = None


_ORDERS = {
    # pk follows first sight: this order streams without sorting.
    "first_seen": "s.pk",
    "created": "s.created_at, s.pk",
    "last_seen": "COALESCE(s.last_seen_at, :latest_at) DESC, s.pk",
    "bytes": "(v_bytes0 + v_bytes1) DESC, s.pk",
    "duration": "(COALESCE(s.last_seen_at, :latest_at) - s.created_at) DESC, s.pk",
    "id": "s.state_id, s.creatorid",
}

_PEER_SQL = ", ".join(f"ps.{f} AS src_{f}, pd.{f} AS dst_{f}" for f in PEER_FIELDS)


def _endpoint_filter(name, bounds, sides, params):
    """s.pk whose keys have an address in [first, last] at the given
    (side, column) positions; each address lookup uses addresses' (af, bin) index."""
    af, first, last = bounds
    params[f"{name}_af"], params[f"{name}_lo"], params[f"{name}_hi"] = af, first, last
    ids = (f"SELECT id FROM addresses WHERE af = :{name}_af "
           f"AND bin BETWEEN :{name}_lo AND :{name}_hi")
    parts = [f"SELECT state_pk FROM state_keys WHERE {col} IN ({ids}) AND mirror = 0"
             + ("" if side is None else f" AND side = {side}")
             for side, col in sides]
    return f"s.pk IN ({' UNION '.join(parts)})"


def history_rows(conn, f, at_row):
    """The rows History rebuilds PFState objects from, streamed.

    With at_row = (collection id, time): the states alive in that collection
    (absences kept as samples with present = 0 excluded), each with the
    values in force then (the sample holding them, else the current ones;
    exact = 0 where retention dropped them). Without: last observed values.
    """
    latest = latest_collection(conn)
    params = {"latest_at": latest[1] if latest else 0}
    where = []
    if at_row is not None:
        params["c"], params["c_at"] = at_row
        sample_join = (
            "LEFT JOIN samples x ON x.state_pk = s.pk AND x.valid_until = "
            "(SELECT min(y.valid_until) FROM samples y WHERE y.state_pk = s.pk "
            "AND y.valid_until > :c)")
        # ended_before_at (indexed) narrows the scan to states that were still
        # open then; collection times never go back, so it implies nothing more.
        where += ["(s.ended_before_at IS NULL OR s.ended_before_at >= :c_at)",
                  "s.first_seen <= :c", "(s.ended_before IS NULL OR s.ended_before > :c)",
                  "(x.present IS NULL OR x.present = 1 OR x.valid_from > :c)"]
        use_x = "(x.valid_from IS NOT NULL AND x.valid_from <= :c)"
        ref = ":c AS ref_collection, :c_at AS ref_at, "
        exact = f"CASE WHEN {use_x} OR s.values_since <= :c THEN 1 ELSE 0 END AS exact"
        pick = lambda col: f"CASE WHEN {use_x} THEN x.{col} ELSE s.{col} END"  # noqa: E731
        peer_pick = ", ".join(
            f"CASE WHEN {use_x} THEN x.{side}_{fld} ELSE {alias}.{fld} END AS {side}_{fld}"
            for side, alias in (("src", "ps"), ("dst", "pd")) for fld in PEER_FIELDS)
    else:
        sample_join = ""
        ref = ("COALESCE(s.last_seen, (SELECT max(id) FROM collections)) AS ref_collection, "
               "COALESCE(s.last_seen_at, :latest_at) AS ref_at, ")
        exact = "1 AS exact"
        pick = lambda col: f"s.{col}"  # noqa: E731
        peer_pick = _PEER_SQL
    values = ", ".join(f"{pick(col)} AS v_{col}" for col in DYNAMIC_STATE_FIELDS)

    if f.since is not None:
        params["since"] = f.since
        where.append("(s.ended_before_at IS NULL OR s.ended_before_at > :since)")
    if f.until is not None:
        params["until"] = f.until
        where.append("s.created_at <= :until")
    if f.host is not None and f.port is not None:
        # An address and a port name one endpoint: both on the same side of
        # a key (the NAT question "who was behind 203.0.113.7:51234").
        af, first, last = f.host
        params.update(host_af=af, host_lo=first, host_hi=last, port=f.port)
        ids = "SELECT id FROM addresses WHERE af = :host_af AND bin BETWEEN :host_lo AND :host_hi"
        where.append(
            f"s.pk IN (SELECT state_pk FROM state_keys WHERE port0 = :port AND mirror = 0 "
            f"AND addr0 IN ({ids}) UNION SELECT state_pk FROM state_keys WHERE port1 = :port "
            f"AND mirror = 0 AND addr1 IN ({ids}))")
    elif f.host is not None:
        where.append(_endpoint_filter("host", f.host, ((None, "addr0"), (None, "addr1")),
                                      params))
    if f.local is not None:
        where.append(_endpoint_filter("local", f.local, ((None, "addr1"),), params))
    if f.remote is not None:
        where.append(_endpoint_filter("remote", f.remote, ((None, "addr0"),), params))
    if f.port is not None and f.host is None:
        params["port"] = f.port
        where.append("s.pk IN (SELECT state_pk FROM state_keys WHERE port0 = :port AND mirror = 0 "
                     "UNION SELECT state_pk FROM state_keys WHERE port1 = :port AND mirror = 0)")
    for column, value in (("proto", f.proto), ("af", f.af), ("ifname", f.ifname),
                          ("direction", f.direction), ("rule", f.rule), ("anchor", f.anchor),
                          ("creatorid", f.creatorid), ("state_id", f.state_id)):
        if value is not None:
            params[f"f_{column}"] = value
            where.append(f"s.{column} = :f_{column}")
    if f.nat is not None:
        translated = ("(wk.addr0 <> sk.addr0 OR wk.addr1 <> sk.addr1 OR wk.port0 <> sk.port0 "
                      "OR wk.port1 <> sk.port1 OR wk.af <> sk.af OR wk.rdomain <> sk.rdomain)")
        where.append(translated if f.nat else f"NOT {translated}")
    if f.open:
        where.append("s.ended_before IS NULL")
    if f.closed:
        where.append("s.ended_before IS NOT NULL")
    if f.min_bytes is not None:
        params["min_bytes"] = f.min_bytes
        where.append(f"({pick('bytes0')} + {pick('bytes1')}) >= :min_bytes")
    if f.min_duration is not None:
        params["min_duration"] = f.min_duration
        where.append("(COALESCE(s.last_seen_at, :latest_at) - s.created_at) >= :min_duration")
    order = _ORDERS.get(f.order)
    if order is None:
        raise ValueError(f"order must be one of {', '.join(_ORDERS)}")
    sql = (
        f"SELECT s.pk, s.state_id, s.creatorid, s.ifname, s.rule, s.anchor, s.nat_rule, "
        f"s.proto, s.direction, s.af, s.log, s.rt, s.rtableid0, s.rtableid1, s.max_mss, "
        f"s.min_ttl, s.set_tos, s.set_prio0, s.set_prio1, s.values_since, "
        f"s.first_seen, fc.collected_at AS first_seen_at, s.last_seen, s.last_seen_at, "
        f"s.ended_before, "
        f"s.ended_before_at, {values}, {ref}{exact}, "
        f"wk.af AS w_af, wa0.bin AS w_addr0, wk.port0 AS w_port0, wa1.bin AS w_addr1, "
        f"wk.port1 AS w_port1, wk.rdomain AS w_rdomain, "
        f"sk.af AS s_af, sa0.bin AS s_addr0, sk.port0 AS s_port0, sa1.bin AS s_addr1, "
        f"sk.port1 AS s_port1, sk.rdomain AS s_rdomain, rta.bin AS rt_bin, {peer_pick} "
        f"FROM states s "
        f"JOIN collections fc ON fc.id = s.first_seen "
        f"JOIN state_keys wk ON wk.state_pk = s.pk AND wk.side = 0 "
        f"JOIN state_keys sk ON sk.state_pk = s.pk AND sk.side = 1 "
        f"JOIN addresses wa0 ON wa0.id = wk.addr0 JOIN addresses wa1 ON wa1.id = wk.addr1 "
        f"JOIN addresses sa0 ON sa0.id = sk.addr0 JOIN addresses sa1 ON sa1.id = sk.addr1 "
        f"LEFT JOIN addresses rta ON rta.id = s.rt_addr "
        f"JOIN state_peers ps ON ps.state_pk = s.pk AND ps.side = 0 "
        f"JOIN state_peers pd ON pd.state_pk = s.pk AND pd.side = 1 "
        f"{sample_join} "
        + (f"WHERE {' AND '.join(where)} " if where else "")
        + f"ORDER BY {order}"
        + (f" LIMIT {int(f.limit)}" if f.limit is not None else ""))
    return conn.execution_options(stream_results=True).execute(text(sql), params)


# -- summaries -------------------------------------------------------------------

def summary(conn, top=5):
    """The history in a few numbers: collections, states, top talkers by bytes.

    A state's local host is the stack key's addr[1] (the internal side, before
    NAT) and its remote host the wire key's addr[0], for both directions
    (pf_setup_pdesc() in sys/net/pf.c puts the initiator of an inbound state
    at [0] and of an outbound one at [1]).
    """
    first, last, n = conn.execute(select(func.min(Collection.collected_at),
                                         func.max(Collection.collected_at),
                                         func.count())).one()
    states, open_ = conn.execute(select(func.count(), func.count(State.pk).filter(
        State.ended_before.is_(None)))).one()

    def talkers(side, column):
        k = StateKey.__table__.alias("k")
        a = Address.__table__.alias("a")
        total = (State.bytes0 + State.bytes1)
        q = (select(a.c.text, func.sum(total).label("bytes"), func.count().label("states"))
             .select_from(State.__table__.join(k, (k.c.state_pk == State.pk) & (k.c.side == side))
                          .join(a, a.c.id == k.c[column]))
             .group_by(a.c.text).order_by(func.sum(total).desc(), a.c.text).limit(top))
        return [tuple(r) for r in conn.execute(q)]

    return {"collections": n, "first": first, "last": last, "states": states,
            "open": open_, "closed": states - open_,
            "top_local": talkers(1, "addr1"), "top_remote": talkers(0, "addr0")}


# -- settings --------------------------------------------------------------------

def get_setting(conn, name, default=None):
    value = conn.execute(select(Setting.value).where(Setting.name == name)).scalar()
    return default if value is None else value


def set_setting(conn, name, value):
    conn.execute(delete(Setting).where(Setting.name == name))
    conn.execute(Setting.__table__.insert().values(name=name, value=str(value)))


def sqlite_incremental_vacuum(conn, pages):
    """Hand up to pages free pages back to the file system (SQLite only)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA incremental_vacuum({int(pages)})")


def ping(conn):
    conn.execute(text("SELECT 1"))


# -- pfsync events ------------------------------------------------------------------

SYNC_LOOKUP_COLUMNS = ("pk", "first_seen", "last_seen", "ended_before", "ended_by",
                       "last_seen_at", "ended_before_at", "proto", "src_state", "src_seqlo",
                       "dst_state", "dst_seqlo")
_LOOKUP_SQL = {"src_state": "ps.state", "src_seqlo": "ps.seqlo", "dst_state": "pd.state",
               "dst_seqlo": "pd.seqlo"}

# pfsync_in_upd_c()/pfsync_upd_tcp() (sys/net/if_pfsync.c) ignore an update that would
# move a peer backwards: for TCP a peer state going back (unless out of synproxy, states
# PF_TCPS_PROXY_SRC 11 and up) or a sequence number going back (SEQ_GT, modulo 2**32; for
# dst once it has seen a SYN, TCPS_SYN_SENT 2); for other protocols a state going back.
# {p} is the stored peer's alias, {n} the prefix of the new values.
_SEQ_GT = "((({a}) - ({b})) % 4294967296 + 4294967296) % 4294967296 BETWEEN 1 AND 2147483647"
_STALE_SQL = (
    "(CASE WHEN s.proto = 6 THEN "
    "(ps.state > {n}src_state AND (ps.state < 11 OR {n}src_state >= 11)) OR "
    + _SEQ_GT.format(a="ps.seqlo", b="{n}src_seqlo") + " OR pd.state > {n}dst_state OR "
    "(pd.state >= 2 AND " + _SEQ_GT.format(a="pd.seqlo", b="{n}dst_seqlo") + ") "
    "ELSE ps.state > {n}src_state OR pd.state > {n}dst_state END)")


def sync_lookup(conn, keys):
    """{(creatorid, state_id): row in SYNC_LOOKUP_COLUMNS order} of the states among keys,
    open or closed: what applying pfsync messages to them needs."""
    if not keys:
        return {}
    _temp_table(conn, "pfh_lookup", "creatorid BIGINT, state_id BIGINT")
    _executemany(conn, "INSERT INTO pfh_lookup VALUES (?, ?)", keys)
    cols = ", ".join(_LOOKUP_SQL.get(c, f"s.{c}") for c in SYNC_LOOKUP_COLUMNS)
    rows = conn.exec_driver_sql(
        f"SELECT s.creatorid, s.state_id, {cols} FROM pfh_lookup l JOIN states s "
        f"ON s.creatorid = l.creatorid AND s.state_id = l.state_id "
        f"JOIN state_peers ps ON ps.state_pk = s.pk AND ps.side = 0 "
        f"JOIN state_peers pd ON pd.state_pk = s.pk AND pd.side = 1").cursor.fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def end_states(conn, rows):
    """Close states pfsync reported removed: rows of (last_seen, last_seen_at,
    ended_before, ended_before_at, pk); ended_by = 1 marks the time as exact."""
    _executemany(conn, "UPDATE states SET last_seen = ?, last_seen_at = ?, ended_before = ?, "
                       "ended_before_at = ?, ended_by = 1 WHERE pk = ?", rows)


def refine_ends(conn, rows):
    """States a collection closed (ended in a window) whose removal pfsync reported:
    rows of (at, at, pk); the window narrows to that instant."""
    _executemany(conn, "UPDATE states SET last_seen_at = ?, ended_before_at = ?, "
                       "ended_by = 1 WHERE pk = ?", rows)


def clear_states(conn, creatorid, ifname, collection_id, prev_id, at):
    """pfsync CLR: end every open state of creatorid (on ifname, unless None) at ``at``.
    Returns how many."""
    ph = _ph(conn)
    where = f"creatorid = {ph} AND ended_before IS NULL"
    params = [collection_id, collection_id, prev_id, at, collection_id, at, creatorid]
    if ifname is not None:
        where += f" AND ifname = {ph}"
        params.append(ifname)
    n = conn.exec_driver_sql(
        f"UPDATE states SET last_seen = CASE WHEN first_seen >= {ph} THEN {ph} ELSE {ph} END, "
        f"last_seen_at = {ph}, ended_before = {ph}, ended_before_at = {ph}, ended_by = 1 "
        f"WHERE {where}", tuple(params)).rowcount
    if ifname is None:
        conn.exec_driver_sql(f"UPDATE partial_states SET ended_at = {ph} "
                             f"WHERE creatorid = {ph} AND ended_at IS NULL", (at, creatorid))
    return n


def delete_partial_states(conn, keys):
    """Forget partial states a full record has made states: keys (creatorid, state_id)."""
    _executemany(conn, "DELETE FROM partial_states WHERE creatorid = ? AND state_id = ?", keys)


def prune_partial_states(conn, before_at):
    """Forget partial states last heard of (or ended) at or before before_at."""
    return conn.exec_driver_sql(
        f"DELETE FROM partial_states WHERE COALESCE(ended_at, last_at) <= {_ph(conn)}",
        (before_at,)).rowcount


def count_partial_states(conn):
    return conn.exec_driver_sql("SELECT count(*) FROM partial_states").scalar()


# Compressed messages (UPD_C, DEL_C) applied set-wise: staged by (creatorid, state_id),
# never fetched into Python except for the few states already closed.
COMPRESSED_COLUMNS = ("creatorid", "state_id", "first_at", "last_at", "end_at", "updates",
                      "has_peers", "timeout", *(f"src_{f}" for f in PEER_FIELDS),
                      *(f"dst_{f}" for f in PEER_FIELDS))
_C_JOIN = "s.creatorid = c.creatorid AND s.state_id = c.state_id"


def stage_compressed(conn, rows):
    """Stage the net effect of compressed messages, rows in COMPRESSED_COLUMNS order."""
    _temp_table(conn, "pfh_sync_c", ", ".join(f"{c} BIGINT" for c in COMPRESSED_COLUMNS))
    _executemany(conn, _insert_sql("pfh_sync_c", COMPRESSED_COLUMNS), rows)


def compressed_stale(conn):
    """Drop staged peer updates that would move an open state's peers backwards (the
    kernel's rule above); returns how many."""
    stale = _STALE_SQL.format(n="pfh_sync_c.")
    return max(conn.exec_driver_sql(
        f"UPDATE pfh_sync_c SET has_peers = 0 WHERE has_peers = 1 AND EXISTS ("
        f"SELECT 1 FROM states s JOIN state_peers ps ON ps.state_pk = s.pk AND ps.side = 0 "
        f"JOIN state_peers pd ON pd.state_pk = s.pk AND pd.side = 1 "
        f"WHERE s.creatorid = pfh_sync_c.creatorid AND s.state_id = pfh_sync_c.state_id "
        f"AND s.ended_before IS NULL AND {stale})").rowcount, 0)


def compressed_closed(conn):
    """Staged states that are closed: (pk, first_seen, last_seen, ended_before, ended_by,
    last_seen_at, ended_before_at, has_peers, end_at)."""
    return conn.exec_driver_sql(
        f"SELECT s.pk, s.first_seen, s.last_seen, s.ended_before, s.ended_by, s.last_seen_at, "
        f"s.ended_before_at, c.has_peers, c.end_at FROM pfh_sync_c c JOIN states s "
        f"ON {_C_JOIN} WHERE s.ended_before IS NOT NULL").cursor.fetchall()


def compressed_partial(conn):
    """Record staged states no full record ever made states; returns how many."""
    peers = "CASE WHEN c.has_peers = 1 THEN c.{} END"
    sql = (
        "INSERT INTO partial_states (creatorid, state_id, first_at, last_at, ended_at, "
        "updates, timeout, src_state, dst_state) "
        f"SELECT c.creatorid, c.state_id, c.first_at, c.last_at, c.end_at, c.updates, "
        f"{peers.format('timeout')}, {peers.format('src_state')}, {peers.format('dst_state')} "
        f"FROM pfh_sync_c c WHERE NOT EXISTS (SELECT 1 FROM states s WHERE {_C_JOIN}) "
        "ON CONFLICT (creatorid, state_id) DO UPDATE SET last_at = excluded.last_at, "
        "ended_at = COALESCE(partial_states.ended_at, excluded.ended_at), "
        "updates = partial_states.updates + excluded.updates, "
        "timeout = COALESCE(excluded.timeout, partial_states.timeout), "
        "src_state = COALESCE(excluded.src_state, partial_states.src_state), "
        "dst_state = COALESCE(excluded.dst_state, partial_states.dst_state)")
    return max(conn.exec_driver_sql(sql).rowcount, 0)


def apply_compressed(conn, collection_id, prev_id):
    """Apply staged compressed messages to open states: new peers and timeout (the
    previous values kept as a sample), then removals at their times (ended_by 1).
    Returns (updated, samples, ended)."""
    ph = _ph(conn)
    dyn = ", ".join(f"s.{f}" for f in DYNAMIC_STATE_FIELDS)
    peers = ", ".join([f"ps.{f}" for f in PEER_FIELDS] + [f"pd.{f}" for f in PEER_FIELDS])
    sample_cols = ", ".join(["state_pk", "valid_until", "valid_from", "present",
                             *DYNAMIC_STATE_FIELDS,
                             *(f"src_{f}" for f in PEER_FIELDS),
                             *(f"dst_{f}" for f in PEER_FIELDS)])
    samples = conn.exec_driver_sql(
        f"INSERT INTO samples ({sample_cols}) "
        f"SELECT s.pk, {ph}, s.values_since, 1, {dyn}, {peers} "
        f"FROM pfh_sync_c c JOIN states s ON {_C_JOIN} "
        f"JOIN state_peers ps ON ps.state_pk = s.pk AND ps.side = 0 "
        f"JOIN state_peers pd ON pd.state_pk = s.pk AND pd.side = 1 "
        f"WHERE c.has_peers = 1 AND s.ended_before IS NULL AND s.values_since < {ph}",
        (collection_id, collection_id)).rowcount
    for side, prefix in ((0, "src_"), (1, "dst_")):
        sets = ", ".join(f"{f} = c.{prefix}{f}" for f in PEER_FIELDS)
        conn.exec_driver_sql(
            f"UPDATE state_peers SET {sets} FROM pfh_sync_c c JOIN states s ON {_C_JOIN} "
            f"WHERE state_peers.state_pk = s.pk AND state_peers.side = {side} "
            f"AND c.has_peers = 1 AND s.ended_before IS NULL")
    # dyn_hash 0 is "not known": the next snapshot compares unequal and records its values.
    updated = conn.exec_driver_sql(
        f"UPDATE states SET timeout = c.timeout, dyn_hash = 0, values_since = {ph} "
        f"FROM pfh_sync_c c WHERE states.creatorid = c.creatorid "
        f"AND states.state_id = c.state_id AND c.has_peers = 1 "
        f"AND states.ended_before IS NULL", (collection_id,)).rowcount
    ended = conn.exec_driver_sql(
        f"UPDATE states SET last_seen = CASE WHEN states.first_seen >= {ph} THEN {ph} "
        f"ELSE {ph} END, last_seen_at = c.end_at, ended_before = {ph}, "
        f"ended_before_at = c.end_at, ended_by = 1 "
        f"FROM pfh_sync_c c WHERE states.creatorid = c.creatorid "
        f"AND states.state_id = c.state_id AND c.end_at IS NOT NULL "
        f"AND states.ended_before IS NULL",
        (collection_id, collection_id, prev_id, collection_id)).rowcount
    return max(updated, 0), max(samples, 0), max(ended, 0)
