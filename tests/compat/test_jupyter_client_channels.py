"""Jupyter's own kernel client, talking to a session kernel over kernelagent's channels WebSocket.

``jupyter_server.gateway.managers.GatewayKernelClient`` (jupyter_client's ``AsyncKernelClient``
with its channels carried over a Kernel Gateway WebSocket), configured through the
``GatewayClient`` singleton, drives the Jupyter messaging protocol through kernelagent with the
client's own methods: kernel_info, complete, inspect, history, is_complete, comm_info, a comm the
client opens (as ipywidgets' frontend does) with messages passing untouched both ways, and the
stdin round trip of ``input()``. The executions are in the session's notebook with role
``gateway``. Two gaps of the client itself (no auth header, no ``channel`` on sent messages) are
filled in the test; see there.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from typing import Any

import nbformat
import pytest
import websocket
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import ChannelQueue, GatewayKernelClient

pytestmark = pytest.mark.sandbox

TIMEOUT = 30  # seconds any one reply may take
# The first completion in a fresh kernel warms up jedi with an empty cache (the sandbox's $HOME is
# a fresh tmpfs): 8-10 s on a 2-core machine, as for a plain ipykernel with an empty ~/.cache.
FIRST_COMPLETE_TIMEOUT = 90

REGISTER_ECHO_TARGET = """\
import comm

def _ka_echo_target(c, open_msg):
    @c.on_msg
    def _echo(msg):
        c.send({"echo": msg["content"]["data"]})

    c.send({"opened": open_msg["content"]["data"]})

comm.get_comm_manager().register_target("ka_echo", _ka_echo_target)"""


@pytest.fixture
def gateway_client(ka_server):
    """The ``GatewayClient`` singleton pointed at ``ka_server``, cleared afterwards."""
    GatewayClient.clear_instance()
    client = GatewayClient.instance(
        url=ka_server.base,
        ws_url=f"ws://127.0.0.1:{ka_server.port}",
        kernels_endpoint="/api/kernels",
        auth_scheme="token",
        auth_token=ka_server.token,
    )
    try:
        yield client
    finally:
        GatewayClient.clear_instance()


async def iopub_until(client: GatewayKernelClient, predicate) -> dict[str, Any]:
    """The first iopub message that matches ``predicate`` (others are skipped)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            msg = await client.get_iopub_msg(timeout=TIMEOUT)
            if predicate(msg):
                return msg


def child_of(msg_id: str, msg_type: str):
    return lambda m: m["msg_type"] == msg_type and m["parent_header"].get("msg_id") == msg_id


def idle(msg: dict[str, Any]) -> bool:
    return msg["content"].get("execution_state") == "idle"


async def execute_ok(client: GatewayKernelClient, code: str, **kw: Any) -> dict[str, Any]:
    reply = await client.execute(code, reply=True, timeout=TIMEOUT, **kw)
    assert reply["content"]["status"] == "ok", reply["content"]
    return reply


