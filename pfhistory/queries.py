"""Every SQL statement pfhistory runs, in one place, always with bound parameters.

The collector's bulk paths hand rows straight to the DBAPI (multi-row INSERTs
on SQLite, executemany elsewhere: _insert_rows) and do set-wise work in SQL
(UPDATE ... FROM a staging table), which SQLite >= 3.33 and PostgreSQL both
understand. Placeholders follow the driver's paramstyle.
"""

import sqlite3
from dataclasses import dataclass

from sqlalchemy import delete, func, select, text, update

from pfhistory.models import (
    DYNAMIC_STATE_FIELDS,
    PEER_FIELDS,
    SAMPLE_INDEXED,
    Address,
    Collection,
    RollupHour,
    Sample,
    Setting,
    State,
    StateKey,
    StatePeer,
)

__all__ = [
    "lock_writers",
    "STATE_COLUMNS", "NEW_STATE_COLUMNS", "KEY_COLUMNS", "PEER_COLUMNS", "STAGED_COLUMNS",
    "STAGED_PEER_COLUMNS",
    "latest_collection", "next_ids", "insert_collection", "finish_collection",
    "open_states", "any_closed_state", "closed_states_by_key", "address_ids", "insert_addresses",
    "insert_states", "insert_keys", "insert_peers", "stage_columns", "parameter_limit",
    "prepare_staging", "stage_prepared", "drop_load_indexes",
    "create_load_indexes", "stage", "apply_staged",
    "close_states", "reopen_states", "states_seen", "expire_samples", "prune_states_batch",
    "prune_orphan_addresses", "get_setting", "set_setting",
    "SYNC_LOOKUP_COLUMNS", "sync_lookup", "end_states", "refine_ends", "clear_states",
    "delete_partial_states", "count_partial_states", "prune_partial_states",
    "COMPRESSED_COLUMNS", "stage_compressed", "compressed_stale", "compressed_closed", "compressed_partial",
    "apply_compressed",
]

# Column orders of the rows the collector builds.
STATE_COLUMNS = tuple(c.name for c in State.__table__.columns)
# A new state's row: everything up to first_seen (the rest is NULL: open).
NEW_STATE_COLUMNS = STATE_COLUMNS[:STATE_COLUMNS.index("first_seen") + 1]
KEY_COLUMNS = tuple(c.name for c in StateKey.__table__.columns)
PEER_COLUMNS = tuple(c.name for c in StatePeer.__table__.columns)
# A staged change: the state's pk, its new dynamic values, both new peers.
STAGED_COLUMNS = ("pk", "dyn_hash", "peer_hash", *DYNAMIC_STATE_FIELDS)
# Staged new peers (only of states whose peers changed): the pk, src, dst.
STAGED_PEER_COLUMNS = ("pk", *(f"src_{f}" for f in PEER_FIELDS),
                       *(f"dst_{f}" for f in PEER_FIELDS))


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


# Rows per multi-row INSERT on SQLite: past a few hundred nothing more is won.
_ROWS_PER_INSERT = 500


def _insert_rows(conn, table, columns, rows):
    """Insert rows (tuples in columns' order)."""
    if rows:
        _insert_columns(conn, table, columns, list(zip(*rows)))


def _insert_columns(conn, table, columns, values):
    """Insert rows given column by column: values[j] holds column j of every row."""
    _run(conn, _prepared_insert(parameter_limit(conn), table, columns, values))


def parameter_limit(conn):
    """How many parameters one statement may have on SQLite (its build's limit);
    None elsewhere (statements go by executemany)."""
    if conn.dialect.name != "sqlite":
        return None
    return conn.connection.dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


def _prepared_insert(limit, table, columns, values):
    """The statements (sql, parameters, many) that insert values (_insert_columns),
    for a database whose parameter_limit is limit.

    On SQLite, in statements of _ROWS_PER_INSERT rows each, their parameters
    laid out by slice assignment: one call into SQLite per few hundred rows
    and no tuple per row takes half the time of executemany on a million rows
    (and SQLite runs each statement without Python's lock). Other databases
    get the driver's executemany. Nothing here touches a connection: the
    collector lays out its staged rows while another thread runs a statement.
    """
    k = len(columns)
    values = [v if isinstance(v, (list, tuple, range)) else list(v) for v in values]
    n = len(values[0]) if values else 0
    if n == 0:
        return []
    if limit is None:
        return [(_insert_sql(table, columns), list(zip(*values)), True)]
    per = max(1, min(_ROWS_PER_INSERT, limit // k))
    full = n - n % per
    statements = []
    if full:
        flat = [None] * (full * k)
        for j, column in enumerate(values):
            flat[j::k] = column if full == n else column[:full]
        one = f"({', '.join('?' * k)})"
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * per)}"
        step = per * k
        statements = [(sql, tuple(flat[start:start + step]), False)
                      for start in range(0, len(flat), step)]
    if full < n:
        statements.append((_insert_sql(table, columns),
                           list(zip(*(column[full:] for column in values))), True))
    return statements


def _run(conn, statements):
    for sql, params, many in statements:
        if many:
            _executemany(conn, sql, params)
        else:
            # Through SQLAlchemy, so that errors arrive wrapped as everywhere else.
            conn.exec_driver_sql(sql, params)


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


# -- writers -------------------------------------------------------------------

# The key of the lock PostgreSQL's writers take (pg_advisory_xact_lock): any fixed
# BIGINT; advisory locks are per database.
_WRITER_LOCK = 0x7066686973746F72      # "pfhistor"


def lock_writers(conn, wait):
    """PostgreSQL: wait up to wait seconds for the other writers of this database to
    finish, then keep them waiting until this transaction ends. Past the wait the
    server cancels it ("lock timeout")."""
    ph = _ph(conn)
    conn.exec_driver_sql(f"SELECT set_config('lock_timeout', {ph}, true)",
                         (f"{max(1, int(wait * 1000))}ms",))
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ph})", (_WRITER_LOCK,))


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


def collection_tallies(conn, collection_id):
    """(states, inserted, reopened, closed) of one collection."""
    c = Collection
    return tuple(conn.execute(select(c.states, c.inserted, c.reopened, c.closed)
                              .where(c.id == collection_id)).one())


def next_ids(conn):
    """The next free ids of collections, states and addresses."""
    return tuple(
        (conn.execute(select(func.max(col))).scalar() or 0) + 1
        for col in (Collection.id, State.pk, Address.id))


def insert_collection(conn, row):
    conn.execute(Collection.__table__.insert().values(**row))


def finish_collection(conn, collection_id, values):
    conn.execute(update(Collection).where(Collection.id == collection_id).values(**values))


# -- looking states up -----------------------------------------------------------

# An open state's values (dyn_hash, created_at, expires_at) folded into one
# 64-bit value, so a million rows a minute bring one integer instead of three:
# dyn_hash XOR (created_at << 32 | low 32 bits of expires_at), the XOR written
# as (a | b) - (a & b), which never overflows. collector._values_hash is the same.
_FOLDED = "((created_at << 32) | (expires_at & 4294967295))"
_VALUES_HASH = f"((dyn_hash | {_FOLDED}) - (dyn_hash & {_FOLDED}))"


def open_states(conn):
    """(creatorid, state_id, pk, values_hash, peer_hash) tuples of open states
    (a million rows every collection: plain DBAPI tuples, few columns)."""
    cursor = conn.connection.cursor()
    try:
        cursor.execute(f"SELECT creatorid, state_id, pk, {_VALUES_HASH}, peer_hash "
                       f"FROM states WHERE ended_before_at IS NULL")
        return cursor.fetchall()
    finally:
        cursor.close()


def any_closed_state(conn):
    """True if some state has ended (then a state missing from the open ones
    may be one coming back); uses the index on ended_before_at."""
    return conn.exec_driver_sql(
        "SELECT 1 FROM states WHERE ended_before_at IS NOT NULL LIMIT 1").first() is not None


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
    _insert_rows(conn, "addresses", ("id", "af", "bin", "text"), rows)


def insert_states(conn, values):
    """values: the NEW_STATE_COLUMNS, column by column (_insert_columns); the end
    columns are NULL while a state is open."""
    _insert_columns(conn, "states", NEW_STATE_COLUMNS, values)


def insert_keys(conn, values):
    """values: the KEY_COLUMNS, column by column."""
    _insert_columns(conn, "state_keys", KEY_COLUMNS, values)


def insert_peers(conn, values):
    """values: the PEER_COLUMNS, column by column."""
    _insert_columns(conn, "state_peers", PEER_COLUMNS, values)


