"""The REST API of SPEC §7 through the real server, on both backend sets."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import re
import time

import nbformat
import pytest

from kernelagent.services import execution as execution_module

pytestmark = pytest.mark.sandbox

PLOTLY = "application/vnd.plotly.v1+json"
_PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.show()"


async def test_session_lifecycle(ka_server):
    created = await ka_server.session("first analysis")
    assert set(created) >= {"id", "title", "kernel_id", "status", "parent_id", "created_at"}
    assert created["title"] == "first analysis"
    assert created["status"] == "idle"
    assert created["parent_id"] is None
    assert re.fullmatch(r"[0-9a-f-]{36}", created["id"])
    sid = created["id"]

    listed = await ka_server.json("/api/v1/sessions")
    assert [s["id"] for s in listed["sessions"]] == [sid]
    assert (await ka_server.json(f"/api/v1/sessions/{sid}"))["kernel_id"] == created["kernel_id"]

    renamed = await ka_server.json(f"/api/v1/sessions/{sid}", "PATCH", {"title": "renamed"})
    assert renamed["title"] == "renamed"

    workspace = ka_server.services.kernels.workspace_path(sid)
    assert workspace.is_dir()
    response = await ka_server.fetch(f"/api/v1/sessions/{sid}", "DELETE")
    assert response.code == 204
    assert (await ka_server.fetch(f"/api/v1/sessions/{sid}")).code == 404
    assert not workspace.exists()
    assert created["kernel_id"] not in ka_server.services.kernels.mkm.list_kernel_ids()


async def test_cell_runs_and_is_recorded(ka_server):
    sid = (await ka_server.session())["id"]
    answer = await ka_server.run(sid, "x = 20\nprint('hi'); print('there')\nx + 22")
    cell = answer["cell"]
    assert cell["cell_type"] == "code"
    assert cell["id"]
    assert cell["execution_count"] == 1
    assert cell["outputs"][0] == {"output_type": "stream", "name": "stdout", "text": "hi\nthere\n"}
    assert cell["outputs"][1]["data"]["text/plain"] == "42"
    meta = cell["metadata"]["kernelagent"]
    assert meta["role"] == "web"
    assert meta["status"] == "ok"
    assert meta["duration_ms"] >= 0

    error = (await ka_server.run(sid, "1/0"))["cell"]
    assert error["metadata"]["kernelagent"]["status"] == "error"
    assert error["outputs"][0]["ename"] == "ZeroDivisionError"
    again = (await ka_server.run(sid, "x"))["cell"]  # the kernel keeps its state
    assert again["outputs"][0]["data"]["text/plain"] == "20"


async def test_the_kernel_replies_without_ipykernels_pause(ka_server):
    """The server reads each cell until its idle status, so the kernel's pause before the reply
    (``Kernel._execute_sleep``) is taken away; the outputs are all there still."""
    sid = (await ka_server.session())["id"]
    cell = (await ka_server.run(sid, "print('out'); get_ipython().kernel._execute_sleep"))["cell"]
    assert [o["output_type"] for o in cell["outputs"]] == ["stream", "execute_result"]
    assert cell["outputs"][1]["data"]["text/plain"] == "0.0"


async def test_a_cell_is_written_as_its_reply_comes_and_again_only_if_more_came(
    ka_server, monkeypatch
):
    """A cell's final row is written when the kernel's reply comes, while its idle status is
    on the way; nothing coming after the reply, that is the cell's last write. An output that
    came after the reply (here: held back from what the reply saw) is written before the
    answer, so the record holds it too."""
    sid = (await ka_server.session())["id"]
    cells = ka_server.services.db.cells
    writes: list[tuple[str, int, bool]] = []  # (status, outputs, while collecting)
    collecting = False
    update = cells.update

    async def counted(cell, **changes):
        writes.append((cell.status, len(cell.outputs), collecting))
        return await update(cell, **changes)

    real_collect = execution_module.collect
    held_back = False

    class ReplyFirst:
        """The run's messages with the reply before the idle status, the order the kernel sends
        them in (and nearly always their order here: two sockets do not promise it)."""

        def __init__(self, run):
            self.run, self.replied, self.idle = run, False, None

        def __getattr__(self, name):
            return getattr(self.run, name)

        async def next(self, timeout):
            while True:
                if self.idle is not None and self.replied:
                    idle, self.idle = self.idle, None
                    return idle
                msg = await self.run.next(timeout)
                if msg is None or msg.channel == "shell":
                    self.replied = self.replied or msg is not None
                    return msg
                if msg.content.get("execution_state") == "idle" and not self.replied:
                    self.idle = msg
                    continue
                return msg

    async def collect(kernels, kernel_id, run, *args, on_reply=None, **kwargs):
        nonlocal collecting

        async def seen_at_reply(outputs, status, count):
            await on_reply(outputs[:-1] if held_back else outputs, status, count)

        collecting = True
        try:
            return await real_collect(
                kernels, kernel_id, ReplyFirst(run), *args, on_reply=seen_at_reply, **kwargs
            )
        finally:
            collecting = False

    monkeypatch.setattr(cells, "update", counted)
    monkeypatch.setattr(execution_module, "collect", collect)

    answer = await ka_server.run(sid, "print('a'); 6 * 7")
    assert [o["output_type"] for o in answer["cell"]["outputs"]] == ["stream", "execute_result"]
    assert writes == [("ok", 2, True)], "the row was written again after the idle status"

    writes.clear()
    held_back = True
    answer = await ka_server.run(sid, "print('b'); 6 * 7")
    assert writes == [("ok", 1, True), ("ok", 2, False)]
    recorded = (await cells.list(sid))[-1]
    assert recorded.outputs == answer["cell"]["outputs"]
    assert [o["output_type"] for o in recorded.outputs] == ["stream", "execute_result"]


async def test_a_full_output_cache_is_not_a_cells_output(ka_server):
    """IPython culls its output cache (``Out``) when it is full, warning a terminal: that
    warning is not an output of the cell that happened to fill it."""
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "get_ipython().displayhook.cache_size = 3")  # 1000 by default
    for n in range(6):
        outputs = (await ka_server.run(sid, f"{n} + 1"))["cell"]["outputs"]
        assert [(o["output_type"], o.get("data", {}).get("text/plain")) for o in outputs] == [
            ("execute_result", str(n + 1))
        ]


async def test_rich_outputs_become_artifacts_with_signed_urls(ka_server):
    sid = (await ka_server.session())["id"]
    code = (
        "import matplotlib.pyplot as plt, pandas as pd, plotly.express as px\n"
        "plt.plot([1, 3, 2]); plt.show()\n"
        "display(pd.DataFrame({'a': [1, 2], 'b': [3, 4]}))\n"
        "px.line(x=[1, 2, 3], y=[3, 1, 2]).show()\n"
    )
    answer = await ka_server.run(sid, code, timeout=60)
    kinds = {a["mime_type"] for a in answer["artifacts"]}
    assert {"image/png", "text/html", PLOTLY} <= kinds, kinds
    png = next(a for a in answer["artifacts"] if a["mime_type"] == "image/png")
    # the signed URL works without a token, and serves the exact bytes with their type
    response = await ka_server.fetch(png["url"], token=None)
    assert response.code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.body[:8] == b"\x89PNG\r\n\x1a\n"
    assert hashlib.sha256(response.body).hexdigest() == png["sha256"]
    assert len(response.body) == png["size"]
    by_id = await ka_server.fetch(f"/api/v1/artifacts/{png['id']}")
    assert by_id.code == 200 and by_id.body == response.body

    # the same figure again is stored once (content-addressed), recorded twice
    before = await ka_server.services.storage.list("artifacts/")
    again = await ka_server.run(sid, "plt.plot([1, 3, 2]); plt.show()")
    assert again["artifacts"][0]["sha256"] == png["sha256"]
    assert await ka_server.services.storage.list("artifacts/") == before


async def test_timeout_interrupts_and_keeps_partial_output_and_state(ka_server):
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "kept = 'yes'")
    started = time.monotonic()
    cell = (
        await ka_server.run(
            sid, "import time\nprint('before', flush=True)\ntime.sleep(30)", timeout=1.5
        )
    )["cell"]
    assert time.monotonic() - started < 10
    assert cell["metadata"]["kernelagent"]["status"] == "timeout"
    assert cell["outputs"][0]["text"] == "before\n"
    assert any(o.get("ename") == "KeyboardInterrupt" for o in cell["outputs"])
    assert (await ka_server.run(sid, "kept"))["cell"]["outputs"][0]["data"]["text/plain"] == "'yes'"


async def test_dead_kernel_is_recorded_and_replaced(ka_server):
    session = await ka_server.session()
    sid = session["id"]
    before = (await ka_server.services.db.sessions.get(sid)).kernel_id
    cell = (await ka_server.run(sid, "import os; os._exit(3)"))["cell"]
    assert cell["metadata"]["kernelagent"]["status"] == "died"
    assert cell["outputs"][-1]["ename"] == "KernelDied"
    assert "exited with status 3" in cell["outputs"][-1]["evalue"]
    after = await ka_server.run(sid, "6 * 7")
    assert after["cell"]["outputs"][0]["data"]["text/plain"] == "42"
    assert (await ka_server.services.db.sessions.get(sid)).kernel_id != before  # a new process
    # under the same kernel id for Jupyter clients: the session's
    assert (await ka_server.json(f"/api/v1/sessions/{sid}"))["kernel_id"] == sid


async def test_concurrent_cells_run_one_at_a_time_in_arrival_order(ka_server):
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "order = []")
    requests = []
    for i in range(4):
        requests.append(
            asyncio.ensure_future(
                ka_server.run(sid, f"import time; order.append({i}); time.sleep(0.2); {i}")
            )
        )
        await asyncio.sleep(0.05)  # distinct arrival times
    answers = await asyncio.gather(*requests)
    assert [a["cell"]["outputs"][0]["data"]["text/plain"] for a in answers] == ["0", "1", "2", "3"]
    assert (await ka_server.run(sid, "order"))["cell"]["outputs"][0]["data"][
        "text/plain"
    ] == "[0, 1, 2, 3]"
    counts = [a["cell"]["execution_count"] for a in answers]
    assert counts == sorted(counts)


async def test_notebook_export_is_valid_nbformat_and_lands_in_storage(ka_server):
    sid = (await ka_server.session("Export me"))["id"]
    await ka_server.run(sid, "print('hello')")
    await ka_server.run(sid, "import plotly.express as px; px.bar(x=['a'], y=[1]).show()")
    response = await ka_server.fetch(f"/api/v1/sessions/{sid}/notebook")
    assert response.code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    nb = nbformat.reads(response.body.decode(), as_version=4)
    nbformat.validate(nb)
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    assert nb.metadata.kernelspec.language == "python"
    assert nb.metadata.language_info.name == "python"
    assert len(nb.cells) == 2
    assert all(c.id for c in nb.cells)
    assert nb.cells[0].metadata.kernelagent.role == "web"
    plotly_output = next(o for o in nb.cells[1].outputs if PLOTLY in o.get("data", {}))
    assert "text/html" in plotly_output["data"]
    stored = await ka_server.services.storage.get(f"sessions/{sid}/notebook.ipynb")
    assert json.loads(stored) == json.loads(response.body)


async def test_files_upload_list_download_and_mirror(ka_server):
    sid = (await ka_server.session())["id"]
    content = b"a,b\n1,2\n3,4\n"
    response = await ka_server.upload(sid, "data.csv", content)
    assert response.code == 201, response.body
    uploaded = json.loads(response.body)
    assert uploaded == {
        "path": "data.csv",
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "modified_at": uploaded["modified_at"],
    }
    cell = await ka_server.run(
        sid, "import pandas as pd; df = pd.read_csv('data.csv'); df.to_csv('out.csv'); len(df)"
    )
    assert cell["cell"]["outputs"][0]["data"]["text/plain"] == "2"
    listed = await ka_server.json(f"/api/v1/sessions/{sid}/files")
    assert [f["path"] for f in listed["files"]] == ["data.csv", "out.csv"]
    download = await ka_server.fetch(f"/api/v1/sessions/{sid}/files/data.csv")
    assert download.body == content
    storage = ka_server.services.storage
    assert await storage.get(f"sessions/{sid}/files/data.csv") == content
    assert (await storage.get(f"sessions/{sid}/files/out.csv")).startswith(b",a,b")


@pytest.mark.parametrize(
    "path", ["../escape.txt", "/etc/evil", "a/../../x", "bad\0name", "link/x", "."]
)
async def test_paths_outside_the_workspace_are_refused(ka_server, path):
    sid = (await ka_server.session())["id"]
    workspace = ka_server.services.kernels.workspace_path(sid)
    os.symlink("/tmp", workspace / "link")
    before = sorted(p.name for p in workspace.parent.parent.rglob("*"))
    response = await ka_server.upload(sid, "f", b"x", path=path)
    assert response.code == 400, response.body
    assert json.loads(response.body)["error"]["code"] == "invalid_input"
    assert sorted(p.name for p in workspace.parent.parent.rglob("*")) == before


async def test_auth_and_ownership(ka_server):
    sid = (await ka_server.session())["id"]
    art = (await ka_server.run(sid, "from IPython.display import HTML; HTML('<b>x</b>')"))[
        "artifacts"
    ][0]
    assert (await ka_server.fetch("/api/v1/sessions", token=None)).code == 401
    assert (await ka_server.fetch("/api/v1/sessions", token="wrong")).code == 401
    bearer = await ka_server.fetch(
        "/api/v1/sessions", token=None, headers={"Authorization": f"Bearer {ka_server.token}"}
    )
    assert bearer.code == 200
    other = await ka_server.new_user("mallory")
    assert (await ka_server.json("/api/v1/sessions", token=other))["sessions"] == []
    for method, path, body in [
        ("GET", f"/api/v1/sessions/{sid}", None),
        ("PATCH", f"/api/v1/sessions/{sid}", {"title": "mine"}),
        ("DELETE", f"/api/v1/sessions/{sid}", None),
        ("POST", f"/api/v1/sessions/{sid}/cells", {"code": "1"}),
        ("GET", f"/api/v1/sessions/{sid}/notebook", None),
        ("GET", f"/api/v1/artifacts/{art['id']}", None),
    ]:
        response = await ka_server.fetch(path, method, body, token=other)
        assert response.code == 404, (method, path, response.code)
    assert (await ka_server.json(f"/api/v1/sessions/{sid}"))["title"] == "test"
    # signed URLs: tampered or expired ones are refused
    tampered = art["url"].replace("signature=", "signature=x")
    assert (await ka_server.fetch(tampered, token=None)).code == 403
    expires = int(time.time()) - 10
    signer = ka_server.services.files.signer
    signature = signer.get_signature(f"{art['id']}:{expires}").decode()
    expired = f"/api/v1/artifacts/{art['id']}?expires={expires}&signature={signature}"
    assert (await ka_server.fetch(expired, token=None)).code == 403


DEEP = b"[" * 100_000 + b"]" * 100_000  # JSON nested past any parser's depth


async def test_bad_input_gets_json_errors_and_changes_nothing(ka_server):
    sid = (await ka_server.session())["id"]
    cases = [
        ("POST", f"/api/v1/sessions/{sid}/cells", b"{not json", 400),
        ("POST", f"/api/v1/sessions/{sid}/cells", b'{"code": 5}', 422),
        ("POST", f"/api/v1/sessions/{sid}/cells", b'{"code": "1", "extra": true}', 422),
        ("POST", f"/api/v1/sessions/{sid}/cells", b'{"code": "1", "timeout": -1}', 422),
        ("PATCH", f"/api/v1/sessions/{sid}", b'{"title": ["x"]}', 422),
        ("POST", "/api/v1/sessions", b"[]", 422),
        ("POST", f"/api/v1/sessions/{sid}/cells", b'{"code": ' + DEEP + b"}", 400),
        ("POST", "/api/v1/notebooks", b'{"cells": ' + DEEP + b"}", 422),
        ("GET", "/api/v1/sessions/00000000-0000-0000-0000-000000000000", None, 404),
        ("GET", "/api/v1/artifacts/nope", None, 404),
        ("GET", f"/api/v1/sessions/{sid}/files/missing.txt", None, 404),
        ("GET", "/api/v1/nothing-here", None, 404),
    ]
    for method, path, raw, status in cases:
        response = await ka_server.fetch(path, method, raw=raw)
        assert response.code == status, (method, path, raw, response.code, response.body)
        error = json.loads(response.body)["error"]
        assert error["code"] and error["message"]
    notebook = await ka_server.fetch(f"/api/v1/sessions/{sid}/notebook")
    assert nbformat.reads(notebook.body.decode(), as_version=4).cells == []


async def test_oversized_json_body_is_413(ka_server):
    sid = (await ka_server.session())["id"]
    limit = ka_server.app.settings.body_limit
    response = await ka_server.fetch(
        f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x" * (limit + 1)}
    )
    assert response.code == 413
    assert json.loads(response.body)["error"]["code"] == "too_large"
    assert await ka_server.services.db.cells.list(sid) == []


async def test_oversized_upload_is_413(ka_server):
    sid = (await ka_server.session())["id"]
    limit = ka_server.services.files.upload_limit
    ka_server.services.files.upload_limit = 1000
    try:
        response = await ka_server.upload(sid, "big", b"x" * 2000)
    finally:
        ka_server.services.files.upload_limit = limit
    assert response.code == 413
    assert not (ka_server.services.kernels.workspace_path(sid) / "big").exists()


async def test_stream_output_is_capped_with_a_marker(ka_server):
    sid = (await ka_server.session())["id"]
    ka_server.services.execution.stream_limit = 1000
    cell = (await ka_server.run(sid, "print('x' * 5000)"))["cell"]
    text = cell["outputs"][0]["text"]
    assert text.startswith("x" * 1000)
    assert "4001 more characters" in text or "truncated" in text


async def test_a_crash_right_after_an_answer_loses_nothing(ka_server, tmp_path):
    from kernelagent.app import KernelAgentApp

    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "print('survives')")
    # a second server process over the same database and storage, as after a crash
    other = KernelAgentApp(ka_server.app.settings)
    services = await other.start(listen=False)
    try:
        cells = await services.db.cells.list(sid)
        assert [c.outputs[0]["text"] for c in cells] == ["survives\n"]
    finally:
        await other.stop()


async def test_interrupt_endpoint_stops_the_running_cell(ka_server):
    sid = (await ka_server.session())["id"]
    running = asyncio.ensure_future(ka_server.run(sid, "import time; time.sleep(30)"))
    for _ in range(200):  # until the cell is executing
        if await ka_server.services.execution.busy([sid]):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    response = await ka_server.fetch(f"/api/v1/sessions/{sid}/interrupt", "POST")
    assert response.code == 204
    cell = (await asyncio.wait_for(running, 10))["cell"]
    assert cell["metadata"]["kernelagent"]["status"] == "interrupted"
    assert cell["outputs"][-1]["ename"] == "KeyboardInterrupt"


async def test_notebook_reaches_storage_shortly_after_a_cell(ka_server):
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "'stored'")
    key = f"sessions/{sid}/notebook.ipynb"
    for _ in range(100):
        if await ka_server.services.storage.exists(key):
            break
        await asyncio.sleep(0.1)
    nb = nbformat.reads((await ka_server.services.storage.get(key)).decode(), as_version=4)
    assert nb.cells[0].outputs[0]["data"]["text/plain"] == "'stored'"


async def test_a_burst_of_cells_is_saved_once_and_a_cell_during_the_save_again(
    ka_server, monkeypatch
):
    """The notebook is written once activity pauses: once for a burst of cells, and once more
    when a cell came while it was being written (that write had read the rows before it)."""
    notebooks, storage = ka_server.services.notebooks, ka_server.services.storage
    notebooks.debounce = 0.3
    writes: list[bytes] = []
    writing, go_on = asyncio.Event(), asyncio.Event()
    put = storage.put

    async def held_put(key: str, data: bytes) -> None:
        if key.endswith("notebook.ipynb"):
            writes.append(data)
            writing.set()
            await go_on.wait()
        await put(key, data)

    monkeypatch.setattr(storage, "put", held_put)
    sid = (await ka_server.session())["id"]
    for n in range(3):
        await ka_server.run(sid, f"'burst {n}'")
    await asyncio.wait_for(writing.wait(), 10)
    await ka_server.run(sid, "'during the save'")
    go_on.set()
    key = f"sessions/{sid}/notebook.ipynb"
    for _ in range(100):
        if len(writes) == 2 and await storage.exists(key):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(notebooks.debounce * 2)  # no write more
    written = [nbformat.reads(data.decode(), as_version=4) for data in writes]
    assert [len(nb.cells) for nb in written] == [3, 4]
    assert written[1].cells[3].source == "'during the save'"
    assert nbformat.reads((await storage.get(key)).decode(), as_version=4) == written[1]


async def test_a_session_deleted_before_its_notebook_is_saved_stays_out_of_storage(ka_server):
    """The notebook is written a moment after a cell: a session deleted meanwhile must not have
    it written back once its storage was cleared."""
    ka_server.services.notebooks.debounce = 0.5
    storage = ka_server.services.storage
    gone, kept = (await ka_server.session())["id"], (await ka_server.session())["id"]
    await ka_server.run(gone, "'soon deleted'")
    await ka_server.run(kept, "'kept'")  # saved after the deleted one would have been
    assert (await ka_server.fetch(f"/api/v1/sessions/{gone}", "DELETE")).code == 204
    for _ in range(100):
        if await storage.exists(f"sessions/{kept}/notebook.ipynb"):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    assert await storage.exists(f"sessions/{kept}/notebook.ipynb")
    assert await storage.list(f"sessions/{gone}/") == []


def holders(root: object, needle: str, depth: int = 8) -> list[str]:
    """Where, in kernelagent's own objects reachable from ``root``, a string holding
    ``needle`` is kept (as a key, a value or an attribute), e.g. ``.state._active{key}``."""
    found: list[str] = []
    seen: set[int] = set()

    def walk(value: object, path: str, left: int) -> None:
        if left < 0 or id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, str):
            if needle in value:
                found.append(path)
        elif isinstance(value, dict):
            for key, item in list(value.items()):
                walk(key, f"{path}{{key}}", left - 1)
                walk(item, f"{path}[{str(key)[:24]!r}]", left - 1)
        elif isinstance(value, list | tuple | set | frozenset | collections.deque):
            for n, item in enumerate(list(value)):
                walk(item, f"{path}[{n}]", left - 1)
        elif type(value).__module__.startswith("kernelagent") and hasattr(value, "__dict__"):
            for name, item in vars(value).items():
                walk(item, f"{path}.{name}", left - 1)

    walk(root, "", depth)
    return found


async def test_a_deleted_session_leaves_nothing_of_it_in_the_server(ka_server):
    """A long-lived server must not grow with every session it ever had: once a session is
    deleted, none of the services holds its id (a pending save may hold it a moment)."""
    ka_server.services.notebooks.debounce = 0.2
    sid = (await ka_server.session())["id"]
    for code in ("x = 1", "open('notes.txt', 'w').write('kept')", _PLOT, "x"):
        await ka_server.run(sid, code)
    assert holders(ka_server.services, sid)  # what the search finds while the session lives
    assert (await ka_server.fetch(f"/api/v1/sessions/{sid}", "DELETE")).code == 204
    for _ in range(50):
        if not (left := holders(ka_server.services, sid)):
            break
        await asyncio.sleep(0.1)
    assert left == []
    assert await ka_server.services.state.last_activity(sid) is None


async def test_a_session_deleted_while_its_cell_runs_ends_the_cell_and_leaves_nothing(ka_server):
    sid = (await ka_server.session())["id"]
    code = "open('made.txt', 'w').write('x')\nimport time\ntime.sleep(60)"
    cell = asyncio.create_task(
        ka_server.fetch(f"/api/v1/sessions/{sid}/cells", "POST", {"code": code})
    )
    for _ in range(100):
        if (await ka_server.json(f"/api/v1/sessions/{sid}"))["status"] == "busy":
            break
        await asyncio.sleep(0.1)
    assert (await ka_server.fetch(f"/api/v1/sessions/{sid}", "DELETE")).code == 204
    answer = await asyncio.wait_for(cell, 30)
    assert answer.code == 404
    assert "deleted while this cell ran" in json.loads(answer.body)["error"]["message"]
    await asyncio.sleep(0.5)
    assert await ka_server.services.storage.list(f"sessions/{sid}/") == []
    assert await ka_server.services.db.files.list(sid) == []


async def test_hostile_kernel_links_and_fifos_cannot_reach_host_files(ka_server, tmp_path):
    """The kernel writes symlinks whose targets the (root) server would resolve on the host."""
    secret = tmp_path / "host-secret.txt"
    secret.write_text("server secret")
    victim = tmp_path / "host-victim.txt"
    victim.write_text("untouched")
    sid = (await ka_server.session())["id"]
    code = (
        "import os\n"
        f"os.symlink({str(secret)!r}, 'leak.txt')\n"
        f"os.symlink({str(tmp_path)!r}, 'hostdir')\n"
        f"os.symlink({str(victim)!r}, 'upload-me.txt')\n"
        "os.mkfifo('pipe')\n"
        "open('plain.txt', 'w').write('ok')\n"
    )
    assert (await ka_server.run(sid, code))["cell"]["metadata"]["kernelagent"]["status"] == "ok"
    listed = await ka_server.json(f"/api/v1/sessions/{sid}/files")
    assert [f["path"] for f in listed["files"]] == ["plain.txt"]
    for path in ["leak.txt", "hostdir/host-secret.txt", "pipe"]:
        response = await ka_server.fetch(f"/api/v1/sessions/{sid}/files/{path}")
        assert response.code == 404, (path, response.body)
        assert b"server secret" not in response.body
    stored = await ka_server.services.storage.list(f"sessions/{sid}/files/")
    assert stored == [f"sessions/{sid}/files/plain.txt"]
    # an upload onto the kernel's symlink replaces the link; the host file is not written
    response = await ka_server.upload(sid, "upload-me.txt", b"new content")
    assert response.code == 201
    assert victim.read_text() == "untouched"
    workspace = ka_server.services.kernels.workspace_path(sid)
    assert not (workspace / "upload-me.txt").is_symlink()
    assert (workspace / "upload-me.txt").read_text() == "new content"
    # an upload below a symlinked directory is refused
    response = await ka_server.upload(
        sid, "upload-me.txt", b"new content", path="hostdir/planted.txt"
    )
    assert response.code == 400
    assert not (tmp_path / "planted.txt").exists()
