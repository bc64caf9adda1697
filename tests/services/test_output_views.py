"""What the model sees of a cell's outputs: one readable view per output within a budget."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
import subprocess
import sys
import textwrap
import time
import types

import matplotlib
import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from kernelagent.domain import Artifact
from kernelagent.services.output_views import (
    DATAFRAME_MIME_TYPE,
    KERNEL_SETUP_CODE,
    trim,
    view_artifact,
    view_outputs,
)
from kernelagent.services.outputs import PLOTLY_MIME_TYPE, clean_output, extract_artifacts

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MARKER = re.compile(r"… \[([\d,]+) characters omitted\] …")
ANSI = re.compile(r"\x1b\[")


# -- helpers ------------------------------------------------------------------------------------


def stream(text: str, name: str = "stdout") -> dict:
    return {"output_type": "stream", "name": name, "text": text}


def display(data: dict, kind: str = "display_data") -> dict:
    """A bundle as the kernel sends it (JSON on the wire), in the shape the notebook keeps."""
    content = {"output_type": kind, "data": json.loads(json.dumps(data)), "metadata": {}}
    if kind == "execute_result":
        content["execution_count"] = 1
    return clean_output(content)


def stored(outputs: list[dict]) -> list[Artifact]:
    """The artifact rows the server would record for these outputs."""
    return [
        Artifact(
            id=f"art-{blob.mime_type.split('/')[-1]}-{blob.sha256[:8]}",
            session_id="s",
            cell_id="c",
            mime_type=blob.mime_type,
            size=blob.size,
            sha256=blob.sha256,
            created_at=dt.datetime.now(dt.UTC),
        )
        for blob in extract_artifacts(outputs)
    ]


def artifact_id(artifacts: list[Artifact], mime: str) -> str:
    return next(a.id for a in artifacts if a.mime_type == mime)


def figure_bytes(fmt: str, width_in: float = 3, height_in: float = 2, dpi: int = 100) -> bytes:
    fig, ax = plt.subplots(figsize=(width_in, height_in), dpi=dpi)
    ax.plot([1, 3, 2])
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    plt.close(fig)
    return buf.getvalue()


def png_output(data: bytes, mime: str = "image/png") -> dict:
    value = base64.b64encode(data).decode()
    return display({mime: value, "text/plain": "<Figure size 300x200 with 1 Axes>"})


def omitted_total(text: str) -> int:
    return sum(int(m.replace(",", "")) for m in MARKER.findall(text))


# -- an in-process IPython shell with the kernel setup ---------------------------------------


@pytest.fixture(scope="module")
def shell():
    """A plain IPython shell, as in a kernel, after KERNEL_SETUP_CODE ran silently once."""
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    module = types.ModuleType("kernelagent_output_view_tests")
    ip = InteractiveShell.instance(config=config, user_module=module)
    names_before = set(ip.user_ns)
    result = ip.run_cell(KERNEL_SETUP_CODE, silent=True, store_history=False)
    assert result.success, result
    ip.names_added_by_setup = set(ip.user_ns) ^ names_before
    yield ip
    InteractiveShell.clear_instance()
    sys.modules.pop(module.__name__, None)


def frame_output(shell, frame, kind: str = "execute_result") -> dict:
    data, _ = shell.display_formatter.format(frame)
    return display(data, kind)


# -- trim -------------------------------------------------------------------------------------


def test_trim_keeps_text_that_fits():
    assert trim("", 0) == ""
    assert trim("hello", 5) == "hello"
    assert trim("hello\nworld\n", 100) == "hello\nworld\n"


@pytest.mark.parametrize("budget", [40, 41, 60, 100, 333, 1000, 4999])
def test_trim_keeps_head_and_tail_within_budget(budget):
    text = "".join(chr(ord("a") + i % 26) for i in range(5000))  # one long line
    out = trim(text, budget)
    assert len(out) <= budget
    head, marker, tail = re.split(r"\n?(… \[[\d,]+ characters omitted\] …)\n?", out)
    assert text.startswith(head) and text.endswith(tail)
    assert len(head) + len(tail) + omitted_total(marker) == len(text)
    assert abs(len(head) - len(tail)) <= 1


def test_trim_cuts_at_line_ends_and_says_how_much_is_gone():
    lines = [f"line {i:05d}" for i in range(10_000)]
    text = "\n".join(lines) + "\n"
    out = trim(text, 500)
    assert len(out) <= 500
    shown = out.split("\n")
    assert shown[0] == "line 00000"
    assert shown[-2] == "line 09999" and shown[-1] == ""
    middle = [s for s in shown if MARKER.fullmatch(s)]
    assert len(middle) == 1
    assert all(s in lines or s == "" or MARKER.fullmatch(s) for s in shown)
    kept = len(out) - len(middle[0]) - 1  # the marker line and its newline
    assert kept + omitted_total(out) == len(text)


def test_trim_to_less_than_a_marker_is_the_marker():
    assert trim("x" * 12_345, 5) == "… [12,345 characters omitted] …"
    assert trim("x" * 12_345, 0) == "… [12,345 characters omitted] …"


# -- streams ----------------------------------------------------------------------------------


def test_no_output():
    assert view_outputs([]) == "(no output)"
    assert view_outputs([stream("")]) == "(no output)"
    assert view_outputs([display({})]) == "(no output)"


def test_streams_show_as_printed_with_stderr_marked():
    outputs = [stream("hello\n"), stream("careful\n", "stderr"), stream("done\n")]
    assert view_outputs(outputs) == "hello\n[stderr]\ncareful\ndone"


def test_streams_lose_ansi_codes_and_overwritten_progress():
    bar = "".join(f"\r{i:3d}%|{'#' * (i // 10):10s}| {i}/100" for i in range(0, 101))
    text = f"\x1b[1;32mgreen\x1b[0m text\n{bar}\nafter\n"
    assert view_outputs([stream(text, "stderr")]) == (
        "[stderr]\ngreen text\n100%|##########| 100/100\nafter"
    )
    assert view_outputs([stream("a\r\nb\r\n")]) == "a\nb"


def test_a_long_stream_keeps_its_start_and_end_within_budget():
    text = "".join(f"step {i}: loss={1 / (i + 1):.6f}\n" for i in range(20_000))
    out = view_outputs([stream(text)], budget=2000)
    assert len(out) <= 2000
    assert out.startswith("step 0: loss=1.000000\n")
    assert out.endswith("step 19999: loss=0.000050")
    assert omitted_total(out) > 400_000


# -- errors -----------------------------------------------------------------------------------


def ipython_error(shell, monkeypatch, code: str) -> dict:
    """The error output ipykernel would send for ``code``: IPython's coloured traceback."""
    sent = []

    def capture(etype, evalue, stb):
        sent.append({"ename": etype.__name__, "evalue": str(evalue), "traceback": stb})

    monkeypatch.setattr(shell, "_showtraceback", capture)
    shell.run_cell(code, silent=True, store_history=False)
    assert len(sent) == 1
    return clean_output({"output_type": "error", **sent[0]})


