"""NamespaceSnapshots: a session's variables kept after each cell, and brought back by restore.

* ``begin()`` queues a capture right behind a cell (the kernel runs it after the cell's reply,
  before the next cell); ``finish()`` stores what it found, off the cell's path: each changed
  variable's bytes content-addressed beside the workspace's files (a variable that did not
  change is never stored twice), and the cell's metadata ``state`` what changed (by name: the
  bytes' sha256, or why they could not be kept), what it cost, and the capture's place in the
  chain (``id``, ``base``): the namespace at any cell is the changes folded in order.
* ``restore()`` gives a fresh kernel the namespace of the last snapshot in a list of cells and
  answers which cells must still run: those after the snapshot, and the ones that made what a
  snapshot cannot hold (an open file, a generator), or what a budget skipped. If anything goes
  wrong, it answers None with why, and the caller replays.

Snapshots are unpickled only inside the session's kernel (``kernelside.state``), never here.
Only the server writes a cell's ``state`` metadata: clients' metadata cannot name a manifest,
and an imported notebook's only where its importer's record vouches for it (``provenance``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from kernelagent.domain import Cell
from kernelagent.errors import KernelAgentError
from kernelagent.services.files import blob_key, keep_blob
from kernelagent.services.ports import Database, KernelRun, NamespaceState, Storage

log = logging.getLogger(__name__)

KEY = "state"  # the cell metadata key, written by this service only
FETCHES = 16  # blobs fetched from storage at once for a restore


@dataclasses.dataclass(frozen=True)
class Restoration:
    """A namespace brought back: from the snapshot after cell ``index``. Still to run (cell
    indices): ``remake``, the cells that made what the snapshot could not hold (then the
    restored variables are bound again: those cells may have set older values), and ``after``,
    the cells after the snapshot."""

    index: int
    variables: int
    remake: list[int]
    after: list[int]


class NamespaceSnapshots:
    def __init__(
        self,
        db: Database,
        storage: Storage,
        kernel_state: NamespaceState,
        enabled: bool,
        cell_seconds: float,
        limit: int,
    ):
        self.db = db
        self.storage = storage
        self.kernel_state = kernel_state
        self.enabled = enabled
        self.cell_seconds = cell_seconds
        self.limit = limit
        self._stored: dict[str, int] = {}  # session id → snapshot bytes stored so far
        self._finishing: dict[str, set[asyncio.Task[None]]] = {}
        self._in_order: dict[str, asyncio.Lock] = {}  # a session's snapshots stored one by one

    async def begin(self, kernel_id: str, cell: Cell) -> KernelRun | None:
        """Queue the capture of what ``cell`` changes (call right after sending it)."""
        if not self.enabled:
            return None
        left = self.limit - await self._stored_bytes(cell.session_id)
        try:
            return await self.kernel_state.begin_capture(
                kernel_id, cell.index, max(left, 0), self.cell_seconds
            )
        except KernelAgentError as e:
            log.warning("no namespace snapshot for cell %s: %s", cell.id, e)
            return None

    def finish(self, cell: Cell, run: KernelRun) -> None:
        """Store the capture in the background (the cell's record is final by now)."""
        task = asyncio.create_task(self._finish(cell, run))
        session_id = cell.session_id
        tasks = self._finishing.setdefault(session_id, set())
        tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not tasks:
                self._finishing.pop(session_id, None)
                self._in_order.pop(session_id, None)

        task.add_done_callback(done)

    async def settle(self, session_id: str) -> None:
        """Wait until the session's snapshots in progress are stored."""
        tasks = list(self._finishing.get(session_id, ()))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        for session_id in list(self._finishing):
            await self.settle(session_id)

    async def _finish(self, cell: Cell, run: KernelRun) -> None:
        async with self._in_order.setdefault(cell.session_id, asyncio.Lock()):
            await self._store(cell, run)

    async def _store(self, cell: Cell, run: KernelRun) -> None:
        try:
            capture = await self.kernel_state.finish_capture(run)
            if capture is None:
                return
            for sha, data in capture.blobs.items():
                await keep_blob(self.storage, sha, data)
            added = sum(len(b) for b in capture.blobs.values())
            total = await self._stored_bytes(cell.session_id) + added
            self._stored[cell.session_id] = total
            note: dict[str, Any] = {
                "id": capture.id,
                "base": capture.base,
                "changes": capture.changes,
                "bytes": added,
                "total": total,
                "ms": capture.ms,
            }
            if capture.removed:
                note["removed"] = capture.removed
            lost = {
                name: entry.get("unserialisable") or entry.get("skipped")
                for name, entry in capture.changes.items()
                if "sha" not in entry and "module" not in entry
            }
            if lost:
                note["not_kept"] = lost
            await self.db.cells.annotate(cell.id, KEY, note)
        except KernelAgentError as e:  # the kernel went away meanwhile (shut down, died)
            log.info("no namespace snapshot after cell %s: %s", cell.id, e)
        except Exception:
            log.exception("the namespace snapshot after cell %s was not stored", cell.id)

    async def restore(self, kernel_id: str, cells: list[Cell]) -> tuple[Restoration | None, str]:
        """Give ``kernel_id`` (fresh) the namespace of the last snapshot in ``cells``; the
        cells still to run come with it. None (and why) when the caller must replay."""
        if not self.enabled:
            return None, "namespace snapshots are off"
        folded = fold(cells)
        if folded is None:
            return None, "no namespace snapshot was taken"
        last, snapshot_id, manifest = folded
        try:
            shas = sorted({e["sha"] for e in manifest.values() if "sha" in e})
            blobs = dict(zip(shas, await self._get_all(shas), strict=True))
            restored = await self.kernel_state.restore(kernel_id, manifest, blobs, snapshot_id)
        except Exception as e:  # noqa: BLE001 - storage, kernel, data: replay covers them all
            return None, f"{type(e).__name__}: {e}"
        remake = {
            int(entry["cell"])
            for name, entry in manifest.items()
            if name not in restored.restored and "cell" in entry
        }
        after = [c.index for c in cells if c.index > last.index]
        return Restoration(last.index, len(restored.restored), sorted(remake), after), ""

    async def rebind(self, kernel_id: str) -> None:
        await self.kernel_state.rebind(kernel_id)

    async def _get_all(self, shas: list[str]) -> list[bytes]:
        """The blobs, a few fetched at a time (storage round trips overlap)."""
        limit = asyncio.Semaphore(FETCHES)

        async def get(sha: str) -> bytes:
            async with limit:
                return await self.storage.get(blob_key(sha))

        return list(await asyncio.gather(*(get(sha) for sha in shas)))

    def forget(self, session_id: str) -> None:
        """A deleted session's running total (its snapshots went with its rows)."""
        self._stored.pop(session_id, None)

    async def _stored_bytes(self, session_id: str) -> int:
        if session_id not in self._stored:
            cells = await self.db.cells.list(session_id)
            totals = [
                c.metadata[KEY].get("total", 0)
                for c in cells
                if isinstance(c.metadata.get(KEY), dict)
            ]
            self._stored[session_id] = int(totals[-1]) if totals else 0
        return self._stored[session_id]


def fold(cells: list[Cell]) -> tuple[Cell, str, dict[str, dict[str, Any]]] | None:
    """The namespace as of the last snapshot of ``cells`` that a whole chain of captures
    leads to: (its cell, its capture id, the manifest). A capture with no base starts over (a
    new kernel's first); one whose base is not the capture before it (that record is missing)
    ends the chain there."""
    manifest: dict[str, dict[str, Any]] = {}
    found: tuple[Cell, str] | None = None
    for cell in cells:
        state = cell.metadata.get(KEY)
        if cell.cell_type != "code" or not isinstance(state, dict) or "id" not in state:
            continue
        if state.get("base") is None:
            manifest = {}
        elif found is None or state["base"] != found[1]:
            break
        for name in state.get("removed", ()):
            manifest.pop(name, None)
        manifest.update(state.get("changes", {}))
        found = (cell, str(state["id"]))
    return None if found is None else (*found, manifest)
