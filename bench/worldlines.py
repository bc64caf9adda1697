"""Worldlines: branch latency vs the branch point, replay throughput vs nbclient, what branch costs.

Run: ``.venv/bin/python bench/worldlines.py [--json bench/worldlines.json]`` (about 3 minutes)

Measured in one run against the real server (``KernelAgentApp`` in-process on an unused loopback
port, embedded defaults: SQLite, local storage, in-process locks, a temporary data dir; warm pool
of 2 sandboxed kernels without pre-imports, full before every sample), called over HTTP with the
keep-alive client of ``bench/sessions.py``:

1. branch latency: two parent sessions of 200 cells, *cheap* (``x{i} = {i}``) and *compute* (a
   busy loop on ``time.perf_counter()`` for 0.2 s, then ``x{i} = {i}``: CPU-bound, not a sleep);
   ``POST …/branch {"cell_id"}`` at the 10th, 50th and 200th cell until its 201, and until the
   new session's first ``POST …/cells {"code": "1+1"}`` has answered. Each child is deleted after
   its sample. While a branch runs, its pieces are timed in-process (wrappers on the service
   instances and on the replay's kernel handshake, counting only calls
   made by the request's own task, removed afterwards): the request around ``branch()``,
   reading the parent, ``sessions.create`` (kernel hand-out from the pool + session row),
   copying cell rows and artifacts, the replay (per-cell ``running.run_code``: kernel port round
   trips, output comparison, the kernel handshake, the rest), and the files (snapshot restore
   or mirror).
2. replay throughput, cells per second over the 200-cheap-cell session: ``POST …/replay`` (wall
   time as the client sees it, and the server's own ``duration_ms``) against nbclient executing
   the exported notebook (``GET …/notebook``) in this process, on a plain ``python3`` kernel
   (jupyter_client's default kernelspec; ``IPYTHONDIR`` on a tmpfs, as sandboxed kernels have, so
   IPython's history sqlite does not make it wait for the disk) and on the sandboxed
   ``kernelagent-python3``. nbclient is timed end to end (kernel start and shutdown included) and
   for its cells only (inside ``async_setup_kernel``, the same loop as ``async_execute``);
   interleaved rounds after a warm-up round. kernelagent's replay is split the same way as a
   branch's, and measured a second time with the pool's refill held back until it has answered
   (a diagnostic: taking the pooled kernel otherwise starts a replacement kernel on the other core
   meanwhile). The raw ``1+1`` round trip (``execute_request`` → ``status: idle``,
   jupyter_client) on both kernels is the per-cell floor.
3. what a branch could cost instead: the parent's namespace pickled name by name in one cell
   (modules kept by name), loaded in one cell of a new session (pooled kernel); the pickle
   bandwidth of a 32 MB DataFrame in the sandbox; and copying 200 cell rows with one batched
   INSERT (what a branch does) against one ``append`` per row.

The load average is recorded at the start and end of every part. Prints Markdown tables and
writes JSON (n, p50, p95, min in ms; ratios). Target: kernelagent replay throughput ≥ 0.9× nbclient
(``POST …/replay`` wall time against nbclient's cells on the plain kernel). A benchmark, not a
test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import nbformat
from common import one_plus_one, summary  # bench/ is on sys.path when run as a script
from jupyter_client import AsyncKernelManager
from nbclient import NotebookClient
from sessions import Server, server
from sqlalchemy import insert

import kernelagent.services.replay as replay_module
from kernelagent.adapters.db import WRITE
from kernelagent.adapters.tables import CellRow
from kernelagent.domain import new_id

TARGETS = {"replay_vs_nbclient_plain_cells_per_s": 0.9}
CELLS = 200
POINTS = (10, 50, 200)
COMPUTE_SECONDS = 0.2
BRANCH_TIMEOUT = 600.0
VERSIONS = ("kernelagent", "nbclient", "jupyter_client", "ipykernel", "nbformat", "tornado")

CHEAP = "x{i} = {i}"
COMPUTE = (
    "import time as _time\n"
    "_t0 = _time.perf_counter()\n"
    "while _time.perf_counter() - _t0 < {seconds}:\n"
    "    pass\n"
    "x{i} = {i}"
)

# one cell: the user's namespace pickled name by name (modules by name; what fails is reported)
DUMP = """\
import base64 as _b64, json as _json, pickle as _pickle, time as _time, types as _types
_t0 = _time.perf_counter()
_state, _modules, _left = {}, {}, []
_hidden = get_ipython().user_ns_hidden  # what IPython itself put there (In, Out, open, …)
for _k, _v in list(get_ipython().user_ns.items()):
    if _k.startswith("_") or _k in _hidden:
        continue
    if isinstance(_v, _types.ModuleType):
        _modules[_k] = _v.__name__
        continue
    try:
        _state[_k] = _pickle.dumps(_v, protocol=5)
    except Exception:
        _left.append(_k)
