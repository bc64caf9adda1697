"""The kernel WebSocket wire formats (``kernelagent.web.gateway.wire``).

Frames are checked three ways: round trips through this module, frames assembled here by hand
from the documented layouts (what JupyterLab's ``serialize.ts`` writes), and — when
jupyter_server is installed — byte-for-byte agreement with jupyter_server's own functions.
"""

from __future__ import annotations

import copy
import json
import struct
import subprocess
import sys
from typing import Any

import pytest
from jupyter_client.session import Session, json_packer

from kernelagent.web.gateway import wire
from kernelagent.web.gateway.wire import (
    CHANNELS,
    V1_SUBPROTOCOL,
    FrameError,
    decode_legacy,
    decode_v1,
    encode_legacy,
    encode_v1,
    msg_to_parts,
    msg_to_v1,
    negotiate,
    parts_to_msg,
    v1_to_msg,
)

ALL_BYTES = bytes(range(256))
BUFFER_SETS = [
    pytest.param([], id="no-buffers"),
    pytest.param([ALL_BYTES], id="all-bytes"),
    pytest.param([b""], id="empty"),
    pytest.param([ALL_BYTES, b"", b"\x00", ALL_BYTES[::-1]], id="several"),
    pytest.param([b"tail", b""], id="empty-last"),
]


def message(channel: str = "shell", msg_type: str = "execute_request") -> dict[str, Any]:
    """A message in jupyter_client's deserialized shape and key order (dates as strings)."""
    header = {
        "msg_id": "c0ffee00-1111-2222-3333-444444444444_1_1",
        "msg_type": msg_type,
        "username": "ünïcode",
        "session": "5e55-10n",
        "date": "2024-05-06T07:08:09.123456Z",
        "version": "5.3",
    }
    return {
        "header": header,
        "msg_id": header["msg_id"],
        "msg_type": msg_type,
        "parent_header": {"msg_id": "parent", "date": "2024-05-06T07:08:08.000001+00:00"},
        "metadata": {"cellId": "abc", "deletedCells": []},
        "content": {"code": "print('héllo ✓ 😀')\n", "silent": False, "n": 1.5, "none": None},
        "buffers": [],
        "channel": channel,
    }


def v1_parts(msg: dict[str, Any], buffers: list[bytes]) -> list[bytes]:
    return [json_packer(msg[k]) for k in ("header", "parent_header", "metadata", "content")] + [
        *buffers
    ]


def raw_v1(chunks: list[bytes]) -> bytes:
    """The v1 layout, assembled independently: count, offsets (+ end), channel, parts."""
    count = len(chunks) + 1
    offsets = [8 * (count + 1)]
    for chunk in chunks:
        offsets.append(offsets[-1] + len(chunk))
    return struct.pack(f"<{count + 1}Q", count, *offsets) + b"".join(chunks)


def raw_legacy(chunks: list[bytes]) -> bytes:
    """The legacy binary layout, assembled independently: count, offsets (no end), parts."""
    offsets = [4 * (len(chunks) + 1)]
    for chunk in chunks[:-1]:
        offsets.append(offsets[-1] + len(chunk))
    return struct.pack(f"!{len(chunks) + 1}I", len(chunks), *offsets) + b"".join(chunks)


