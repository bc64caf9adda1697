"""``%pip install`` through the server: the first install of a package on a machine, and the same
install in later sessions (from the machine's package cache: no pip, only links).

Run: ``.venv/bin/python bench/packages.py [--json bench/packages.json]`` (about 30 seconds;
the first install reaches the package index over the network)

Measured against the real server (``KernelAgentApp`` in-process, embedded defaults, a warm pool of
2 sandboxed kernels), over HTTP: the ``POST …/cells`` round trip of ``%pip install`` cells, and a
plain ``1+1`` cell beside them for scale. The first session installs ``python-slugify`` (two
distributions) into an empty cache; each next session installs the same into a new kernel.

Prints a Markdown table and writes JSON. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sessions import server  # bench/ is on sys.path as a script

INSTALL = "%pip install python-slugify"


async def main(sessions: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ka-bench-packages-") as tmp:
        async with server(Path(tmp), "packages", 2) as srv:
            await srv.pool_filled()
            timings: dict[str, list[float]] = {"first": [], "cached": [], "1+1": []}
            for i in range(sessions + 1):
                sid = await srv.create(f"packages {i}")
                await srv.run(sid)
                t0 = time.perf_counter()
                await srv.run(sid)
                timings["1+1"].append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                answer = await srv.run(sid, INSTALL)
                took = (time.perf_counter() - t0) * 1000
                status = answer["cell"]["metadata"]["kernelagent"]["status"]
                if status != "ok":
                    raise SystemExit(f"the install failed: {answer['cell']['outputs']}")
                timings["first" if i == 0 else "cached"].append(took)
                await srv.delete(sid)
    return {
        "first_install_ms": round(timings["first"][0], 1),
        "cached_install_ms_p50": round(statistics.median(timings["cached"]), 1),
        "cached_install_ms_max": round(max(timings["cached"]), 1),
        "one_plus_one_ms_p50": round(statistics.median(timings["1+1"]), 1),
        "sessions": sessions,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(main(args.sessions))
    print("| measure | ms |\n| --- | --- |")
    print(f"| first `{INSTALL}` on the machine | {result['first_install_ms']} |")
    print(f"| the same in a new session, p50 | {result['cached_install_ms_p50']} |")
    print(f"| the same in a new session, max | {result['cached_install_ms_max']} |")
    print(f"| `1+1`, p50 | {result['one_plus_one_ms_p50']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0)
