"""Server replicas: throughput with 1, 2 and 3 ``kernelagent serve`` processes, and what passing a
request on to the replica holding its kernel adds.

Run: ``.venv/bin/python bench/replicas.py [--seconds 20] [--clients 8] [--json out.json]``
(PostgreSQL at ``postgresql://postgres@127.0.0.1:5432/test`` and Redis at
``redis://127.0.0.1:6379/14``, or ``--database-url`` / ``--redis-url``; S3 is moto's server,
started here.)

For each replica count N, in one run on loopback: N processes share the database, Redis and S3;
``--clients`` concurrent clients spread their requests round robin over the N replicas (no sticky
sessions), each owning one session:

* cells/s: ``POST …/cells {"code": "1+1"}`` for ``--seconds``; with N > 1 most requests reach a
  replica that does not hold the session's kernel and are passed on;
* sessions created/s: ``POST /api/v1/sessions`` (no warm pool: each starts a kernel) for a
  fixed number per client;
* forwarding cost: ``1+1`` sent to the replica holding the kernel vs to another replica
  (alternating, one client), p50 and p95.

This machine's cores bound it: the script reports the processes' CPU time per cell to say
where the time goes. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
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

import psutil
from common import summary  # bench/ is on sys.path when run as a script
from moto.server import ThreadedMotoServer
from tornado.httpclient import AsyncHTTPClient

TOKEN = "kernelagent-bench-replicas"


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    def __init__(self, name: str, env: dict[str, str], home: Path):
        self.port = unused_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = (home / f"{name}.log").open("wb")
        env = {**env, "KERNELAGENT_DATA_DIR": str(home / name)}
        argv = [sys.executable, "-m", "kernelagent", "serve", "--port", str(self.port)]
        self.popen = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.process = psutil.Process(self.popen.pid)

    def cpu(self) -> float:
        """CPU seconds of the server process and its kernels."""
        total = 0.0
        for p in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        return total

    async def ready(self) -> None:
        client = AsyncHTTPClient()
        async with asyncio.timeout(60):
            while True:
                with contextlib.suppress(OSError):
                    r = await client.fetch(f"{self.base}/api/v1/ready", raise_error=False)
                    if r.code == 200:
                        return
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
        self.log.close()


async def call(base: str, path: str, method: str = "GET", body: object = None) -> dict:
    response = await AsyncHTTPClient().fetch(
        base + path,
        method=method,
        body=json.dumps(body) if body is not None else None,
        headers={"Authorization": f"token {TOKEN}"},
        request_timeout=120,
    )
    return json.loads(response.body) if response.body else {}


async def cells_per_second(replicas: list[Replica], clients: int, seconds: float) -> dict:
    bases = [r.base for r in replicas]
    sessions = [
        (await call(bases[0], "/api/v1/sessions", "POST", {"title": f"c{i}"}))["id"]
        for i in range(clients)
    ]
    for sid in sessions:  # each session's kernel started (and held) by the first replica
        await call(bases[0], f"/api/v1/sessions/{sid}/cells", "POST", {"code": "1"})
    done = 0
    cpu_before = sum(r.cpu() for r in replicas)
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal done
        turn = i
        while time.monotonic() < deadline:
            base = bases[turn % len(bases)]
            turn += 1
            await call(base, f"/api/v1/sessions/{sessions[i]}/cells", "POST", {"code": "1+1"})
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    cpu = sum(r.cpu() for r in replicas) - cpu_before
    for sid in sessions:
        await call(bases[0], f"/api/v1/sessions/{sid}", "DELETE")
    return {
        "cells_per_s": round(done / elapsed, 1),
        "cpu_ms_per_cell": round(cpu / done * 1000, 2),
    }


async def sessions_per_second(replicas: list[Replica], clients: int, each: int) -> dict:
    bases = [r.base for r in replicas]
    made: list[str] = []

    async def client(i: int) -> None:
        for k in range(each):
            base = bases[(i + k) % len(bases)]
            made.append((await call(base, "/api/v1/sessions", "POST", {"title": "s"}))["id"])

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    for sid in made:
        await call(bases[0], f"/api/v1/sessions/{sid}", "DELETE")
    return {"sessions_per_s": round(len(made) / elapsed, 2)}


async def forwarding(replicas: list[Replica], runs: int) -> dict:
    holder, other = replicas[0].base, replicas[1].base
    sid = (await call(holder, "/api/v1/sessions", "POST", {"title": "fwd"}))["id"]
    path = f"/api/v1/sessions/{sid}/cells"
    direct, passed = [], []
    for i in range(runs + 10):
        for base, samples in ((holder, direct), (other, passed)):
            started = time.perf_counter()
            await call(base, path, "POST", {"code": "1+1"})
            if i >= 10:
                samples.append(time.perf_counter() - started)
    await call(holder, f"/api/v1/sessions/{sid}", "DELETE")
    d, p = summary(direct), summary(passed)
    return {
        "direct": d,
        "passed_on": p,
        "added_p50_ms": round(p["p50_ms"] - d["p50_ms"], 2),
        "added_p95_ms": round(p["p95_ms"] - d["p95_ms"], 2),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--creates", type=int, default=3, help="sessions per client")
    parser.add_argument("--runs", type=int, default=100, help="forwarding samples")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=unused_port(), verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{moto._port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    import boto3

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    results: dict = {"clients": args.clients, "seconds": args.seconds}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2, 3):
            prefix = f"bench{n}-{uuid.uuid4().hex[:6]}"
            env = {
                **os.environ,
                "KERNELAGENT_DATABASE_URL": args.database_url,
                "KERNELAGENT_REDIS_URL": args.redis_url,
                "KERNELAGENT_STORAGE_URL": f"s3://{bucket}/{prefix}",
                "KERNELAGENT_S3_ENDPOINT_URL": endpoint,
                "KERNELAGENT_TOKEN": TOKEN,
                "KERNELAGENT_POOL_SIZE": "0",
                "KERNELAGENT_MAX_KERNELS_PER_USER": "0",  # measured, not limited
            }
            replicas = [Replica(f"{n}-{i}", env, Path(tmp)) for i in range(n)]
            try:
                await asyncio.gather(*(r.ready() for r in replicas))
                row = await cells_per_second(replicas, args.clients, args.seconds)
                row |= await sessions_per_second(replicas, args.clients, args.creates)
                if n > 1:
                    row["forwarding"] = await forwarding(replicas, args.runs)
                results[f"replicas_{n}"] = row
                print(n, json.dumps(row), flush=True)
            finally:
                for r in replicas:
                    r.stop()
    moto.stop()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
