"""Where the history lives: database URLs, engines, SQLite pragmas, migrations.

The embedded default is one SQLite file; any SQLAlchemy URL (PostgreSQL for
fleets) can be given with --db or $PFHISTORY_DB. SQLite runs in WAL mode with
a busy timeout so reports read while cron writes, synchronous=FULL so a
power cut never loses a committed collection, and incremental auto-vacuum so
pruning can hand space back without a blocking VACUUM. pfhistory's own
writers run without SQLite's per-row foreign-key checks (they keep references
whole themselves; see _on_sqlite_begin); every other connection has them on.
Files are created owner-only: state tables are sensitive. On PostgreSQL
(psycopg, the postgresql extra) writers take an advisory lock per database as
they begin, which serializes them as BEGIN IMMEDIATE does on SQLite.
"""

import os
import re
import shlex
import sqlite3
from importlib import resources
import stat
import sys
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from pfhistory.exceptions import PFError

__all__ = ["DatabaseError", "default_path", "resolve_url", "open_engine", "alembic_config",
           "schema_status", "current_schema", "history_absent", "require_current_schema",
           "upgrade", "upgrade_to_head", "describe_db_error", "BUSY_TIMEOUT_S",
           "write_transaction"]

DB_ENV = "PFHISTORY_DB"
BUSY_TIMEOUT_S = 30.0


class DatabaseError(PFError):
    """The history database cannot be used as asked."""


def default_path():
    """The embedded database's path on this system."""
    if sys.platform.startswith("openbsd"):
        return Path("/var/db/pfhistory/history.db")
    if os.geteuid() == 0:
        return Path("/var/lib/pfhistory/history.db")
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "pfhistory" / "history.db"


def resolve_url(db=None):
    """A SQLAlchemy URL from --db, $PFHISTORY_DB or the default path.

    A plain path (no "://") means a SQLite file. An empty $PFHISTORY_DB counts
    as unset (as in a crontab's `PFHISTORY_DB=`); an empty --db is a mistake.
    """
    if db is not None:
        text, origin = db, "--db"
    elif os.environ.get(DB_ENV):
        text, origin = os.environ[DB_ENV], f"${DB_ENV}"
    else:
        text, origin = str(default_path()), "the default path"
    if not text:
        raise DatabaseError(f"{origin} is empty: give a file or a database URL")
    if "://" not in text:
        if _URL_LIKE.match(text):
            # postgresql:/db, postgres:db, postgresql//host/db: a URL mistyped, which
            # would otherwise make a SQLite file of that name (from cron, in $HOME).
            as_file = "" if "@" in text else f" (or ./{text} for a SQLite file of that name)"
            raise DatabaseError(
                f"{origin} {_without_password(text)!r} looks like a database URL but is "
                f"not one: write scheme://..., as in postgresql://user@host/database"
                f"{as_file}")
        return make_url("sqlite://").set(database=os.path.abspath(text))
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        raise DatabaseError(f"{origin} {_without_password(text)!r} is not a database URL "
                            f"or path") from None
    if url.get_backend_name() == "postgres":
        # The scheme of libpq's and many hosting services' URLs; SQLAlchemy names
        # the dialect postgresql.
        url = url.set(drivername="postgresql" + url.drivername[len("postgres"):])
    if _is_sqlite(url) and _sqlite_file(url) is None:
        raise DatabaseError(f"{origin} {text!r} is an in-memory database, which keeps "
                            f"nothing: give a file")
    return url


# Text that starts like a database URL (a backend's name, then ":", ";" or "//")
# but has no "://"; "sqlite/h.db" is a file in a directory of that name.
_URL_LIKE = re.compile(r"(?i)(postgres(ql)?|sqlite|mysql|mariadb|oracle|mssql)(\+[\w.]+)?"
                       r"(:|;|//)")


def _without_password(text):
    """text to print: what lies between the scheme and the last @ (user and
    password) hidden."""
    if "://" in text:
        scheme, sep, rest = text.partition("://")
    else:
        like = _URL_LIKE.match(text)
        cut = like.end() if like else 0
        scheme, sep, rest = text[:cut], "", text[cut:]
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def _is_sqlite(url):
    return url.get_backend_name() == "sqlite"


def _sqlite_file(url):
    db = url.database
    return None if not db or db == ":memory:" else Path(db)


# Bytes of the header every SQLite database file begins with.
_SQLITE_HEADER_SIZE = 100


