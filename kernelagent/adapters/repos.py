"""The repositories of the ``Database`` port in SQL; the only module that writes SQL statements.

Each method is written as plain synchronous SQLAlchemy and turned into a coroutine by ``@reads``
or ``@writes``: it runs in a worker thread (``asyncio.to_thread``) in a transaction of its own,
committed before the coroutine returns, so a crash right after a call loses nothing it wrote.
``@looks_up`` (one row by its key) runs in the event loop's thread on SQLite, where it is cheaper
than the trip to a thread. The few statements on every cell's path are Core statements built
once, run in a bare ``Connection`` (``@looks_up``, ``@quick_writes``, ``@core_writes``): an ORM
session costs more than the statements themselves.
``@writes`` asks the engine for the write lock up front (``BEGIN IMMEDIATE`` on SQLite, see
``db.py``) so that a read-then-write transaction waits for a busy database instead of failing.
On SQLite, which has one writer at a time anyway, a process's writes go through one thread
(``SerialWriter``), and those that queued together commit together; a cell's few rows
(``@quick_writes``) are written at once in the caller's thread when nothing else is being
written.

Constraint violations become ``Conflict`` (a unique key is taken) or ``NotFound`` (a foreign key
points nowhere); any other driver error becomes ``KernelAgentError``. Appending a cell is one
indexed lookup and one insert whatever the length of the notebook; the unique
``(session_id, index)`` key is what makes a concurrent append at the same index fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, StatementError
from sqlmodel import Session as Transaction
from sqlmodel import col, select

from kernelagent.adapters.tables import (
    ArtifactRow,
    CellRow,
    FileRow,
    SessionRow,
    TurnRow,
    UserRow,
)
from kernelagent.domain import Artifact, Cell, FileEntry, Session, Turn, User, new_id, now
from kernelagent.errors import Conflict, KernelAgentError, NotFound, Unavailable

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R", bound="_Repo")

BATCH_LIMIT = 64  # writes committed together at most
CHECKPOINT_EVERY = 1.0  # seconds between the writer thread's WAL checkpoints (SQLite)
NOW_OPTION = "kernelagent_now"  # execution option: take the write lock now or not at all
WRITE_OPTION = "kernelagent_write"  # execution option: this transaction will write
BUSY_TIMEOUT = 30.0  # seconds a SQLite connection waits for another writer


class WriteLockTaken(Exception):
    """Another connection holds SQLite's write lock (raised at ``BEGIN`` under ``NOW_OPTION``)."""


UPDATABLE_SESSION_FIELDS = frozenset(
    {"title", "status", "kernel_id", "updated_at", "approval_mode"}
)
UPDATABLE_TURN_FIELDS = frozenset(
    {"status", "ended_at", "prompt_tokens", "completion_tokens", "cost", "error", "pending"}
)


