"""Load: many sessions running cells and agent turns at once against one ``kernelagent serve``.

Run: ``.venv/bin/python bench/load.py [--sessions 32] [--minutes 5] [--networked] [--json F]``

One ``kernelagent serve`` process on loopback (embedded defaults, or with ``--networked``
PostgreSQL at ``--database-url``, Redis at ``--redis-url`` and S3 over moto's server), warm pool
of 2, a scripted OpenAI-compatible LLM (``tests/llm_server.py``). ``--sessions`` sessions, four
users' worth (within the per-user kernel limit), each driven by its own client for
``--minutes``: mostly cells (``1+1``, a small DataFrame, a print loop), every fifth step an agent
turn (one ``run_python`` call, then text), read to its end over the events stream.

Reported: requests per route with p50/p95/p99, 5xx answers (must be none), every cell's outputs
found in the exported notebooks (lost outputs must be none), the server's memory (RSS) at minute
1 and at the end (growth under 10 %), and afterwards no kernel, socket or file descriptor left:
the server's kernels and descriptors before the load and after its sessions were deleted. This
is a benchmark, not a test; it is bounded by ``--minutes``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from llm_server import ScriptedLLM, respond, text, tool_call

TOKEN = "kernelagent-load-token"
USERS = 4
CELLS = (
    ("1+1", "2"),
    ("import pandas as pd\npd.DataFrame({'a': range(5)}).a.sum()", "10"),
    ("for i in range(3):\n    print('line', i)", "line 2"),
)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class Load:
    def __init__(self, base: str):
        self.base = base
        self.http = AsyncHTTPClient(force_instance=True, max_clients=256)
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.statuses: collections.Counter[int] = collections.Counter()
        self.expected: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)

    async def call(
        self, route: str, path: str, token: str, method: str = "GET", body: Any = None
    ) -> Any:
        started = time.perf_counter()
        try:
            response = await self.http.fetch(
                self.base + path,
                method=method,
                body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
                headers={"Authorization": f"token {token}"},
                request_timeout=300,
            )
            code, data = response.code, response.body
        except HTTPClientError as e:
            code, data = e.code, e.response.body if e.response else b""
        self.latency[route].append(time.perf_counter() - started)
        self.statuses[code] += 1
        if code >= 300:
            raise RuntimeError(f"{method} {path}: {code} {data[:200]!r}")
        return json.loads(data) if data else None

    async def turn(self, sid: str, token: str, step: int) -> None:
        answer = await self.call(
            "POST messages", f"/api/v1/sessions/{sid}/messages", token, "POST",
            {"content": f"step {step}"},
        )  # fmt: skip
        turn = answer["turn_id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = await self.call("GET turn", f"/api/v1/sessions/{sid}/turns/{turn}", token)
            if state["status"] not in ("running", "waiting"):
                if state["status"] != "completed":
                    raise RuntimeError(f"turn {turn}: {state['status']} {state.get('error')}")
                self.expected[sid].append((f"print('agent', {step})", f"agent {step}"))
                return
            await asyncio.sleep(0.25)
        raise RuntimeError(f"turn {turn} did not end")

    async def client(self, sid: str, token: str, until: float) -> None:
        step = 0
        while time.monotonic() < until:
            step += 1
            if step % 5 == 0:
                await self.turn(sid, token, step)
                continue
            code, shown = CELLS[step % len(CELLS)]
            await self.call(
                "POST cells", f"/api/v1/sessions/{sid}/cells", token, "POST", {"code": code}
            )
            self.expected[sid].append((code, shown))

    async def lost(self, sessions: dict[str, str]) -> int:
        """Cells whose source or outputs are missing from the exported notebook."""
        missing = 0
        for sid, token in sessions.items():
            notebook = await self.call("GET notebook", f"/api/v1/sessions/{sid}/notebook", token)
            cells = [
                ("".join(c["source"]), json.dumps(c.get("outputs", [])))
                for c in notebook["cells"]
                if c["cell_type"] == "code"
            ]
            for code, shown in self.expected[sid]:
                if not any(code == source and shown in outputs for source, outputs in cells):
                    missing += 1
        return missing


def agent(body: dict[str, Any]) -> Any:
    """One run_python call, then text once its result came back."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return text("done", usage=(200, 5))
    step = last["content"].split()[-1]
    return tool_call("run_python", {"code": f"print('agent', {step})"}, usage=(150, 20))


