"""Nothing a kernel, a model or a user writes runs as script in the page's origin.

Each payload tries ``<script>``, ``onerror``/``onload`` handlers and ``javascript:`` links to set
``window.pwned`` / ``window.parent.pwned``, retitle the page and open a dialog; it goes in through
every way content reaches the page: HTML, markdown, SVG, JSON, LaTeX and plain-text outputs,
stream output, an error, a plotly title, the model's message, the user's message, a file name and
the session's title — rendered live (events + fragments) and again from the record (reload).
"""

from __future__ import annotations

import pytest
from llm_server import text, tool_call
from playwright.async_api import Page, expect

from .conftest import sign_in

pytestmark = pytest.mark.sandbox

JS = "window.pwned=1;window.parent.pwned=1;document.title='pwned';alert('pwned')"
PAYLOAD = f'<script>{JS}</script><img src=x onerror="{JS}"><svg onload="{JS}"></svg>'
TITLE = f'<img src=x onerror="{JS}"><script>{JS}</script>'  # titles are at most 200 chars
SVG = (
    f'<svg xmlns="http://www.w3.org/2000/svg" width="20" height="20" onload="{JS}">'
    f'<script>{JS}</script><rect width="20" height="20" fill="red"/></svg>'
)
KERNEL_CODE = f"""\
from IPython.display import HTML, JSON, SVG, Markdown, display
import plotly.graph_objects as go
P = {PAYLOAD!r}
display(HTML(P))
display(Markdown(P + " [click me](javascript:{JS})"))
display(SVG({SVG!r}))
display(JSON({{"payload": P}}))
display({{"text/latex": P, "text/plain": P}}, raw=True)
display({{"text/plain": P}}, raw=True)
go.Figure(layout_title_text=P).show()
print(P)
raise ValueError(P)
"""
MESSAGE = (
    f"{PAYLOAD}\n\n[a link](javascript:{JS}) ![img](javascript:{JS})\n\n```html\n{PAYLOAD}\n```"
)


async def assert_nothing_ran(page: Page, title: str) -> None:
    assert await page.evaluate("window.pwned") is None
    assert await page.title() == title
    assert not page.watch.dialogs  # type: ignore[attr-defined]


async def test_payloads_stay_inert(server, llm, page: Page):
    base = server.base
    session = await server.session(TITLE)
    upload = await server.upload(session["id"], "<img src=x onerror=alert(1)>.csv", b"a\n1\n")
    assert upload.code == 201
    llm.script(
        tool_call("run_python", {"code": KERNEL_CODE}, content=MESSAGE),
        text(MESSAGE),
    )
    await sign_in(page, base)
    await expect(page.locator(".session-title")).to_have_text(TITLE)
    await assert_nothing_ran(page, "Sessions · kernelagent")

    await page.goto(f"{base}/sessions/{session['id']}")
    title = f"{TITLE} · kernelagent"
    await expect(page.locator("#session-title")).to_have_text(TITLE)
    await expect(page.locator("#files a").first).to_have_text("<img src=x onerror=alert(1)>.csv")
    await page.fill("#input", PAYLOAD)
    await page.press("#input", "Enter")
    await expect(page.locator(".cell-assistant")).to_have_count(2, timeout=40_000)
    await expect(page.locator("#working")).to_be_hidden()
    cell = page.locator(".cell-code.role-agent")
    await expect(cell.locator("pre.error")).to_contain_text("ValueError")
    await expect(cell.locator(".plotly-target svg.main-svg").first).to_be_visible()
    await expect(page.locator(".cell-user .text")).to_have_text(PAYLOAD)
    await assert_nothing_ran(page, title)

    # from the record, as a reload renders it
    await page.reload()
    await expect(page.locator(".cell-assistant")).to_have_count(2)
    frame = page.frame_locator("iframe.html-frame").first
    await expect(frame.locator("img")).to_have_count(1)  # the payload is there, inert
    await expect(cell.locator(".output-stream")).to_contain_text("<script>")
    await expect(cell.locator(".output-json")).to_contain_text("<script>")
    await expect(cell.locator(".output-latex")).to_contain_text("onerror")
    await expect(cell.locator(".output-markdown")).to_contain_text("<script>")
    await expect(page.locator(".markdown a, .cell-assistant a")).to_have_count(0)  # javascript:
    assert await page.locator("a[href^='javascript' i]").count() == 0
    assert await cell.locator("img.out-image[src^='data:image/svg+xml;base64,']").count() == 1
    assert await page.locator("#cells svg[onload], #cells script:not([type])").count() == 0
    await page.wait_for_timeout(300)  # give any handler that slipped through the time to run
    await assert_nothing_ran(page, title)

    # pages and cell fragments carry the CSP that forbids inline script
    cells = await server.services.db.cells.list(session["id"])
    for path in (f"/sessions/{session['id']}", f"/sessions/{session['id']}/cells/{cells[-1].id}"):
        response = await page.request.get(base + path)
        assert response.ok and "script-src 'self'" in response.headers["content-security-policy"]
