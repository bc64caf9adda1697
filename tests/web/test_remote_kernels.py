"""The server with its session kernels on a real gateway (Jupyter Kernel Gateway, and Jupyter
Enterprise Gateway): the same proofs as with local kernels, through the same tests, and what
only a remote kernel needs: its workspace through the kernel, a WebSocket that drops mid-cell,
a workspace offline.

Each imported name below is a test of another module, collected again here, where ``ka_server``
and ``server`` make a server whose kernels run on the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from compat.test_jupyter_server_gateway import (
    jupyter_server,  # noqa: F401 - the jupyter_server fixture of these tests
    test_jupyter_server_runs_kernels_through_the_gateway,
)
from compat.test_jupyterlab_attaches_to_a_session import (
    test_jupyterlab_picks_the_session_and_shares_its_kernel,
)
from conftest import backend_settings, running
from gateways import gateway, on_gateway
from test_agent import agent_settings, llm  # noqa: F401 - the scripted LLM fixture
from test_agent import test_a_turn_runs_code_sees_a_summary_and_answers as test_agent_turn
from test_agent import test_interrupt_stops_the_cell_and_the_turn as test_agent_interrupt
from test_api import (
    test_cell_runs_and_is_recorded,
    test_concurrent_cells_run_one_at_a_time_in_arrival_order,
    test_interrupt_endpoint_stops_the_running_cell,
    test_notebook_export_is_valid_nbformat_and_lands_in_storage,
    test_rich_outputs_become_artifacts_with_signed_urls,
    test_timeout_interrupts_and_keeps_partial_output_and_state,
)
from test_gateway import (
    test_deleting_a_kernel_keeps_the_session_and_its_state_comes_back,
    test_each_session_is_a_kernelspec_that_attaches_to_its_kernel,
    test_execute_over_the_websocket_is_recorded,
    test_restart_keeps_the_socket_and_is_recorded,
)
from test_worldlines import (
    test_a_killed_kernel_comes_back_with_its_state,
    test_branch_has_the_record_files_and_state_of_its_cell,
    test_files_are_stored_once_per_content,
    test_idle_kernels_are_culled_and_come_back,
    test_import_any_notebook_and_rebuild_its_state,
    test_replay_reports_each_cell,
)
from tornado.httpclient import AsyncHTTPClient

from kernelagent.adapters.remote_kernels import RemoteKernels

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module", params=["kernel_gateway", "enterprise_gateway"])
def kernel_gateway(request, tmp_path_factory):
    """A real gateway on loopback with a token: Jupyter Kernel Gateway or Jupyter Enterprise
    Gateway, its kernels running this environment's Python. Yields (url, token)."""
    with gateway(request.param, tmp_path_factory.mktemp(request.param)) as running_gateway:
        yield running_gateway


def remote(kernel_gateway, tmp_path) -> dict:
    url, token = kernel_gateway
    return {
        "gateway_url": url,
        "gateway_token": token,
        "gateway_workspace": str(tmp_path / "remote-workspaces" / "{kernel_id}"),
    }


@pytest.fixture(params=["embedded", "networked"])
async def ka_server(request, tmp_path, unused_port, kernel_gateway):
    settings = backend_settings(request, tmp_path, unused_port, **remote(kernel_gateway, tmp_path))
    async with running(settings) as server:
        yield server


@pytest.fixture(params=["embedded"])
async def server(request, tmp_path, unused_port, llm, kernel_gateway):  # noqa: F811
    overrides = remote(kernel_gateway, tmp_path)
    async with running(agent_settings(request, tmp_path, unused_port, llm, **overrides)) as s:
        yield s


async def test_kernels_run_on_the_gateway_and_files_go_through_them(ka_server, kernel_gateway):
    kernels = ka_server.services.kernels
    assert isinstance(kernels, RemoteKernels)
    sid = (await ka_server.session())["id"]
    data = os.urandom(3_000_000)
    assert (await ka_server.upload(sid, "data/blob.bin", data)).code == 201
    code = (
        "import hashlib, os\n"
        "print(os.getcwd())\n"
        "print(hashlib.sha256(open('data/blob.bin', 'rb').read()).hexdigest())\n"
        "open('made.txt', 'w').write('by the kernel')"
    )
    cell = (await ka_server.run(sid, code))["cell"]
    cwd, sha = cell["outputs"][0]["text"].split()
    kernel_id = (await ka_server.services.db.sessions.get(sid)).kernel_id
    assert cwd.endswith(f"remote-workspaces/{kernel_id}")
    assert sha == hashlib.sha256(data).hexdigest()
    listed = await ka_server.json(f"/api/v1/sessions/{sid}/files")
    assert {f["path"] for f in listed["files"]} == {"data/blob.bin", "made.txt"}
    made = await ka_server.fetch(f"/api/v1/sessions/{sid}/files/made.txt")
    assert made.body == b"by the kernel"
    assert await on_gateway(*kernel_gateway, kernel_id) == 200
    await ka_server.fetch(f"/api/v1/sessions/{sid}", "DELETE")
    assert await on_gateway(*kernel_gateway, kernel_id) == 404


