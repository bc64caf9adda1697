"""Signing in and out, the session list (create, rename, delete, import, branches), the page
without an LLM, approval mode, and a lost connection — in a real browser."""

from __future__ import annotations

import asyncio
import json

import nbformat
import pytest
from conftest import running
from llm_server import respond, text, tool_call
from playwright.async_api import Page, expect

from .conftest import PHONE, TOKEN, eventually, sign_in, ui_settings

pytestmark = pytest.mark.sandbox


async def test_sign_in_out_and_the_session_list(plain_server, page: Page, browser, shot, tmp_path):
    server, base = plain_server, plain_server.base

    # not signed in: pages send you to the form, which rejects a wrong token
    await page.goto(base + "/")
    await page.wait_for_url(base + "/signin*")
    await shot(page, "signin-desktop")
    await page.fill("#token", "not-a-token")
    await page.click("button[type=submit]")
    await expect(page.locator("#signin-error")).to_have_text("That token is not valid.")

    # the link `kernelagent serve` prints signs in and drops the token from the URL
    await page.goto(f"{base}/?token={TOKEN}")
    await page.wait_for_url(base + "/")
    assert TOKEN not in page.url
    cookie = next(c for c in await page.context.cookies() if c["name"] == "kernelagent-token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    await expect(page.locator(".empty")).to_be_visible()

    # sessions: a parent, a branch of it, an imported notebook
    parent = await server.session("Quarterly numbers")
    await server.run(parent["id"], "x = 41")
    first = (await server.services.db.cells.list(parent["id"]))[-1]
    branch = await server.json(
        f"/api/v1/sessions/{parent['id']}/branch", "POST", {"cell_id": first.id}
    )
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# Imported"), nbformat.v4.new_code_cell("1+1")]
    path = tmp_path / "old analysis.ipynb"
    path.write_text(nbformat.writes(notebook))
    await page.reload()
    row = page.locator(f'.session-row[data-session-id="{branch["id"]}"]')
    await expect(row.locator(".branch-of")).to_have_text("branch of Quarterly numbers")
    assert "depth-1" in (await row.get_attribute("class") or "")
    await page.set_input_files("#import-file", str(path))
    await page.wait_for_url(f"{base}/sessions/*")
    await expect(page.locator(".cell-markdown h1")).to_have_text("Imported")
    await expect(page.locator(".cell-code")).to_contain_text("1+1")
    await page.go_back()

    # rename in place, delete with a second click
    row = page.locator(f'.session-row[data-session-id="{parent["id"]}"]')
    await row.locator("button.rename").click()
    await page.keyboard.press("Control+A")
    await page.keyboard.type("Q3 numbers")
    await page.keyboard.press("Enter")
    await expect(row.locator(".session-title")).to_have_text("Q3 numbers")
    assert (await server.json(f"/api/v1/sessions/{parent['id']}"))["title"] == "Q3 numbers"
    await expect(row.locator(".session-meta")).to_contain_text("UTC")
    await shot(page, "sessions-list-desktop", full_page=True)
    phone = await browser.new_page(viewport=PHONE)
    await phone.context.add_cookies(await page.context.cookies())
    await phone.goto(base + "/")
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await shot(phone, "sessions-list-phone")
    await phone.close()
    doomed = page.locator(f'.session-row[data-session-id="{branch["id"]}"]')
    await doomed.locator("button.delete").click()
    await expect(doomed.locator("button.delete")).to_have_text("Delete for good?")
    await doomed.locator("button.delete").click()
    await expect(doomed).to_have_count(0)
    gone = await server.fetch(f"/api/v1/sessions/{branch['id']}")
    assert gone.code == 404

    # a failed import is shown, not swallowed
    bad = tmp_path / "broken.ipynb"
    bad.write_text("{not json")
    await page.set_input_files("#import-file", str(bad))
    await expect(page.locator(".alert-error")).to_contain_text("broken.ipynb was not imported")

    # an unknown session is a page that says so
    missing = await page.goto(f"{base}/sessions/no-such-session")
    assert missing is not None and missing.status == 404
    await expect(page.locator("h1")).to_have_text("no such session")
    await page.goto(base + "/")

    # sign out: the cookie is gone, and so is access
    await page.click("#signout")
    await page.wait_for_url(base + "/signin")
    await page.goto(base + "/")
    await page.wait_for_url(base + "/signin*")
    assert not page.watch.dialogs  # type: ignore[attr-defined]


async def test_without_an_llm_the_composer_runs_code(plain_server, page: Page, browser, shot):
    server, base = plain_server, plain_server.base
    await sign_in(page, base)
    session = await server.session("Scratch")
    await page.goto(f"{base}/sessions/{session['id']}")
    await expect(page.locator("#no-llm")).to_contain_text("No LLM is configured")
    await expect(page.locator('input[name="mode"][type="radio"]')).to_have_count(0)
    await expect(page.locator("#send")).to_have_text("Run")

    # Enter runs; Shift+Enter adds a line
    await page.fill("#input", "total = 6 * 7")
    await page.press("#input", "Shift+Enter")
    await page.keyboard.type("print(total)")
    await page.press("#input", "Enter")
    cell = page.locator(".cell-code", has_text="print(total)")
    await expect(cell.locator(".output-stream")).to_have_text("42")
    await expect(cell.locator(".who")).to_have_text("you")
    await expect(page.locator("#input")).to_have_value("")

    # errors keep their colours (as escaped HTML); long output folds
    await page.fill("#input", "for i in range(300): print(i)\n1/0")
    await page.press("#input", "Enter")
    error = page.locator(".cell-code.status-error")
    await expect(error.locator("pre.error")).to_contain_text("ZeroDivisionError")
    assert await error.locator("pre.error span[style*='color']").count() > 0
    await expect(error.locator(".state")).to_have_text("error")
    fold = error.locator(".fold.is-folded")
    await expect(fold.locator(".show-all")).to_contain_text("show all (301 lines)")
    await fold.locator(".show-all").click()
    await expect(error.locator(".fold.is-folded")).to_have_count(0)

    # a long cell can be stopped
    await page.fill("#input", "import time\ntime.sleep(30)")
    await page.press("#input", "Enter")
    await expect(page.locator("#stop")).to_be_visible()
    await expect(page.locator(".cell-code.status-pending")).to_have_count(1)
    await page.click("#stop")
    await expect(page.locator(".cell-code .state", has_text="interrupted")).to_be_visible()
    await expect(page.locator("#stop")).to_be_hidden()

    # a lost connection is shown, and nothing is missed when it comes back
    http = server.app.http
    http.stop()  # the server goes away: no listener, every connection closed
    await http.close_all_connections()
    await expect(page.locator("#conn")).to_have_text("reconnecting…")
    await page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    await shot(page, "no-llm-reconnecting-desktop")
    await server.services.execution.execute(session["id"], "print('while you were away')", "web")
    server.app.http = server.app.web.listen(server.port, "127.0.0.1")
    await expect(page.locator("#conn")).to_have_text("live", timeout=15_000)
    await expect(page.locator(".output-stream", has_text="while you were away")).to_have_count(1)

    phone = await browser.new_page(viewport=PHONE)
    await phone.context.add_cookies(await page.context.cookies())
    await phone.goto(page.url)
    await expect(phone.locator("#no-llm")).to_be_visible()
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await shot(phone, "no-llm-phone")
    await phone.close()


async def test_approval_mode_approve_edit_reject(server, llm, page: Page, browser, shot):
    base = server.base
    await sign_in(page, base)
    session = await server.session("Careful")
    await page.goto(f"{base}/sessions/{session['id']}")
    await page.check("#approval-mode")
    await eventually(lambda: _approval(server, session["id"]))

    told: list[str] = []

    def then(step):
        def record(body):
            told.append(
                next(m for m in reversed(body["messages"]) if m["role"] == "tool")["content"]
            )
            return step

        return respond(record)

    llm.script(
        tool_call("run_python", {"code": "x = 1\nx"}),
        then(tool_call("run_python", {"code": "import os\nos.remove('important.txt')"})),
        then(text("All right, nothing was removed.")),
    )
    await page.fill("#input", "Set x")
    await page.press("#input", "Enter")
    code = page.locator("#approval-code")
    await expect(code).to_have_value("x = 1\nx")
    await expect(page.locator("#approve")).to_be_focused()
    await shot(page, "approval-desktop")
    phone = await browser.new_page(viewport=PHONE)
    await phone.context.add_cookies(await page.context.cookies())
    await phone.goto(page.url)
    await expect(phone.locator("#approval-box")).to_be_visible()
    await phone.locator("#approval-box").scroll_into_view_if_needed()
    await shot(phone, "approval-phone")
    await phone.close()

    await code.fill("x = 2\nx")
    await expect(page.locator("#approve")).to_have_text("Run my edit")
    await page.click("#approve")
    edited = page.locator(".cell-code.role-agent", has_text="x = 2")
    await expect(edited.locator(".note")).to_contain_text("edited by you")
    await expect(edited.locator(".outputs")).to_have_text("2")
    await expect(code).to_have_value("import os\nos.remove('important.txt')")
    await page.click("#reject")
    await expect(page.locator(".cell-assistant", has_text="nothing was removed")).to_be_visible()
    await expect(page.locator(".cell-note", has_text="rejected")).to_be_visible()
    await expect(page.locator("#approval-box")).to_be_hidden()
    assert "x = 2" in told[0] and "rejected" in told[1]


async def _approval(server, session_id: str) -> bool:
    return json.loads((await server.fetch(f"/api/v1/sessions/{session_id}")).body)["approval_mode"]


async def test_a_limit_is_shown_by_name_and_nothing_is_made(
    tmp_path, unused_port, page: Page, browser, shot
):
    """At the live-kernel limit with nothing idle, a new session is refused, saying which limit
    and its value; once a kernel is idle, room is made (it is hibernated) and it works."""
    settings = ui_settings(tmp_path, unused_port, max_kernels_per_user=1)
    async with running(settings) as server:
        base = server.base
        await sign_in(page, base)
        busy = await server.session("Busy")
        running_cell = asyncio.create_task(server.run(busy["id"], "import time\ntime.sleep(8)"))

        async def is_busy() -> bool:
            return bool(await server.services.execution.busy([busy["id"]]))

        await eventually(is_busy)
        await page.goto(base + "/")
        await page.fill("#new-title", "Another")
        await page.click("#create")
        alert = page.locator("#alerts .alert-error")
        await expect(alert).to_contain_text("KERNELAGENT_MAX_KERNELS_PER_USER=1")
        await expect(alert).to_contain_text("none is idle")
        await shot(page, "limit-reached")
        owner = (await server.services.db.sessions.get(busy["id"])).user_id
        titles = [s.title for s in await server.services.db.sessions.list_for_user(owner)]
        assert titles == ["Busy"]  # nothing was made
        await running_cell
        await page.click("#create")  # the busy one is idle now: it makes room
        await page.wait_for_url(f"{base}/sessions/*")
