"""The notebook-style chat in a real browser: a turn that draws a plotly chart, a matplotlib PNG
and a DataFrame from an uploaded CSV; reloads mid-turn; ask_user; branching; the .ipynb download.
"""

from __future__ import annotations

import nbformat
import pytest
from llm_server import cut, delay, respond, text, tool_call
from playwright.async_api import Page, expect

from .conftest import PHONE, sign_in

pytestmark = pytest.mark.sandbox

CSV = "region,amount\nnorth,10\nsouth,32\neast,7\n"
ANALYSIS = """\
import pandas as pd
import plotly.express as px
import matplotlib.pyplot as plt

df = pd.read_csv("sales.csv")
px.bar(df, x="region", y="amount", title="Sales by region").show()
df.plot.bar(x="region", y="amount", legend=False)
plt.show()
df"""
TICKS = """\
import time
for i in range(4):
    print("tick", i, flush=True)
    time.sleep(0.6)"""


def last_tool_result(body) -> str:
    return next(m for m in reversed(body["messages"]) if m["role"] == "tool")["content"]


async def drop_file(page: Page, name: str, content: str) -> None:
    """Drag a file onto the page, as a person dropping it from their desktop."""
    await page.evaluate(
        """([name, content]) => {
            const data = new DataTransfer();
            data.items.add(new File([content], name, {type: "text/csv"}));
            for (const type of ["dragenter", "dragover", "drop"]) {
                window.dispatchEvent(new DragEvent(type, {dataTransfer: data, cancelable: true}));
            }
        }""",
        [name, content],
    )


async def cell_ids(page: Page) -> list[str]:
    return await page.eval_on_selector_all("#cells > .cell", "els => els.map(e => e.id)")


async def assert_no_duplicates(page: Page, server, session_id: str) -> None:
    ids = await cell_ids(page)
    assert len(ids) == len(set(ids)), ids
    recorded = await server.services.db.cells.list(session_id)
    assert ids == [f"cell-{c.id}" for c in recorded]