def sampled(process: psutil.Process) -> dict[str, int]:
    kernels = [
        c for c in process.children(recursive=True)
        if "ipykernel" in " ".join(_cmd(c)) and not _cmd(c)[0].endswith("bwrap")
    ]  # fmt: skip
    peers = collections.Counter(
        f"{c.raddr.port}" if c.raddr else "listening" for c in process.net_connections()
    )
    kinds: collections.Counter[str] = collections.Counter()
    for fd in Path(f"/proc/{process.pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            kinds[target.split(":")[0] if ":" in target else str(Path(target).parent)] += 1
    return {
        "rss_mb": process.memory_info().rss // 2**20,
        "fds": process.num_fds(),
        "fds_by_kind": dict(kinds),
        "sockets": sum(peers.values()),
        "sockets_by_peer_port": dict(peers),
        "kernels": len(kernels),
    }


def _cmd(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    llm = await ScriptedLLM.start(api_key="sk-load")
    llm.script(*[respond(agent) for _ in range(100_000)])
    port = unused_port()
    env = {
        **os.environ,
        "KERNELAGENT_DATA_DIR": str(tmp / "data"),
        "KERNELAGENT_TOKEN": TOKEN,
        "KERNELAGENT_PORT": str(port),
        "KERNELAGENT_POOL_SIZE": "2",
        "OPENAI_API_KEY": "sk-load",
        "OPENAI_BASE_URL": llm.base_url,
        "KERNELAGENT_MODEL": "scripted",
    }
    moto = None
    if args.networked:
        from moto.server import ThreadedMotoServer

        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=unused_port(), verbose=False)
        moto.start()
        endpoint = f"http://127.0.0.1:{moto._port}"
        env.update(AWS_ACCESS_KEY_ID="load", AWS_SECRET_ACCESS_KEY="load")
        import boto3

        bucket = f"load-{uuid.uuid4().hex[:8]}"
        s3 = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="load", aws_secret_access_key="load",
        )  # fmt: skip
        s3.create_bucket(Bucket=bucket)
        env.update(
            KERNELAGENT_DATABASE_URL=args.database_url,
            KERNELAGENT_REDIS_URL=args.redis_url,
            KERNELAGENT_STORAGE_URL=f"s3://{bucket}/load",
            KERNELAGENT_S3_ENDPOINT_URL=endpoint,
        )
    log = (tmp / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "kernelagent", "serve"], env=env, stdout=log, stderr=log
    )
    load = Load(f"http://127.0.0.1:{port}")
    try:
        async with asyncio.timeout(120):
            while True:
                try:
                    await load.http.fetch(f"{load.base}/api/v1/health")
                    break
                except OSError:
                    await asyncio.sleep(0.2)
        process = psutil.Process(server.pid)
        await pool_full(load)
        warm = await load.call("POST sessions", "/api/v1/sessions", TOKEN, "POST", {})
        await load.call("POST cells", f"/api/v1/sessions/{warm['id']}/cells", TOKEN, "POST",
                        {"code": "1+1"})  # fmt: skip
        await load.call("DELETE session", f"/api/v1/sessions/{warm['id']}", TOKEN, "DELETE")
        await pool_full(load)
        load.http.close()  # sampled without the client's keep-alive connections
        load.http = AsyncHTTPClient(force_instance=True, max_clients=256)
        await asyncio.sleep(3)
        before = sampled(process)  # the baseline: pool full, lazy resources made
        load.latency.clear()
        load.statuses.clear()
        tokens = [TOKEN]
        for _ in range(1, USERS):
            tokens.append(await _add_user(env, f"load-{uuid.uuid4().hex[:8]}"))
        sessions: dict[str, str] = {}
        for i in range(args.sessions):
            token = tokens[i % USERS]
            made = await load.call("POST sessions", "/api/v1/sessions", token, "POST", {})
            sessions[made["id"]] = token
        started = time.monotonic()
        until = started + args.minutes * 60
        clients = [asyncio.create_task(load.client(s, t, until)) for s, t in sessions.items()]
        await asyncio.sleep(min(60, args.minutes * 60 / 5))
        minute_one = sampled(process)
        results = await asyncio.gather(*clients, return_exceptions=True)
        failures = [repr(r) for r in results if isinstance(r, BaseException)]
        at_end = sampled(process)
        lost = await load.lost(sessions)
        for sid, token in sessions.items():
            await load.call("DELETE session", f"/api/v1/sessions/{sid}", token, "DELETE")
        await pool_full(load)
        load.http.close()  # the clients' keep-alive connections are not the server's
        load.http = AsyncHTTPClient(force_instance=True)
        # kernels stop, sockets close (idle Redis sockets within a minute): wait up to 90 s
        settled = time.monotonic()
        while True:
            await asyncio.sleep(3)
            after = sampled(process)
            if after["sockets"] <= before["sockets"] or time.monotonic() - settled > 90:
                break
        after["seconds_to_settle"] = round(time.monotonic() - settled)
    finally:
        server.terminate()
        server.wait(60)
        await llm.stop()
        if moto is not None:
            moto.stop()
    routes = {}
    for route, samples in sorted(load.latency.items()):
        ordered = sorted(samples)
        routes[route] = {
            "n": len(ordered),
            "p50_ms": round(percentile(ordered, 0.5) * 1000, 1),
            "p95_ms": round(percentile(ordered, 0.95) * 1000, 1),
            "p99_ms": round(percentile(ordered, 0.99) * 1000, 1),
        }
    cells = sum(len(v) for v in load.expected.values())
    return {
        "backend": "networked" if args.networked else "embedded",
        "sessions": args.sessions,
        "minutes": args.minutes,
        "cells_recorded": cells,
        "cells_per_second": round(cells / (args.minutes * 60), 1),
        "lost_outputs": lost,
        "server_errors_5xx": sum(n for code, n in load.statuses.items() if code >= 500),
        "statuses": dict(load.statuses),
        "client_failures": failures[:5],
        "memory_mb": {"minute_1": minute_one["rss_mb"], "end": at_end["rss_mb"]},
        "memory_growth": round(at_end["rss_mb"] / max(minute_one["rss_mb"], 1) - 1, 3),
        "before": before,
        "after_deleting": after,
        "leaked": {
            "kernels": after["kernels"] - before["kernels"],
            "fds": after["fds"] - before["fds"],
            "sockets": after["sockets"] - before["sockets"],
        },
        "routes": routes,
    }


async def pool_full(load: Load) -> None:
    """Until the warm pool holds its kernels (the health answer says)."""
    async with asyncio.timeout(120):
        while True:
            health = json.loads((await load.http.fetch(f"{load.base}/api/v1/health")).body)
            if health["pool"]["ready"] >= health["pool"]["size"]:
                return
            await asyncio.sleep(0.2)


async def _add_user(env: dict[str, str], name: str) -> str:
    """A user of the server (through its command line, as an operator adds one)."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kernelagent", "user", "add", name],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.strip().splitlines()[-1]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--networked", action="store_true")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kernelagent-load-") as tmp:
        result = await run(args, Path(tmp))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["lost_outputs"] == 0 and result["server_errors_5xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
