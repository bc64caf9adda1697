"""The ``kernelagent`` command: parses arguments, builds Settings, delegates.

kernelagent serve [--host H] [--port P] [--pool-size N] [--unsafe-no-sandbox]
kernelagent user add NAME
kernelagent ask "question" [--file F]... [-o F.ipynb] [--model M]
kernelagent replay F.ipynb [--files DIR]
kernelagent doctor
kernelagent kernelspec install [--user | --prefix P]
kernelagent mcp [--url URL] [--token T]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from kernelagent import __version__, logs
from kernelagent.config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kernelagent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server with its embedded defaults")
    serve.add_argument("--host", help="interface (KERNELAGENT_HOST)")
    serve.add_argument("--port", type=int, help="port (KERNELAGENT_PORT)")
    serve.add_argument("--pool-size", type=int, help="warm kernels (KERNELAGENT_POOL_SIZE)")
    serve.add_argument(
        "--sandbox", choices=["bubblewrap", "docker"], help="kernel sandbox (KERNELAGENT_SANDBOX)"
    )
    serve.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        default=None,
        help="run kernels without a sandbox (KERNELAGENT_UNSAFE_NO_SANDBOX)",
    )

    commands.add_parser("doctor", help="check the sandbox and settings on this machine")

    ask = commands.add_parser("ask", help="run one agent turn headless; write the notebook")
    ask.add_argument("question")
    ask.add_argument("--file", action="append", default=[], help="upload into the workspace")
    ask.add_argument("-o", "--output", help="notebook file (default kernelagent-<id>.ipynb)")
    ask.add_argument("--model", help="model for this turn (default KERNELAGENT_MODEL)")

    replay = commands.add_parser("replay", help="re-execute a notebook in the sandbox; compare")
    replay.add_argument("notebook")
    replay.add_argument("--files", help="a directory whose files the notebook reads")

    user = commands.add_parser("user", help="manage users")
    user_commands = user.add_subparsers(dest="action", required=True)
    add_user = user_commands.add_parser("add", help="add a user and print their token")
    add_user.add_argument("name")

    kernelspec = commands.add_parser("kernelspec", help="manage the shipped kernelspecs")
    kernelspec_commands = kernelspec.add_subparsers(dest="action", required=True)
    install = kernelspec_commands.add_parser("install", help="install them for Jupyter tools")
    install.add_argument("--user", action="store_true")
    install.add_argument("--prefix")

    mcp = commands.add_parser("mcp", help="bridge an MCP client's stdio to a running server")
    mcp.add_argument(
        "--url",
        default=os.environ.get("KERNELAGENT_URL", "http://127.0.0.1:8888"),
        help="the server (KERNELAGENT_URL; /mcp is added)",
    )
    mcp.add_argument(
        "--token",
        default=os.environ.get("KERNELAGENT_TOKEN", ""),
        help="your token (KERNELAGENT_TOKEN)",
    )

    args = parser.parse_args(argv)
    try:
        overrides = {
            k: getattr(args, k, None)
            for k in ("host", "port", "pool_size", "sandbox", "unsafe_no_sandbox")
        }
        settings = Settings.from_env(os.environ, **overrides)
    except ValueError as e:
        parser.error(str(e))
    logs.configure(settings.log_format)
    if args.command == "serve":
        return _event_loop_run(_serve(settings))
    if args.command == "doctor":
        from kernelagent.doctor import run_doctor

        return asyncio.run(run_doctor(settings))
    if args.command == "ask":
        from kernelagent.ask import main as ask_main

        logging.getLogger().setLevel(logging.WARNING)
        return ask_main(settings, args.question, args.file, args.output, args.model)
    if args.command == "replay":
        from kernelagent.replay_cli import main as replay_main

        logging.getLogger().setLevel(logging.WARNING)
        return replay_main(settings, args.notebook, args.files)
    if args.command == "user":
        return asyncio.run(_add_user(settings, args.name))
    if args.command == "mcp":
        from kernelagent.mcp_bridge import bridge

        url = args.url.rstrip("/")
        return asyncio.run(bridge(url if url.endswith("/mcp") else f"{url}/mcp", args.token))
    if args.command == "kernelspec":
        from kernelagent.adapters.kernelspecs import install as install_specs

        for path in install_specs(user=args.user, prefix=args.prefix):
            print(f"installed {path}")
        return 0
    return 2


async def _add_user(settings: Settings, name: str) -> int:
    from kernelagent.adapters.db import open_database
    from kernelagent.errors import KernelAgentError
    from kernelagent.services.auth import AuthService

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = await open_database(settings.database)
    try:
        _, token = await AuthService(db).add_user(name)
    except (KernelAgentError, ValueError) as e:
        print(f"kernelagent: {e}", file=sys.stderr)
        return 1
    finally:
        await db.close()
    print(token)
    return 0


async def _serve(settings: Settings) -> int:
    from kernelagent.app import KernelAgentApp

    app = KernelAgentApp(settings)
    await app.start()
    token = await app.owner_token()
    print(
        f"kernelagent {__version__} serving on http://{settings.host}:{settings.port}/"
        f"?token={token}",
        flush=True,
    )
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    logging.getLogger("kernelagent").info("shutting down")
    await app.stop()
    return 0


def _event_loop_run(main: Coroutine[Any, Any, int]) -> int:
    """The server runs on uvloop where it is installed (its loop, sockets and timers are
    libuv's, in C: less time per request and per kernel message), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
