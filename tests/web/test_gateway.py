"""The Kernel Gateway surface: REST shapes, and Jupyter messages over the channels WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid

import pytest
from jupyter_client.session import Session
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClosedError, websocket_connect

from kernelagent.web.gateway import wire

pytestmark = pytest.mark.sandbox
WebSocketClosedOrRefused = (HTTPClientError, ConnectionError)

V1 = "v1.kernel.websocket.jupyter.org"


class WsClient:
    """A minimal Jupyter WebSocket client (legacy JSON framing, or the v1 binary subprotocol)."""

    def __init__(self, conn, protocol: str | None):
        self.conn = conn
        self.protocol = protocol
        self.session = Session(key=b"", username="tester")

    @classmethod
    async def connect(cls, server, kernel_id, token=None, protocol=None, session_id=None):
        url = (
            f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels"
            f"?token={token or server.token}"
        )
        if session_id:
            url += f"&session_id={session_id}"
        conn = await websocket_connect(url, subprotocols=[protocol] if protocol else None)
        return cls(conn, conn.selected_subprotocol)

    async def send(self, channel: str, msg_type: str, content: dict) -> str:
        msg = self.session.msg(msg_type, content)
        out = json.loads(json.dumps(msg, default=str))
        out["channel"] = channel
        if self.protocol:
            await self.conn.write_message(wire.msg_to_v1(out, []), binary=True)
        else:
            await self.conn.write_message(json.dumps(out))
        return msg["header"]["msg_id"]

    async def recv(self, timeout: float = 30) -> dict:
        frame = await asyncio.wait_for(self.conn.read_message(), timeout)
        assert frame is not None, "connection closed"
        if self.protocol:
            assert isinstance(frame, bytes)
            return wire.v1_to_msg(frame)
        return wire.decode_legacy(frame)

    async def until(self, predicate, timeout: float = 30) -> list[dict]:
        """Messages received until one matches ``predicate`` (inclusive)."""
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.recv(timeout)
                seen.append(msg)
                if predicate(msg):
                    return seen

    async def execute(self, code: str, **content) -> tuple[list[dict], dict]:
        """iopub messages of the request until idle, and its execute_reply."""
        msg_id = await self.send(
            "shell", "execute_request", {"code": code, "silent": False, **content}
        )
        messages = await self.until(
            lambda m: m["channel"] == "shell" and m["parent_header"].get("msg_id") == msg_id
        )
        reply = messages[-1]
        iopub = [
            m
            for m in messages
            if m["channel"] == "iopub" and m["parent_header"].get("msg_id") == msg_id
        ]
        if not any(
            m["msg_type"] == "status" and m["content"]["execution_state"] == "idle" for m in iopub
        ):
            iopub += await self.until(
                lambda m: (
                    m["msg_type"] == "status"
                    and m["parent_header"].get("msg_id") == msg_id
                    and m["content"]["execution_state"] == "idle"
                )
            )
        return iopub, reply

    def close(self):
        self.conn.close()


async def test_rest_shapes(ka_server):
    api = await ka_server.fetch("/api", token=None)
    assert api.code == 200 and "version" in json.loads(api.body)

    specs = await ka_server.json("/api/kernelspecs")
    name = specs["default"]
    assert name in specs["kernelspecs"]
    spec = specs["kernelspecs"][name]
    assert spec["name"] == name and spec["spec"]["language"] == "python"
    assert (await ka_server.json(f"/api/kernelspecs/{name}"))["spec"]["display_name"]
    assert (await ka_server.fetch("/api/kernelspecs/nope")).code == 404

    created = await ka_server.fetch("/api/kernels", "POST", {"name": name})
    assert created.code == 201
    model = json.loads(created.body)
    assert created.headers["Location"] == f"/api/kernels/{model['id']}"
    assert set(model) == {"id", "name", "last_activity", "execution_state", "connections"}
    assert uuid.UUID(model["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", model["last_activity"])
    assert model["execution_state"] in {"starting", "idle", "busy", "restarting", "dead"}
    assert isinstance(model["connections"], int)

    # the kernel is a session of its creator, visible in the REST API of sessions too
    sessions = await ka_server.json("/api/v1/sessions")
    assert model["id"] in [s["id"] for s in sessions["sessions"]]
    listed = await ka_server.json("/api/kernels")
    assert [k["id"] for k in listed] == [model["id"]]

    other = await ka_server.new_user("eve")
    assert await ka_server.json("/api/kernels", token=other) == []
    for method, path in [
        ("GET", f"/api/kernels/{model['id']}"),
        ("DELETE", f"/api/kernels/{model['id']}"),
        ("POST", f"/api/kernels/{model['id']}/interrupt"),
        ("POST", f"/api/kernels/{model['id']}/restart"),
        ("GET", f"/api/kernels/{uuid.uuid4()}"),
    ]:
        response = await ka_server.fetch(path, method, token=other)
        assert response.code == 404, (method, path)
        assert set(json.loads(response.body)) == {"message", "reason"}

    assert (await ka_server.fetch(f"/api/kernels/{model['id']}/interrupt", "POST")).code == 204
    # one id for the session's kernel, whichever API shows it
    session = await ka_server.json(f"/api/v1/sessions/{model['id']}")
    assert session["kernel_id"] == model["id"]
    assert (await ka_server.fetch(f"/api/kernels/{model['id']}", "DELETE")).code == 204
    # Kernel Gateway's semantics: the kernel is gone (404, unlisted, a second DELETE is 404)…
    assert (await ka_server.fetch(f"/api/kernels/{model['id']}")).code == 404
    assert await ka_server.json("/api/kernels") == []
    assert (await ka_server.fetch(f"/api/kernels/{model['id']}", "DELETE")).code == 404
    assert (await ka_server.fetch(f"/api/kernels/{model['id']}/restart", "POST")).code == 404
    assert (await ka_server.json(f"/api/v1/sessions/{model['id']}"))["kernel_id"] is None
    # …while the session stays, and its next cell brings the kernel back under the same id
    cell = await ka_server.run(model["id"], "6 * 7")
    assert cell["cell"]["outputs"][0]["data"]["text/plain"] == "42"
    assert [k["id"] for k in await ka_server.json("/api/kernels")] == [model["id"]]
    assert (await ka_server.json(f"/api/kernels/{model['id']}"))["execution_state"] == "idle"
    assert (await ka_server.json(f"/api/v1/sessions/{model['id']}"))["kernel_id"] == model["id"]


@pytest.mark.parametrize("protocol", [None, V1])
async def test_execute_over_the_websocket_is_recorded(ka_server, protocol):
    kernel = await ka_server.json("/api/kernels", "POST", {})
    ws = await WsClient.connect(ka_server, kernel["id"], protocol=protocol)
    assert ws.protocol == protocol
    try:
        info_id = await ws.send("shell", "kernel_info_request", {})
        info = (await ws.until(lambda m: m["msg_type"] == "kernel_info_reply"))[-1]
        assert info["parent_header"]["msg_id"] == info_id
        assert info["content"]["protocol_version"].startswith("5.")

        iopub, reply = await ws.execute("print('hi')\n6 * 7")
        assert reply["msg_type"] == "execute_reply" and reply["content"]["status"] == "ok"
        kinds = [m["msg_type"] for m in iopub]
        assert "stream" in kinds and "execute_result" in kinds
        result = next(m for m in iopub if m["msg_type"] == "execute_result")
        assert result["content"]["data"]["text/plain"] == "42"

        iopub, reply = await ws.execute("1/0")
        assert reply["content"]["status"] == "error"
        assert any(m["msg_type"] == "error" for m in iopub)
    finally:
        ws.close()
    cells = await ka_server.services.db.cells.list(kernel["id"])
    assert [(c.role, c.source, c.status) for c in cells] == [
        ("gateway", "print('hi')\n6 * 7", "ok"),
        ("gateway", "1/0", "error"),
    ]


async def test_the_reply_comes_once_the_cell_is_durable_before_its_files_are_mirrored(
    ka_server, monkeypatch
):
    """The reply waits for the cell's record, not for what follows it (artifacts, mirroring):
    the next cell still waits for all of it."""
    kernel = await ka_server.json("/api/kernels", "POST", {})
    ws = await WsClient.connect(ka_server, kernel["id"])
    files = ka_server.services.execution.files
    mirror, release, mirroring = files.mirror, asyncio.Event(), asyncio.Event()

    async def held_mirror(session):
        mirroring.set()
        await release.wait()
        return await mirror(session)

    monkeypatch.setattr(files, "mirror", held_mirror)
    try:
        _, reply = await ws.execute("open('made.txt', 'w').write('x')")
        assert reply["content"]["status"] == "ok"
        assert mirroring.is_set() and not release.is_set()  # the files are not mirrored yet
        cells = await ka_server.services.db.cells.list(kernel["id"])
        assert [(c.status, c.outputs[0]["data"]["text/plain"]) for c in cells] == [("ok", "1")]

        second = asyncio.create_task(ws.execute("'next'"))
        await asyncio.sleep(0.3)
        assert not second.done()  # queued behind the first cell's mirroring
        release.set()
        _, reply = await second
        assert reply["content"]["status"] == "ok"
    finally:
        release.set()
        ws.close()
    cells = await ka_server.services.db.cells.list(kernel["id"])
    assert "snapshot" in cells[0].metadata  # the files were mirrored after the reply


async def test_two_clients_share_iopub_and_replies_go_to_the_asker(ka_server):
    kernel = await ka_server.json("/api/kernels", "POST", {})
    alice = await WsClient.connect(ka_server, kernel["id"])
    bob = await WsClient.connect(ka_server, kernel["id"])
    try:
        assert (await ka_server.json(f"/api/kernels/{kernel['id']}"))["connections"] == 2
        _, reply = await alice.execute("'shared'")
        msg_id = reply["parent_header"]["msg_id"]
        seen_by_bob = await bob.until(
            lambda m: (
                m["msg_type"] == "execute_result" and m["parent_header"].get("msg_id") == msg_id
            )
        )
        assert seen_by_bob[-1]["content"]["data"]["text/plain"] == "'shared'"
        # bob never gets alice's reply: his next shell message is his own
        bob_id = await bob.send("shell", "kernel_info_request", {})
        shell = [
            m for m in await bob.until(lambda m: m["channel"] == "shell") if m["channel"] == "shell"
        ]
        assert shell[0]["parent_header"]["msg_id"] == bob_id
    finally:
        alice.close()
        bob.close()


async def test_stdin_reaches_the_client_that_asked(ka_server):
    kernel = await ka_server.json("/api/kernels", "POST", {})
    ws = await WsClient.connect(ka_server, kernel["id"])
    try:
        msg_id = await ws.send(
            "shell",
            "execute_request",
            {"code": "name = input('who? ')\nname.upper()", "allow_stdin": True},
        )
        request = (await ws.until(lambda m: m["msg_type"] == "input_request"))[-1]
        assert request["channel"] == "stdin"
        assert request["content"]["prompt"] == "who? "
        await ws.send("stdin", "input_reply", {"value": "ada"})
        result = (
            await ws.until(
                lambda m: (
                    m["msg_type"] == "execute_result" and m["parent_header"].get("msg_id") == msg_id
                )
            )
        )[-1]
        assert result["content"]["data"]["text/plain"] == "'ADA'"
    finally:
        ws.close()


async def test_malformed_frames_are_dropped_and_the_connection_survives(ka_server):
    kernel = await ka_server.json("/api/kernels", "POST", {})
    ws = await WsClient.connect(ka_server, kernel["id"])
    try:
        await ws.conn.write_message("{not json")
        await ws.conn.write_message(json.dumps({"channel": "nope", "header": {}}))
        await ws.conn.write_message(b"\x00\x01", binary=True)
        _, reply = await ws.execute("'still here'")
        assert reply["content"]["status"] == "ok"
    finally:
        ws.close()


async def test_oversized_and_out_of_order_frames_harm_neither_kernel_nor_other_clients(
    ka_server,
):
    kernel = await ka_server.json("/api/kernels", "POST", {})
    hostile = await WsClient.connect(ka_server, kernel["id"])
    other = await WsClient.connect(ka_server, kernel["id"])
    try:
        _, reply = await other.execute("kept = 'still here'")
        # replies, answers nobody asked for, a comm that does not exist, a client on iopub
        for channel, msg_type, content in [
            ("shell", "execute_reply", {"status": "ok", "execution_count": 1}),
            ("stdin", "input_reply", {"value": "unasked"}),
            ("shell", "comm_msg", {"comm_id": "no-such-comm", "data": {}}),
            ("iopub", "stream", {"name": "stdout", "text": "forged"}),
            ("shell", "complete_request", {"code": "ke", "cursor_pos": 99999}),
        ]:
            await hostile.send(channel, msg_type, content)
        _, reply = await hostile.execute("kept")
        assert reply["content"]["status"] == "ok"
        too_big = json.dumps({"channel": "shell", "content": "x" * (11 * 1024 * 1024)})
        with contextlib.suppress(WebSocketClosedError):
            await hostile.conn.write_message(too_big)
        async with asyncio.timeout(30):  # that client is cut off (1009), no one else
            while await hostile.conn.read_message() is not None:
                pass
        iopub, reply = await other.execute("kept")
        assert reply["content"]["status"] == "ok"
        result = next(m for m in iopub if m["msg_type"] == "execute_result")
        assert result["content"]["data"]["text/plain"] == "'still here'"
        assert not any(
            m["msg_type"] == "stream" and "forged" in m["content"].get("text", "") for m in iopub
        )
    finally:
        hostile.close()
        other.close()


async def test_clients_that_connect_and_leave_at_once_leave_no_channel_open(ka_server):
    kernel = await ka_server.json("/api/kernels", "POST", {})
    for _ in range(10):  # closed as soon as open (or, abruptly, while it connects)
        (await WsClient.connect(ka_server, kernel["id"])).close()
    gateway = ka_server.services.gateway
    async with asyncio.timeout(15):
        while gateway.channels or gateway._closing:
            await asyncio.sleep(0.05)
        while (await ka_server.json(f"/api/kernels/{kernel['id']}"))["connections"]:
            await asyncio.sleep(0.05)
    ws = await WsClient.connect(ka_server, kernel["id"])  # and the kernel still serves
    try:
        _, reply = await ws.execute("'fine'")
        assert reply["content"]["status"] == "ok"
    finally:
        ws.close()


async def test_restart_keeps_the_socket_and_is_recorded(ka_server):
    kernel = await ka_server.json("/api/kernels", "POST", {})
    ws = await WsClient.connect(ka_server, kernel["id"])
    try:
        await ws.execute("x = 1")
        restarted = await ka_server.fetch(f"/api/kernels/{kernel['id']}/restart", "POST")
        assert restarted.code == 200
        statuses = await ws.until(
            lambda m: m["msg_type"] == "status" and m["content"]["execution_state"] == "restarting"
        )
        assert statuses
        iopub, _ = await ws.execute("'x' in dir()")
        result = next(m for m in iopub if m["msg_type"] == "execute_result")
        assert result["content"]["data"]["text/plain"] == "False"
    finally:
        ws.close()
    cells = await ka_server.services.db.cells.list(kernel["id"])
    assert [c.role for c in cells] == ["gateway", "system", "gateway"]
    assert "restarted" in cells[1].source


async def test_websocket_needs_a_token_and_the_owner(ka_server):
    kernel = await ka_server.json("/api/kernels", "POST", {})
    other = await ka_server.new_user("trudy")
    with pytest.raises(Exception, match="404"):
        await WsClient.connect(ka_server, kernel["id"], token=other)
    with pytest.raises(Exception, match="401"):
        await WsClient.connect(ka_server, kernel["id"], token="bad")


async def test_a_client_that_reconnects_gets_what_it_missed(ka_server):
    kernel = await ka_server.json("/api/kernels", "POST", {})
    client_id = uuid.uuid4().hex
    ws = await WsClient.connect(ka_server, kernel["id"], session_id=client_id)
    code = "import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.2)\n'done'"
    msg_id = await ws.send("shell", "execute_request", {"code": code, "silent": False})
    await ws.until(lambda m: m["msg_type"] == "stream")  # running; then the network drops
    ws.close()
    stranger = await WsClient.connect(ka_server, kernel["id"], session_id=uuid.uuid4().hex)
    await asyncio.sleep(1.2)  # the cell finishes while the client is away

    back = await WsClient.connect(ka_server, kernel["id"], session_id=client_id)
    try:
        seen = await back.until(
            lambda m: m["channel"] == "shell" and m["parent_header"].get("msg_id") == msg_id
        )
        mine = [m for m in seen if m["parent_header"].get("msg_id") == msg_id]
        printed = "".join(m["content"]["text"] for m in mine if m["msg_type"] == "stream")
        assert printed.endswith("3\n") and "1\n2\n" in printed
        assert [
            m["content"]["data"]["text/plain"] for m in mine if m["msg_type"] == "execute_result"
        ] == ["'done'"]
        assert mine[-1]["msg_type"] == "execute_reply"
        ids = [m["msg_id"] for m in mine]
        assert len(ids) == len(set(ids)), "a message was replayed twice"
        # and nothing of it arrives again from the live stream
        _, reply = await back.execute("'after'")
        assert reply["content"]["status"] == "ok"
    finally:
        back.close()
    # a client the server did not know before gets the live stream only, no history
    texts = []
    with contextlib.suppress(TimeoutError):
        while True:
            m = await stranger.recv(timeout=0.5)
            if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == msg_id:
                texts.append(m["content"]["text"])
    stranger.close()
    assert texts and "0\n" not in texts
    cells = await ka_server.services.db.cells.list(kernel["id"])
    assert (cells[0].source, cells[0].status) == (code, "ok")


async def test_deleting_a_kernel_keeps_the_session_and_its_state_comes_back(ka_server):
    kernel = await ka_server.json("/api/kernels", "POST", {})
    await ka_server.run(kernel["id"], "kept = 'still here'")
    process = (await ka_server.services.db.sessions.get(kernel["id"])).kernel_id
    assert (await ka_server.fetch(f"/api/kernels/{kernel['id']}", "DELETE")).code == 204
    assert not await ka_server.services.kernels.is_alive(process)  # no kernel left running
    with pytest.raises(WebSocketClosedOrRefused):  # a client cannot attach to a deleted kernel
        await WsClient.connect(ka_server, kernel["id"])
    # the session's next cell brings its kernel back, its state restored
    assert (await ka_server.run(kernel["id"], "1 + 1"))["cell"]["outputs"]
    ws = await WsClient.connect(ka_server, kernel["id"])
    try:
        iopub, _ = await ws.execute("kept")
        result = next(m for m in iopub if m["msg_type"] == "execute_result")
        assert result["content"]["data"]["text/plain"] == "'still here'"
    finally:
        ws.close()
    notes = [c.source for c in await ka_server.services.db.cells.list(kernel["id"])]
    assert any("shut down" in n for n in notes) and any("state restored" in n for n in notes)


async def test_each_session_is_a_kernelspec_that_attaches_to_its_kernel(ka_server):
    """What JupyterLab's kernel picker shows: "Agent: <title>" per live session; starting it
    attaches to the session's own kernel, so a person sees the agent's variables."""
    session = await ka_server.session("Sales analysis")
    sid = session["id"]
    await ka_server.run(sid, "revenue = 1234")
    specs = await ka_server.json("/api/kernelspecs")
    mine = specs["kernelspecs"][f"agent-{sid}"]
    assert mine["spec"]["display_name"] == "Agent: Sales analysis"
    assert mine["spec"]["language"] == "python"
    assert (await ka_server.json(f"/api/kernelspecs/agent-{sid}"))["name"] == f"agent-{sid}"
    other = await ka_server.new_user("mallory")
    theirs = await ka_server.json("/api/kernelspecs", token=other)
    assert f"agent-{sid}" not in theirs["kernelspecs"]
    denied = await ka_server.fetch("/api/kernels", "POST", {"name": f"agent-{sid}"}, token=other)
    assert denied.code == 404

    attached = await ka_server.json("/api/kernels", "POST", {"name": f"agent-{sid}"})
    assert attached["id"] == sid and attached["name"] == f"agent-{sid}"
    assert len(await ka_server.json("/api/v1/sessions")) == 1  # no new session
    ws = await WsClient.connect(ka_server, attached["id"])
    try:
        iopub, _ = await ws.execute("revenue * 2")
    finally:
        ws.close()
    result = next((m for m in iopub if m["msg_type"] == "execute_result"), None)
    assert result is not None, [(m["msg_type"], m["content"]) for m in iopub]
    assert result["content"]["data"]["text/plain"] == "2468"
    cells = await ka_server.services.db.cells.list(sid)
    assert (cells[-1].role, cells[-1].source) == ("gateway", "revenue * 2")


async def test_a_stopping_server_lets_a_clients_running_cell_finish_and_be_recorded(
    tmp_path, unused_port
):
    """A cell a gateway client sent is still running when the server stops (its client gone):
    the stop waits for it to be recorded, within the drain timeout, before the kernels go."""
    from conftest import running

    from kernelagent.config import Settings

    settings = Settings(
        data_dir=tmp_path / "data", port=unused_port, pool_size=0, pool_preimport="",
        token="gateway-stop-token-for-tests",
    )  # fmt: skip
    async with running(settings) as server:
        kernel = await server.json("/api/kernels", "POST", {})
        ws = await WsClient.connect(server, kernel["id"])
        code = "import time\ntime.sleep(1.5)\n'finished'"
        await ws.send("shell", "execute_request", {"code": code, "silent": False})
        await ws.until(lambda m: m["msg_type"] == "execute_input")
        ws.close()
    async with running(settings) as server:  # the same data: what the stop left recorded
        cells = await server.services.db.cells.list(kernel["id"])
        ran = [c for c in cells if c.source == code]
        assert [c.status for c in ran] == ["ok"], cells
        assert ran[0].outputs[0]["data"]["text/plain"] == "'finished'"