def jupyterlab_json(obj: Any) -> bytes:
    """``JSON.stringify`` as JupyterLab sends it: compact, non-ASCII left as UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# -- negotiation --------------------------------------------------------------------------------


def test_negotiate_picks_v1_when_offered():
    assert negotiate(["foo", V1_SUBPROTOCOL]) == V1_SUBPROTOCOL
    assert negotiate([" v1.kernel.websocket.jupyter.org "]) == V1_SUBPROTOCOL
    assert negotiate([]) is None
    assert negotiate(["v2.kernel.websocket.jupyter.org", "v1"]) is None


def test_channels_are_the_four_jupyter_server_bridges():
    assert frozenset({"shell", "iopub", "stdin", "control"}) == CHANNELS
    assert "hb" not in CHANNELS


# -- legacy protocol ----------------------------------------------------------------------------


@pytest.mark.parametrize("buffers", BUFFER_SETS)
@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_legacy_round_trip(channel, buffers):
    msg = message(channel)
    frame = encode_legacy(msg, buffers)
    assert isinstance(frame, bytes if buffers else str)
    decoded = decode_legacy(frame)
    assert decoded == {**msg, "buffers": buffers}
    assert all(type(b) is bytes for b in decoded["buffers"])
    assert decoded["header"]["date"] == "2024-05-06T07:08:09.123456Z"  # dates stay strings


def test_legacy_encode_does_not_touch_its_input():
    msg = message()
    msg["buffers"] = [b"stale"]
    before = copy.deepcopy(msg)
    text = encode_legacy(msg)
    assert json.loads(text)["buffers"] == []
    encode_legacy(msg, [b"new"])
    assert msg == before
    assert decode_legacy(encode_legacy(msg, [b"new"]))["buffers"] == [b"new"]


def test_legacy_text_frame_layout():
    msg = {k: v for k, v in message().items() if k != "buffers"}
    text = encode_legacy(msg)
    assert json.loads(text) == {**msg, "buffers": []}
    assert list(json.loads(text))[-1] == "buffers"
    assert text.isascii()  # as jupyter_server's json.dumps: non-ASCII escaped


def test_legacy_binary_frame_layout():
    msg = message()
    frame = encode_legacy(msg, [ALL_BYTES, b""])
    body = {k: v for k, v in msg.items() if k != "buffers"}
    json_bytes = json.dumps(body).encode()
    assert frame == raw_legacy([json_bytes, ALL_BYTES, b""])
    (count,) = struct.unpack_from("!I", frame)
    assert count == 3
    assert struct.unpack_from("!3I", frame, 4) == (16, 16 + len(json_bytes), len(frame))


def test_legacy_decodes_jupyterlab_frames():
    msg = message()
    del msg["msg_id"], msg["msg_type"]
    # JupyterLab's serializeDefault: JSON text including its (empty) buffers
    text = jupyterlab_json({**msg, "buffers": []}).decode()
    assert decode_legacy(text) == msg
    # serializeBinary: the JSON without buffers, then the buffers
    body = {k: v for k, v in msg.items() if k != "buffers"}
    frame = raw_legacy([jupyterlab_json(body), b"\x01\x02", ALL_BYTES])
    assert decode_legacy(frame) == {**msg, "buffers": [b"\x01\x02", ALL_BYTES]}
    assert decode_legacy(bytearray(frame)) == decode_legacy(memoryview(frame))


def test_legacy_binary_with_no_buffers_is_accepted():
    body = {k: v for k, v in message().items() if k != "buffers"}
    assert decode_legacy(raw_legacy([jupyterlab_json(body)]))["buffers"] == []


@pytest.mark.parametrize("channel", [None, "absent"])
def test_legacy_missing_channel_means_shell(channel):
    msg = {k: v for k, v in message().items() if k not in ("channel", "buffers")}
    if channel is None:
        msg["channel"] = None
    assert decode_legacy(json.dumps(msg))["channel"] == "shell"


def test_legacy_null_parent_header_is_tolerated():
    msg = message()
    msg["parent_header"] = None
    assert decode_legacy(encode_legacy(msg))["parent_header"] is None


# -- v1.kernel.websocket.jupyter.org ---------------------------------------------------------


@pytest.mark.parametrize("buffers", BUFFER_SETS)
@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_v1_raw_round_trip(channel, buffers):
    parts = v1_parts(message(channel), buffers)
    frame = encode_v1(channel, parts)
    assert isinstance(frame, bytes)
    assert decode_v1(frame) == (channel, parts)
    assert all(type(p) is bytes for p in decode_v1(frame)[1])


@pytest.mark.parametrize("buffers", BUFFER_SETS)
def test_v1_message_round_trip(buffers):
    msg = message("iopub", "display_data")
    frame = msg_to_v1(msg, buffers)
    assert v1_to_msg(frame) == {**msg, "buffers": buffers}
    assert decode_v1(frame) == ("iopub", v1_parts(msg, buffers))


def test_v1_frame_layout():
    parts = v1_parts(message(), [ALL_BYTES, b""])
    frame = encode_v1("shell", parts)
    assert frame == raw_v1([b"shell", *parts])
    count = int.from_bytes(frame[:8], "little")
    assert count == len(parts) + 2  # channel start, each part's start, and the end
    offsets = struct.unpack_from(f"<{count}Q", frame, 8)
    assert offsets[0] == 8 * (count + 1)
    assert offsets[1] - offsets[0] == len(b"shell")
    assert offsets[-1] == len(frame)
    assert frame[offsets[-2] : offsets[-1]] == b""
    assert frame[offsets[-3] : offsets[-2]] == ALL_BYTES


def test_v1_decodes_jupyterlab_frames():
    msg = message("control", "interrupt_request")
    chunks = [jupyterlab_json(msg[k]) for k in ("header", "metadata", "content")]
    frame = raw_v1([b"control", chunks[0], b"{}", chunks[1], chunks[2], ALL_BYTES])
    assert decode_v1(frame) == ("control", [chunks[0], b"{}", chunks[1], chunks[2], ALL_BYTES])
    decoded = v1_to_msg(frame)
    assert decoded["content"] == msg["content"]
    assert decoded["parent_header"] == {}
    assert decoded["buffers"] == [ALL_BYTES]


def test_v1_accepts_bytes_likes():
    parts = v1_parts(message(), [ALL_BYTES])
    frame = encode_v1("shell", [memoryview(p) for p in parts[:-1]] + [bytearray(parts[-1])])
    assert frame == encode_v1("shell", parts)
    assert decode_v1(memoryview(frame)) == decode_v1(bytearray(frame)) == ("shell", parts)
    wide = memoryview(ALL_BYTES).cast("I")  # nbytes, not len(), counts
    assert decode_v1(encode_v1("shell", [*parts[:-1], wide]))[1][-1] == ALL_BYTES


def test_msg_to_v1_sends_null_parent_header_as_empty_object():
    msg = message()
    msg["parent_header"] = None
    assert decode_v1(msg_to_v1(msg))[1][1] == b"{}"


def test_lone_surrogates_become_json_escapes():
    msg = message()
    msg["content"] = {"text": "bad \ud800 surrogate"}
    parts = msg_to_parts(msg)
    assert parts[3] == b'{"text": "bad \\ud800 surrogate"}'
    assert v1_to_msg(msg_to_v1(msg))["content"] == msg["content"]


# -- raw parts <-> message dicts, against jupyter_client's Session ---------------------------


def test_parts_agree_with_jupyter_client_session():
    session = Session(key=b"secret", packer="json", unpacker="json")
    msg = session.msg("comm_msg", content={"data": {"x": "ÿ"}}, metadata={"m": 1})
    wire_parts = session.serialize(msg)  # [DELIM, signature, header, parent, metadata, content]
    frame = encode_v1("shell", wire_parts[2:])
    channel, parts = decode_v1(frame)
    assert session.sign(parts[:4]) == wire_parts[1]  # forwarded unchanged: the signature holds
    as_msg = parts_to_msg(channel, [*parts, ALL_BYTES])
    assert as_msg["header"]["date"] == msg["header"]["date"].isoformat().replace("+00:00", "Z")
    assert as_msg["content"] == msg["content"]
    assert as_msg["buffers"] == [ALL_BYTES]
    ours = msg_to_parts(as_msg, [ALL_BYTES])
    back = session.deserialize([session.sign(ours[:4]), *ours])
    assert back["content"] == msg["content"]
    assert back["header"]["msg_id"] == msg["header"]["msg_id"]
    assert bytes(back["buffers"][0]) == ALL_BYTES


def test_parts_to_msg_has_session_deserialize_shape():
    msg = parts_to_msg("iopub", v1_parts(message("iopub"), [b"b"]))
    assert list(msg) == [
        "header",
        "msg_id",
        "msg_type",
        "parent_header",
        "metadata",
        "content",
        "buffers",
        "channel",
    ]


@pytest.mark.parametrize("buffers", BUFFER_SETS)
@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_legacy_from_the_kernels_parts_is_the_message_encode_legacy_writes(channel, buffers):
    """Spliced from the kernel's JSON parts, not re-encoded: the same message, keys in the same
    order, as jupyter_server's legacy frame of the deserialized message."""
    msg = message(channel, "stream")
    frame = wire.encode_legacy_parts(channel, msg["msg_id"], "stream", v1_parts(msg, buffers))
    if buffers:
        assert decode_legacy(frame) == {**msg, "buffers": buffers}
        expected = json.loads(wire._split_legacy(memoryview(encode_legacy(msg, buffers)))[0])
        assert list(json.loads(wire._split_legacy(memoryview(frame))[0])) == list(expected)
    else:
        text = frame.decode("utf-8")  # a text frame's payload
        assert json.loads(text) == json.loads(encode_legacy(msg))
        assert list(json.loads(text)) == list(json.loads(encode_legacy(msg)))
        assert decode_legacy(text) == msg


