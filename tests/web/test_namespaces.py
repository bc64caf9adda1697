"""Namespace snapshots: branches and kernels that were gone come back by restore, not by
re-running every cell; over the real API, with real sandboxed kernels."""

from __future__ import annotations

import dataclasses
import json
import time

import nbformat
import pytest
from conftest import backend_settings, running

from kernelagent.services.files import blob_key

pytestmark = pytest.mark.sandbox

SLOW = 6  # seconds a cell of the record computes: a restore must not repeat it

RECORD = [
    "import time\nimport numpy as np\nimport pandas as pd",
    f"time.sleep({SLOW})\ndf = pd.DataFrame({{'a': range(1000), 'b': ['x'] * 1000}})\n"
    "arr = np.arange(10.0)",
    "def double(x):\n    return 2 * x\n\n"
    "class Point:\n    def __init__(self, v):\n        self.v = v\n\n"
    "def adder(n):\n    def add(x):\n        return x + n\n    return add\n\n"
    "add5 = adder(5)\np = Point(7)",
    "from sklearn.linear_model import LinearRegression\n"
    "model = LinearRegression().fit(arr.reshape(-1, 1), arr * 3 + 1)",
    "import plotly.graph_objects as go\nfig = go.Figure(go.Scatter(y=[1, 4, 9]))",
    "log = open('log.txt', 'w')\nseen = [1]",
    "seen.append(2)",
]

CHECK = (
    "(int(df.a.sum()), df.b.iloc[-1], float(arr.sum()), double(4), add5(1), p.v,"
    " isinstance(p, Point), round(float(model.predict([[2.0]])[0]), 3), list(fig.data[0].y),"
    " log.closed, seen, np.__name__)"
)
EXPECTED = "(499500, 'x', 45.0, 8, 6, 7, True, 7.0, [1, 4, 9], False, [1, 2], 'numpy')"


def value(cell_json) -> str:
    outputs = cell_json["cell"]["outputs"]
    return "".join(
        o.get("text", "") if o["output_type"] == "stream" else o["data"]["text/plain"]
        for o in outputs
    )


async def _record(server) -> tuple[str, list[dict]]:
    sid = (await server.session())["id"]
    ran = []
    for code in RECORD:
        cell = await server.run(sid, code)
        assert cell["cell"]["metadata"]["kernelagent"]["status"] == "ok", cell
        ran.append(cell)
    return sid, ran


async def _notes(server, sid) -> list[str]:
    return [c.source for c in await server.services.db.cells.list(sid) if c.role == "system"]


async def test_a_branch_restores_the_namespace_without_rerunning_slow_cells(ka_server):
    sid, ran = await _record(ka_server)
    await ka_server.services.supervisor.namespaces.settle(sid)
    cells = await ka_server.services.db.cells.list(sid)
    state = [c.metadata.get("state") for c in cells]
    assert all(isinstance(s, dict) for s in state), state
    assert set(state[1]["changes"]) == {"df", "arr"}  # not the modules of cell 0 again
    assert set(state[5]["not_kept"]) == {"log"}  # an open file: made again by its cell
    assert "pickle" in state[5]["not_kept"]["log"]

    started = time.perf_counter()
    child = await ka_server.json(
        f"/api/v1/sessions/{sid}/branch", "POST", {"cell_id": ran[-1]["cell"]["id"]}
    )
    took = time.perf_counter() - started
    assert took < SLOW, f"the branch took {took:.1f} s: cells were re-run"
    assert value(await ka_server.run(child["id"], CHECK)) == EXPECTED
    notes = await _notes(ka_server, child["id"])
    assert any("restored from the snapshot after cell 6" in n for n in notes), notes
    assert any("; 1 cells re-run" in n for n in notes), notes  # the one that opened the file
    # the parent's own kernel is untouched
    assert value(await ka_server.run(sid, "seen")) == "[1, 2]"


