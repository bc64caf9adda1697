"""iopub messages → nbformat outputs, artifacts, and the normaliser replay compares with."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import nbformat
import nbformat.v4
import pytest

from kernelagent.services.outputs import (
    RICH_MIME_TYPES,
    ArtifactBlob,
    OutputCollector,
    extract_artifacts,
    normalise,
    truncation_marker,
)

PLOTLY = "application/vnd.plotly.v1+json"

TRACEBACK = [
    "\x1b[0;31m---------------------------------------------------------------------------\x1b[0m",
    "\x1b[0;31mZeroDivisionError\x1b[0m                         Traceback (most recent call last)",
    "Cell \x1b[0;32mIn[3], line 1\x1b[0m\n\x1b[0;32m----> 1\x1b[0m \x1b[38;5;241m1\x1b[39m"
    "\x1b[38;5;241m/\x1b[39m\x1b[38;5;241m0\x1b[39m\n",
    "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero",
]


# -- realistic message contents (as jupyter_client delivers msg["content"]) --------------------


def stream(text: str, name: str = "stdout") -> dict:
    return {"name": name, "text": text}


def display(data: dict, metadata: dict | None = None, display_id: str | None = None) -> dict:
    return {
        "data": data,
        "metadata": metadata or {},
        "transient": {"display_id": display_id} if display_id else {},
    }


def result(data: dict, count: int, display_id: str | None = None) -> dict:
    content = {"data": data, "metadata": {}, "execution_count": count}
    if display_id:
        content["transient"] = {"display_id": display_id}
    return content


def error() -> dict:
    return {"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": TRACEBACK}


def wire(content: dict) -> dict:
    """What arrives after jupyter_client's JSON round trip."""
    return json.loads(json.dumps(content))


def png_bytes(color: str = "tab:blue") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5), dpi=50)
    fig.add_subplot().plot([0, 1, 2], [2, 0, 1], color=color)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plotly_bundle(title: str = "sales") -> dict:
    import plotly.graph_objects as go
    import plotly.io as pio

    fig = go.Figure(go.Bar(x=["a", "b", "c"], y=[3, 1, 2]), layout={"title": {"text": title}})
    bundle = pio.renderers["plotly_mimetype"].to_mimebundle(fig)
    bundle["text/plain"] = "Figure()"
    return wire(bundle)


def validate_outputs(outputs: list[dict]) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x", outputs=[nbformat.from_dict(o) for o in outputs])
    nb.cells.append(cell)
    nbformat.validate(nb)


# -- the collector --------------------------------------------------------------------------


def test_shapes_match_nbformat_output_from_msg_and_validate():
    collector = OutputCollector()
    messages = [
        ("stream", stream("hello\n")),
        ("display_data", display({"text/plain": "<IPython.core.display.HTML object>"})),
        ("execute_result", result({"text/plain": "42"}, 3)),
        ("error", error()),
    ]
    for msg_type, content in messages:
        collector.feed(msg_type, wire(content))
    outputs = collector.outputs
    expected = [
        nbformat.v4.output_from_msg({"header": {"msg_type": t}, "content": c}) for t, c in messages
    ]
    assert outputs == expected
    assert outputs[2]["execution_count"] == 3
    assert outputs[3]["traceback"] == TRACEBACK
    assert all("transient" not in o for o in outputs)
    validate_outputs(outputs)


def test_stream_merging_across_interleaved_stdout_and_stderr():
    collector = OutputCollector()
    assert collector.feed("stream", stream("a\n")) == [
        {"output_type": "stream", "name": "stdout", "text": "a\n"}
    ]
    assert collector.last_indices == [0]
    assert collector.feed("stream", stream("b\n")) == [
        {"output_type": "stream", "name": "stdout", "text": "a\nb\n"}
    ]
    assert collector.last_indices == [0]
    collector.feed("stream", stream("oops\n", "stderr"))
    collector.feed("stream", stream("warn\n", "stderr"))
    collector.feed("stream", stream("c", "stdout"))
    collector.feed("stream", stream("\rd\n", "stdout"))  # \r kept as-is
    assert collector.last_indices == [2]
    assert collector.outputs == [
        {"output_type": "stream", "name": "stdout", "text": "a\nb\n"},
        {"output_type": "stream", "name": "stderr", "text": "oops\nwarn\n"},
        {"output_type": "stream", "name": "stdout", "text": "c\rd\n"},
    ]
    validate_outputs(collector.outputs)