async def drive(kernel_id: str) -> None:
    """Everything a Jupyter client does, through the client's own methods (runs in a thread:
    ``start_channels`` opens its WebSocket with the blocking websocket-client library)."""
    client = GatewayKernelClient(kernel_id=kernel_id)
    await client.start_channels()
    try:
        # kernel_info
        info = await client.kernel_info(reply=True, timeout=TIMEOUT)
        assert info["msg_type"] == "kernel_info_reply"
        assert info["content"]["status"] == "ok"
        assert info["content"]["protocol_version"].startswith("5.")
        assert info["content"]["language_info"]["name"] == "python"

        # a few cells for the later requests to look at
        await execute_ok(client, "import os\nka_answer = 6 * 7")
        await execute_ok(
            client, 'def ka_greet(name):\n    """Say hello to name."""\n    return f"hi {name}"'
        )

        # complete: the variable the kernel now holds, and a module attribute
        for code, expected in [("ka_ans", "ka_answer"), ("os.pa", "os.path")]:
            reply = await client.complete(code, reply=True, timeout=FIRST_COMPLETE_TIMEOUT)
            content = reply["content"]
            assert content["status"] == "ok", content
            start, end = content["cursor_start"], content["cursor_end"]
            completed = [code[:start] + m + code[end:] for m in content["matches"]]
            assert any(c.endswith(expected) for c in completed), (code, content)

        # inspect
        reply = await client.inspect("ka_greet", reply=True, timeout=TIMEOUT)
        content = reply["content"]
        assert content["status"] == "ok" and content["found"] is True, content
        assert "ka_greet" in content["data"]["text/plain"]
        assert "Say hello to name." in content["data"]["text/plain"]

        # history: the cells just run are the kernel's latest
        reply = await client.history(
            hist_access_type="tail", n=10, raw=True, output=False, reply=True, timeout=TIMEOUT
        )
        content = reply["content"]
        assert content["status"] == "ok", content
        inputs = [entry[2] for entry in content["history"]]
        assert "import os\nka_answer = 6 * 7" in inputs, inputs
        assert any(i.startswith("def ka_greet(name):") for i in inputs), inputs

        # is_complete
        for code, status in [
            ("for i in range(3):", "incomplete"),
            ("x = 1", "complete"),
            ("1 +* 2", "invalid"),
        ]:
            reply = await client.is_complete(code, reply=True, timeout=TIMEOUT)
            assert reply["content"]["status"] == status, (code, reply["content"])
            if status == "incomplete":
                assert reply["content"]["indent"] == "    "

        # comms: the kernel registers a target, the client opens a comm to it and talks
        reply = await client.comm_info(reply=True, timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok", reply["content"]
        await execute_ok(client, REGISTER_ECHO_TARGET)
        comm_id = uuid.uuid4().hex
        open_msg = client.session.msg(
            "comm_open",
            {"comm_id": comm_id, "target_name": "ka_echo", "data": {"hello": ["ipywidgets", 1]}},
        )
        client.shell_channel.send(open_msg)
        opened = await iopub_until(
            client, lambda m: m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id
        )
        assert opened["parent_header"]["msg_id"] == open_msg["header"]["msg_id"]
        assert opened["content"]["data"] == {"opened": {"hello": ["ipywidgets", 1]}}

        reply = await client.comm_info(target_name="ka_echo", reply=True, timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert reply["content"]["comms"] == {comm_id: {"target_name": "ka_echo"}}

        payload = {"value": 3.5, "nested": {"list": [1, "two", None, True]}, "text": "é ✓"}
        msg = client.session.msg("comm_msg", {"comm_id": comm_id, "data": payload})
        client.shell_channel.send(msg)
        echoed = await iopub_until(client, child_of(msg["header"]["msg_id"], "comm_msg"))
        assert echoed["content"] == {"comm_id": comm_id, "data": {"echo": payload}}

        client.shell_channel.send(
            client.session.msg("comm_close", {"comm_id": comm_id, "data": {}})
        )
        async with asyncio.timeout(TIMEOUT):
            while True:
                reply = await client.comm_info(target_name="ka_echo", reply=True, timeout=TIMEOUT)
                if not reply["content"]["comms"]:
                    break
                await asyncio.sleep(0.1)

        # stdin: input() in the kernel asks this client, which answers with client.input()
        execution = asyncio.create_task(
            client.execute(
                'ka_name = input("name? ")', allow_stdin=True, reply=True, timeout=TIMEOUT
            )
        )
        request = await client.get_stdin_msg(timeout=TIMEOUT)
        assert request["msg_type"] == "input_request"
        assert request["content"] == {"prompt": "name? ", "password": False}
        client.input("Ada")
        reply = await execution
        assert reply["content"]["status"] == "ok", reply["content"]
        assert request["parent_header"]["msg_id"] == reply["parent_header"]["msg_id"]

        reply = await execute_ok(client, "ka_name")
        msg_id = reply["parent_header"]["msg_id"]
        result = await iopub_until(client, child_of(msg_id, "execute_result"))
        assert result["content"]["data"]["text/plain"] == "'Ada'"
        await iopub_until(client, lambda m: child_of(msg_id, "status")(m) and idle(m))
    finally:
        client.stop_channels()


async def test_jupyter_kernel_client_over_the_channels_websocket(
    ka_server, gateway_client, monkeypatch
):
    kernel = await ka_server.json("/api/kernels", "POST", {})
    kid = kernel["id"]

    # a client with a wrong token is refused
    gateway_client.auth_token = "not-a-token"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        await asyncio.to_thread(asyncio.run, GatewayKernelClient(kernel_id=kid).start_channels())
    assert refused.value.status_code == 401
    gateway_client.auth_token = ka_server.token

    # Two gaps of GatewayKernelClient itself (jupyter_server 2.21), filled here the way the client
    # would have to: (1) start_channels opens its WebSocket with only the URL and TLS options, not
    # GatewayClient's auth header; (2) ChannelQueue.send writes the message without its
    # "channel", so a gateway (jupyter_server's or kernelagent's) takes every message for shell,
    # and client.input()'s input_reply never reaches stdin. Both are defaults: once the client
    # sends them itself, its own values win.
    monkeypatch.setattr(
        websocket,
        "create_connection",
        functools.partial(
            websocket.create_connection,
            header=[
                f"{gateway_client.auth_header_key}: "
                f"{gateway_client.auth_scheme} {gateway_client.auth_token}"
            ],
        ),
    )
    send = ChannelQueue.send
    monkeypatch.setattr(
        ChannelQueue, "send", lambda queue, msg: send(queue, {"channel": queue.channel_name, **msg})
    )

    await asyncio.to_thread(asyncio.run, drive(kid))

    # every execution went through kernelagent's execution path into the session's notebook
    response = await ka_server.fetch(f"/api/v1/sessions/{kid}/notebook")
    assert response.code == 200, response.body
    notebook = json.loads(response.body)
    nbformat.validate(nbformat.from_dict(notebook))
    cells = [
        ("".join(c["source"]), c["metadata"]["kernelagent"]["role"])
        for c in notebook["cells"]
        if c["cell_type"] == "code"
    ]
    assert [source for source, role in cells if role == "gateway"] == [
        "import os\nka_answer = 6 * 7",
        'def ka_greet(name):\n    """Say hello to name."""\n    return f"hi {name}"',
        REGISTER_ECHO_TARGET,
        'ka_name = input("name? ")',
        "ka_name",
    ], cells
    assert all(role == "gateway" for _, role in cells), cells
    by_source = {"".join(c["source"]): c for c in notebook["cells"]}
    (result,) = by_source["ka_name"]["outputs"]
    assert "".join(result["data"]["text/plain"]) == "'Ada'"
