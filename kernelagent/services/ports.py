"""The interfaces services need from adapters. Each has an embedded and a networked implementation.

=================  ==================================  =======================================
port               embedded default                    production backend (chosen by URL)
=================  ==================================  =======================================
``Database``       SQLite file (sqlmodel)              PostgreSQL (``KERNELAGENT_DATABASE_URL``)
``Storage``        local directory (fsspec)            S3 via s3fs (``KERNELAGENT_STORAGE_URL``)
``SessionLocks``   asyncio locks                       Redis with expiry + fencing
``EventLog``       in-process deques                   Redis Streams
``KernelBackend``  sandboxed kernels on this machine   (containers, remote gateways: later)
``RuntimeState``   this process's memory               Redis (leases, counters, pub/sub)
=================  ==================================  =======================================

Every method is async; implementations raise ``kernelagent.errors`` exceptions, never driver ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

from kernelagent.domain import (
    Artifact,
    Cell,
    FileEntry,
    FileStat,
    KernelMessage,
    NamespaceCapture,
    NamespaceRestored,
    Package,
    PythonTarget,
    Reply,
    Session,
    Signal,
    Turn,
    User,
)
from kernelagent.events import Logged, SessionEvent


class UserRepo(Protocol):
    async def add(self, name: str, token_hash: str) -> User: ...
    async def get(self, user_id: str) -> User | None: ...
    async def by_token_hash(self, token_hash: str) -> User | None: ...
    async def list(self) -> list[User]: ...


class SessionRepo(Protocol):
    async def add(self, session: Session) -> None: ...
    async def get(self, session_id: str) -> Session | None: ...
    async def list_for_user(self, user_id: str) -> list[Session]:
        """Newest first (``updated_at`` descending)."""
        ...

    async def holding_kernels(self, user_id: str | None = None) -> list[Session]:
        """Sessions with a live kernel (of ``user_id``, or everyone's), least recently used
        first."""
        ...

    async def update(self, session_id: str, **changes: Any) -> Session:
        """Change ``title``, ``status``, ``kernel_id`` or ``updated_at``; NotFound if missing."""
        ...

    async def delete(self, session_id: str) -> None:
        """Delete the session with its cells, artifacts and file rows."""
        ...


class CellRepo(Protocol):
    async def append(self, cell: Cell) -> None:
        """Insert at ``cell.index``, which must be the next free index (Conflict otherwise).

        One row per cell: saving cell N costs the same at N = 5 and N = 500.
        """
        ...

    async def append_many(self, cells: list[Cell]) -> None:
        """Insert a new session's cells, indexed 0…n-1, in one statement."""
        ...

    async def append_next(self, cell: Cell) -> Cell:
        """Insert at the session's next free index (``cell.index`` is ignored); returns it."""
        ...

    async def update(self, cell: Cell, touch_session: bool = False) -> None:
        """Replace the cell with the same id (outputs, status, timing); ``touch_session`` also
        bumps the session's ``updated_at`` in the same transaction."""
        ...

    async def annotate(self, cell_id: str, key: str, value: Any) -> None:
        """Set one key of the cell's metadata, atomically (others may update the cell)."""
        ...

    async def next_index(self, session_id: str) -> int: ...
    async def list(self, session_id: str) -> list[Cell]:
        """In index order."""
        ...

    async def get(self, cell_id: str) -> Cell | None: ...


class ArtifactRepo(Protocol):
    async def add(self, artifact: Artifact) -> None: ...
    async def get(self, artifact_id: str) -> Artifact | None: ...
    async def add_many(self, artifacts: list[Artifact]) -> None: ...
    async def list_for_session(self, session_id: str) -> list[Artifact]: ...
    async def list_for_cell(self, cell_id: str) -> list[Artifact]: ...


class FileRepo(Protocol):
    async def upsert(self, session_id: str, entry: FileEntry) -> None: ...
    async def list(self, session_id: str) -> list[FileEntry]:
        """Sorted by path."""
        ...

    async def delete(self, session_id: str, path: str) -> None: ...


class TurnRepo(Protocol):
    async def add(self, turn: Turn) -> None: ...
    async def get(self, turn_id: str) -> Turn | None: ...
    async def update(self, turn_id: str, **changes: Any) -> Turn:
        """Change ``status``, ``ended_at``, token counts, ``cost``, ``error`` or ``pending``."""
        ...

    async def transition(self, turn_id: str, from_status: str, **changes: Any) -> bool:
        """Apply ``changes`` only if the status is still ``from_status``; whether it did."""
        ...

    async def list(self, session_id: str) -> list[Turn]:
        """Oldest first."""
        ...

    async def unfinished(self, session_id: str | None = None) -> list[Turn]:
        """Running or waiting turns (of one session, or of all), oldest first."""
        ...


class Database(Protocol):
    users: UserRepo
    sessions: SessionRepo
    cells: CellRepo
    artifacts: ArtifactRepo
    files: FileRepo
    turns: TurnRepo

    async def close(self) -> None: ...


class Storage(Protocol):
    """Bytes by key (``artifacts/ab/abcdef…``, ``sessions/<id>/files/data.csv``)."""

    async def put(self, key: str, data: bytes) -> None: ...
    async def get(self, key: str) -> bytes:
        """NotFound when the key does not exist."""
        ...

    async def exists(self, key: str) -> bool: ...
    async def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (recursive), relative to the storage root, sorted."""
        ...

    async def delete(self, key: str) -> None:
        """Remove one object; a missing one is not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> None: ...


class EventLog(Protocol):
    """Per-session events with increasing ids (``adapters.events``: in-process or Redis)."""

    async def publish(self, session_id: str, event: SessionEvent) -> Logged: ...
    async def read(self, session_id: str, after: str | None, wait: float = 0) -> list[Logged]:
        """Events after id ``after`` (all when None), waiting up to ``wait`` s for the first."""
        ...

    async def delete(self, session_id: str) -> None: ...
    async def close(self) -> None: ...


class ChatModel(Protocol):
    """An OpenAI-compatible chat endpoint (``adapters.llm.OpenAIChat``)."""

    async def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_text: Callable[[str], Awaitable[None]],
        on_retry: Callable[[int, str], Awaitable[None]],
    ) -> Reply:
        """Stream one reply; LLMError (with what to change) when there is none."""
        ...

    async def close(self) -> None: ...