def _prepare_sqlite_file(path, create):
    """Create the file's directory (0700) and the file (0600) if asked."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None             # creating it says what is in the way
    except OSError as e:
        raise DatabaseError(f"{path}: cannot use it as the database: {e.strerror}") from None
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise DatabaseError(f"{path}: is a directory, not a database")
        if not stat.S_ISREG(mode):
            # A device or FIFO: SQLite would write its journal beside it.
            raise DatabaseError(f"{path}: is not a regular file, not a database")
        size = path.stat().st_size
        if 0 < size < _SQLITE_HEADER_SIZE:
            # Too short for SQLite's header: SQLite would take it for an empty
            # database and write over it.
            raise DatabaseError(f"{path}: is not a SQLite database ({size} "
                                f"byte{'s' if size > 1 else ''}, too short to be one)")
        return
    if not create:
        raise DatabaseError(f"{path}: no such database (run `pfhistory collect` first)")
    directory = path.parent
    if not directory.exists():
        try:
            directory.mkdir(mode=0o700, parents=True)
        except OSError as e:
            raise DatabaseError(f"{directory}: cannot create the database directory: "
                                f"{e.strerror}") from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as e:
        raise DatabaseError(f"{path}: cannot create the database: {e.strerror}") from None


def _on_sqlite_connect(dbapi_conn, _record, wait, create):
    """Pragmas for every SQLite connection (see the module docstring); only a
    connection that may create the database sets up a new (empty) file."""
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA synchronous = FULL")
    # A collection touches every row and index of a million-state table: up
    # to 256 MiB of page cache (taken as needed, not reserved) keeps that work
    # in memory instead of spilling dirty pages to the WAL mid-transaction
    # and reading them back.
    cur.execute("PRAGMA cache_size = -262144")
    try:
        if create and cur.execute("PRAGMA page_count").fetchone()[0] == 0:
            # Only a new database can switch; it must happen before any table.
            cur.execute("PRAGMA auto_vacuum = INCREMENTAL")
            cur.execute("PRAGMA journal_mode = WAL")
        # An existing file switches to WAL only once it is known to be a
        # pfhistory database (claim_sqlite_file): another application's is left
        # exactly as it was.
    except sqlite3.OperationalError:
        pass  # read-only file or directory: readers still work
    cur.close()


def _on_sqlite_begin(conn):
    """BEGIN IMMEDIATE for writers: take the write lock up front, so a second
    collector waits (busy_timeout) instead of failing half-way.

    A writer keeps its temporary tables (the collector's staging table, as
    big as the snapshot's changes) and sorts (index builds) in memory rather
    than in a temporary file behind a 2 MiB cache; readers keep the default,
    so a big ORDER BY of a report spills to disk instead of growing memory.
    Temporary data never needs to survive a crash, so this changes nothing
    of what is durable.
    """
    writer = bool(conn.info.get("writer"))
    if conn.info.get("writer_pragmas") != writer:
        conn.exec_driver_sql(f"PRAGMA temp_store = {'MEMORY' if writer else 'DEFAULT'}")
        # Our writers (collect, listen, prune, rollups) keep references whole
        # themselves: children are written after the parents they just wrote
        # or read, prune deletes children before parents (no cascade needed).
        # SQLite's per-row checks would cost a steady 1M-state collection about
        # 3 s (every sample insert looks up its state; every state update
        # scans for referencing rows). tests/test_collect.py runs
        # PRAGMA foreign_key_check on every history it builds. Other
        # connections (migrations, the sqlite3 shell) keep the checks on.
        conn.exec_driver_sql(f"PRAGMA foreign_keys = {'OFF' if writer else 'ON'}")
        conn.info["writer_pragmas"] = writer
    immediate = writer or conn.info.get("migrating")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def history_absent(url):
    """True when recording would make the history from nothing: no SQLite file
    yet (or an empty one), or a database without tables. Asks before anything
    is created or changed, so a collector can check its input first; a history
    already recorded is told by its schema version alone (one query)."""
    if _is_sqlite(url):
        path = _sqlite_file(url)
        if path is None:
            return False
        try:
            if path.stat().st_size == 0:
                return True
        except FileNotFoundError:
            return True
        except OSError:
            return False        # opening it says what is wrong
    try:
        engine = open_engine(url)
        try:
            return (_recorded_revision(engine) is None
                    and schema_status(engine, url)[0] == "empty")
        finally:
            engine.dispose()
    except (PFError, DBAPIError):
        return False            # opening it to record says what is wrong


def open_engine(url, create=False, readonly=False, wait=BUSY_TIMEOUT_S):
    """An Engine for url; creates a missing SQLite file only if create.
    A writer waits up to wait seconds for another one to finish."""
    if _is_sqlite(url):
        path = _sqlite_file(url)
        if path is not None:
            _prepare_sqlite_file(path, create)
            if readonly:
                # On read-only media SQLite cannot make the WAL index (-shm):
                # nothing can change the file there, so read it as immutable.
                flags = "mode=ro" if os.access(path.parent, os.W_OK) else "immutable=1"
                url = make_url(f"sqlite:///file:{path}?{flags}&uri=true")
        # check_same_thread off: the collector runs its long set-wise statements
        # on a second thread while the first diffs (collector._Applier); the two
        # never use a connection at the same time.
        engine = create_engine(url, connect_args={"timeout": wait, "check_same_thread": False})
        event.listen(engine, "connect",
                     lambda dbapi_conn, rec: _on_sqlite_connect(dbapi_conn, rec, wait, create))
        event.listen(engine, "begin", _on_sqlite_begin)
        return engine
    try:
        engine = create_engine(_with_driver(url), pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as e:
        hint = ""
        if url.get_backend_name() == "postgresql":
            hint = ("; pip install 'pfhistory[postgresql]' installs psycopg"
                     if url.drivername in ("postgresql", "postgresql+psycopg") else
                     f"; pip install 'pfhistory[postgresql]' installs psycopg (3), "
                     f"which postgresql:// uses, not {url.get_driver_name()}")
        raise DatabaseError(f"no driver for {url.get_backend_name()!r} databases "
                            f"is installed ({e}){hint}") from None
    if engine.dialect.name == "postgresql":
        event.listen(engine, "begin", lambda conn: _on_postgresql_begin(conn, wait))
    return engine


def _with_driver(url):
    """A plain postgresql:// URL names no driver: take psycopg (pfhistory's postgresql
    extra) when it is installed; SQLAlchemy 2.0 would pick psycopg2 otherwise."""
    if url.drivername == "postgresql":
        from importlib.util import find_spec

        if find_spec("psycopg") is not None:
            return url.set(drivername="postgresql+psycopg")
    return url


def _on_postgresql_begin(conn, wait):
    """Writers take one lock per database first, as BEGIN IMMEDIATE does on SQLite:
    they number new collections, states and addresses from the largest ids (next_ids),
    so two at once would hand out the same ones. A second writer waits up to wait s."""
    if conn.info.get("writer") or conn.info.get("migrating"):
        from pfhistory import queries

        queries.lock_writers(conn, wait)


@contextmanager
def write_transaction(engine):
    """A connection in one write transaction (BEGIN IMMEDIATE on SQLite)."""
    with engine.connect() as conn:
        conn.info["writer"] = True
        try:
            with conn.begin():
                yield conn
        finally:
            conn.info["writer"] = False


def alembic_config(url):
    """alembic's Config, built in code: our migrations, this database."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("pfhistory.migrations")))
    cfg.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False)
                        .replace("%", "%%"))
    return cfg


