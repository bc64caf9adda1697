"""LocalKernels, the kernel port on this machine: settings reach the sandbox, a kernel that cannot
start says why, runs get their own messages and end saying how their kernel went, workspaces are
names, and a client connection sees what Jupyter clients expect."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import resource
import threading
import weakref
from collections import deque

import pytest
import zmq
from jupyter_client.session import Session

from kernelagent.adapters import kernels as kernels_module
from kernelagent.adapters import workspace_io, workspace_watch
from kernelagent.adapters.kernels import DIGEST_HISTORY, LocalKernels
from kernelagent.domain import FileStat
from kernelagent.errors import InvalidInput, KernelDied, NotFound, TooLarge

pytestmark = pytest.mark.sandbox

MiB = 1024**2


async def test_settings_limits_reach_the_kernel(settings, tmp_path):
    settings = dataclasses.replace(settings, memory_limit=300 * MiB, open_files_limit=200)
    kernels = LocalKernels(settings)
    kernel_id = await kernels.start("ws")
    try:
        client = kernels.client(kernel_id)
        texts = []
        await client.execute_interactive(
            "import resource as r; print(r.getrlimit(r.RLIMIT_DATA)[0], "
            "r.getrlimit(r.RLIMIT_NOFILE)[0])",
            timeout=30,
            output_hook=lambda m: texts.append(m["content"].get("text", "")),
        )
        client.stop_channels()
        data, nofile = map(int, "".join(texts).split())
        assert data == int(300 * MiB * 0.9)
        assert nofile == 200
        assert data != resource.getrlimit(resource.RLIMIT_DATA)[0]
    finally:
        await kernels.close()


async def test_kernel_dying_during_start_is_reported(settings, tmp_path, monkeypatch):
    spec_dir = tmp_path / "kernels" / "broken"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    "python",
                    "-c",
                    "import sys; sys.stderr.write('kernel exploded'); sys.exit(3)",
                    "{connection_file}",
                ],
                "display_name": "broken",
                "language": "python",
                "metadata": {"kernel_provisioner": {"provisioner_name": "kernelagent-bubblewrap"}},
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    kernels = LocalKernels(dataclasses.replace(settings, kernel_name="broken"))
    try:
        with pytest.raises(KernelDied, match="kernel died during start: exited with status 3"):
            await kernels.start("ws")
        assert kernels.mkm.list_kernel_ids() == []
    finally:
        await kernels.close()


async def test_unknown_kernelspec_is_a_clear_error(settings, tmp_path):
    kernels = LocalKernels(dataclasses.replace(settings, kernel_name="no-such-kernel"))
    try:
        with pytest.raises(NotFound, match=r"named 'no-such-kernel'.*kernelagent-python3"):
            await kernels.start("ws")
    finally:
        await kernels.close()


@pytest.fixture
async def kernels(settings):
    backend = LocalKernels(settings)
    yield backend
    await backend.close()


async def _drain(run, until: str = "idle", timeout: float = 30) -> list:
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await run.next(timeout)
            if msg is None:
                continue
            seen.append(msg)
            if msg.msg_type == "status" and msg.content["execution_state"] == until:
                return seen


async def test_a_run_gets_its_own_messages_and_its_reply(kernels):
    kernel = await kernels.start("ws")
    first = await kernels.execute(kernel, "print('one')")
    second = await kernels.execute(kernel, "print('two')")
    try:
        for run, text in ((first, "one"), (second, "two")):
            messages = await _drain(run)
            assert all(m.parent_id == run.msg_id for m in messages)
            streams = [m.content["text"] for m in messages if m.msg_type == "stream"]
            assert streams == [f"{text}\n"]
            reply = await run.reply(10)
            assert reply is not None and reply.content["status"] == "ok"
    finally:
        first.close()
        second.close()


async def test_requests_sent_while_replies_arrive_miss_no_reply(kernels):
    """Requests in flight while earlier replies come back, as file transfers pipeline them:
    a send must not take the wake-up the link's reader waits for."""
    kernel = await kernels.start("ws")
    window: deque = deque()
    try:
        for n in range(2000):
            window.append(await kernels.execute(kernel, "", silent=True, store_history=False))
            if len(window) == 8 or n == 1999:
                while window:
                    run = window.popleft()
                    assert await run.reply(10) is not None, f"no reply in request {n}'s window"
                    run.close()
                    if n < 1999:
                        break
    finally:
        for run in window:
            run.close()