def test_a_display_between_streams_breaks_the_merge():
    collector = OutputCollector()
    collector.feed("stream", stream("before\n"))
    collector.feed("display_data", display({"text/plain": "x"}))
    collector.feed("stream", stream("after\n"))
    assert [o["output_type"] for o in collector.outputs] == ["stream", "display_data", "stream"]


def test_handed_out_outputs_are_never_mutated():
    collector = OutputCollector()
    (first,) = collector.feed("stream", stream("a"))
    collector.feed("stream", stream("b"))
    assert first["text"] == "a"
    (shown,) = collector.feed("display_data", display({"text/plain": "0%"}, display_id="p"))
    collector.feed("update_display_data", display({"text/plain": "100%"}, display_id="p"))
    assert shown["data"] == {"text/plain": "0%"}
    content = display({"application/json": {"a": [1]}})
    collector.feed("display_data", content)
    content["data"]["application/json"]["a"].append(2)
    assert collector.outputs[-1]["data"]["application/json"] == {"a": [1]}


def test_update_display_data_replaces_every_output_with_that_display_id():
    collector = OutputCollector()
    collector.feed("display_data", display({"text/plain": "step 0"}, display_id="progress"))
    collector.feed("stream", stream("working\n"))
    collector.feed("display_data", display({"text/plain": "other"}, display_id="other"))
    collector.feed("execute_result", result({"text/plain": "step 0"}, 5, display_id="progress"))
    changed = collector.feed(
        "update_display_data",
        {
            "data": {"text/plain": "step 9", "text/html": "<b>step 9</b>"},
            "metadata": {"isolated": True},
            "transient": {"display_id": "progress"},
        },
    )
    assert collector.last_indices == [0, 3]
    assert changed == [
        {
            "output_type": "display_data",
            "data": {"text/plain": "step 9", "text/html": "<b>step 9</b>"},
            "metadata": {"isolated": True},
        },
        {
            "output_type": "execute_result",
            "data": {"text/plain": "step 9", "text/html": "<b>step 9</b>"},
            "metadata": {"isolated": True},
            "execution_count": 5,
        },
    ]
    outputs = collector.outputs
    assert outputs[0] == changed[0] and outputs[3] == changed[1]
    assert outputs[1]["text"] == "working\n"
    assert outputs[2]["data"] == {"text/plain": "other"}
    assert all("transient" not in o for o in outputs)
    validate_outputs(outputs)


def test_update_for_an_unknown_display_id_changes_nothing():
    collector = OutputCollector()
    collector.feed("display_data", display({"text/plain": "a"}))  # no display id
    before = collector.outputs
    assert (
        collector.feed("update_display_data", display({"text/plain": "b"}, display_id="x")) is None
    )
    assert collector.feed("update_display_data", {"data": {}, "metadata": {}}) is None
    assert collector.outputs == before


def test_clear_output_without_wait_clears_at_once():
    collector = OutputCollector()
    collector.feed("stream", stream("old\n"))
    collector.feed("display_data", display({"text/plain": "a"}, display_id="d"))
    assert collector.feed("clear_output", {"wait": False}) == []
    assert collector.cleared
    assert collector.outputs == []
    # display ids are forgotten with the outputs they pointed to
    assert (
        collector.feed("update_display_data", display({"text/plain": "b"}, display_id="d")) is None
    )
    collector.feed("stream", stream("new\n"))
    assert not collector.cleared
    assert collector.outputs == [{"output_type": "stream", "name": "stdout", "text": "new\n"}]


def test_clear_output_with_wait_clears_when_the_next_output_arrives():
    collector = OutputCollector()
    collector.feed("stream", stream("10%\n"))
    collector.feed("display_data", display({"text/plain": "bar"}, display_id="bar"))
    assert collector.feed("clear_output", {"wait": True}) is None
    assert not collector.cleared
    assert len(collector.outputs) == 2
    # an update does not trigger the pending clear (as in JupyterLab)
    collector.feed("update_display_data", display({"text/plain": "bar 2"}, display_id="bar"))
    assert len(collector.outputs) == 2
    # neither do ignored messages or an empty stream
    assert collector.feed("status", {"execution_state": "busy"}) is None
    assert collector.feed("stream", stream("")) is None
    assert len(collector.outputs) == 2
    added = collector.feed("stream", stream("20%\n"))
    assert collector.cleared
    assert added == [{"output_type": "stream", "name": "stdout", "text": "20%\n"}]
    assert collector.outputs == added
    assert collector.last_indices == [0]
    # the pending clear fired once only
    collector.feed("stream", stream("30%\n"))
    assert not collector.cleared
    assert collector.outputs[0]["text"] == "20%\n30%\n"