def test_legacy_from_parts_refuses_what_would_be_a_malformed_frame():
    msg = message()
    with pytest.raises(ValueError, match="channel"):
        wire.encode_legacy_parts("nowhere", "id", "stream", v1_parts(msg, []))
    with pytest.raises(ValueError, match="3 parts"):
        wire.encode_legacy_parts("iopub", "id", "stream", v1_parts(msg, [])[:3])


# -- byte-for-byte agreement with jupyter_server ------------------------------------------------


@pytest.fixture
def js():
    return pytest.importorskip("jupyter_server.services.kernels.connection.base")


@pytest.mark.parametrize("buffers", BUFFER_SETS)
def test_legacy_matches_jupyter_server(js, buffers):
    from jupyter_client.jsonutil import json_default

    msg = message()
    if buffers:
        theirs = js.serialize_binary_message({**msg, "buffers": buffers})
    else:  # _reserialize_reply: json.dumps of the deserialized message, channel added
        theirs = json.dumps(msg, default=json_default)
    assert encode_legacy(msg, buffers) == theirs
    if buffers:
        back = js.deserialize_binary_message(theirs)
        assert [bytes(b) for b in back["buffers"]] == buffers
        assert back["content"] == msg["content"]
        assert back["channel"] == msg["channel"]
        assert decode_legacy(theirs) == {**msg, "buffers": buffers}


