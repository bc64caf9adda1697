"""``kernelagent ask "question" [--file F]... [-o F.ipynb]``: one headless turn, shown as it runs.

Runs the server's own services in this process (no HTTP): a new session of the owner, the files
uploaded into its workspace, one turn followed on the session's event log and drawn with rich
(the answer streams in, each cell shows its code and how it ended, ``ask_user`` prompts on the
terminal), then the notebook is written to a file. Exit status 0 when the turn completed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown
from rich.panel import Panel
from rich.syntax import Syntax

from kernelagent.config import Settings
from kernelagent.errors import KernelAgentError

STATUS_STYLE = {"ok": "green", "error": "red", "timeout": "yellow", "interrupted": "yellow"}


async def run_ask(
    settings: Settings, question: str, files: list[Path], output: Path | None, model: str | None
) -> int:
    from kernelagent.app import KernelAgentApp

    console = Console(stderr=True)
    app = KernelAgentApp(dataclasses.replace(settings, pool_size=0))
    services = await app.start(listen=False)
    try:
        token = await app.owner_token()
        user = await services.auth.authenticate(token)
        assert user is not None
        session = await services.sessions.create(user, question[:80])
        for path in files:
            entry = await services.files.upload(session, path.name, path.read_bytes())
            console.print(f"[dim]uploaded {entry.path} ({entry.size} bytes)[/]")
        turn = await services.turns.start(user, session.id, question, model)
        status = await _follow(services, user, session.id, turn.id, console)
        output = output or Path(f"kernelagent-{session.id[:8]}.ipynb")
        output.write_bytes(await services.notebooks.export(session))
        console.print(f"[dim]notebook written to {output}[/]")
        return 0 if status == "turn.completed" else 1
    except (KernelAgentError, OSError) as e:
        console.print(f"[red]kernelagent: {e}[/]")
        return 1
    finally:
        await app.stop()


async def _follow(services, user, session_id: str, turn_id: str, console: Console) -> str:
    """Draw the turn's events until it ends; returns the final event type."""
    after: str | None = None
    streaming = False
    with console.status("thinking…") as spinner:
        while True:
            for event in await services.events.read(session_id, after, wait=1.0):
                after = event.id
                data = event.data
                if data.get("turn_id", turn_id) != turn_id:
                    continue
                if event.type == "message.delta":
                    if not streaming:
                        spinner.stop()
                        streaming = True
                    console.out(data["text"], end="", highlight=False)
                    continue
                if streaming:
                    console.out("")
                    streaming = False
                if event.type == "message.retry":
                    console.print(f"[yellow]the LLM failed ({data['error']}); retrying[/]")
                elif event.type == "cell.started":
                    spinner.update("running a cell…")
                    spinner.start()
                    console.print(Syntax(data["code"], "python", theme="ansi_dark"))
                elif event.type == "cell.completed":
                    style = STATUS_STYLE.get(data["status"], "red")
                    console.print(
                        f"[{style}]{data['status']}[/] in {data['duration_ms']} ms",
                        highlight=False,
                    )
                    spinner.update("thinking…")
                elif event.type == "message.completed":
                    spinner.stop()
                    console.print(Panel(Markdown(data["text"]), title="answer"))
                elif event.type == "ask_user":
                    spinner.stop()
                    answer = await asyncio.to_thread(console.input, f"[bold]{data['question']}[/] ")
                    await services.turns.answer(user, session_id, turn_id, answer)
                    spinner.start()
                elif event.type == "usage":
                    cost = f", ${data['cost']:.4f}" if data.get("cost") is not None else ""
                    tokens = data["prompt_tokens"] + data["completion_tokens"]
                    spinner.update(f"thinking… ({tokens} tokens{cost})")
                elif event.type == "turn.failed":
                    console.print(f"[red]the turn stopped: {data['error']}[/]")
                    return event.type
                elif event.type == "turn.completed":
                    return event.type


def main(
    settings: Settings, question: str, files: list[str], output: str | None, model: str | None
) -> int:
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"kernelagent: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if not settings.llm_configured:
        print(
            "kernelagent: no LLM is configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for "
            "another OpenAI-compatible endpoint)",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(run_ask(settings, question, paths, Path(output) if output else None, model))
