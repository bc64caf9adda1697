"""The SQL database on both backends: every repo method, orderings, errors, cascade, round trips.

Each test gets a fresh database: a SQLite file in ``tmp_path``, or a uniquely named schema on the
PostgreSQL server at ``PG_SERVER`` (set as the search path, dropped afterwards). Without a reachable
PostgreSQL those tests are skipped, or fail when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import secrets
import sqlite3
import sys
import textwrap
import threading
import time

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import event, make_url

from kernelagent.adapters.db import alembic_config, database_url, open_database
from kernelagent.adapters.tables import SQLModel
from kernelagent.domain import Artifact, Cell, FileEntry, Session, new_id, now
from kernelagent.errors import Conflict, KernelAgentError, NotFound

PG_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def _postgres_schema():
    """Create a schema of its own on the test server; yield a URL that uses it; drop it."""
    try:
        admin = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL not reachable at {PG_SERVER}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    schema = sql.Identifier(f"ka_test_{secrets.token_hex(6)}")
    with admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        try:
            options = {"options": f"-csearch_path={schema.as_string(admin)}"}
            yield make_url(PG_SERVER).update_query_dict(options).render_as_string(False)
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/data/kernelagent.db"
    else:
        yield from _postgres_schema()


@pytest.fixture
async def db(url):
    database = await open_database(url)
    yield database
    await database.close()


def make_session(user_id: str, **changes) -> Session:
    session = Session(
        id=new_id(),
        user_id=user_id,
        title="analysis",
        status="idle",
        kernel_id=None,
        parent_id=None,
        created_at=T0,
        updated_at=T0,
    )
    return dataclasses.replace(session, **changes)


def make_cell(session_id: str, index: int, **changes) -> Cell:
    cell = Cell(
        id=new_id(),
        session_id=session_id,
        index=index,
        cell_type="code",
        source=f"x = {index}",
        role="agent",
        outputs=[],
        execution_count=None,
        status="pending",
        started_at=None,
        duration_ms=None,
        metadata={},
    )
    return dataclasses.replace(cell, **changes)


def make_artifact(cell: Cell, **changes) -> Artifact:
    artifact = Artifact(
        id=new_id(),
        session_id=cell.session_id,
        cell_id=cell.id,
        mime_type="image/png",
        size=1234,
        sha256="ab" * 32,
        created_at=T0,
    )
    return dataclasses.replace(artifact, **changes)


async def new_session(db, name: str = "ada", **changes) -> Session:
    user = await db.users.add(name, f"hash-of-{name}")
    session = make_session(user.id, **changes)
    await db.sessions.add(session)
    return session


# users


async def test_users_add_get_by_token_and_list(db):
    ada = await db.users.add("ada", "hash-a")
    bob = await db.users.add("bob", "hash-b")
    assert ada.name == "ada" and ada.id != bob.id
    assert ada.created_at.tzinfo == dt.UTC
    assert await db.users.get(ada.id) == ada
    assert await db.users.by_token_hash("hash-b") == bob
    assert await db.users.get("nobody") is None
    assert await db.users.by_token_hash("no-such-hash") is None
    assert await db.users.list() == [ada, bob]


async def test_user_name_and_token_are_unique(db):
    await db.users.add("ada", "hash-a")
    with pytest.raises(Conflict):
        await db.users.add("ada", "hash-other")
    with pytest.raises(Conflict):
        await db.users.add("other", "hash-a")
    assert [user.name for user in await db.users.list()] == ["ada"]


# sessions


async def test_sessions_add_get_and_list_newest_first(db):
    ada = await db.users.add("ada", "hash-a")
    bob = await db.users.add("bob", "hash-b")
    old = make_session(ada.id, title="old", updated_at=T0)
    new = make_session(ada.id, title="new", updated_at=T0 + dt.timedelta(hours=1))
    middle = make_session(ada.id, title="middle", updated_at=T0 + dt.timedelta(minutes=1))
    others = make_session(bob.id, title="bob's")
    for session in (old, new, middle, others):
        await db.sessions.add(session)

    assert await db.sessions.get(middle.id) == middle
    assert await db.sessions.get("missing") is None
    assert [s.title for s in await db.sessions.list_for_user(ada.id)] == ["new", "middle", "old"]
    assert await db.sessions.list_for_user(bob.id) == [others]
    assert await db.sessions.list_for_user("nobody") == []

    await db.sessions.update(old.id, updated_at=T0 + dt.timedelta(days=1))
    assert [s.title for s in await db.sessions.list_for_user(ada.id)] == ["old", "new", "middle"]


async def test_session_add_refuses_a_taken_id_and_an_unknown_user(db):
    session = await new_session(db)
    with pytest.raises(Conflict):
        await db.sessions.add(dataclasses.replace(session, title="again"))
    with pytest.raises(NotFound):
        await db.sessions.add(make_session("no-such-user"))
    assert (await db.sessions.get(session.id)).title == "analysis"


async def test_session_update(db):
    session = await new_session(db, parent_id="some-parent")
    later = T0 + dt.timedelta(minutes=5)
    updated = await db.sessions.update(
        session.id, title="renamed", status="busy", kernel_id="k-1", updated_at=later
    )
    expected = dataclasses.replace(
        session, title="renamed", status="busy", kernel_id="k-1", updated_at=later
    )
    assert updated == expected
    assert await db.sessions.get(session.id) == expected

    cleared = await db.sessions.update(session.id, kernel_id=None, status="stopped")
    assert cleared == dataclasses.replace(expected, kernel_id=None, status="stopped")
    assert await db.sessions.get(session.id) == cleared

    with pytest.raises(ValueError, match="user_id"):
        await db.sessions.update(session.id, user_id="someone-else")
    with pytest.raises(NotFound):
        await db.sessions.update("missing", title="x")


async def test_session_delete_cascades_to_cells_artifacts_and_files(db):
    doomed = await new_session(db, name="ada")
    kept = await new_session(db, name="bob")
    rows = {}
    for session in (doomed, kept):
        cells = [make_cell(session.id, i) for i in range(3)]
        for cell in cells:
            await db.cells.append(cell)
        artifact = make_artifact(cells[1])
        await db.artifacts.add(artifact)
        await db.files.upsert(session.id, FileEntry("data.csv", 10, "cd" * 32, T0))
        rows[session.id] = cells, artifact

    await db.sessions.delete(doomed.id)

    cells, artifact = rows[doomed.id]
    assert await db.sessions.get(doomed.id) is None
    assert await db.cells.list(doomed.id) == []
    assert await db.cells.get(cells[0].id) is None
    assert await db.cells.next_index(doomed.id) == 0
    assert await db.artifacts.get(artifact.id) is None
    assert await db.artifacts.list_for_cell(cells[1].id) == []
    assert await db.files.list(doomed.id) == []

    cells, artifact = rows[kept.id]
    assert await db.sessions.get(kept.id) == kept
    assert await db.cells.list(kept.id) == cells
    assert await db.artifacts.list_for_cell(cells[1].id) == [artifact]
    assert len(await db.files.list(kept.id)) == 1

    await db.sessions.delete(doomed.id)  # gone already: nothing to do


# cells


async def test_cells_append_list_get_and_next_index(db):
    session = await new_session(db)
    assert await db.cells.next_index(session.id) == 0
    assert await db.cells.list(session.id) == []
    # ids in reverse order, so that listing by id or by insertion would show
    cells = [make_cell(session.id, i, id=f"cell-{9 - i}") for i in range(4)]
    for cell in cells:
        assert await db.cells.next_index(session.id) == cell.index
        await db.cells.append(cell)
    assert await db.cells.next_index(session.id) == 4
    assert await db.cells.list(session.id) == cells
    assert await db.cells.get("cell-8") == cells[1]
    assert await db.cells.get("missing") is None


async def test_cell_append_conflicts(db):
    session = await new_session(db)
    first = make_cell(session.id, 0)
    await db.cells.append(first)
    with pytest.raises(Conflict):  # index taken
        await db.cells.append(make_cell(session.id, 0))
    with pytest.raises(Conflict):  # not the next free index: it would leave a gap
        await db.cells.append(make_cell(session.id, 2))
    with pytest.raises(Conflict):
        await db.cells.append(make_cell(session.id, -1))
    with pytest.raises(Conflict):  # cell id taken
        await db.cells.append(make_cell(session.id, 1, id=first.id))
    with pytest.raises(NotFound):
        await db.cells.append(make_cell("no-such-session", 0))
    assert await db.cells.list(session.id) == [first]
    assert await db.cells.next_index(session.id) == 1


async def test_concurrent_appends_at_one_index_let_exactly_one_win(db):
    session = await new_session(db)
    await db.cells.append(make_cell(session.id, 0))
    contenders = [make_cell(session.id, 1) for _ in range(8)]
    results = await asyncio.gather(
        *(db.cells.append(cell) for cell in contenders), return_exceptions=True
    )
    assert sum(result is None for result in results) == 1
    assert all(isinstance(r, Conflict) for r in results if r is not None), results
    winner = contenders[results.index(None)]
    assert (await db.cells.list(session.id))[1] == winner


async def test_append_costs_the_same_at_any_length(db):
    session = await new_session(db)
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        statements.append(statement)

    async def append_counting(index: int) -> list[str]:
        statements.clear()
        event.listen(db.engine, "before_cursor_execute", count)
        try:
            await db.cells.append(make_cell(session.id, index))
        finally:
            event.remove(db.engine, "before_cursor_execute", count)
        return list(statements)

    await db.cells.append(make_cell(session.id, 0))
    early = await append_counting(1)
    for index in range(2, 60):
        await db.cells.append(make_cell(session.id, index))
    late = await append_counting(60)
    assert early == late
    assert not any("count(" in s.lower() or "max(" in s.lower() for s in late)


async def test_cell_update_replaces_the_cell(db):
    session = await new_session(db)
    pending = make_cell(session.id, 0)
    await db.cells.append(pending)
    done = dataclasses.replace(
        pending,
        outputs=[{"output_type": "stream", "name": "stdout", "text": "42\n"}],
        execution_count=1,
        status="ok",
        started_at=T0,
        duration_ms=17,
        metadata={"turn_id": "t-1"},
    )
    await db.cells.update(done)
    assert await db.cells.get(pending.id) == done
    assert await db.cells.list(session.id) == [done]

    with pytest.raises(NotFound):
        await db.cells.update(make_cell(session.id, 1))
    with pytest.raises(NotFound):  # same id, another session: not this cell
        await db.cells.update(dataclasses.replace(done, session_id="other-session"))


async def test_json_outputs_and_metadata_round_trip(db):
    session = await new_session(db)
    outputs = [
        {"output_type": "stream", "name": "stdout", "text": "héllo wörld ✓ 你好 🚀 e\u0301\n"},
        {
            "output_type": "execute_result",
            "execution_count": 3,
            "data": {
                "text/plain": '"quoted" \\ back\\slash\ttab\x00nul',
                "application/json": {"nested": [1, 2.5, None, True, {"deep": ["x", []]}]},
            },
            "metadata": {},
        },
        {"output_type": "error", "ename": "ValueError", "evalue": "ü", "traceback": ["a", "b"]},
    ]
    metadata = {"turn_id": "t-ü", "tool_call_id": "call_1", "tags": {"a": [{"b": None}]}}
    cell = make_cell(session.id, 0, outputs=outputs, metadata=metadata, source="print('ü🚀')")
    await db.cells.append(cell)
    assert await db.cells.get(cell.id) == cell
    assert (await db.cells.list(session.id))[0].outputs == outputs


async def test_datetimes_are_timezone_aware_utc_in_and_out(db):
    india = dt.timezone(dt.timedelta(hours=5, minutes=30))
    created = dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=india)
    session = await new_session(db, created_at=created, updated_at=created)
    got = await db.sessions.get(session.id)
    assert got.created_at == created  # the same instant
    assert got.created_at.tzinfo == dt.UTC
    assert got.created_at == dt.datetime(2024, 2, 29, 18, 29, 59, 999999, tzinfo=dt.UTC)

    cell = make_cell(session.id, 0, started_at=created)
    await db.cells.append(cell)
    assert (await db.cells.get(cell.id)).started_at.tzinfo == dt.UTC
    user = (await db.users.list())[0]
    assert user.created_at.tzinfo == dt.UTC
    assert abs(user.created_at - now()) < dt.timedelta(minutes=1)

    with pytest.raises(ValueError, match="naive"):
        await db.sessions.update(session.id, updated_at=dt.datetime(2024, 1, 1))
    assert (await db.sessions.get(session.id)).updated_at == created


# artifacts


async def test_artifacts_add_get_and_list_for_cell(db):
    session = await new_session(db)
    cell, other = make_cell(session.id, 0), make_cell(session.id, 1)
    await db.cells.append(cell)
    await db.cells.append(other)
    second = make_artifact(cell, id="a-1", created_at=T0 + dt.timedelta(seconds=1))
    first = make_artifact(cell, id="a-2", mime_type="text/html", size=5 * 1024**3)
    elsewhere = make_artifact(other)
    for artifact in (second, first, elsewhere):
        await db.artifacts.add(artifact)
    assert await db.artifacts.get(first.id) == first  # size beyond 32 bits kept
    assert await db.artifacts.get("missing") is None
    assert await db.artifacts.list_for_cell(cell.id) == [first, second]
    assert await db.artifacts.list_for_cell(other.id) == [elsewhere]
    assert await db.artifacts.list_for_cell("missing") == []
    with pytest.raises(Conflict):
        await db.artifacts.add(first)
    with pytest.raises(NotFound):
        await db.artifacts.add(make_artifact(make_cell(session.id, 2)))


# files


async def test_files_upsert_list_sorted_and_delete(db):
    session = await new_session(db)
    paths = ["b.txt", "B.txt", "a/b.txt", "a_b.txt", "a-b.txt", "été.csv", "Z.txt", "a.txt"]
    for i, path in enumerate(paths):
        await db.files.upsert(session.id, FileEntry(path, i, f"{i:064x}", T0))
    listed = await db.files.list(session.id)
    assert [entry.path for entry in listed] == sorted(paths)  # by code point, any collation
    assert listed[0] == FileEntry("B.txt", 1, f"{1:064x}", T0)

    changed = FileEntry("b.txt", 99, "ff" * 32, T0 + dt.timedelta(hours=2))
    await db.files.upsert(session.id, changed)
    listed = await db.files.list(session.id)
    assert len(listed) == len(paths)
    assert next(entry for entry in listed if entry.path == "b.txt") == changed

    await db.files.delete(session.id, "b.txt")
    await db.files.delete(session.id, "never-there.txt")
    assert "b.txt" not in [entry.path for entry in await db.files.list(session.id)]
    assert await db.files.list("other-session") == []
    with pytest.raises(NotFound):
        await db.files.upsert("no-such-session", changed)


# lifetime: migrations, reopening, crashes


async def test_schema_is_at_head_and_matches_the_models(db):
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()

    def inspect(connection):
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return context.get_current_revision(), compare_metadata(context, SQLModel.metadata)

    with db.engine.connect() as connection:
        revision, differences = inspect(connection)
    assert revision == head
    assert differences == []


async def test_opening_twice_migrates_once_and_keeps_data(url):
    first = await open_database(url)
    try:
        session = await new_session(first)
        second = await open_database(url)  # while the first is still open
        try:
            assert await second.sessions.get(session.id) == session
        finally:
            await second.close()
    finally:
        await first.close()
    third = await open_database(url)
    try:
        assert await third.sessions.get(session.id) == session
    finally:
        await third.close()


async def test_concurrent_first_opens_both_succeed(url):
    databases = await asyncio.gather(open_database(url), open_database(url))
    try:
        await databases[0].users.add("ada", "hash-a")
        assert [u.name for u in await databases[1].users.list()] == ["ada"]
    finally:
        for database in databases:
            await database.close()


async def test_closed_and_reopened_database_has_everything(url):
    db = await open_database(url)
    session = await new_session(db)
    cells = [make_cell(session.id, i, outputs=[{"n": i, "ü": "✓"}]) for i in range(3)]
    for cell in cells:
        await db.cells.append(cell)
    artifact = make_artifact(cells[2])
    await db.artifacts.add(artifact)
    entry = FileEntry("out/plot.png", 2048, "ee" * 32, T0)
    await db.files.upsert(session.id, entry)
    users = await db.users.list()
    await db.close()

    db = await open_database(url)
    try:
        assert await db.users.list() == users
        assert await db.sessions.get(session.id) == session
        assert await db.cells.list(session.id) == cells
        assert await db.artifacts.get(artifact.id) == artifact
        assert await db.files.list(session.id) == [entry]
    finally:
        await db.close()


async def test_close_waits_for_a_transaction_in_a_worker_thread_and_closes_its_connection(url):
    """A connection handed back after the pool was disposed would stay open until collected."""
    db = await open_database(url)
    held = threading.Event()
    raw = []

    def transaction():
        with db.engine.connect() as connection:
            raw.append(connection.connection.dbapi_connection)
            held.set()
            time.sleep(0.3)

    worker = asyncio.create_task(asyncio.to_thread(transaction))
    await asyncio.to_thread(held.wait)
    await db.close()
    await worker
    if isinstance(raw[0], sqlite3.Connection):
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            raw[0].execute("SELECT 1")
    else:
        assert raw[0].closed


async def test_a_crash_right_after_a_write_loses_nothing(url):
    """A process that dies without closing anything still wrote what its calls returned."""
    script = textwrap.dedent(
        f"""
        import asyncio, dataclasses, os
        from kernelagent.adapters.db import open_database
        from kernelagent.domain import Cell, Session, now

        async def main():
            db = await open_database({url!r})
            user = await db.users.add("ada", "hash-a")
            t = now()
            await db.sessions.add(Session("s-1", user.id, "t", "busy", None, None, t, t))
            cell = Cell("c-1", "s-1", 0, "code", "1 + 1", "agent", [], None, "pending",
                        t, None, {{}})
            await db.cells.append(cell)
            answer = [{{"output_type": "execute_result", "data": {{"text/plain": "2"}}}}]
            await db.cells.update(dataclasses.replace(cell, outputs=answer, status="ok"))
            os._exit(0)

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    assert await asyncio.wait_for(process.wait(), 60) == 0

    db = await open_database(url)
    try:
        cell = await db.cells.get("c-1")
        assert cell.status == "ok"
        assert cell.outputs[0]["data"]["text/plain"] == "2"
    finally:
        await db.close()