@pytest.mark.parametrize("buffers", BUFFER_SETS)
def test_v1_matches_jupyter_server(js, buffers):
    msg = message("iopub")
    parts = v1_parts(msg, buffers)
    theirs = js.serialize_msg_to_ws_v1(parts, "iopub")
    assert encode_v1("iopub", parts) == theirs
    assert decode_v1(theirs) == ("iopub", parts)
    assert js.deserialize_msg_from_ws_v1(encode_v1("iopub", parts)) == ("iopub", parts)


def test_msg_to_v1_matches_jupyter_server_pack(js):
    msg = message("iopub", "status")
    assert msg_to_v1(msg) == js.serialize_msg_to_ws_v1(msg, "iopub", json_packer)


# -- malformed frames ---------------------------------------------------------------------------


def test_frame_error_is_a_value_error():
    assert issubclass(FrameError, ValueError)


def _without(key: str) -> dict[str, Any]:
    msg = message()
    del msg[key]
    return msg


def _header_without(key: str) -> dict[str, Any]:
    msg = message()
    del msg["header"][key]
    return msg


def _with(**fields: Any) -> dict[str, Any]:
    return {**message(), **fields}


def _header_with(**fields: Any) -> dict[str, Any]:
    msg = message()
    msg["header"].update(fields)
    return msg