# Secondary indexes of the tables a collection fills. Into an empty history
# (the first collection, a million states at once) they are dropped before
# the rows go in and built afterwards, in the same transaction: one sort per
# index instead of a million inserts at random places, and packed pages.
_LOAD_INDEXES = sorted((*State.__table__.indexes, *StateKey.__table__.indexes),
                       key=lambda ix: ix.name)


def drop_load_indexes(conn):
    """Drop the secondary indexes of states and state_keys (see _LOAD_INDEXES)."""
    for index in _LOAD_INDEXES:
        index.drop(conn)


def create_load_indexes(conn):
    """Build again the indexes drop_load_indexes() dropped, exactly as the models
    declare them."""
    for index in _LOAD_INDEXES:
        index.create(conn)


def stage(conn, rows, peer_rows, first=False):
    """Stage new values of states that changed (STAGED_COLUMNS order) and new
    peers of those whose peers changed (STAGED_PEER_COLUMNS order)."""
    stage_columns(conn, list(zip(*rows)) if rows else [],
                  list(zip(*peer_rows)) if peer_rows else [], first)


def stage_columns(conn, values, peer_values, first=False):
    """stage(), given column by column (_insert_columns)."""
    stage_prepared(conn, prepare_staging(parameter_limit(conn), values, peer_values), first)


@dataclass
class PreparedStaging:
    """Changed values laid out as staging statements (prepare_staging)."""

    rows: int
    statements: list


def prepare_staging(limit, values, peer_values):
    """stage_columns' statements for a database whose parameter_limit is limit,
    built without a connection: the collector lays out a chunk's while its
    applier runs a statement (stage_prepared runs them)."""
    return PreparedStaging(
        len(values[0]) if values else 0,
        _prepared_insert(limit, "pfh_incoming", STAGED_COLUMNS, values)
        + _prepared_insert(limit, "pfh_peers", STAGED_PEER_COLUMNS, peer_values))


def stage_prepared(conn, prepared, first=False):
    """Stage what prepare_staging laid out; first empties the staging tables."""
    if first:
        for name, columns in (("pfh_incoming", STAGED_COLUMNS),
                              ("pfh_peers", STAGED_PEER_COLUMNS)):
            _temp_table(conn, name, ", ".join(f"{c} BIGINT" for c in columns))
    _run(conn, prepared.statements)


_SAMPLE_COLUMNS = ", ".join(["state_pk", "valid_until", "valid_from", "present",
                              *DYNAMIC_STATE_FIELDS])
_SAMPLE_VALUES = ", ".join(f"s.{f}" for f in DYNAMIC_STATE_FIELDS)
_PEER_SAMPLE_COLUMNS = ", ".join(["state_pk", "valid_until",
                                  *(f"src_{f}" for f in PEER_FIELDS),
                                  *(f"dst_{f}" for f in PEER_FIELDS)])
_PEER_SAMPLE_VALUES = ", ".join([f"ps.{f}" for f in PEER_FIELDS] +
                                [f"pd.{f}" for f in PEER_FIELDS])
_BOTH_PEERS = ("JOIN state_peers ps ON ps.state_pk = s.pk AND ps.side = 0 "
               "JOIN state_peers pd ON pd.state_pk = s.pk AND pd.side = 1")


_SAMPLE_INDEXED_W = SAMPLE_INDEXED.replace("valid_", "w.valid_").replace("present", "w.present")


def _sample_after(state, c):
    """SQL: valid_until of the sample of state (a states alias) that holds
    collection c (an SQL expression) if any does; else of some later sample, or
    NULL: the reader checks valid_from <= c. The sample ending at c + 1 is one
    lookup of the primary key; a sample holding c that ends later spans more
    than one collection, so ix_samples_state_pk has it (models.Sample; on
    PostgreSQL it has every sample, and the condition only filters)."""
    return (f"COALESCE((SELECT w.valid_until FROM samples w WHERE w.valid_until = {c} + 1 "
            f"AND w.state_pk = {state}.pk), (SELECT min(w.valid_until) FROM samples w "
            f"WHERE w.state_pk = {state}.pk AND w.valid_until > {c} AND "
            f"({_SAMPLE_INDEXED_W})))")


def apply_staged(conn, collection_id, count_moved=True):
    """Move the staged states' previous values to samples and take the new ones.

    Returns (packets, bytes) the staged states moved since their previous
    values (never negative per state; 0, 0 unless count_moved), and the samples written.
    """
    ph = _ph(conn)
    # Each side moves at most 2**63 - 1, both may: NUMERIC keeps PostgreSQL from
    # refusing their sum as out of BIGINT's range (a no-op on SQLite's integers).
    moved = (0, 0) if not count_moved else conn.exec_driver_sql(
        "SELECT COALESCE(SUM(CAST("
        "CASE WHEN i.packets0 > s.packets0 THEN i.packets0 - s.packets0 ELSE 0 END "
        "AS NUMERIC) + "
        "CASE WHEN i.packets1 > s.packets1 THEN i.packets1 - s.packets1 ELSE 0 END), 0), "
        "COALESCE(SUM(CAST("
        "CASE WHEN i.bytes0 > s.bytes0 THEN i.bytes0 - s.bytes0 ELSE 0 END AS NUMERIC) + "
        "CASE WHEN i.bytes1 > s.bytes1 THEN i.bytes1 - s.bytes1 ELSE 0 END), 0) "
        "FROM pfh_incoming i JOIN states s ON s.pk = i.pk").first()
    written = conn.exec_driver_sql(
        f"INSERT INTO samples ({_SAMPLE_COLUMNS}) "
        f"SELECT s.pk, {ph}, s.values_since, 1, {_SAMPLE_VALUES} "
        f"FROM pfh_incoming i JOIN states s ON s.pk = i.pk "
        f"WHERE s.values_since < {ph}", (collection_id, collection_id)).rowcount
    # Peers are staged where their hash changed (pfsync stages them all); the
    # previous ones are kept where they differ. Staged states have their values
    # staged too, so a values sample exists wherever a peer sample does.
    staged = ", ".join([f"i.src_{f}" for f in PEER_FIELDS] + [f"i.dst_{f}" for f in PEER_FIELDS])
    conn.exec_driver_sql(
        f"INSERT INTO peer_samples ({_PEER_SAMPLE_COLUMNS}) "
        f"SELECT s.pk, {ph}, {_PEER_SAMPLE_VALUES} "
        f"FROM pfh_peers i JOIN states s ON s.pk = i.pk {_BOTH_PEERS} "
        f"WHERE s.values_since < {ph} AND ({_PEER_SAMPLE_VALUES}) <> ({staged})",
        (collection_id, collection_id))
    sets = ", ".join(f"{f} = i.{f}" for f in ("dyn_hash", "peer_hash", *DYNAMIC_STATE_FIELDS))
    conn.exec_driver_sql(
        f"UPDATE states SET {sets}, values_since = {ph} "
        f"FROM pfh_incoming i WHERE states.pk = i.pk", (collection_id,))
    for side, prefix in ((0, "src_"), (1, "dst_")):
        # Only peers whose hash changed are staged; of those (and of rows
        # older than peer_hash) rows whose values are the same stay unwritten.
        peer_sets = ", ".join(f"{f} = i.{prefix}{f}" for f in PEER_FIELDS)
        old = ", ".join(f"state_peers.{f}" for f in PEER_FIELDS)
        new = ", ".join(f"i.{prefix}{f}" for f in PEER_FIELDS)
        conn.exec_driver_sql(
            f"UPDATE state_peers SET {peer_sets} FROM pfh_peers i "
            f"WHERE state_peers.state_pk = i.pk AND state_peers.side = {side} "
            f"AND ({old}) <> ({new})")
    return int(moved[0]), int(moved[1]), max(written, 0)


def close_states(conn, pks, last_seen, last_seen_at, ended_before, ended_before_at):
    """Close open states a collection did not see: last seen by the previous snapshot
    (last_seen), or by the pfsync batch that first reported them if that came later.
    States created after ended_before_at (pfsync reported them after the snapshot
    was taken) stay open. The pks go through a staging table: one UPDATE, not one
    per state. Returns how many were closed."""
    _temp_table(conn, "pfh_closing", "pk BIGINT")
    _insert_columns(conn, "pfh_closing", ("pk",), [sorted(pks)])
    ph = _ph(conn)
    return conn.exec_driver_sql(
        f"UPDATE states SET "
        f"last_seen_at = CASE WHEN states.first_seen > {ph} THEN (SELECT c.collected_at "
        f"FROM collections c WHERE c.id = states.first_seen) ELSE {ph} END, "
        f"last_seen = CASE WHEN states.first_seen > {ph} THEN states.first_seen ELSE {ph} END, "
        f"ended_before = {ph}, ended_before_at = {ph} "
        f"FROM pfh_closing l WHERE states.pk = l.pk AND states.created_at <= {ph}",
        (last_seen, last_seen_at, last_seen, last_seen, ended_before, ended_before_at,
         ended_before_at)).rowcount


