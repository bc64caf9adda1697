"""Folding a record's namespace snapshots: the changes of a whole chain of captures, in order."""

from __future__ import annotations

from kernelagent.domain import Cell
from kernelagent.services.namespaces import fold


def cell(index: int, state: dict | None, cell_type: str = "code") -> Cell:
    metadata = {} if state is None else {"state": state}
    return Cell(f"c{index}", "s", index, cell_type, "", "web", [], None, "ok", None, None, metadata)


def entry(sha: str, at: int) -> dict:
    return {"sha": sha, "size": 1, "cell": at}


def test_changes_fold_in_order_and_removals_apply():
    cells = [
        cell(0, {"id": "k-1", "base": None, "changes": {"a": entry("1", 0), "b": entry("2", 0)}}),
        cell(1, None),  # failed: no capture of its own, the next one takes its changes
        cell(2, {"id": "k-2", "base": "k-1", "changes": {"a": entry("3", 2)}, "removed": ["b"]}),
        cell(3, {"id": "k-3", "base": "k-2", "changes": {}}),
    ]
    last, snapshot_id, manifest = fold(cells)
    assert (last.index, snapshot_id) == (3, "k-3")
    assert manifest == {"a": entry("3", 2)}


def test_a_missing_link_ends_the_chain_and_a_new_kernel_starts_over():
    first = cell(0, {"id": "k-1", "base": None, "changes": {"a": entry("1", 0)}})
    orphan = cell(2, {"id": "k-3", "base": "k-2", "changes": {"c": entry("9", 2)}})
    last, snapshot_id, manifest = fold([first, cell(1, None), orphan])
    assert (last.index, snapshot_id, manifest) == (0, "k-1", {"a": entry("1", 0)})
    # a kernel rebuilt by replay captures everything again, with no base: a new chain
    fresh = cell(3, {"id": "n-1", "base": None, "changes": {"z": entry("5", 3)}})
    last, snapshot_id, manifest = fold([first, fresh])
    assert (last.index, snapshot_id, manifest) == (3, "n-1", {"z": entry("5", 3)})


def test_no_snapshot_folds_to_nothing():
    assert fold([cell(0, None), cell(1, {"id": "x", "base": None}, cell_type="markdown")]) is None