class HeldConnection:
    """One connection kept open for the event loop's own short transactions on SQLite (a
    ``@looks_up`` read, a ``@quick_writes`` write made at once): taking a connection from the
    pool and setting up its ``Connection`` each time costs more than such a transaction's
    statements. Used from one thread only (the first to use it; others take the pool's), and
    closed after any error: the next use opens a fresh one. On an engine that never waits for
    the write lock (``NOW_OPTION``), its busy timeout is set to 0 while it is held, not around
    each transaction, and set back before the pool gets the connection again. With
    ``autocommit``, its work is one statement (a lookup by key), run in SQLite's autocommit:
    read as consistently as in a transaction, with no ``BEGIN`` and ``COMMIT`` around it."""

    def __init__(self, engine: Engine, autocommit: bool = False) -> None:
        self.engine = engine
        self.autocommit = autocommit
        self.never_waits = bool(engine.get_execution_options().get(NOW_OPTION, False))
        self._connection: Connection | None = None
        self._thread: int | None = None

    def run(self, work: Callable[[Connection], T]) -> T:
        """``work`` in a transaction on the held connection, committed before it returns.

        The transaction is begun and committed on the driver's connection: SQLAlchemy's own
        (its transaction objects and events) cost as much as the cell's statements. A statement
        ``work`` runs through SQLAlchemy joins it (``begin_sqlite`` begins nothing then), and
        SQLAlchemy's commit ends it."""
        if self._thread is None:
            self._thread = threading.get_ident()
        elif self._thread != threading.get_ident():
            with self.engine.begin() as connection:
                return work(connection)
        if self._connection is None:
            self._connection = self._connect()
        connection = self._connection
        driver = connection.connection.driver_connection
        try:
            if not self.autocommit:
                options = connection.get_execution_options()
                begin_sqlite(driver, options, timeout_set=self.never_waits)
            result = work(connection)
            if connection.in_transaction():
                connection.commit()
            else:
                try:
                    driver.commit()
                except sqlite3.Error as exc:
                    raise OperationalError("COMMIT", None, exc) from exc
            return result
        except OperationalError as exc:
            self.close()  # its connection goes back to the pool, which rolls back what is open
            if self.never_waits and _is_busy(exc.orig):  # rolled back: it may wait its turn
                raise WriteLockTaken(str(exc.orig)) from exc
            raise
        except BaseException:
            self.close()
            raise

    def _connect(self) -> Connection:
        connection = self.engine.connect()
        if self.never_waits:
            try:
                _busy_timeout(connection.connection.driver_connection, 0)
            except BaseException:
                connection.close()
                raise
        return connection

    def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            if self.never_waits:
                try:
                    _busy_timeout(connection.connection.driver_connection, BUSY_TIMEOUT)
                except Exception:  # noqa: BLE001 - the pool must not get it back as it is
                    connection.invalidate()
            connection.close()


def _is_busy(error: BaseException | None) -> bool:
    return getattr(error, "sqlite_errorname", "").startswith("SQLITE_BUSY")


def _busy_timeout(driver: sqlite3.Connection, seconds: float) -> None:
    try:
        driver.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}").close()
    except sqlite3.Error as exc:
        raise OperationalError("PRAGMA busy_timeout", None, exc) from exc


def begin_sqlite(
    driver: sqlite3.Connection, options: Mapping[str, Any], timeout_set: bool = False
) -> None:
    """Begin a transaction, taking the write lock at once when it will write (``WRITE_OPTION``);
    nothing if one is open on the connection (a ``HeldConnection``'s).

    A deferred transaction that reads and then writes cannot wait for a busy database: it fails
    with "database is locked". Taking the lock first makes it wait up to ``BUSY_TIMEOUT``; with
    ``NOW_OPTION``, not at all (``WriteLockTaken``): its busy timeout is 0 for the ``BEGIN``
    (``timeout_set``: the connection's is 0 already). Statements go to the driver: through
    SQLAlchemy they cost ten times more.
    """
    if driver.in_transaction:
        return
    statement = "BEGIN IMMEDIATE" if options.get(WRITE_OPTION, False) else "BEGIN"
    now = options.get(NOW_OPTION, False)
    toggle = now and not timeout_set
    try:
        if toggle:
            _busy_timeout(driver, 0)
        driver.execute(statement).close()
    except sqlite3.OperationalError as exc:
        if now and _is_busy(exc):
            raise WriteLockTaken(str(exc)) from exc
        raise OperationalError(statement, None, exc) from exc
    except sqlite3.Error as exc:
        raise OperationalError(statement, None, exc) from exc
    finally:
        if toggle:
            _busy_timeout(driver, BUSY_TIMEOUT)