_blob = _pickle.dumps({"state": _state, "modules": _modules}, protocol=5)
_ms = (_time.perf_counter() - _t0) * 1000
print(_json.dumps({"names": len(_state), "modules": len(_modules), "unpicklable": _left,
                   "bytes": len(_blob), "dump_ms": _ms, "blob": _b64.b64encode(_blob).decode()}))
"""
LOAD = """\
import base64 as _b64, importlib as _importlib, pickle as _pickle
_snap = _pickle.loads(_b64.b64decode("{blob}"))
for _k, _m in _snap["modules"].items():
    globals()[_k] = _importlib.import_module(_m)
for _k, _v in _snap["state"].items():
    globals()[_k] = _pickle.loads(_v)
print(x{last})
"""
FRAME_PICKLE = """\
import json as _json, pickle as _pickle, time as _time
try:
    import numpy as _np, pandas as _pd
except ImportError:
    print(_json.dumps(None))
else:
    _df = _pd.DataFrame(_np.random.default_rng(0).random((1_000_000, 4)), columns=list("abcd"))
    _t0 = _time.perf_counter()
    _b = _pickle.dumps(_df, protocol=5)
    _t1 = _time.perf_counter()
    _back = _pickle.loads(_b)
    _t2 = _time.perf_counter()
    print(_json.dumps({"mb": len(_b) / 1e6, "dump_ms": (_t1 - _t0) * 1000,
                       "load_ms": (_t2 - _t1) * 1000}))
    del _df, _b, _back