class SessionLocks(Protocol):
    def hold(
        self, session_id: str, timeout: float | None = None
    ) -> AbstractAsyncContextManager[int]:
        """Exclusive hold of a session, granted in arrival order; yields a fencing token.

        Tokens increase strictly per session, so a holder whose lock expired (a stalled replica)
        can be told apart from the current one. LimitExceeded after ``timeout`` seconds.
        """
        ...

    async def close(self) -> None: ...


class Workspaces(Protocol):
    """The files a kernel sees as ``/workspace``, by workspace name, wherever the kernel runs.

    Names are the session's id, or a name of the caller's for a kernel without a session (a
    name starting with "." is scratch: pooled kernels, replays). Paths are relative POSIX
    paths already confined by the caller; only regular files count, never through a symlink.
    """

    async def list_files(self, workspace: str) -> dict[str, FileStat]:
        """Every regular file (an empty dict for a workspace that does not exist)."""
        ...

    async def read_file(self, workspace: str, path: str, limit: int) -> bytes:
        """NotFound when it is not a regular file; TooLarge past ``limit`` bytes."""
        ...

    async def write_file(self, workspace: str, path: str, data: bytes) -> None:
        """Atomically, creating parent directories; InvalidInput when a parent is a file."""
        ...

    async def remove_file(self, workspace: str, path: str) -> None:
        """A missing file is not an error."""
        ...

    async def remove_workspace(self, workspace: str) -> None: ...


class KernelRun(Protocol):
    """One ``execute_request`` sent to a kernel, and the messages the kernel sent about it."""

    msg_id: str

    async def next(self, timeout: float) -> KernelMessage | None:
        """The next message of this request (iopub, stdin, and its shell reply as it comes:
        usually before the idle status), in arrival order; None after ``timeout`` s of
        silence. KernelDied (its ``cause`` says how) when the kernel dies, is restarted or is
        shut down meanwhile."""
        ...

    async def reply(self, timeout: float) -> KernelMessage | None:
        """The request's shell reply, or None after ``timeout`` s."""
        ...

    async def send_input(self, message: dict[str, Any]) -> None:
        """An ``input_reply`` (a Jupyter message dict) to the kernel's ``input_request``."""
        ...

    def close(self) -> None:
        """Stop collecting this request's messages (always called, when done with it)."""
        ...


