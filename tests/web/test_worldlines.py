"""Replay, branch, import, and kernels that come back with their state: over the real API."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient import NotebookClient

from kernelagent.adapters.runtime import make_runtime
from kernelagent.services.files import blob_key
from kernelagent.services.replay import comparable

pytestmark = pytest.mark.sandbox


def value(cell_json) -> str:
    outputs = cell_json["cell"]["outputs"]
    return "".join(
        o.get("text", "") if o["output_type"] == "stream" else o["data"]["text/plain"]
        for o in outputs
    )


async def test_replay_reports_each_cell(ka_server):
    session = await ka_server.session()
    sid = session["id"]
    assert (await ka_server.upload(sid, "data.csv", b"x\n1\n2\n")).code == 201
    await ka_server.run(sid, "import pandas as pd\ndf = pd.read_csv('data.csv')\nint(df.x.sum())")
    await ka_server.run(sid, "import uuid\nprint(uuid.uuid4(), object())")  # normalised away
    await ka_server.run(sid, "import random\nrandom.random()")  # differs
    await ka_server.run(sid, "1/0")  # failed in the record too: matches
    await ka_server.run(
        sid, "with open('out.txt', 'w') as f:\n    f.write('hi')\nopen('out.txt').read()"
    )

    report = await ka_server.json(f"/api/v1/sessions/{sid}/replay", "POST")
    statuses = [c["status"] for c in report["cells"]]
    assert statuses == ["match", "match", "differ", "match", "match"], report
    differ = report["cells"][2]
    assert differ["diff"].startswith("--- recorded") and "+++ replayed" in differ["diff"]
    assert report["summary"] == {"match": 4, "differ": 1, "error": 0}
    # the session's own kernel was not touched
    assert value(await ka_server.run(sid, "df.x.tolist()")) == "[1, 2]"


async def test_replay_marks_new_errors(ka_server):
    session = await ka_server.session()
    sid = session["id"]
    await ka_server.run(sid, "import os\nos.environ.setdefault('KA_FLAG', 'set')")
    await ka_server.run(sid, "with open('once', 'x') as f:\n    f.write('1')\n'made'")
    # the workspace keeps 'once'; a replay starts from the workspace as the session began
    report = await ka_server.json(f"/api/v1/sessions/{sid}/replay", "POST")
    assert [c["status"] for c in report["cells"]] == ["match", "match"]
    await ka_server.run(sid, "import os\nos.remove('once')")
    await ka_server.run(sid, "open('once').read()")  # fails now: FileNotFoundError, recorded
    report = await ka_server.json(f"/api/v1/sessions/{sid}/replay", "POST")
    assert [c["status"] for c in report["cells"]] == ["match", "match", "match", "match"]


async def test_branch_has_the_record_files_and_state_of_its_cell(ka_server):
    parent = await ka_server.session("origin")
    pid = parent["id"]
    await ka_server.upload(pid, "data.csv", b"v\n5\n")
    a = await ka_server.run(pid, "x = 1\nopen('out.txt', 'w').write('a')")
    await ka_server.run(
        pid, "x = 2\nopen('out.txt', 'w').write('b')\nopen('new.txt', 'w').write('n')"
    )

    created = await ka_server.fetch(
        f"/api/v1/sessions/{pid}/branch", "POST", {"cell_id": a["cell"]["id"]}
    )
    assert created.code == 201, created.body
    child = json.loads(created.body)
    cid = child["id"]
    assert child["parent_id"] == pid and child["id"] != pid
    cells = await ka_server.services.db.cells.list(cid)
    parent_cells = await ka_server.services.db.cells.list(pid)
    *copied, note = cells
    assert [(c.cell_type, c.source) for c in copied] == [
        (c.cell_type, c.source) for c in parent_cells[:2]
    ]
    assert note.role == "system" and "state restored from the snapshot after cell 1" in note.source
    assert value(await ka_server.run(cid, "x")) == "1"
    assert value(await ka_server.run(cid, "print(open('out.txt').read())")) == "a\n"
    files = {f["path"] for f in (await ka_server.json(f"/api/v1/sessions/{cid}/files"))["files"]}
    assert files == {"data.csv", "out.txt"}
    # the parent is untouched and keeps running
    assert value(await ka_server.run(pid, "x")) == "2"
    assert value(await ka_server.run(pid, "print(open('out.txt').read())")) == "b\n"
    # a branch of a branch
    x_cell = (await ka_server.services.db.cells.list(cid))[-2]
    grandchild = await ka_server.json(
        f"/api/v1/sessions/{cid}/branch", "POST", {"cell_id": x_cell.id}
    )
    assert grandchild["parent_id"] == cid
    assert value(await ka_server.run(grandchild["id"], "x")) == "1"
    listed = {
        s["id"]: s["parent_id"] for s in (await ka_server.json("/api/v1/sessions"))["sessions"]
    }
    assert listed[cid] == pid and listed[grandchild["id"]] == cid
    missing = await ka_server.fetch(f"/api/v1/sessions/{pid}/branch", "POST", {"cell_id": "nope"})
    assert missing.code == 404


async def test_import_any_notebook_and_rebuild_its_state(ka_server):
    nb = nbformat.v4.new_notebook()  # as JupyterLab writes it: no kernelagent metadata
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Analysis"),
        nbformat.v4.new_code_cell("total = sum(range(10))\ntotal"),
    ]
    raw = nbformat.writes(nb).encode()
    plain = await ka_server.fetch("/api/v1/notebooks", "POST", raw=raw)
    assert plain.code == 201, plain.body
    session = json.loads(plain.body)
    cells = await ka_server.services.db.cells.list(session["id"])
    assert [(c.cell_type, c.role) for c in cells] == [("markdown", "user"), ("code", "web")]
    undefined = await ka_server.run(session["id"], "'total' in dir()")
    assert value(undefined) == "False"

    replayed = await ka_server.fetch("/api/v1/notebooks?replay=true", "POST", raw=raw)
    assert replayed.code == 201
    assert value(await ka_server.run(json.loads(replayed.body)["id"], "total")) == "45"

    bad = await ka_server.fetch("/api/v1/notebooks", "POST", raw=b'{"cells": 3}')
    assert bad.code == 422
    assert "not a valid .ipynb" in json.loads(bad.body)["error"]["message"]


async def test_a_killed_kernel_comes_back_with_its_state(ka_server):
    session = await ka_server.session()
    sid = session["id"]
    await ka_server.upload(sid, "in.txt", b"hello")
    await ka_server.run(sid, "state = open('in.txt').read().upper()")
    # its snapshot is stored (an os._exit at once can cut the kernel's last iopub sends)
    await ka_server.services.supervisor.namespaces.settle(sid)
    died = await ka_server.run(sid, "import os\nos._exit(1)")
    assert died["cell"]["metadata"]["kernelagent"]["status"] == "died"
    assert value(await ka_server.run(sid, "state")) == "'HELLO'"
    notes = [c.source for c in await ka_server.services.db.cells.list(sid) if c.role == "system"]
    assert any("restored from the snapshot after cell 1" in n for n in notes), notes


async def test_idle_kernels_are_culled_and_come_back(ka_server):
    session = await ka_server.session()
    sid = session["id"]
    await ka_server.run(sid, "kept = 41 + 1")
    kernel = (await ka_server.services.db.sessions.get(sid)).kernel_id
    assert await ka_server.services.supervisor.cull_idle(ttl=0) == [sid]
    assert not await ka_server.services.kernels.is_alive(kernel)
    after = await ka_server.json(f"/api/v1/sessions/{sid}")
    # culled, not deleted: Jupyter clients keep its kernel id, and its next use brings it back
    assert after["kernel_id"] == sid and after["status"] == "idle"
    assert value(await ka_server.run(sid, "kept")) == "42"


@pytest.mark.parametrize("ka_server", ["networked"], indirect=True)
async def test_the_culler_leaves_kernels_another_process_holds(ka_server):
    """With several server processes, each culls only the kernels it holds (a session it
    used may have moved to another)."""
    settings = ka_server.app.settings
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "kept = 1")
    kernel = (await ka_server.services.db.sessions.get(sid)).kernel_id
    other = make_runtime(settings.redis_url, settings.process_lease)
    await other.start("http://127.0.0.1:9")
    try:
        await other.claim("kernel", sid)
        assert await ka_server.services.supervisor.cull_idle(ttl=0) == []
        assert await ka_server.services.kernels.is_alive(kernel)
    finally:
        await other.release("kernel", sid)
        await other.close()


async def test_files_are_stored_once_per_content(ka_server):
    session = await ka_server.session()
    sid = session["id"]
    await ka_server.run(sid, "open('big.bin', 'wb').write(b'x' * 100000)")
    first = [c for c in await ka_server.services.db.cells.list(sid)][-1].metadata["snapshot"]
    await ka_server.run(sid, "open('small.txt', 'w').write('1')")
    await ka_server.run(sid, "2 + 2")  # no file changed: no new snapshot
    cells = await ka_server.services.db.cells.list(sid)
    assert "snapshot" not in cells[-1].metadata
    second = cells[-2].metadata["snapshot"]
    files = ka_server.services.files
    assert set(await files.manifest(first)) == {"big.bin"}
    assert set(await files.manifest(second)) == {"big.bin", "small.txt"}
    blobs = await ka_server.services.storage.list("blobs/")
    sha = (await files.manifest(second))["big.bin"]
    assert [b for b in blobs if b.endswith(sha)] == [blob_key(sha)]  # stored once


async def test_an_export_reruns_in_a_plain_kernel(ka_server, tmp_path):
    session = await ka_server.session()
    sid = session["id"]
    await ka_server.upload(sid, "nums.csv", b"n\n1\n2\n3\n")
    for code in [
        "import pandas as pd\ndf = pd.read_csv('nums.csv')\ndf.describe()",
        "print(df.n.sum())",
        "import matplotlib.pyplot as plt\nplt.plot(df.n)\nplt.show()",
        "import plotly.express as px\npx.bar(df, y='n')",
    ]:
        await ka_server.run(sid, code, timeout=60)
    raw = (await ka_server.fetch(f"/api/v1/sessions/{sid}/notebook")).body
    nb = nbformat.reads(raw.decode(), as_version=4)
    nbformat.validate(nb)
    (tmp_path / "nums.csv").write_bytes(b"n\n1\n2\n3\n")
    rerun = nbformat.reads(raw.decode(), as_version=4)
    client = NotebookClient(
        rerun, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    await client.async_execute()
    for before, after in zip(nb.cells, rerun.cells, strict=True):
        if before.cell_type == "code":
            assert comparable(before.outputs) == comparable(after.outputs), before.source