def reopen_states(conn, rows, collection_id):
    """Reopen closed states seen again: their absence becomes a sample with
    present = 0, so the state table of the collections they missed stays exact.

    rows: (pk, last_seen, ended_before) as they were before reopening.
    """
    if not rows:
        return
    ph = _ph(conn)
    for pk, _last_seen, ended_before in rows:
        # Values and peers it had while present, until it vanished (its peers are
        # staged again: they may change now) ...
        conn.exec_driver_sql(
            f"INSERT INTO samples ({_SAMPLE_COLUMNS}) "
            f"SELECT s.pk, s.ended_before, s.values_since, 1, {_SAMPLE_VALUES} "
            f"FROM states s WHERE s.pk = {ph} AND s.values_since < s.ended_before", (pk,))
        conn.exec_driver_sql(
            f"INSERT INTO peer_samples ({_PEER_SAMPLE_COLUMNS}) "
            f"SELECT s.pk, s.ended_before, {_PEER_SAMPLE_VALUES} FROM states s {_BOTH_PEERS} "
            f"WHERE s.pk = {ph} AND s.values_since < s.ended_before", (pk,))
        # ... and the collections that did not see it.
        conn.exec_driver_sql(
            f"INSERT INTO samples ({_SAMPLE_COLUMNS}) "
            f"SELECT s.pk, {ph}, s.ended_before, 0, {_SAMPLE_VALUES} "
            f"FROM states s WHERE s.pk = {ph}", (collection_id, pk))
    _executemany(conn, "UPDATE states SET last_seen = NULL, last_seen_at = NULL, "
                       "ended_before = NULL, ended_before_at = NULL, values_since = ? "
                       "WHERE pk = ?", [(collection_id, pk) for pk, _l, _e in rows])


# -- retention -------------------------------------------------------------------

def _oldest_values_sample(conn):
    """valid_until of the oldest values sample (absences never expire, so not
    theirs), or None: what expiry has left of the samples."""
    return conn.exec_driver_sql(
        "SELECT min(valid_until) FROM samples WHERE present = 1").scalar()


def expire_samples(conn, before_collection_id, limit, peers=False):
    """Delete up to limit samples (with peers, peer samples) no longer needed
    for collections before before_collection_id (absences are kept: they make
    lifetimes exact). Returns how many were deleted.

    Samples are keyed by time, so the oldest go as one range of the primary
    key, cut between collections where more than limit would go; only when
    the oldest collection alone holds more are they picked one by one."""
    ph = _ph(conn)
    if peers:
        # Never ahead of the values: a values sample left over (a capped pass) still
        # takes its peers from the first peer sample at or after its valid_until, so
        # only peer samples before the oldest values sample left go.
        oldest = _oldest_values_sample(conn)
        if oldest is not None:
            before_collection_id = min(before_collection_id, oldest - 1)
        table, kept = "peer_samples", ""
    else:
        table, kept = "samples", " AND {t}.present = 1"
    limit = int(limit)
    cut = conn.exec_driver_sql(
        f"SELECT valid_until FROM {table} WHERE valid_until <= {ph} "
        f"ORDER BY valid_until LIMIT 1 OFFSET {limit}", (before_collection_id,)).scalar()
    bound = (f"valid_until <= {ph}", before_collection_id) if cut is None else \
        (f"valid_until < {ph}", cut)
    deleted = conn.exec_driver_sql(
        f"DELETE FROM {table} WHERE {bound[0]}{kept.format(t=table)}", (bound[1],)).rowcount
    if deleted > 0 or cut is None:
        return max(deleted, 0)
    return conn.exec_driver_sql(
        f"DELETE FROM {table} WHERE (state_pk, valid_until) IN ("
        f"SELECT state_pk, valid_until FROM {table} p "
        f"WHERE valid_until <= {ph}{kept.format(t='p')} LIMIT {limit})",
        (before_collection_id,)).rowcount


def prune_kept_back(conn, before_at, rolled_up_to):
    """Why prune left states: (how many ended at or before before_at but after
    collection rolled_up_to, so their hour still needs them; when the oldest
    recorded end was, or None if no state has ended)."""
    waiting = conn.exec_driver_sql(
        f"SELECT count(*) FROM states WHERE ended_before_at IS NOT NULL "
        f"AND ended_before_at <= {_ph(conn)} AND ended_before > {int(rolled_up_to)}",
        (before_at,)).scalar()
    oldest = conn.exec_driver_sql(
        "SELECT min(ended_before_at) FROM states WHERE ended_before_at IS NOT NULL").scalar()
    return waiting, oldest


def prune_states_batch(conn, before_at, limit, rolled_up_to=None):
    """Delete up to limit states that ended before before_at, with their keys,
    peers and samples of values and of peers; only those that ended by collection
    rolled_up_to, if given (the hours not yet in rollups still need the others).
    Returns how many states were deleted.

    The batch's pks go through a staging table, not IN lists: a batch may hold
    more states than a statement may have parameters (32,766 in SQLite's default
    build, 65,535 in PostgreSQL's protocol)."""
    ph = _ph(conn)
    rolled = "" if rolled_up_to is None else f"AND ended_before <= {int(rolled_up_to)} "
    _temp_table(conn, "pfh_pruning", "pk BIGINT")
    conn.exec_driver_sql(
        f"INSERT INTO pfh_pruning SELECT pk FROM states WHERE ended_before_at IS NOT NULL "
        f"AND ended_before_at <= {ph} {rolled}ORDER BY ended_before_at LIMIT {int(limit)}",
        (before_at,))
    # Counted, not taken from the INSERT's rowcount, which a driver may leave at -1.
    n = conn.exec_driver_sql("SELECT count(*) FROM pfh_pruning").scalar()
    if n == 0:
        return 0
    if conn.dialect.name == "postgresql":
        # Without statistics the planner takes a temporary table for a couple of
        # thousand rows whatever the batch holds; analyzed, it plans for its size.
        conn.exec_driver_sql("ANALYZE pfh_pruning")
    batch = "(SELECT pk FROM pfh_pruning)"
    if conn.dialect.name == "sqlite":
        # Samples of one collection are not in SQLite's index by state (models.Sample):
        # they are found by the primary key, at each collection of the states'
        # lives from the oldest such sample kept (none, once expiry took them).
        oldest = _oldest_values_sample(conn)
        if oldest is not None:
            conn.exec_driver_sql(
                "DELETE FROM samples WHERE (valid_until, state_pk) IN (SELECT c.id, s.pk "
                "FROM pfh_pruning p JOIN states s ON s.pk = p.pk JOIN collections c "
                "ON c.id > s.first_seen AND c.id <= s.ended_before AND c.id >= ?)", (oldest,))
        conn.exec_driver_sql(
            f"DELETE FROM samples WHERE state_pk IN {batch} AND ({SAMPLE_INDEXED})")
    else:
        conn.exec_driver_sql(f"DELETE FROM samples WHERE state_pk IN {batch}")
    for table in ("peer_samples", "state_peers", "state_keys"):
        conn.exec_driver_sql(f"DELETE FROM {table} WHERE state_pk IN {batch}")
    conn.exec_driver_sql(f"DELETE FROM states WHERE pk IN {batch}")
    return n