async def test_a_send_that_finds_no_room_waits_for_it_and_ends_when_the_kernel_goes(kernels):
    """A kernel whose queue is full (ZMQ's high-water mark) takes nothing for a while: the send
    waits without holding the loop, goes through once there is room, and fails with the
    kernel's end if the kernel goes meanwhile. A socket with no peer has no room either."""
    kernel = await kernels.start("ws")
    await _ran(kernels, kernel, "1")
    link = kernels._links[kernel]
    context = zmq.Context()  # plain sockets, as the link's
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    roomless = [context.socket(zmq.DEALER), context.socket(zmq.DEALER)]
    shell = link._sockets["shell"]
    try:
        link._sockets["shell"] = roomless[0]
        message = link.client.session.msg("kernel_info_request", {})
        sending = asyncio.create_task(link.send("shell", message))
        await asyncio.sleep(0.1)  # the loop runs this test meanwhile
        assert not sending.done()
        roomless[0].connect(f"tcp://127.0.0.1:{port}")
        await asyncio.wait_for(sending, 5)
        assert await asyncio.to_thread(router.poll, 5000), "the message never left"
        frames = router.recv_multipart()
        assert message["header"]["msg_id"].encode() in b"".join(frames)

        link._sockets["shell"] = roomless[1]
        sending = asyncio.create_task(link.send("shell", message))
        await asyncio.sleep(0.05)
        assert not sending.done()
        kernels._drop_link(kernel, "the kernel was shut down", "shutdown")
        with pytest.raises(KernelDied):
            await asyncio.wait_for(sending, 5)
    finally:
        link._sockets["shell"] = shell
        context.destroy(linger=0)


@pytest.mark.parametrize(
    ("end", "cause"),
    [("restart", "restarted"), ("shutdown", "shutdown"), ("kill", "died")],
)
async def test_a_run_in_flight_ends_saying_how_its_kernel_went(kernels, end, cause):
    kernel = await kernels.start("ws")
    run = await kernels.execute(kernel, "import time\nprint('go', flush=True)\ntime.sleep(60)")
    try:
        await _drain(run, until="busy")
        if end == "restart":
            ending = asyncio.create_task(kernels.restart(kernel))
        elif end == "shutdown":
            ending = asyncio.create_task(kernels.shutdown(kernel, now=True))
        else:
            await kernels.manager(kernel).provisioner.kill()
            ending = None
        with pytest.raises(KernelDied) as died:
            async with asyncio.timeout(30):
                while True:
                    await run.next(1)
        assert died.value.cause == cause
        if ending is not None:
            await ending
    finally:
        run.close()
    assert await kernels.is_alive(kernel) == (end == "restart")


async def test_an_unknown_kernel_is_a_dead_one(kernels):
    assert not await kernels.is_alive("no-such-kernel")
    assert await kernels.exit_reason("no-such-kernel") is None
    await kernels.shutdown("no-such-kernel")  # nothing to do
    with pytest.raises(KernelDied):
        await kernels.execute("no-such-kernel", "1")


async def test_workspaces_are_names_not_paths(kernels):
    for bad in ("../escape", "a/b", "", "/etc", "..", "."):
        with pytest.raises(InvalidInput):
            await kernels.list_files(bad)
    await kernels.write_file("s1", "dir/data.csv", b"a,b\n")
    files = await kernels.list_files("s1")
    assert set(files) == {"dir/data.csv"} and files["dir/data.csv"].size == 4
    assert await kernels.read_file("s1", "dir/data.csv", limit=100) == b"a,b\n"
    # an upload cut off mid-write (its server killed) is no file of the workspace's
    (kernels.workspace_path("s1") / "dir" / ".kernelagent-upload-0123abcd").write_bytes(b"a,")
    assert set(await kernels.list_files("s1")) == {"dir/data.csv"}
    with pytest.raises(TooLarge):
        await kernels.read_file("s1", "dir/data.csv", limit=2)
    await kernels.remove_file("s1", "dir/data.csv")
    await kernels.remove_file("s1", "dir/data.csv")  # gone already: no error
    assert await kernels.list_files("s1") == {}
    await kernels.remove_workspace("s1")
    assert await kernels.list_files("s1") == {}


async def test_a_client_connection_sees_iopub_and_the_replies_to_its_requests(kernels):
    kernel = await kernels.start("ws")
    channels = await kernels.connect(kernel)
    try:
        session = Session(key=kernels.manager(kernel).session.key)
        request = session.msg("kernel_info_request", {})
        await channels.send("shell", request)
        async with asyncio.timeout(30):
            while (msg := await channels.receive()).msg_type != "kernel_info_reply":
                pass
        assert msg.channel == "shell" and msg.parent_id == request["header"]["msg_id"]
        # a cell run by someone else (the execution path): this connection sees its iopub
        run = await kernels.execute(kernel, "print('seen by all')")
        async with asyncio.timeout(30):
            while True:
                msg = await channels.receive()
                if msg.msg_type == "stream":
                    break
        assert msg.content["text"] == "seen by all\n" and msg.parent_id == run.msg_id
        run.close()
        channels.keep_iopub_only()
        with pytest.raises(InvalidInput):
            await channels.send("shell", request)
    finally:
        channels.close()


