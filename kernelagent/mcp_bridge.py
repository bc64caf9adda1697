"""``kernelagent mcp``: an MCP client that speaks stdio (Claude Desktop, Cursor, an IDE) reaches a
running server's ``/mcp``, as the user whose token it is given.

A transparent bridge: every JSON-RPC message from stdin goes to the server over Streamable HTTP
and every answer comes back on stdout, unchanged (the tools, their errors and the resources are
the server's). It ends when either side closes.
"""

from __future__ import annotations

import logging

import anyio
import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 300.0  # a tool may wait on a cell for up to 2 minutes


async def bridge(url: str, token: str) -> int:
    """Pipe stdio to ``url`` (the server's ``/mcp``) until either side closes."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx2.Timeout(CONNECT_TIMEOUT, read=READ_TIMEOUT)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        streamable_http_client(url, http_client=http) as (remote_read, remote_write),
        stdio_server() as (local_read, local_write),
        anyio.create_task_group() as pipes,
    ):

        async def pipe(source, target) -> None:
            async for item in source:
                if isinstance(item, Exception):
                    log.warning("skipped a message that could not be read: %s", item)
                    continue
                await target.send(SessionMessage(item.message))
            pipes.cancel_scope.cancel()  # one side closed: so does the bridge

        pipes.start_soon(pipe, local_read, remote_write)
        pipes.start_soon(pipe, remote_read, local_write)
    return 0
