"""The kernel side of namespace snapshots: which names a cell mentions."""

from __future__ import annotations

import types

from kernelagent.kernelside import state


def test_a_cells_mentions_are_read_from_ipythons_own_transform(shell, monkeypatch):
    """The names of a cell kept in history come from the code IPython ran (its history has it
    transformed), the same names as transforming it again, magics included; a cell not kept
    in history, or a history whose last entry is another cell, transforms again."""
    monkeypatch.setattr(state, "_kernel", lambda: types.SimpleNamespace(shell=shell))
    seen = []
    shell.events.register("post_run_cell", lambda result: seen.append(result.info))
    cell = "total = 1\n%time part = total + 1\nprint(part)\n\n"
    shell.run_cell(cell, store_history=True)
    shell.run_cell("quiet = total", store_history=False)

    kept, unkept = seen
    assert state._transformed(kept) == shell.transform_cell(cell).rstrip("\n")
    assert "run_line_magic" in state._transformed(kept)
    names = state._names_in(cell, state._transformed(kept))
    assert names == state._names_in(cell) and {"total", "part", "print"} <= names
    assert state._transformed(unkept) is None

    shell.history_manager.input_hist_raw.append("something else")
    shell.history_manager.input_hist_parsed.append("something_else")
    assert state._transformed(kept) is None
