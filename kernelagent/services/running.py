"""One cell through the kernel port: its messages become nbformat outputs until the kernel is idle.

Modelled on nbclient's ``async_execute_cell``: iopub until ``status: idle``, then the shell reply,
while the port watches the kernel's liveness. Past its deadline the cell is interrupted and keeps
its partial output; a kernel that does not stop within ``INTERRUPT_GRACE`` is stuck. Used by the
execution path (which publishes each output as it comes) and by replay.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kernelagent.domain import CellStatus, KernelMessage
from kernelagent.errors import KernelDied
from kernelagent.kernelside.state import HINT
from kernelagent.services.outputs import OutputCollector
from kernelagent.services.ports import KernelBackend, KernelRun

INTERRUPT_GRACE = 5.0  # seconds a kernel has to answer an interrupt before it counts as stuck
REPLY_WAIT = 5.0  # seconds the shell reply may trail the kernel's idle status

OnOutput = Callable[[OutputCollector, list[dict[str, Any]]], Awaitable[None]]
OnInput = Callable[[KernelMessage], Awaitable[None]]
# told the outputs, status and execution count as the shell reply arrives (before the idle
# status, which may still bring outputs)
OnReply = Callable[[list[dict[str, Any]], CellStatus, int | None], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class CellResult:
    outputs: list[dict[str, Any]]
    status: CellStatus  # "ok", "error", "timeout" or "died"
    execution_count: int | None
    reply: KernelMessage | None
    kernel_lost: bool = False  # it died or is stuck: the session needs a new kernel
    # whether the kernel-side extension said a namespace snapshot is due (None: it did not say)
    capture: bool | None = None


async def collect(
    kernels: KernelBackend,
    kernel_id: str,
    run: KernelRun,
    timeout: float,
    stream_limit: int,
    on_output: OnOutput | None = None,
    on_input: OnInput | None = None,
    on_reply: OnReply | None = None,
) -> CellResult:
    """Collect ``run`` until the kernel is idle; ``on_output`` sees each change of the outputs,
    ``on_input`` each ``input_request``, ``on_reply`` the cell as the reply comes. The caller
    closes ``run``."""
    collector = OutputCollector(stream_limit=stream_limit)
    deadline = time.monotonic() + timeout
    status: CellStatus = "ok"
    count: int | None = None
    timed_out = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if timed_out:
                stuck = f"did not stop {INTERRUPT_GRACE:g} s after an interrupt"
                collector.feed("error", died(stuck))
                return CellResult(collector.outputs, "timeout", count, None, kernel_lost=True)
            timed_out = True
            await kernels.interrupt(kernel_id)
            deadline = time.monotonic() + INTERRUPT_GRACE
            continue
        try:
            msg = await run.next(remaining)
        except KernelDied as e:
            collector.feed("error", died(str(e)))
            return CellResult(collector.outputs, "died", count, None, e.cause == "died")
        if msg is None:
            continue
        if msg.channel == "shell":
            if on_reply is not None and not timed_out:
                await on_reply(collector.outputs, status, count)
            continue
        if msg.channel == "stdin":
            if on_input is not None:
                await on_input(msg)
            continue
        msg_type, content = msg.msg_type, msg.content
        if msg_type == "status":
            if content.get("execution_state") == "idle":
                break
            continue
        if msg_type == "execute_input":
            count = content.get("execution_count")
            continue
        if msg_type == "error" and status == "ok":
            status = "error"
        changed = collector.feed(msg_type, content)
        if changed is not None and on_output is not None:
            await on_output(collector, changed)
    reply = await run.reply(REPLY_WAIT)
    final = "timeout" if timed_out else status
    hint = reply.metadata.get(HINT) if reply is not None else None
    capture = hint if isinstance(hint, bool) else None
    return CellResult(collector.outputs, final, count, reply, capture=capture)


async def run_code(
    kernels: KernelBackend, kernel_id: str, code: str, timeout: float, stream_limit: int
) -> CellResult:
    """Run ``code`` as a cell and collect it (replay: nobody watches it run)."""
    try:
        run = await kernels.execute(kernel_id, code)
    except KernelDied as e:
        return CellResult([died_output(str(e))], "died", None, None, e.cause == "died")
    try:
        return await collect(kernels, kernel_id, run, timeout, stream_limit)
    finally:
        run.close()


async def evaluate(kernels: KernelBackend, kernel_id: str, expression: str, timeout: float) -> str:
    """The ``text/plain`` value of ``expression``, evaluated silently (``user_expressions``:
    no cell, no history, no output); RuntimeError with the kernel's error otherwise."""
    run = await kernels.execute(
        kernel_id, silent=True, store_history=False, user_expressions={"value": expression}
    )
    try:
        reply = await run.reply(timeout)
    finally:
        run.close()
    if reply is None:
        raise RuntimeError(f"the kernel did not answer within {timeout:g} s")
    value = reply.content.get("user_expressions", {}).get("value", {})
    if value.get("status") != "ok":
        raise RuntimeError(f"{value.get('ename')}: {value.get('evalue')}")
    return str(value.get("data", {}).get("text/plain", ""))


async def run_silently(kernels: KernelBackend, kernel_id: str, code: str, timeout: float) -> bool:
    """Run ``code`` with no history or outputs (set-up, warm-up); whether it succeeded."""
    run = await kernels.execute(kernel_id, code, silent=True, store_history=False)
    try:
        reply = await run.reply(timeout)
    finally:
        run.close()
    return reply is not None and reply.content.get("status") == "ok"


def died_output(reason: str) -> dict[str, Any]:
    """The same, as an nbformat output (a cell whose request never reached the kernel)."""
    return {"output_type": "error", **died(reason)}


def died(reason: str) -> dict[str, Any]:
    """The error output of a cell whose kernel went away under it."""
    return {
        "ename": "KernelDied",
        "evalue": reason,
        "traceback": [
            f"KernelDied: {reason}; the next cell starts a new kernel, its state rebuilt by "
            "replaying the notebook (without this cell)"
        ],
    }
