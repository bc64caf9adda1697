"""Sessions over HTTP: create → ready (pooled vs cold), ``1+1`` over HTTP vs raw, save cost vs size.

Run: ``.venv/bin/python bench/sessions.py [--runs 20] [--json bench/sessions.json]``

Measured in one run against the real server (``KernelAgentApp`` on unused loopback ports, embedded
defaults: SQLite, local storage and in-process locks in a temporary data dir), called with a
keep-alive HTTP/1.1 client from the same process:

1. session create → ready, ``POST /api/v1/sessions`` until the answer (the kernel is ready when it
   is handed out) and until the answer of a first ``POST …/cells {"code": "1+1"}``, on a server
   with a warm pool (``pool_size=2``, no pre-imports; the pool is full before each sample) and on
   one without (``pool_size=0``), interleaved; each session is deleted after its sample;
2. ``1+1`` round trip: ``POST …/cells`` over HTTP vs the raw jupyter_client round trip
   (``execute_request`` → ``status: idle``) on a sandboxed kernel started directly with
   ``AsyncKernelManager(kernel_name="kernelagent-python3")`` with kernelagent's kernel-side
   extension loaded, as the server loads it in its own kernels, in interleaved blocks;
3. notebook growth: 500 ``1+1`` cells in one session; per cell, the server-side time spent saving
   the cell record (``db.cells.append_next`` + ``db.cells.update``, timed by wrappers on the
   instance)
   and the HTTP round trip, cells 1–50 vs 451–500, plus where the time of a cell goes.

Prints a table and JSON (medians, p95, ratios). This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from common import (
    Client,
    as_the_server_sets_it_up,
    one_plus_one,
    sandboxed_kernel,
    summary,
)  # bench/ is on sys.path when run as a script
from jupyter_client import AsyncKernelClient

from kernelagent.app import KernelAgentApp
from kernelagent.config import Settings

TARGETS = {
    "pooled_create_p50_ms": 50.0,
    "http_raw_ratio_p50": 1.3,  # the server's part of a cell: under a third of the kernel's
    "save_growth_ratio_p50": 1.5,  # "flat": 10× the cells must not cost more to save
}
TOKEN = "kernelagent-bench-token"
REQUEST_TIMEOUT = 60.0
WARMUP = 3  # round trips dropped at the start of each block


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, app: KernelAgentApp, client: Client):
        self.app = app
        self.client = client

    @property
    def services(self) -> Any:
        return self.app.services

    async def create(self, title: str) -> str:
        session = await self.client.call("POST", "/api/v1/sessions", {"title": title}, expect=201)
        return str(session["id"])

    async def run(self, session_id: str, code: str = "1+1") -> dict[str, Any]:
        return await self.client.run_cell(session_id, code)

    async def delete(self, session_id: str) -> None:
        await self.client.call("DELETE", f"/api/v1/sessions/{session_id}", expect=204)

    async def pool_filled(self) -> None:
        if self.app.settings.pool_size:
            await self.services.pool.wait_filled(timeout=120)


@contextlib.asynccontextmanager
async def server(tmp: Path, name: str, pool_size: int, **overrides: Any) -> AsyncIterator[Server]:
    port = unused_port()
    settings = Settings(
        data_dir=tmp / name,
        port=port,
        pool_size=pool_size,
        pool_preimport="",
        token=TOKEN,
        max_kernels_per_user=0,  # bursts of sessions are measured, not limited
        max_kernels=0,
        **overrides,
    )
    app = KernelAgentApp(settings)
    client = Client(port, TOKEN)
    try:
        await asyncio.wait_for(app.start(), 120)
        await app.owner_token()
        yield Server(app, client)
    finally:
        client.close()
        await asyncio.wait_for(app.stop(), 120)


async def bench_create(pooled: Server, cold: Server, runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = defaultdict(list)
    for i in range(runs + 1):  # round 0 warms up both servers
        for variant, srv in (("pooled", pooled), ("cold", cold)):
            await pooled.pool_filled()  # nothing starting in the background when timing begins
            started = time.perf_counter()
            session_id = await srv.create(f"{variant} {i}")
            created = time.perf_counter()
            await srv.run(session_id)
            done = time.perf_counter()
            await srv.delete(session_id)
            if i:
                results[f"{variant}_create"].append(created - started)
                results[f"{variant}_first_result"].append(done - started)
                results[f"{variant}_delete"].append(time.perf_counter() - done)
    return dict(results)


async def bench_rtt(srv: Server, tmp: Path, runs: int, blocks: int = 8) -> dict[str, list[float]]:
    workspace = tmp / "raw-workspace"
    workspace.mkdir()
    km = sandboxed_kernel()
    client: AsyncKernelClient | None = None
    session_id: str | None = None
    results: dict[str, list[float]] = {"http": [], "raw": []}
    try:
        await asyncio.wait_for(km.start_kernel(cwd=str(workspace), stderr=subprocess.DEVNULL), 60)
        client = km.client()
        client.start_channels()
        await client.wait_for_ready(timeout=60)
        await as_the_server_sets_it_up(client)
        session_id = await srv.create("rtt")
        await srv.pool_filled()
        per_block = math.ceil(runs / blocks)
        for _ in range(blocks):  # interleaved blocks: machine noise hits both alike
            for j in range(per_block + WARMUP):
                started = time.perf_counter()
                await srv.run(session_id)
                if j >= WARMUP:
                    results["http"].append(time.perf_counter() - started)
            for j in range(per_block + WARMUP):
                elapsed = await one_plus_one(client)
                if j >= WARMUP:
                    results["raw"].append(elapsed)
    finally:
        if client is not None:
            client.stop_channels()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(km.shutdown_kernel(now=True), 30)
        if session_id is not None:
            await srv.delete(session_id)
    return results


class Probe:
    """Per-cell timings of server-side calls, by wrapping bound methods on service instances.

    Requests are sent one at a time, so every call made while cell ``n`` is in flight is cell
    ``n``'s. Wrappers are instance attributes that shadow the class's methods; ``restore()``
    deletes them again.
    """

    def __init__(self) -> None:
        self.cell = -1
        self.in_execute = False
        self.times: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self._patched: list[tuple[Any, str]] = []

    def record(self, name: str, elapsed: float) -> None:
        if self.cell >= 0:
            self.times[name][self.cell] += elapsed

    def wrap(self, owner: Any, attr: str, name: str, flag: bool = False) -> None:
        original = getattr(owner, attr)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            if flag:
                self.in_execute = True
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.record(name, time.perf_counter() - started)
                if flag:
                    self.in_execute = False

        self._set(owner, attr, timed)

    def wrap_sync(self, owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.record(name, time.perf_counter() - started)

        self._set(owner, attr, timed)

    def wrap_inside_execute(self, owner: Any, attr: str, name: str) -> None:
        """Time only the calls made by ``ExecutionService.execute`` (the handler makes others)."""
        original = getattr(owner, attr)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.in_execute:
                return await original(*args, **kwargs)
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.record(name, time.perf_counter() - started)

        self._set(owner, attr, timed)

    def wrap_lock(self, locks: Any) -> None:
        """Time from asking for the session lock until it is held."""
        original = locks.hold

        @contextlib.asynccontextmanager
        async def hold(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            async with original(*args, **kwargs) as token:
                self.record("lock acquire", time.perf_counter() - started)
                yield token

        self._set(locks, "hold", hold)

    def _set(self, owner: Any, attr: str, value: Callable[..., Any]) -> None:
        setattr(owner, attr, value)
        self._patched.append((owner, attr))

    def restore(self) -> None:
        for owner, attr in reversed(self._patched):
            with contextlib.suppress(AttributeError):
                delattr(owner, attr)
        self._patched.clear()

    def samples(self, name: str, cells: range) -> list[float]:
        per_cell = self.times.get(name, {})
        return [per_cell.get(i, 0.0) for i in cells]


# stages of one ``POST …/cells``; the handler-level ones and those inside ``execute`` don't overlap
HANDLER_STAGES = ("auth", "sessions.get", "execute", "notebooks.schedule_save")
EXECUTE_STAGES = (
    "lock acquire",
    "db.sessions.get",
    "supervisor.ensure",
    "db.cells.append_next",
    "kernel: execute → idle + reply",
    "files.store_artifacts",
    "db.cells.update",
    "db.sessions.update",
    "files.mirror",
)


def install_probe(s: Any) -> Probe:
    probe = Probe()
    probe.wrap(s.auth, "authenticate", "auth")
    probe.wrap(s.sessions, "get", "sessions.get")
    probe.wrap(s.execution, "execute", "execute", flag=True)
    probe.wrap_sync(s.notebooks, "schedule_save", "notebooks.schedule_save")
    probe.wrap_lock(s.locks)
    probe.wrap_inside_execute(s.db.sessions, "get", "db.sessions.get")
    probe.wrap(s.supervisor, "ensure", "supervisor.ensure")
    probe.wrap(s.db.cells, "append_next", "db.cells.append_next")
    probe.wrap(s.execution, "_run", "kernel: execute → idle + reply")
    probe.wrap(s.files, "store_artifacts", "files.store_artifacts")
    probe.wrap(s.db.cells, "update", "db.cells.update")
    probe.wrap_inside_execute(s.db.sessions, "update", "db.sessions.update")
    probe.wrap(s.files, "mirror", "files.mirror")
    return probe


async def bench_growth(srv: Server, cells: int, edge: int) -> dict[str, Any]:
    """One session of ``cells`` cells; its last ``edge`` alternate with a fresh session's first.

    The fresh (control) session tells growth with the notebook apart from drift over the run:
    its cells are saved at the same moments as the long session's last ones.
    """
    await srv.pool_filled()
    session_id = await srv.create("growth")
    control_id = await srv.create("growth control")
    probe = install_probe(srv.services)
    rtt: dict[int, float] = {}
    try:
        for i in range(cells):
            if i >= cells - edge:
                probe.cell = i + edge  # control cells are numbered cells … cells + edge - 1
                started = time.perf_counter()
                await srv.run(control_id)
                rtt[probe.cell] = time.perf_counter() - started
            probe.cell = i
            started = time.perf_counter()
            await srv.run(session_id)
            rtt[i] = time.perf_counter() - started
        probe.cell = -1
    finally:
        probe.restore()
        await srv.delete(session_id)
        await srv.delete(control_id)

    first, last, control = range(edge), range(cells - edge, cells), range(cells, cells + edge)
    save = {
        i: probe.times["db.cells.append_next"].get(i, 0.0)
        + probe.times["db.cells.update"].get(i, 0.0)
        for i in range(cells + edge)
    }
    result: dict[str, Any] = {
        "cells": cells,
        "save": {
            "first": summary([save[i] for i in first]),
            "last": summary([save[i] for i in last]),
            "control": summary([save[i] for i in control]),
        },
        "rtt": {
            "first": summary([rtt[i] for i in first]),
            "last": summary([rtt[i] for i in last]),
            "control": summary([rtt[i] for i in control]),
        },
        "stages": {},
    }
    ranges = {"first": first, "last": last, "control": control}
    for name in (*HANDLER_STAGES, *EXECUTE_STAGES):
        result["stages"][name] = {
            key: summary(probe.samples(name, cr)) for key, cr in ranges.items()
        }
    residuals = (
        ("rest of the request (tornado, HTTP, JSON, client)", None, HANDLER_STAGES),
        ("rest of execute", "execute", EXECUTE_STAGES),
    )
    for label, total, parts in residuals:
        rest = {}
        for key, cr in ranges.items():
            totals = [rtt[i] for i in cr] if total is None else probe.samples(total, cr)
            sums = [sum(probe.times[p].get(i, 0.0) for p in parts) for i in cr]
            rest[key] = summary([t - s for t, s in zip(totals, sums, strict=True)])
        result["stages"][label] = rest
    return result


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else math.inf


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="session creations per variant")
    parser.add_argument(
        "--rtt-runs",
        type=int,
        default=800,
        help="1+1 round trips each, HTTP and raw (the ratio's noise)",
    )
    parser.add_argument("--cells", type=int, default=500, help="cells of the growth session")
    parser.add_argument("--edge", type=int, default=50, help="cells compared at each end")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.disable(logging.INFO)

    with tempfile.TemporaryDirectory(prefix="kernelagent-bench-") as tmp:
        async with (
            server(Path(tmp), "pooled", pool_size=2) as pooled,
            server(Path(tmp), "cold", pool_size=0) as cold,
        ):
            await pooled.pool_filled()
            create = await bench_create(pooled, cold, args.runs)
            await pooled.pool_filled()  # its refill after the last creation: not during rtt
            rtt = await bench_rtt(cold, Path(tmp), args.rtt_runs)
            growth = await bench_growth(cold, args.cells, args.edge)

    results: dict[str, Any] = {
        "create": {k: summary(v) for k, v in create.items()},
        "rtt_1plus1": {k: summary(v) for k, v in rtt.items()},
        "growth": growth,
    }
    pooled_create = results["create"]["pooled_create"]["p50_ms"]
    rtts = results["rtt_1plus1"]
    http_raw = ratio(rtts["http"]["p50_ms"], rtts["raw"]["p50_ms"])
    save_growth = ratio(growth["save"]["last"]["p50_ms"], growth["save"]["first"]["p50_ms"])
    rtt_growth = ratio(growth["rtt"]["last"]["p50_ms"], growth["rtt"]["first"]["p50_ms"])
    save_control = ratio(growth["save"]["last"]["p50_ms"], growth["save"]["control"]["p50_ms"])
    results["ratios"] = {
        "http_raw_ratio_p50": http_raw,
        "save_growth_ratio_p50": save_growth,
        "rtt_growth_ratio_p50": rtt_growth,
        "save_last_vs_control_ratio_p50": save_control,
    }
    results["targets"] = {
        "pooled_create_p50_ms": pooled_create <= TARGETS["pooled_create_p50_ms"],
        "http_raw_ratio_p50": http_raw <= TARGETS["http_raw_ratio_p50"],
        "save_growth_ratio_p50": save_growth <= TARGETS["save_growth_ratio_p50"],
    }

    c, r, e = results["create"], results["rtt_1plus1"], args.edge
    n = args.cells
    rows = [
        ("create → ready, pooled (POST /sessions)", c["pooled_create"]),
        ("create → first 1+1 result, pooled", c["pooled_first_result"]),
        ("create → ready, cold (pool_size=0)", c["cold_create"]),
        ("create → first 1+1 result, cold", c["cold_first_result"]),
        ("DELETE session, pooled", c["pooled_delete"]),
        ("DELETE session, cold", c["cold_delete"]),
        ("1+1 over HTTP (POST …/cells)", r["http"]),
        ("1+1 raw jupyter_client (execute → idle)", r["raw"]),
        (f"cell record save, cells 1–{e}", growth["save"]["first"]),
        (f"cell record save, cells {n - e + 1}–{n}", growth["save"]["last"]),
        (f"cell record save, fresh session 1–{e} (control)", growth["save"]["control"]),
        (f"1+1 over HTTP, cells 1–{e}", growth["rtt"]["first"]),
        (f"1+1 over HTTP, cells {n - e + 1}–{n}", growth["rtt"]["last"]),
        (f"1+1 over HTTP, fresh session 1–{e} (control)", growth["rtt"]["control"]),
    ]
    print(f"{'metric':52} {'n':>4} {'p50 ms':>9} {'p95 ms':>9}")
    for label, s in rows:
        print(f"{label:52} {s['n']:>4} {s['p50_ms']:>9.2f} {s['p95_ms']:>9.2f}")
    mark = {True: "ok", False: "MISSED"}
    t = results["targets"]
    print(
        f"pooled create → ready p50:       {pooled_create:.2f} ms "
        f"(target ≤ {TARGETS['pooled_create_p50_ms']:g} ms) {mark[t['pooled_create_p50_ms']]}"
    )
    print(
        f"1+1 HTTP/raw p50:                {http_raw:.2f}x "
        f"(target ≤ {TARGETS['http_raw_ratio_p50']:g}x) {mark[t['http_raw_ratio_p50']]}"
    )
    print(
        f"save p50, last/first {e} cells:  {save_growth:.2f}x "
        f"(target flat, ≤ {TARGETS['save_growth_ratio_p50']:g}x) "
        f"{mark[t['save_growth_ratio_p50']]}"
    )
    print(f"save p50, last {e}/control:      {save_control:.2f}x (same moments, fresh session)")
    print(f"HTTP p50, last/first {e} cells:  {rtt_growth:.2f}x")
    print("\nwhere the time of a 1+1 cell goes, p50 ms (timed in-process):")
    columns = (f"1–{e}", f"{n - e + 1}–{n}", "control")
    print(f"  {'stage':52} {columns[0]:>8} {columns[1]:>8} {columns[2]:>8}")
    for name, s in growth["stages"].items():
        indent = "    " if name in EXECUTE_STAGES or name == "rest of execute" else "  "
        width = 54 - len(indent)
        cells_ms = " ".join(f"{s[k]['p50_ms']:>8.2f}" for k in ("first", "last", "control"))
        print(f"{indent}{name:{width}} {cells_ms}")
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