async def test_connections_are_views_of_the_kernels_one_link(kernels, monkeypatch):
    """However many clients a kernel has, each of its messages is received and parsed once (no
    sockets per connection); every connection sees all of iopub, only the asker its reply."""
    kernel = await kernels.start("ws")
    await _ran(kernels, kernel, "1")
    descriptors = len(os.listdir("/proc/self/fd"))
    parsed: list[str] = []
    real = kernels_module._Parser.message
    monkeypatch.setattr(
        kernels_module._Parser, "message", lambda *args: parsed.append(args[1]) or real(*args)
    )
    asker, other = await kernels.connect(kernel), await kernels.connect(kernel)
    try:
        assert len(os.listdir("/proc/self/fd")) == descriptors
        request = Session(key=kernels.manager(kernel).session.key).msg("kernel_info_request")
        await asker.send("shell", request)
        seen: dict[str, list[tuple[str, str]]] = {"asker": [], "other": []}
        # the reply (shell) and the idle status (iopub) come on two sockets, in either order
        wanted = {"asker": {("iopub", "idle"), ("shell", "kernel_info_reply")},
                  "other": {("iopub", "idle")}}  # fmt: skip
        async with asyncio.timeout(30):
            for name, connection in (("asker", asker), ("other", other)):
                while not wanted[name] <= set(seen[name]):
                    msg = await connection.receive()
                    if msg.parent_id == request["header"]["msg_id"]:
                        state = msg.content.get("execution_state", msg.msg_type)
                        seen[name].append((msg.channel, state))
        assert ("shell", "kernel_info_reply") in seen["asker"]
        assert seen["other"] == [("iopub", "busy"), ("iopub", "idle")]
        assert sorted(parsed) == ["iopub", "iopub", "shell"]  # once each, for two connections
        assert isinstance(msg.header["date"], str)  # the kernel's header, as it sent it
    finally:
        asker.close()
        other.close()
    assert not kernels._watchers


def test_a_kernel_message_is_read_once_signed_and_never_twice():
    """A message read from a kernel is checked as ``Session.deserialize`` checks it: a wrong
    signature and a replayed one are refused; the JSON parts are kept as sent."""
    session = Session(key=b"secret")
    parser = kernels_module._Parser(session)
    frames = session.serialize(session.msg("status", {"execution_state": "idle"}))
    msg = parser.message("iopub", frames)
    assert (msg.msg_type, msg.content) == ("status", {"execution_state": "idle"})
    assert msg.raw == tuple(frames[2:6])  # header, parent, metadata, content
    with pytest.raises(ValueError, match="replayed"):
        parser.message("iopub", frames)
    forged = session.serialize(session.msg("status", {"execution_state": "busy"}))
    forged[-1] = json.dumps({"execution_state": "idle"}).encode()
    with pytest.raises(ValueError, match="invalid signature"):
        parser.message("iopub", forged)
    unsigned = Session(key=b"").serialize(session.msg("status", {"execution_state": "idle"}))
    with pytest.raises(ValueError, match="unsigned"):
        parser.message("iopub", unsigned)


async def test_the_replay_guard_of_a_kernel_link_stays_small(kernels):
    """jupyter_client remembers every message signature it read (65 536 by default, ~10 MB per
    kernel in a long session); a link remembers at most DIGEST_HISTORY."""
    kernel = await kernels.start("ws")
    code = "from IPython.display import display\nfor i in range(6000):\n    display(i)"
    await _ran(kernels, kernel, code, timeout=120)
    history = kernels._links[kernel].client.session.digest_history
    assert 0 < len(history) <= DIGEST_HISTORY


async def test_a_workspace_is_walked_again_only_once_something_in_it_changed(kernels, monkeypatch):
    """What the sandboxed kernel writes, anywhere in its workspace, is listed at once; a cell
    that wrote nothing is listed without a walk."""
    walks = []
    scan = workspace_io.scan
    monkeypatch.setattr(workspace_io, "scan", lambda *a, **kw: walks.append(1) or scan(*a, **kw))
    kernel = await kernels.start("ws")

    async def listed(code: str | None = None) -> dict[str, tuple[int, int]]:
        if code is not None:
            await _ran(kernels, kernel, code)
        files = await kernels.list_files("ws")
        assert files == {  # what a walk would find
            rel: FileStat(*stat) for rel, stat in scan(kernels.workspace_path("ws")).items()
        }
        return {rel: (stat.size, stat.mtime_ns) for rel, stat in files.items()}

    assert await listed() == {}
    assert await listed() == {} and len(walks) == 2  # a new watch: walked once more
    assert await listed("1 + 1") == {} and len(walks) == 2
    assert set(await listed("open('out.txt', 'w').write('1')")) == {"out.txt"}
    await listed("import os; os.makedirs('a/b'); open('a/b/x', 'w').write('1')")
    walks.clear()
    first = await listed("x = 1")
    assert set(first) == {"out.txt", "a/b/x"} and walks == [1]  # the new directories' watches
    assert await listed("y = 2") == first and walks == [1]
    now = await listed("import time; time.sleep(0.01); open('a/b/x', 'r+').write('2')")
    assert now["a/b/x"][0] == 1 and now["a/b/x"][1] > first["a/b/x"][1]
    assert set(await listed("os.remove('a/b/x')")) == {"out.txt"}
    await kernels.write_file("ws", "upload.csv", b"a\n")  # the server's own writes too
    assert set(await listed()) == {"out.txt", "upload.csv"}
    walks.clear()
    await listed("z = 3")
    assert walks == []
    monkeypatch.setattr(workspace_watch, "RESCAN_AFTER", 0)  # a write through a memory map
    await listed()
    assert walks == [1]