# opening


def test_database_urls_are_normalised():
    assert database_url("postgresql://u@h:5432/db").drivername == "postgresql+psycopg"
    assert database_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert database_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert database_url("sqlite:///a/b.db").database == "a/b.db"
    for unsupported in ("sqlite://", "sqlite:///:memory:", "mysql://u@h/db"):
        with pytest.raises(ValueError):
            database_url(unsupported)


async def test_sqlite_file_is_set_up_for_a_server(tmp_path):
    path = tmp_path / "not" / "yet" / "there.db"
    db = await open_database(f"sqlite:///{path}")
    try:
        assert path.is_file()
        with db.engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL (WAL: crash-safe)
            assert pragma("PRAGMA cache_size").scalar() == -256  # KiB, not the default 2 MiB
    finally:
        await db.close()


async def test_an_unreachable_server_is_a_clear_error():
    with pytest.raises(KernelAgentError, match="cannot open the database"):
        await open_database("postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=2")


async def test_sqlite_writes_queued_together_commit_together_and_fail_alone(tmp_path):
    """On SQLite a process's writes go through one thread: those queued while one ran share a
    commit (many sessions' cells, one transaction), each is answered once committed, and one
    that fails in such a batch fails alone: the others are written, each caller hears of its own."""
    path = tmp_path / "kernelagent.db"
    db = await open_database(f"sqlite:///{path}")
    try:
        user = await db.users.add("alice", "hash")
        sessions = [make_session(user.id) for _ in range(8)]
        for session in sessions:
            await db.sessions.add(session)
        commits: list[int] = []
        event.listen(db.engine, "commit", lambda connection: commits.append(1))
        cells = [make_cell(s.id, i) for i in range(5) for s in sessions]  # each after the last
        await asyncio.gather(*(db.cells.append(c) for c in cells))
        assert len(commits) < len(cells) / 2, "writes queued together were committed one by one"
        with sqlite3.connect(path) as raw:  # answered: on disk, for any other connection
            assert raw.execute("SELECT count(*) FROM cells").fetchone()[0] == len(cells)

        taken = make_cell(sessions[0].id, 0)
        results = await asyncio.gather(
            *(db.cells.append(make_cell(s.id, 5)) for s in sessions),
            db.cells.append(taken),
            *(db.cells.append(make_cell(s.id, 6)) for s in sessions),
            return_exceptions=True,
        )
        assert isinstance(results[len(sessions)], Conflict)
        assert all(r is None for i, r in enumerate(results) if i != len(sessions))
        for session in sessions:
            assert [c.index for c in await db.cells.list(session.id)] == list(range(7))
    finally:
        await db.close()
    with pytest.raises(KernelAgentError, match="closed"):
        await db.cells.append_next(make_cell(sessions[0].id, -1))