def _heads(url):
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config(url)).get_heads())


def _known_revisions(url):
    from alembic.script import ScriptDirectory

    return {r.revision for r in ScriptDirectory.from_config(alembic_config(url)).walk_revisions()}


# The newest migration's revision (migrations/versions); tests/test_migrations.py
# checks it against alembic's head. A database at it is current without loading
# alembic and the migration scripts, a good part of a small collection's time.
SCHEMA_HEAD = "0011"


def _recorded_revision(engine):
    """The revision in alembic_version, or None (no such table, not one row, or
    not beside pfhistory's own tables: another application's alembic history)."""
    with engine.connect() as conn:
        try:
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").fetchall()
            conn.exec_driver_sql("SELECT 1 FROM collections, states WHERE 0 = 1").fetchall()
        except DBAPIError:
            return None
    return rows[0][0] if len(rows) == 1 else None


def schema_status(engine, url):
    """("empty" | "current" | "old" | "newer" | "foreign", revision or None)."""
    from alembic.migration import MigrationContext
    from alembic.util import CommandError

    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        try:
            current = MigrationContext.configure(conn).get_current_revision()
        except CommandError:
            return "foreign", None      # alembic_version holds several revisions
    if not tables:
        return "empty", None
    if current is None or not {"collections", "states"} <= tables:
        return "foreign", current   # no version, or another application's alembic history
    if current in _heads(url):
        return "current", current
    if current in _known_revisions(url):
        return "old", current
    return "newer", current


def _shown(url):
    return url.render_as_string(hide_password=True)