class SerialWriter:
    """The one thread that writes a SQLite file for this process.

    Writes queue here rather than in SQLite's busy handler, which sleeps 1–100 ms between tries
    and wakes to find the lock taken again. Those that queued while one ran commit together, in
    one transaction, in the order they came (each sees what the ones before it wrote, as one
    after another would): one commit for many sessions' cells. Each caller is answered once
    its write is committed. If any of them fails, the batch is rolled back and each is run
    again alone, so a failure is its own caller's and no one else's.

    A write of a few rows by key (``at_once``) that finds nothing being written here, and the
    file's write lock free, is made at once in the caller's thread: the hand-off to the thread
    and back costs more than such a write. It never waits: with the lock taken, it queues.
    Connections do not checkpoint the write-ahead log when they commit (``db.py``); this thread
    does, every ``CHECKPOINT_EVERY`` seconds (``PASSIVE``: it waits for no one), so no write in
    the event loop's thread waits for the disk.
    """

    def __init__(self, engine: Engine, name: str = "kernelagent-sqlite-writer") -> None:
        self.engine = engine
        self._at_once = HeldConnection(engine.execution_options(**{NOW_OPTION: True}))
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._writing = threading.Lock()  # held by whoever writes for this process now
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self.closed = False

    async def run(self, work: Callable[[Any], T], core: bool = False, at_once: bool = False) -> T:
        """``work`` in a transaction: given an ORM session, or with ``core`` a Connection."""
        if self.closed:
            raise Unavailable("the database is closed")
        if at_once and self._writing.acquire(blocking=False):
            try:
                return _run(self.engine, work, core, held=self._at_once)
            except WriteLockTaken:
                pass  # another process writes: wait in the queue, not in this thread
            finally:
                self._writing.release()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Write(work, core, loop, done))
        return await done

    def close(self) -> None:
        """Take no more writes; the thread finishes what is queued, then stops (``join``).
        Called in the event loop's thread, so no write is queued after the stop."""
        self.closed = True
        self._at_once.close()
        self._queue.put(None)

    def join(self) -> None:
        self._thread.join()

    def _loop(self) -> None:
        checkpoint = time.monotonic() + CHECKPOINT_EVERY
        while True:
            try:
                first = self._queue.get(timeout=max(checkpoint - time.monotonic(), 0))
            except queue.Empty:
                first = _TICK
            if first is None:  # stopping: a last checkpoint
                self._checkpoint()
                return
            if time.monotonic() >= checkpoint:
                self._checkpoint()
                checkpoint = time.monotonic() + CHECKPOINT_EVERY
            if first is _TICK:
                continue
            batch = [first]
            while len(batch) < BATCH_LIMIT:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            with self._writing:
                outcomes = self._write(batch)
            for item, (result, error) in zip(batch, outcomes, strict=True):
                item.answer(result, error)

    def _checkpoint(self) -> None:
        """Copy what the write-ahead log holds into the database file, as far as readers allow."""
        try:  # outside any transaction: on the driver's connection
            with self.engine.connect() as connection:
                driver = connection.connection.driver_connection
                driver.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        except Exception:
            log.warning("SQLite checkpoint failed; the next one tries again", exc_info=True)

    def _write(self, batch: list[_Write]) -> list[tuple[Any, BaseException | None]]:
        """Each write's result or error, in order (answered once the lock is let go, so a
        caller that writes again at once finds this thread idle)."""
        if len(batch) > 1:
            try:
                with Transaction(self.engine, expire_on_commit=False) as tx, tx.begin():
                    results = [item.work(tx.connection() if item.core else tx) for item in batch]
            except Exception:  # noqa: BLE001 - each is run alone below, and says what failed
                pass
            else:
                return [(result, None) for result in results]
        outcomes: list[tuple[Any, BaseException | None]] = []
        for item in batch:
            try:
                outcomes.append((_run(self.engine, item.work, item.core), None))
            except BaseException as e:  # noqa: BLE001 - the caller's to handle
                outcomes.append((None, e))
        return outcomes


_TICK: Any = object()  # the writer thread woke to checkpoint, with nothing to write


