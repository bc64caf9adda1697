"""A real ``jupyter lab`` for the compatibility tests, and helpers to drive it in Chromium.

``jupyter_lab(root, home, *args)`` runs one on a free loopback port with isolated config, data,
runtime, settings and workspace dirs (labextensions still found in ``sys.prefix``, where
``plotly`` installs its renderer); ``args`` add options (``--GatewayClient.url=…`` makes it a
client of kernelagent's Kernel Gateway API).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import Page
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

CHROMIUM = "/usr/bin/chromium"
DESKTOP = {"width": 1280, "height": 900}
START_TIMEOUT = 60  # seconds for jupyter lab to answer, on a busy 2-core machine
RENDER_TIMEOUT = 60_000  # ms for the page, the notebook and its outputs


class JupyterLab:
    def __init__(self, port: int, token: str, log_path: Path):
        self.port = port
        self.token = token
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.asynccontextmanager
async def jupyter_lab(root: Path, home: Path, *extra: str) -> AsyncIterator[JupyterLab]:
    """``jupyter lab`` serving ``root`` on a free loopback port, stopped on exit."""
    sock, port = bind_unused_port()
    sock.close()
    token = uuid.uuid4().hex
    settings_dir = home / "lab-settings"
    # no "fetch Jupyter news?" toast over the notebook (and no request to the internet for it)
    news = settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON"))}
    env.update(
        # JUPYTER_DATA_DIR is only the user's dir: the labextensions and kernelspecs of
        # sys.prefix/share/jupyter stay on the path
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        JUPYTER_NO_CONFIG="1",
        IPYTHONDIR=str(home / "ipython"),
    )
    log_path = home / "jupyter_lab.log"
    args = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.open_browser=False",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={settings_dir}",
        f"--LabApp.workspaces_dir={home / 'lab-workspaces'}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        *extra,
    ]
    lab = JupyterLab(port, token, log_path)
    client = AsyncHTTPClient()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, f"jupyter lab exited:\n{lab.log_tail()}"
            assert time.monotonic() < deadline, f"jupyter lab not up:\n{lab.log_tail()}"
            try:
                response = await client.fetch(
                    f"{lab.base}/api/status?token={token}", raise_error=False, request_timeout=2
                )
                if response.code == 200:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.2)
        yield lab
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # jupyter_server shuts its kernels down on SIGTERM
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await asyncio.to_thread(proc.wait)


async def dismiss_dialogs(page: Page, seen: list[str]) -> None:
    """Close any JupyterLab dialog (its text goes to ``seen``)."""
    dialogs = page.locator(".jp-Dialog")
    while await dialogs.count():
        dialog = dialogs.first
        seen.append(" ".join((await dialog.inner_text()).split()))
        reject = dialog.locator(".jp-Dialog-button.jp-mod-reject")
        if await reject.count():
            await reject.first.click()
        else:
            await page.keyboard.press("Escape")
        await asyncio.sleep(0.2)


async def wait_rendered(page: Page, dialogs: list[str], expression: str) -> None:
    """Until the JS ``expression`` is true in the page, closing dialogs in the meantime."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RENDER_TIMEOUT / 1000
    while not await page.evaluate(expression):
        await dismiss_dialogs(page, dialogs)
        if loop.time() > deadline:
            raise AssertionError(f"not rendered after {RENDER_TIMEOUT / 1000} s: {expression}")
        await asyncio.sleep(0.25)