async def test_a_culled_kernel_wakes_with_its_state_in_a_new_process(ka_server):
    sid, _ = await _record(ka_server)
    process = "get_ipython().kernel.session.session"  # a new uuid in each kernel process
    before = value(await ka_server.run(sid, process))
    supervisor = ka_server.services.supervisor
    assert await supervisor.cull_idle(ttl=0) == [sid]
    started = time.perf_counter()
    woke = await ka_server.run(sid, CHECK)
    took = time.perf_counter() - started
    assert value(woke) == EXPECTED
    notes = await _notes(ka_server, sid)
    assert any("restored from the snapshot" in n for n in notes), notes
    assert took < SLOW, f"waking took {took:.1f} s: cells were re-run"
    assert value(await ka_server.run(sid, process)) != before


async def test_unchanged_variables_are_stored_once(ka_server):
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "big = bytes(range(256)) * 4096")
    await ka_server.run(sid, "small = 1")
    await ka_server.run(sid, "len(big)")  # mentions big, does not change it
    await ka_server.run(sid, "big = big + b'!'")
    await ka_server.services.supervisor.namespaces.settle(sid)
    states = [c.metadata["state"] for c in await ka_server.services.db.cells.list(sid)]
    assert states[0]["bytes"] > 10**6
    assert states[1]["bytes"] < 1000 and states[2]["bytes"] == 0
    assert states[3]["bytes"] > 10**6
    assert [set(s["changes"]) for s in states] == [{"big"}, {"small"}, set(), {"big"}]
    assert states[3]["total"] == sum(s["bytes"] for s in states)
    assert [s["base"] for s in states] == [None] + [s["id"] for s in states[:-1]]  # a chain
    first, second = states[0]["changes"]["big"]["sha"], states[3]["changes"]["big"]["sha"]
    blobs = await ka_server.services.storage.list("blobs/")
    assert [b for b in blobs if b.endswith(first)] == [blob_key(first)]
    assert second != first and blob_key(second) in blobs


async def test_without_a_usable_snapshot_the_state_comes_back_by_replay(ka_server):
    sid = (await ka_server.session())["id"]
    made = await ka_server.run(sid, "x = 40 + 2")
    await ka_server.services.supervisor.namespaces.settle(sid)
    cells = await ka_server.services.db.cells.list(sid)
    sha = cells[0].metadata["state"]["changes"]["x"]["sha"]
    await ka_server.services.storage.delete(blob_key(sha))  # a snapshot that cannot be read
    child = await ka_server.json(
        f"/api/v1/sessions/{sid}/branch", "POST", {"cell_id": made["cell"]["id"]}
    )
    assert value(await ka_server.run(child["id"], "x")) == "42"
    notes = await _notes(ka_server, child["id"])
    assert any("rebuilt by replaying 1 cells" in n for n in notes), notes


async def test_an_imported_notebook_cannot_name_a_snapshot(ka_server):
    """A snapshot is the server's record of a session's kernel: a notebook's metadata (any
    file a user uploads) cannot point a session at one, its own or another's."""
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "secret = 'theirs'")
    await ka_server.services.supervisor.namespaces.settle(sid)
    theirs = (await ka_server.services.db.cells.list(sid))[0].metadata["state"]
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("mine = 1")
    cell.metadata["kernelagent"] = {"role": "web", "status": "ok", "state": theirs}
    nb.cells = [cell]
    imported = await ka_server.fetch(
        "/api/v1/notebooks?replay=true", "POST", raw=nbformat.writes(nb).encode()
    )
    assert imported.code == 201, imported.body
    new = json.loads(imported.body)["id"]
    assert value(await ka_server.run(new, "'secret' in dir(), mine")) == "(False, 1)"
    assert "state" not in (await ka_server.services.db.cells.list(new))[0].metadata


async def _export(server, sid: str, token: str = "default") -> bytes:
    await server.services.supervisor.namespaces.settle(sid)
    response = await server.fetch(f"/api/v1/sessions/{sid}/notebook", token=token)
    assert response.code == 200, response.body
    return response.body


