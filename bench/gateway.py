"""Kernel Gateway API: kernelagent vs Jupyter Kernel Gateway vs raw jupyter_client.

Run: ``.venv/bin/python bench/gateway.py [--runs 12] [--rtt-runs 200] [--json bench/gateway.json]``

kernelagent answers the Kernel Gateway REST + WebSocket API so that Jupyter clients can attach to
session kernels. This measures what a client pays for that compared with Jupyter Kernel Gateway
itself, in one run on one machine. The servers run as subprocesses on unused loopback ports
(``kernelagent serve`` with embedded defaults in a temporary data dir, its warm pool and
pre-imports as shipped; ``python -m kernel_gateway`` 3.x with the plain ``python3`` kernelspec),
and the same tornado client code talks to all of them (``Authorization: token …``, legacy JSON
frames):

1. ``1+1`` round trip on ``/api/kernels/{id}/channels``: an ``execute_request`` on shell until both
   its ``execute_reply`` and its iopub ``status: idle`` have arrived; against the same over raw
   jupyter_client (``AsyncKernelManager`` + client, no network) on a plain ``python3`` kernel and
   on the sandboxed ``kernelagent-python3`` with kernelagent's kernel-side extension loaded, as the
   server loads it in its own kernels; and kernelagent's own ``POST …/cells`` on one
   kept-open connection (answered once the cell is recorded, with its output, so after the
   reply and the idle). 20 warm-ups each, then interleaved blocks. Kernel
   Gateway is measured as shipped and with TCP_NODELAY kept on its WebSockets: as shipped, each
   reply after the first waits for the client's delayed ACK (Nagle), ~40 ms on Linux loopback.
2. create → ready: ``POST /api/kernels`` until the new kernel answers a ``kernel_info_request``
   over a channels WebSocket, against kernelagent (warm pool full before every sample), Kernel
   Gateway as configured by default, and Kernel Gateway with ``prespawn_count`` = the pool size
   (its prespawned kernels are not handed out by ``POST``). Each kernel is deleted after its
   sample (``DELETE /api/kernels/{id}``); round 0 is a warm-up.
3. arrivals: sessions that come with no pause for a pool to refill, each kept until the phase
   ends: ``--runs`` creations one after another, then ``--burst`` at once (create → ready each),
   against kernelagent (its pool as grown by the arrivals of the minute before, which the JSON
   and the table give), kernelagent with its pool fixed at its size (``KERNELAGENT_POOL_MAX``),
   and Kernel Gateway (stock).

Plain kernels get ``IPYTHONDIR`` on a tmpfs, as sandboxed ones have (their ``$HOME`` is a tmpfs):
otherwise every cell waits for IPython's history commit to disk. kernelagent records every
gateway ``execute_request`` as a notebook cell; Kernel Gateway records nothing. Targets: round trip
p50 ≤ 1.1× Kernel Gateway's and ≤ 1.2× Kernel Gateway's with TCP_NODELAY; ``POST …/cells`` ≤ 1.3×
raw jupyter_client on the sandboxed kernel; create → ready p50 at least 10× faster than Kernel
Gateway's without prespawn; 12 arrivals one after another p50 ≤ 100 ms, and a burst no slower
than Kernel Gateway's.

Prints Markdown tables and writes JSON (n, p50, p95, mean, min; ratios). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from common import (  # bench/ is on sys.path when run as a script
    Client,
    as_the_server_sets_it_up,
    sandboxed_kernel,
    summary,
)
from jupyter_client import AsyncKernelClient, AsyncKernelManager
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

TARGETS = {
    "rtt_ka_kg_ratio_p50": 1.1,
    "rtt_ka_kg_nodelay_ratio_p50": 1.2,  # a recorded cell against a gateway that records nothing
    "rtt_ka_http_raw_sandbox_ratio_p50": 1.3,  # POST …/cells against the kernel's own round trip
    "create_kg_ka_speedup_p50": 10.0,
    "arrivals_sequential_ka_p50_ms": 100.0,
    "arrivals_burst_ka_kg_ratio_p50": 1.0,
}
TOKEN = "kernelagent-bench-token"
WARMUP = 20
TIMEOUT = 120.0
CLIENT_SESSION = uuid.uuid4().hex
VERSIONS = ("kernelagent", "jupyter_kernel_gateway", "jupyter_server", "ipykernel", "tornado")
# Kernel Gateway with TCP_NODELAY kept on after the WebSocket upgrade (tornado turns it off after
# each HTTP response, and jupyter_server's kernel WebSocket does not turn it back on)
KG_NODELAY = """\
from tornado import iostream
set_nodelay = iostream.IOStream.set_nodelay
iostream.IOStream.set_nodelay = lambda stream, value: set_nodelay(stream, True)
from kernel_gateway.gatewayapp import launch_instance
launch_instance()
"""


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stats(samples: list[float]) -> dict[str, float]:
    return {**summary(samples), "mean_ms": round(statistics.fmean(samples) * 1000, 2)}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else math.inf


class Server:
    """A Kernel Gateway-compatible server in a subprocess, and the client code used for both."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], tmp: Path, port: int):
        self.name, self.argv, self.env, self.port = name, argv, env, port
        self.tmp = tmp / name
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = AsyncHTTPClient()

    async def start(self) -> None:
        self.tmp.mkdir()
        with open(self.tmp / "server.log", "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, env={**os.environ, **self.env}, cwd=self.tmp, stdout=log, stderr=log
            )
        deadline = time.monotonic() + TIMEOUT
        while True:
            with contextlib.suppress(OSError, HTTPClientError):
                await self.call("GET", "/api")
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")
            await asyncio.sleep(0.2)

    def log_tail(self) -> str:
        return (self.tmp / "server.log").read_text(errors="replace")[-3000:]

    @contextlib.contextmanager
    def blamed(self) -> Iterator[None]:
        """A failure while this server is measured names it and keeps its log's tail (the
        temporary directory holding the log is gone when the benchmark ends)."""
        try:
            yield
        except Exception as e:
            tail = self.log_tail()
            raise RuntimeError(f"{self.name}: {type(e).__name__}: {e}\n{tail}") from e

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            for _ in range(300):
                if self.proc.poll() is not None:
                    return
                await asyncio.sleep(0.1)
            self.proc.kill()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.http.fetch(
            HTTPRequest(
                f"http://127.0.0.1:{self.port}{path}",
                method=method,
                headers={"Authorization": f"token {TOKEN}"},
                body=json.dumps(body) if body is not None else None,
                request_timeout=TIMEOUT,
            )
        )
        return json.loads(response.body) if response.body else None

    async def create(self) -> str:
        return str((await self.call("POST", "/api/kernels", {}))["id"])

    async def delete(self, kernel_id: str) -> None:
        await self.call("DELETE", f"/api/kernels/{kernel_id}")

    async def channels(self, kernel_id: str) -> WebSocketClientConnection:
        url = (
            f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels"
            f"?session_id={CLIENT_SESSION}"
        )
        headers = {"Authorization": f"token {TOKEN}"}
        request = HTTPRequest(
            url, headers=headers, connect_timeout=TIMEOUT, request_timeout=TIMEOUT
        )
        return await websocket_connect(request)

    async def pool_filled(self) -> int:
        """kernelagent: until ``/api/v1/health`` reports the pool at its target (its size, or
        more after recent arrivals); the target. Kernel Gateway: no-op."""
        if "kernelagent" not in self.name:
            return 0
        deadline = time.monotonic() + TIMEOUT
        while (pool := (await self.call("GET", "/api/v1/health"))["pool"])["ready"] < pool.get(
            "target", pool["size"]
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"kernelagent pool not refilled: {pool}")
            await asyncio.sleep(0.1)
        return int(pool.get("target", pool["size"]))