BAD_MESSAGES = [
    pytest.param(_with(channel="hb"), "unknown channel", id="channel-hb"),
    pytest.param(_with(channel="Shell"), "unknown channel", id="channel-case"),
    pytest.param(_with(channel=5), "unknown channel", id="channel-not-str"),
    pytest.param(_without("header"), "without a header", id="no-header"),
    pytest.param(_with(header=None), "header: not a JSON object", id="null-header"),
    pytest.param(_with(header=["msg_id"]), "header: not a JSON object", id="list-header"),
    pytest.param(_header_without("msg_id"), "without msg_id", id="no-msg_id"),
    pytest.param(_header_without("msg_type"), "without msg_type", id="no-msg_type"),
    pytest.param(_header_with(msg_type=""), "msg_type: not a non-empty", id="empty-msg_type"),
    pytest.param(_header_with(msg_id=7), "msg_id: not a non-empty", id="int-msg_id"),
    pytest.param(_without("parent_header"), "without parent_header", id="no-parent_header"),
    pytest.param(_without("metadata"), "without metadata", id="no-metadata"),
    pytest.param(_without("content"), "without content", id="no-content"),
    pytest.param(_with(content="x"), "content: not a JSON object", id="str-content"),
    pytest.param(_with(metadata=None), "metadata: not a JSON object", id="null-metadata"),
]


@pytest.mark.parametrize(("msg", "match"), BAD_MESSAGES)
def test_legacy_text_rejects_bad_messages(msg, match):
    with pytest.raises(FrameError, match=match):
        decode_legacy(json.dumps(msg))


@pytest.mark.parametrize(("msg", "match"), BAD_MESSAGES)
def test_legacy_binary_rejects_bad_messages(msg, match):
    msg.pop("buffers", None)
    with pytest.raises(FrameError, match=match):
        decode_legacy(raw_legacy([json.dumps(msg).encode(), b"buf"]))


# a v1 frame cannot leave a part out: a missing header is an empty (so invalid) JSON part
BAD_V1_MESSAGES = [
    p for p in BAD_MESSAGES if p.id not in {"no-parent_header", "no-metadata", "no-content"}
]


@pytest.mark.parametrize(("msg", "match"), BAD_V1_MESSAGES)
def test_v1_rejects_bad_messages(msg, match):
    channel = msg["channel"].encode() if isinstance(msg["channel"], str) else b"5"
    names = ("header", "parent_header", "metadata", "content")
    chunks = [json.dumps(msg[k]).encode() if k in msg else b"" for k in names]
    if "header" not in msg:
        match = "header: invalid JSON"
    with pytest.raises(FrameError, match=match):
        decode_v1(raw_v1([channel, *chunks]))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("", "invalid JSON", id="empty"),
        pytest.param("{", "invalid JSON", id="truncated"),
        pytest.param("[1, 2]", "not a JSON object", id="array"),
        pytest.param('"str"', "not a JSON object", id="string"),
        pytest.param('{"header": NaN}', "invalid JSON", id="nan"),
        pytest.param('{"header": Infinity}', "invalid JSON", id="infinity"),
        pytest.param("[" * 100_000 + "]" * 100_000, "JSON", id="deep"),
    ],
)
def test_legacy_text_rejects_bad_json(text, match):
    with pytest.raises(FrameError, match=match):
        decode_legacy(text)


def test_legacy_text_rejects_buffers():
    with pytest.raises(FrameError, match="text frame cannot carry buffers"):
        decode_legacy(json.dumps({**message(), "buffers": ["AAEC"]}))


