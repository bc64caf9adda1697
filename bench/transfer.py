"""Moving a workspace file through its kernel (``KernelFiles``), as for a kernel whose filesystem
the server cannot see: a 20 MB upload and download, against the direct file I/O of a local
workspace, on a bubblewrap kernel, in one run.

Run: ``.venv/bin/python bench/transfer.py [--runs 5] [--size-mb 20] [--json out.json]``

Prints MB/s (medians); target ≥ 50 MB/s each way on loopback. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kernelagent.adapters.kernel_files import KernelFiles
from kernelagent.adapters.kernels import LocalKernels
from kernelagent.config import Settings

TARGET_MB_S = 50.0


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    data = os.urandom(args.size_mb * 1_000_000)
    rates: dict[str, list[float]] = {"upload": [], "download": [], "direct write": []}
    with tempfile.TemporaryDirectory(prefix="kernelagent-bench-") as tmp:
        kernels = LocalKernels(Settings(data_dir=Path(tmp), pool_size=0))
        kernel_id = await kernels.start("bench")
        files = KernelFiles(kernels.execute, "/workspace")
        try:
            for i in range(args.runs):
                started = time.perf_counter()
                await files.write_file(kernel_id, f"f{i}.bin", data)
                rates["upload"].append(len(data) / (time.perf_counter() - started) / 1e6)
                started = time.perf_counter()
                back = await files.read_file(kernel_id, f"f{i}.bin", limit=len(data))
                rates["download"].append(len(data) / (time.perf_counter() - started) / 1e6)
                assert back == data
                started = time.perf_counter()
                await kernels.write_file("bench", f"d{i}.bin", data)
                rates["direct write"].append(len(data) / (time.perf_counter() - started) / 1e6)
        finally:
            await kernels.close()
    results = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    results["targets"] = {k: results[k] >= TARGET_MB_S for k in ("upload", "download")}  # type: ignore[assignment]
    for key in ("upload", "download", "direct write"):
        print(f"{args.size_mb} MB {key:13} {results[key]:>8.1f} MB/s")
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
