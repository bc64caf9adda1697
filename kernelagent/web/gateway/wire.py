"""The Jupyter kernel WebSocket wire formats of ``/api/kernels/{id}/channels`` (pure: no I/O).

Two protocols, byte for byte as jupyter_server (``services/kernels/connection/base.py``) and
JupyterLab (``@jupyterlab/services`` ``kernel/serialize.ts``) speak them:

* **legacy** (no subprotocol negotiated). A text frame is one JSON message
  ``{"header", "parent_header", "metadata", "content", "buffers": [], "channel", ...}``. A message
  with buffers travels as a binary frame: a 4-byte big-endian count ``n`` of parts, ``n`` 4-byte
  big-endian offsets (from the frame's start; ``offsets[0]`` is the JSON's start, there is no end
  offset: the last part runs to the end of the frame), then the JSON message (UTF-8, without a
  ``buffers`` key) and the buffers. Matches ``serialize_binary_message`` /
  ``deserialize_binary_message``.
* **``v1.kernel.websocket.jupyter.org``**. Every frame is binary: an 8-byte little-endian count
  ``n``, then ``n`` 8-byte little-endian offsets, then the parts ``channel`` (UTF-8), ``header``,
  ``parent_header``, ``metadata``, ``content`` (UTF-8 JSON each), and the buffers. The offsets are
  every part's start *plus the end of the last part*, so ``n == len(parts) + 2`` (the channel
  counts as a part there) and ``offsets[0] == 8 * (n + 1)``, ``offsets[-1] == len(frame)``.
  Matches ``serialize_msg_to_ws_v1`` / ``deserialize_msg_from_ws_v1``. The four JSON parts are
  handed over as raw bytes, so a server can forward them to ZMQ without re-encoding them.

Dates stay ISO strings: nothing here parses them. Malformed frames raise :class:`FrameError`;
encoding a message that cannot make a valid frame raises a plain :class:`ValueError` (or
:class:`TypeError` for a value JSON cannot hold).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any

from jupyter_client.jsonutil import json_default

__all__ = [
    "CHANNELS",
    "V1_SUBPROTOCOL",
    "Buffer",
    "FrameError",
    "decode_legacy",
    "decode_v1",
    "encode_legacy",
    "encode_legacy_parts",
    "encode_v1",
    "msg_to_parts",
    "msg_to_v1",
    "negotiate",
    "parts_to_msg",
    "v1_to_msg",
]

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"

#: The channels jupyter_server bridges over the WebSocket (it connects exactly these four;
#: the heartbeat never goes over the WebSocket).
CHANNELS: frozenset[str] = frozenset({"shell", "iopub", "stdin", "control"})

#: What a buffer or raw part may be: anything with the buffer protocol (bytes, bytearray,
#: memoryview, zmq.Frame).
Buffer = bytes | bytearray | memoryview

_JSON_PARTS = ("header", "parent_header", "metadata", "content")
_LEGACY_WORD = 4
_V1_WORD = 8


class FrameError(ValueError):
    """A WebSocket frame (or a raw message part list) that is not a valid kernel message."""


def negotiate(offered: Iterable[str]) -> str | None:
    """The subprotocol to select from a client's offer: v1 when offered, else ``None`` (legacy)."""
    return V1_SUBPROTOCOL if any(p.strip() == V1_SUBPROTOCOL for p in offered) else None


# ---------------------------------------------------------------------------------------------
# legacy protocol


