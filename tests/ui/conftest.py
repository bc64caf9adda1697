"""Browser fixtures: the real server (sandboxed kernels, the scripted LLM) in this process, driven
by Debian's headless Chromium through Playwright.

Screenshots go to the test's tmp dir (``ui/``); with ``KERNELAGENT_SCREENSHOTS`` set they are
also copied to ``test-output/ui/`` at the repository's top level.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import running
from llm_server import ScriptedLLM
from playwright.async_api import Browser, Page, async_playwright

from kernelagent.config import Settings

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "ui"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 375, "height": 740}
TOKEN = "owner-token-for-tests"


@pytest.fixture
async def llm() -> AsyncIterator[ScriptedLLM]:
    server = await ScriptedLLM.start(api_key="sk-test")
    yield server
    await server.stop()


def ui_settings(tmp_path: Path, port: int, **overrides: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        port=port,
        pool_size=0,
        pool_preimport="",
        token=TOKEN,
        **overrides,
    )


@pytest.fixture
async def server(tmp_path, unused_port, llm):
    """With an LLM: the scripted one."""
    settings = ui_settings(
        tmp_path,
        unused_port,
        openai_api_key="sk-test",
        openai_base_url=llm.base_url,
        model="scripted",
        llm_retries=0,
    )
    async with running(settings) as s:
        yield s


@pytest.fixture
async def plain_server(tmp_path, unused_port):
    """Without an LLM: code cells only."""
    async with running(ui_settings(tmp_path, unused_port)) as s:
        yield s


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


class Watch:
    """What a page did that a test must see: dialogs (dismissed), uncaught script errors."""

    def __init__(self, page: Page):
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        with contextlib.suppress(Exception):
            await dialog.dismiss()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(20_000)
    page = await context.new_page()
    page.watch = Watch(page)  # type: ignore[attr-defined]
    yield page
    await context.close()
    assert not page.watch.errors, page.watch.errors  # type: ignore[attr-defined]


@pytest.fixture
def shot(tmp_path):
    """``await shot(page, "name")``: a full-page screenshot, kept as described above."""
    folder = tmp_path / "ui"
    folder.mkdir(exist_ok=True)

    async def take(page: Page, name: str, full_page: bool = False) -> Path:
        path = folder / f"{name}.png"
        if full_page:  # from the top, or sticky bars land mid-page
            await page.evaluate("window.scrollTo(0, 0)")
        await page.screenshot(path=str(path), full_page=full_page)
        if os.environ.get("KERNELAGENT_SCREENSHOTS"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, SCREENSHOTS / path.name)
        return path

    return take


async def sign_in(page: Page, base: str, token: str = TOKEN) -> None:
    await page.goto(base + "/signin")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Until ``check()`` is true; AssertionError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"still false after {timeout} s: {check}")
        await asyncio.sleep(0.05)