async def test_sqlite_cell_writes_are_made_at_once_unless_the_file_is_busy(tmp_path):
    """A cell's write finding nothing else being written is made in the caller's thread, with
    no hand-off; while another process holds the write lock it waits in the writer thread,
    and the event loop goes on meanwhile. Commits leave the log to the writer's checkpoints."""
    path = tmp_path / "kernelagent.db"
    db = await open_database(f"sqlite:///{path}")
    threads: list[str] = []  # where each cell row was inserted

    def traced(dbapi_connection, _record, _proxy):
        def trace(statement):
            if statement.startswith("INSERT INTO cells"):
                threads.append(threading.current_thread().name)

        dbapi_connection.set_trace_callback(trace)

    try:
        event.listen(db.engine, "checkout", traced)
        session = await new_session(db)
        first = await db.cells.append_next(make_cell(session.id, -1))
        assert threads == [threading.current_thread().name]

        other = sqlite3.connect(path, isolation_level=None)  # another process, writing
        other.execute("BEGIN IMMEDIATE")
        try:
            waiting = asyncio.create_task(db.cells.append_next(make_cell(session.id, -1)))
            started = time.monotonic()
            await asyncio.sleep(0.3)
            assert time.monotonic() - started < 5, "the event loop waited for the lock"
            assert not waiting.done()
        finally:
            other.execute("COMMIT")
            other.close()
        second = await asyncio.wait_for(waiting, 10)
        assert (first.index, second.index) == (0, 1)
        assert threads[1] == "kernelagent-sqlite-writer"

        with db.engine.connect() as connection:
            autocheckpoint = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert autocheckpoint == 0
        size = path.stat().st_size
        big = {"output_type": "stream", "name": "stdout", "text": "x" * 20_000}
        for _ in range(50):
            cell = await db.cells.append_next(make_cell(session.id, -1))
            await db.cells.update(dataclasses.replace(cell, outputs=[big], status="ok"))
        async with asyncio.timeout(10):  # the writer thread copies the log into the file
            while path.stat().st_size <= size + 500_000:
                await asyncio.sleep(0.1)
    finally:
        await db.close()


