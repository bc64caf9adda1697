"""``kernelagent replay F.ipynb [--files DIR]``: re-execute a notebook in the sandbox and report.

The notebook becomes a session of the owner (the files of ``DIR`` placed in its workspace first,
as the files that lay beside it), its code cells run again in a fresh sandboxed kernel with a
progress bar, and each cell is reported ``match``, ``differ`` (with the diff) or ``error``.
Exit status 0 when every cell matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from kernelagent.config import Settings
from kernelagent.errors import KernelAgentError

STYLE = {"match": "green", "differ": "yellow", "error": "red"}


async def run_replay(settings: Settings, notebook: Path, files_dir: Path | None) -> int:
    from kernelagent.app import KernelAgentApp

    console = Console()
    app = KernelAgentApp(dataclasses.replace(settings, pool_size=0))
    services = await app.start(listen=False)
    try:
        user = await services.auth.authenticate(await app.owner_token())
        assert user is not None
        files = {}
        if files_dir is not None:
            files = {
                p.relative_to(files_dir).as_posix(): p.read_bytes()
                for p in sorted(files_dir.rglob("*"))
                if p.is_file()
            }
        session = await services.worldlines.import_notebook(
            user, notebook.read_bytes(), notebook.stem, files=files
        )
        with Progress(
            TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), console=console
        ) as bar:
            task = bar.add_task("cells", total=None)
            follow = asyncio.create_task(_follow(services, session.id, bar, task))
            try:
                result = await services.worldlines.replay(user, session.id)
            finally:
                follow.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follow
        table = Table("cell", "status", "detail")
        for report in result.cells:
            detail = report.error or report.diff.splitlines()[3:8]
            text = detail if isinstance(detail, str) else "\n".join(detail)
            table.add_row(str(report.index), f"[{STYLE[report.status]}]{report.status}[/]", text)
        console.print(table)
        summary = result.json()["summary"]
        console.print(
            f"{summary['match']} match, {summary['differ']} differ, {summary['error']} error "
            f"in {result.duration_ms / 1000:.1f} s"
        )
        return 0 if summary["differ"] == summary["error"] == 0 else 1
    except (KernelAgentError, OSError) as e:
        console.print(f"[red]kernelagent: {e}[/]")
        return 2
    finally:
        await app.stop()


async def _follow(services, session_id: str, bar: Progress, task) -> None:
    after = None
    while True:
        for event in await services.events.read(session_id, after, wait=1.0):
            after = event.id
            if event.type == "replay.started":
                bar.update(task, total=event.data["total"])
            elif event.type == "replay.progress":
                bar.update(task, completed=event.data["done"], total=event.data["total"])


def main(settings: Settings, notebook: str, files_dir: str | None) -> int:
    path = Path(notebook)
    if not path.is_file():
        print(f"kernelagent: no such notebook: {notebook}")
        return 2
    directory = Path(files_dir) if files_dir else None
    if directory is not None and not directory.is_dir():
        print(f"kernelagent: no such directory: {files_dir}")
        return 2
    return asyncio.run(run_replay(settings, path, directory))
