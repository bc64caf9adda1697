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
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from kernelagent.adapters.kernel_runs import Run
from kernelagent.domain import FileStat
from kernelagent.errors import InvalidInput, KernelAgentError, KernelDied, NotFound, TooLarge
from kernelagent.kernelside.files import CHUNK_COMM

MODULE = "__import__('kernelagent.kernelside.files', fromlist=['files'])"
CHUNK = 4 * 1024 * 1024  # bytes per request
# Requests in flight: the server, the gateway and the kernel each work on one while the others
# travel (through Enterprise Gateway, one at a time moved 20 MB at ~30 MB/s).
WINDOW = 4
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

    def __init__(
        self,
        execute: Execute,
        root: str,
        chunk: int = CHUNK,
        timeout: float = 60.0,
        window: int = WINDOW,
    ):
        self.execute = execute
        self.root = root
        self.chunk = chunk
        self.timeout = timeout
        self.window = window

    async def list_files(self, kernel_id: str) -> dict[str, FileStat]:
        found = json.loads(await self._call(kernel_id, "listing", self.root))
        return {rel: FileStat(size, mtime) for rel, (size, mtime) in found.items()}

    async def read_file(self, kernel_id: str, path: str, limit: int) -> bytes:
        size = int(await self._call(kernel_id, "size", self.root, path))
        if size > limit:
            raise TooLarge(f"{path!r} is larger than {limit} bytes")
        sends = [
            ("send", (self.root, path, at, self.chunk), None) for at in range(0, size, self.chunk)
        ]
        *pieces, expected = await self._calls(
            kernel_id, [*sends, ("digest", (self.root, path), None)]
        )
        content = b"".join(pieces)  # type: ignore[arg-type]
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
            await self._calls(kernel_id, calls)
        except BaseException:
            await self._call(kernel_id, "abandon", self.root, path, part)
            raise

    async def remove_file(self, kernel_id: str, path: str) -> None:
        await self._call(kernel_id, "remove", self.root, path)

    async def clear(self, kernel_id: str) -> None:
        await self._call(kernel_id, "clear", self.root)

    async def _call(self, kernel_id: str, function: str, *args: Any) -> str:
        """``function(*args)`` of ``kernelside.files`` in the kernel; its value's text/plain."""
        (answer,) = await self._calls(kernel_id, [(function, args, None)])
        return answer  # type: ignore[return-value]

    async def _calls(
        self, kernel_id: str, calls: list[tuple[str, tuple, bytes | None]]
    ) -> list[str | bytes]:
        """The answers to ``calls`` (function, args, chunk to send), in order, with up to
        ``window`` requests in flight: the kernel takes them one after another from its shell
        channel, and meanwhile the next chunk is already on its way through the gateway. The
        answer of ``send`` is the bytes it sent; of any other function, its value."""
        answers: list[str | bytes] = []
        pending: deque[tuple[str, Run]] = deque()
        try:
            for function, args, chunk in calls:
                pending.append((function, await self._send(kernel_id, function, args, chunk)))
                if len(pending) >= self.window:
                    answers.append(await self._answer(*pending.popleft()))
            while pending:
                answers.append(await self._answer(*pending.popleft()))
        finally:
            for _, run in pending:
                run.close()
        return answers

    async def _send(self, kernel_id: str, function: str, args: tuple, chunk: bytes | None) -> Run:
        expression = f"{MODULE}.{function}({', '.join(map(repr, args))})"
        return await self.execute(
            kernel_id,
            "",
            silent=True,
            store_history=False,
            user_expressions={"v": expression},
            buffers=None if chunk is None else [chunk],
        )

    async def _answer(self, function: str, run: Run) -> str | bytes:
        try:
            value = await self._value(run)
            return await self._received(run, int(value)) if function == "send" else value
        finally:
            run.close()

    async def _value(self, run: Run) -> str:
        reply = await run.reply(self.timeout)
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

    async def _received(self, run: Run, count: int) -> bytes:
        """The ``count`` bytes ``send`` put on iopub for ``run``: all of them come before the
        request's ``idle`` status."""
        pieces = []
        while (msg := await run.next(self.timeout)) is not None:
            if msg.msg_type == "comm_msg" and msg.content.get("comm_id") == CHUNK_COMM:
                pieces.extend(msg.buffers)
            elif msg.msg_type == "status" and msg.content.get("execution_state") == "idle":
                data = b"".join(pieces)
                if len(data) != count:
                    raise KernelAgentError(
                        f"a file chunk lost {count - len(data)} bytes on the way"
                    )
                return data
        raise KernelDied(f"the kernel did not send a file chunk within {self.timeout:g} s")
