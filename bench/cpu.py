"""What the server spends on each cell: CPU per execution and executions per second with 16
busy kernels, kernelagent against Jupyter Kernel Gateway (stock, and with TCP_NODELAY kept on
its WebSockets), one run on one machine; and, with ``--profile``, where kernelagent's time goes.

Run: ``.venv/bin/python bench/cpu.py [--seconds 20] [--kernels 16] [--json bench/cpu.json]
[--profile bench/cpu.prof]`` (about 3 minutes; ``make bench`` runs it)

The servers run as subprocesses on unused loopback ports, as ``bench/gateway.py`` starts them
(``kernelagent serve`` with embedded defaults: every execution is recorded in SQLite, mirrored
and published; Kernel Gateway 3 with the plain ``python3`` kernelspec, recording nothing). For
each server, 16 kernels are created and one client per kernel sends ``1+1`` over the channels
WebSocket, each waiting for the reply and the idle status before the next, for ``--seconds``.
Each round starts once the server is quiet: kernelagent's pool, grown by the 16 arrivals, has
refilled and its kernels' pre-imports are done (``--unsettled``: at once, while it refills).
The servers take turns, twice each (interleaved). Measured: executions per second over all
clients, and the server process's own CPU time (user + system, its kernels not counted, from
``/proc``) divided by the executions. ``--profile`` runs kernelagent under cProfile for its
turns and prints the functions that took the most time.

Prints Markdown tables and writes JSON. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from gateway import Server, kernel_gateway, kernelagent_server, request

ROUNDS = 2


async def busy(
    server: Server, kernels: int, seconds: float, settle: bool = True
) -> dict[str, float]:
    """``kernels`` clients each running ``1+1`` back to back for ``seconds``."""
    try:
        ids = [await server.create() for _ in range(kernels)]
        sockets = [await server.channels(k) for k in ids]
    except Exception as e:
        log = (server.tmp / "server.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{server.name} failed starting its kernels: {e!r}\n{log}") from e
    try:
        for ws in sockets:  # warm: the first cell of a kernel prepares it
            for _ in range(3):
                try:
                    await request(ws, "execute_request", {"code": "1+1", "silent": False}, True)
                except Exception as e:
                    log = (server.tmp / "server.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{server.name} failed warming up: {e!r}\n{log}") from e
        assert server.proc is not None
        process = psutil.Process(server.proc.pid)
        if settle:  # the arrivals grew kernelagent's pool: refilled first
            await server.pool_filled()
            await settled(process)
        done = 0
        stop = time.monotonic() + seconds

        async def client(ws: Any) -> None:
            nonlocal done
            while time.monotonic() < stop:
                await request(ws, "execute_request", {"code": "1+1", "silent": False}, True)
                done += 1

        before, started = process.cpu_times(), time.monotonic()
        await asyncio.gather(*(client(ws) for ws in sockets))
        after, elapsed = process.cpu_times(), time.monotonic() - started
    finally:
        for ws in sockets:
            ws.close()
        for k in ids:
            with contextlib.suppress(Exception):  # a kernel the server lost: the error says
                await server.delete(k)
    cpu = (after.user - before.user) + (after.system - before.system)
    return {
        "executions": done,
        "executions_per_s": round(done / elapsed, 1),
        "cpu_ms_per_execution": round(cpu * 1000 / done, 2),
    }


async def settled(process: psutil.Process, quiet: float = 0.05, most: float = 120) -> None:
    """Until the server and its kernels together use under ``quiet`` of a core (a pooled
    kernel's pre-imports run after it counts as ready)."""

    def tree_cpu() -> float:
        total = 0.0
        for proc in (process, *process.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    deadline = time.monotonic() + most
    before = tree_cpu()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = tree_cpu()
        if now - before < quiet * 0.5:
            return
        before = now


async def busy_retried(
    server: Server, kernels: int, seconds: float, settle: bool
) -> dict[str, float]:
    """``busy``, once more if a kernel failed to start or answer (seen with Kernel Gateway: a
    ``kernel_info_request`` it sent a new kernel went unanswered for its 60 s); said on stderr."""
    try:
        return await busy(server, kernels, seconds, settle)
    except RuntimeError as e:
        print(f"{e.args[0].splitlines()[0]}; running the round again", file=sys.stderr)
        return await busy(server, kernels, seconds, settle)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--kernels", type=int, default=16)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    parser.add_argument("--unsettled", action="store_true", help="measure while pools refill")
    parser.add_argument("--profile", type=Path, help="run kernelagent under cProfile, to here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kernelagent-bench-") as tmp_name:
        tmp = Path(tmp_name)
        argv = None
        if args.profile:
            argv = [sys.executable, "-m", "cProfile", "-o", str(args.profile.resolve()),
                    "-m", "kernelagent", "serve"]  # fmt: skip
        servers = {
            "kernelagent": kernelagent_server(tmp, argv=argv),
            "kernel_gateway": kernel_gateway("kernel_gateway", tmp),
            "kernel_gateway_nodelay": kernel_gateway("kernel_gateway_nodelay", tmp),
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        try:
            for srv in servers.values():
                await srv.start()
            await servers["kernelagent"].pool_filled()
            for _ in range(ROUNDS):
                for name, srv in servers.items():
                    results[name].append(
                        await busy_retried(srv, args.kernels, args.seconds, not args.unsettled)
                    )
        finally:
            for srv in servers.values():
                await srv.stop()

    summary = {
        name: {
            "executions_per_s": [r["executions_per_s"] for r in runs],
            "cpu_ms_per_execution": [r["cpu_ms_per_execution"] for r in runs],
        }
        for name, runs in results.items()
    }
    ka, kg = summary["kernelagent"], summary["kernel_gateway_nodelay"]
    ratios = {
        "cpu_ka_kg_ratio": round(
            min(ka["cpu_ms_per_execution"])
            / min(summary["kernel_gateway"]["cpu_ms_per_execution"]),
            2,
        ),
        "throughput_ka_kg_nodelay_ratio": round(
            max(ka["executions_per_s"]) / max(kg["executions_per_s"]), 2
        ),
    }
    targets = {  # CPU no more than Kernel Gateway's; executions/s no fewer than with NODELAY
        "cpu_ka_kg_ratio": ratios["cpu_ka_kg_ratio"] <= 1.0,
        "throughput_ka_kg_nodelay_ratio": ratios["throughput_ka_kg_nodelay_ratio"] >= 1.0,
    }
    out = {
        "kernels": args.kernels,
        "settled": not args.unsettled,
        "seconds": args.seconds,
        "servers": summary,
        "ratios": ratios,
        "targets": targets,
    }
    args.json.write_text(__import__("json").dumps(out, indent=2) + "\n")
    print(f"| {args.kernels} busy kernels, `1+1` | executions/s | server CPU per execution |")
    print("| --- | --- | --- |")
    for name, row in summary.items():
        rate = " / ".join(f"{v:g}" for v in row["executions_per_s"])
        cpu = " / ".join(f"{v:g} ms" for v in row["cpu_ms_per_execution"])
        print(f"| {name} | {rate} | {cpu} |")
    print(f"\nratios: {ratios}")
    verdict = {True: "met", False: "MISSED"}
    print(f"CPU per execution ≤ 1× Kernel Gateway: {verdict[targets['cpu_ka_kg_ratio']]}")
    met = verdict[targets["throughput_ka_kg_nodelay_ratio"]]
    print(f"executions/s ≥ 1× Kernel Gateway with NODELAY: {met}")
    if args.profile and args.profile.exists():
        stats = pstats.Stats(str(args.profile))
        stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