async def test_a_conversation_with_charts_reloads_questions_and_branches(
    server, llm, page: Page, browser, shot
):
    base = server.base
    await sign_in(page, base)

    # a new session from the list
    await page.fill("#new-title", "Sales review")
    await page.click("#create")
    await page.wait_for_url(f"{base}/sessions/*")
    session_id = page.url.rsplit("/", 1)[-1]
    await expect(page.locator("#conn")).to_have_text("live")
    await expect(page.locator("#input")).to_be_focused()

    # upload by drag and drop; a bad name fails visibly
    await drop_file(page, "sales.csv", CSV)
    await expect(page.locator("#files a", has_text="sales.csv")).to_be_visible()
    await expect(page.locator("#files")).to_contain_text("B")
    await drop_file(page, "bad\\name.csv", "x")
    await expect(page.locator("#uploads .failed")).to_contain_text("failed")

    # a question whose answer draws a plotly chart, a PNG and a DataFrame
    llm.script(
        tool_call("run_python", {"code": ANALYSIS}, content="Let me chart the sales."),
        text("**South** leads with 32; east is smallest."),
    )
    await page.fill("#input", "Which region sells most?")
    await page.press("#input", "Enter")
    await expect(page.locator(".cell-user", has_text="Which region sells most?")).to_have_count(1)
    chart = page.locator(".plotly-output .plotly-target svg.main-svg").first
    await expect(chart).to_be_visible(timeout=40_000)
    image = page.locator("img.out-image").first
    await expect(image).to_be_visible()
    await page.wait_for_function(
        "() => { const i = document.querySelector('img.out-image');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    rows = page.frame_locator("iframe.html-frame").first.locator("table tbody tr")
    await expect(rows).to_have_count(3)
    await expect(page.locator(".cell-assistant strong", has_text="South")).to_be_visible()
    await expect(page.locator("#working")).to_be_hidden()
    agent_cell = page.locator(".cell-code.role-agent").first
    await expect(agent_cell.locator(".who")).to_have_text("agent")
    await expect(agent_cell.locator(".count")).to_have_text("[1]")
    await expect(agent_cell.locator(".duration")).to_contain_text("s")
    await expect(agent_cell.locator(".hl .kn").first).to_have_text("import")  # highlighted
    await expect(agent_cell.locator(".open-artifact")).to_have_count(3)
    await expect(page.locator("#usage")).to_contain_text("tokens")
    frame_height = await page.eval_on_selector("iframe.html-frame", "f => f.offsetHeight")
    assert 60 < frame_height < 400, frame_height  # sized to the table by its own script
    await agent_cell.evaluate("cell => cell.scrollIntoView({block: 'start'})")
    await shot(page, "session-desktop")

    # the same session on a phone
    phone = await browser.new_page(viewport=PHONE)
    await phone.context.add_cookies(await page.context.cookies())
    await phone.goto(page.url)
    await expect(phone.locator(".plotly-target svg.main-svg").first).to_be_visible()
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width  # nothing wider than the screen
    await phone.wait_for_function(  # a frame that loaded before the page's script is sized too
        "() => document.querySelector('iframe.html-frame').offsetHeight > 60"
    )
    await shot(phone, "session-phone")
    await phone.locator(".cell-assistant strong").scroll_into_view_if_needed()
    await shot(phone, "session-phone-answer")
    await phone.close()

    # reload while a cell streams, and again while the model thinks: nothing lost or doubled
    llm.script(
        tool_call("run_python", {"code": TICKS}),
        delay(2.5, text("Done ticking.")),
    )
    await page.fill("#input", "Count to three slowly")
    await page.press("#input", "Enter")
    await expect(page.locator(".output-stream pre", has_text="tick 0")).to_be_visible()
    await page.reload()
    await expect(page.locator("#conn")).to_have_text("live")
    await expect(page.locator(".output-stream pre", has_text="tick 3")).to_be_visible()
    await expect(page.locator(".cell-code.status-ok", has_text="tick 3")).to_have_count(1)
    await page.reload()
    await expect(page.locator("#working")).to_be_visible()  # the turn still runs
    await expect(page.locator(".cell-assistant", has_text="Done ticking.")).to_have_count(1)
    await expect(page.locator("#working")).to_be_hidden()
    await expect(page.locator(".live-message")).to_have_count(0)
    await expect(page.locator(".output-stream", has_text="tick 3")).to_have_count(1)
    await assert_no_duplicates(page, server, session_id)

    # the agent asks; the question survives a reload; Enter answers
    llm.script(
        tool_call("ask_user", {"question": "Which year should I use?"}),
        respond(lambda body: text(f"Using {last_tool_result(body)}.")),
    )
    await page.fill("#input", "Plot the trend")
    await page.press("#input", "Enter")
    await expect(page.locator("#ask-box")).to_be_visible()
    await expect(page.locator(".cell-question")).to_contain_text("Which year should I use?")
    await expect(page.locator("#ask-text")).to_be_focused()
    await page.reload()
    await expect(page.locator("#ask-box")).to_be_visible()
    await expect(page.locator(".cell-question")).to_contain_text("Which year should I use?")
    await shot(page, "ask-user-desktop")
    phone = await browser.new_page(viewport=PHONE)
    await phone.context.add_cookies(await page.context.cookies())
    await phone.goto(page.url)
    await expect(phone.locator("#ask-box")).to_be_visible()
    await shot(phone, "ask-user-phone")
    await phone.close()
    await page.fill("#ask-text", "2024")
    await page.press("#ask-text", "Enter")
    await expect(page.locator(".cell-assistant", has_text="Using 2024.")).to_be_visible()
    await expect(page.locator("#ask-box")).to_be_hidden()
    await expect(page.locator(".cell-answer")).to_contain_text("2024")
    await assert_no_duplicates(page, server, session_id)

    # text the model is still streaming survives a reload; a failed turn says so
    llm.script(cut(4, text("The quick brown fox jumps over the lazy dog."), stall=3))
    await page.fill("#input", "Tell me a story")
    await page.press("#input", "Enter")
    await expect(page.locator(".live-message")).to_contain_text("The quick brown")
    await page.reload()
    await expect(page.locator(".live-message")).to_contain_text("The quick brown")
    await expect(page.locator(".alert-error")).to_contain_text("The turn failed", timeout=15_000)
    await expect(page.locator(".live-message")).to_have_count(0)
    await expect(page.locator("#working")).to_be_hidden()

    # the notebook downloads and is valid nbformat
    async with page.expect_download() as info:
        await page.click("#download")
    download = await info.value
    notebook = nbformat.reads((await download.path()).read_text(), as_version=4)
    nbformat.validate(notebook)
    assert any("px.bar" in c.source for c in notebook.cells if c.cell_type == "code")

    # branch from the chart's cell: a new session with the record up to there
    await page.locator(".cell-code.role-agent").first.locator("button.branch").click()
    await page.wait_for_url(lambda url: session_id not in url and "/sessions/" in url)
    await expect(page.locator(".cell-code", has_text="px.bar")).to_have_count(1)
    await expect(page.locator(".cell-assistant", has_text="Done ticking.")).to_have_count(0)
    await expect(page.locator(".branch-note")).to_be_visible()
    await page.goto(base + "/")
    await expect(page.locator(".session-row.depth-1 .branch-of")).to_contain_text("Sales review")
    await shot(page, "sessions-desktop", full_page=True)
    assert not page.watch.dialogs  # type: ignore[attr-defined]