def _legacy_frame() -> bytes:
    body = {k: v for k, v in message().items() if k != "buffers"}
    return raw_legacy([json.dumps(body).encode(), b"abc", b"defg"])


def _patch(frame: bytes, fmt: str, at: int, *values: int) -> bytes:
    patched = bytearray(frame)
    struct.pack_into(fmt, patched, at, *values)
    return bytes(patched)


def _legacy_json_end() -> int:
    return struct.unpack_from("!I", _legacy_frame(), 8)[0]


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        pytest.param(b"", "shorter than its part count", id="empty"),
        pytest.param(b"\x00\x00\x01", "shorter than its part count", id="3-bytes"),
        pytest.param(b"\x00\x00\x00\x00", "no parts", id="zero-parts"),
        pytest.param(_legacy_frame()[:12], "offset table truncated", id="truncated-table"),
        pytest.param(struct.pack("!I", 0xFFFFFFFF), "offset table truncated", id="huge-count"),
        pytest.param(_patch(_legacy_frame(), "!I", 4, 12), "first offset", id="first-in-table"),
        pytest.param(_patch(_legacy_frame(), "!I", 4, 20), "first offset", id="first-after"),
        pytest.param(
            _patch(_legacy_frame(), "!I", 8, 15), "offsets decrease", id="decreasing-second"
        ),
        pytest.param(
            _patch(_legacy_frame(), "!II", 8, _legacy_json_end() + 3, _legacy_json_end()),
            "offsets decrease",
            id="decreasing-third",
        ),
        pytest.param(
            _patch(_legacy_frame(), "!I", 12, len(_legacy_frame()) + 1),
            "past the frame's end",
            id="past-end",
        ),
        pytest.param(raw_legacy([b"\xff\xfe{}", b"x"]), "invalid JSON", id="not-utf8"),
        pytest.param(raw_legacy([b"{nope", b"x"]), "invalid JSON", id="bad-json"),
        pytest.param(raw_legacy([b"[]", b"x"]), "not a JSON object", id="json-array"),
    ],
)
def test_legacy_binary_rejects_malformed_frames(frame, match):
    with pytest.raises(FrameError, match=match):
        decode_legacy(frame)


def _v1_frame() -> bytes:
    return encode_v1("shell", v1_parts(message(), [b"abc", b"defg"]))


def _v1_chunks(**replace: bytes) -> list[bytes]:
    names = ("header", "parent_header", "metadata", "content")
    parts = dict(zip(names, v1_parts(message(), []), strict=True))
    parts.update(replace)
    return [b"shell", *parts.values()]


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        pytest.param(b"", "shorter than its offset count", id="empty"),
        pytest.param(b"\x07" * 7, "shorter than its offset count", id="7-bytes"),
        pytest.param(struct.pack("<Q", 0), "0 offsets", id="zero-offsets"),
        pytest.param(
            raw_v1([b"shell", b"{}", b"{}", b"{}"]), "5 offsets", id="missing-content-part"
        ),
        pytest.param(_v1_frame()[:40], "offset table truncated", id="truncated-table"),
        pytest.param(struct.pack("<Q", 2**64 - 1), "offset table truncated", id="huge-count"),
        pytest.param(_patch(_v1_frame(), "<Q", 8, 64), "first offset", id="first-in-table"),
        pytest.param(_patch(_v1_frame(), "<Q", 8, 100), "first offset", id="first-after"),
        pytest.param(_patch(_v1_frame(), "<Q", 16, 60), "offsets decrease", id="decreasing"),
        pytest.param(
            _patch(_v1_frame(), "<Q", 8 * 8, len(_v1_frame()) + 1),
            "past the frame's end",
            id="end-past-frame",
        ),
        pytest.param(
            _patch(_v1_frame(), "<Q", 8 * 7, 2**63), "past the frame's end", id="middle-past-end"
        ),
        pytest.param(_v1_frame() + b"junk", "not the frame's end", id="trailing-bytes"),
        pytest.param(_v1_frame()[:-1], "past the frame's end", id="truncated-body"),
        pytest.param(raw_v1([b"\xff", *_v1_chunks()[1:]]), "channel: not UTF-8", id="bad-chan"),
        pytest.param(raw_v1([b"", *_v1_chunks()[1:]]), "unknown channel ''", id="empty-chan"),
        pytest.param(raw_v1([b"hb", *_v1_chunks()[1:]]), "unknown channel 'hb'", id="hb"),
        pytest.param(raw_v1(_v1_chunks(header=b"{")), "header: invalid JSON", id="bad-header"),
        pytest.param(
            raw_v1(_v1_chunks(parent_header=b"")), "parent_header: invalid JSON", id="no-parent"
        ),
        pytest.param(
            raw_v1(_v1_chunks(metadata=b"\xc3\x28")), "metadata: invalid JSON", id="not-utf8"
        ),
        pytest.param(raw_v1(_v1_chunks(content=b"NaN")), "content: invalid JSON", id="nan"),
        pytest.param(
            raw_v1(_v1_chunks(content=b"[1]")), "content: not a JSON object", id="array-content"
        ),
    ],
)
def test_v1_rejects_malformed_frames(frame, match):
    with pytest.raises(FrameError, match=match):
        decode_v1(frame)
    with pytest.raises(FrameError, match=match):
        v1_to_msg(frame)