async def request(
    ws: WebSocketClientConnection, msg_type: str, content: dict[str, Any], idle: bool
) -> float:
    """Seconds from sending a shell request until its reply (and, if ``idle``, its idle status)."""
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "msg_type": msg_type,
        "username": "bench",
        "session": CLIENT_SESSION,
        "date": dt.datetime.now(dt.UTC).isoformat(),
        "version": "5.3",
    }
    frame = {
        "header": header,
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": "shell",
        "buffers": [],
    }
    reply_type = msg_type.replace("_request", "_reply")
    started = time.perf_counter()
    await ws.write_message(json.dumps(frame))
    got_reply, got_idle = False, not idle
    while not (got_reply and got_idle):
        raw = await asyncio.wait_for(ws.read_message(), TIMEOUT)
        if raw is None:
            raise ConnectionError(
                f"channels WebSocket closed: code {ws.close_code}, reason {ws.close_reason}"
            )
        if isinstance(raw, bytes):
            continue  # a binary frame (buffers): nothing this benchmark waits for
        msg = json.loads(raw)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == reply_type:
            if msg["content"].get("status") != "ok":
                raise RuntimeError(f"{msg_type} failed: {msg['content']}")
            got_reply = True
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            got_idle = True
    return time.perf_counter() - started


async def raw_one_plus_one(client: AsyncKernelClient) -> float:
    """The same over raw jupyter_client: ``execute_request`` until its reply and its idle."""
    started = time.perf_counter()
    msg_id = client.execute("1+1")
    while True:
        msg = await client.get_iopub_msg(timeout=TIMEOUT)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            break
    while (await client.get_shell_msg(timeout=TIMEOUT))["parent_header"].get("msg_id") != msg_id:
        pass
    return time.perf_counter() - started