def test_error_shows_its_traceback_without_ansi_and_the_error_last(shell, monkeypatch):
    error = ipython_error(shell, monkeypatch, "def f(x):\n    return 1 / x\nf(0)\n")
    assert any(ANSI.search(line) for line in error["traceback"])
    out = view_outputs([error])
    assert not ANSI.search(out)
    assert "----> 3 f(0)" in out
    assert "----> 2     return 1 / x" in out
    assert out.endswith("\nZeroDivisionError: division by zero")
    assert out.count("division by zero") == 1  # IPython's own last line is not repeated
    assert "-----------" not in out


def test_a_deep_traceback_keeps_its_last_frames(shell, monkeypatch):
    # Distinct functions: IPython folds frames of one recursive function into a single line.
    chain = [f"def step_{i}(n):\n    return step_{i + 1}(n) + 1\n" for i in range(40)]
    chain.append('def step_40(n):\n    raise KeyError("the missing key")\n')
    code = "".join(chain) + "step_0(1)\n"
    error = ipython_error(shell, monkeypatch, code)
    full = view_outputs([error], budget=1_000_000)
    assert full.count("return step_") == 40
    out = view_outputs([error], budget=1200)
    assert len(out) <= 1200
    assert MARKER.search(out)
    assert out.endswith("KeyError: 'the missing key'")
    assert 'raise KeyError("the missing key")' in out  # the frame that raised
    assert "Traceback (most recent call last)" in out
    before, after = out.split(MARKER.search(out)[0])
    assert len(after) > 2 * len(before)  # mostly the last frames


