"""Kernel start and execute round trip: plain jupyter_client vs each sandbox vs the warm pool.

Run: ``.venv/bin/python bench/kernels.py [--runs 20] [--json out.json]`` (``make bench``; the
Docker variant needs the engine and image of ``make docker``, and is left out without them).

Measured in one run, interleaved so that machine noise hits every variant alike:

* cold start, ``start_kernel()`` → first ``kernel_info_reply``: (a) plain local ipykernel via
  ``AsyncKernelManager(kernel_name="python3")``, (b) bubblewrap (``kernelagent-python3``),
  (d) Docker (``kernelagent-python3-docker``), with the part spent in ``start_kernel()`` (the
  sandbox's launch: for Docker, the engine creating and starting the container) apart;
* (c) taking a kernel from the warm pool (``KernelPool.acquire``) of each sandbox, and hand-out
  → first ``kernel_info_reply`` on a fresh client;
* ``1+1`` round trip, ``execute_request`` → ``status: idle``, for (a), (b) and (d).

Prints a table and JSON (medians, p95, ratios to plain and Docker to bubblewrap). This is a
benchmark, not a test.
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
    "docker_pool_handout_p50_ms": 20.0,
    "docker_rtt_vs_bubblewrap_p50": 1.2,
}
KERNELS = {
    "plain": "python3",
    "bubblewrap": "kernelagent-python3",
    "docker": "kernelagent-python3-docker",
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


async def cold_start(kernel_name: str, workspace: Path) -> tuple[float, float, AsyncKernelManager]:
    """(start → first reply, of which in ``start_kernel()``, the manager)."""
    km = AsyncKernelManager(kernel_name=kernel_name)
    started = time.perf_counter()
    await km.start_kernel(cwd=str(workspace), stderr=subprocess.DEVNULL)
    launched = time.perf_counter() - started
    client = km.client()
    client.start_channels()
    try:
        await first_kernel_info(client)
    finally:
        client.stop_channels()
    return time.perf_counter() - started, launched, km


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


async def bench_starts(runs: int, tmp: Path, variants: list[str]) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    for i in range(runs):
        for variant in variants:
            workspace = tmp / f"{variant}-{i}"
            workspace.mkdir()
            elapsed, launched, km = await cold_start(KERNELS[variant], workspace)
            results.setdefault(variant, []).append(elapsed)
            results.setdefault(f"{variant}_start_kernel", []).append(launched)
            await km.shutdown_kernel(now=True)
    return results


async def bench_rtt(runs: int, tmp: Path, variants: list[str]) -> dict[str, list[float]]:
    managers = {}
    for variant in variants:
        workspace = tmp / f"rtt-{variant}"
        workspace.mkdir()
        managers[variant] = (await cold_start(KERNELS[variant], workspace))[2]
    results: dict[str, list[float]] = {variant: [] for variant in variants}
    try:
        for _ in range(4):  # interleaved blocks
            for variant, km in managers.items():
                results[variant] += await round_trips(km, runs // 4 + 1)
    finally:
        for km in managers.values():
            await km.shutdown_kernel(now=True)
    return results


async def bench_pool(runs: int, tmp: Path, sandbox: str) -> dict[str, list[float]]:
    settings = Settings(
        data_dir=tmp / f"pool-{sandbox}", pool_size=2, pool_preimport="", sandbox=sandbox
    )
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


def docker_available() -> bool:
    """Whether the Docker variant can run here (``make docker`` prepares it)."""
    import docker

    try:
        client = docker.from_env()
    except docker.errors.DockerException as e:
        print(f"Docker variant left out: {e}", file=sys.stderr)
        return False
    try:
        client.images.get(Settings().kernel_image)
        return True
    except docker.errors.DockerException as e:
        print(f"Docker variant left out: {e}", file=sys.stderr)
        return False
    finally:
        client.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rtt-runs", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    variants = ["plain", "bubblewrap"] + (["docker"] if docker_available() else [])
    sandboxes = [v for v in variants if v != "plain"]

    with tempfile.TemporaryDirectory(prefix="kernelagent-bench-") as tmp:
        starts = await bench_starts(args.runs, Path(tmp), variants)
        rtt = await bench_rtt(args.rtt_runs, Path(tmp), variants)
        pools = {sandbox: await bench_pool(args.runs, Path(tmp), sandbox) for sandbox in sandboxes}

    results: dict = {
        "cold_start": {k: summary(v) for k, v in starts.items()},
        "rtt_1plus1": {k: summary(v) for k, v in rtt.items()},
        "pool": {
            sandbox: {k: summary(v) for k, v in pool.items()} for sandbox, pool in pools.items()
        },
    }

    def p50(section: str, key: str) -> float:
        return float(results[section][key]["p50_ms"])

    ratios = {
        "start_ratio_p50": p50("cold_start", "bubblewrap") / p50("cold_start", "plain"),
        "rtt_ratio_p50": p50("rtt_1plus1", "bubblewrap") / p50("rtt_1plus1", "plain"),
    }
    checks = {
        "pool_handout_p50_ms": results["pool"]["bubblewrap"]["handout"]["p50_ms"],
        "rtt_ratio_p50": ratios["rtt_ratio_p50"],
        "start_ratio_p50": ratios["start_ratio_p50"],
    }
    if "docker" in variants:
        ratios["docker_start_ratio_p50"] = p50("cold_start", "docker") / p50("cold_start", "plain")
        ratios["docker_rtt_ratio_p50"] = p50("rtt_1plus1", "docker") / p50("rtt_1plus1", "plain")
        ratios["docker_rtt_vs_bubblewrap_p50"] = p50("rtt_1plus1", "docker") / p50(
            "rtt_1plus1", "bubblewrap"
        )
        checks["docker_pool_handout_p50_ms"] = results["pool"]["docker"]["handout"]["p50_ms"]
        checks["docker_rtt_vs_bubblewrap_p50"] = ratios["docker_rtt_vs_bubblewrap_p50"]
    results["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    results["targets"] = {k: v <= TARGETS[k] for k, v in checks.items()}

    rows = []
    for variant in variants:
        rows.append((f"cold start → kernel_info_reply, {variant}", starts_row(results, variant)))
        if variant != "plain":
            rows.append(
                (
                    f"  of which start_kernel(), {variant}",
                    starts_row(results, f"{variant}_start_kernel"),
                )
            )
    for sandbox in sandboxes:
        rows.append((f"warm pool hand-out, {sandbox}", results["pool"][sandbox]["handout"]))
        rows.append(
            (f"warm pool hand-out → kernel_info_reply, {sandbox}",
             results["pool"][sandbox]["handout_to_ready"])
        )  # fmt: skip
    for variant in variants:
        rows.append((f"1+1 round trip, {variant}", results["rtt_1plus1"][variant]))
    print(f"{'metric':52} {'n':>4} {'p50 ms':>9} {'p95 ms':>9}")
    for label, s in rows:
        print(f"{label:52} {s['n']:>4} {s['p50_ms']:>9.2f} {s['p95_ms']:>9.2f}")
    for key, value in results["ratios"].items():
        target = f" (target ≤ {TARGETS[key]})" if key in TARGETS else ""
        print(f"{key:36} {value:.2f}x{target}")
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def starts_row(results: dict, key: str) -> dict:
    return results["cold_start"][key]


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