async def post_one_plus_one(client: Client, session_id: str) -> float:
    """kernelagent's own API: ``POST …/cells {"code": "1+1"}`` until its answer (the cell,
    recorded, with its output)."""
    started = time.perf_counter()
    await client.run_cell(session_id)
    return time.perf_counter() - started


async def bench_rtt(servers: dict[str, Server], tmp: Path, runs: int, blocks: int = 8) -> dict:
    runners: dict[str, Any] = {}
    managers: list[tuple[AsyncKernelManager, AsyncKernelClient]] = []
    sockets: list[tuple[Server, str, WebSocketClientConnection]] = []
    http = Client(servers["kernelagent"].port, TOKEN)  # one connection, kept open
    session_id: str | None = None
    try:
        session = await http.call("POST", "/api/v1/sessions", {"title": "rtt"}, expect=201)
        session_id = str(session["id"])
        runners["kernelagent_http"] = lambda: post_one_plus_one(http, str(session_id))
        for variant, srv in servers.items():
            kernel_id = await srv.create()
            ws = await srv.channels(kernel_id)
            sockets.append((srv, kernel_id, ws))
            await request(ws, "kernel_info_request", {}, idle=False)
            runners[variant] = lambda ws=ws: request(ws, "execute_request", {"code": "1+1"}, True)
        for variant, name in (("raw_plain", "python3"), ("raw_sandbox", "kernelagent-python3")):
            workspace = tmp / f"raw-{variant}"
            workspace.mkdir()
            km = (
                sandboxed_kernel()
                if variant == "raw_sandbox"
                else AsyncKernelManager(kernel_name=name)
            )
            await km.start_kernel(cwd=str(workspace), stderr=subprocess.DEVNULL)
            client = km.client()
            client.start_channels()
            managers.append((km, client))
            await client.wait_for_ready(timeout=TIMEOUT)
            if variant == "raw_sandbox":
                await as_the_server_sets_it_up(client)
            runners[variant] = lambda client=client: raw_one_plus_one(client)
        await servers["kernelagent"].pool_filled()
        for run in runners.values():
            for _ in range(WARMUP):
                await run()
        results: dict[str, list[float]] = {variant: [] for variant in runners}
        for _ in range(blocks):  # interleaved blocks: machine noise hits every variant alike
            for variant, run in runners.items():
                owner = servers.get(variant.removesuffix("_http"))
                with owner.blamed() if owner else contextlib.nullcontext():
                    for _ in range(math.ceil(runs / blocks)):
                        results[variant].append(await run())
        return results
    finally:
        if session_id is not None:
            with contextlib.suppress(Exception):
                await http.call("DELETE", f"/api/v1/sessions/{session_id}", expect=204)
        http.close()
        for srv, kernel_id, ws in sockets:
            ws.close()
            with contextlib.suppress(Exception):
                await srv.delete(kernel_id)
        for km, client in managers:
            client.stop_channels()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(km.shutdown_kernel(now=True), 30)


