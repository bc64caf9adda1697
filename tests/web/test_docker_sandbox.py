"""The server on the Docker sandbox: the same proofs as on bubblewrap, through the same tests.

Each name below is a test of another module, collected again here, where ``settings``,
``ka_server`` and ``server`` make a server whose kernels are Docker containers
(``KERNELAGENT_SANDBOX=docker``): the warm pool, cells and artifacts, interrupt and timeouts,
dead and culled kernels rebuilt by replay, branch, import, the Kernel Gateway API, the agent,
and ``%pip install`` into the read-only package directory.
"""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
from conftest import backend_settings, running
from test_agent import agent_settings, llm  # noqa: F401 - the scripted LLM fixture
from test_agent import test_a_turn_runs_code_sees_a_summary_and_answers as test_agent_turn
from test_agent import test_interrupt_stops_the_cell_and_the_turn as test_agent_interrupt
from test_api import (
    test_cell_runs_and_is_recorded,
    test_dead_kernel_is_recorded_and_replaced,
    test_files_upload_list_download_and_mirror,
    test_hostile_kernel_links_and_fifos_cannot_reach_host_files,
    test_interrupt_endpoint_stops_the_running_cell,
    test_rich_outputs_become_artifacts_with_signed_urls,
    test_timeout_interrupts_and_keeps_partial_output_and_state,
)
from test_gateway import (
    test_deleting_a_kernel_keeps_the_session_and_its_state_comes_back,
    test_each_session_is_a_kernelspec_that_attaches_to_its_kernel,
    test_execute_over_the_websocket_is_recorded,
    test_restart_keeps_the_socket_and_is_recorded,
)
from test_packages import (
    test_a_kernel_restored_from_its_snapshot_has_its_packages_first,
    test_pip_install_in_a_cell_installs_for_the_session_only,
)
from test_worldlines import (
    test_a_killed_kernel_comes_back_with_its_state,
    test_branch_has_the_record_files_and_state_of_its_cell,
    test_idle_kernels_are_culled_and_come_back,
    test_import_any_notebook_and_rebuild_its_state,
    test_replay_reports_each_cell,
)

from kernelagent.adapters.kernels import LocalKernels
from kernelagent.config import Settings

pytestmark = [pytest.mark.sandbox, pytest.mark.docker]

DOCKER = {"sandbox": "docker"}


@pytest.fixture
def settings(settings, docker_engine):
    return dataclasses.replace(settings, **DOCKER)


@pytest.fixture(params=["embedded", "networked"])
async def ka_server(request, tmp_path, unused_port, docker_engine):
    async with running(backend_settings(request, tmp_path, unused_port, **DOCKER)) as server:
        yield server


@pytest.fixture(params=["embedded"])
async def server(request, tmp_path, unused_port, llm, docker_engine):  # noqa: F811
    async with running(agent_settings(request, tmp_path, unused_port, llm, **DOCKER)) as s:
        yield s


async def test_kernels_are_containers_of_the_kernel_image(ka_server, docker_engine):
    kernels = ka_server.services.kernels
    assert isinstance(kernels, LocalKernels)
    assert kernels.kernel_name == "kernelagent-python3-docker"
    sid = (await ka_server.session())["id"]
    cell = await ka_server.run(
        sid,
        "import sys, os, jupyter_client.session as s\n"
        "print(sys.prefix, os.getcwd(), os.getuid(), s.has_orjson)",
    )
    prefix, cwd, uid, fast_json = cell["cell"]["outputs"][0]["text"].split()
    assert (prefix, cwd) == ("/opt/kernel", "/workspace")
    assert fast_json == "True"  # the kernel packs its messages as fast as the server
    kernel_id = (await ka_server.services.db.sessions.get(sid)).kernel_id
    provisioner = kernels.manager(kernel_id).provisioner
    assert int(uid) == provisioner.host_uid != 0
    assert provisioner.container_id


async def test_out_of_memory_is_reported_as_such(tmp_path, unused_port, docker_engine):
    """Shared memory (a tmpfs file, mapped) is charged to the container but not to RLIMIT_DATA,
    so the OOM killer, not a MemoryError, ends the kernel: the cell says so, and the next cell
    gets a new kernel."""
    settings = Settings(
        data_dir=tmp_path / "data",
        port=unused_port,
        pool_size=0,
        pool_preimport="",
        memory_limit=256 * 1024**2,
        tmp_size=512 * 1024**2,
        **DOCKER,
    )
    code = textwrap.dedent("""
        import mmap, os
        fd = os.open("/dev/shm/fill", os.O_CREAT | os.O_RDWR)
        os.ftruncate(fd, 400 * 1024**2)
        memory = mmap.mmap(fd, 400 * 1024**2, mmap.MAP_SHARED)
        for i in range(0, len(memory), 4096):
            memory[i] = 1
    """)
    async with running(settings) as s:
        sid = (await s.session())["id"]
        cell = await s.run(sid, code)
        assert cell["cell"]["metadata"]["kernelagent"]["status"] == "died", cell
        (error,) = [o for o in cell["cell"]["outputs"] if o["output_type"] == "error"]
        assert error["evalue"] == "out of memory (limit 256 MiB)", error
        after = await s.run(sid, "1 + 1")
        assert after["cell"]["outputs"][0]["data"]["text/plain"] == "2"


__all__ = [
    "test_a_kernel_restored_from_its_snapshot_has_its_packages_first",
    "test_a_killed_kernel_comes_back_with_its_state",
    "test_agent_interrupt",
    "test_agent_turn",
    "test_branch_has_the_record_files_and_state_of_its_cell",
    "test_cell_runs_and_is_recorded",
    "test_dead_kernel_is_recorded_and_replaced",
    "test_deleting_a_kernel_keeps_the_session_and_its_state_comes_back",
    "test_each_session_is_a_kernelspec_that_attaches_to_its_kernel",
    "test_execute_over_the_websocket_is_recorded",
    "test_files_upload_list_download_and_mirror",
    "test_hostile_kernel_links_and_fifos_cannot_reach_host_files",
    "test_idle_kernels_are_culled_and_come_back",
    "test_import_any_notebook_and_rebuild_its_state",
    "test_interrupt_endpoint_stops_the_running_cell",
    "test_pip_install_in_a_cell_installs_for_the_session_only",
    "test_replay_reports_each_cell",
    "test_restart_keeps_the_socket_and_is_recorded",
    "test_rich_outputs_become_artifacts_with_signed_urls",
    "test_timeout_interrupts_and_keeps_partial_output_and_state",
]