class NamespaceState(Protocol):
    """Snapshots of a kernel's namespace, taken and restored inside the kernel."""

    async def begin_capture(
        self, kernel_id: str, cell: int, max_bytes: int, max_seconds: float
    ) -> KernelRun:
        """Queue a capture of what the cell sent just before changed."""
        ...

    async def finish_capture(self, run: KernelRun) -> NamespaceCapture | None:
        """The capture's answer (None: the cell failed, nothing to take); closes ``run``."""
        ...

    async def restore(
        self,
        kernel_id: str,
        manifest: dict[str, dict[str, Any]],
        blobs: dict[str, bytes],
        snapshot_id: str,
    ) -> NamespaceRestored:
        """Bind the manifest's variables in a fresh kernel (the namespace of capture
        ``snapshot_id``: the kernel's next capture is relative to it)."""
        ...

    async def rebind(self, kernel_id: str) -> int:
        """Bind again what the last restore bound (cells re-ran on top of it)."""
        ...


class KernelChannels(Protocol):
    """A Jupyter client's own connection to a kernel (a gateway WebSocket): it sees every iopub
    message and the replies to what it sent, as jupyter_server gives each WebSocket."""

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """A client's message (a Jupyter message dict) to the kernel's ``channel``."""
        ...

    async def receive(self) -> KernelMessage:
        """The next message from the kernel, on any channel, in arrival order."""
        ...

    def received(self) -> list[KernelMessage]:
        """What has arrived and not been taken yet (without waiting)."""
        ...

    def keep_iopub_only(self) -> None:
        """The client went away: stop its requests' channels, keep listening to iopub."""
        ...

    def close(self) -> None: ...


