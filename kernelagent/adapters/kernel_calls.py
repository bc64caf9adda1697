"""KernelCalls: functions of a kernel-side module called through the kernel's own protocol.

Each call is a silent, history-less execute request whose ``user_expressions`` call the
function: nothing is recorded as a cell, no name is bound in the user's namespace, and it works
the same for a local kernel and for one on a gateway. A call may carry a binary buffer up (the
request's own) and get binary buffers back (``comm_msg`` messages on iopub, parented to the
request, of a comm no frontend has). A few calls are kept in flight: the kernel takes them one
after another from its shell channel while the next travels.

Example::

    calls = KernelCalls(kernels.execute, "kernelagent.kernelside.files", timeout=60)
    listing = await calls.call(kernel_id, "listing", "/workspace")
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kernelagent.adapters.kernel_runs import Run
from kernelagent.domain import KernelMessage
from kernelagent.errors import KernelAgentError, KernelDied

WINDOW = 4  # requests in flight (through Enterprise Gateway, one at a time moved ~30 MB/s)

Execute = Callable[..., Awaitable[Any]]  # a backend's execute: returns a Run
Call = tuple[str, tuple[Any, ...], bytes | list[bytes] | None]  # function, arguments, buffers
Answer = Callable[[str, Run], Awaitable[Any]]  # a call's answer from its run


class KernelCalls:
    """Calls of ``module``'s functions in a kernel; errors raised there come back as the
    ``errors`` mapping says (by exception name), else as ``KernelAgentError``."""

    def __init__(
        self,
        execute: Execute,
        module: str,
        timeout: float = 60.0,
        window: int = WINDOW,
        errors: Mapping[str, type[KernelAgentError]] | None = None,
    ):
        self.execute = execute
        self.module = f"__import__({module!r}, fromlist=['_'])"
        self.timeout = timeout
        self.window = window
        self.errors = dict(errors or {})

    async def call(self, kernel_id: str, function: str, *args: Any) -> str:
        """``function(*args)`` in the kernel; its value's ``text/plain``."""
        run = await self.send(kernel_id, function, args)
        try:
            return await self.value(run)
        finally:
            run.close()

    async def calls(self, kernel_id: str, calls: list[Call], answer: Answer) -> list[Any]:
        """The answers to ``calls``, in order, with up to ``window`` requests in flight;
        ``answer(function, run)`` reads each (``value`` and, if need be, ``received``)."""
        answers: list[Any] = []
        pending: deque[tuple[str, Run]] = deque()
        try:
            for function, args, buffer in calls:
                pending.append((function, await self.send(kernel_id, function, args, buffer)))
                if len(pending) >= self.window:
                    function, run = pending.popleft()
                    try:
                        answers.append(await answer(function, run))
                    finally:
                        run.close()
            while pending:
                function, run = pending.popleft()
                try:
                    answers.append(await answer(function, run))
                finally:
                    run.close()
        finally:
            for _, run in pending:
                run.close()
        return answers

    async def send(
        self,
        kernel_id: str,
        function: str,
        args: tuple[Any, ...],
        buffer: bytes | list[bytes] | None = None,
    ) -> Run:
        """The request for ``function(*args)``, in flight; the caller closes its run."""
        expression = f"{self.module}.{function}({', '.join(map(repr, args))})"
        return await self.execute(
            kernel_id,
            "",
            silent=True,
            store_history=False,
            user_expressions={"v": expression},
            buffers=[buffer] if isinstance(buffer, bytes) else buffer,
        )

    async def value(self, run: Run, timeout: float | None = None) -> str:
        """The value of a call in flight (its ``text/plain``), or the error it raised."""
        timeout = self.timeout if timeout is None else timeout
        reply = await run.reply(timeout)
        if reply is None:
            raise KernelDied(f"the kernel did not answer a request within {timeout:g} s")
        value = reply.content.get("user_expressions", {}).get("v", {})
        if reply.content.get("status") == "aborted":
            raise KernelAgentError("the kernel aborted the request (a cell before it failed)")
        if value.get("status") != "ok":
            ename, evalue = value.get("ename", "Error"), value.get("evalue", "")
            if ename == "ModuleNotFoundError":
                raise KernelAgentError(
                    "the kernel lacks kernelagent's kernel-side package (kernelagent.kernelside)"
                )
            raise self.errors.get(ename, KernelAgentError)(f"{ename}: {evalue}")
        return str(value.get("data", {}).get("text/plain", ""))

    async def received(self, run: Run, comm: str) -> list[KernelMessage]:
        """The ``comm_msg`` messages of comm ``comm`` that the call put on iopub: all of them
        come before the request's ``idle`` status."""
        found = []
        while (msg := await run.next(self.timeout)) is not None:
            if msg.msg_type == "comm_msg" and msg.content.get("comm_id") == comm:
                found.append(msg)
            elif msg.msg_type == "status" and msg.content.get("execution_state") == "idle":
                return found
        raise KernelDied(f"the kernel did not send its answer within {self.timeout:g} s")