def test_parts_to_msg_rejects_short_and_bad_part_lists():
    with pytest.raises(FrameError, match="3 parts"):
        parts_to_msg("shell", [b"{}", b"{}", b"{}"])
    with pytest.raises(FrameError, match="unknown channel"):
        parts_to_msg("hb", v1_parts(message(), []))
    with pytest.raises(FrameError, match="without msg_type"):
        parts_to_msg("shell", [b'{"msg_id": "x"}', b"{}", b"{}", b"{}"])


# -- what cannot be encoded ---------------------------------------------------------------------


def test_encoders_refuse_what_would_be_a_malformed_frame():
    parts = v1_parts(message(), [])
    for bad in (None, "hb", "", "Shell"):
        with pytest.raises(ValueError, match="unknown channel"):
            encode_v1(bad, parts)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unknown channel"):
            encode_legacy(_with(channel=bad))
        with pytest.raises(ValueError, match="unknown channel"):
            msg_to_v1(_with(channel=bad))
    with pytest.raises(ValueError, match="3 parts"):
        encode_v1("shell", parts[:3])
    with pytest.raises(ValueError, match="without msg_id"):
        encode_legacy(_header_without("msg_id"), [b"x"])
    with pytest.raises(ValueError, match="without content"):
        msg_to_v1(_without("content"))
    with pytest.raises(ValueError, match="Out of range float"):
        encode_legacy(_with(content={"x": float("nan")}))
    with pytest.raises(ValueError, match="Out of range float"):
        msg_to_v1(_with(content={"x": float("inf")}))


def test_encoders_raise_plain_value_errors_not_frame_errors():
    with pytest.raises(ValueError) as info:
        encode_v1("hb", [])
    assert not isinstance(info.value, FrameError)


PURITY_CHECK = """
import ast, json, sys
tree = ast.parse(open(sys.argv[1]).read())
imported = sorted({
    alias.name if isinstance(node, ast.Import) else node.module
    for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
    for alias in node.names
})
names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
print(json.dumps({"imported": imported, "opens": "open" in names}))
"""


def test_module_is_pure():
    # parsed in a process of its own: once any deep input reaches CPython 3.11's AST
    # constructor's recursion limit, that process's later ast.parse calls may fail
    checked = subprocess.run(
        [sys.executable, "-c", PURITY_CHECK, wire.__file__],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(checked.stdout)
    allowed = {"__future__", "json", "struct", "collections.abc", "itertools", "typing"}
    assert set(found["imported"]) <= allowed | {"jupyter_client.jsonutil"}
    assert not found["opens"]