class KernelBackend(Workspaces, Protocol):
    """Session kernels, wherever they run (``adapters.kernels.LocalKernels``: sandboxed on this
    machine). Kernel ids are the backend's; an unknown id is a dead kernel, never a KeyError."""

    kernel_name: str
    # True: every server process reaches every kernel directly (kernels on a gateway), so any
    # process serves any session; False: only the process that started a kernel reaches it
    shared: bool

    def kernelspec(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The kernelspec session kernels are started from (``kernel.json``'s content), and
        its resource files (logos) by name, for Jupyter clients."""
        ...

    async def start(self, workspace: str) -> str:
        """A new kernel whose ``/workspace`` is ``workspace`` (made if missing), ready to run
        code when this returns. SandboxError or KernelDied (with the reason) otherwise."""
        ...

    async def take_over(self, kernel_id: str, workspace: str) -> bool:
        """Reach a kernel that another server process started (as ``workspace``'s): True when
        it still runs and this process reaches it (a kernel on a gateway outlives the process
        that started it, and serves every process); False when it cannot (a local kernel lives
        and dies with its process)."""
        ...

    async def restarted_elsewhere(self, kernel_id: str) -> None:
        """Another server process restarted this (shared) kernel: this process's channels to
        its old process are dropped (runs in flight end with KernelDied, cause "restarted")
        and its gateway clients' sockets are opened again."""
        ...

    async def adopt(self, kernel_id: str, workspace: str) -> None:
        """Give a running kernel (a pooled one) the workspace ``workspace``: files already
        there join the kernel's, and the kernel's own workspace becomes ``workspace``."""
        ...

    async def execute(
        self,
        kernel_id: str,
        code: str = "",
        *,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
        message: dict[str, Any] | None = None,
    ) -> KernelRun:
        """Send an ``execute_request`` (``message``: a client's own, sent as is, so the
        kernel's messages carry the client's msg_id; ``metadata`` and ``buffers``: the
        request's, which kernel-side code reads as data). KernelDied if the kernel is gone."""
        ...

    async def interrupt(self, kernel_id: str) -> None: ...

    async def restart(self, kernel_id: str) -> None:
        """A new kernel process under the same id; runs in flight end with KernelDied
        (cause "restarted")."""
        ...

    async def shutdown(self, kernel_id: str, now: bool = False) -> None:
        """Stop the kernel (an unknown one is not an error); runs in flight end with
        KernelDied (cause "shutdown")."""
        ...

    async def is_alive(self, kernel_id: str) -> bool: ...

    def running(self) -> int:
        """How many kernels this process runs or reaches now (pooled ones too)."""
        ...

    async def exit_reason(self, kernel_id: str) -> str | None:
        """Why a dead kernel died ("out of memory (limit 1 GiB)"), when the sandbox can tell."""
        ...

    async def connect(self, kernel_id: str) -> KernelChannels:
        """A client connection of its own to the kernel's channels."""
        ...

    def package_dir(self, kernel_id: str) -> Path | None:
        """The host directory the kernel sees read-only as its packages (``$KERNELAGENT_
        PACKAGES``), which the server fills; None when it has none (a kernel elsewhere)."""
        ...

    async def close(self, keep: bool = False) -> None:
        """Stop every kernel this backend started (``keep``: leave those that outlive this
        process running, for another process to take over)."""
        ...


class PackageStore(Protocol):
    """Packages for kernels, fetched with the server's network and kept for every session
    (``adapters.package_cache.PackageCache``)."""

    index_url: str

    async def resolve(
        self,
        specs: list[str],
        held: dict[str, str],
        target: PythonTarget,
        no_deps: bool,
        say: Callable[[str], None],
    ) -> list[Package]:
        """What installing ``specs`` adds to ``target`` with the versions in ``held`` kept;
        progress told to ``say``. PackageFetchFailed when pip cannot."""
        ...

    async def fetch(
        self, dists: list[Package], target: PythonTarget, say: Callable[[str], None]
    ) -> None:
        """Each of ``dists`` ready to link (downloaded and unpacked once per machine)."""
        ...

    def size(self, dist: Package, target: PythonTarget) -> int: ...

    def link(self, dist: Package, site: Path, target: PythonTarget) -> None:
        """Make a fetched ``dist`` importable from ``site``."""
        ...

    def unlink(self, dist: Package, site: Path, target: PythonTarget) -> None: ...


OwnerKind = Literal["kernel", "turn"]


class RuntimeState(Protocol):
    """What sessions are doing right now, shared by every server process (``adapters.runtime``:
    in this process, or in Redis). Each process holds a lease renewed by a heartbeat; what a
    process owns (a session's kernel, a running turn) counts only while its lease lives, so a
    process that died owns nothing after the lease expires. What must outlive every process (a
    paused turn's question) is the database's, not this."""

    process_id: str

    async def start(self, address: str = "") -> None:
        """Take this process's lease, keep it renewed, and start delivering signals. The lease
        names ``address``, the URL at which the other processes reach this one."""
        ...

    async def close(self) -> None:
        """Give up the lease and everything this process owns."""
        ...

    async def alive(self, process_id: str) -> bool: ...

    async def address(self, process_id: str) -> str | None:
        """The URL a live process is reached at ("" if it gave none); None if it is gone."""
        ...

    async def claim(self, kind: OwnerKind, key: str, process_id: str | None = None) -> None:
        """``process_id`` (this process by default) now owns ``key`` (a session's kernel by
        session id, a turn by turn id)."""
        ...

    async def release(self, kind: OwnerKind, key: str) -> None:
        """Forget the owner of ``key`` if it is this process."""
        ...

    async def owner(self, kind: OwnerKind, key: str) -> str | None:
        """The live process that owns ``key``; None when nobody (alive) does."""
        ...

    async def set_running(self, session_id: str, cell_id: str | None) -> None:
        """This process runs ``cell_id`` in the session now (None: it finished)."""
        ...

    async def running(self, session_ids: Sequence[str]) -> set[str]:
        """Which of the sessions run a cell now, in any live process."""
        ...

    async def touch(self, session_id: str) -> None:
        """The session did something now (a cell ended)."""
        ...

    async def last_activity(self, session_id: str) -> float | None:
        """When (Unix time) the session last did something, if known."""
        ...

    async def forget(self, session_id: str) -> None:
        """Drop what is kept about a deleted session (its last activity)."""
        ...

    async def generation(self, key: str, bump: bool = False) -> int:
        """A counter every process sees: bumped (``bump``) by the process that changes what
        ``key`` names (a kernel it restarted), read by the others before they use it."""
        ...

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        """Count a hit on ``key`` in the current window of ``window`` seconds (the same for
        every process): the hits in it so far, this one included, and the seconds left."""
        ...

    async def connections(self, session_id: str, change: int = 0) -> int:
        """Gateway clients connected to the session's kernel, across live processes, after
        adding ``change`` for this process."""
        ...

    async def signal(self, signal: Signal) -> None:
        """Deliver ``signal`` to every live process (or to ``signal.to``), this one included."""
        ...

    def on_signal(self, handler: Callable[[Signal], Awaitable[None]]) -> None:
        """Call ``handler`` with each signal this process receives."""
        ...