async def test_a_dropped_websocket_loses_no_output(ka_server):
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "1")
    kernels = ka_server.services.kernels
    kernel_id = (await ka_server.services.db.sessions.get(sid)).kernel_id
    code = "import time\nfor i in range(20):\n    print(i, flush=True)\n    time.sleep(0.1)"
    cell = asyncio.create_task(ka_server.run(sid, code))
    await asyncio.sleep(0.5)
    link = kernels._links[kernel_id]
    link.ws.close()  # as a network failure would
    result = (await cell)["cell"]
    text = "".join(o.get("text", "") for o in result["outputs"])
    assert text.split() == [str(i) for i in range(20)], result
    assert result["metadata"]["kernelagent"]["status"] == "ok"
    assert await kernels.is_alive(kernel_id)


async def test_an_offline_workspace_serves_its_mirror_and_takes_uploads(ka_server):
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "open('kept.txt', 'w').write('kept')")
    assert await ka_server.services.supervisor.cull_idle(ttl=0) == [sid]
    listed = await ka_server.json(f"/api/v1/sessions/{sid}/files")
    assert [f["path"] for f in listed["files"]] == ["kept.txt"]
    assert (await ka_server.fetch(f"/api/v1/sessions/{sid}/files/kept.txt")).body == b"kept"
    assert (await ka_server.upload(sid, "late.txt", b"while offline")).code == 201
    cell = (await ka_server.run(sid, "open('kept.txt').read() + open('late.txt').read()"))["cell"]
    assert cell["outputs"][0]["data"]["text/plain"] == "'keptwhile offline'"


async def test_a_kernel_that_dies_on_the_gateway_is_recorded_and_replaced(ka_server):
    """The gateway restarts a dead kernel empty: the session's kernel counts as dead, its cell
    says so, and the next cell runs in a new kernel with the state rebuilt."""
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "x = 41")
    before = (await ka_server.services.db.sessions.get(sid)).kernel_id
    cell = (await ka_server.run(sid, "import os; os._exit(3)"))["cell"]
    assert cell["metadata"]["kernelagent"]["status"] == "died"
    assert cell["outputs"][-1]["ename"] == "KernelDied"
    assert "the kernel died on the gateway" in cell["outputs"][-1]["evalue"]
    after = await ka_server.run(sid, "x + 1")
    assert after["cell"]["outputs"][0]["data"]["text/plain"] == "42"
    assert (await ka_server.services.db.sessions.get(sid)).kernel_id != before


async def test_a_kernel_deleted_on_the_gateway_is_rebuilt_on_next_use(ka_server, kernel_gateway):
    url, token = kernel_gateway
    sid = (await ka_server.session())["id"]
    await ka_server.run(sid, "x = 'kept'")
    kernel_id = (await ka_server.services.db.sessions.get(sid)).kernel_id
    deleted = await AsyncHTTPClient().fetch(
        f"{url}/api/kernels/{kernel_id}", method="DELETE",
        headers={"Authorization": f"token {token}"}, raise_error=False,
    )  # fmt: skip
    assert deleted.code == 204
    kernels = ka_server.services.kernels
    async with asyncio.timeout(10):  # the gateway closes the WebSocket; the kernel counts as lost
        while await kernels.is_alive(kernel_id):
            await asyncio.sleep(0.05)
    cell = (await ka_server.run(sid, "x"))["cell"]
    assert cell["outputs"][0]["data"]["text/plain"] == "'kept'"
    assert (await ka_server.services.db.sessions.get(sid)).kernel_id != kernel_id
    notes = [c.source for c in await ka_server.services.db.cells.list(sid) if c.role == "system"]
    assert any("state restored from the snapshot" in n for n in notes), notes


__all__ = [
    "test_a_killed_kernel_comes_back_with_its_state",
    "test_agent_interrupt",
    "test_agent_turn",
    "test_branch_has_the_record_files_and_state_of_its_cell",
    "test_cell_runs_and_is_recorded",
    "test_concurrent_cells_run_one_at_a_time_in_arrival_order",
    "test_deleting_a_kernel_keeps_the_session_and_its_state_comes_back",
    "test_each_session_is_a_kernelspec_that_attaches_to_its_kernel",
    "test_execute_over_the_websocket_is_recorded",
    "test_files_are_stored_once_per_content",
    "test_idle_kernels_are_culled_and_come_back",
    "test_import_any_notebook_and_rebuild_its_state",
    "test_interrupt_endpoint_stops_the_running_cell",
    "test_jupyter_server_runs_kernels_through_the_gateway",
    "test_jupyterlab_picks_the_session_and_shares_its_kernel",
    "test_notebook_export_is_valid_nbformat_and_lands_in_storage",
    "test_replay_reports_each_cell",
    "test_restart_keeps_the_socket_and_is_recorded",
    "test_rich_outputs_become_artifacts_with_signed_urls",
    "test_timeout_interrupts_and_keeps_partial_output_and_state",
]