def prune_orphan_addresses(conn, limit):
    """Delete up to limit addresses no state and no rollup refers to any more."""
    return conn.exec_driver_sql(
        f"DELETE FROM addresses WHERE id IN (SELECT a.id FROM addresses a "
        f"WHERE NOT EXISTS (SELECT 1 FROM state_keys k WHERE k.addr0 = a.id AND k.mirror = 0) "
        f"AND NOT EXISTS (SELECT 1 FROM state_keys k WHERE k.addr1 = a.id AND k.mirror = 0) "
        f"AND a.id NOT IN (SELECT rt_addr FROM states WHERE rt_addr IS NOT NULL) "
        f"AND a.id NOT IN (SELECT key FROM rollups WHERE dim IN (1, 2, 6, 7, 8)) "
        f"AND a.id NOT IN (SELECT key2 FROM rollups WHERE dim = 7) "
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

def _word_sql(*fields, cast=True):
    """SQL for fields ((expression, bits), ..., first the highest) as one
    BIGINT: the big-endian bytes struct packs for a run of narrow record
    fields. Each field is masked to its width, so negative ones (rtableid)
    keep their two's complement bits; shifts and ORs of BIGINTs wrap alike in
    SQLite and PostgreSQL. None is padding. cast=False leaves out the CASTs to
    BIGINT, which only PostgreSQL's narrower integer columns need."""
    parts, shift = [], sum(bits for _e, bits in fields)
    for expr, bits in fields:
        shift -= bits
        if expr is not None:
            field = f"({f'CAST({expr} AS BIGINT)' if cast else expr} & {(1 << bits) - 1})"
            parts.append(f"({field} << {shift})" if shift else field)
    return f"({' | '.join(parts)})"


def _record_select(pick, peer, cast=True, ref="ref", ifname="s.ifname"):
    """[(name, struct format, SQL)] of the 264-byte record pf_state_export()
    wrote (pfhistory.records.STATE), in its field order.

    The interface name and address ids stay columns of their own, for the
    caller to turn into bytes; creation and expire are the record's (seconds
    before and after ref, the time of the collection whose values a row
    carries, unclamped). Runs of narrow fields come as one word each: a row
    is 29 values rather than 64, and fetching values is most of what
    rebuilding costs. pick(column) and peer(side, column) are the SQL of a
    dynamic value.
    """
    def _word(*fields):
        return _word_sql(*fields, cast=cast)

    def key(k):
        # port[2] (network order), rdomain, af, pad: struct pfsync_state_key
        return _word((f"{k}.port0", 16), (f"{k}.port1", 16), (f"{k}.rdomain", 16),
                     (f"{k}.af", 8), (None, 8))

    def peer_words(side):
        # struct pfsync_state_scrub, then the rest of struct pfsync_state_peer
        def p(col):
            return peer(side, col)
        return [
            (f"{side}_scrub", "q", _word((p("pfss_flags"), 16), (p("pfss_ttl"), 8),
                                         (p("scrub_flag"), 8), (p("pfss_ts_mod"), 32))),
            (f"{side}_seq", "q", _word((p("seqlo"), 32), (p("seqhi"), 32))),
            (f"{side}_win", "q", _word((p("seqdiff"), 32), (p("max_win"), 16), (p("mss"), 16))),
            (f"{side}_state", "q", _word((p("state"), 8), (p("wscale"), 8), (None, 48))),
        ]

    return [
        ("state_id", "q", "s.state_id"),  # two's complement: the same 8 bytes
        ("ifname", "16s", ifname),
        ("w_addr0", "16s", "wk.addr0"), ("w_addr1", "16s", "wk.addr1"), ("w_key", "q", key("wk")),
        ("s_addr0", "16s", "sk.addr0"), ("s_addr1", "16s", "sk.addr1"), ("s_key", "q", key("sk")),
        *peer_words("src"), *peer_words("dst"),
        ("rt_addr", "16s", f"COALESCE(s.rt_addr, {NO_ADDRESS})"),
        ("rule_anchor", "q", _word(("s.rule", 32), ("s.anchor", 32))),
        ("nat_rule", "I", "s.nat_rule"),
        ("creation", "I", f"({ref} - {pick('created_at')})"),
        ("expire", "I", f"({pick('expires_at')} - {ref})"),
        ("v_packets0", "Q", pick("packets0")), ("v_packets1", "Q", pick("packets1")),
        ("v_bytes0", "Q", pick("bytes0")), ("v_bytes1", "Q", pick("bytes1")),
        ("creatorid_rtableid0", "q", _word(("s.creatorid", 32), ("s.rtableid0", 32))),
        ("rtableid1_mss_af_proto", "q", _word(("s.rtableid1", 32), ("s.max_mss", 16),
                                              ("s.af", 8), ("s.proto", 8))),
        ("flags", "q", _word(("s.direction", 8), ("s.log", 8), ("s.rt", 8),
                             (pick("timeout"), 8), (pick("sync_flags"), 8),
                             (pick("updates"), 8), ("s.min_ttl", 8), ("s.set_tos", 8))),
        ("state_flags_prio", "I", _word((pick("state_flags"), 16), ("s.set_prio0", 8),
                                        ("s.set_prio1", 8))),
    ]


# addresses.id start at 1 (next_ids): 0 stands for no address (rt_addr).
NO_ADDRESS = 0
_LAYOUT = _record_select(lambda col: col, lambda side, col: col)
# What history_rows() selects first: its names, and the record's fields
# (struct format) they give.
RECORD_NAMES = tuple(name for name, _fmt, _sql in _LAYOUT)
RECORD_FORMAT = ">" + "".join(fmt for _name, fmt, _sql in _LAYOUT)

_PEER_ALIAS = {"src": "ps", "dst": "pd"}


def _record_columns(conn, sampled, ref):
    """The SQL of the record's columns: current values, or with sampled those
    of the sample x where one holds the collection, and the peers of the peer
    sample y where one does (one CASE per column, so a word is computed from
    one side only). ref: the SQL of the time of the collection whose values a
    row carries.

    SQLite hands the interface name over as bytes (CAST ... AS BLOB keeps
    the stored text's bytes), which Python packs without a lookup per row.
    """
    sqlite = conn.dialect.name == "sqlite"
    ifname = "CAST(s.ifname AS BLOB)" if sqlite else "s.ifname"
    current = _record_select(lambda col: f"s.{col}",
                             lambda side, col: f"{_PEER_ALIAS[side]}.{col}", not sqlite,
                             ref, ifname)
    if not sampled:
        return ", ".join(f"{sql} AS {name}" for name, _fmt, sql in current)
    held = _record_select(lambda col: f"x.{col}", lambda side, col: f"y.{side}_{col}",
                          not sqlite, ref, ifname)

    def column(name, now, then):
        if now == then:
            return now
        sample = "y" if name.startswith(("src_", "dst_")) else "x"
        return f"CASE WHEN {sample}.state_pk IS NULL THEN {now} ELSE {then} END"

    return ", ".join(f"{column(name, now, then)} AS {name}"
                     for (name, _fmt, now), (_n, _f, then) in zip(current, held))


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


def _end_filter(name, bounds, column, afto_wire_column, params):
    """s.pk with an address in [first, last] at one end (local: column addr1 of
    either key; remote: addr0). An af-to state's stack key has its sides swapped
    (the initiator's new source at [1], the responder at [0]), so its wire key
    has that end at the other index: the ends pfctl prints its two sides with."""
    af, first, last = bounds
    params[f"{name}_af"], params[f"{name}_lo"], params[f"{name}_hi"] = af, first, last
    ids = (f"SELECT id FROM addresses WHERE af = :{name}_af "
           f"AND bin BETWEEN :{name}_lo AND :{name}_hi")
    afto = ("EXISTS (SELECT 1 FROM state_keys o WHERE o.state_pk = k.state_pk "
            "AND o.side = 1 AND o.af <> k.af)")
    return (f"s.pk IN (SELECT state_pk FROM state_keys WHERE {column} IN ({ids}) "
            f"AND mirror = 0 AND side = 1 "
            f"UNION SELECT k.state_pk FROM state_keys k WHERE k.{column} IN ({ids}) "
            f"AND k.mirror = 0 AND k.side = 0 AND NOT {afto} "
            f"UNION SELECT k.state_pk FROM state_keys k WHERE k.{afto_wire_column} IN ({ids}) "
            f"AND k.mirror = 0 AND k.side = 0 AND {afto})")


def history_rows(conn, f, at_row):
    """The rows History rebuilds PFState objects from, streamed.

    Each row starts with the record's columns (RECORD_NAMES, the record's
    fields by RECORD_FORMAT once the caller has turned the interface name
    and address ids into bytes); the history columns follow.

    With at_row = (collection id, time): the states alive in that collection
    (absences kept as samples with present = 0 excluded), each with the
    values in force then (the sample holding them, else the current ones;
    exact = 0 where retention dropped them). Without: last observed values.

    Addresses come as addresses.id and the first collection as its id
    (address_bins() and collection_times_of() resolve the few distinct
    ones): a join per row for them cost more than the rest of the query.
    """
    sql, params = _history_sql(conn, f, at_row, history=True)
    return conn.execution_options(stream_results=True).execute(text(sql), params)


def table_rows(conn, at_row):
    """The record's columns (as history_rows()) of every state alive in
    collection at_row = (id, time), in no particular order, as plain tuples.

    Fetched through the DBAPI cursor: SQLAlchemy's row objects were about
    5% of what table_at() costs for a 100,000-state collection (callgrind).
    """
    sql, params = _history_sql(conn, HistoryFilters(), at_row, history=False)
    compiled = text(sql).compile(dialect=conn.dialect)
    if compiled.positional:
        args = tuple(params[name] for name in compiled.positiontup)
    else:
        args = {name: params[name] for name in compiled.params}
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(compiled.string, args)
        return cursor.fetchall()
    finally:
        cursor.close()


def _samples_past(conn, collection_id):
    """Whether any sample holds values for collections after collection_id."""
    return conn.execute(select(Sample.__table__.c.state_pk)
                        .where(Sample.__table__.c.valid_until > collection_id)
                        .limit(1)).first() is not None


def _history_sql(conn, f, at_row, history):
    """(SQL, parameters) of history_rows() and, without history, of
    table_rows() (unordered: table_at() sorts the records by id)."""
    latest = latest_collection(conn)
    params = {"latest_at": latest[1] if latest else 0}
    where = []
    # A sample ends where newer values begin, so usually none holds the
    # newest collection: then every state there carries its current values,
    # without a join to samples and a CASE per column.
    sampled = at_row is not None and _samples_past(conn, at_row[0])
    if at_row is not None:
        params["c"], params["c_at"] = at_row
        # A state's samples cover disjoint runs of collections
        # [valid_from, valid_until), so at most one holds collection c.
        # Its peers then are those of its first peer sample after c, if any:
        # peers change only where values do, so only where a sample holds c.
        # The first sample after c holds c if it began by c: found by one or
        # two lookups per state (_sample_after), not by walking later samples.
        sample_join = (f"LEFT JOIN samples x ON x.state_pk = s.pk AND x.valid_until = "
                       f"{_sample_after('s', ':c')} AND x.valid_from <= :c "
                       "LEFT JOIN peer_samples y ON x.state_pk IS NOT NULL "
                       "AND y.state_pk = s.pk AND y.valid_until = (SELECT min(z.valid_until) "
                       "FROM peer_samples z WHERE z.state_pk = s.pk AND z.valid_until > :c)"
                       ) if sampled else ""
        if _narrowed_by_keys(f):
            # The key filter drives; ended_before_at only prunes.
            where.append("(s.ended_before_at IS NULL OR s.ended_before_at >= :c_at)")
        else:
            # Collection times never go back: a state alive at c is open or
            # ended at or after c_at. Both halves are ranges of the indexed
            # ended_before_at, so the table is never scanned whole; and pks
            # follow first sight, so the states first seen after c (open
            # ones too) stay in the index, not in the list.
            params["pk_end"] = first_pk_after(conn, at_row[0])
            where.append("s.pk IN (SELECT pk FROM states WHERE ended_before_at IS NULL "
                         "AND pk < :pk_end UNION ALL SELECT pk FROM states "
                         "WHERE ended_before_at >= :c_at AND pk < :pk_end)")
        where += ["s.first_seen <= :c", "(s.ended_before IS NULL OR s.ended_before > :c)"]
        if sampled:
            # Sample columns are NOT NULL: a NULL one means no sample holds c.
            where.append("(x.present IS NULL OR x.present = 1)")
            exact = ("CASE WHEN x.state_pk IS NOT NULL OR s.values_since <= :c "
                     "THEN 1 ELSE 0 END")
            pick = lambda col: f"COALESCE(x.{col}, s.{col})"  # noqa: E731
        else:
            exact = "CASE WHEN s.values_since <= :c THEN 1 ELSE 0 END"
            pick = lambda col: f"s.{col}"  # noqa: E731
        ref_at = ":c_at"
        refs = ""
    else:
        sample_join = ""
        ref_at = "COALESCE(s.last_seen_at, :latest_at)"
        refs = ("COALESCE(s.last_seen, (SELECT max(id) FROM collections)) AS ref_collection, "
                f"{ref_at} AS ref_at, ")
        exact = "1"
        pick = lambda col: f"s.{col}"  # noqa: E731
    columns = _record_columns(conn, sampled, ref_at)
    if history:
        columns += (f", {refs}s.first_seen, s.last_seen_at, s.ended_before_at, "
                    f"{exact} AS exact")
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
        where.append(_end_filter("local", f.local, "addr1", "addr0", params))
    if f.remote is not None:
        where.append(_end_filter("remote", f.remote, "addr0", "addr1", params))
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
        where.append("s.ended_before_at IS NULL")     # indexed; set with ended_before
    if f.closed:
        where.append("s.ended_before IS NOT NULL")
    if f.min_bytes is not None:
        params["min_bytes"] = f.min_bytes
        where.append(f"{_bytes_sum(pick)} >= :min_bytes")
    if f.min_duration is not None:
        params["min_duration"] = f.min_duration
        where.append("(COALESCE(s.last_seen_at, :latest_at) - s.created_at) >= :min_duration")
    order = _ORDERS.get(f.order)
    if order is None:
        raise ValueError(f"order must be one of {', '.join(_ORDERS)}")
    # PostgreSQL takes an output column's alias in ORDER BY only on its own,
    # not inside an expression: spell the values out.
    order = order.replace("(v_bytes0 + v_bytes1)", _bytes_sum(pick))
    sql = (
        f"SELECT {columns} "
        f"FROM states s "
        f"JOIN state_keys wk ON wk.state_pk = s.pk AND wk.side = 0 "
        f"JOIN state_keys sk ON sk.state_pk = s.pk AND sk.side = 1 "
        f"JOIN state_peers ps ON ps.state_pk = s.pk AND ps.side = 0 "
        f"JOIN state_peers pd ON pd.state_pk = s.pk AND pd.side = 1 "
        f"{sample_join} "
        + (f"WHERE {' AND '.join(where)}" if where else "")
        + (f" ORDER BY {order}" if history else "")
        + (f" LIMIT {int(f.limit)}" if f.limit is not None else ""))
    return sql, params


def _bytes_sum(pick):
    """bytes0 + bytes1, in NUMERIC: each is stored up to 2**63 - 1, and PostgreSQL
    refuses a sum out of BIGINT's range (SQLite's integers are left as they are)."""
    return f"(CAST({pick('bytes0')} AS NUMERIC) + {pick('bytes1')})"


def _narrowed_by_keys(f):
    """Whether a filter looks states up by their keys (an index of state_keys)."""
    return any(v is not None for v in (f.host, f.local, f.remote, f.port))


_IN_CHUNK = 900  # ids per IN list: below any SQLite's limit on parameters (999 before 3.32)


def _by_ids(conn, id_column, value_column, ids):
    """{id: value} through the DBAPI: 100,000 ids are a hundred IN lists, and
    compiling them through SQLAlchemy would cost more than running them."""
    ids = sorted(ids)
    ph = _ph(conn)
    table = id_column.table.name
    found = {}
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ids[i:i + _IN_CHUNK]
        found.update(conn.exec_driver_sql(
            f"SELECT {id_column.name}, {value_column.name} FROM {table} "
            f"WHERE {id_column.name} IN ({', '.join([ph] * len(chunk))})", tuple(chunk)).fetchall())
    return found


def address_bins(conn, ids):
    """{addresses.id: binary form} of the given ids."""
    return _by_ids(conn, Address.id, Address.bin, ids)


def collection_times_of(conn, ids):
    """{collections.id: collected_at} of the given ids."""
    return _by_ids(conn, Collection.id, Collection.collected_at, ids)


# -- summaries -------------------------------------------------------------------

def summary(conn, top=5, pending=False):
    """The history in a few numbers: snapshots and pfsync batches (each: how many, the
    first and last time), states, top talkers by bytes (from the rollups: local and
    remote as pfhistory.rollup defines them; pending: with fill_open_rollups' hours)."""
    c = Collection
    kinds = {kind: (n, first, last) for kind, n, first, last in conn.execute(
        select(c.kind, func.count(), func.min(c.collected_at), func.max(c.collected_at))
        .group_by(c.kind))}
    states, open_ = conn.execute(select(func.count(), func.count(State.pk).filter(
        State.ended_before.is_(None)))).one()
    ph = _ph(conn)

    def talkers(dim):
        # NUMERIC: both directions may hold up to 2**63 - 1 (see _bytes_sum).
        return [tuple(r) for r in conn.exec_driver_sql(
            f"SELECT a.text, SUM(CAST(ru.bytes_out AS NUMERIC) + ru.bytes_in) AS b, "
            f"SUM(ru.states) "
            f"FROM {_ROLLUP_SOURCE[pending]} JOIN addresses a ON a.id = ru.key "
            f"WHERE ru.dim = {ph} GROUP BY a.text ORDER BY b DESC, a.text LIMIT {int(top)}",
            (dim,))]

    none = (0, None, None)
    return {"snapshots": kinds.get(0, none), "batches": kinds.get(1, none),
            "states": states, "open": open_, "closed": states - open_,
            "top_local": talkers(1), "top_remote": talkers(2)}


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


# -- rollups (for reports) ---------------------------------------------------------

_ROLLUP_COLUMNS = ("hour", "dim", "key", "key2", "label", "states", "halfopen",
                   "packets_out", "packets_in", "bytes_out", "bytes_in")
_ROLLUP_KEYS = ("hour", "dim", "key", "key2", "label")
# Rollups as reports read them: the table, or the table and the hours not yet in it,
# computed for this connection into a temporary table (fill_open_rollups).
_OPEN_ROLLUPS = "pfh_open_rollups"
_ROLLUP_SOURCE = {
    False: "rollups ru",
    True: (f"(SELECT {', '.join(_ROLLUP_COLUMNS)} FROM rollups UNION ALL "
           f"SELECT {', '.join(_ROLLUP_COLUMNS)} FROM {_OPEN_ROLLUPS}) ru"),
}


def rollup_frontier(conn):
    """(hour, last_collection) of the newest hour in rollups, or None."""
    row = conn.exec_driver_sql(
        "SELECT hour, last_collection FROM rollup_hours ORDER BY hour DESC LIMIT 1").first()
    return tuple(row) if row else None


def newest_collection(conn):
    """(max id, max collected_at) of all collections, snapshots and pfsync batches,
    or None."""
    row = conn.execute(select(func.max(Collection.id), func.max(Collection.collected_at))
                       ).first()
    return tuple(row) if row and row[0] is not None else None


def next_collection(conn, after_id):
    """(id, collected_at) of the first collection after after_id (by id), or None."""
    row = conn.exec_driver_sql(
        f"SELECT id, collected_at FROM collections WHERE id > {_ph(conn)} "
        f"ORDER BY id LIMIT 1", (after_id,)).first()
    return tuple(row) if row else None


def first_collection_id(conn):
    """The id of the history's first collection (its baseline), or None."""
    return conn.execute(select(func.min(Collection.id))).scalar()


def first_collection_after(conn, after_id, at):
    """The smallest id above after_id of a collection taken after at, or None."""
    ph = _ph(conn)
    return conn.exec_driver_sql(
        f"SELECT min(id) FROM collections WHERE id > {ph} AND collected_at > {ph}",
        (after_id, at)).scalar()


def first_pk_after(conn, collection_id):
    """The smallest pk of a state first seen after collection_id (max pk + 1 if none).

    The collector hands out pks in collection order, so first_seen never
    decreases with pk: a binary search on the primary key answers without an
    index on first_seen.
    """
    ph = _ph(conn)
    top = conn.exec_driver_sql("SELECT max(pk) FROM states").scalar() or 0
    lo, hi = 1, top + 1
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.exec_driver_sql(
            f"SELECT pk, first_seen FROM states WHERE pk >= {ph} ORDER BY pk LIMIT 1",
            (mid,)).first()
        if row is None or row[1] > collection_id:
            hi = mid
        else:
            lo = row[0] + 1
    return lo


def max_pk(conn):
    return conn.exec_driver_sql("SELECT max(pk) FROM states").scalar() or 0


def _named(conn, sql, values):
    """sql with :name parameters as the driver's positional placeholders, and the
    values in their order (one SQL text for SQLite and PostgreSQL)."""
    import re

    names = re.findall(r":(\w+)", sql)
    return re.sub(r":\w+", _ph(conn), sql), tuple(values[n] for n in names)


def _rollup_versions(column):
    """A counter of a state at the hour's last collection (:last) and before the hour
    (:before; its first observation for the history's first collection, :first_id; 0
    for a state new in the hour): the row's own value when it held then, else the
    sample it replaced; NULL when that sample has expired."""
    at_end = (f"CASE WHEN s.values_since <= :last THEN s.{column} "
              f"WHEN e.valid_from <= :last THEN e.{column} END")
    before = (f"CASE WHEN s.first_seen <= :before THEN "
              f"(CASE WHEN f.valid_from <= :before THEN f.{column} END) "
              f"WHEN s.first_seen = :first_id THEN "
              f"(CASE WHEN s.values_since = s.first_seen THEN s.{column} ELSE n.{column} END) "
              f"ELSE 0 END")
    return f"({at_end}) - ({before})"


# What an hourly rollup reads of a state: its identity (sides, rule, where), whether it
# is new in the hour and then whether it was half-open (TCP, both peers before
# ESTABLISHED at its first observation), and what each counter moved in the hour. The
# versions of its values come from the row itself or from samples, each found through
# the sample holding that collection (_sample_after): e at the hour's last
# collection, f at the one before the hour, n at its first observation;
# the peers then from its first peer sample np, else (they never changed) its own.
_ROLLUP_HOUR_SQL = (
    "SELECT s.pk, s.direction, s.proto, s.rule, s.anchor, s.ifname, "
    "wk.addr0, wk.port0, wk.addr1, wk.port1, sk.addr0, sk.port0, sk.addr1, sk.port1, "
    "wk.mirror, CASE WHEN wk.af <> sk.af THEN 1 ELSE 0 END, "
    "CASE WHEN s.first_seen > :before THEN 1 ELSE 0 END, "
    "CASE WHEN s.first_seen > :before AND s.proto = 6 THEN (CASE "
    "WHEN s.values_since = s.first_seen THEN "
    "(CASE WHEN ps.state < 4 AND pd.state < 4 THEN 1 ELSE 0 END) "
    "WHEN n.state_pk IS NOT NULL THEN (CASE WHEN COALESCE(np.src_state, ps.state) < 4 "
    "AND COALESCE(np.dst_state, pd.state) < 4 THEN 1 ELSE 0 END) END) "
    "ELSE 0 END, "
    + ", ".join(_rollup_versions(c) for c in ("packets0", "packets1", "bytes0", "bytes1")) +
    " FROM states s "
    "JOIN state_keys wk ON wk.state_pk = s.pk AND wk.side = 0 "
    "JOIN state_keys sk ON sk.state_pk = s.pk AND sk.side = 1 "
    "LEFT JOIN samples e ON s.values_since > :last AND e.state_pk = s.pk "
    f"AND e.valid_until = {_sample_after('s', ':last')} "
    "LEFT JOIN samples f ON s.first_seen <= :before AND f.state_pk = s.pk "
    f"AND f.valid_until = {_sample_after('s', ':before')} "
    "LEFT JOIN samples n ON s.first_seen > :before AND s.values_since > s.first_seen "
    "AND (s.proto = 6 OR s.first_seen = :first_id) AND n.state_pk = s.pk "
    f"AND n.valid_until = {_sample_after('s', 's.first_seen')} "
    "AND n.valid_from = s.first_seen "
    "LEFT JOIN peer_samples np ON n.state_pk IS NOT NULL AND s.proto = 6 "
    "AND np.state_pk = s.pk AND np.valid_until = "
    "(SELECT min(x.valid_until) FROM peer_samples x WHERE x.state_pk = s.pk) "
    "LEFT JOIN state_peers ps ON s.first_seen > :before AND s.proto = 6 "
    "AND (s.values_since = s.first_seen OR (n.state_pk IS NOT NULL AND np.state_pk IS NULL)) "
    "AND ps.state_pk = s.pk AND ps.side = 0 "
    "LEFT JOIN state_peers pd ON ps.state_pk IS NOT NULL AND pd.state_pk = s.pk "
    "AND pd.side = 1 "
    "WHERE {where} AND s.values_since > :before AND s.first_seen <= :last")


def rollup_hour_states(conn, before, last, first_id, closed):
    """The states an hour's rollup counts: those whose values changed after collection
    before (the last one before the hour) and that some collection up to last (the
    hour's last) saw; the open ones, or (closed) those that ended after before.
    first_id: the history's first collection (its states' bytes are a baseline).

    Rows: pk, direction, proto, rule, anchor, ifname, the wire key's addr0, port0,
    addr1, port1, the stack key's addr0, port0, addr1, port1, mirror, af-to (1/0: the
    keys of two families, the stack key's sides swapped), new (1/0), half-open
    (1/0; NULL if unknown), then packets0, packets1, bytes0, bytes1 moved in the hour
    (negative if a counter went back; NULL if a sample they need has expired). States
    whose values did not change since before moved nothing in the hour and were not
    new in it, so they are not read at all."""
    # Open states through the end-time index (NULL while open); states that ended after
    # the hour began through the index of ends by collection.
    where = "s.ended_before > :before" if closed else "s.ended_before_at IS NULL"
    sql, params = _named(conn, _ROLLUP_HOUR_SQL.format(where=where),
                         {"before": before, "last": last, "first_id": first_id})
    # Plain DBAPI tuples, read in chunks: a million rows. PostgreSQL's drivers would
    # fetch them all at once unless the cursor is a named (server-side) one.
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.cursor(name="pfh_rollup_hour")
    else:
        cursor = conn.connection.cursor()
    cursor.execute(sql, params)
    return cursor


def address_ids_in(conn, ranges):
    """addresses.id of every stored address inside the (af, first, last) ranges."""
    ids = set()
    for af, first, last in ranges:
        ids.update(conn.execute(select(Address.id).where(
            Address.af == af, Address.bin >= first, Address.bin <= last)).scalars())
    return ids


def upsert_rollups(conn, rows):
    """Add rows (_ROLLUP_COLUMNS order) to the hours' rollups."""
    sums = ", ".join(f"{c} = rollups.{c} + excluded.{c}"
                     for c in _ROLLUP_COLUMNS if c not in _ROLLUP_KEYS)
    _executemany(conn, _insert_sql("rollups", _ROLLUP_COLUMNS)
                 + f" ON CONFLICT ({', '.join(_ROLLUP_KEYS)}) DO UPDATE SET {sums}", rows)


def insert_rollup_hour(conn, hour, first, last, rolled_up, states, duration_ms):
    """Record an hour as rolled up, and mark its collections (first to last, by id)."""
    conn.execute(RollupHour.__table__.insert().values(
        hour=hour, first_collection=first, last_collection=last, rolled_up=rolled_up,
        states=states, duration_ms=duration_ms))
    conn.execute(update(Collection).where(Collection.id >= first, Collection.id <= last)
                 .values(rolled_up=rolled_up))


def fill_open_rollups(conn, rows):
    """Rollup rows of hours not in the table, for this connection's reads only (a
    temporary table: reports open the database read-only)."""
    _temp_table(conn, _OPEN_ROLLUPS,
                "hour BIGINT, dim SMALLINT, key BIGINT, key2 BIGINT, label TEXT, "
                "states INTEGER, halfopen INTEGER, packets_out BIGINT, packets_in BIGINT, "
                "bytes_out BIGINT, bytes_in BIGINT")
    _executemany(conn, _insert_sql(_OPEN_ROLLUPS, _ROLLUP_COLUMNS), rows)


# -- reports -----------------------------------------------------------------------

def collections_between(conn, since, until):
    """Snapshot collections (not pfsync batches) taken in [since, until] (epoch s),
    oldest first:
    (id, collected_at, states, inserted, closed, packets, bytes, rolled_up)."""
    c = Collection
    return [tuple(r) for r in conn.execute(
        select(c.id, c.collected_at, c.states, c.inserted, c.closed, c.packets, c.bytes,
               c.rolled_up)
        .where(c.collected_at >= since, c.collected_at <= until, c.kind == 0)
        .order_by(c.id))]


def batches_between(conn, since, until):
    """pfsync batches in [since, until], oldest first:
    (id, collected_at, inserted, closed, packets, bytes, rolled_up)."""
    c = Collection
    return [tuple(r) for r in conn.execute(
        select(c.id, c.collected_at, c.inserted, c.closed, c.packets, c.bytes, c.rolled_up)
        .where(c.collected_at >= since, c.collected_at <= until, c.kind == 1)
        .order_by(c.id))]


def recorders_between(conn, since, until):
    """Who recorded the collections in [since, until], oldest first: (kind (0
    snapshots, 1 pfsync batches), host, creatorid or None, how many, first and
    last collected_at) per kind, host and the most common creatorid."""
    c = Collection
    return [tuple(r) for r in conn.execute(
        select(c.kind, c.host, c.creatorid, func.count(), func.min(c.collected_at),
               func.max(c.collected_at))
        .where(c.collected_at >= since, c.collected_at <= until)
        .group_by(c.kind, c.host, c.creatorid)
        .order_by(func.min(c.collected_at), c.kind, c.host, c.creatorid))]


def collection_neighbours(conn, since, until):
    """collected_at of the newest collection before since and of the oldest after
    until (None where there is none), and the id of the history's first."""
    c = Collection
    before = conn.execute(select(func.max(c.collected_at))
                          .where(c.collected_at < since, c.kind == 0)).scalar()
    after = conn.execute(select(func.min(c.collected_at))
                         .where(c.collected_at > until, c.kind == 0)).scalar()
    first = conn.execute(select(func.min(c.id))).scalar()
    return before, after, first


def rollup_totals(conn, dims, hour_lo, hour_hi, pending=False):
    """Every (dim, key, key2, label) of some (small) dimensions in the hours
    [hour_lo, hour_hi) with its sums (states, halfopen, packets_out, packets_in,
    bytes_out, bytes_in). pending: with the hours fill_open_rollups computed."""
    ph = _ph(conn)
    dims = [int(d) for d in dims]
    return conn.exec_driver_sql(
        f"SELECT dim, key, key2, label, SUM(states), SUM(halfopen), SUM(packets_out), "
        f"SUM(packets_in), SUM(bytes_out), SUM(bytes_in) FROM {_ROLLUP_SOURCE[pending]} "
        f"WHERE hour >= {ph} AND hour < {ph} AND dim IN ({', '.join(map(str, dims))}) "
        f"GROUP BY dim, key, key2, label", (hour_lo, hour_hi)).fetchall()


def rollup_top(conn, dim, hour_lo, hour_hi, limit, pending=False):
    """The keys of one dimension that rank in the first limit by bytes out, bytes
    in, both, states or half-open states over the hours [hour_lo, hour_hi), with
    their sums: (key, key2, label, states, halfopen, packets_out, packets_in,
    bytes_out, bytes_in). One GROUP BY however many keys there are (a day of
    remote hosts is about a million); each ranking breaks ties as the report
    does, so the report's top lists over these rows are exact."""
    ph = _ph(conn)
    lim = int(limit)
    orders = ("bo DESC, bi DESC, key", "bi DESC, bo DESC, key",
              "bo + bi DESC, st DESC, key", "st DESC, bo + bi DESC, key",
              "half DESC, st DESC, key")
    picks = " UNION ".join(f"SELECT * FROM (SELECT key AS k FROM g ORDER BY {o} LIMIT {lim}) "
                           f"AS t{i}" for i, o in enumerate(orders))
    return conn.exec_driver_sql(
        f"WITH g AS (SELECT key, SUM(states) AS st, SUM(halfopen) AS half, "
        f"SUM(packets_out) AS po, SUM(packets_in) AS pi, SUM(bytes_out) AS bo, "
        f"SUM(bytes_in) AS bi FROM {_ROLLUP_SOURCE[pending]} WHERE dim = {ph} "
        f"AND hour >= {ph} AND hour < {ph} GROUP BY key) "
        f"SELECT key, 0, '', st, half, po, pi, bo, bi FROM g WHERE key IN ({picks})",
        (dim, hour_lo, hour_hi)).fetchall()


def rollup_bursts(conn, dim, hour_lo, hour_hi, at_least, pending=False):
    """(hour, key, states) of one dimension's hours with at least that many states."""
    ph = _ph(conn)
    return conn.exec_driver_sql(
        f"SELECT hour, key, states FROM {_ROLLUP_SOURCE[pending]} WHERE dim = {ph} "
        f"AND hour >= {ph} "
        f"AND hour < {ph} AND states >= {ph}", (dim, hour_lo, hour_hi, at_least)).fetchall()


def rollup_hours_between(conn, hour_lo, hour_hi):
    """(hour, first_collection) of the hours in [hour_lo, hour_hi) stored in rollups:
    those some collection, snapshot or pfsync batch, fell in."""
    ph = _ph(conn)
    return [tuple(r) for r in conn.exec_driver_sql(
        f"SELECT hour, first_collection FROM rollup_hours WHERE hour >= {ph} "
        f"AND hour < {ph} ORDER BY hour", (hour_lo, hour_hi))]


def rollup_hourly(conn, dim, keys, hour_lo, hour_hi, pending=False):
    """(hour, key, states, bytes_out, bytes_in) of some keys of one dimension."""
    if not keys:
        return []
    ph = _ph(conn)
    marks = ", ".join([ph] * len(keys))
    return conn.exec_driver_sql(
        f"SELECT hour, key, SUM(states), SUM(bytes_out), SUM(bytes_in) "
        f"FROM {_ROLLUP_SOURCE[pending]} "
        f"WHERE dim = {ph} AND hour >= {ph} AND hour < {ph} AND key IN ({marks}) "
        f"GROUP BY hour, key ORDER BY hour",
        (dim, hour_lo, hour_hi, *keys)).fetchall()


def address_texts(conn, ids):
    """{addresses.id: text} for ids."""
    ids = sorted({i for i in ids if i is not None})
    out = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        out.update(conn.execute(select(Address.id, Address.text)
                                .where(Address.id.in_(chunk))).all())
    return out


# A past connection as reports list it: endpoints as text, lifetime, bytes, and
# whether it is af-to (its keys of two families: the stack key's sides swapped).
_REPORT_STATE = (
    "s.pk, s.proto, s.direction, s.ifname, s.rule, s.anchor, "
    "wa0.text, wk.port0, wa1.text, wk.port1, sa0.text, sk.port0, sa1.text, sk.port1, "
    "wk.mirror, s.created_at, COALESCE(s.last_seen_at, {latest}), s.ended_before_at, "
    "s.bytes0, s.bytes1, s.packets0, s.packets1, "
    "CASE WHEN wk.af <> sk.af THEN 1 ELSE 0 END "
    "FROM states s "
    "JOIN state_keys wk ON wk.state_pk = s.pk AND wk.side = 0 "
    "JOIN state_keys sk ON sk.state_pk = s.pk AND sk.side = 1 "
    "JOIN addresses wa0 ON wa0.id = wk.addr0 JOIN addresses wa1 ON wa1.id = wk.addr1 "
    "JOIN addresses sa0 ON sa0.id = sk.addr0 JOIN addresses sa1 ON sa1.id = sk.addr1 ")


def _latest_at(conn):
    return conn.execute(select(func.max(Collection.collected_at))).scalar() or 0


def states_by_pk(conn, pks):
    """Report rows (see _REPORT_STATE) of some states."""
    pks = sorted(set(pks))
    if not pks:
        return []
    ph = _ph(conn)
    latest = _latest_at(conn)
    rows = []
    for start in range(0, len(pks), 500):
        chunk = pks[start:start + 500]
        rows += conn.exec_driver_sql(
            "SELECT " + _REPORT_STATE.format(latest=ph)
            + f"WHERE s.pk IN ({', '.join([ph] * len(chunk))})", (latest, *chunk)).fetchall()
    return rows


def states_seen(conn, lo, hi):
    """How many states the collections lo..hi (ids, snapshots and pfsync batches)
    saw: those first seen among them (a pk range), and older ones still open or
    last seen at lo or later, unless one absence (a present = 0 sample, never
    expired) spans all of lo..hi. Indexes only: the pk, the two end indexes of
    states and the samples' state index."""
    ph = _ph(conn)
    pk_lo, pk_hi = first_pk_after(conn, lo - 1), first_pk_after(conn, hi) - 1
    absent = (f"NOT EXISTS (SELECT 1 FROM samples a WHERE a.state_pk = s.pk "
              f"AND a.present = 0 AND a.valid_from <= {ph} AND a.valid_until > {ph} "
              f"AND ({SAMPLE_INDEXED}))")
    return conn.exec_driver_sql(
        f"SELECT (SELECT count(*) FROM states WHERE pk >= {ph} AND pk <= {ph}) "
        f"+ (SELECT count(*) FROM states s WHERE s.ended_before_at IS NULL "
        f"AND s.pk < {ph} AND {absent}) "
        f"+ (SELECT count(*) FROM states s WHERE s.ended_before > {ph} "
        f"AND s.last_seen >= {ph} AND s.pk < {ph} AND {absent})",
        (pk_lo, pk_hi, pk_lo, lo, hi, lo, lo, pk_lo, lo, hi)).scalar()


def collection_states_at(conn, at):
    """(id, states) of the newest collection at or before instant at, or None."""
    row = conn.execute(select(Collection.id, Collection.states)
                       .where(Collection.collected_at <= at, Collection.kind == 0)
                       .order_by(Collection.collected_at.desc(), Collection.id.desc())
                       .limit(1)).first()
    return tuple(row) if row else None


def states_alive_at(conn, at, pk_max, until, limit, open_for=None, by_rowid=False):
    """States alive at instant at (first seen at or before it: pk <= pk_max; not
    ended by then), with open_for: open at least that many seconds when last
    seen by then (its last sighting, the newest collection while open, at the
    latest at: the history knows nothing later): how many, and the limit
    longest-lived (lifetime counted up to until) as report rows.

    by_rowid: scan the pk range rather than the end-time index (SQLite only;
    the caller knows which of the two is smaller)."""
    ph = _ph(conn)
    latest = _latest_at(conn)
    end, pk = "s.ended_before_at", "s.pk"
    if conn.dialect.name == "sqlite":     # a unary + keeps SQLite off that index
        if by_rowid:
            end = "+" + end
        else:
            pk = "+" + pk
    where = (f"{pk} <= {ph} AND ({end} > {ph} OR {end} IS NULL) "
             f"AND s.created_at <= {ph}")
    params = (pk_max, at, at if open_for is None else min(at, latest) - open_for)
    if open_for is not None:
        where += f" AND s.created_at + {ph} <= COALESCE(s.last_seen_at, {ph})"
        params += (int(open_for), latest)
    total = conn.exec_driver_sql(f"SELECT count(*) FROM states s WHERE {where}",
                                 params).scalar()
    seen = f"COALESCE(s.last_seen_at, {ph})"
    rows = conn.exec_driver_sql(
        "SELECT " + _REPORT_STATE.format(latest=ph) + f"WHERE {where} "
        f"ORDER BY CASE WHEN {seen} < {ph} THEN {seen} ELSE {ph} END - s.created_at DESC, "
        f"s.pk LIMIT {int(limit)}",
        (latest, *params, latest, until, latest, until)).fetchall()
    return total, rows


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
# SEQ_GT(a, b) of u32 sequence numbers: (int32)(a - b) > 0. Written without %, which
# PostgreSQL's drivers would take for a placeholder: a - b lies in (-2^32, 2^32).
_SEQ_GT = ("(({a}) - ({b}) BETWEEN 1 AND 2147483647 "
           "OR ({a}) - ({b}) BETWEEN -4294967295 AND -2147483649)")
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
    samples = conn.exec_driver_sql(
        f"INSERT INTO samples ({_SAMPLE_COLUMNS}) "
        f"SELECT s.pk, {ph}, s.values_since, 1, {_SAMPLE_VALUES} "
        f"FROM pfh_sync_c c JOIN states s ON {_C_JOIN} "
        f"WHERE c.has_peers = 1 AND s.ended_before IS NULL AND s.values_since < {ph}",
        (collection_id, collection_id)).rowcount
    conn.exec_driver_sql(
        f"INSERT INTO peer_samples ({_PEER_SAMPLE_COLUMNS}) "
        f"SELECT s.pk, {ph}, {_PEER_SAMPLE_VALUES} "
        f"FROM pfh_sync_c c JOIN states s ON {_C_JOIN} {_BOTH_PEERS} "
        f"WHERE c.has_peers = 1 AND s.ended_before IS NULL AND s.values_since < {ph}",
        (collection_id, collection_id))
    for side, prefix in ((0, "src_"), (1, "dst_")):
        sets = ", ".join(f"{f} = c.{prefix}{f}" for f in PEER_FIELDS)
        conn.exec_driver_sql(
            f"UPDATE state_peers SET {sets} FROM pfh_sync_c c JOIN states s ON {_C_JOIN} "
            f"WHERE state_peers.state_pk = s.pk AND state_peers.side = {side} "
            f"AND c.has_peers = 1 AND s.ended_before IS NULL")
    # dyn_hash 0 is "not known": the next snapshot compares unequal and records its values.
    updated = conn.exec_driver_sql(
        f"UPDATE states SET timeout = c.timeout, dyn_hash = 0, peer_hash = NULL, "
        f"values_since = {ph} "
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