def test_errors_without_ipython_traceback():
    died = {
        "output_type": "error",
        "ename": "KernelDied",
        "evalue": "out of memory (limit 1 GiB)",
        "traceback": ["KernelDied: out of memory (limit 1 GiB); the session has a new kernel"],
    }
    out = view_outputs([died])
    assert "the session has a new kernel" in out
    assert out.endswith("KernelDied: out of memory (limit 1 GiB)")
    bare = {"output_type": "error", "ename": "Stop", "evalue": "", "traceback": []}
    assert view_outputs([bare]) == "Stop"


def test_a_huge_error_message_is_trimmed():
    error = {"output_type": "error", "ename": "ValueError", "evalue": "x" * 50_000, "traceback": []}
    out = view_outputs([error], budget=500)
    assert len(out) <= 500
    assert out.startswith("ValueError: xxx")


# -- DataFrames ---------------------------------------------------------------------------------


def test_kernel_setup_binds_no_names(shell):
    assert shell.names_added_by_setup == set()
    assert not [name for name in shell.user_ns if "kernelagent" in name]


def test_kernel_setup_imports_nothing_heavy_and_waits_for_pandas():
    code = textwrap.dedent(
        f"""
        import sys, types
        from traitlets.config import Config
        from IPython.core.interactiveshell import InteractiveShell
        config = Config()
        config.HistoryManager.hist_file = ":memory:"
        shell = InteractiveShell.instance(config=config, user_module=types.ModuleType("m"))
        assert shell.run_cell({KERNEL_SETUP_CODE!r}, silent=True, store_history=False).success
        assert "pandas" not in sys.modules
        import pandas as pd
        data, _ = shell.display_formatter.format(pd.DataFrame({{"a": [1, 2]}}))
        print(sorted(data))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert DATAFRAME_MIME_TYPE in result.stdout
    assert "text/html" in result.stdout and "text/plain" in result.stdout


def test_a_dataframe_display_gains_a_summary_and_keeps_html_and_plain(shell):
    df = pd.DataFrame(
        {
            "city": ["Oslo", "Lima", "Pune", "Kyiv", "Baku", "Rome"],
            "temp": [3.5, 19.0, 27.25, 8.0, 15.5, 17.0],
            "rain": [1, 0, 5, 2, 0, 1],
        }
    )
    data, _ = shell.display_formatter.format(df)
    assert {DATAFRAME_MIME_TYPE, "text/html", "text/plain"} <= set(data)
    summary = json.loads(json.dumps(data[DATAFRAME_MIME_TYPE]))  # survives the wire
    assert summary["shape"] == [6, 3]
    assert summary["dtypes"]["temp"] == "float64" and summary["dtypes"]["rain"] == "int64"
    assert "Oslo" in summary["head"] and "Rome" not in summary["head"]  # head(): five rows
    assert "mean" in summary["describe"] and "15.041667" in summary["describe"]


def test_the_dataframe_view(shell):
    df = pd.DataFrame({"name": list("abcdefgh"), "score": np.arange(8) * 1.5})
    output = frame_output(shell, df)
    artifacts = stored([output])
    out = view_outputs([output], artifacts)
    html_id = artifact_id(artifacts, "text/html")
    assert out.startswith(f"[DataFrame 8 rows × 2 columns, artifact {html_id}]\n")
    assert "dtypes: name: " in out and "score: float64" in out
    assert "head:\n" in out and "describe:\n" in out
    assert "<table" not in out and "<td>" not in out
    assert "10.5" in out  # the max, from describe


def test_a_wide_dataframe_lists_fifty_columns_and_fits_the_budget(shell):
    df = pd.DataFrame(np.arange(60 * 100).reshape(100, 60), columns=[f"col_{i}" for i in range(60)])
    output = frame_output(shell, df)
    summary = output["data"][DATAFRAME_MIME_TYPE]
    assert summary["shape"] == [100, 60] and len(summary["dtypes"]) == 50
    out = view_outputs([output], budget=1500)
    assert len(out) <= 1500
    assert out.startswith("[DataFrame 100 rows × 60 columns]")
    assert "col_0: int64" in out
    assert "head:" in out and "describe:" in out
    full = view_outputs([output], budget=100_000)
    assert "(10 more columns)" in full and "col_49: int64" in full and "col_50" not in full


def test_a_big_dataframe_skips_describe_quickly(shell):
    df = pd.DataFrame(np.random.default_rng(0).random((300_000, 4)), columns=list("abcd"))
    started = time.perf_counter()
    data, _ = shell.display_formatter.format(df)
    assert time.perf_counter() - started < 2
    assert data[DATAFRAME_MIME_TYPE]["describe"] is None
    assert data[DATAFRAME_MIME_TYPE]["shape"] == [300_000, 4]
    out = view_outputs([display(data, "execute_result")])
    assert "[DataFrame 300,000 rows × 4 columns]" in out
    assert "describe: not computed" in out


def test_a_failing_summary_leaves_the_display_alone(shell, monkeypatch, capsys):
    df = pd.DataFrame({"a": [1, 2, 3]})

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pd.DataFrame, "describe", broken)
    data, _ = shell.display_formatter.format(df)
    assert data[DATAFRAME_MIME_TYPE]["describe"] is None
    monkeypatch.setattr(pd.DataFrame, "head", broken)
    data, _ = shell.display_formatter.format(df)
    assert DATAFRAME_MIME_TYPE not in data
    assert {"text/html", "text/plain"} <= set(data)
    captured = capsys.readouterr()
    assert "boom" not in captured.out + captured.err


def test_the_summary_survives_users_rebinding_builtins(shell):
    shell.user_ns["str"] = "not a function"
    shell.user_ns["Exception"] = None
    try:
        data, _ = shell.display_formatter.format(pd.DataFrame({"a": [1]}))
    finally:
        del shell.user_ns["str"], shell.user_ns["Exception"]
    assert data[DATAFRAME_MIME_TYPE]["dtypes"] == {"a": "int64"}


def test_an_empty_dataframe(shell):
    out = view_outputs([frame_output(shell, pd.DataFrame())])
    assert out.startswith("[DataFrame 0 rows × 0 columns]")


def test_html_tables_without_the_summary_show_their_text(shell):
    df = pd.DataFrame({"fruit": ["apple", "pear"], "kg": [1.25, 3.5]})
    styled = df.style.format(precision=1).set_caption("Fruit &amp; weights")
    data, _ = shell.display_formatter.format(styled)
    assert DATAFRAME_MIME_TYPE not in data and "text/html" in data
    out = view_outputs([display(data)])
    assert out.startswith("[text/html]\n")
    assert "Fruit & weights" in out
    assert re.search(r"0 \| apple \| 1\.2", out) and re.search(r"1 \| pear \| 3\.5", out)
    assert "<style" not in out and "#T_" not in out and "{" not in out


def test_a_long_html_table_is_trimmed_to_budget():
    df = pd.DataFrame({"n": range(5000), "sq": [i * i for i in range(5000)]})
    out = view_outputs([display({"text/html": df.to_html(), "text/plain": "..."})], budget=1000)
    assert len(out) <= 1000
    assert "0 | 0 | 0" in out and "4999 | 4999 | 24990001" in out
    assert MARKER.search(out)


# -- plotly -----------------------------------------------------------------------------------


def plotly_output(fig: go.Figure) -> dict:
    value = json.loads(pio.to_json(fig))
    return display({PLOTLY_MIME_TYPE: value, "text/html": pio.to_html(fig, include_plotlyjs="cdn")})


def test_a_plotly_figure_is_summarised_never_dumped():
    rng = np.random.default_rng(1)
    fig = go.Figure(
        [
            go.Scatter(x=np.arange(1000), y=rng.normal(size=1000), mode="lines", name="noise"),
            go.Bar(x=["north", "south", "east"], y=[3, 7, 5], name="sales"),
        ],
        layout={"title": "Signal and sales", "xaxis_title": "step", "yaxis_title": "value"},
    )
    output = plotly_output(fig)
    assert "bdata" in json.dumps(output)  # plotly sends typed arrays as base64
    artifacts = stored([output])
    out = view_outputs([output], artifacts)
    plotly_id = artifact_id(artifacts, PLOTLY_MIME_TYPE)
    lines = out.split("\n")
    assert lines[0] == f"[plotly figure, 2 traces, artifact {plotly_id}]"
    assert 'title: "Signal and sales"' in out
    assert 'xaxis "step"' in out and 'yaxis "value"' in out
    noisy = next(line for line in lines if line.startswith("trace 0"))
    assert noisy.startswith('trace 0: scatter "noise" (lines), 1,000 points')
    assert "x: 1,000 values, 0 to 999" in noisy
    low, high = fig.data[0].y.min(), fig.data[0].y.max()
    assert f"y: 1,000 values, {low:.4g} to {high:.4g}" in noisy
    bars = next(line for line in lines if line.startswith("trace 1"))
    assert "x: 3 values, 3 categories: north, south, east" in bars
    assert "y: 3 values, 3 to 7" in bars
    assert "bdata" not in out and "<div" not in out
    assert len(out) < 1000


def test_plotly_express_dates_facets_and_heatmaps():
    df = pd.DataFrame(
        {
            "day": pd.date_range("2024-01-01", periods=90),
            "sales": np.arange(90) % 7,
            "shop": ["A", "B", "C"] * 30,
        }
    )
    fig = px.line(df, x="day", y="sales", color="shop", title="Daily sales", log_y=True)
    out = view_outputs([plotly_output(fig)])
    assert "[plotly figure, 3 traces]" in out
    assert 'trace 0: scatter "A" (lines), 30 points' in out
    assert "x: 30 values, 2024-01-01 to 2024-03-28" in out
    assert 'yaxis "sales" (log)' in out
    heat = px.imshow(np.arange(12).reshape(3, 4), title="grid")
    out = view_outputs([plotly_output(heat)])
    assert "trace 0: heatmap" in out and "z: 3×4 grid, 0 to 11" in out


def test_many_plotly_traces_fit_the_budget():
    fig = go.Figure([go.Scatter(y=np.arange(50) * i, name=f"series {i}") for i in range(300)])
    out = view_outputs([plotly_output(fig)], budget=2000)
    assert len(out) <= 2000
    assert 'trace 0: scatter "series 0"' in out and 'trace 299: scatter "series 299"' in out


def test_plotly_artifact_summary_and_data():
    fig = go.Figure(go.Scatter(x=list(range(100)), y=[i * i for i in range(100)], name="sq"))
    fig.update_layout(title="Squares", xaxis_range=[0, 50])
    blobs = extract_artifacts([plotly_output(fig)])
    raw = next(blob for blob in blobs if blob.mime_type == PLOTLY_MIME_TYPE)
    summary = view_artifact(PLOTLY_MIME_TYPE, raw.data)
    assert 'title: "Squares"' in summary and "range [0, 50]" in summary
    assert "  y: 100 values, 0 to 9801: 0, 1, 4, 9, 16, 25, 36, 49, 64, 81, …, 9025" in summary
    data = view_artifact(PLOTLY_MIME_TYPE, raw.data, "data", budget=100_000)
    assert 'trace 0: scatter "sq" y = [0, 1, 4, 9,' in data and "9801]" in data
    small = view_artifact(PLOTLY_MIME_TYPE, raw.data, "data", budget=300)
    assert len(small) <= 300 and MARKER.search(small)


def test_the_html_of_a_plotly_figure_comes_out_within_budget():
    rng = np.random.default_rng(2)
    fig = go.Figure(go.Scatter(x=rng.random(5000), y=rng.random(5000), mode="markers"))
    html = pio.to_html(fig, include_plotlyjs="cdn")
    assert len(html) > 100_000
    out = view_outputs([display({"text/html": html})], budget=500)
    assert out == "[text/html] (no visible text)"
    standalone = pio.to_html(fig)  # with plotly.js inline: megabytes
    assert len(standalone) > 3_000_000
    started = time.perf_counter()
    out = view_outputs([display({"text/html": standalone})], budget=500)
    assert time.perf_counter() - started < 2
    assert len(out) <= 500


# -- images ---------------------------------------------------------------------------------


def test_a_matplotlib_png_shows_size_and_artifact():
    png = figure_bytes("png", 3, 2, dpi=100)
    output = png_output(png)
    artifacts = stored([output])
    out = view_outputs([output], artifacts)
    assert out == f"[image/png 300x200, artifact {artifact_id(artifacts, 'image/png')}]"
    assert view_outputs([output]) == "[image/png 300x200]"
    assert view_artifact("image/png", png).startswith("[image/png 300x200, ")


@pytest.mark.parametrize(
    "options", [{}, {"progressive": True}, {"optimize": True, "dpi": (72, 72)}]
)
def test_jpeg_sizes_come_from_the_frame_header(options):
    from PIL import Image  # only to make test images; the views never use it

    buf = io.BytesIO()
    Image.new("RGB", (123, 45), "teal").save(buf, format="JPEG", **options)
    assert view_outputs([png_output(buf.getvalue(), "image/jpeg")]) == "[image/jpeg 123x45]"
    matplotlib_jpeg = figure_bytes("jpeg", 4, 3, dpi=50)
    assert view_outputs([png_output(matplotlib_jpeg, "image/jpeg")]) == "[image/jpeg 200x150]"


def test_svg_sizes_from_attributes_or_view_box():
    svg = figure_bytes("svg", 3, 2).decode()
    output = display({"image/svg+xml": svg, "text/plain": "<Figure>"})
    artifacts = stored([output])
    assert view_outputs([output], artifacts) == (
        f"[image/svg+xml 216x144pt, artifact {artifact_id(artifacts, 'image/svg+xml')}]"
    )
    box = '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 640 480"/>'
    assert view_outputs([display({"image/svg+xml": box})]) == "[image/svg+xml 640x480]"
    pixels = "<svg width='100px' height='50px'></svg>"
    assert view_outputs([display({"image/svg+xml": pixels})]) == "[image/svg+xml 100x50]"
    mixed = '<svg height="2cm" width="30mm">'
    assert view_outputs([display({"image/svg+xml": mixed})]) == "[image/svg+xml 30mmx2cm]"
    source = view_artifact("image/svg+xml", svg.encode(), "svg", budget=300)
    assert source.startswith("<?xml") and len(source) <= 300


def test_images_that_cannot_be_measured():
    out = view_outputs([display({"image/png": base64.b64encode(b"not a png").decode()})])
    assert out == "[image/png, 9 bytes]"
    assert view_outputs([display({"image/png": "abc"})]) == "[image/png, undecodable]"
    gif = b"GIF89a" + (7).to_bytes(2, "little") + (9).to_bytes(2, "little") + b"\x00" * 10
    assert view_outputs([display({"image/gif": base64.b64encode(gif).decode()})]) == (
        "[image/gif 7x9]"
    )


def test_a_pdf_artifact():
    pdf = figure_bytes("pdf")
    assert view_artifact("application/pdf", pdf) == f"[application/pdf, {len(pdf):,} bytes, 1 page]"


# -- html, markdown, latex, json, plain ----------------------------------------------------


def test_html_shows_visible_text_only():
    html = """
    <html><head><title>Report</title><style>p { color: red; }</style>
    <script>var secret = "x".repeat(100);</script></head>
    <body><h1>Results &amp; notes</h1><p>First   paragraph<br>second line</p>
    <ul><li>one</li><li>two</li></ul><pre>  keep
      indentation</pre><noscript>enable js</noscript></body></html>
    """
    out = view_outputs([display({"text/html": html, "text/plain": "<IPython.core.display.HTML>"})])
    assert out == (
        "[text/html]\nReport\nResults & notes\nFirst paragraph\nsecond line\none\ntwo\n"
        "  keep\n      indentation"
    )


def test_markdown_latex_and_json():
    md = display({"text/markdown": "# Title\n\n*emphasis*", "text/plain": "<Markdown>"})
    assert view_outputs([md]) == "[text/markdown]\n# Title\n\n*emphasis*"
    latex = display({"text/latex": r"$\frac{a}{b}$", "text/plain": "a/b"})
    assert view_outputs([latex]) == "[text/latex]\n$\\frac{a}{b}$"
    js = display({"application/json": {"b": [1, 2], "a": "é"}, "text/plain": "<JSON>"})
    artifacts = stored([js])
    json_id = artifact_id(artifacts, "application/json")
    assert view_outputs([js], artifacts) == (
        f'[application/json, artifact {json_id}]\n{{"b":[1,2],"a":"é"}}'
    )


def test_plain_text_results_and_ansi():
    assert view_outputs([display({"text/plain": "42"}, "execute_result")]) == "42"
    coloured = display({"text/plain": "\x1b[31mred\x1b[0m"}, "execute_result")
    assert view_outputs([coloured]) == "red"


def test_unknown_mimetypes_fall_back_to_plain_or_their_json():
    widget = {"application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2}}
    assert view_outputs([display({**widget, "text/plain": "IntSlider(value=3)"})]) == (
        "IntSlider(value=3)"
    )
    out = view_outputs([display(widget)])
    assert out.startswith("[application/vnd.jupyter.widget-view+json]\n")
    assert '"model_id":"abc"' in out
    assert view_outputs([display({"application/javascript": "alert(1)"})]) == (
        "[application/javascript]\nalert(1)"
    )


@pytest.mark.parametrize(
    ("bundle", "expected"),
    [
        ({"text/html": "<b>bold</b>", "text/plain": "plain"}, "[text/html]\nbold"),
        ({"text/markdown": "**md**", "text/plain": "plain"}, "[text/markdown]\n**md**"),
        ({"text/latex": "$x$", "text/html": "<i>x</i>"}, "[text/html]\nx"),
        ({"application/json": [1], "text/markdown": "m"}, "[text/markdown]\nm"),
    ],
)
def test_one_representation_per_output_by_priority(bundle, expected):
    assert view_outputs([display(bundle)]) == expected


def test_priority_of_rich_representations(shell):
    df_bundle = shell.display_formatter.format(pd.DataFrame({"a": [1]}))[0]
    plotly_value = json.loads(pio.to_json(go.Figure(go.Bar(y=[1]))))
    png = base64.b64encode(figure_bytes("png", 1, 1)).decode()
    everything = {**df_bundle, PLOTLY_MIME_TYPE: plotly_value, "image/png": png}
    assert view_outputs([display(everything)]).startswith("[DataFrame 1 rows × 1 columns")
    del everything[DATAFRAME_MIME_TYPE]
    assert view_outputs([display(everything)]).startswith("[plotly figure, 1 trace]")
    del everything[PLOTLY_MIME_TYPE]
    assert view_outputs([display(everything)]) == "[image/png 100x100]"
    del everything["image/png"]
    assert view_outputs([display(everything)]).startswith("[text/html]\n | a\n0 | 1")


def test_a_malformed_summary_falls_back():
    bundle = {DATAFRAME_MIME_TYPE: {"shape": "big"}, "text/plain": "   a\n0  1"}
    assert view_outputs([display(bundle)]) == "   a\n0  1"
    bad_plotly = {PLOTLY_MIME_TYPE: {"data": "nope"}, "text/plain": "Figure()"}
    assert view_outputs([display(bad_plotly)]) == "Figure()"


# -- sharing the budget --------------------------------------------------------------------


def test_small_outputs_stay_whole_and_big_ones_share_the_rest():
    big = "".join(f"row {i}\n" for i in range(10_000))
    outputs = [
        stream("loading data\n"),
        display({"text/plain": big}, "display_data"),
        stream("x" * 30_000, "stderr"),
        display({"text/plain": "final answer: 42"}, "execute_result"),
    ]
    out = view_outputs(outputs, budget=3000)
    assert len(out) <= 3000
    assert out.startswith("loading data\nrow 0\n")
    assert out.endswith("\nfinal answer: 42")
    assert "[stderr]\nxxx" in out
    shown_rows = len(re.findall(r"^row \d+$", out, re.MULTILINE))
    shown_x = out.count("x")
    assert abs(shown_rows * 6 - shown_x) < 400  # the two big outputs get about equal shares


def test_hundreds_of_images_leave_out_the_middle():
    png = figure_bytes("png", 1, 1)
    outputs = [stream("start\n")] + [png_output(png) for _ in range(300)]
    outputs.append({"output_type": "error", "ename": "E", "evalue": "last", "traceback": []})
    out = view_outputs(outputs, budget=600)
    assert len(out) <= 600
    assert out.startswith("start\n[image/png 100x100]\n")
    assert out.endswith("[image/png 100x100]\nE: last")
    assert re.search(r"\n… \[\d+ more outputs omitted\] …\n", out)
    shown = out.count("[image/png 100x100]")
    omitted = int(re.search(r"\[(\d+) more outputs omitted", out)[1])
    assert shown + omitted == 300


@pytest.mark.parametrize("budget", [150, 400, 1000, 4000, 12_000])
def test_never_over_budget(shell, budget):
    rng = np.random.default_rng(budget)
    frame = pd.DataFrame(rng.random((500, 8)), columns=[f"feature_{i}" for i in range(8)])
    fig = go.Figure([go.Scatter(y=rng.random(200), name=f"s{i}") for i in range(20)])
    outputs = [
        stream("".join(f"epoch {i}\n" for i in range(3000))),
        frame_output(shell, frame, "display_data"),
        plotly_output(fig),
        png_output(figure_bytes("png")),
        display({"text/html": pio.to_html(fig, include_plotlyjs="cdn"), "text/plain": "f"}),
        display({"application/json": {"k": list(range(5000))}}),
        stream("w" * 10_000, "stderr"),
        {"output_type": "error", "ename": "E", "evalue": "e" * 3000, "traceback": ["t" * 9000]},
    ]
    for count in range(1, len(outputs) + 1):
        out = view_outputs(outputs[:count], stored(outputs), budget=budget)
        assert len(out) <= budget, (count, len(out))
        assert "bdata" not in out and "<script" not in out and "iVBOR" not in out


# -- view_artifact ----------------------------------------------------------------------------


def test_view_artifact_html_text_or_markup():
    html = "<div><p>Hello <b>world</b></p><script>ignored()</script></div>"
    assert view_artifact("text/html", html.encode()) == "Hello world"
    assert view_artifact("text/html", html.encode(), "text") == "Hello world"
    assert view_artifact("text/html", html.encode(), "") == "Hello world"
    assert view_artifact("text/html", html.encode(), "html") == html
    long = ("<p>" + "word " * 10_000 + "</p>").encode()
    assert len(view_artifact("text/html", long, "html", budget=200)) <= 200


def test_view_artifact_json_and_text():
    raw = extract_artifacts([display({"application/json": {"b": 1, "a": [1, 2]}})])[0].data
    assert view_artifact("application/json", raw) == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}'
    assert view_artifact("text/markdown", b"# hi") == "# hi"
    assert len(view_artifact("text/plain", b"z" * 100_000, budget=1000)) <= 1000


def test_view_artifact_rejects_unknown_views():
    with pytest.raises(ValueError, match=r"'raw' .*text/html.*valid views: text, html"):
        view_artifact("text/html", b"<p>x</p>", "raw")
    with pytest.raises(ValueError, match="valid views: summary, data"):
        view_artifact(PLOTLY_MIME_TYPE, b"{}", "html")
    with pytest.raises(ValueError, match=r"valid views: info$"):
        view_artifact("image/png", b"", "data")


def test_a_syntax_error_is_said_once(shell, monkeypatch):
    error = ipython_error(shell, monkeypatch, "x = (1 +\n")
    out = view_outputs([error])
    assert "x = (1 +" in out and "^" in out
    assert out.count("SyntaxError") == 1
    assert out.split("\n")[-1].startswith("SyntaxError: incomplete input")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "output",
    [
        None,
        {"output_type": "stream"},
        {"output_type": "unknown", "text": "?"},
        {"output_type": "error"},
        {"output_type": "error", "ename": "E", "traceback": "one string"},
        {"output_type": "display_data", "data": None},
        {"output_type": "display_data", "data": {"image/png": None}},
        {"output_type": "display_data", "data": {"image/jpeg": b64(b"\xff\xd8\xff\xc0\x00")}},
        {"output_type": "display_data", "data": {"image/jpeg": b64(b"\xff\xd8\xff\xe0\xff\xff")}},
        {"output_type": "display_data", "data": {"image/svg+xml": "<svg width='a' viewBox='a b'>"}},
        {"output_type": "display_data", "data": {"text/html": "<table><tr><td>a<td>b<tr><td>c"}},
        {"output_type": "display_data", "data": {"text/html": "</table></tr><td>x</pre></script>"}},
        {"output_type": "display_data", "data": {DATAFRAME_MIME_TYPE: {"shape": [1, 2]}}},
        {
            "output_type": "display_data",
            "data": {
                DATAFRAME_MIME_TYPE: {
                    "shape": [1, 9],
                    "dtypes": {"a": 1},
                    "head": "",
                    "describe": None,
                }
            },
        },
        {
            "output_type": "display_data",
            "data": {
                PLOTLY_MIME_TYPE: {
                    "data": [
                        {"x": {"dtype": "zz", "bdata": "AA=="}},
                        {"x": {"dtype": "f8", "bdata": "!!", "shape": "x"}},
                        {"x": {"dtype": "f8", "bdata": b64(b"\0" * 16), "shape": "3, 4"}},
                        {"y": [[1, "a", None], {"k": 1}, float("inf")], "name": ["n"], "mode": 3},
                        {"type": "pie", "labels": [], "values": []},
                        "not a trace",
                    ],
                    "layout": {"title": 5, "xaxis": "nope", "yaxis": {"title": {"text": None}}},
                    "frames": [{}, {}],
                }
            },
        },
    ],
)
def test_malformed_outputs_do_not_break_the_view(output):
    out = view_outputs([output, stream("still here\n")], budget=2000)
    assert out.endswith("still here")
    assert len(out) <= 2000