def test_repeated_wait_clears_keep_only_the_last_frame():
    collector = OutputCollector()
    for i in range(5):
        collector.feed("clear_output", {"wait": True})
        collector.feed("display_data", display({"text/plain": f"frame {i}"}))
    assert collector.outputs == [
        {"output_type": "display_data", "data": {"text/plain": "frame 4"}, "metadata": {}}
    ]


@pytest.mark.parametrize("msg_type", ["status", "execute_input", "execute_reply", "comm_msg"])
def test_other_message_types_are_ignored(msg_type):
    collector = OutputCollector()
    assert collector.feed(msg_type, {"execution_state": "idle", "code": "1"}) is None
    assert collector.outputs == []


def test_bundle_values_are_stored_as_nbformat_does():
    collector = OutputCollector()
    collector.feed(
        "display_data",
        display(
            {
                "text/plain": ["line 1\n", "line 2"],  # list of str → one str
                "application/json": '{"b": 1, "a": [1, 2]}',  # JSON sent as text → parsed
                "application/vnd.custom+json": {"k": "v"},
            }
        ),
    )
    (out,) = collector.outputs
    assert out["data"] == {
        "text/plain": "line 1\nline 2",
        "application/json": {"b": 1, "a": [1, 2]},
        "application/vnd.custom+json": {"k": "v"},
    }
    validate_outputs(collector.outputs)


def test_real_plotly_and_matplotlib_outputs_validate():
    png = base64.b64encode(png_bytes()).decode()
    collector = OutputCollector()
    collector.feed("display_data", wire(display(plotly_bundle())))
    collector.feed(
        "display_data",
        wire(display({"image/png": png, "text/plain": "<Figure size 100x75 with 1 Axes>"})),
    )
    outputs = collector.outputs
    assert isinstance(outputs[0]["data"][PLOTLY], dict)
    assert outputs[0]["data"][PLOTLY]["layout"]["title"]["text"] == "sales"
    assert outputs[1]["data"]["image/png"] == png
    validate_outputs(outputs)


# -- the stream cap -------------------------------------------------------------------------


def test_cap_keeps_the_head_and_counts_the_rest_exactly():
    collector = OutputCollector(stream_limit=10)
    (out,) = collector.feed("stream", stream("0123456789abc"))
    assert out["text"] == "0123456789\n" + truncation_marker(3)
    assert out["text"].endswith("[kernelagent: output truncated, 3 more characters not kept]\n")
    (out,) = collector.feed("stream", stream("xyz", "stderr"))
    assert out["text"] == "0123456789\n" + truncation_marker(6)
    assert collector.dropped_chars == 6
    assert collector.outputs == [out]
    validate_outputs(collector.outputs)


def test_cap_applies_across_streams_and_marks_where_it_was_hit():
    collector = OutputCollector(stream_limit=10)
    collector.feed("stream", stream("stdout"))  # 6 kept
    collector.feed("stream", stream("err-line\n", "stderr"))  # 4 kept, 5 dropped
    collector.feed("display_data", display({"text/plain": "image"}))
    (marked,) = collector.feed("stream", stream("more\n"))  # 5 more dropped
    assert collector.last_indices == [1]
    outputs = collector.outputs
    assert marked == outputs[1]
    assert outputs[0]["text"] == "stdout"
    assert outputs[1] == {
        "output_type": "stream",
        "name": "stderr",
        "text": "err-\n" + truncation_marker(10),
    }
    assert outputs[2]["output_type"] == "display_data"
    assert len(outputs) == 3
    kept = sum(len(o["text"]) for o in outputs if o["output_type"] == "stream")
    assert kept - len("\n" + truncation_marker(10)) == 10


def test_cap_marker_follows_a_newline_without_a_blank_line():
    collector = OutputCollector(stream_limit=6)
    collector.feed("stream", stream("line1\nline2\n"))
    assert collector.outputs[0]["text"] == "line1\n" + truncation_marker(6)


def test_cap_reached_exactly_then_more_after_a_display():
    collector = OutputCollector(stream_limit=4)
    collector.feed("stream", stream("abcd"))
    assert collector.outputs[0]["text"] == "abcd"
    collector.feed("display_data", display({"text/plain": "x"}))
    collector.feed("stream", stream("ef", "stderr"))
    assert collector.outputs[2] == {
        "output_type": "stream",
        "name": "stderr",
        "text": truncation_marker(2),
    }
    validate_outputs(collector.outputs)


