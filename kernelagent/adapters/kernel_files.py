"""KernelFiles: a workspace read and written through its own kernel.

For kernels whose filesystem the server cannot see (a remote gateway, a pod), the workspace
operations of the ``Workspaces`` port go through the kernel: silent, history-less execute
requests whose ``user_expressions`` call ``kernelagent.kernelside.files``. Nothing is recorded as
a cell, nothing reaches iopub, no name is bound in the user's namespace. Transfers are chunked
(base64 in the JSON messages, so any gateway carries them), size-limited before and while
reading, and checked by sha256 both ways: a write becomes the file only when the kernel's hash
of the whole matches, and a read is compared with the kernel's hash of the file.

Example::

    files = KernelFiles(kernels.execute, root="/workspace")
    await files.write_file(kernel_id, "data/sales.csv", data)
    assert await files.read_file(kernel_id, "data/sales.csv", limit=10**8) == data
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from kernelagent.domain import FileStat
from kernelagent.errors import InvalidInput, KernelAgentError, KernelDied, NotFound, TooLarge

MODULE = "__import__('kernelagent.kernelside.files', fromlist=['files'])"
CHUNK = 4 * 1024 * 1024  # bytes per request: ~5.3 MiB of base64 in one message
ERRORS: dict[str, type[KernelAgentError]] = {
    "FileNotFoundError": NotFound,
    "OSError": NotFound,  # ELOOP: a symlink where a file or directory was expected
    "NotADirectoryError": InvalidInput,
    "IsADirectoryError": InvalidInput,
    "ValueError": InvalidInput,
}

Execute = Callable[..., Awaitable[Any]]  # a backend's execute: returns a KernelRun


class KernelFiles:
    """The ``Workspaces`` operations of one kernel's workspace, done by the kernel itself."""

    def __init__(self, execute: Execute, root: str, chunk: int = CHUNK, timeout: float = 60.0):
        self.execute = execute
        self.root = root
        self.chunk = chunk
        self.timeout = timeout

    async def list_files(self, kernel_id: str) -> dict[str, FileStat]:
        found = json.loads(await self._call(kernel_id, "listing", self.root))
        return {rel: FileStat(size, mtime) for rel, (size, mtime) in found.items()}

    async def read_file(self, kernel_id: str, path: str, limit: int) -> bytes:
        size = int(await self._call(kernel_id, "size", self.root, path))
        if size > limit:
            raise TooLarge(f"{path!r} is larger than {limit} bytes")
        chunks, total = [], 0
        while total < size:
            data = _base64(await self._call(kernel_id, "read", self.root, path, total, self.chunk))
            if not data:
                break  # it shrank meanwhile: the hash below tells
            chunks.append(data)
            total += len(data)
            if total > limit:  # it grew meanwhile
                raise TooLarge(f"{path!r} is larger than {limit} bytes")
        content = b"".join(chunks)
        expected = await self._call(kernel_id, "digest", self.root, path)
        if hashlib.sha256(content).hexdigest() != expected:
            raise NotFound(f"{path!r} changed while it was read; try again")
        return content

    async def write_file(self, kernel_id: str, path: str, data: bytes) -> None:
        part = secrets.token_hex(8)
        sha = hashlib.sha256(data).hexdigest()
        try:
            offset = 0
            while True:
                piece = data[offset : offset + self.chunk]
                last = offset + len(piece) >= len(data)
                args = (self.root, path, part, offset, sha if last else "")
                await self._call(kernel_id, "write", *args, chunk=piece)
                offset += len(piece)
                if last:
                    return
        except BaseException:
            await self._call(kernel_id, "abandon", self.root, path, part)
            raise

    async def remove_file(self, kernel_id: str, path: str) -> None:
        await self._call(kernel_id, "remove", self.root, path)

    async def clear(self, kernel_id: str) -> None:
        await self._call(kernel_id, "clear", self.root)

    async def _call(
        self, kernel_id: str, function: str, *args: Any, chunk: bytes | None = None
    ) -> str:
        """``function(*args)`` of ``kernelside.files`` in the kernel; its value's text/plain.
        ``chunk`` travels in the request's metadata."""
        expression = f"{MODULE}.{function}({', '.join(map(repr, args))})"
        metadata = None if chunk is None else {"kernelagent_chunk": _b64(chunk)}
        run = await self.execute(
            kernel_id,
            "",
            silent=True,
            store_history=False,
            user_expressions={"v": expression},
            metadata=metadata,
        )
        try:
            reply = await run.reply(self.timeout)
        finally:
            run.close()
        if reply is None:
            raise KernelDied(f"the kernel did not answer a file request within {self.timeout:g} s")
        value = reply.content.get("user_expressions", {}).get("v", {})
        if value.get("status") != "ok":
            ename, evalue = value.get("ename", "Error"), value.get("evalue", "")
            if ename == "ModuleNotFoundError":
                raise KernelAgentError(
                    "the kernel lacks kernelagent's kernel-side package (kernelagent.kernelside)"
                )
            raise ERRORS.get(ename, KernelAgentError)(f"{ename}: {evalue}")
        return str(value.get("data", {}).get("text/plain", ""))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _base64(text_plain: str) -> bytes:
    return base64.b64decode(text_plain, validate=True)
