"""A stock JupyterLab pointed at kernelagent (``--gateway-url``) attaches to an agent's session.

No extension, no API call by hand: JupyterLab's launcher lists the session as a kernel
("Agent: <title>"); a person picks it, types a cell, and sees the variables the session's cells
made, because it is the session's own kernel; the cell lands in the session's record. Driven in
Debian's Chromium through Playwright; screenshots go to the test's tmp dir (``lab-attach/``).
"""

from __future__ import annotations

import time

import pytest
from playwright.async_api import async_playwright

from .lab import CHROMIUM, DESKTOP, RENDER_TIMEOUT, dismiss_dialogs, jupyter_lab, wait_rendered

pytestmark = pytest.mark.sandbox

TITLE = "Quarterly revenue"
OUTPUT = ".jp-NotebookPanel .jp-OutputArea-output"
# the status bar says "<kernel> | Idle" once the notebook's kernel is connected and idle
KERNEL_IDLE = (
    "[...document.querySelectorAll('.jp-StatusBar-TextItem')]"
    ".some(i => i.innerText.includes('Agent:') && i.innerText.includes('Idle'))"
)


@pytest.mark.parametrize("ka_server", ["embedded"], indirect=True)
async def test_jupyterlab_picks_the_session_and_shares_its_kernel(ka_server, tmp_path):
    started = time.monotonic()
    session = await ka_server.session(TITLE)
    sid = session["id"]
    await ka_server.run(sid, "revenue = 1234")  # what the agent (or anyone) left in the kernel
    root = tmp_path / "lab-root"
    root.mkdir()
    shots = tmp_path / "lab-attach"
    shots.mkdir()
    gateway = (
        f"--GatewayClient.url=http://127.0.0.1:{ka_server.port}",
        f"--GatewayClient.auth_token={ka_server.token}",
        "--GatewayClient.auth_scheme=token",
        "--GatewayClient.request_timeout=60",
    )
    dialogs: list[str] = []
    page_errors: list[str] = []
    async with (
        jupyter_lab(root, tmp_path / "jupyter", *gateway) as lab,
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = await browser.new_context(viewport=DESKTOP)
            context.set_default_timeout(RENDER_TIMEOUT)
            page = await context.new_page()
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            await page.goto(f"{lab.base}/lab?token={lab.token}")
            card = page.locator(".jp-LauncherCard", has_text=f"Agent: {TITLE}")
            await card.first.wait_for()
            await dismiss_dialogs(page, dialogs)
            await page.screenshot(path=str(shots / "launcher.png"))
            await card.first.click()

            # a notebook on the session's kernel: once it is connected, type a cell that needs
            # the agent's variable
            editor = page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first
            await editor.wait_for()
            try:
                await wait_rendered(page, dialogs, KERNEL_IDLE)
                await editor.click()
                await page.keyboard.type("revenue * 2")
                await page.keyboard.press("Shift+Enter")
                await wait_rendered(
                    page,
                    dialogs,
                    f"[...document.querySelectorAll('{OUTPUT}')]"
                    ".some(o => o.innerText.includes('2468'))",
                )
            finally:
                await page.screenshot(path=str(shots / "last.png"))
            await page.screenshot(path=str(shots / "notebook.png"))
            kernel_name = await page.evaluate(
                "document.querySelector('.jp-NotebookPanel .jp-Toolbar-kernelName')?.innerText"
            )
        finally:
            await browser.close()

    print(f"screenshots: {shots}; kernel shown: {kernel_name!r}; dialogs: {dialogs}")
    print(f"took {time.monotonic() - started:.1f} s")
    assert kernel_name and TITLE in kernel_name, kernel_name
    assert not page_errors, page_errors
    # the cell ran in the session's kernel, through its one execution path: it is recorded
    cells = await ka_server.services.db.cells.list(sid)
    typed = [c for c in cells if c.source == "revenue * 2"]
    assert [(c.role, c.status) for c in typed] == [("gateway", "ok")], cells
    assert typed[0].outputs[0]["data"]["text/plain"] == "2468"
    sessions = (await ka_server.json("/api/v1/sessions"))["sessions"]
    assert [s["id"] for s in sessions] == [sid]  # attached: no new session made
