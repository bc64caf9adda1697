"""KernelFiles: a workspace read and written through its own kernel.

For kernels whose filesystem the server cannot see (a remote gateway, a pod), the workspace
operations of the ``Workspaces`` port go through the kernel: silent, history-less execute
requests whose ``user_expressions`` call ``kernelagent.kernelside.files``. Nothing is recorded as
a cell, no name is bound in the user's namespace. Transfers are chunked, as binary buffers
both ways (up in the request, down in a ``comm_msg`` on iopub that no frontend has a comm for),
which a gateway passes through untouched, with a few chunks in flight; size-limited before
reading, and checked by sha256 both ways: a write becomes the file only when the kernel's hash
of the whole matches, and a read is compared with the kernel's hash of the file.

Example::

    files = KernelFiles(kernels.execute, root="/workspace")
    await files.write_file(kernel_id, "data/sales.csv", data)
    assert await files.read_file(kernel_id, "data/sales.csv", limit=10**8) == data
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from kernelagent.adapters.kernel_calls import WINDOW, Execute, KernelCalls
from kernelagent.adapters.kernel_runs import Run
from kernelagent.domain import FileStat
from kernelagent.errors import InvalidInput, KernelAgentError, NotFound, TooLarge
from kernelagent.kernelside.files import CHUNK_COMM

CHUNK = 4 * 1024 * 1024  # bytes per request
ERRORS: dict[str, type[KernelAgentError]] = {
    "FileNotFoundError": NotFound,
    "OSError": NotFound,  # ELOOP: a symlink where a file or directory was expected
    "NotADirectoryError": InvalidInput,
    "IsADirectoryError": InvalidInput,
    "ValueError": InvalidInput,
}


class KernelFiles:
    """The ``Workspaces`` operations of one kernel's workspace, done by the kernel itself."""

    def __init__(
        self,
        execute: Execute,
        root: str,
        chunk: int = CHUNK,
        timeout: float = 60.0,
        window: int = WINDOW,
    ):
        self.kernel = KernelCalls(
            execute, "kernelagent.kernelside.files", timeout, window, errors=ERRORS
        )
        self.root = root
        self.chunk = chunk

    async def list_files(self, kernel_id: str) -> dict[str, FileStat]:
        found = json.loads(await self.kernel.call(kernel_id, "listing", self.root))
        return {rel: FileStat(size, mtime) for rel, (size, mtime) in found.items()}

    async def read_file(self, kernel_id: str, path: str, limit: int) -> bytes:
        size = int(await self.kernel.call(kernel_id, "size", self.root, path))
        if size > limit:
            raise TooLarge(f"{path!r} is larger than {limit} bytes")
        sends = [
            ("send", (self.root, path, at, self.chunk), None) for at in range(0, size, self.chunk)
        ]
        *pieces, expected = await self.kernel.calls(
            kernel_id, [*sends, ("digest", (self.root, path), None)], self._answer
        )
        content = b"".join(pieces)
        if hashlib.sha256(content).hexdigest() != expected:  # it grew or shrank meanwhile
            raise NotFound(f"{path!r} changed while it was read; try again")
        return content

    async def write_file(self, kernel_id: str, path: str, data: bytes) -> None:
        part = secrets.token_hex(8)
        sha = hashlib.sha256(data).hexdigest()
        offsets = range(0, max(len(data), 1), self.chunk)
        last = offsets[-1]
        calls = [
            (
                "write",
                (self.root, path, part, at, sha if at == last else ""),
                data[at : at + self.chunk],
            )
            for at in offsets
        ]
        try:
            await self.kernel.calls(kernel_id, calls, self._answer)
        except BaseException:
            await self.kernel.call(kernel_id, "abandon", self.root, path, part)
            raise

    async def remove_file(self, kernel_id: str, path: str) -> None:
        await self.kernel.call(kernel_id, "remove", self.root, path)

    async def clear(self, kernel_id: str) -> None:
        await self.kernel.call(kernel_id, "clear", self.root)

    async def _answer(self, function: str, run: Run) -> Any:
        """The value of a call; for ``send``, the bytes it put on iopub."""
        value = await self.kernel.value(run)
        if function != "send":
            return value
        data = b"".join(
            b for msg in await self.kernel.received(run, CHUNK_COMM) for b in msg.buffers
        )
        if len(data) != int(value):
            raise KernelAgentError(f"a file chunk lost {int(value) - len(data)} bytes on the way")
        return data