def test_cap_on_a_realistic_flood_of_prints():
    collector = OutputCollector()  # 100_000 characters
    line = "x" * 99 + "\n"
    for _ in range(3000):
        collector.feed("stream", stream(line))
    (out,) = collector.outputs
    head, marker = out["text"][:100_000], out["text"][100_000:]
    assert head == line * 1000
    assert marker == truncation_marker(200_000)


def test_clear_restarts_the_budget():
    collector = OutputCollector(stream_limit=5)
    collector.feed("stream", stream("1234567"))
    collector.feed("clear_output", {"wait": False})
    assert collector.dropped_chars == 0
    collector.feed("stream", stream("abc"))
    collector.feed("stream", stream("defg"))
    assert collector.outputs[0]["text"] == "abcde\n" + truncation_marker(2)


def test_zero_limit_keeps_only_the_marker():
    collector = OutputCollector(stream_limit=0)
    collector.feed("stream", stream("abc"))
    assert collector.outputs == [
        {"output_type": "stream", "name": "stdout", "text": truncation_marker(3)}
    ]
    with pytest.raises(ValueError):
        OutputCollector(stream_limit=-1)


# -- artifacts ------------------------------------------------------------------------------


def test_rich_mime_types():
    assert set(RICH_MIME_TYPES) == {
        "image/png",
        "image/jpeg",
        "image/svg+xml",
        "text/html",
        PLOTLY,
        "application/json",
        "text/markdown",
        "text/latex",
        "application/pdf",
    }


def test_extract_artifacts_decodes_each_rich_mimetype():
    png = png_bytes()
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(64))
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n"
    svg = '<svg xmlns="http://www.w3.org/2000/svg"><text>é ✓</text></svg>'
    figure = plotly_bundle()[PLOTLY]
    b64_wrapped = base64.encodebytes(png).decode()  # base64 with newlines, as old kernels sent
    outputs = [
        {"output_type": "stream", "name": "stdout", "text": "ignored"},
        {"output_type": "error", "ename": "E", "evalue": "", "traceback": []},
        {
            "output_type": "display_data",
            "data": {"image/png": b64_wrapped, "text/plain": "<Figure>"},
            "metadata": {},
        },
        {
            "output_type": "execute_result",
            "execution_count": 2,
            "metadata": {},
            "data": {
                "text/html": "<table><td>数据</td></table>",
                "text/markdown": "**bold** ✓",
                "text/latex": "$\\alpha$",
                "application/json": {"b": [1, 2], "a": None},
                "text/plain": "plain is not an artifact",
            },
        },
        {
            "output_type": "display_data",
            "metadata": {},
            "data": {
                "image/jpeg": base64.b64encode(jpeg).decode(),
                "image/svg+xml": svg,
                "application/pdf": base64.b64encode(pdf).decode(),
                PLOTLY: figure,
            },
        },
    ]
    blobs = extract_artifacts(outputs)
    by_mime = {b.mime_type: b for b in blobs}
    assert len(blobs) == len(by_mime) == 9
    assert by_mime["image/png"].data == png
    assert by_mime["image/jpeg"].data == jpeg
    assert by_mime["application/pdf"].data == pdf
    assert by_mime["image/svg+xml"].data == svg.encode("utf-8")
    assert by_mime["text/html"].data == "<table><td>数据</td></table>".encode()
    assert by_mime["text/markdown"].data == "**bold** ✓".encode()
    assert by_mime["text/latex"].data == b"$\\alpha$"
    assert by_mime["application/json"].data == b'{"a":null,"b":[1,2]}'
    assert by_mime[PLOTLY].data == json.dumps(figure, sort_keys=True, separators=(",", ":")).encode(
        "utf-8"
    )
    for blob in blobs:
        assert blob.sha256 == hashlib.sha256(blob.data).hexdigest()
        assert blob.size == len(blob.data)
    assert [b.mime_type for b in blobs] == [
        "image/png",
        "text/html",
        "application/json",
        "text/markdown",
        "text/latex",
        "image/jpeg",
        "image/svg+xml",
        PLOTLY,
        "application/pdf",
    ]


