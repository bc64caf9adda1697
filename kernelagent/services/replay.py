"""Replay: a session's code cells executed again, in order, in a kernel, compared with the record.

The one routine behind four features: the replay report (``POST …/replay``, ``kernelagent
replay``), a branch's kernel state, an imported notebook's kernel state, and a replaced kernel
(died, culled, shut down) getting its state back. Each cell runs through the kernel port exactly
as the execution path runs it (``running.run_code``: the same output collector, timeout and
interrupt), so a replayed cell's outputs are built the way the recorded ones were; uploads
recorded in the notebook are written into the workspace at the point they arrived, so each cell
sees the files it saw the first time.

Comparison is after ``outputs.normalise`` (execution counts, addresses, timings and random ids
ignored; images by type and size), with kernelagent's private mimetypes left out: a cell is
``match``, ``differ`` (with a unified diff of the normalised outputs) or ``error`` (it raised now
but not in the record, or the kernel died).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from kernelagent.domain import Cell
from kernelagent.errors import KernelAgentError
from kernelagent.services.files import FileService
from kernelagent.services.notebooks import PRIVATE_MIME_PREFIX
from kernelagent.services.outputs import PLOTLY_MIME_TYPE, normalise
from kernelagent.services.ports import KernelBackend
from kernelagent.services.running import run_code

log = logging.getLogger(__name__)

ReplayStatus = Literal["match", "differ", "error"]
Progress = Callable[["CellReport", int, int], Awaitable[None]]
DIFF_LIMIT = 4000  # characters of diff kept per cell


@dataclasses.dataclass(frozen=True)
class CellReport:
    cell_id: str
    index: int
    status: ReplayStatus
    diff: str = ""
    error: str | None = None
    duration_ms: int = 0

    def json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def comparable(outputs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outputs as compared between runs: normalised, without kernelagent's private mimetypes,
    and without the HTML of a Plotly figure (a rendering of the figure's JSON, which is kept:
    the export adds one, a plain kernel another)."""
    public = []
    for output in outputs:
        data = output.get("data")
        if isinstance(data, dict):
            plotly = PLOTLY_MIME_TYPE in data
            output = {
                **output,
                "data": {
                    k: v
                    for k, v in data.items()
                    if not k.startswith(PRIVATE_MIME_PREFIX) and not (plotly and k == "text/html")
                },
            }
        public.append(output)
    return normalise(public)


def compare(recorded: Sequence[dict[str, Any]], replayed: Sequence[dict[str, Any]]) -> str:
    """A unified diff of the normalised outputs; empty when they match."""
    before, after = comparable(recorded), comparable(replayed)
    if before == after:
        return ""
    lines = difflib.unified_diff(
        json.dumps(before, indent=1, sort_keys=True).splitlines(),
        json.dumps(after, indent=1, sort_keys=True).splitlines(),
        "recorded",
        "replayed",
        lineterm="",
    )
    diff = "\n".join(lines)
    return diff if len(diff) <= DIFF_LIMIT else diff[:DIFF_LIMIT] + "\n… (diff trimmed)"


def replayable(cells: Sequence[Cell]) -> list[Cell]:
    """Code cells that ran (failed attempts included: replay must repeat their side effects),
    and uploads; not the cells that killed their kernel, nor ones still pending."""
    return [
        c
        for c in cells
        if (c.cell_type == "code" and c.status not in ("died", "pending"))
        or (c.cell_type == "markdown" and isinstance(c.metadata.get("upload"), dict))
    ]


class Replayer:
    def __init__(
        self, kernels: KernelBackend, files: FileService, cell_timeout: float, stream_limit: int
    ):
        self.kernels = kernels
        self.files = files
        self.cell_timeout = cell_timeout
        self.stream_limit = stream_limit

    async def run(
        self,
        kernel_id: str,
        workspace: str,
        cells: Sequence[Cell],
        progress: Progress | None = None,
    ) -> list[CellReport]:
        """Execute ``cells`` (see ``replayable``) in the kernel; a report per code cell."""
        cells = replayable(cells)
        reports: list[CellReport] = []
        code_cells = sum(c.cell_type == "code" for c in cells)
        dead: str | None = None
        for cell in cells:
            if cell.cell_type == "markdown":
                await self._place(workspace, cell.metadata["upload"])
                continue
            if dead is not None:
                report = CellReport(cell.id, cell.index, "error", error=f"not run: {dead}")
            else:
                report = await self._one(kernel_id, cell)
                if report.error and report.error.startswith(("the kernel died", "stuck")):
                    dead = report.error
            reports.append(report)
            if progress is not None:
                await progress(report, len(reports), code_cells)
        return reports

    async def _place(self, workspace: str, upload: dict[str, Any]) -> None:
        try:
            await self.files.place(workspace, upload["path"], upload["sha256"])
        except (KernelAgentError, KeyError, OSError) as e:  # the cells that need it will say so
            log.warning("could not re-apply the upload of %s: %s", upload.get("path"), e)

    async def _one(self, kernel_id: str, cell: Cell) -> CellReport:
        started = time.perf_counter()
        result = await run_code(
            self.kernels, kernel_id, cell.source, self.cell_timeout, self.stream_limit
        )
        duration = round((time.perf_counter() - started) * 1000)
        if result.status == "died":
            reason = result.outputs[-1].get("evalue", "") if result.outputs else ""
            return CellReport(cell.id, cell.index, "error", error=f"the kernel died: {reason}")
        if result.status == "timeout":
            error = f"timed out after {self.cell_timeout:g} s"
            if result.kernel_lost:
                error = f"stuck: {error} and did not stop when interrupted"
            return CellReport(cell.id, cell.index, "error", error=error, duration_ms=duration)
        outputs = result.outputs
        diff = compare(cell.outputs, outputs)
        raised = next((o for o in outputs if o.get("output_type") == "error"), None)
        recorded_error = any(o.get("output_type") == "error" for o in cell.outputs)
        if raised is not None and not recorded_error:
            error = f"{raised.get('ename')}: {raised.get('evalue')}"
            return CellReport(cell.id, cell.index, "error", diff, error, duration)
        return CellReport(cell.id, cell.index, "differ" if diff else "match", diff, None, duration)
