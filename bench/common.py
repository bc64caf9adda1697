"""What the benchmark scripts share: sample summaries and the raw ``1+1`` round trip."""

from __future__ import annotations

import statistics
import time

from jupyter_client import AsyncKernelClient


def summary(samples: list[float]) -> dict[str, float]:
    """n, p50, p95 and min of samples in seconds, reported in milliseconds."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(p95 * 1000, 2),
        "min_ms": round(ordered[0] * 1000, 2),
    }


async def one_plus_one(client: AsyncKernelClient) -> float:
    """Seconds from ``execute_request("1+1")`` to its ``status: idle`` on iopub."""
    started = time.perf_counter()
    msg_id = client.execute("1+1")
    while True:
        msg = await client.get_iopub_msg(timeout=10)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            return time.perf_counter() - started