async def bench_create(servers: dict[str, Server], runs: int) -> dict[str, list[float]]:
    """Per server: ``post`` (the answer), ``open`` (+ WebSocket open), ``ready`` (+ kernel_info)."""
    results: dict[str, list[float]] = {}
    for i in range(runs + 1):  # round 0 warms up every server
        for variant, srv in servers.items():
            await servers["kernelagent"].pool_filled()  # nothing starting in the background
            await asyncio.sleep(0.5)
            with srv.blamed():
                started = time.perf_counter()
                kernel_id = await srv.create()
                posted = time.perf_counter()
                ws = await srv.channels(kernel_id)
                opened = time.perf_counter()
                await request(ws, "kernel_info_request", {}, idle=False)
                ready = time.perf_counter()
                ws.close()
                await srv.delete(kernel_id)
            if i:
                for phase, t in (("post", posted), ("open", opened), ("ready", ready)):
                    results.setdefault(f"{variant}_{phase}", []).append(t - started)
    return results


async def bench_arrivals(
    servers: dict[str, Server], runs: int, burst: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Per server: ``sequential`` (``runs`` creates one after another), ``burst`` (``burst``
    creates at once); every kernel is kept until its phase ends, as arriving users keep theirs.
    Also kernelagent's pool target as each phase begins."""
    results: dict[str, list[float]] = {}
    pools: dict[str, int] = {}

    async def arrive(srv: Server, kept: list[tuple[str, WebSocketClientConnection]]) -> float:
        started = time.perf_counter()
        kernel_id = await srv.create()
        ws = await srv.channels(kernel_id)
        await request(ws, "kernel_info_request", {}, idle=False)
        kept.append((kernel_id, ws))
        return time.perf_counter() - started

    for variant, srv in servers.items():
        for phase in ("sequential", "burst"):
            for other in servers.values():  # no pool refilling in the background
                target = await other.pool_filled()
                if other is srv and target:
                    pools[f"{variant}_{phase}"] = target
            await asyncio.sleep(1)
            kept: list[tuple[str, WebSocketClientConnection]] = []
            try:
                with srv.blamed():
                    if phase == "sequential":
                        times = [await arrive(srv, kept) for _ in range(runs)]
                    else:
                        arrivals = (arrive(srv, kept) for _ in range(burst))
                        times = list(await asyncio.gather(*arrivals))
            finally:
                for kernel_id, ws in kept:
                    ws.close()
                    with contextlib.suppress(Exception):
                        await srv.delete(kernel_id)
            results[f"{variant}_{phase}"] = times
    return results, pools


def kernelagent_server(
    tmp: Path, pool_size: int = 2, argv: list[str] | None = None, name: str = "kernelagent"
) -> Server:
    """``kernelagent serve`` with embedded defaults in ``tmp``, unlimited as Kernel Gateway."""
    port = unused_port()
    env = {
        "KERNELAGENT_DATA_DIR": str(tmp / "kernelagent-data"),
        "KERNELAGENT_TOKEN": TOKEN,
        "KERNELAGENT_PORT": str(port),
        "KERNELAGENT_POOL_SIZE": str(pool_size),
        "KERNELAGENT_MAX_KERNELS_PER_USER": "0",  # as Kernel Gateway: no limit
        "KERNELAGENT_MAX_KERNELS": "0",
    }
    if name.endswith("fixed_pool"):
        env["KERNELAGENT_POOL_MAX"] = str(pool_size)
    argv = argv or [str(Path(sys.executable).parent / "kernelagent"), "serve"]
    return Server(name, argv, env, tmp, port)


def kernel_gateway(name: str, tmp: Path, *flags: str) -> Server:
    port = unused_port()
    argv = [
        sys.executable,
        *(["-c", KG_NODELAY] if name.endswith("nodelay") else ["-m", "kernel_gateway"]),
        "--KernelGatewayApp.ip=127.0.0.1",
        f"--KernelGatewayApp.port={port}",
        f"--KernelGatewayApp.auth_token={TOKEN}",
        *flags,
    ]
    return Server(name, argv, {"JUPYTER_RUNTIME_DIR": str(tmp / name / "runtime")}, tmp, port)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12, help="kernel creations per server")
    parser.add_argument("--rtt-runs", type=int, default=200, help="1+1 round trips per variant")
    parser.add_argument("--pool-size", type=int, default=2, help="kernelagent pool = KG prespawn")
    parser.add_argument("--burst", type=int, default=16, help="kernel creations at once")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    n = args.pool_size

    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with (
        tempfile.TemporaryDirectory(prefix="kernelagent-bench-") as tmp_name,
        tempfile.TemporaryDirectory(prefix="kernelagent-bench-", dir=shm) as ipython_dir,
    ):
        os.environ["IPYTHONDIR"] = ipython_dir  # inherited by Kernel Gateway and its kernels
        tmp = Path(tmp_name)
        servers = {
            "kernelagent": kernelagent_server(tmp, n),
            "kernelagent_fixed_pool": kernelagent_server(tmp, n, name="kernelagent_fixed_pool"),
            "kernel_gateway": kernel_gateway("kernel_gateway", tmp),
            "kernel_gateway_nodelay": kernel_gateway("kernel_gateway_nodelay", tmp),
            "kernel_gateway_prespawn": kernel_gateway(
                "kernel_gateway_prespawn", tmp, f"--KernelGatewayApp.prespawn_count={n}"
            ),
        }
        try:
            for srv in servers.values():
                await srv.start()
            await servers["kernelagent"].pool_filled()
            rtt_servers = ("kernelagent", "kernel_gateway", "kernel_gateway_nodelay")
            rtt = await bench_rtt({k: servers[k] for k in rtt_servers}, tmp, args.rtt_runs)
            create_servers = ("kernelagent", "kernel_gateway", "kernel_gateway_prespawn")
            create = await bench_create({k: servers[k] for k in create_servers}, args.runs)
            arrival_servers = ("kernelagent", "kernelagent_fixed_pool", "kernel_gateway")
            arrivals, pools = await bench_arrivals(
                {k: servers[k] for k in arrival_servers}, args.runs, args.burst
            )
        finally:
            for srv in servers.values():
                await srv.stop()

    r = {k: stats(v) for k, v in rtt.items()}
    c = {k: stats(v) for k, v in create.items()}
    a = {k: stats(v) for k, v in arrivals.items()}

    def p50_ratio(table: dict[str, dict[str, float]], a: str, b: str) -> float:
        return ratio(table[a]["p50_ms"], table[b]["p50_ms"])

    ratios = {
        "rtt_ka_kg_ratio_p50": p50_ratio(r, "kernelagent", "kernel_gateway"),
        "rtt_ka_kg_nodelay_ratio_p50": p50_ratio(r, "kernelagent", "kernel_gateway_nodelay"),
        "rtt_ka_raw_sandbox_ratio_p50": p50_ratio(r, "kernelagent", "raw_sandbox"),
        "rtt_ka_http_raw_sandbox_ratio_p50": p50_ratio(r, "kernelagent_http", "raw_sandbox"),
        "rtt_ka_raw_plain_ratio_p50": p50_ratio(r, "kernelagent", "raw_plain"),
        "rtt_kg_nodelay_raw_plain_ratio_p50": p50_ratio(r, "kernel_gateway_nodelay", "raw_plain"),
        "create_kg_ka_speedup_p50": p50_ratio(c, "kernel_gateway_ready", "kernelagent_ready"),
        "create_kg_prespawn_ka_speedup_p50": p50_ratio(
            c, "kernel_gateway_prespawn_ready", "kernelagent_ready"
        ),
    }
    targets = {
        name: ratios[name] <= TARGETS[name]
        for name in (
            "rtt_ka_kg_ratio_p50",
            "rtt_ka_kg_nodelay_ratio_p50",
            "rtt_ka_http_raw_sandbox_ratio_p50",
        )
    }
    targets["create_kg_ka_speedup_p50"] = (
        ratios["create_kg_ka_speedup_p50"] >= TARGETS["create_kg_ka_speedup_p50"]
    )
    versions = {p: metadata.version(p) for p in VERSIONS}
    ratios["arrivals_sequential_ka_kg_ratio_p50"] = p50_ratio(
        a, "kernelagent_sequential", "kernel_gateway_sequential"
    )
    ratios["arrivals_burst_ka_kg_ratio_p50"] = p50_ratio(
        a, "kernelagent_burst", "kernel_gateway_burst"
    )
    for phase in ("sequential", "burst"):
        ratios[f"arrivals_{phase}_ka_fixed_pool_kg_ratio_p50"] = p50_ratio(
            a, f"kernelagent_fixed_pool_{phase}", f"kernel_gateway_{phase}"
        )
    targets["arrivals_sequential_ka_p50_ms"] = (
        a["kernelagent_sequential"]["p50_ms"] <= TARGETS["arrivals_sequential_ka_p50_ms"]
    )
    targets["arrivals_burst_ka_kg_ratio_p50"] = (
        ratios["arrivals_burst_ka_kg_ratio_p50"] <= TARGETS["arrivals_burst_ka_kg_ratio_p50"]
    )
    results = {"rtt_1plus1": r, "create": c, "arrivals": a, "ratios": ratios, "targets": targets}
    results["arrivals_pool_target"] = pools
    results["setup"] = {"pool_size": n, "prespawn_count": n, "versions": versions}

    def ms(value: float) -> str:
        return f"{value:.1f} ms"

    def cells(s: dict[str, float]) -> tuple[str, ...]:
        return (str(s["n"]), *(ms(s[k]) for k in ("p50_ms", "p95_ms", "mean_ms")))

    def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        for row in (head, ("---",) * len(head), *rows):
            print("| " + " | ".join(row) + " |")
        print()

    table(
        ("`1+1` round trip (execute_request → reply + idle)", "n", "p50", "p95", "mean"),
        [
            ("kernelagent, channels WebSocket (sandboxed, recorded)", *cells(r["kernelagent"])),
            ("kernelagent, `POST …/cells` (sandboxed, recorded)", *cells(r["kernelagent_http"])),
            ("Kernel Gateway, channels WebSocket", *cells(r["kernel_gateway"])),
            ("Kernel Gateway, TCP_NODELAY patched in", *cells(r["kernel_gateway_nodelay"])),
            ("raw jupyter_client, plain `python3`", *cells(r["raw_plain"])),
            ("raw jupyter_client, sandboxed `kernelagent-python3`", *cells(r["raw_sandbox"])),
        ],
    )
    head = ("create → ready (`POST /api/kernels` → `kernel_info_reply`)", "n", "p50", "p95")
    table(
        (*head, "mean", "`POST` p50", "+ WebSocket open p50"),
        [
            (
                label,
                *cells(c[f"{k}_ready"]),
                *(ms(c[f"{k}_{p}"]["p50_ms"]) for p in ("post", "open")),
            )
            for label, k in (
                (f"kernelagent, warm pool of {n}", "kernelagent"),
                ("Kernel Gateway, default", "kernel_gateway"),
                (f"Kernel Gateway, `prespawn_count={n}`", "kernel_gateway_prespawn"),
            )
        ],
    )
    table(
        ("arrivals, create → ready, each kept", "n", "p50", "p95", "mean"),
        [
            row
            for phase, count in (("sequential", f"{args.runs} one after another"),
                                 ("burst", f"{args.burst} at once"))
            for row in (
                (f"kernelagent, {count}, pool of {pools[f'kernelagent_{phase}']} "
                 "(grown by the arrivals before)", *cells(a[f"kernelagent_{phase}"])),
                (f"kernelagent, {count}, pool fixed at {n}",
                 *cells(a[f"kernelagent_fixed_pool_{phase}"])),
                (f"Kernel Gateway, {count}", *cells(a[f"kernel_gateway_{phase}"])),
            )
        ],
    )  # fmt: skip
    mark = {True: "met", False: "MISSED"}
    print(
        f"round trip p50, kernelagent/KG: {ratios['rtt_ka_kg_ratio_p50']:.2f}× "
        f"(target ≤ {TARGETS['rtt_ka_kg_ratio_p50']:g}×, {mark[targets['rtt_ka_kg_ratio_p50']]}); "
        f"kernelagent/KG with TCP_NODELAY {ratios['rtt_ka_kg_nodelay_ratio_p50']:.2f}× "
        f"(target ≤ {TARGETS['rtt_ka_kg_nodelay_ratio_p50']:g}×, "
        f"{mark[targets['rtt_ka_kg_nodelay_ratio_p50']]}); "
        f"kernelagent/raw sandboxed {ratios['rtt_ka_raw_sandbox_ratio_p50']:.2f}×; "
        f"POST …/cells/raw sandboxed {ratios['rtt_ka_http_raw_sandbox_ratio_p50']:.2f}× "
        f"(target ≤ {TARGETS['rtt_ka_http_raw_sandbox_ratio_p50']:g}×, "
        f"{mark[targets['rtt_ka_http_raw_sandbox_ratio_p50']]}); "
        f"kernelagent/raw plain {ratios['rtt_ka_raw_plain_ratio_p50']:.2f}×"
    )
    print(
        f"create → ready p50, KG/kernelagent: {ratios['create_kg_ka_speedup_p50']:.1f}× "
        f"(target ≥ {TARGETS['create_kg_ka_speedup_p50']:g}×, "
        f"{mark[targets['create_kg_ka_speedup_p50']]}); "
        f"KG prespawn/kernelagent {ratios['create_kg_prespawn_ka_speedup_p50']:.1f}×"
    )
    sequential = a["kernelagent_sequential"]["p50_ms"]
    print(
        f"arrivals p50: kernelagent {sequential:.1f} ms one after another (target ≤ "
        f"{TARGETS['arrivals_sequential_ka_p50_ms']:g} ms, "
        f"{mark[targets['arrivals_sequential_ka_p50_ms']]}); kernelagent/KG "
        f"{ratios['arrivals_sequential_ka_kg_ratio_p50']:.2f}× one after another, "
        f"{ratios['arrivals_burst_ka_kg_ratio_p50']:.2f}× at once (target ≤ "
        f"{TARGETS['arrivals_burst_ka_kg_ratio_p50']:g}×, "
        f"{mark[targets['arrivals_burst_ka_kg_ratio_p50']]}); with a fixed pool "
        f"{ratios['arrivals_sequential_ka_fixed_pool_kg_ratio_p50']:.2f}× and "
        f"{ratios['arrivals_burst_ka_fixed_pool_kg_ratio_p50']:.2f}×"
    )
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
