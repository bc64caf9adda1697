"""KernelState: snapshots of a kernel's namespace taken and restored through the kernel.

``kernelagent.kernelside.state`` does the work inside the kernel (and only there: the server
never unpickles what a kernel wrote). A capture is sent right behind a cell, so the kernel runs
it after the cell's reply has gone out and before the next cell; its bytes come back as
``comm_msg`` buffers. A restore sends each variable's bytes as the buffers of requests, in
pieces, then binds them all at once.

Example::

    state = KernelState(kernels.execute)
    pending = await state.begin_capture(kernel_id, cell=3, max_bytes=10**9, max_seconds=2)
    ... the cell runs and replies ...
    capture = await state.finish_capture(pending)   # what changed, and the new bytes
    report = await state.restore(new_kernel_id, manifest, blobs, capture.id)
"""

from __future__ import annotations

import json
from typing import Any

from kernelagent.adapters.kernel_calls import Call, Execute, KernelCalls
from kernelagent.adapters.kernel_runs import Run
from kernelagent.domain import NamespaceCapture, NamespaceRestored
from kernelagent.kernelside.state import PIECE, STATE_COMM

MODULE = "kernelagent.kernelside.state"


class KernelState:
    def __init__(self, execute: Execute, timeout: float = 120.0):
        self.kernel = KernelCalls(execute, MODULE, timeout)

    async def begin_capture(
        self, kernel_id: str, cell: int, max_bytes: int, max_seconds: float
    ) -> Run:
        """Queue a capture of what the cell before it changed (send it right behind the
        cell); the caller passes the run to ``finish_capture``, or closes it."""
        return await self.kernel.send(kernel_id, "capture", (cell, max_bytes, max_seconds))

    async def finish_capture(self, run: Run) -> NamespaceCapture | None:
        """The capture's answer; None when there was nothing to take (the cell failed)."""
        try:
            answer = json.loads(await self.kernel.value(run))
            if answer is None:
                return None
            pieces: dict[str, list[bytes]] = {}
            for msg in await self.kernel.received(run, STATE_COMM):
                pieces.setdefault(msg.content["data"]["sha"], []).extend(msg.buffers)
        finally:
            run.close()
        return NamespaceCapture(
            id=str(answer["id"]),
            base=answer["base"],
            changes=answer["changes"],
            removed=list(answer["removed"]),
            blobs={sha: b"".join(parts) for sha, parts in pieces.items()},
            ms=float(answer["ms"]),
            skipped=list(answer["skipped"]),
        )

    async def restore(
        self,
        kernel_id: str,
        manifest: dict[str, dict[str, Any]],
        blobs: dict[str, bytes],
        snapshot_id: str,
    ) -> NamespaceRestored:
        """Bind ``manifest``'s variables in the kernel, their bytes from ``blobs`` (by sha256);
        the kernel checks each sha256. Its next capture is relative to ``snapshot_id``."""
        await self.kernel.calls(kernel_id, _stage_calls(blobs), self._staged)
        answer = json.loads(
            await self.kernel.call(kernel_id, "restore", json.dumps(manifest), snapshot_id)
        )
        return NamespaceRestored(list(answer["restored"]), dict(answer["failed"]))

    async def rebind(self, kernel_id: str) -> int:
        """Bind again what the last restore bound (after cells re-ran on top of it)."""
        return int(await self.kernel.call(kernel_id, "rebind"))

    async def _staged(self, function: str, run: Run) -> int:
        return int(await self.kernel.value(run))


def _stage_calls(blobs: dict[str, bytes]) -> list[Call]:
    """``stage`` requests of up to ``PIECE`` bytes each: small variables share one, a large
    one takes several."""
    calls: list[Call] = []
    pieces: list[tuple[str, int]] = []
    buffers: list[bytes] = []
    size = 0
    for sha, data in blobs.items():
        for at in range(0, max(len(data), 1), PIECE):
            piece = data[at : at + PIECE]
            if buffers and size + len(piece) > PIECE:
                calls.append(("stage", (pieces,), buffers))
                pieces, buffers, size = [], [], 0
            pieces.append((sha, at))
            buffers.append(piece)
            size += len(piece)
    if buffers:
        calls.append(("stage", (pieces,), buffers))
    return calls
