"""A session's exported ``.ipynb``, opened in a real JupyterLab in headless Chromium.

The session runs a matplotlib cell and a Plotly cell; the notebook from
``GET /api/v1/sessions/{id}/notebook`` is written into the root dir of a ``jupyter lab``
subprocess (isolated config, data, runtime, settings and workspace dirs; labextensions still
found in ``sys.prefix``, where ``plotly`` installs its renderer) and opened in Debian's Chromium
through Playwright. JupyterLab must draw the Plotly output with its plotly renderer (not the
``text/html`` fallback the export adds) and show the matplotlib PNG.

Screenshots go to the test's tmp dir (``jupyterlab/``); with ``KERNELAGENT_SCREENSHOTS`` set they
are also copied to ``test-output/jupyterlab/`` at the repository's top level.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from playwright.async_api import Page, async_playwright

from .lab import CHROMIUM, DESKTOP, RENDER_TIMEOUT, dismiss_dialogs, jupyter_lab, wait_rendered

pytestmark = pytest.mark.sandbox

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "jupyterlab"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
NOTEBOOK = "kernelagent-export.ipynb"

MATPLOTLIB_CELL = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
PLOTLY_CELL = "import plotly.express as px\npx.line(x=[1, 2, 3], y=[3, 1, 2])"


# outputs of the notebook panel: jupyterlab-plotly's renderer widget is the output node itself
# (``jp-RenderedPlotly js-plotly-plot``, no data-mime-type); JupyterLab's own renderers set
# data-mime-type
PLOTLY_OUTPUT = ".jp-NotebookPanel .jp-OutputArea-output.jp-RenderedPlotly"
PNG_OUTPUT = '.jp-NotebookPanel .jp-OutputArea-output[data-mime-type="image/png"]'
HTML_OUTPUT = '.jp-NotebookPanel .jp-OutputArea-output[data-mime-type="text/html"]'
PLOTLY_DRAWN = (
    "!!document.querySelector('.jp-NotebookPanel .jp-OutputArea .js-plotly-plot svg.main-svg')"
)
PNG_LOADED = (
    f"[...document.querySelectorAll('{PNG_OUTPUT}.jp-RenderedImage img')]"
    ".some(img => img.complete && img.naturalWidth > 0)"
)


@pytest.mark.parametrize("ka_server", ["embedded"], indirect=True)
async def test_jupyterlab_renders_the_exported_notebook(ka_server, tmp_path):
    started = time.monotonic()
    session = await ka_server.session("JupyterLab export")
    sid = session["id"]
    mpl = await ka_server.run(sid, MATPLOTLIB_CELL, timeout=60)
    assert any("image/png" in o.get("data", {}) for o in mpl["cell"]["outputs"]), mpl
    plotly = await ka_server.run(sid, PLOTLY_CELL, timeout=60)
    assert any(PLOTLY_MIME in o.get("data", {}) for o in plotly["cell"]["outputs"]), plotly

    response = await ka_server.fetch(f"/api/v1/sessions/{sid}/notebook")
    assert response.code == 200, (response.code, response.body)
    nb = nbformat.reads(response.body.decode("utf-8"), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    plotly_bundles = [
        o.data for c in nb.cells for o in c.get("outputs", []) if PLOTLY_MIME in o.get("data", {})
    ]
    assert len(plotly_bundles) == 1 and "text/html" in plotly_bundles[0], plotly_bundles
    root = tmp_path / "lab-root"
    root.mkdir()
    (root / NOTEBOOK).write_bytes(response.body)

    shots = tmp_path / "jupyterlab"
    shots.mkdir()

    async def shot(page: Page, name: str) -> Path:
        path = shots / f"{name}.png"
        await page.screenshot(path=str(path))
        if os.environ.get("KERNELAGENT_SCREENSHOTS"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, SCREENSHOTS / path.name)
        return path

    dialogs: list[str] = []
    page_errors: list[str] = []
    console_errors: list[str] = []
    async with (
        jupyter_lab(root, tmp_path / "jupyter") as lab,
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = await browser.new_context(viewport=DESKTOP)
            context.set_default_timeout(RENDER_TIMEOUT)
            page = await context.new_page()
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on(
                "console",
                lambda m: console_errors.append(m.text) if m.type == "error" else None,
            )
            try:
                await page.goto(f"{lab.base}/lab/tree/{NOTEBOOK}?token={lab.token}")
                await page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
                await wait_rendered(page, dialogs, PNG_LOADED)
                await wait_rendered(page, dialogs, PLOTLY_DRAWN)
                await dismiss_dialogs(page, dialogs)
                await asyncio.sleep(0.5)  # let plotly finish its layout before the picture
                await shot(page, "notebook-top")
                await page.locator(PLOTLY_OUTPUT).scroll_into_view_if_needed()
                await asyncio.sleep(0.5)
                await shot(page, "notebook-plotly")

                # the plotly renderer drew the chart: its SVG, not the HTML fallback's div
                plotly_outputs = page.locator(PLOTLY_OUTPUT)
                assert await plotly_outputs.count() == 1
                plot = plotly_outputs.first
                assert "js-plotly-plot" in (await plot.get_attribute("class") or "")
                assert await plot.locator(".plot-container svg.main-svg").count() >= 1
                assert await plot.locator(".plot-container").is_visible()
                assert await plot.locator(".scatterlayer path.js-line").count() == 1  # one trace
                assert await page.locator(HTML_OUTPUT).count() == 0
                assert await page.locator(".jp-NotebookPanel .plotly-graph-div").count() == 0

                # the matplotlib PNG is shown at its size
                size = await page.evaluate(
                    f"[...document.querySelectorAll('{PNG_OUTPUT}.jp-RenderedImage img')]"
                    ".map(img => [img.naturalWidth, img.naturalHeight])"
                )
                assert len(size) == 1 and size[0][0] > 0 and size[0][1] > 0, size

                kernel_name = await page.evaluate(
                    "document.querySelector('.jp-Toolbar-kernelName')?.innerText"
                )
            finally:
                await context.close()
        finally:
            await browser.close()

    print(f"screenshots: {shots}")
    print(f"kernel shown: {kernel_name!r}; png size: {size}")
    print(f"dialogs: {dialogs}\npage errors: {page_errors}\nconsole errors: {console_errors}")
    print(f"took {time.monotonic() - started:.1f} s")
    assert not [d for d in dialogs if "kernel" in d.lower()], dialogs
    assert not page_errors, page_errors
