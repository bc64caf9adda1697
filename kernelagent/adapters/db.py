"""Opening the database: one code path for the embedded SQLite file and for PostgreSQL.

``open_database(url)`` creates the engine, brings the schema to the newest Alembic revision (the
migrations ship inside the package, so no alembic.ini is needed) and returns a ``SqlDatabase``
holding the repos of ``repos.py``. URLs::

    sqlite:///path/to/kernelagent.db         embedded default; the parent directory is created
    postgresql://user@host:5432/kernelagent  production; run with the psycopg 3 driver

SQLite is set up for a server: write-ahead log (readers never block the writer), foreign keys on,
``synchronous=NORMAL`` (in WAL mode a committed write survives any crash of the server process;
only a power cut or OS crash may roll back the last commits — PostgreSQL is the backend for
that kind of durability), a small page cache per connection, a 30 s wait on a busy file, and
transactions begun by us, ``BEGIN IMMEDIATE`` for writes, rather than by the sqlite3 module.
Replicas opening a PostgreSQL database at once migrate one after another (advisory lock).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from kernelagent.adapters.repos import (
    BUSY_TIMEOUT,
    WRITE_OPTION,
    HeldConnection,
    SerialWriter,
    SqlArtifactRepo,
    SqlCellRepo,
    SqlFileRepo,
    SqlSessionRepo,
    SqlTurnRepo,
    SqlUserRepo,
    begin_sqlite,
)
from kernelagent.errors import KernelAgentError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
WRITE = {WRITE_OPTION: True}
CLOSE_WAIT = 10.0  # seconds close() waits for transactions in worker threads
MIGRATION_LOCK = 0x6B61_6D69  # PostgreSQL advisory lock key held while migrating ("kami")
# cache_size: 256 KiB per connection, not SQLite's 2 MiB. Other connections' writes empty a
# connection's cache at its next read anyway, while the memory, once filled, stays with the
# process (five pooled connections: up to 10 MiB); the file's pages stay in the OS page cache.
# wal_autocheckpoint=0: no commit copies the log into the file (a commit in the event loop's
# thread would wait for the disk); the writer thread checkpoints instead (``SerialWriter``).
SQLITE_PRAGMAS = (
    "foreign_keys=ON",
    "synchronous=NORMAL",
    "cache_size=-256",
    "wal_autocheckpoint=0",
)


class SqlDatabase:
    """The ``Database`` port over SQLAlchemy; ``close()`` disposes of every connection."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        reader, writer = engine, engine.execution_options(**WRITE)
        # SQLite has one writer at a time: this process's go through one thread (repos.py)
        sqlite = engine.dialect.name == "sqlite"
        self._serial = SerialWriter(writer) if sqlite else None
        self._held_reader = HeldConnection(reader, autocommit=True) if sqlite else None
        repo = (reader, writer, self._serial, self._held_reader)
        self.users = SqlUserRepo(*repo)
        self.sessions = SqlSessionRepo(*repo)
        self.cells = SqlCellRepo(*repo)
        self.artifacts = SqlArtifactRepo(*repo)
        self.files = SqlFileRepo(*repo)
        self.turns = SqlTurnRepo(*repo)

    async def close(self) -> None:
        """Dispose of the pool once the transactions still running in worker threads are
        done (up to ``CLOSE_WAIT``): a connection handed back after the dispose would go to the
        discarded pool and be left, open, to the garbage collector."""
        if self._held_reader is not None:
            self._held_reader.close()
        if self._serial is not None:  # what is queued is written first
            self._serial.close()
            await asyncio.to_thread(self._serial.join)
        pool = self.engine.pool
        deadline = time.monotonic() + CLOSE_WAIT
        while isinstance(pool, QueuePool) and pool.checkedout() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(self.engine.dispose)


async def open_database(url: str) -> SqlDatabase:
    """Connect to ``url``, migrate its schema to the newest revision, return the repos."""
    engine = create_engine_for(url)
    try:
        await asyncio.to_thread(_migrate, engine)
    except BaseException as exc:
        engine.dispose()
        if isinstance(exc, DBAPIError):
            where = engine.url.render_as_string(hide_password=True)
            raise KernelAgentError(f"cannot open the database {where}: {exc.orig}") from exc
        raise
    return SqlDatabase(engine)


def database_url(url: str) -> URL:
    """``url`` parsed, PostgreSQL ones set to the psycopg 3 driver; ValueError if unsupported."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError("an in-memory SQLite database is not supported: give a file path")
        return parsed
    if backend in ("postgresql", "postgres"):
        if "+" not in parsed.drivername:
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed
    raise ValueError(f"unsupported database URL {parsed.drivername}://…: use sqlite or postgresql")


def create_engine_for(url: str) -> Engine:
    """The engine for ``url``, set up as the module docstring describes; no schema changes."""
    parsed = database_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # the sqlite3 module begins nothing; see below
    _use_wal(dbapi_connection)
    for pragma in SQLITE_PRAGMAS:
        dbapi_connection.execute(f"PRAGMA {pragma}").close()


def _use_wal(dbapi_connection: sqlite3.Connection) -> None:
    """Switch the file to write-ahead logging (kept in the file, so once is enough).

    The switch needs the file to itself and does not wait for a busy one; it is retried here,
    for when two processes open a new database at once.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL").close()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def _sqlite_begin(connection: Connection) -> None:
    """Begin every transaction SQLAlchemy begins as ``begin_sqlite`` says."""
    begin_sqlite(connection.connection.driver_connection, connection.get_execution_options())


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for the packaged migrations, without any alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    if url is not None:
        rendered = database_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def _migrate(engine: Engine) -> None:
    config = alembic_config()
    with engine.execution_options(**WRITE).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