"""


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else math.inf


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def stdout_of(answer: dict[str, Any]) -> str:
    outputs = answer["cell"].get("outputs") or []
    text = "".join(
        "".join(o["text"]) if isinstance(o.get("text"), list) else o.get("text", "")
        for o in outputs
        if o.get("output_type") == "stream"
    )
    if not text:
        raise RuntimeError(f"cell printed nothing: {answer['cell']}")
    return text


class Probe:
    """Seconds spent in server-side calls while ``active``, by name (wrappers on instances).

    Only calls made by the task of the request being measured count: the one that entered a
    ``root`` wrapper (``branch()``, ``replay()``). A debounced notebook save or the pool's refill
    running meanwhile is not counted (though it still competes for the two cores).
    """

    def __init__(self) -> None:
        self.active = False
        self.task: asyncio.Task[Any] | None = None
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._patched: list[tuple[Any, str, Any]] = []

    def _counts(self) -> bool:
        return self.active and self.task is not None and asyncio.current_task() is self.task

    def _add(self, name: str, started: float) -> None:
        self.totals[name] += time.perf_counter() - started
        self.counts[name] += 1

    def wrap(self, owner: Any, attr: str, name: str, root: bool = False) -> None:
        """Shadow a bound coroutine method with an instance attribute (deleted on restore)."""
        original = getattr(owner, attr)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            if root and self.active:
                self.task = asyncio.current_task()
            if not self._counts():
                return await original(*args, **kwargs)
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self._add(name, started)

        setattr(owner, attr, timed)
        self._patched.append((owner, attr, None))

    def wrap_function(self, module: Any, attr: str, name: str) -> None:
        """Replace a module-level function (looked up at call time); put back on restore."""
        original = getattr(module, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self._counts():
                return original(*args, **kwargs)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._add(name, started)

        setattr(module, attr, timed)
        self._patched.append((module, attr, original))

    def wrap_async_function(self, module: Any, attr: str, name: str) -> None:
        """Replace a module-level coroutine function; put back on restore."""
        original = getattr(module, attr)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            if not self._counts():
                return await original(*args, **kwargs)
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self._add(name, started)

        setattr(module, attr, timed)
        self._patched.append((module, attr, original))

    def wrap_method(self, cls: type, attr: str, name: str) -> None:
        """Replace a coroutine method on a class (every instance); put back on restore."""
        original = getattr(cls, attr)

        async def timed(instance: Any, *args: Any, **kwargs: Any) -> Any:
            if not self._counts():
                return await original(instance, *args, **kwargs)
            started = time.perf_counter()
            try:
                return await original(instance, *args, **kwargs)
            finally:
                self._add(name, started)

        setattr(cls, attr, timed)
        self._patched.append((cls, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._patched):
            if original is None:
                with contextlib.suppress(AttributeError):
                    delattr(owner, attr)
            else:
                setattr(owner, attr, original)
        self._patched.clear()

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        self.task = None
        totals, counts = dict(self.totals), dict(self.counts)
        self.totals.clear()
        self.counts.clear()
        return totals, counts


def install_probe(s: Any) -> Probe:
    probe = Probe()
    w = s.worldlines
    probe.wrap(w, "branch", "branch", root=True)
    probe.wrap(w, "replay", "replay", root=True)
    probe.wrap(s.events, "publish", "events.publish")
    probe.wrap(s.kernels, "shutdown", "kernels.shutdown")
    probe.wrap(s.sessions, "get", "sessions.get")
    probe.wrap(s.db.cells, "list", "db.cells.list")
    probe.wrap(s.sessions, "create", "sessions.create")
    probe.wrap(s.pool, "acquire", "pool.acquire")
    probe.wrap(s.db.cells, "append_many", "db.cells.append_many")
    probe.wrap(s.db.artifacts, "list_for_session", "db.artifacts.list_for_session")
    probe.wrap(s.db.artifacts, "add_many", "db.artifacts.add_many")
    probe.wrap(w, "_rebuild", "_rebuild")
    probe.wrap(w.replayer, "run", "replayer.run")
    probe.wrap(w.replayer, "_one", "replayer._one")
    probe.wrap_function(replay_module, "compare", "compare")
    probe.wrap(s.kernels, "_link", "wait_for_ready")  # the kernel_info handshake, once a kernel
    return probe


PARTIAL = (
    "kernelagent_wait_for_ready",
    "kernelagent_progress",
    "kernelagent_shutdown",
)  # not per-cell rates

# the pieces of a branch, as printed; each is derived from the probe's totals (seconds)
PARTS = (
    "request around branch() (HTTP, auth, JSON)",
    "read parent and its cells (sessions.get, db.cells.list)",
    "kernel hand-out + session row (sessions.create)",
    "  of which pool.acquire",
    "copy cell rows (one batched INSERT)",
    "copy artifacts (one query, one batched add)",
    "replay: N cells executed (running.run_code)",
    "replay: output comparison (compare × N)",
    "replay: kernel handshake (kernel_info until iopub answers)",
    "replay: client start/stop, progress, rest",
    "files: snapshot restore or mirror",
    "re-read child, rest of branch()",
)


def parts_of(wall: float, t: dict[str, float]) -> dict[str, float]:
    g = defaultdict(float, t)
    parts = {
        PARTS[0]: wall - g["branch"],
        PARTS[1]: g["sessions.get"] + g["db.cells.list"],
        PARTS[2]: g["sessions.create"],
        PARTS[3]: g["pool.acquire"],
        PARTS[4]: g["db.cells.append_many"],
        PARTS[5]: g["db.artifacts.list_for_session"] + g["db.artifacts.add_many"],
        PARTS[6]: g["replayer._one"] - g["compare"],
        PARTS[7]: g["compare"],
        PARTS[8]: g["wait_for_ready"],
        PARTS[9]: g["replayer.run"] - g["replayer._one"] - g["wait_for_ready"],
        PARTS[10]: g["_rebuild"] - g["replayer.run"],
    }
    accounted = sum(v for k, v in parts.items() if k not in (PARTS[0], PARTS[3]))
    # sessions.get runs twice (parent, child): the child's re-read is counted in PARTS[1]
    parts[PARTS[11]] = g["branch"] - accounted
    return parts


@dataclasses.dataclass
class Parent:
    kind: str
    session_id: str
    cell_ids: list[str]
    build_s: float


async def build(srv: Server, kind: str, template: str, cells: int, seconds: float) -> Parent:
    await srv.pool_filled()
    session_id = await srv.create(f"worldlines {kind}")
    ids = []
    started = time.perf_counter()
    for i in range(cells):
        answer = await srv.run(session_id, template.format(i=i, seconds=seconds))
        if answer["cell"].get("outputs"):
            raise RuntimeError(f"cell {i} of the {kind} session: {answer['cell']}")
        ids.append(answer["cell"]["id"])
    return Parent(kind, session_id, ids, time.perf_counter() - started)


async def one_branch(srv: Server, probe: Probe, parent: Parent, at: int) -> dict[str, Any]:
    """Branch at the ``at``-th cell (1-based; the child holds ``at`` cells), then ``1+1``."""
    await srv.pool_filled()
    probe.take()
    probe.active = True
    started = time.perf_counter()
    try:
        child = await srv.client.call(
            "POST",
            f"/api/v1/sessions/{parent.session_id}/branch",
            {"cell_id": parent.cell_ids[at - 1]},
            expect=201,
            timeout=BRANCH_TIMEOUT,
        )
    finally:
        probe.active = False
    branched = time.perf_counter()
    await srv.run(child["id"])
    done = time.perf_counter()
    totals, counts = probe.take()
    await srv.delete(child["id"])
    if counts.get("db.cells.append_many") != 1:
        raise RuntimeError(f"branch at {at} copied {counts}")
    return {
        "branch": branched - started,
        "first": done - started,
        "parts": parts_of(branched - started, totals),
        "replayed": counts.get("replayer._one", 0),  # 0: restored from the namespace snapshot
    }


async def bench_branch(
    srv: Server, probe: Probe, parents: dict[str, Parent], plan: dict[str, dict[int, int]]
) -> dict[str, dict[int, list[dict[str, Any]]]]:
    results: dict[str, dict[int, list[dict[str, Any]]]] = {
        kind: {at: [] for at in points} for kind, points in plan.items()
    }
    await one_branch(srv, probe, parents["cheap"], POINTS[0])  # warm-up, not counted
    for kind, points in plan.items():
        rounds = max(points.values())
        for r in range(rounds):  # round-robin over branch points: drift hits all alike
            for at, samples in points.items():
                if r < samples:
                    results[kind][at].append(await one_branch(srv, probe, parents[kind], at))
    return results


async def nbclient_run(nb_json: str, kernel_name: str, workdir: Path) -> tuple[float, float]:
    """(end to end, cells only) seconds of nbclient executing the notebook on ``kernel_name``."""
    nb = nbformat.reads(nb_json, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=60,
        allow_errors=True,
        resources={"metadata": {"path": str(workdir)}},
    )
    started = time.perf_counter()
    async with client.async_setup_kernel(stderr=subprocess.DEVNULL):
        assert client.kc is not None
        info = await client.kc.kernel_info(reply=True)  # as async_execute does
        client.nb.metadata["language_info"] = info["content"]["language_info"]
        cells_started = time.perf_counter()
        for index, cell in enumerate(client.nb.cells):
            await client.async_execute_cell(
                cell, index, execution_count=client.code_cells_executed + 1
            )
        cells = time.perf_counter() - cells_started
    total = time.perf_counter() - started
    errors = [
        o for c in client.nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"
    ]
    if errors:
        raise RuntimeError(f"nbclient on {kernel_name}: {errors[0]}")
    return total, cells


async def bench_replay(
    srv: Server, probe: Probe, session_id: str, tmp: Path, runs: int
) -> tuple[dict[str, list[float]], int]:
    nb_json = json.dumps(await srv.client.call("GET", f"/api/v1/sessions/{session_id}/notebook"))
    code_cells = sum(c.cell_type == "code" for c in nbformat.reads(nb_json, 4).cells)
    results: dict[str, list[float]] = defaultdict(list)
    for r in range(runs + 1):  # round 0 warms up every runner
        for variant in ("kernelagent", "kernelagent_held"):
            await srv.pool_filled()
            probe.take()
            probe.active = True
            started = time.perf_counter()
            try:
                with refill_held(srv.services.pool, variant == "kernelagent_held"):
                    report = await srv.client.call(
                        "POST", f"/api/v1/sessions/{session_id}/replay", timeout=BRANCH_TIMEOUT
                    )
            finally:
                probe.active = False
            wall = time.perf_counter() - started
            t = defaultdict(float, probe.take()[0])
            if report["summary"]["match"] != code_cells:
                raise RuntimeError(f"replay did not match: {report['summary']}")
            if r:
                results[f"{variant}_wall"].append(wall)
                results[f"{variant}_server"].append(report["duration_ms"] / 1000)
                results[f"{variant}_cells"].append(t["replayer._one"] - t["compare"])
                results[f"{variant}_wait_for_ready"].append(t["wait_for_ready"])
                results[f"{variant}_progress"].append(t["events.publish"])
                results[f"{variant}_shutdown"].append(t["kernels.shutdown"])
        for name, kernel in (("plain", "python3"), ("sandbox", "kernelagent-python3")):
            await srv.pool_filled()  # nothing starting in the background
            workdir = tmp / f"nbclient-{name}-{r}"
            workdir.mkdir()
            total, cells = await nbclient_run(nb_json, kernel, workdir)
            if r:
                results[f"nbclient_{name}_total"].append(total)
                results[f"nbclient_{name}_cells"].append(cells)
    return dict(results), code_cells


@contextlib.contextmanager
def refill_held(pool: Any, hold: bool) -> Iterator[None]:
    """Diagnostic: the pool does not start its replacement kernel until the block is left
    (``acquire`` wakes the filler with ``_wanted.set()``; that call is shadowed meanwhile)."""
    if not hold:
        yield
        return
    wanted = pool._wanted
    wanted.set = lambda: None
    try:
        yield
    finally:
        del wanted.set
        wanted.set()


async def bench_raw(tmp: Path, runs: int, warmup: int = 10) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    for name, kernel in (("plain", "python3"), ("sandbox", "kernelagent-python3")):
        workdir = tmp / f"raw-{name}"
        workdir.mkdir()
        km = AsyncKernelManager(kernel_name=kernel)
        await km.start_kernel(cwd=str(workdir), stderr=subprocess.DEVNULL)
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            samples = [await one_plus_one(client) for _ in range(warmup + runs)]
            results[name] = samples[warmup:]
        finally:
            client.stop_channels()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(km.shutdown_kernel(now=True), 30)
    return results


async def bench_snapshot(srv: Server, parent: Parent, cheap: Parent) -> dict[str, Any]:
    """A namespace snapshot taken in the parent and loaded into a new session; batch insert."""
    started = time.perf_counter()
    dumped = json.loads(stdout_of(await srv.run(parent.session_id, DUMP)))
    dump_rtt = time.perf_counter() - started
    blob = dumped.pop("blob")
    await srv.pool_filled()
    started = time.perf_counter()
    child = await srv.create("worldlines snapshot restore")
    created = time.perf_counter()
    loaded = await srv.run(child, LOAD.format(blob=blob, last=len(parent.cell_ids) - 1))
    restored = time.perf_counter()
    await srv.run(child)
    first = time.perf_counter()
    if stdout_of(loaded).strip() != str(len(parent.cell_ids) - 1):
        raise RuntimeError(f"snapshot load: {loaded['cell']}")
    frame = json.loads(stdout_of(await srv.run(child, FRAME_PICKLE)))
    copy = await bench_copy(srv, child, cheap)
    await srv.delete(child)
    return {
        "dump": {**dumped, "cell_rtt_ms": ms(dump_rtt), "blob_base64_chars": len(blob)},
        "create_ms": ms(created - started),
        "load_cell_ms": ms(restored - created),
        "create_load_ms": ms(restored - started),
        "create_load_first_ms": ms(first - started),
        "frame_pickle": frame,
        "copy_rows": copy,
    }


async def bench_copy(srv: Server, session_id: str, source: Parent) -> dict[str, Any]:
    """200 cell rows into ``session_id``: one batched INSERT in one transaction, then the
    repository's ``append`` per row (one transaction and one existence check each)."""
    s = srv.services
    cells = await s.db.cells.list(source.session_id)
    base = await s.db.cells.next_index(session_id)

    def copies(offset: int) -> list[Any]:
        return [
            dataclasses.replace(
                c,
                id=new_id(),
                session_id=session_id,
                index=offset + k,
                metadata={**c.metadata, "branched_from": c.id},
            )
            for k, c in enumerate(cells)
        ]

    def batch(rows: list[Any]) -> None:
        params = [{"id": c.id, "session_id": c.session_id, **CellRow.values(c)} for c in rows]
        with s.db.engine.execution_options(**WRITE).begin() as connection:
            connection.execute(insert(CellRow.__table__), params)  # type: ignore[attr-defined]

    rows = copies(base)
    started = time.perf_counter()
    await asyncio.to_thread(batch, rows)
    batched = time.perf_counter() - started
    rows = copies(base + len(cells))
    started = time.perf_counter()
    for c in rows:
        await s.db.cells.append(c)
    one_by_one = time.perf_counter() - started
    started = time.perf_counter()
    for c in cells:
        await s.db.artifacts.list_for_cell(c.id)
    lookups = time.perf_counter() - started
    return {
        "rows": len(cells),
        "batch_insert_ms": ms(batched),
        "append_per_row_ms": ms(one_by_one),
        "artifact_lookup_per_row_ms": ms(lookups),
        "speedup": ratio(one_by_one, batched),
    }