def decode_legacy(frame: str | Buffer) -> dict[str, Any]:
    """Decode a legacy frame (text: JSON; binary: offset table + JSON + buffers).

    Returns the message dict as sent, with ``channel`` set (a missing or null channel means
    ``"shell"``, as in jupyter_server) and ``buffers`` a list of ``bytes`` (empty for a text
    frame). Dates in the headers stay strings.
    """
    if isinstance(frame, str):
        msg = _loads(frame, "message")
        buffers: list[bytes] = []
        if not isinstance(msg, dict):
            raise FrameError("message: not a JSON object")
        if msg.get("buffers"):
            raise FrameError("a text frame cannot carry buffers")
    else:
        parts = _split_legacy(memoryview(frame).cast("B"))
        msg = _loads(parts[0], "message")
        if not isinstance(msg, dict):
            raise FrameError("message: not a JSON object")
        buffers = parts[1:]
    if msg.get("channel") is None:
        msg["channel"] = "shell"
    _check_channel(msg["channel"], FrameError)
    _check_fields(msg, FrameError)
    msg["buffers"] = buffers
    return msg


def encode_legacy(msg: dict[str, Any], buffers: Sequence[Buffer] = ()) -> str | bytes:
    """Encode ``msg`` (which names its ``channel``) as a legacy frame.

    Without buffers: JSON text, with ``"buffers": []`` (kept in place when ``msg`` has a
    ``buffers`` key, appended otherwise), exactly as jupyter_server writes it. With buffers: the
    binary frame of ``serialize_binary_message`` (JSON without the ``buffers`` key). ``buffers``
    replaces whatever ``msg["buffers"]`` holds.
    """
    _check_channel(msg.get("channel"), ValueError)
    _check_fields(msg, ValueError)
    if not buffers:
        return _dumps_ascii({**msg, "buffers": []})
    body = {k: v for k, v in msg.items() if k != "buffers"}
    return _legacy_binary([_dumps_ascii(body).encode("utf-8"), *buffers])


def encode_legacy_parts(channel: str, msg_id: str, msg_type: str, parts: Sequence[Buffer]) -> bytes:
    """A legacy frame from ``[header, parent_header, metadata, content, *buffers]`` as the kernel
    sent them (UTF-8 JSON), spliced in without decoding them: the message ``encode_legacy``
    writes, same keys in the same order (non-ASCII text as UTF-8, not escaped). Without buffers
    it is the UTF-8 of a text frame (send it as text); with them, the binary frame."""
    _check_channel(channel, ValueError)
    _check_parts(parts, ValueError)
    header, parent, metadata, content = (bytes(p) for p in parts[: len(_JSON_PARTS)])
    buffers = parts[len(_JSON_PARTS) :]
    body = b"".join(
        [
            b'{"header": ',
            header,
            b', "msg_id": ',
            _dumps_ascii(msg_id).encode(),
            b', "msg_type": ',
            _dumps_ascii(msg_type).encode(),
            b', "parent_header": ',
            parent,
            b', "metadata": ',
            metadata,
            b', "content": ',
            content,
            b', "buffers": [], "channel": ' if not buffers else b', "channel": ',
            _dumps_ascii(channel).encode(),
            b"}",
        ]
    )
    return _legacy_binary([body, *buffers]) if buffers else body


def _check_parts(parts: Sequence[Buffer], error: type[Exception]) -> None:
    if len(parts) < len(_JSON_PARTS):
        need = "need header, parent_header, metadata and content at least"
        raise error(f"{len(parts)} parts: {need}")


