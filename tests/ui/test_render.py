"""The UI's renderer and the page's event replay, without a browser."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json

from kernelagent.domain import Cell
from kernelagent.events import (
    AskUser,
    CellAdded,
    CellOutput,
    CellStarted,
    Logged,
    MessageDelta,
    TurnCompleted,
    TurnStarted,
)
from kernelagent.web.pages import live_state, outputs_from_events, session_tree
from kernelagent.web.render import (
    FOLD_LINES,
    Renderer,
    markdown_html,
    pick_mime,
    script_json,
    terminal_html,
    terminal_text,
)

PNG_1x1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
renderer = Renderer(frame_head='<script src="/static/frame.js" defer></script>')


def code_cell(outputs, **changes) -> Cell:
    cell = Cell(
        id="c1",
        session_id="s1",
        index=3,
        cell_type="code",
        source="x = 1\nx",
        role="agent",
        outputs=outputs,
        execution_count=2,
        status="ok",
        started_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        duration_ms=1234,
        metadata={},
    )
    return dataclasses.replace(cell, **changes)


def display(data, metadata=None):
    return {"output_type": "display_data", "data": data, "metadata": metadata or {}}


def test_markdown_is_sanitised_twice():
    html = str(
        markdown_html(
            "<script>alert(1)</script> **b** [x](javascript:alert(1)) <img src=x onerror=alert(1)>"
        )
    )
    assert "<script" not in html and "<img" not in html and "href" not in html
    assert "<strong>b</strong>" in html and "&lt;script&gt;" in html
    fenced = str(markdown_html("```python\nimport os\n```"))
    assert '<pre class="hl">' in fenced and '<span class="kn">import</span>' in fenced


def test_the_richest_mimetype_wins_and_private_ones_are_ignored():
    bundle = {
        "text/plain": "p",
        "image/png": PNG_1x1,
        "text/html": "<b>h</b>",
        "application/vnd.plotly.v1+json": {"data": []},
    }
    assert pick_mime(bundle) == "application/vnd.plotly.v1+json"
    assert pick_mime({"text/plain": "p", "text/markdown": "m"}) == "text/markdown"
    view = renderer.cell(
        code_cell([display({"application/vnd.kernelagent.dataframe+json": {}, "text/plain": "t"})])
    )
    assert view.outputs[0].kind == "text/plain"


def test_outputs_become_safe_html():
    svg = '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"></svg>'
    cell = code_cell(
        [
            {"output_type": "stream", "name": "stderr", "text": "\x1b[31mred\x1b[0m <b>"},
            display({"text/html": '<table><tr><td>"1"</td></tr></table>'}),
            display({"image/png": PNG_1x1}),
            display({"image/svg+xml": svg}),
            display({"application/json": {"a": "</script>"}}),
            display({"application/vnd.plotly.v1+json": {"data": [], "layout": {"height": 300}}}),
            {"output_type": "error", "ename": "E", "evalue": "v", "traceback": ["\x1b[1mE\x1b[0m"]},
        ]
    )
    view = renderer.cell(cell)
    html = [str(o.html) for o in view.outputs]
    assert 'class="out stderr"' in html[0] and "color" in html[0] and "&lt;b&gt;" in html[0]
    assert '<iframe class="html-frame" sandbox="allow-scripts"' in html[1]
    assert "allow-same-origin" not in html[1]
    assert 'srcdoc="<!doctype html>' not in html[1]  # the document is attribute-escaped
    assert "&lt;table&gt;" in html[1] and "/static/frame.js" in html[1]
    assert 'src="data:image/png;base64,' in html[2] and 'width="1" height="1"' in html[2]
    encoded = base64.b64encode(svg.encode()).decode()
    assert f'src="data:image/svg+xml;base64,{encoded}"' in html[3] and "<svg" not in html[3]
    assert "&lt;/script&gt;" in html[4]
    assert '<script type="application/json" class="plotly-figure">' in html[5]
    assert "</script>" not in html[5].split('class="plotly-figure">', 1)[1].split("</script>")[0]
    assert "min-height:300px" in html[5]
    assert "font-weight: bold" in html[6]
    assert view.who == "agent" and view.duration == "1.2 s" and view.execution_count == 2
    assert renderer.cell(code_cell([], role="gateway")).who == "gateway (JupyterLab)"
    assert renderer.cell(code_cell([], role="web")).who == "you"
    running = renderer.cell(code_cell([], status="pending", execution_count=None))
    assert running.status_text == "running…"


def test_long_text_is_folded():
    text = "\n".join(str(i) for i in range(FOLD_LINES + 10))
    view = renderer.cell(code_cell([{"output_type": "stream", "name": "stdout", "text": text}]))
    assert "is-folded" in view.outputs[0].html and f"show all ({FOLD_LINES + 10} lines)" in str(
        view.outputs[0].html
    )


def test_terminal_text_rewinds_lines():
    assert terminal_text("10%\r50%\r100%\ndone") == "100%\ndone"
    assert terminal_text("abc\b\bX") == "aXc"
    assert "&lt;" in terminal_html("<")


def test_script_json_cannot_close_its_script():
    text = str(script_json({"a": "</script><!--", "b": "\u2028"}))
    assert "<" not in text and ">" not in text
    assert json.loads(text) == {"a": "</script><!--", "b": "\u2028"}


def test_messages_by_role():
    def md(role, source, **meta):
        return dataclasses.replace(
            code_cell([]), cell_type="markdown", role=role, source=source, metadata=meta
        )

    assert renderer.cell(md("user", "**hi**", turn_id="t")).kind == "user"
    assert str(renderer.cell(md("user", "**hi**", turn_id="t")).body) == "**hi**"
    assert renderer.cell(md("user", "# doc")).kind == "markdown"  # an imported notebook's
    assert renderer.cell(md("assistant", "q?", tool="ask_user")).kind == "question"
    assert renderer.cell(md("user", "2024", answer_to="call")).kind == "answer"
    note = renderer.cell(md("system", "*no*", rejected=True, proposed_code="rm()"))
    assert note.kind == "note" and note.rejected_code is not None


def test_the_event_log_gives_what_the_record_does_not_have_yet():
    events = [
        Logged("1", TurnStarted(turn_id="t", model="m")),
        Logged("2", MessageDelta(turn_id="t", text="Hel")),
        Logged("3", MessageDelta(turn_id="t", text="lo")),
    ]
    assert live_state(events)["turn"]["text"] == "Hello"
    events += [
        Logged(
            "4",
            CellAdded(cell_id="a", index=3, role="assistant", source="", metadata={"turn_id": "t"}),
        ),
        Logged("5", AskUser(turn_id="t", question="Which?", cell_id="a")),
        Logged("6", CellStarted(cell_id="w", index=4, code="", role="web", metadata={})),
    ]
    turn = live_state(events)["turn"]
    assert turn["text"] == "" and turn["waiting"] == {"kind": "answer", "question": "Which?"}
    events.append(Logged("7", TurnCompleted(turn_id="t")))
    assert live_state(events)["turn"] is None

    stream = {"output_type": "stream", "name": "stdout"}
    outputs = [
        Logged("1", CellOutput(cell_id="c", index=0, output={**stream, "text": "a"})),
        Logged("2", CellOutput(cell_id="c", index=0, output={**stream, "text": "ab"})),
        Logged("3", CellOutput(cell_id="x", index=0, output={**stream, "text": "?"})),
        Logged("4", CellOutput(cell_id="c", index=1, output=display({"a": 1}))),
    ]
    assert [o.get("text") for o in outputs_from_events("c", outputs)] == ["ab", None]
    outputs.append(Logged("5", CellOutput(cell_id="c", cleared=True)))
    assert outputs_from_events("c", outputs) == []


def test_branches_sit_under_their_parent():
    def session(id, parent=None):
        return type("S", (), {"id": id, "parent_id": parent})()

    tree = session_tree([session("c", "a"), session("b"), session("a"), session("d", "gone")])
    assert [(s.id, depth) for s, depth, _ in tree] == [("b", 0), ("a", 0), ("c", 1), ("d", 0)]