def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    for row in (head, ("---",) * len(head), *rows):
        print("| " + " | ".join(row) + " |")
    print()


def fmt(value_ms: float) -> str:
    return f"{value_ms / 1000:.2f} s" if value_ms >= 10_000 else f"{value_ms:.1f} ms"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cheap-samples", type=int, default=3, help="branches per point")
    parser.add_argument(
        "--compute-samples", default="3,2,1", help="branches at cells 10,50,200 (compute)"
    )
    parser.add_argument("--replay-runs", type=int, default=3, help="after one warm-up round")
    parser.add_argument("--raw-runs", type=int, default=100)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    logging.disable(logging.INFO)
    compute_samples = [int(x) for x in args.compute_samples.split(",")]
    plan = {
        "cheap": dict.fromkeys(POINTS, args.cheap_samples),
        "compute": dict(zip(POINTS, compute_samples, strict=True)),
    }
    load: dict[str, list[float]] = {"start": loadavg()}
    run_started = time.perf_counter()

    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with (
        tempfile.TemporaryDirectory(prefix="kernelagent-bench-") as tmp_name,
        tempfile.TemporaryDirectory(prefix="kernelagent-bench-", dir=shm) as ipython_dir,
    ):
        os.environ["IPYTHONDIR"] = ipython_dir  # plain kernels only: sandboxed get a fresh env
        tmp = Path(tmp_name)
        async with server(tmp, "server", pool_size=2) as srv:
            await srv.pool_filled()
            cheap = await build(srv, "cheap", CHEAP, CELLS, 0)
            compute = await build(srv, "compute", COMPUTE, CELLS, COMPUTE_SECONDS)
            load["built"] = loadavg()
            probe = install_probe(srv.services)
            try:
                parents = {"cheap": cheap, "compute": compute}
                branches = await bench_branch(srv, probe, parents, plan)
                load["branched"] = loadavg()
                replay, code_cells = await bench_replay(
                    srv, probe, cheap.session_id, tmp, args.replay_runs
                )
            finally:
                probe.restore()
            raw = await bench_raw(tmp, args.raw_runs)
            load["replayed"] = loadavg()
            snapshot = await bench_snapshot(srv, compute, cheap)
            load["end"] = loadavg()
    elapsed = time.perf_counter() - run_started

    # ---- results
    branch_json: dict[str, Any] = {}
    for kind, by_point in branches.items():
        branch_json[kind] = {}
        for at, samples in by_point.items():
            parts = {name: summary([s["parts"][name] for s in samples])["p50_ms"] for name in PARTS}
            branch_json[kind][str(at)] = {
                "branch": summary([s["branch"] for s in samples]),
                "branch_first_cell": summary([s["first"] for s in samples]),
                "parts_p50_ms": parts,
                "replay_ms_per_cell": round(parts[PARTS[6]] / at, 3),
                "branch_ms_per_cell": round(
                    summary([s["branch"] for s in samples])["p50_ms"] / at, 2
                ),
            }
    rp = {k: summary(v) for k, v in replay.items()}
    rate = {
        k: round(code_cells / (v["p50_ms"] / 1000), 1) for k, v in rp.items() if v["p50_ms"] > 0
    }
    raw_s = {k: summary(v) for k, v in raw.items()}
    ratios = {
        f"replay_{ka}_vs_nbclient_{nb}_cells_per_s": ratio(
            rate[f"kernelagent_{ka}"], rate[f"nbclient_{nb}_cells"]
        )
        for ka in ("wall", "server", "cells", "held_wall", "held_cells")
        for nb in ("plain", "sandbox")
    }
    ratios = {
        "replay_vs_nbclient_plain_cells_per_s": ratios["replay_wall_vs_nbclient_plain_cells_per_s"],
        **ratios,
        "replay_wall_vs_nbclient_plain_end_to_end": ratio(
            rate["kernelagent_wall"], rate["nbclient_plain_total"]
        ),
        "branch_compute_last_vs_snapshot_restore": ratio(
            branch_json["compute"][str(POINTS[-1])]["branch_first_cell"]["p50_ms"],
            snapshot["create_load_first_ms"],
        ),
    }
    targets = {k: ratios[k] >= v for k, v in TARGETS.items()}  # throughput: higher is better
    results: dict[str, Any] = {
        "branch": branch_json,
        "replay": {
            "code_cells": code_cells,
            "seconds": rp,
            "cells_per_s_p50": rate,
            "raw_1plus1": raw_s,
        },
        "snapshot_prototype": snapshot,
        "ratios": ratios,
        "targets": targets,
        "setup": {
            "cells": CELLS,
            "points": list(POINTS),
            "compute_cell": f"busy loop on time.perf_counter() for {COMPUTE_SECONDS} s",
            "cheap_cell": CHEAP,
            "samples": {k: {str(a): n for a, n in v.items()} for k, v in plan.items()},
            "pool_size": 2,
            "pool_preimport": "",
            "build_s": {"cheap": round(cheap.build_s, 2), "compute": round(compute.build_s, 2)},
            "cpus": os.cpu_count(),
            "loadavg_1_5_15": load,
            "elapsed_s": round(elapsed, 1),
            "versions": {p: metadata.version(p) for p in VERSIONS},
        },
    }

    # ---- tables
    rows = []
    for kind, by_point in branch_json.items():
        for at, b in by_point.items():
            rows.append(
                (
                    kind,
                    at,
                    str(b["branch"]["n"]),
                    fmt(b["branch"]["p50_ms"]),
                    fmt(b["branch"]["min_ms"]),
                    fmt(b["branch_first_cell"]["p50_ms"]),
                    f"{b['branch_ms_per_cell']:.2f} ms",
                )
            )
    table(
        (
            "branch of a 200-cell session",
            "at cell",
            "n",
            "`POST …/branch` → 201 p50",
            "min",
            "+ first `1+1` p50",
            "per branched cell",
        ),
        rows,
    )
    columns = [(kind, at) for kind, by_point in branch_json.items() for at in by_point]
    table(
        ("where a branch goes, p50", *(f"{k} @{a}" for k, a in columns)),
        [
            (name, *(fmt(branch_json[k][a]["parts_p50_ms"][name]) for k, a in columns))
            for name in PARTS
        ]
        + [
            (
                "replay execution per cell",
                *(f"{branch_json[k][a]['replay_ms_per_cell']:.2f} ms" for k, a in columns),
            )
        ],
    )
    labels = {
        "kernelagent_wall": "kernelagent `POST …/replay`, wall (pooled sandboxed kernel)",
        "kernelagent_server": "kernelagent replay, server `duration_ms`",
        "kernelagent_shutdown": "  of which the replay kernel's shutdown",
        "kernelagent_wait_for_ready": "  of which the kernel handshake (`kernel_info`)",
        "kernelagent_progress": "  of which progress events (`events.publish` × N)",
        "kernelagent_cells": "  of which cells executed (`running.run_code` × N)",
        "kernelagent_held_wall": "kernelagent `POST …/replay`, pool refill held back, wall",
        "kernelagent_held_cells": "  of which cells executed",
        "nbclient_plain_total": "nbclient, plain `python3`, end to end (kernel start incl.)",
        "nbclient_plain_cells": "nbclient, plain `python3`, cells only",
        "nbclient_sandbox_total": "nbclient, `kernelagent-python3`, end to end",
        "nbclient_sandbox_cells": "nbclient, `kernelagent-python3`, cells only",
    }
    table(
        (f"replay of {code_cells} cheap cells", "n", "p50", "min", "cells/s (p50)", "ms/cell"),
        [
            (
                label,
                str(rp[k]["n"]),
                fmt(rp[k]["p50_ms"]),
                fmt(rp[k]["min_ms"]),
                "—" if k in PARTIAL else f"{rate[k]:.0f}",
                "—" if k in PARTIAL else f"{rp[k]['p50_ms'] / code_cells:.2f}",
            )
            for k, label in labels.items()
        ]
        + [
            (
                f"raw `1+1` round trip, {name} (jupyter_client)",
                str(raw_s[name]["n"]),
                f"{raw_s[name]['p50_ms']:.2f} ms",
                f"{raw_s[name]['min_ms']:.2f} ms",
                f"{1000 / raw_s[name]['p50_ms']:.0f}",
                f"{raw_s[name]['p50_ms']:.2f}",
            )
            for name in ("plain", "sandbox")
        ],
    )
    d, c = snapshot["dump"], snapshot["copy_rows"]
    frame = snapshot["frame_pickle"]
    b200 = branch_json["compute"][str(POINTS[-1])]["branch_first_cell"]["p50_ms"]
    snapshot_rows = [
        (
            f"dump cell in the parent ({d['names']} names, {d['bytes']} B pickled)",
            f"{d['cell_rtt_ms']:.1f} ms (pickling {d['dump_ms']:.2f} ms)",
        ),
        ("new session (pooled kernel)", f"{snapshot['create_ms']:.1f} ms"),
        ("load cell (unpickle into the namespace)", f"{snapshot['load_cell_ms']:.1f} ms"),
        ("new session + load + first `1+1`", f"{snapshot['create_load_first_ms']:.1f} ms"),
        (f"branch at compute cell {POINTS[-1]} + first `1+1` (replay)", fmt(b200)),
        (
            f"copy {c['rows']} cell rows: one batched INSERT / append per row",
            f"{c['batch_insert_ms']:.1f} ms / {c['append_per_row_ms']:.1f} ms "
            f"({c['speedup']:.1f}×)",
        ),
        (
            f"{c['rows']} artifact look-ups, one per row",
            f"{c['artifact_lookup_per_row_ms']:.1f} ms",
        ),
    ]
    if frame:
        snapshot_rows.append(
            (
                f"pickle a {frame['mb']:.0f} MB DataFrame in the sandbox: dump / load",
                f"{frame['dump_ms']:.1f} ms / {frame['load_ms']:.1f} ms",
            )
        )
    table(("state by snapshot instead of replay (prototype)", "time"), snapshot_rows)
    mark = {True: "met", False: "MISSED"}
    key = "replay_vs_nbclient_plain_cells_per_s"
    print(
        f"replay cells/s, kernelagent `POST …/replay` wall / nbclient cells on plain `python3`: "
        f"{ratios[key]:.2f}× (target ≥ {TARGETS[key]:g}×, {mark[targets[key]]})"
    )
    table(
        ("replay cells/s ratio, kernelagent / nbclient cells only", "plain", "sandboxed"),
        [
            (
                label,
                *(
                    f"{ratios[f'replay_{ka}_vs_nbclient_{nb}_cells_per_s']:.2f}×"
                    for nb in ("plain", "sandbox")
                ),
            )
            for ka, label in (
                ("wall", "`POST …/replay` wall"),
                ("server", "server `duration_ms`"),
                ("cells", "cells executed only"),
                ("held_wall", "`POST …/replay` wall, pool refill held back"),
                ("held_cells", "cells executed only, pool refill held back"),
            )
        ],
    )
    print(
        f"kernelagent `POST …/replay` wall / nbclient end to end (kernel start incl.): "
        f"{ratios['replay_wall_vs_nbclient_plain_end_to_end']:.2f}×"
    )
    print(
        f"branch at compute cell {POINTS[-1]} / snapshot restore prototype: "
        f"{ratios['branch_compute_last_vs_snapshot_restore']:.0f}×"
    )
    print(f"load average (1, 5, 15 min): {load}; {elapsed:.0f} s in all")
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