def _legacy_binary(parts: Sequence[Buffer]) -> bytes:
    count = len(parts)
    offsets = [_LEGACY_WORD * (count + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + _nbytes(part))
    if offsets[-1] + _nbytes(parts[-1]) > 0xFFFFFFFF:
        raise ValueError("message too large for the legacy binary format (4 GiB)")
    return b"".join([struct.pack(f"!{count + 1}I", count, *offsets), *parts])


def _split_legacy(frame: memoryview) -> list[bytes]:
    size = len(frame)
    if size < _LEGACY_WORD:
        raise FrameError("binary frame shorter than its part count")
    (count,) = struct.unpack_from("!I", frame, 0)
    if count < 1:
        raise FrameError("binary frame with no parts")
    table_end = _LEGACY_WORD * (count + 1)
    if table_end > size:
        raise FrameError(f"offset table truncated: {count} offsets need {table_end} bytes")
    offsets = list(struct.unpack_from(f"!{count}I", frame, _LEGACY_WORD))
    _check_offsets(offsets, table_end, size)
    ends = [*offsets[1:], size]
    return [bytes(frame[start:end]) for start, end in zip(offsets, ends, strict=True)]


# ---------------------------------------------------------------------------------------------
# v1.kernel.websocket.jupyter.org


def decode_v1(frame: Buffer) -> tuple[str, list[bytes]]:
    """Split a v1 frame into its channel and ``[header, parent_header, metadata, content,
    *buffers]`` as raw bytes (the ZMQ message parts after the signature, ready to forward).

    The four JSON parts are checked (valid UTF-8 JSON objects; a header with ``msg_id`` and
    ``msg_type``) but returned as received.
    """
    view = memoryview(frame).cast("B")
    size = len(view)
    if size < _V1_WORD:
        raise FrameError("frame shorter than its offset count")
    count = int.from_bytes(view[:_V1_WORD], "little")
    if count < 2 + len(_JSON_PARTS):
        raise FrameError(
            f"{count} offsets: a v1 frame needs at least {2 + len(_JSON_PARTS)} "
            "(channel, header, parent_header, metadata, content and the end)"
        )
    table_end = _V1_WORD * (count + 1)
    if table_end > size:
        raise FrameError(f"offset table truncated: {count} offsets need {table_end} bytes")
    offsets = list(struct.unpack_from(f"<{count}Q", view, _V1_WORD))
    _check_offsets(offsets, table_end, size)
    if offsets[-1] != size:
        raise FrameError(f"last offset {offsets[-1]} is not the frame's end ({size})")
    try:
        channel = str(view[offsets[0] : offsets[1]], "utf-8")
    except UnicodeDecodeError as e:
        raise FrameError(f"channel: not UTF-8 ({e})") from None
    _check_channel(channel, FrameError)
    parts = [bytes(view[start:end]) for start, end in pairwise(offsets[1:])]
    _check_fields(_load_parts(parts), FrameError)
    return channel, parts


def encode_v1(channel: str, parts: Sequence[Buffer]) -> bytes:
    """Build a v1 frame from a channel and ``[header, parent_header, metadata, content,
    *buffers]`` as raw bytes: ``serialize_msg_to_ws_v1(parts, channel)``, byte for byte."""
    _check_channel(channel, ValueError)
    _check_parts(parts, ValueError)
    name = channel.encode("utf-8")
    count = len(parts) + 2
    offsets = [_V1_WORD * (count + 1), _V1_WORD * (count + 1) + len(name)]
    for part in parts:
        offsets.append(offsets[-1] + _nbytes(part))
    return b"".join([struct.pack(f"<{count + 1}Q", count, *offsets), name, *parts])


def v1_to_msg(frame: Buffer) -> dict[str, Any]:
    """Decode a v1 frame into a message dict (see :func:`parts_to_msg`)."""
    channel, parts = decode_v1(frame)
    return parts_to_msg(channel, parts)


def msg_to_v1(msg: dict[str, Any], buffers: Sequence[Buffer] = ()) -> bytes:
    """Encode a message dict (which names its ``channel``) as a v1 frame; ``buffers`` replaces
    ``msg["buffers"]``. The JSON parts are packed as jupyter_client's ``json_packer`` packs them
    (what ``serialize_msg_to_ws_v1(msg, channel, session.pack)`` sends)."""
    _check_channel(msg.get("channel"), ValueError)
    return encode_v1(msg["channel"], msg_to_parts(msg, buffers))


# ---------------------------------------------------------------------------------------------
# raw parts <-> message dicts (the ZMQ side of either protocol)


def parts_to_msg(channel: str, parts: Sequence[Buffer]) -> dict[str, Any]:
    """``[header, parent_header, metadata, content, *buffers]`` (raw) → a message dict.

    The dict has jupyter_client's ``Session.deserialize`` shape and key order plus ``channel``
    (``header, msg_id, msg_type, parent_header, metadata, content, buffers, channel``), so that
    ``encode_legacy`` of it is what jupyter_server sends a legacy client; dates stay strings and
    buffers become ``bytes``.
    """
    _check_channel(channel, FrameError)
    _check_parts(parts, FrameError)
    fields = _load_parts(parts)
    _check_fields(fields, FrameError)
    header = fields["header"]
    return {
        "header": header,
        "msg_id": header["msg_id"],
        "msg_type": header["msg_type"],
        "parent_header": fields["parent_header"],
        "metadata": fields["metadata"],
        "content": fields["content"],
        "buffers": [bytes(b) for b in parts[len(_JSON_PARTS) :]],
        "channel": channel,
    }


def msg_to_parts(msg: dict[str, Any], buffers: Sequence[Buffer] = ()) -> list[bytes]:
    """A message dict → ``[header, parent_header, metadata, content, *buffers]`` as bytes (the
    ZMQ parts after the signature). A null ``parent_header`` is sent as ``{}``, as JupyterLab
    does."""
    _check_fields(msg, ValueError)
    parent = msg["parent_header"]
    packed = [
        _pack(msg["header"]),
        _pack({} if parent is None else parent),
        _pack(msg["metadata"]),
        _pack(msg["content"]),
    ]
    return [*packed, *(bytes(b) for b in buffers)]


# ---------------------------------------------------------------------------------------------
# helpers


def _nbytes(buffer: Buffer) -> int:
    return memoryview(buffer).nbytes


def _check_offsets(offsets: list[int], table_end: int, size: int) -> None:
    if offsets[0] != table_end:
        raise FrameError(f"first offset {offsets[0]} is not the offset table's end ({table_end})")
    for before, after in pairwise(offsets):
        if after > size:
            raise FrameError(f"offset {after} past the frame's end ({size})")
        if after < before:
            raise FrameError(f"offsets decrease ({before} then {after})")


def _check_channel(channel: object, error: type[ValueError]) -> None:
    if channel not in CHANNELS:
        raise error(f"unknown channel {channel!r}; expected one of {sorted(CHANNELS)}")


def _check_fields(msg: dict[str, Any], error: type[ValueError]) -> None:
    """header: an object with non-empty string ``msg_id`` and ``msg_type``; parent_header,
    metadata and content: objects (a null parent_header is tolerated)."""
    if "header" not in msg:
        raise error("message without a header")
    header = msg["header"]
    if not isinstance(header, dict):
        raise error("header: not a JSON object")
    for key in ("msg_id", "msg_type"):
        if key not in header:
            raise error(f"header without {key}")
        if not isinstance(header[key], str) or not header[key]:
            raise error(f"header {key}: not a non-empty string")
    for key in _JSON_PARTS[1:]:
        if key not in msg:
            raise error(f"message without {key}")
        value = msg[key]
        if not isinstance(value, dict) and not (key == "parent_header" and value is None):
            raise error(f"{key}: not a JSON object")


def _load_parts(parts: Sequence[Buffer]) -> dict[str, Any]:
    return {name: _loads(part, name) for name, part in zip(_JSON_PARTS, parts, strict=False)}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(data: str | Buffer, what: str) -> Any:
    try:
        text = data if isinstance(data, str) else str(data, "utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise FrameError(f"{what}: invalid JSON ({e})") from None
    except RecursionError:
        raise FrameError(f"{what}: JSON nested too deeply") from None


def _dumps_ascii(obj: Any) -> str:
    """jupyter_server's legacy JSON: ``json.dumps(msg, default=json_default)`` (but never NaN)."""
    return json.dumps(obj, default=json_default, allow_nan=False)


def _pack(obj: Any) -> bytes:
    """jupyter_client's ``json_packer``; lone surrogates (not UTF-8) are sent as JSON escapes."""
    text = json.dumps(obj, default=json_default, ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, default=json_default, allow_nan=False).encode("ascii")