async def _import(server, raw: bytes, token: str = "default") -> str:
    imported = await server.fetch("/api/v1/notebooks?replay=true", "POST", raw=raw, token=token)
    assert imported.code == 201, imported.body
    return json.loads(imported.body)["id"]


DRAWS = ["import random\na = random.random()", "b = random.random()", "c = random.random()"]


async def _exported_draws(server, name: str, data: bytes) -> tuple[bytes, str]:
    """A session with an uploaded file and three random draws, exported: (notebook, draws)."""
    sid = (await server.session())["id"]
    assert (await server.upload(sid, name, data)).code == 201
    for code in DRAWS:
        await server.run(sid, code)
    drawn = value(await server.run(sid, "a, b, c"))
    return await _export(server, sid), drawn


async def test_importing_ones_own_notebook_restores_its_state_instead_of_rerunning(ka_server):
    """A notebook exported here and imported again by its owner comes back from its snapshots
    (the draws keep their values: nothing re-ran); an edited cell and those after it re-run."""
    raw, drawn = await _exported_draws(ka_server, "data.txt", b"kept")

    same = await _import(ka_server, raw)
    assert value(await ka_server.run(same, "a, b, c")) == drawn
    assert value(await ka_server.run(same, "open('data.txt').read()")) == "'kept'"
    notes = await _notes(ka_server, same)
    assert any("restored from the snapshot" in n for n in notes), notes

    nb = nbformat.reads(raw.decode(), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # edited in JupyterLab: its snapshot no longer describes it; what it writes is kept
    code[1].source = "b = 2\nopen('b.txt', 'w').write('two')"
    edited = await _import(ka_server, nbformat.writes(nb).encode())
    a, b, c = value(await ka_server.run(edited, "a, b, c")).strip("()").split(", ")
    old_a, _, old_c = drawn.strip("()").split(", ")
    assert (a, b) == (old_a, "2") and c != old_c  # a restored; b and c ran again
    cells = await ka_server.services.db.cells.list(edited)
    kept = [bool(c.metadata.get("state")) for c in cells if c.cell_type == "code"]
    assert kept[:4] == [True, False, False, False]
    files = "open('data.txt').read(), open('b.txt').read()"
    assert value(await ka_server.run(edited, files)) == "('kept', 'two')"
    assert edited in await ka_server.services.supervisor.cull_idle(ttl=0)
    assert value(await ka_server.run(edited, files)) == "('kept', 'two')"  # woken, files too


async def test_another_users_import_of_a_notebook_gets_none_of_its_state_or_files(ka_server):
    """Ids in a notebook's metadata (a namespace or workspace snapshot, an upload's sha256) are
    the exporter's record, not a key to it: a notebook shared with someone else replays from
    its code, and the files that were uploaded beside it stay the exporter's."""
    raw, drawn = await _exported_draws(ka_server, "secret.txt", b"the exporter's")

    other = await ka_server.new_user("other")
    theirs = await _import(ka_server, raw, token=other)
    listed = json.loads(
        (await ka_server.fetch(f"/api/v1/sessions/{theirs}/files", token=other)).body
    )
    assert listed["files"] == [], listed
    ran = await ka_server.fetch(
        f"/api/v1/sessions/{theirs}/cells",
        "POST",
        {"code": "import os\n(a, b, c) != " + drawn + ", os.path.exists('secret.txt')"},
        token=other,
    )
    assert value(json.loads(ran.body)) == "(True, False)"
    await ka_server.services.supervisor.namespaces.settle(theirs)
    imported = [
        c for c in await ka_server.services.db.cells.list(theirs) if "imported_id" in c.metadata
    ]
    assert imported and not any(k in c.metadata for c in imported for k in ("state", "upload"))
    files = ka_server.services.files  # a snapshot here is of the importer's own workspace
    for snapshot in [c.metadata["snapshot"] for c in imported if "snapshot" in c.metadata]:
        assert "secret.txt" not in await files.manifest(snapshot)


async def test_what_a_failed_cell_changed_is_in_the_next_snapshot(ka_server):
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "x = [1]")
    await ka_server.run(sid, "x.append(2)\n1 / 0")  # failed, after changing x in place
    last = await ka_server.run(sid, "y = 3")
    child = await ka_server.json(
        f"/api/v1/sessions/{sid}/branch", "POST", {"cell_id": last["cell"]["id"]}
    )
    assert value(await ka_server.run(child["id"], "x, y")) == "([1, 2], 3)"
    notes = await _notes(ka_server, child["id"])
    assert any("restored from the snapshot after cell 2 (2 variables; 0 cells" in n for n in notes)