async def test_sqlite_at_once_writes_set_no_busy_timeout_each_and_give_the_pool_it_back(
    tmp_path,
):
    """The connection that writes at once never waits for the lock: its busy timeout is 0
    while it is held, set once rather than around each write, and 30 s again before the pool
    gets it back (after an error, or at close), so no other use of it fails at once."""
    db = await open_database(f"sqlite:///{tmp_path / 'kernelagent.db'}")
    pragmas: list[str] = []
    given_back: list[int] = []

    def traced(dbapi_connection, _record, _proxy):
        dbapi_connection.set_trace_callback(
            lambda statement: pragmas.append(statement) if "busy_timeout" in statement else None
        )

    def checked_in(dbapi_connection, _record):
        given_back.append(dbapi_connection.execute("PRAGMA busy_timeout").fetchone()[0])

    event.listen(db.engine, "checkout", traced)
    event.listen(db.engine, "checkin", checked_in)
    try:
        session = await new_session(db)
        await db.cells.append_next(make_cell(session.id, -1))
        pragmas.clear()
        for _ in range(10):
            cell = await db.cells.append_next(make_cell(session.id, -1))
            await db.cells.update(dataclasses.replace(cell, status="ok"), touch_session=True)
        assert pragmas == [], "the busy timeout was set around each write"

        given_back.clear()
        with pytest.raises(NotFound):  # the held connection is dropped after the error
            await db.cells.append_next(make_cell("no-such-session", -1))
        assert given_back == [30_000]
        cell = await db.cells.append_next(make_cell(session.id, -1))
        assert cell.index == 11
        assert pragmas[-1] == "PRAGMA busy_timeout = 0"
    finally:
        await db.close()
    assert len(given_back) > 1 and all(value == 30_000 for value in given_back)


