"""Namespace snapshots: what they cost per cell, and how fast a kernel comes back with them.

Run: ``.venv/bin/python bench/namespaces.py [--json bench/namespaces.json]`` (about 2 minutes)

Measured against the real server (``KernelAgentApp`` in-process on an unused loopback port,
embedded defaults: SQLite, local storage, a warm pool of 2 sandboxed kernels without
pre-imports), over HTTP with the keep-alive client of ``bench/sessions.py``:

1. cost per cell: ``POST …/cells`` round trips of cheap cells (``x{i} = {i}``) and of cells
   computing 0.1 s (a busy loop), with snapshots on and off (two servers, interleaved); and the
   kernel's own time per capture (the cells' ``state.ms``).
2. storage per cell: bytes a cheap cell adds, and what a cell that changes one 8 MB array adds.
3. wake: a session holding a 100 MB DataFrame (and a cheap history) is culled, then its next
   cell is timed until it answers (a new kernel from the pool, the snapshot restored).

Prints Markdown tables and writes JSON. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sessions import Server, server  # bench/ is on sys.path as a script

BUSY = (
    "import time as _time\n_t0 = _time.perf_counter()\n"
    "while _time.perf_counter() - _t0 < 0.1:\n    pass\ny{i} = {i}"
)
FRAME = (
    "import numpy as np, pandas as pd\n"
    "df = pd.DataFrame(np.random.default_rng(0).random((1_562_500, 8)), columns=list('abcdefgh'))"
)


@contextlib.asynccontextmanager
async def serving(tmp: Path, name: str, snapshots: bool):
    """A server with a warm pool of 2, snapshots on or off, no idle culling of its own."""
    async with server(tmp, name, 2, state_snapshots=snapshots, kernel_idle_ttl=0) as srv:
        await srv.pool_filled()
        yield srv


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed_cells(srv: Server, sid: str, template: str, n: int, start: int) -> list[float]:
    took = []
    for i in range(start, start + n):
        t0 = time.perf_counter()
        await srv.run(sid, template.format(i=i))
        took.append((time.perf_counter() - t0) * 1000)
    return took


async def states(srv: Server, sid: str) -> list[dict[str, Any]]:
    await srv.services.supervisor.namespaces.settle(sid)
    cells = await srv.services.db.cells.list(sid)
    return [c.metadata["state"] for c in cells if isinstance(c.metadata.get("state"), dict)]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200, help="cheap cells per round")
    parser.add_argument("--busy", type=int, default=20, help="0.1 s cells per round")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            serving(Path(tmp), "on", True) as on,
            serving(Path(tmp), "off", False) as off,
        ):
            sids = {"on": await on.create("on"), "off": await off.create("off")}
            rtt: dict[str, dict[str, list[float]]] = {"on": {}, "off": {}}
            for kind, template, n in (
                ("cheap", "x{i} = {i}", args.cells),
                ("busy", BUSY, args.busy),
            ):
                for name, srv in (("off", off), ("on", on), ("off", off), ("on", on)):
                    start = len(rtt[name].get(kind, []))
                    took = await timed_cells(srv, sids[name], template, n // 2, start)
                    rtt[name].setdefault(kind, []).extend(took)
            kept = await states(on, sids["on"])
            cheap_ms = [s["ms"] for s in kept[: args.cells]]
            busy_ms = [s["ms"] for s in kept[args.cells :]]
            cheap_bytes = [s["bytes"] for s in kept[: args.cells]]
            results["cost"] = {
                kind: {
                    "p50_on_ms": statistics.median(rtt["on"][kind]),
                    "p50_off_ms": statistics.median(rtt["off"][kind]),
                    "p95_on_ms": p(rtt["on"][kind], 0.95),
                    "p95_off_ms": p(rtt["off"][kind], 0.95),
                }
                for kind in ("cheap", "busy")
            }
            results["capture_ms"] = {
                "cheap_p50": statistics.median(cheap_ms),
                "cheap_p95": p(cheap_ms, 0.95),
                "busy_p50": statistics.median(busy_ms),
            }
            results["bytes_per_cheap_cell_p50"] = statistics.median(cheap_bytes)

            sid = await on.create("array")
            await on.run(sid, "import numpy as np\na = np.zeros(1_000_000)\nb = 1")
            await on.run(sid, "a[0] = 1")
            await on.run(sid, "b = 2")
            added = [s["bytes"] for s in await states(on, sid)]
            results["bytes_array_cells"] = added

            sid = await on.create("wake")
            for i in range(20):
                await on.run(sid, f"z{i} = {i}")
            t0 = time.perf_counter()
            await on.run(sid, FRAME)
            made_s = time.perf_counter() - t0
            await on.run(sid, "int(df.memory_usage().sum())")
            frame = (await states(on, sid))[-2]
            supervisor = on.services.supervisor
            assert sid in await supervisor.cull_idle(ttl=0)
            await on.pool_filled()
            t0 = time.perf_counter()
            answer = await on.run(sid, "round(float(df.a.sum()))")
            wake_s = time.perf_counter() - t0
            outputs = answer["cell"]["outputs"]
            results["wake"] = {
                "frame_bytes": frame["bytes"],
                "make_frame_cell_s": made_s,
                "capture_ms": frame["ms"],
                "wake_s": wake_s,
                "answer": outputs[0]["data"]["text/plain"] if outputs else None,
            }
    cost = results["cost"]
    print("| cells, POST …/cells p50 (p95) | snapshots off | snapshots on |")
    print("| --- | --- | --- |")
    for kind, label in (("cheap", "cheap (`x{i} = {i}`)"), ("busy", "computing 0.1 s")):
        c = cost[kind]
        print(
            f"| {label} | {c['p50_off_ms']:.1f} ms ({c['p95_off_ms']:.1f}) | "
            f"{c['p50_on_ms']:.1f} ms ({c['p95_on_ms']:.1f}) |"
        )
    cap = results["capture_ms"]
    print(
        f"\ncapture in the kernel: cheap p50 {cap['cheap_p50']:.2f} ms (p95 "
        f"{cap['cheap_p95']:.2f}), 0.1 s cells p50 {cap['busy_p50']:.2f} ms; bytes per cheap "
        f"cell p50 {results['bytes_per_cheap_cell_p50']}; an 8 MB array, then a change to it, "
        f"then another variable: {results['bytes_array_cells']} bytes"
    )
    w = results["wake"]
    print(
        f"wake with a {w['frame_bytes'] / 1e6:.0f} MB DataFrame: {w['wake_s']:.2f} s "
        f"(its capture {w['capture_ms']:.0f} ms; the cell that made it "
        f"{w['make_frame_cell_s']:.2f} s)"
    )
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
