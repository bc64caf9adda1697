"""What the benchmark scripts share: sample summaries, the raw ``1+1`` round trip on a kernel
set up as the server sets up its own, and an HTTP client that keeps its connection open."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from jupyter_client import AsyncKernelClient, AsyncKernelManager
from traitlets.config import Config

from kernelagent.adapters.kernels import PACKAGE_DIR
from kernelagent.kernelside import LOAD_CODE


def summary(samples: list[float]) -> dict[str, float]:
    """n, p50, p95 and min of samples in seconds, reported in milliseconds."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(p95 * 1000, 2),
        "min_ms": round(ordered[0] * 1000, 2),
    }


def sandboxed_kernel() -> AsyncKernelManager:
    """A manager of the sandboxed ``kernelagent-python3`` whose kernel sees kernelagent's
    kernel-side package, as the server's kernels do (a source checkout is outside the Python
    environment the sandbox binds)."""
    config = Config({"BubblewrapProvisioner": {"ro_binds": [str(PACKAGE_DIR)]}})
    return AsyncKernelManager(kernel_name="kernelagent-python3", config=config)


async def as_the_server_sets_it_up(client: AsyncKernelClient) -> None:
    """Load kernelagent's kernel-side extension, as the server does in each of its kernels: a
    raw round trip on it is on the very kernel the server drives, so the ratio is the server's."""
    msg_id = client.execute(LOAD_CODE, silent=True, store_history=False)
    while (reply := await client.get_shell_msg(timeout=60))["parent_header"]["msg_id"] != msg_id:
        pass
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"the kernel did not load kernelagent's extension: {reply['content']}")


async def one_plus_one(client: AsyncKernelClient) -> float:
    """Seconds from ``execute_request("1+1")`` to its ``status: idle`` on iopub."""
    started = time.perf_counter()
    msg_id = client.execute("1+1")
    while True:
        msg = await client.get_iopub_msg(timeout=10)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            return time.perf_counter() - started


class HttpError(Exception):
    pass


class Client:
    """A minimal HTTP/1.1 JSON client that keeps its connection open between requests.

    (tornado's ``SimpleAsyncHTTPClient`` opens a new connection per request.)
    """

    def __init__(self, port: int, token: str):
        self.port = port
        self.token = token
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def call(
        self, method: str, path: str, body: Any = None, expect: int = 200, timeout: float = 60
    ) -> Any:
        try:
            async with asyncio.timeout(timeout):
                status, data = await self._exchange(method, path, body)
        except BaseException:
            self.close()  # a half-read answer would poison the next request
            raise
        if status != expect:
            raise HttpError(f"{method} {path}: {status} (expected {expect}): {data[:500]!r}")
        return json.loads(data) if data else None

    async def run_cell(self, session_id: str, code: str = "1+1") -> dict[str, Any]:
        """kernelagent's ``POST …/cells``: the answer (the cell, recorded, with its outputs);
        an answer to ``1+1`` that is not ``2`` is an error."""
        answer = await self.call("POST", f"/api/v1/sessions/{session_id}/cells", {"code": code})
        outputs = answer["cell"].get("outputs") or [{}]
        if code == "1+1" and outputs[0].get("data", {}).get("text/plain") != "2":
            raise HttpError(f"unexpected answer to 1+1: {answer['cell']}")
        return answer  # type: ignore[no-any-return]

    async def _exchange(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        payload = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: token {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        status_line = await reader.readline()
        if not status_line:
            raise HttpError("connection closed by the server")
        status = int(status_line.split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while size := int((await reader.readline()).split(b";")[0], 16):
                data += await reader.readexactly(size + 2)
                data = data[:-2]
            await reader.readline()
        else:
            data = await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, data

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