async def test_sqlite_cells_path_keeps_its_connections_and_renews_one_after_an_error(tmp_path):
    """The event loop's session reads and cell writes reuse two held connections instead of
    taking one from the pool each time; a failed write drops its connection and the next
    opens a fresh one; another thread reads through the pool; close gives both back. A
    session's lookup is its one statement, in SQLite's autocommit."""
    db = await open_database(f"sqlite:///{tmp_path / 'kernelagent.db'}")
    checkouts = []
    event.listen(db.engine, "checkout", lambda *_: checkouts.append(threading.get_ident()))
    try:
        session = await new_session(db)
        checkouts.clear()
        for _ in range(20):
            assert (await db.sessions.get(session.id)).id == session.id
            cell = await db.cells.append_next(make_cell(session.id, -1))
            await db.cells.update(dataclasses.replace(cell, status="ok"), touch_session=True)
        assert len(checkouts) <= 2, "a connection from the pool for each transaction"

        statements: list[str] = []
        held_reader = db._held_reader._connection.connection.driver_connection
        held_reader.set_trace_callback(statements.append)
        assert (await db.sessions.get(session.id)).id == session.id
        held_reader.set_trace_callback(None)
        assert [s.split()[0] for s in statements] == ["SELECT"], "one row: one statement"

        held = len(checkouts)
        with pytest.raises(NotFound):  # a foreign key violation, inside the held transaction
            await db.cells.append_next(make_cell("no-such-session", -1))
        cell = await db.cells.append_next(make_cell(session.id, -1))
        assert cell.index == 20
        assert len(checkouts) == held + 1, "the failed write's connection was kept"
        assert [c.index for c in await db.cells.list(session.id)] == list(range(21))

        elsewhere = await asyncio.to_thread(asyncio.run, db.sessions.get(session.id))
        assert elsewhere is not None and elsewhere.id == session.id
    finally:
        started = time.monotonic()
        await db.close()
    assert time.monotonic() - started < 5, "close waited for a connection never given back"
    assert db.engine.pool.checkedout() == 0