def test_identical_content_gives_identical_digests_and_is_extracted_once():
    png = base64.b64encode(png_bytes()).decode()
    other = base64.b64encode(png_bytes("tab:red")).decode()
    outputs = [
        {"output_type": "display_data", "data": {"image/png": png}, "metadata": {}},
        {"output_type": "display_data", "data": {"image/png": other}, "metadata": {}},
        {"output_type": "display_data", "data": {"image/png": png}, "metadata": {"x": 1}},
        # the same JSON with keys in another order is the same artifact
        {"output_type": "display_data", "data": {"application/json": {"a": 1, "b": 2}}},
        {"output_type": "display_data", "data": {"application/json": {"b": 2, "a": 1}}},
        # the same bytes under two mimetypes stay two artifacts
        {"output_type": "display_data", "data": {"text/html": "same", "text/markdown": "same"}},
    ]
    blobs = extract_artifacts(outputs)
    assert [b.mime_type for b in blobs] == [
        "image/png",
        "image/png",
        "application/json",
        "text/html",
        "text/markdown",
    ]
    assert blobs[0].sha256 != blobs[1].sha256
    assert blobs[3].sha256 == blobs[4].sha256
    again = extract_artifacts(outputs[:1])
    assert again == [blobs[0]]
    assert isinstance(blobs[0], ArtifactBlob)
    with pytest.raises(AttributeError):
        blobs[0].sha256 = "x"  # type: ignore[misc]


def test_undecodable_base64_is_skipped():
    outputs = [{"output_type": "display_data", "data": {"image/png": "abc"}, "metadata": {}}]
    assert extract_artifacts(outputs) == []


# -- normalisation --------------------------------------------------------------------------


def test_normalise_ignores_execution_counts_and_transient():
    a = [{"output_type": "execute_result", "execution_count": 1, "data": {"text/plain": "3"}}]
    b = [
        {
            "output_type": "execute_result",
            "execution_count": 7,
            "data": {"text/plain": "3"},
            "metadata": {},
            "transient": {"display_id": "x"},
        }
    ]
    assert normalise(a) == normalise(b)
    assert "execution_count" not in normalise(a)[0]
    assert normalise(a) != normalise([{**a[0], "data": {"text/plain": "4"}}])


def test_normalise_replaces_memory_addresses():
    def out(addr):
        return [{"output_type": "stream", "name": "stdout", "text": f"<Foo object at {addr}>\n"}]

    assert normalise(out("0x7f3a2c1b5e10")) == normalise(out("0x7f0011223344"))
    assert normalise(out("0x7f3a2c1b5e10"))[0]["text"] == "<Foo object at 0x<address>>\n"
    # short hex literals are data, not addresses
    assert normalise(out("0x1f")) != normalise(out("0x2f"))


def test_normalise_replaces_uuids_such_as_plotly_div_ids():
    import plotly.graph_objects as go
    import plotly.io as pio

    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    first = pio.renderers["notebook_connected"].to_mimebundle(fig)
    second = pio.renderers["notebook_connected"].to_mimebundle(fig)
    assert first["text/html"] != second["text/html"]  # random div ids
    one = [{"output_type": "display_data", "data": first, "metadata": {}}]
    two = [{"output_type": "display_data", "data": second, "metadata": {}}]
    assert normalise(one) == normalise(two)
    assert "<uuid>" in normalise(one)[0]["data"]["text/html"]
    # uuids inside JSON values too (e.g. trace uids)
    j1 = {"data": [{"uid": "3f2b8c9e-2a4b-4d7c-9f1e-0a1b2c3d4e5f"}], "layout": {}}
    j2 = {"data": [{"uid": "11111111-2222-4333-8444-555555555555"}], "layout": {}}
    assert normalise([{"output_type": "display_data", "data": {PLOTLY: j1}}]) == normalise(
        [{"output_type": "display_data", "data": {PLOTLY: j2}}]
    )


