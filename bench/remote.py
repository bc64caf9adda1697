"""Kernels on a gateway against kernels on this machine, through the same kernel port.

Run: ``.venv/bin/python bench/remote.py [--runs 8] [--rtt-runs 200] [--json out.json]``
(``make gateway`` installs the Enterprise Gateway it starts.)

In one run, on loopback: Jupyter Enterprise Gateway 3.3 and Jupyter Kernel Gateway 3, each with
its kernels running this environment's Python, against the local bubblewrap sandbox:

* session kernel start → ready (``start()`` of the backend: the kernel answers ``kernel_info``);
* ``1+1`` through the port (``execute`` → ``status: idle``), the execution path's own round trip;
* a 20 MB upload and download through the kernel (``KernelFiles``, as the files of a remote
  session travel; median of 5).

Targets: ``1+1`` remote ≤ 1.3× local; transfers ≥ 50 MB/s. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from common import summary  # bench/ is on sys.path when run as a script
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from kernelagent.adapters.kernels import LocalKernels
from kernelagent.adapters.remote_kernels import RemoteKernels
from kernelagent.config import Settings
from kernelagent.services.running import run_code

EG_VENV = Path(os.environ.get("KERNELAGENT_EG_VENV", "/var/lib/kernelagent-eg/venv"))
TARGETS = {"rtt_ratio_p50": 1.3, "upload_mb_s": 50.0, "download_mb_s": 50.0}


@contextlib.asynccontextmanager
async def gateway(kind: str, home: Path) -> AsyncIterator[tuple[str, str]]:
    sock, port = bind_unused_port()
    sock.close()
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "KERNELAGENT"))}
    env["JUPYTER_RUNTIME_DIR"] = str(home / "runtime")
    if kind == "kernel_gateway":
        argv = [
            sys.executable, "-m", "kernel_gateway", f"--KernelGatewayApp.auth_token={token}",
            "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={port}",
        ]  # fmt: skip
    else:
        spec = home / "kernels" / "python3"
        spec.mkdir(parents=True)
        argv_spec = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(
            json.dumps({"argv": argv_spec, "display_name": "Python 3", "language": "python"})
        )
        env.update({"JUPYTER_PATH": str(home), "EG_AUTH_TOKEN": token})
        argv = [
            str(EG_VENV / "bin" / "jupyter-enterprisegateway"),
            "--ip=127.0.0.1",
            f"--port={port}",
        ]
    log = (home / f"{kind}.log").open("wb")
    process = subprocess.Popen(argv, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        client = AsyncHTTPClient()
        for _ in range(600):
            with contextlib.suppress(OSError):
                headers = {"Authorization": f"token {token}"}
                if (
                    await client.fetch(f"{url}/api", headers=headers, raise_error=False)
                ).code == 200:
                    break
            await asyncio.sleep(0.1)
        yield url, token
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
        log.close()


TRANSFERS = 5  # each way; the median is reported


async def measure(kernels, runs: int, rtt_runs: int, size: int) -> dict:
    starts, rtts = [], []
    for i in range(runs):
        started = time.perf_counter()
        kernel_id = await kernels.start(f"bench-{i}")
        starts.append(time.perf_counter() - started)
        await kernels.shutdown(kernel_id, now=True)
    kernel_id = await kernels.start("bench")
    try:
        for i in range(rtt_runs + 10):
            started = time.perf_counter()
            result = await run_code(kernels, kernel_id, "1+1", timeout=30, stream_limit=1000)
            assert result.status == "ok"
            if i >= 10:
                rtts.append(time.perf_counter() - started)
        data = os.urandom(size)
        ups, downs = [], []
        for _ in range(TRANSFERS):
            started = time.perf_counter()
            await kernels.write_file("bench", "big.bin", data)
            ups.append(size / (time.perf_counter() - started) / 1e6)
            started = time.perf_counter()
            assert await kernels.read_file("bench", "big.bin", size) == data
            downs.append(size / (time.perf_counter() - started) / 1e6)
        upload, download = statistics.median(ups), statistics.median(downs)
    finally:
        await kernels.shutdown(kernel_id, now=True)
    return {
        "start_to_ready": summary(starts),
        "rtt_1plus1": summary(rtts),
        "upload_mb_s": round(upload, 1),
        "download_mb_s": round(download, 1),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--rtt-runs", type=int, default=200)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    size = args.size_mb * 1_000_000
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="kernelagent-bench-") as tmp:
        home = Path(tmp)
        local = LocalKernels(Settings(data_dir=home / "local", pool_size=0))
        try:
            results["local_bubblewrap"] = await measure(local, args.runs, args.rtt_runs, size)
        finally:
            await local.close()
        for kind in ("enterprise_gateway", "kernel_gateway"):
            (home / kind).mkdir()
            async with gateway(kind, home / kind) as (url, token):
                settings = Settings(
                    data_dir=home / f"{kind}-data", gateway_url=url, gateway_token=token,
                    gateway_workspace=str(home / kind / "ws" / "{kernel_id}"),
                )  # fmt: skip
                kernels = RemoteKernels(settings)
                try:
                    results[kind] = await measure(kernels, args.runs, args.rtt_runs, size)
                finally:
                    await kernels.close()
    local_rtt = results["local_bubblewrap"]["rtt_1plus1"]["p50_ms"]
    eg = results["enterprise_gateway"]
    results["ratios"] = {"rtt_ratio_p50": round(eg["rtt_1plus1"]["p50_ms"] / local_rtt, 2)}
    results["targets"] = {
        "rtt_ratio_p50": results["ratios"]["rtt_ratio_p50"] <= TARGETS["rtt_ratio_p50"],
        "upload_mb_s": eg["upload_mb_s"] >= TARGETS["upload_mb_s"],
        "download_mb_s": eg["download_mb_s"] >= TARGETS["download_mb_s"],
    }
    header = ("backend", "start p50", "1+1 p50", "1+1 p95", "up MB/s", "down MB/s")
    print("{:20} {:>10} {:>9} {:>9} {:>8} {:>9}".format(*header))
    for name in ("local_bubblewrap", "enterprise_gateway", "kernel_gateway"):
        r = results[name]
        start, rtt = r["start_to_ready"], r["rtt_1plus1"]
        print(
            f"{name:20} {start['p50_ms']:>8.0f}ms {rtt['p50_ms']:>7.2f}ms {rtt['p95_ms']:>7.2f}ms "
            f"{r['upload_mb_s']:>8.1f} {r['download_mb_s']:>9.1f}"
        )
    print(json.dumps(results["ratios"]), json.dumps(results["targets"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
