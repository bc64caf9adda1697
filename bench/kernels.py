"""Kernel start and execute round trip: plain jupyter_client vs the sandbox vs the warm pool.

Run: ``.venv/bin/python bench/kernels.py [--runs 20] [--json out.json]``

Measured in one run, interleaved so that machine noise hits every variant alike:

* cold start, ``start_kernel()`` → first ``kernel_info_reply``: (a) plain local ipykernel via
  ``AsyncKernelManager(kernel_name="python3")``, (b) the sandboxed ``kernelagent-python3``;
* (c) taking a kernel from the warm pool (``KernelPool.acquire``), and hand-out → first
  ``kernel_info_reply`` on a fresh client;
* ``1+1`` round trip, ``execute_request`` → ``status: idle``, for (a) and (b).

Prints a table and JSON (medians, p95, ratios b/a). This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import queue
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import one_plus_one, summary  # bench/ is on sys.path when run as a script
from jupyter_client import AsyncKernelClient, AsyncKernelManager

from kernelagent.adapters.kernels import LocalKernels
from kernelagent.config import Settings
from kernelagent.services.kernels import KernelPool

TARGETS = {
    "pool_handout_p50_ms": 20.0,
    "rtt_ratio_p50": 1.2,
    "start_ratio_p50": 1.5,
}


async def first_kernel_info(client: AsyncKernelClient, timeout: float = 60) -> None:
    """Until the first kernel_info_reply (``wait_for_ready`` adds a 0.2 s iopub flush)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.kernel_info(reply=True, timeout=1)
            return
        except (TimeoutError, queue.Empty):
            if time.monotonic() > deadline:
                raise


async def cold_start(kernel_name: str, workspace: Path) -> tuple[float, AsyncKernelManager]:
    km = AsyncKernelManager(kernel_name=kernel_name)
    started = time.perf_counter()
    await km.start_kernel(cwd=str(workspace), stderr=subprocess.DEVNULL)
    client = km.client()
    client.start_channels()
    try:
        await first_kernel_info(client)
    finally:
        client.stop_channels()
    return time.perf_counter() - started, km


async def round_trips(km: AsyncKernelManager, runs: int) -> list[float]:
    client = km.client()
    client.start_channels()
    await client.wait_for_ready(timeout=60)
    samples = []
    try:
        for i in range(runs + 5):
            elapsed = await one_plus_one(client)
            if i >= 5:  # warm-up
                samples.append(elapsed)
    finally:
        client.stop_channels()
    return samples


async def bench_starts(runs: int, tmp: Path) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"plain": [], "sandbox": []}
    for i in range(runs):
        for variant, name in (("plain", "python3"), ("sandbox", "kernelagent-python3")):
            workspace = tmp / f"{variant}-{i}"
            workspace.mkdir()
            elapsed, km = await cold_start(name, workspace)
            results[variant].append(elapsed)
            await km.shutdown_kernel(now=True)
    return results


async def bench_rtt(runs: int, tmp: Path) -> dict[str, list[float]]:
    managers = {}
    for variant, name in (("plain", "python3"), ("sandbox", "kernelagent-python3")):
        workspace = tmp / f"rtt-{variant}"
        workspace.mkdir()
        managers[variant] = (await cold_start(name, workspace))[1]
    results: dict[str, list[float]] = {"plain": [], "sandbox": []}
    try:
        for _ in range(4):  # interleaved blocks
            for variant, km in managers.items():
                results[variant] += await round_trips(km, runs // 4 + 1)
    finally:
        for km in managers.values():
            await km.shutdown_kernel(now=True)
    return results


async def bench_pool(runs: int, tmp: Path) -> dict[str, list[float]]:
    settings = Settings(data_dir=tmp / "pool-data", pool_size=2, pool_preimport="")
    kernels = LocalKernels(settings)
    pool = KernelPool(kernels, size=2)
    await pool.start()
    handout, to_ready = [], []
    try:
        for i in range(runs):
            await pool.wait_filled(timeout=120)
            started = time.perf_counter()
            kernel = await pool.acquire(f"session-{i}")
            handout.append(time.perf_counter() - started)
            client = kernels.client(kernel.id)
            try:
                await first_kernel_info(client)
            finally:
                client.stop_channels()
            to_ready.append(time.perf_counter() - started)
            await kernels.shutdown(kernel.id, now=True)
    finally:
        await pool.stop()
        await kernels.close()
    return {"handout": handout, "handout_to_ready": to_ready}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rtt-runs", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.disable(logging.INFO)

    with tempfile.TemporaryDirectory(prefix="kernelagent-bench-") as tmp:
        starts = await bench_starts(args.runs, Path(tmp))
        rtt = await bench_rtt(args.rtt_runs, Path(tmp))
        pool = await bench_pool(args.runs, Path(tmp))

    results = {
        "cold_start": {k: summary(v) for k, v in starts.items()},
        "rtt_1plus1": {k: summary(v) for k, v in rtt.items()},
        "pool": {k: summary(v) for k, v in pool.items()},
    }
    start_ratio = (
        results["cold_start"]["sandbox"]["p50_ms"] / results["cold_start"]["plain"]["p50_ms"]
    )
    rtt_ratio = (
        results["rtt_1plus1"]["sandbox"]["p50_ms"] / results["rtt_1plus1"]["plain"]["p50_ms"]
    )
    results["ratios"] = {
        "start_ratio_p50": round(start_ratio, 3),
        "rtt_ratio_p50": round(rtt_ratio, 3),
    }
    results["targets"] = {
        "pool_handout_p50_ms": results["pool"]["handout"]["p50_ms"]
        <= TARGETS["pool_handout_p50_ms"],
        "rtt_ratio_p50": rtt_ratio <= TARGETS["rtt_ratio_p50"],
        "start_ratio_p50": start_ratio <= TARGETS["start_ratio_p50"],
    }

    rows = [
        ("cold start → kernel_info_reply, plain (a)", results["cold_start"]["plain"]),
        ("cold start → kernel_info_reply, sandbox (b)", results["cold_start"]["sandbox"]),
        ("warm pool hand-out (c)", results["pool"]["handout"]),
        ("warm pool hand-out → kernel_info_reply", results["pool"]["handout_to_ready"]),
        ("1+1 round trip, plain (a)", results["rtt_1plus1"]["plain"]),
        ("1+1 round trip, sandbox (b)", results["rtt_1plus1"]["sandbox"]),
    ]
    print(f"{'metric':48} {'n':>4} {'p50 ms':>9} {'p95 ms':>9}")
    for label, s in rows:
        print(f"{label:48} {s['n']:>4} {s['p50_ms']:>9.2f} {s['p95_ms']:>9.2f}")
    print(
        f"sandbox/plain cold start p50: {start_ratio:.2f}x (target ≤ {TARGETS['start_ratio_p50']}x)"
    )
    print(f"sandbox/plain 1+1 p50:        {rtt_ratio:.2f}x (target ≤ {TARGETS['rtt_ratio_p50']}x)")
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