def test_normalise_replaces_timings():
    def run(text):
        return normalise([{"output_type": "stream", "name": "stdout", "text": text}])

    assert run("CPU times: user 1.23 ms, sys: 0 ns, total: 1.23 ms\nWall time: 2.38 ms\n") == run(
        "CPU times: user 4.5 s, sys: 12 µs, total: 4.5 s\nWall time: 5.01 s\n"
    )
    assert run(
        "1.23 µs ± 4.56 ns per loop (mean ± std. dev. of 7 runs, 1,000,000 loops each)\n"
    ) == run("812 ns ± 10.1 ns per loop (mean ± std. dev. of 7 runs, 100,000 loops each)\n")
    assert run("started 2024-05-01T12:00:01.123456+00:00\n") == run("started 2025-01-31 23:59:59\n")
    assert run("at 12:00:01\n") == run("at 09:15:42.5\n")
    assert run("100%|██████████| 10/10 [00:01<00:00,  9.87it/s]\n") == run(
        "100%|██████████| 10/10 [00:03<00:00,  3.01it/s]\n"
    )
    assert run("took 3s\n") == run("took 12.5s\n")
    # ordinary numbers are kept
    assert run("mean 1.25\n") != run("mean 1.26\n")
    assert run("10 items\n") != run("11 items\n")


def test_normalise_compares_images_by_mime_type_and_size():
    def image(payload: bytes, mime="image/png"):
        data = {mime: base64.b64encode(payload).decode(), "text/plain": "<Figure>"}
        return [{"output_type": "display_data", "data": data, "metadata": {}}]

    a = b"\x89PNG" + b"a" * 100
    b = b"\x89PNG" + b"b" * 100
    c = b"\x89PNG" + b"c" * 101
    assert normalise(image(a)) == normalise(image(b))
    assert normalise(image(a))[0]["data"]["image/png"] == {"mime": "image/png", "size": 104}
    assert normalise(image(a)) != normalise(image(c))
    assert normalise(image(a)) != normalise(image(a, "image/jpeg"))
    svg = [{"output_type": "display_data", "data": {"image/svg+xml": "<svg>é</svg>"}}]
    assert normalise(svg)[0]["data"]["image/svg+xml"] == {"mime": "image/svg+xml", "size": 13}
    png = base64.b64encode(png_bytes()).decode()
    real = [{"output_type": "display_data", "data": {"image/png": png}, "metadata": {}}]
    assert normalise(real)[0]["data"]["image/png"]["size"] == len(png_bytes())


# IPython 9 colours each word of the location line
TRACEBACK_IPYTHON9 = [
    "\x1b[91mZeroDivisionError\x1b[39m                         Traceback (most recent call last)",
    "\x1b[96mCell\x1b[39m\x1b[96m \x1b[39m\x1b[32mIn[1]\x1b[39m\x1b[32m, line 1\x1b[39m\n",
    "\x1b[91mZeroDivisionError\x1b[39m: division by zero",
]


@pytest.mark.parametrize("traceback", [TRACEBACK, TRACEBACK_IPYTHON9, ["Input In [3], in <cell>"]])
def test_normalise_errors_ignore_execution_counts_in_tracebacks(traceback):
    other = [line.replace("In[1]", "In[12]").replace("In [3]", "In [4]") for line in traceback]
    other = [line.replace("In[3]", "In[12]") for line in other]
    one = [{"output_type": "error", **error(), "traceback": traceback}]
    two = [{"output_type": "error", **error(), "traceback": other}]
    assert one != two
    assert normalise(one) == normalise(two)


def test_normalise_errors_ignore_kernel_file_names():
    path1 = [{"output_type": "error", **error(), "traceback": ["File /tmp/ipykernel_41/123.py:1"]}]
    path2 = [{"output_type": "error", **error(), "traceback": ["File /tmp/ipykernel_7/987.py:1"]}]
    assert normalise(path1) == normalise(path2)
    assert normalise(path1) != normalise([{**path1[0], "evalue": "other"}])


def test_normalise_merges_split_streams():
    split = [
        {"output_type": "stream", "name": "stdout", "text": ["a\n", "b\n"]},
        {"output_type": "stream", "name": "stdout", "text": "c\n"},
        {"output_type": "stream", "name": "stderr", "text": "w\n"},
    ]
    merged = [
        {"output_type": "stream", "name": "stdout", "text": "a\nb\nc\n"},
        {"output_type": "stream", "name": "stderr", "text": "w\n"},
    ]
    assert normalise(split) == normalise(merged) == merged
    assert split[1]["text"] == "c\n"  # inputs untouched


def test_normalise_of_collected_runs_matches():
    def run(count, address, took):
        collector = OutputCollector()
        collector.feed("stream", stream(f"took {took} ms\n"))
        collector.feed("stream", stream(f"obj <A at {address}>\n"))
        collector.feed("execute_result", result({"text/plain": "[1, 2]"}, count))
        return collector.outputs

    assert normalise(run(1, "0x7fa000000000", 12.5)) == normalise(run(9, "0x55d1c0ffee00", 3))
