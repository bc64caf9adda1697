"""Provenance: which cell metadata only the server writes, and when an imported notebook's
copy of it may be believed.

A cell's ``state`` (its namespace snapshot), ``snapshot`` (its workspace manifest) and
``upload`` (the sha256 of an uploaded file) name content-addressed blobs that a rebuild reads
into a kernel or a workspace. Written into a file, they are not a key to those blobs: metadata
from outside (a client's cell, a notebook anyone could have written or been sent) loses them.
An imported notebook keeps them only where its importer's own record vouches for them: the
run of its replayable cells that are, in order and from the first, the replayable cells of one
of the importer's sessions (same ids, sources and outcomes): a notebook exported here, perhaps
with cells added or edited after the run. Vouched metadata is taken from that record, never
from the file. After the run, an upload is kept if it is one of a cell of the importer's own
record, and the code cells are marked ``files_unrecorded``: they re-run, and the workspace is
then what they made (``KernelSupervisor.rebuild``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from kernelagent.domain import Cell, User
from kernelagent.services.ports import Database
from kernelagent.services.replay import replayable

UNRECORDED = "files_unrecorded"  # an imported cell that re-runs: the record has not its files
SERVER_KEYS = ("state", "snapshot", "upload", UNRECORDED)


def from_outside(metadata: dict[str, Any]) -> dict[str, Any]:
    """Cell metadata from a client or a file, without what only the server may write."""
    return {k: v for k, v in metadata.items() if k not in SERVER_KEYS}


def origin_id(cell: Cell) -> str:
    """The id the cell had in the notebook (a record's cell id, when exported here)."""
    return str(cell.metadata.get("imported_id") or "")


async def vouched(db: Database, user: User, cells: list[Cell]) -> list[Cell]:
    """``cells`` (imported, metadata as the file had it, at their new indices) with the
    server-only metadata their importer's record vouches for, and none elsewhere."""
    kept = {cell.id: from_outside(cell.metadata) for cell in cells}
    claimed = replayable(cells)  # uploads: as the file claims them
    pairs = await _matching(db, user, claimed)
    at = {recorded.index: cell.index for cell, recorded in pairs}
    trusted = set()
    for cell, recorded in pairs:
        server = {k: copy.deepcopy(v) for k, v in recorded.metadata.items() if k in SERVER_KEYS}
        if "state" in server and not _reindex(server["state"], at):
            break  # it names a cell the import does not hold: the chain ends before it
        kept[cell.id].update(server)
        trusted.add(cell.id)
    for cell in claimed:
        if cell.id in trusted:
            continue
        if cell.cell_type == "code":
            kept[cell.id][UNRECORDED] = True  # what it does to the files is known once it ran
        elif (upload := await _own_upload(db, user, cell)) is not None:
            kept[cell.id]["upload"] = upload  # after an edit: still the user's own file
    return [dataclasses.replace(c, metadata=kept[c.id]) for c in cells]


async def _own_upload(db: Database, user: User, cell: Cell) -> dict[str, Any] | None:
    """The upload an imported cell names, when it is that of a cell of the user's record."""
    recorded = await db.cells.get(origin_id(cell))
    if recorded is None or recorded.metadata.get("upload") != cell.metadata.get("upload"):
        return None
    session = await db.sessions.get(recorded.session_id)
    if session is None or session.user_id != user.id:
        return None
    return copy.deepcopy(recorded.metadata["upload"])


async def _matching(db: Database, user: User, claimed: list[Cell]) -> list[tuple[Cell, Cell]]:
    """The longest run of ``claimed`` that is, from the first, the replayable record of one
    of ``user``'s sessions: (imported cell, recorded cell) pairs."""
    if not claimed:
        return []
    first = await db.cells.get(origin_id(claimed[0]))
    if first is None:
        return []
    session = await db.sessions.get(first.session_id)
    if session is None or session.user_id != user.id:
        return []
    pairs = []
    for cell, recorded in zip(claimed, replayable(await db.cells.list(session.id)), strict=False):
        mine = (origin_id(cell), cell.cell_type, cell.source, cell.status)
        if mine != (recorded.id, recorded.cell_type, recorded.source, recorded.status):
            break
        pairs.append((cell, recorded))
    return pairs


def _reindex(state: dict[str, Any], at: dict[int, int]) -> bool:
    """Point the cells a namespace snapshot names (the ones that made a variable) at their
    indices in the import; False if one is not there."""
    for entry in state.get("changes", {}).values():
        if "cell" in entry:
            if int(entry["cell"]) not in at:
                return False
            entry["cell"] = at[int(entry["cell"])]
    return True
