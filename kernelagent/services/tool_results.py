"""What the model is told of a cell it ran: the budgeted view of the outputs, with what went
wrong named first (a timeout, a dead kernel, a missing module, memory), and its images for a
vision-capable model. The live turn and the conversation rebuilt from the record use the same
words, so a resumed turn sees what it would have seen.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from kernelagent.domain import Artifact, Cell
from kernelagent.services.output_views import view_outputs
from kernelagent.services.prompt import human_size


def describe_cell(
    cell: Cell,
    artifacts: Sequence[Artifact],
    budget: int,
    cell_timeout: float,
    memory_limit: int,
) -> str:
    """The tool result for one executed cell: its outputs' budgeted view, failures typed."""
    view = view_outputs(cell.outputs, artifacts, budget=budget)
    error = next((o for o in cell.outputs if o.get("output_type") == "error"), {})
    head = ""
    if cell.status == "timeout":
        head = (
            f"TIMEOUT: the cell ran longer than {cell_timeout:g} s and was "
            "interrupted (state up to that point persists). Last output:\n"
        )
    elif cell.status == "died":
        reason = str(error.get("evalue", "the kernel died"))
        if "out of memory" in reason:
            head = (
                f"OUT OF MEMORY: {reason}. The next cell gets a new kernel with the state "
                "of the earlier cells restored (not this one's). Use less memory: fewer "
                "columns (usecols), chunks, smaller dtypes.\n"
            )
        else:
            head = (
                f"KERNEL DIED: {reason}. The next cell gets a new kernel with the state "
                "of the earlier cells restored (not this one's).\n"
            )
    elif cell.status == "interrupted":
        head = "INTERRUPTED by the user.\n"
    elif error.get("ename") in ("ModuleNotFoundError", "ImportError"):
        head = (
            f"MISSING MODULE: {error.get('evalue')}. The sandbox has no network, so nothing "
            "can be installed: use the installed libraries.\n"
        )
    elif error.get("ename") == "MemoryError":
        head = (
            f"OUT OF MEMORY: the cell asked for more than the kernel's memory limit "
            f"({human_size(memory_limit)}) and got a MemoryError; the kernel and "
            "its other variables survived. Use less memory: fewer columns (usecols), chunks, "
            "smaller dtypes.\n"
        )
    elif cell.status == "error":
        head = "ERROR:\n"
    proposed = cell.metadata.get("proposed_code")
    if proposed is not None and proposed != cell.source:
        ran = f"```python\n{cell.source}\n```"
        head = f"The user edited your code before it ran; this ran:\n{ran}\n{head}"
    return head + view


def pictures(cell: Cell) -> list[dict[str, Any]]:
    """Downscaled PNG images of the cell's outputs, for vision-capable models."""
    found = []
    for output in cell.outputs:
        data = output.get("data") or {}
        for mime in ("image/png", "image/jpeg"):
            if mime in data:
                url = _downscaled(str(data[mime]), mime)
                found.append({"type": "image_url", "image_url": {"url": url}})
                break
    return found[:4]


def _downscaled(b64: str, mime: str, size: int = 512) -> str:
    raw, mime = downscale(base64.b64decode(b64), mime, size)
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def downscale(raw: bytes, mime: str, size: int) -> tuple[bytes, str]:
    """The image within ``size`` × ``size`` pixels, as PNG; as it is if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.thumbnail((size, size))
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue(), "image/png"
    except Exception:  # noqa: BLE001 - send it as it is
        return raw, mime
