"""A throwaway PostgreSQL server for the test session, and a database per test.

The server is the machine's own initdb/postgres, run on a unix socket in a
temporary directory (no TCP port to clash with), with trust authentication and
without fsync; it is stopped and its directories deleted at the end. postgres
refuses to run as root, so under euid 0 it runs as the unprivileged user
``nobody``, which owns its directories. $PFHISTORY_TEST_PG_URL names an
existing server to use instead (its role needs CREATEDB). Nothing goes
through a shell.

Under pytest-xdist (`make test`) each worker that needs a server starts its own:
every one has its own directory from mkdtemp and so its own socket, and each
database has a random name, so workers never meet.
"""

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

__all__ = ["PostgresServer", "start_server", "server_from_env", "find_binaries", "ENV_URL"]

ENV_URL = "PFHISTORY_TEST_PG_URL"
_SEARCH = ("/usr/local/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
_UNPRIVILEGED = "nobody"
_START_TIMEOUT_S = 30.0


class Unavailable(Exception):
    """No PostgreSQL server can be had here (the reason, for a skip)."""


def find_binaries():
    """The directory holding initdb and postgres: PATH first, then the usual places."""
    on_path = shutil.which("initdb")
    candidates = ([os.path.dirname(os.path.realpath(on_path))] if on_path else []) + list(_SEARCH)
    for directory in candidates:
        if all(os.access(os.path.join(directory, b), os.X_OK) for b in ("initdb", "postgres")):
            return directory
    raise Unavailable("PostgreSQL's initdb and postgres are not on PATH nor in "
                      f"{', '.join(_SEARCH)} (or set {ENV_URL})")


class PostgresServer:
    """A server reachable at base_url (a SQLAlchemy URL of a database to administer
    it from: CREATE and DROP DATABASE)."""

    def __init__(self, base_url, process=None, root=None):
        self.base_url = base_url
        self.process = process
        self.root = root
        self._made = []

    def url(self, database, driver="postgresql+psycopg"):
        """The URL of one database of this server."""
        from sqlalchemy.engine import make_url

        return make_url(self.base_url).set(drivername=driver, database=database) \
            .render_as_string(hide_password=False)

    def create_database(self, prefix="pfh"):
        """A new, empty database; its URL (plain postgresql://, as users write it)."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self._made.append(name)
        return self.url(name, driver="postgresql")

    def _admin(self, sql):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine(self.base_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(sql)
        finally:
            engine.dispose()

    def stop(self):
        """Drop the databases made here; stop and delete a server started here."""
        if self.process is None:
            for name in self._made:
                try:
                    self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                except Exception:   # best effort: the server may be gone
                    pass
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)     # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _as_user():
    """subprocess arguments that run a server program unprivileged when we are root."""
    if os.geteuid() != 0:
        return {}, None
    try:
        pw = pwd.getpwnam(_UNPRIVILEGED)
    except KeyError:
        raise Unavailable(f"running as root and there is no user {_UNPRIVILEGED!r} "
                          "to run postgres as") from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}, pw


def start_server():
    """Start a server in a new temporary directory; a PostgresServer."""
    bindir = find_binaries()
    drop, pw = _as_user()
    # Directly under the temporary directory (not pytest's, which is 0700 root):
    # the socket path must stay short and the unprivileged user must reach it.
    root = Path(tempfile.mkdtemp(prefix="pfh-pg-"))
    data, sock = root / "data", root / "sock"
    data.mkdir()
    sock.mkdir()
    if pw is not None:
        for path in (root, data, sock):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    log = root / "server.log"
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"}
    try:
        init = subprocess.run(
            [os.path.join(bindir, "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
            cwd=root, env=env, capture_output=True, text=True, timeout=120, **drop)
        if init.returncode != 0:
            raise Unavailable(f"initdb failed: {(init.stderr or init.stdout).strip()[-500:]}")
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [os.path.join(bindir, "postgres"), "-D", str(data), "-k", str(sock),
                 "-h", "", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=50"],
                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, **drop)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    server = PostgresServer(f"postgresql+psycopg://postgres@/postgres?host={sock}",
                            process, root)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            text = log.read_text(errors="replace").strip()[-500:]
            server.stop()
            raise Unavailable(f"postgres exited at start: {text}")
        try:
            server._admin("SELECT 1")
            return server
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise Unavailable(f"postgres did not accept connections within "
                                  f"{_START_TIMEOUT_S:g} s") from None
            time.sleep(0.1)


def server_from_env():
    """The server $PFHISTORY_TEST_PG_URL names, or None if it is not set."""
    url = os.environ.get(ENV_URL)
    if not url:
        return None
    from sqlalchemy.engine import make_url

    server = PostgresServer(make_url(url).set(drivername="postgresql+psycopg")
                            .render_as_string(hide_password=False))
    try:
        server._admin("SELECT 1")
    except Exception as e:
        raise Unavailable(f"{ENV_URL}: cannot connect: {str(e).strip().splitlines()[0]}") \
            from None
    return server