@dataclasses.dataclass(frozen=True)
class _Write:
    work: Callable[[Any], Any]
    core: bool
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[Any]

    def answer(self, result: Any, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(_settle, self.done, result, error)


def _settle(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if done.cancelled():  # the caller stopped waiting; the write stands
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


class _Repo:
    def __init__(
        self,
        reader: Engine,
        writer: Engine,
        serial: SerialWriter | None = None,
        held_reader: HeldConnection | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._serial = serial  # SQLite: writes go through its one writer thread
        self._held_reader = held_reader  # SQLite: the event loop's reads (``@looks_up``)


def _transaction(
    write: bool, inline_on_sqlite: bool = False, core: bool = False
) -> Callable[
    [Callable[Concatenate[R, Any, P], T]],
    Callable[Concatenate[R, P], Coroutine[Any, Any, T]],
]:
    def decorate(
        method: Callable[Concatenate[R, Any, P], T],
    ) -> Callable[Concatenate[R, P], Coroutine[Any, Any, T]]:
        @functools.wraps(method)
        async def run(self: R, *args: P.args, **kwargs: P.kwargs) -> T:
            engine = self._writer if write else self._reader
            work = functools.partial(method, self)
            if write and self._serial is not None:
                return await self._serial.run(
                    lambda tx: work(tx, *args, **kwargs), core, at_once=inline_on_sqlite
                )
            if inline_on_sqlite and self._held_reader is not None:
                return _run(engine, lambda tx: work(tx, *args, **kwargs), core, self._held_reader)
            return await asyncio.to_thread(_run, engine, lambda tx: work(tx, *args, **kwargs), core)

        return run

    return decorate


reads = _transaction(write=False)
writes = _transaction(write=True)
core_writes = _transaction(write=True, core=True)  # the method is given a Connection
# a few rows by key (a cell's): on SQLite, at once in the caller's thread when nothing else is
# being written (``SerialWriter``)
quick_writes = _transaction(write=True, inline_on_sqlite=True, core=True)
# one row by its key, on SQLite in the caller's thread: a read that never waits for a writer
# (WAL) and takes tens of µs, less than the hand-off to a worker thread and back
looks_up = _transaction(write=False, inline_on_sqlite=True, core=True)


def _run(
    engine: Engine, work: Callable[[Any], T], core: bool = False, held: HeldConnection | None = None
) -> T:
    try:
        if held is not None:
            return held.run(work)
        if core:
            with engine.begin() as connection:
                return work(connection)
        with Transaction(engine, expire_on_commit=False) as tx, tx.begin():
            return work(tx)
    except IntegrityError as exc:  # one the method did not expect
        raise Conflict(f"database constraint violated: {exc.orig}") from exc
    except OperationalError as exc:  # the connection, not the statement: may pass
        raise Unavailable(f"the database did not answer: {exc.orig}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable(f"the database dropped the connection: {exc.orig}") from exc
        raise KernelAgentError(f"database error: {exc.orig}") from exc
    except StatementError as exc:  # a value the column refused, e.g. a naive datetime
        if isinstance(exc.orig, ValueError | TypeError):
            raise exc.orig from None
        raise


@contextlib.contextmanager
def _violations(conflict: str, missing: str = "a referenced row does not exist") -> Iterator[None]:
    """Turn a unique violation into Conflict(conflict), a foreign key one into NotFound(missing)."""
    try:
        yield
    except IntegrityError as exc:
        raise (NotFound(missing) if _is_foreign_key(exc) else Conflict(conflict)) from exc


def _is_foreign_key(exc: IntegrityError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)  # psycopg
    if sqlstate is not None:
        return sqlstate == "23503"
    return getattr(exc.orig, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_FOREIGNKEY"


class SqlUserRepo(_Repo):
    @writes
    def add(self, tx: Transaction, name: str, token_hash: str) -> User:
        row = UserRow(id=new_id(), name=name, token_hash=token_hash, created_at=now())
        with _violations(f"a user named {name!r} or with that token already exists"):
            tx.add(row)
            tx.flush()
        return row.to_domain()

    @reads
    def get(self, tx: Transaction, user_id: str) -> User | None:
        row = tx.get(UserRow, user_id)
        return None if row is None else row.to_domain()

    @reads
    def by_token_hash(self, tx: Transaction, token_hash: str) -> User | None:
        row = tx.exec(select(UserRow).where(UserRow.token_hash == token_hash)).first()
        return None if row is None else row.to_domain()

    @reads
    def list(self, tx: Transaction) -> list[User]:
        rows = tx.exec(select(UserRow).order_by(col(UserRow.created_at), col(UserRow.id)))
        return [row.to_domain() for row in rows]


class SqlSessionRepo(_Repo):
    @writes
    def add(self, tx: Transaction, session: Session) -> None:
        with _violations(
            f"session {session.id} already exists", missing=f"user {session.user_id} not found"
        ):
            tx.add(SessionRow.from_domain(session))
            tx.flush()

    @looks_up
    def get(self, connection: Connection, session_id: str) -> Session | None:
        """A Core statement built once: read before every cell, where the ORM's load costs
        several times the query."""
        row = _GET_SESSION.first(connection, {"_id": session_id})
        return None if row is None else Session(**row)

    @reads
    def list_for_user(self, tx: Transaction, user_id: str) -> list[Session]:
        """Newest first (``updated_at`` descending)."""
        rows = tx.exec(
            select(SessionRow)
            .where(SessionRow.user_id == user_id)
            .order_by(
                col(SessionRow.updated_at).desc(),
                col(SessionRow.created_at).desc(),
                col(SessionRow.id),
            )
        )
        return [row.to_domain() for row in rows]

    @reads
    def holding_kernels(self, tx: Transaction, user_id: str | None = None) -> list[Session]:
        """Sessions with a live kernel (of ``user_id``, or everyone's), least recently used
        first."""
        query = select(SessionRow).where(col(SessionRow.kernel_id).is_not(None))
        if user_id is not None:
            query = query.where(SessionRow.user_id == user_id)
        rows = tx.exec(query.order_by(col(SessionRow.updated_at), col(SessionRow.id)))
        return [row.to_domain() for row in rows]

    @writes
    def update(self, tx: Transaction, session_id: str, **changes: Any) -> Session:
        """Change ``title``, ``status``, ``kernel_id`` or ``updated_at``; NotFound if missing."""
        if unknown := changes.keys() - UPDATABLE_SESSION_FIELDS:
            raise ValueError(f"cannot update session field(s) {', '.join(sorted(unknown))}")
        row = tx.get(SessionRow, session_id)
        if row is None:
            raise NotFound(f"session {session_id} not found")
        for name, value in changes.items():
            setattr(row, name, value)
        tx.flush()
        return row.to_domain()

    @writes
    def delete(self, tx: Transaction, session_id: str) -> None:
        """Delete the session with its cells, artifacts and file rows; nothing if it is gone."""
        tx.exec(delete(ArtifactRow).where(col(ArtifactRow.session_id) == session_id))
        tx.exec(delete(TurnRow).where(col(TurnRow.session_id) == session_id))
        tx.exec(delete(FileRow).where(col(FileRow.session_id) == session_id))
        tx.exec(delete(CellRow).where(col(CellRow.session_id) == session_id))
        tx.exec(delete(SessionRow).where(col(SessionRow.id) == session_id))


class _Prepared:
    """A Core statement on a cell's path. On SQLite it is run by the driver itself, compiled
    once per set of value names: there SQLAlchemy's execution costs several times the
    statement. Values go through the column types' bind processors and rows through their
    result processors, as SQLAlchemy would; driver errors become SQLAlchemy's. Elsewhere
    (PostgreSQL) it is executed as usual."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, ...], tuple[str, list[tuple[str, Any]]]] = {}
        self._columns: list[tuple[str, Any]] | None = None  # a query's, with their processors

    def first(self, connection: Connection, values: dict[str, Any]) -> dict[str, Any] | None:
        if connection.dialect.name != "sqlite":
            row = connection.execute(self.statement, values).first()
            return None if row is None else dict(row._mapping)
        found = self._one(connection, values)
        if found is None:
            return None
        if self._columns is None:
            self._columns = [
                (column.name, _processor(column.type, connection.dialect, result=True))
                for column in self.statement.selected_columns  # type: ignore[attr-defined]
            ]
        return {
            name: process(value) if process else value
            for (name, process), value in zip(self._columns, found, strict=True)
        }

    def scalar(self, connection: Connection, values: dict[str, Any]) -> Any:
        if connection.dialect.name != "sqlite":
            return connection.execute(self.statement, values).scalar()
        found = self._one(connection, values)
        return None if found is None else found[0]

    def execute(self, connection: Connection, values: dict[str, Any]) -> int:
        """Run a statement whose rows nobody reads; the number of rows it changed."""
        if connection.dialect.name != "sqlite":
            return connection.execute(self.statement, values).rowcount
        with contextlib.closing(self._run(connection, values)) as cursor:
            return cursor.rowcount

    def _one(self, connection: Connection, values: dict[str, Any]) -> tuple[Any, ...] | None:
        with contextlib.closing(self._run(connection, values)) as cursor:
            return cursor.fetchone()

    def _run(self, connection: Connection, values: dict[str, Any]) -> sqlite3.Cursor:
        names = tuple(values)
        if (compiled := self._compiled.get(names)) is None:
            dialect = connection.dialect
            built = self.statement.compile(dialect=dialect, column_keys=list(names))
            binds = [
                (name, _processor(built.binds[name].type, dialect, result=False))
                for name in built.positiontup or ()
            ]
            compiled = self._compiled[names] = (built.string, binds)
        sql, binds = compiled
        params = [process(values[name]) if process else values[name] for name, process in binds]
        try:
            return connection.connection.driver_connection.execute(sql, params)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc


def _processor(type_: Any, dialect: Any, result: bool) -> Any:
    """The column type's own conversion of values for this dialect (None: none needed)."""
    typed = type_.dialect_impl(dialect)
    return typed.result_processor(dialect, None) if result else typed.bind_processor(dialect)


_CELLS = CellRow.__table__  # type: ignore[attr-defined]
_SESSIONS = SessionRow.__table__  # type: ignore[attr-defined]
_UPDATE_CELL = _Prepared(
    update(_CELLS).where(
        _CELLS.c.id == bindparam("_id"), _CELLS.c.session_id == bindparam("_session_id")
    )
)
_TOUCH_SESSION = _Prepared(update(_SESSIONS).where(_SESSIONS.c.id == bindparam("_id")))
_GET_SESSION = _Prepared(select(_SESSIONS).where(_SESSIONS.c.id == bindparam("_id")))
_CELL_METADATA = select(_CELLS.c.metadata).where(_CELLS.c.id == bindparam("_id")).with_for_update()
_SET_CELL_METADATA = update(_CELLS).where(_CELLS.c.id == bindparam("_id"))
_INSERT_CELL = insert(_CELLS)
_NEXT_INDEX = select(  # literals, not parameters: every parameter comes from the caller
    func.coalesce(func.max(_CELLS.c.index) + literal_column("1"), literal_column("0"))
).where(_CELLS.c.session_id == bindparam("_session_id"))
_APPEND_NEXT = _Prepared(  # one statement: the index is taken where the row is written
    insert(_CELLS).values(index=_NEXT_INDEX.scalar_subquery()).returning(_CELLS.c.index)
)


class SqlCellRepo(_Repo):
    @writes
    def append(self, tx: Transaction, cell: Cell) -> None:
        """Insert at ``cell.index``, which must be the next free index (Conflict otherwise)."""
        follows = cell.index == 0 or self._exists(tx, cell.session_id, cell.index - 1)
        if cell.index < 0 or not follows:
            raise Conflict(
                f"cell index {cell.index} is not the next free one of session {cell.session_id}"
            )
        with _violations(
            f"cell index {cell.index} of session {cell.session_id} (or cell id {cell.id}) is taken",
            missing=f"session {cell.session_id} not found",
        ):
            tx.add(CellRow.from_domain(cell))
            tx.flush()

    @core_writes
    def append_many(self, connection: Connection, cells: list[Cell]) -> None:
        """Insert a new session's cells (indices 0…n-1, in order) in one statement."""
        if not cells:
            return
        if [c.index for c in cells] != list(range(len(cells))):
            raise Conflict("append_many takes a new session's cells, indexed from 0")
        with _violations(
            f"a cell of session {cells[0].session_id} is taken",
            missing=f"session {cells[0].session_id} not found",
        ):
            rows = [{"id": c.id, "session_id": c.session_id, **CellRow.values(c)} for c in cells]
            connection.execute(_INSERT_CELL, rows)

    @quick_writes
    def append_next(self, connection: Connection, cell: Cell) -> Cell:
        """Insert ``cell`` at the session's next free index, in one statement; returns it."""
        params = {"id": cell.id, "session_id": cell.session_id, **CellRow.values(cell)}
        del params["index"]  # the statement's own
        params["_session_id"] = cell.session_id
        with _violations(
            f"the next cell index of session {cell.session_id} (or cell id {cell.id}) is taken",
            missing=f"session {cell.session_id} not found",
        ):
            index = _APPEND_NEXT.scalar(connection, params)
        return dataclasses.replace(cell, index=index)

    @staticmethod
    def _exists(tx: Transaction, session_id: str, index: int) -> bool:
        query = select(CellRow.id).where(CellRow.session_id == session_id, CellRow.index == index)
        return tx.exec(query).first() is not None

    @quick_writes
    def update(self, connection: Connection, cell: Cell, touch_session: bool = False) -> None:
        """Replace the cell with the same id (outputs, status, timing); NotFound if missing.

        ``touch_session`` also sets the session's ``updated_at`` to now, in the same transaction.
        """
        # Core statements built once (the ORM path costs ~3 ms per cell on the hot path)
        params = {"_id": cell.id, "_session_id": cell.session_id, **CellRow.values(cell)}
        with _violations(f"cell index {cell.index} of session {cell.session_id} is taken"):
            if _UPDATE_CELL.execute(connection, params) != 1:
                raise NotFound(f"cell {cell.id} not found in session {cell.session_id}")
            if touch_session:
                _TOUCH_SESSION.execute(connection, {"_id": cell.session_id, "updated_at": now()})

    @reads
    def next_index(self, tx: Transaction, session_id: str) -> int:
        """The index ``append_next`` would give the session's next cell now."""
        return int(tx.connection().execute(_NEXT_INDEX, {"_session_id": session_id}).scalar_one())

    @reads
    def list(self, tx: Transaction, session_id: str) -> list[Cell]:
        """In index order."""
        query = select(CellRow).where(CellRow.session_id == session_id).order_by(col(CellRow.index))
        return [row.to_domain() for row in tx.exec(query)]

    @quick_writes
    def annotate(self, connection: Connection, cell_id: str, key: str, value: Any) -> None:
        """Set one key of the cell's metadata, whatever else changes it meanwhile (the row
        is read and written in one transaction, locked on PostgreSQL); nothing if it is gone.
        Core statements: this runs once per cell."""
        found = connection.execute(_CELL_METADATA, {"_id": cell_id}).first()
        if found is None:
            return
        metadata = json.loads(found[0])
        metadata[key] = value
        connection.execute(_SET_CELL_METADATA, {"_id": cell_id, "metadata": json.dumps(metadata)})

    @reads
    def get(self, tx: Transaction, cell_id: str) -> Cell | None:
        row = tx.get(CellRow, cell_id)
        return None if row is None else row.to_domain()


class SqlArtifactRepo(_Repo):
    @writes
    def add(self, tx: Transaction, artifact: Artifact) -> None:
        with _violations(
            f"artifact {artifact.id} already exists",
            missing=f"cell {artifact.cell_id} of session {artifact.session_id} not found",
        ):
            tx.add(ArtifactRow.from_domain(artifact))
            tx.flush()

    @reads
    def get(self, tx: Transaction, artifact_id: str) -> Artifact | None:
        row = tx.get(ArtifactRow, artifact_id)
        return None if row is None else row.to_domain()

    @writes
    def add_many(self, tx: Transaction, artifacts: list[Artifact]) -> None:
        if not artifacts:
            return
        with _violations("an artifact already exists", missing="a cell of the artifacts is gone"):
            tx.add_all([ArtifactRow.from_domain(a) for a in artifacts])
            tx.flush()

    @reads
    def list_for_session(self, tx: Transaction, session_id: str) -> list[Artifact]:
        """Oldest first."""
        query = (
            select(ArtifactRow)
            .where(ArtifactRow.session_id == session_id)
            .order_by(col(ArtifactRow.created_at), col(ArtifactRow.id))
        )
        return [row.to_domain() for row in tx.exec(query)]

    @reads
    def list_for_cell(self, tx: Transaction, cell_id: str) -> list[Artifact]:
        """Oldest first."""
        query = (
            select(ArtifactRow)
            .where(ArtifactRow.cell_id == cell_id)
            .order_by(col(ArtifactRow.created_at), col(ArtifactRow.id))
        )
        return [row.to_domain() for row in tx.exec(query)]


_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


class SqlFileRepo(_Repo):
    @writes
    def upsert(self, tx: Transaction, session_id: str, entry: FileEntry) -> None:
        insert = _INSERT[tx.get_bind().dialect.name](FileRow.__table__)
        statement = insert.values(FileRow.values(session_id, entry)).on_conflict_do_update(
            index_elements=["session_id", "path"],
            set_={name: insert.excluded[name] for name in ("size", "sha256", "modified_at")},
        )
        with _violations("", missing=f"session {session_id} not found"):
            tx.exec(statement)

    @reads
    def list(self, tx: Transaction, session_id: str) -> list[FileEntry]:
        """Sorted by path, by code point: the same on every backend, whatever its collation."""
        rows = tx.exec(select(FileRow).where(FileRow.session_id == session_id))
        return sorted((row.to_domain() for row in rows), key=lambda entry: entry.path)

    @writes
    def delete(self, tx: Transaction, session_id: str, path: str) -> None:
        """Forget one file; nothing if it is not there."""
        tx.exec(
            delete(FileRow).where(col(FileRow.session_id) == session_id, col(FileRow.path) == path)
        )


class SqlTurnRepo(_Repo):
    @writes
    def add(self, tx: Transaction, turn: Turn) -> None:
        with _violations(f"turn {turn.id} already exists", f"session {turn.session_id} not found"):
            tx.add(TurnRow.from_domain(turn))
            tx.flush()

    @reads
    def get(self, tx: Transaction, turn_id: str) -> Turn | None:
        row = tx.get(TurnRow, turn_id)
        return None if row is None else row.to_domain()

    @writes
    def update(self, tx: Transaction, turn_id: str, **changes: Any) -> Turn:
        if unknown := changes.keys() - UPDATABLE_TURN_FIELDS:
            raise ValueError(f"cannot update turn field(s) {', '.join(sorted(unknown))}")
        row = tx.get(TurnRow, turn_id)
        if row is None:
            raise NotFound(f"turn {turn_id} not found")
        for name, value in changes.items():
            if name == "pending" and value is not None:
                value = json.dumps(value, ensure_ascii=False)
            setattr(row, name, value)
        tx.flush()
        return row.to_domain()

    @writes
    def transition(self, tx: Transaction, turn_id: str, from_status: str, **changes: Any) -> bool:
        """Apply ``changes`` only if the turn's status is still ``from_status`` (one answer
        wins, whichever process it reached); whether it did."""
        if unknown := changes.keys() - UPDATABLE_TURN_FIELDS:
            raise ValueError(f"cannot update turn field(s) {', '.join(sorted(unknown))}")
        if "pending" in changes and changes["pending"] is not None:
            changes["pending"] = json.dumps(changes["pending"], ensure_ascii=False)
        result = tx.exec(
            update(TurnRow)
            .where(col(TurnRow.id) == turn_id, col(TurnRow.status) == from_status)
            .values(**changes)
        )
        return bool(result.rowcount)

    @reads
    def unfinished(self, tx: Transaction, session_id: str | None = None) -> list[Turn]:
        """Running or waiting turns (of one session, or of all), oldest first."""
        query = select(TurnRow).where(col(TurnRow.status).in_(("running", "waiting")))
        if session_id is not None:
            query = query.where(TurnRow.session_id == session_id)
        rows = tx.exec(query.order_by(col(TurnRow.started_at), col(TurnRow.id)))
        return [row.to_domain() for row in rows]

    @reads
    def list(self, tx: Transaction, session_id: str) -> list[Turn]:
        """Oldest first."""
        rows = tx.exec(
            select(TurnRow)
            .where(TurnRow.session_id == session_id)
            .order_by(col(TurnRow.started_at), col(TurnRow.id))
        )
        return [row.to_domain() for row in rows]