def test_without_inotify_every_listing_is_a_walk(tmp_path, monkeypatch):
    def unavailable(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(workspace_watch, "INotify", unavailable)
    watch = workspace_watch.WorkspaceWatch()
    (tmp_path / "f").write_text("1")
    for _ in range(3):
        assert watch.listed("ws") is None
        assert set(watch.scan("ws", tmp_path)) == {"f"}
    watch.close()


async def _ran(kernels: LocalKernels, kernel: str, code: str, timeout: float = 60) -> None:
    run = await kernels.execute(kernel, code)
    async with asyncio.timeout(timeout):
        while (msg := await run.next(30)) is None or not (
            msg.msg_type == "status" and msg.content["execution_state"] == "idle"
        ):
            pass
    run.close()


def _zmq_threads() -> int:
    """ZMQ's threads (I/O and reaper, two per context: not Python threads)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/self/task/{task}/comm") as f:
            count += f.read().startswith("ZMQbg")
    return count


async def test_links_add_no_thread_per_kernel_and_are_freed_without_a_full_collection(kernels):
    """A client with a ZMQ context of its own adds two threads per kernel, and its heartbeat
    channel a third; and a link whose cancelled readers' tracebacks point back at it waits,
    with its replay guard, for a full garbage collection."""
    started = [await kernels.start(f"ws{i}") for i in range(3)]
    await _ran(kernels, started[0], "1")
    gc.collect()  # contexts an earlier test left to the collector go now, not mid-count
    before, threads = _zmq_threads(), threading.active_count()
    for kernel in started[1:]:
        await _ran(kernels, kernel, "1")
    assert _zmq_threads() <= before, "a kernel's link made a ZMQ context of its own"
    assert threading.active_count() <= threads, [t.name for t in threading.enumerate()]
    link = weakref.ref(kernels._links[started[0]])
    gc.disable()
    try:
        await kernels.shutdown(started[0], now=True)
        for _ in range(20):
            await asyncio.sleep(0.05)
            if link() is None:
                break
        assert link() is None, [type(r).__name__ for r in gc.get_referrers(link())]
    finally:
        gc.enable()


async def test_a_new_connection_sees_a_cell_sent_right_after_it_connects(kernels):
    """The connection is returned once its iopub delivers: a short cell sent at once is seen
    whole (its ``busy`` comes within a millisecond), and its own join requests are not."""
    kernel = await kernels.start("ws")
    for _ in range(20):
        channels = await kernels.connect(kernel)
        try:
            run = await kernels.execute(kernel, "1")
            seen = []
            async with asyncio.timeout(30):
                while not seen or seen[-1] != ("status", "idle"):
                    msg = await channels.receive()
                    assert msg.msg_type != "kernel_info_reply"
                    if msg.parent_id == run.msg_id:
                        seen.append((msg.msg_type, msg.content.get("execution_state")))
            assert seen[0] == ("status", "busy"), seen
            run.close()
        finally:
            channels.close()


async def test_a_request_during_a_shutdown_or_restart_waits_for_its_end(kernels):
    """No link to a kernel is made while it shuts down (it would be left open) or restarts
    (it would be stale): a request sent meanwhile fails at once after a shutdown, and reaches
    the kernel after a restart."""
    kernel = await kernels.start("ws")
    restarting = asyncio.create_task(kernels.restart(kernel))
    await asyncio.sleep(0)  # the restart has begun
    run = await kernels.execute(kernel, "restarted = True")
    assert restarting.done()
    assert (await run.reply(30)).content["status"] == "ok"
    run.close()

    stopping = asyncio.create_task(kernels.shutdown(kernel))
    await asyncio.sleep(0)
    async with asyncio.timeout(5):  # not the 30 s a new link's handshake would wait
        with pytest.raises(KernelDied):
            await kernels.execute(kernel, "1")
    await stopping
    assert not kernels._links  # nothing left open