async def test_statements_on_a_cells_path_store_and_read_values_as_the_orm_does(db):
    """The session read and a cell's rows (by the driver itself on SQLite) keep values exactly
    as the ORM writes and reads them: timestamps in UTC, to the microsecond, in one format."""
    started = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)  # no microseconds: still .000000
    session = await new_session(db)
    cell = await db.cells.append_next(make_cell(session.id, -1, started_at=started))
    await db.cells.update(
        dataclasses.replace(cell, status="ok", outputs=[{"output_type": "stream"}]),
        touch_session=True,
    )
    [listed] = await db.cells.list(session.id)  # the ORM's read
    assert listed.started_at == started and listed.started_at.tzinfo is not None
    assert listed.outputs == [{"output_type": "stream"}] and listed.status == "ok"
    got = await db.sessions.get(session.id)
    [orm] = await db.sessions.list_for_user(session.user_id)
    assert got == orm and got.updated_at > session.updated_at
    assert got.updated_at.tzinfo is not None
    if db.engine.dialect.name == "sqlite":
        with db.engine.connect() as connection:
            stored = connection.exec_driver_sql(
                "SELECT c.started_at, s.created_at FROM cells c JOIN sessions s "
                "ON s.id = c.session_id"
            ).one()
        assert stored[0] == "2026-01-02 03:04:05.000000"
        assert len(stored[1]) == len(stored[0])  # the ORM's format (created_at), the same