def require_current_schema(engine, url, create=False):
    """Make sure the schema is this pfhistory's head; create it on an empty
    database when create. An older schema is refused with the command that
    upgrades it (a migration on a big history is the admin's decision)."""
    if _recorded_revision(engine) != SCHEMA_HEAD:
        status, revision = schema_status(engine, url)
        if status == "empty":
            if not create:
                raise DatabaseError(f"{_shown(url)}: the database is empty: "
                                    f"no history recorded yet")
            upgrade(engine, url)
        elif status != "current":
            _refuse_foreign_or_newer(status, revision, url)
            raise DatabaseError(f"{_shown(url)}: its schema ({revision}) is older than this "
                                f"pfhistory's; run: pfhistory db upgrade --db "
                                f"{shlex.quote(_shown(url))}")
    claim_sqlite_file(engine, url)


def _refuse_foreign_or_newer(status, revision, url):
    """Databases no migration of ours may touch."""
    if status == "foreign":
        raise DatabaseError(f"{_shown(url)}: is not a pfhistory database "
                            f"(it has tables but no pfhistory schema version)")
    if status == "newer":
        raise DatabaseError(f"{_shown(url)}: its schema ({revision}) is newer than this "
                            f"pfhistory knows; upgrade pfhistory")


def current_schema(engine, url):
    """`pfhistory db current`: (status, revision) of a pfhistory database or an
    empty one; another application's is refused, as `db upgrade` refuses it."""
    status, revision = schema_status(engine, url)
    if status == "foreign":
        _refuse_foreign_or_newer(status, revision, url)
    return status, revision


def upgrade_to_head(engine, url):
    """`pfhistory db upgrade`: migrate to head; returns the new revision."""
    status, revision = schema_status(engine, url)
    _refuse_foreign_or_newer(status, revision, url)
    if status != "current":
        upgrade(engine, url)
    claim_sqlite_file(engine, url)
    return schema_status(engine, url)[1]


def _read_only(engine):
    return any(flag in str(engine.url) for flag in ("mode=ro", "immutable=1"))


def claim_sqlite_file(engine, url):
    """A SQLite file now known to be pfhistory's: owner-only, in WAL mode.

    Only writers claim: a reader changes nothing (an administrator may have
    opened the file to a group on purpose), and nobody touches a file before
    its schema says whose it is."""
    if not _is_sqlite(url) or _sqlite_file(url) is None or _read_only(engine):
        return
    ensure_owner_only(url)
    raw = engine.raw_connection()
    try:
        raw.cursor().execute("PRAGMA journal_mode = WAL")
    except sqlite3.OperationalError:
        pass  # read-only file or directory: the command says so when it writes
    finally:
        raw.close()


def upgrade(engine, url, revision="head"):
    """Run the migrations up to revision on this engine's database."""
    from alembic import command

    cfg = alembic_config(url)
    with engine.connect() as conn:
        # The write lock first, as a collection takes it: two collectors starting
        # on a new database at once, the second waits (--wait) and then finds the
        # schema made (a deferred BEGIN failed at once: "database is locked").
        conn.info["migrating"] = True
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
        finally:
            conn.info.pop("migrating", None)


def describe_db_error(exc, url, wait=BUSY_TIMEOUT_S):
    """One sentence for a database error a user can act on."""
    shown = _shown(url)
    orig = getattr(exc, "orig", exc)
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    lowered = text.lower()
    if "disk is full" in lowered or "database or disk is full" in lowered:
        return f"{shown}: the disk is full; nothing of this run was recorded"
    if "readonly" in lowered or "read-only" in lowered:
        return f"{shown}: the database is read-only; nothing was recorded"
    if "database is locked" in lowered or "lock timeout" in lowered:
        return (f"{shown}: another pfhistory is writing; gave up after waiting "
                f"{wait:g} s, nothing was recorded")
    if "file is not a database" in lowered or "malformed" in lowered:
        return f"{shown}: is not a pfhistory database (not a readable SQLite file)"
    if "unable to open database" in lowered:
        return f"{shown}: cannot open the database file"
    if isinstance(exc, DBAPIError) and exc.statement is None and not _is_sqlite(url):
        # No statement: it failed while connecting (no server there, no such
        # database, login refused).
        return f"{shown}: cannot connect to the database: {text}"
    if isinstance(orig, OSError) and orig.strerror:
        return f"{shown}: {orig.strerror}"
    return f"{shown}: database error: {text}"


def ensure_owner_only(url):
    """chmod 0600 the SQLite file and its WAL/SHM companions if they exist."""
    if not _is_sqlite(url):
        return
    path = _sqlite_file(url)
    if path is None:
        return
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if stat.S_IMODE(p.stat().st_mode) & 0o077:
                p.chmod(0o600)
        except OSError:
            pass


def is_db_error(exc):
    """True for errors that come from the database rather than from us."""
    return isinstance(exc, (DBAPIError, sqlite3.Error))