async def test_a_missing_link_in_the_chain_restores_up_to_it(ka_server):
    """Each snapshot records what changed since the one before; if one of them was never
    stored (its server died first), the state comes back from the last one before the gap
    and the cells from there on run again."""
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "a = 1")
    await ka_server.run(sid, "b = a + 1")
    last = await ka_server.run(sid, "c = b + 1")
    await ka_server.services.supervisor.namespaces.settle(sid)
    cells = await ka_server.services.db.cells.list(sid)
    await ka_server.services.db.cells.update(
        dataclasses.replace(
            cells[1], metadata={k: v for k, v in cells[1].metadata.items() if k != "state"}
        )
    )
    child = await ka_server.json(
        f"/api/v1/sessions/{sid}/branch", "POST", {"cell_id": last["cell"]["id"]}
    )
    assert value(await ka_server.run(child["id"], "a, b, c")) == "(1, 2, 3)"
    notes = await _notes(ka_server, child["id"])
    assert any("snapshot after cell 0 (1 variables; 2 cells re-run" in n for n in notes), notes


@pytest.fixture(params=["embedded"])
async def small_budget(request, tmp_path, unused_port):
    """A server that keeps at most 100 kB of snapshots per session."""
    settings = backend_settings(request, tmp_path, unused_port, state_limit=100_000)
    async with running(settings) as server:
        yield server


async def test_budgets_skip_what_is_too_large_and_say_so(small_budget):
    sid = (await small_budget.session())["id"]
    await small_budget.run(sid, "small = list(range(100))")
    big = await small_budget.run(sid, "big = bytes(500_000)\nafter = 1")
    await small_budget.services.supervisor.namespaces.settle(sid)
    state = (await small_budget.services.db.cells.list(sid))[-1].metadata["state"]
    assert set(state["not_kept"]) == {"big"}
    assert "size budget" in state["not_kept"]["big"]
    assert state["total"] < 100_000
    child = await small_budget.json(
        f"/api/v1/sessions/{sid}/branch", "POST", {"cell_id": big["cell"]["id"]}
    )
    assert (
        value(await small_budget.run(child["id"], "len(big), after, small[-1]"))
        == "(500000, 1, 99)"
    )
    notes = await _notes(small_budget, child["id"])
    assert any("; 1 cells re-run" in n for n in notes), notes  # the one that made big


async def test_a_cell_that_binds_and_mentions_no_variable_takes_no_snapshot(ka_server):
    """The kernel says after each cell whether a capture would find anything: ``1 + 1`` and
    ``print`` cost no second request; a cell that mentions a variable is still captured."""
    sid = (await ka_server.session())["id"]
    for code in ("x = 1", "1 + 1", "print('hi')", "x + 1", "y = x"):
        await ka_server.run(sid, code)
    await ka_server.services.supervisor.namespaces.settle(sid)
    states = [c.metadata.get("state") for c in await ka_server.services.db.cells.list(sid)]
    assert [None if s is None else set(s["changes"]) for s in states] == [
        {"x"}, None, None, set(), {"y"}
    ]  # fmt: skip
    assert states[4]["base"] == states[3]["id"]  # the chain is whole
    assert await ka_server.services.supervisor.cull_idle(ttl=0) == [sid]
    assert value(await ka_server.run(sid, "x, y")) == "(1, 1)"
