"""A workspace read and written through its kernel (``KernelFiles``), as a remote backend does:
against real sandboxed kernels, compared with what the server sees on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest

from kernelagent.adapters import workspace_io
from kernelagent.adapters.kernel_files import KernelFiles
from kernelagent.adapters.kernels import LocalKernels
from kernelagent.errors import InvalidInput, NotFound, TooLarge
from kernelagent.services.running import run_code

pytestmark = pytest.mark.sandbox


@pytest.fixture(params=["bubblewrap", "docker"])
async def kernel(request, settings):
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    kernels = LocalKernels(dataclasses.replace(settings, sandbox=request.param))
    kernel_id = await kernels.start("files")
    try:
        yield kernels, kernel_id
    finally:
        await kernels.close()


async def test_files_round_trip_in_chunks_and_match_the_disk(kernel):
    kernels, kernel_id = kernel
    files = KernelFiles(kernels.execute, "/workspace", chunk=64 * 1024)
    host = kernels.workspace_path("files")
    data = os.urandom(300_000)  # five chunks, the last one short
    await files.write_file(kernel_id, "data/blob.bin", data)
    assert (host / "data" / "blob.bin").read_bytes() == data
    assert await files.read_file(kernel_id, "data/blob.bin", limit=10**6) == data
    await files.write_file(kernel_id, "empty.txt", b"")
    assert await files.read_file(kernel_id, "empty.txt", limit=10) == b""

    listed = await files.list_files(kernel_id)
    on_disk = workspace_io.scan(host)
    assert {rel: (s.size, s.mtime_ns) for rel, s in listed.items()} == on_disk
    assert set(listed) == {"data/blob.bin", "empty.txt"}  # no part files left behind

    await files.remove_file(kernel_id, "data/blob.bin")
    assert not (host / "data" / "blob.bin").exists()
    await files.remove_file(kernel_id, "data/blob.bin")  # a missing file is no error
    with pytest.raises(NotFound):
        await files.read_file(kernel_id, "data/blob.bin", limit=10**6)


async def test_transfers_leave_no_trace_in_the_kernel(kernel):
    kernels, kernel_id = kernel
    files = KernelFiles(kernels.execute, "/workspace")
    names = "[n for n in dir() if not n.startswith('_')]"
    before = await run_code(kernels, kernel_id, names, timeout=30, stream_limit=10**5)
    await files.write_file(kernel_id, "a.txt", b"hello")
    await files.read_file(kernel_id, "a.txt", limit=100)
    await files.list_files(kernel_id)
    after = await run_code(kernels, kernel_id, names, timeout=30, stream_limit=10**5)
    assert after.execution_count == before.execution_count + 1  # no cell in between
    assert before.outputs[0]["data"] == after.outputs[0]["data"]  # no name bound


async def test_limits_links_and_bad_paths_are_refused(kernel):
    kernels, kernel_id = kernel
    files = KernelFiles(kernels.execute, "/workspace", chunk=1024)
    await files.write_file(kernel_id, "big.bin", b"x" * 5000)
    with pytest.raises(TooLarge):
        await files.read_file(kernel_id, "big.bin", limit=4999)
    code = "import os\nos.symlink('/etc/passwd', 'link')\nos.mkdir('dir')\nos.mkfifo('fifo')"
    result = await run_code(kernels, kernel_id, code, timeout=30, stream_limit=10**5)
    assert result.status == "ok", result.outputs
    listed = await files.list_files(kernel_id)
    assert set(listed) == {"big.bin"}
    for path in ("link", "fifo", "dir"):
        with pytest.raises((NotFound, InvalidInput)):
            await files.read_file(kernel_id, path, limit=10**6)
    with pytest.raises(InvalidInput):
        await files.write_file(kernel_id, "dir", b"not over a directory")
    with pytest.raises(InvalidInput):
        await files.write_file(kernel_id, "../escape.txt", b"no")
    assert not (kernels.workspace_path("files").parent / "escape.txt").exists()


async def test_a_corrupted_write_is_refused_and_leaves_nothing(kernel):
    kernels, kernel_id = kernel
    files = KernelFiles(kernels.execute, "/workspace", chunk=1024)
    # the last chunk names a hash the content does not have
    with pytest.raises(InvalidInput, match="sha256"):
        args = ("/workspace", "c.bin", "p1", 0, hashlib.sha256(b"other").hexdigest())
        await files.kernel.calls(kernel_id, [("write", args, b"hello")], files._answer)
    assert await files.list_files(kernel_id) == {}
    assert os.listdir(kernels.workspace_path("files")) == []
