"""Budgeted text views of cell outputs, for the model.

A single plot is 70–100k characters of base64 or HTML; the model gets one readable
representation per output instead (a DataFrame summary, a plotly trace summary, an image's
size and artifact id, the visible text of HTML, trimmed text), and the outputs of one cell
share one character budget. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from html.parser import HTMLParser
from typing import Any

from kernelagent.domain import Artifact
from kernelagent.kernelside import LOAD_CODE, dataframes
from kernelagent.services.outputs import (
    PLOTLY_MIME_TYPE,
    extract_artifacts,
    is_json_mime,
    join_text,
)

__all__ = [
    "DATAFRAME_MIME_TYPE",
    "KERNEL_SETUP_CODE",
    "trim",
    "view_artifact",
    "view_outputs",
]

#: Vendor mimetype the kernel-side extension (``kernelside.dataframes``) adds to a pandas
#: DataFrame's display bundle: ``{"shape", "dtypes", "head", "describe"}``.
DATAFRAME_MIME_TYPE = dataframes.MIME_TYPE

#: Run once, silently, in each new kernel: loads the kernel-side extension.
KERNEL_SETUP_CODE = LOAD_CODE

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_IMAGE_MIME_TYPES = (
    "image/png",
    "image/jpeg",
    "image/svg+xml",
    "image/gif",
    "image/webp",
    "image/bmp",
)
_TEXT_MIME_TYPES = ("text/markdown", "text/latex", "application/json")

# --------------------------------------------------------------------------------------------
# Trimming and sharing a budget


def _marker(omitted: int) -> str:
    return f"… [{omitted:,} characters omitted] …"


def trim(text: str, budget: int) -> str:
    """``text`` whole when it fits, else its head and tail around a marker saying how much was
    left out: the beginning says what a text is, the end what happened last. The result has at
    most ``budget`` characters, or is just the marker when ``budget`` is smaller than that."""
    return _trim(text, budget, 0.5)


def _trim(text: str, budget: int, head_share: float) -> str:
    if len(text) <= budget:
        return text
    room = budget - len(_marker(len(text))) - 2  # the marker on a line of its own
    if room <= 0:
        return _marker(len(text))
    head_room = int(room * head_share)
    tail_room = room - head_room
    head = text[:head_room]
    tail = text[len(text) - tail_room :] if tail_room else ""
    # Cut at line ends when one is near, so no line is left half-shown.
    cut = head.rfind("\n")
    if cut >= 0 and cut + 1 >= head_room * 0.5:
        head = head[: cut + 1]
    cut = tail.find("\n")
    if 0 <= cut < tail_room * 0.5:
        tail = tail[cut + 1 :]
    omitted = len(text) - len(head) - len(tail)
    before = "" if not head or head.endswith("\n") else "\n"
    after = "\n" if tail else ""
    return f"{head}{before}{_marker(omitted)}{after}{tail}"


def _share(sizes: Sequence[int], total: int, floors: Sequence[int]) -> list[int]:
    """Max-min fair split of ``total``: parts below the common level get all they need, the
    others the level (never less than their floor), so small parts stay whole."""
    floors = [min(f, s) for f, s in zip(floors, sizes, strict=True)]
    if sum(sizes) <= total:
        return list(sizes)

    def used(level: int) -> int:
        return sum(min(s, max(f, level)) for s, f in zip(sizes, floors, strict=True))

    low, high = 0, max(sizes, default=0)
    while low < high:
        mid = (low + high + 1) // 2
        if used(mid) <= total:
            low = mid
        else:
            high = mid - 1
    alloc = [min(s, max(f, low)) for s, f in zip(sizes, floors, strict=True)]
    spare = total - sum(alloc)
    for i, size in enumerate(sizes):
        if spare <= 0:
            break
        if alloc[i] < size:
            alloc[i] += 1
            spare -= 1
    return alloc


@dataclasses.dataclass(frozen=True)
class _Piece:
    """One line or block of a view; ``head`` is the share kept from its start when trimmed,
    ``None`` for pieces too short and too important to trim (headers)."""

    text: str
    head: float | None = 0.5

    @property
    def floor(self) -> int:
        if self.head is None:
            return len(self.text)
        return min(len(self.text), len(_marker(len(self.text))))


_View = list[_Piece]


def _size(view: _View) -> int:
    return sum(len(p.text) for p in view) + len(view) - 1


def _floor(view: _View) -> int:
    return sum(p.floor for p in view) + len(view) - 1


def _render(view: _View, budget: int) -> str:
    """The pieces joined by newlines in about ``budget`` characters (at least their floors)."""
    if _size(view) <= budget:
        return "\n".join(p.text for p in view)
    trimmable = [p for p in view if p.head is not None]
    fixed = _size(view) - sum(len(p.text) for p in trimmable)
    alloc = iter(
        _share([len(p.text) for p in trimmable], budget - fixed, [p.floor for p in trimmable])
    )
    return "\n".join(p.text if p.head is None else _trim(p.text, next(alloc), p.head) for p in view)


def _render_all(views: Sequence[_View], budget: int) -> str:
    """Views shared fairly within ``budget``; when even their floors do not fit, outputs in the
    middle give way to a marker (the first and the last, often an error, matter most)."""
    if sum(_size(v) for v in views) + len(views) - 1 <= budget:
        return "\n".join(_render(v, _size(v)) for v in views)
    front: list[int] = []
    back: list[int] = []
    low, high = 0, len(views) - 1
    cost = -1  # no separator before the first output
    while low <= high:
        index = low if len(front) <= len(back) else high
        left = high - low  # outputs still out once this one is in
        reserve = len(_outputs_marker(left)) + 1 if left else 0
        need = _floor(views[index]) + 1
        if front and cost + need + reserve > budget:
            break
        cost += need
        if index == low:
            front.append(index)
            low += 1
        else:
            back.append(index)
            high -= 1
    omitted = high - low + 1
    kept = front + back[::-1]
    room = budget - (len(kept) - 1) - (len(_outputs_marker(omitted)) + 1 if omitted else 0)
    alloc = _share([_size(views[i]) for i in kept], room, [_floor(views[i]) for i in kept])
    parts = [_render(views[i], share) for i, share in zip(kept, alloc, strict=True)]
    if omitted:
        parts.insert(len(front), _outputs_marker(omitted))
    return "\n".join(parts)


def _outputs_marker(omitted: int) -> str:
    return f"… [{omitted:,} more output{'s' if omitted != 1 else ''} omitted] …"


# --------------------------------------------------------------------------------------------
# Small helpers


def _text(value: Any) -> str:
    return join_text(value, ensure_ascii=False)


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _console(text: str) -> str:
    """Terminal text as it last looked: ANSI codes gone, a line rewritten with ``\\r``
    (progress bars) reduced to its last version."""
    text = _strip_ansi(text)
    if "\r" not in text:
        return text
    lines = []
    for line in text.split("\n"):
        if "\r" in line:
            versions = [v for v in line.split("\r") if v]
            line = versions[-1] if versions else ""
        lines.append(line)
    return "\n".join(lines)


def _ref(artifact_id: str | None) -> str:
    return f", artifact {artifact_id}" if artifact_id else ""


def _quote(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def _num(value: float) -> str:
    if isinstance(value, int) or (
        isinstance(value, float) and value.is_integer() and abs(value) < 1e15
    ):
        return str(int(value))
    return f"{value:.4g}"


class _Artifacts:
    """Finds the stored artifact of one mimebundle value by the digest the store used."""

    def __init__(self, artifacts: Iterable[Artifact]):
        self._exact: dict[tuple[str, str], str] = {}
        self._digest: dict[str, str] = {}
        for artifact in artifacts:
            self._exact.setdefault((artifact.mime_type, artifact.sha256), artifact.id)
            self._digest.setdefault(artifact.sha256, artifact.id)

    def find(self, mime: str, value: Any) -> str | None:
        if not self._digest:
            return None
        blobs = extract_artifacts([{"output_type": "display_data", "data": {mime: value}}])
        if not blobs:
            return None
        digest = blobs[0].sha256
        return self._exact.get((mime, digest)) or self._digest.get(digest)


# --------------------------------------------------------------------------------------------
# Images


def _image_size(mime: str, data: bytes) -> str | None:
    """``WxH`` from the header bytes, or ``None`` when the format or the bytes are unknown."""
    size: tuple[Any, Any] | None = None
    if mime == "image/png":
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
            size = struct.unpack(">II", data[16:24])
    elif mime == "image/jpeg":
        size = _jpeg_size(data)
    elif mime == "image/gif":
        if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
            size = struct.unpack("<HH", data[6:10])
    elif mime == "image/svg+xml":
        return _svg_size(data.decode("utf-8", "replace"))
    return f"{size[0]}x{size[1]}" if size else None


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first start-of-frame marker, walking segment by segment."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            return None
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


_SVG_TAG = re.compile(r"<svg\b[^>]*>", re.IGNORECASE | re.DOTALL)
_ATTRIBUTE = re.compile(r"""([\w:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*([a-zA-Z%]*)\s*$")


def _svg_size(svg: str) -> str | None:
    tag = _SVG_TAG.search(svg)
    if not tag:
        return None
    attrs = {m[1].lower(): m[2] if m[2] is not None else m[3] for m in _ATTRIBUTE.finditer(tag[0])}
    width, height = _LENGTH.match(attrs.get("width", "")), _LENGTH.match(attrs.get("height", ""))
    if width and height and "%" not in width[2] + height[2]:
        w, h = _num(float(width[1])), _num(float(height[1]))
        if width[2] == height[2]:
            return f"{w}x{h}{'' if width[2] == 'px' else width[2]}"
        return f"{w}{width[2]}x{h}{height[2]}"
    box = attrs.get("viewbox", "").replace(",", " ").split()
    if len(box) == 4:
        try:
            return f"{_num(float(box[2]))}x{_num(float(box[3]))}"
        except ValueError:
            return None
    return None


def _image_bytes(mime: str, value: Any) -> bytes | None:
    if mime == "image/svg+xml":
        return _text(value).encode("utf-8")
    try:
        return base64.b64decode(_text(value))
    except (binascii.Error, ValueError):
        return None


def _describe_image(mime: str, data: bytes | None, artifact_id: str | None) -> str:
    if data is None:
        return f"[{mime}, undecodable{_ref(artifact_id)}]"
    size = _image_size(mime, data)
    if size:
        return f"[{mime} {size}{_ref(artifact_id)}]"
    return f"[{mime}, {len(data):,} bytes{_ref(artifact_id)}]"


# --------------------------------------------------------------------------------------------
# HTML


class _VisibleText(HTMLParser):
    """The text a browser would show, roughly: no scripts or styles, one line per block, table
    rows as ``cell | cell``."""

    _HIDDEN = frozenset({"script", "style", "template", "noscript"})
    _BLOCKS = frozenset(
        {
            "address", "article", "aside", "blockquote", "br", "caption", "dd", "details", "div",
            "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3",
            "h4", "h5", "h6", "header", "hr", "legend", "li", "main", "nav", "ol", "p", "pre",
            "section", "summary", "table", "tbody", "tfoot", "thead", "title", "ul",
        }
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.pre = 0
        self.tables = 0
        self.rows: list[tuple[int, list[str]]] = []  # (table depth, cells) of open rows

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self.hidden += 1
        elif tag == "table":
            self.tables += 1
        elif tag == "tr":
            self._close_rows(self.tables)
            self.rows.append((self.tables, []))
        elif tag in ("td", "th"):
            if self.rows and self.rows[-1][0] == self.tables:
                self.rows[-1][1].append("")
        elif tag == "pre":
            self.pre += 1
        if tag in self._BLOCKS:
            self._write("", block=True)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._BLOCKS:
            self._write("", block=True)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag == "table":
            self._close_rows(self.tables)
            self.tables = max(0, self.tables - 1)
        elif tag == "tr":
            self._close_rows(self.tables)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self._BLOCKS:
            self._write("", block=True)

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self._write(data if self.pre else re.sub(r"\s+", " ", data))

    def _write(self, text: str, block: bool = False) -> None:
        if self.rows and self.rows[-1][1]:
            cells = self.rows[-1][1]
            cells[-1] += " " if block else text
        elif block:
            self._line_break()
        else:
            if not self.pre and (not self.parts or self.parts[-1].endswith("\n")):
                text = text.lstrip()
            if text:
                self.parts.append(text)

    def _close_rows(self, depth: int) -> None:
        while self.rows and self.rows[-1][0] >= depth:
            _, cells = self.rows.pop()
            if not cells:
                continue
            line = " | ".join(" ".join(c.split()) for c in cells)
            if self.rows and self.rows[-1][1]:
                self.rows[-1][1][-1] += f" {line}"
            else:
                self._line_break()
                self.parts.append(f"{line}\n")

    def _line_break(self) -> None:
        if self.parts and not self.parts[-1].endswith("\n"):
            self.parts.append("\n")

    def text(self) -> str:
        self._close_rows(0)
        text = "\n".join(line.rstrip() for line in "".join(self.parts).split("\n"))
        return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _html_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    return parser.text()


def _html_view(html: str, artifact_id: str | None) -> _View:
    text = _html_text(html)
    header = f"[text/html{_ref(artifact_id)}]"
    if not text.strip():
        return [_Piece(f"{header} (no visible text)", None)]
    return [_Piece(header, None), _Piece(text)]


# --------------------------------------------------------------------------------------------
# DataFrames


def _dataframe_view(value: Any, artifact_id: str | None) -> _View | None:
    """The kernel's summary, or ``None`` when the value is not one (another producer)."""
    if not isinstance(value, Mapping):
        return None
    shape, dtypes = value.get("shape"), value.get("dtypes")
    head, describe = value.get("head"), value.get("describe")
    if not (
        isinstance(shape, list | tuple)
        and len(shape) == 2
        and all(isinstance(n, int) for n in shape)
        and isinstance(dtypes, Mapping)
        and isinstance(head, str)
        and (describe is None or isinstance(describe, str))
    ):
        return None
    rows, cols = shape
    header = f"[DataFrame {rows:,} rows × {cols:,} columns{_ref(artifact_id)}]"
    listed = ", ".join(f"{name}: {dtype}" for name, dtype in dtypes.items())
    if cols > len(dtypes):
        listed += f", … ({cols - len(dtypes):,} more columns)"
    view = [_Piece(header, None), _Piece(f"dtypes: {listed}", 0.8), _Piece(f"head:\n{head}")]
    if describe is not None:
        view.append(_Piece(f"describe:\n{describe}"))
    elif rows and cols:
        view.append(_Piece("describe: not computed (too many rows, or nothing to describe)", None))
    return view


# --------------------------------------------------------------------------------------------
# Plotly

#: Trace attributes that hold the data, in the order they are described.
_PLOTLY_ARRAYS = (
    "x", "y", "z", "labels", "values", "parents", "lat", "lon", "locations", "r", "theta",
    "open", "high", "low", "close", "a", "b", "c", "u", "v", "w",
)  # fmt: skip
_TYPED_ARRAYS = {
    "i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I",
    "i8": "q", "u8": "Q", "f4": "f", "f8": "d",
}  # fmt: skip
_ISO_DATE = re.compile(r"^\d{4}-\d{2}(-\d{2})?([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?")
_MIDNIGHT = re.compile(r"[ T]00:00(:00(\.0+)?)?$")
_CATEGORIES = 12


def _plotly_array(value: Any) -> tuple[list[Any], tuple[int, ...]] | None:
    """Flat values and shape of a plotly data array: a JSON list (maybe nested) or a typed
    array (``{"dtype": "f8", "bdata": <base64>, "shape": "3, 4"}``, plotly ≥ 6)."""
    if isinstance(value, Mapping) and "bdata" in value:
        code = _TYPED_ARRAYS.get(str(value.get("dtype")))
        if code is None:
            return None
        try:
            raw = base64.b64decode(_text(value["bdata"]))
        except (binascii.Error, ValueError):
            return None
        count = len(raw) // struct.calcsize(code)
        flat = list(struct.unpack(f"<{count}{code}", raw[: count * struct.calcsize(code)]))
        try:
            shape = tuple(int(n) for n in str(value.get("shape") or count).split(","))
        except ValueError:
            shape = (count,)
        return flat, shape if math.prod(shape) == count else (count,)
    if not isinstance(value, list | tuple):
        return None
    if any(isinstance(v, list | tuple) for v in value):
        flat = [x for row in value for x in (row if isinstance(row, list | tuple) else [row])]
        width = max((len(r) for r in value if isinstance(r, list | tuple)), default=1)
        return flat, (len(value), width)
    return list(value), (len(value),)


def _nested(flat: list[Any], shape: tuple[int, ...]) -> list[Any]:
    if len(shape) <= 1:
        return flat
    step = math.prod(shape[1:])
    return [_nested(flat[i : i + step], shape[1:]) for i in range(0, len(flat), step)]


def _short(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return "NaN" if isinstance(value, float) and math.isnan(value) else _num(value)
    if isinstance(value, str):
        value = _MIDNIGHT.sub("", value) if _ISO_DATE.match(value) else value
        return value if len(value) <= 40 else value[:39] + "…"
    return _quote(json.dumps(value, ensure_ascii=False), 40)


def _describe_values(flat: list[Any], shape: tuple[int, ...], samples: int) -> str:
    """Count, range or categories, and with ``samples`` the first and last values."""
    count = f"{len(flat):,} values" if len(shape) == 1 else "×".join(map(str, shape)) + " grid"
    numbers = [
        v
        for v in flat
        if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)
    ]
    strings = [v for v in flat if isinstance(v, str)]
    parts = [count]
    if numbers and len(numbers) >= len(strings):
        parts.append(f"{_short(min(numbers))} to {_short(max(numbers))}")
    elif strings:
        distinct = list(dict.fromkeys(strings))
        if all(_ISO_DATE.match(s) for s in distinct):
            parts.append(f"{_short(min(strings))} to {_short(max(strings))}")
        elif len(distinct) <= _CATEGORIES:
            parts.append(f"{len(distinct)} categories: " + ", ".join(map(_short, distinct)))
        else:
            shown = ", ".join(map(_short, distinct[:5]))
            parts.append(f"{len(distinct):,} distinct, e.g. {shown}, …")
    missing = len(flat) - len(numbers) - len(strings)
    if missing:
        parts.append(f"{missing:,} missing or other")
    text = ", ".join(parts)
    if samples and flat:
        if len(flat) <= samples + samples // 2:
            text += ": " + ", ".join(map(_short, flat))
        else:
            first = ", ".join(map(_short, flat[:samples]))
            last = ", ".join(map(_short, flat[-(samples // 2) :]))
            text += f": {first}, …, {last}"
    return text


def _title(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("text")
    return value if isinstance(value, str) and value.strip() else None


def _trace_label(index: int, trace: Mapping[str, Any]) -> str:
    label = f"trace {index}: {trace.get('type') or 'scatter'}"
    name = trace.get("name")
    if isinstance(name, str | int | float) and str(name):
        label += f" {_quote(str(name), 60)}"
    mode = trace.get("mode")
    if isinstance(mode, str):
        label += f" ({mode})"
    return label


def _trace_summary(index: int, trace: Mapping[str, Any], samples: int) -> str:
    """One line per trace (``samples`` = 0), or a line per data array with sample values."""
    arrays = []
    points = None
    for key in _PLOTLY_ARRAYS:
        decoded = _plotly_array(trace.get(key))
        if decoded is None:
            continue
        flat, shape = decoded
        if points is None and len(shape) == 1:
            points = len(flat)
        arrays.append(f"{key}: {_describe_values(flat, shape, samples)}")
    label = _trace_label(index, trace)
    if points is not None:
        label += f", {points:,} points"
    if samples:
        return "\n".join([label, *(f"  {a}" for a in arrays)])
    return "; ".join([label, *arrays])


def _layout_summary(layout: Mapping[str, Any], detail: bool) -> str:
    lines = []
    title = _title(layout.get("title"))
    if title:
        lines.append(f"title: {_quote(title, 200)}")
    axes = []
    containers = [("", layout)]
    for key in sorted(layout):
        if re.fullmatch(r"scene\d*", key) and isinstance(layout[key], Mapping):
            containers.append((f"{key}.", layout[key]))
    for prefix, container in containers:
        for key in sorted(k for k in container if re.fullmatch(r"[xyz]axis\d*", k)):
            axis = container[key]
            if not isinstance(axis, Mapping):
                continue
            bits = []
            axis_title = _title(axis.get("title"))
            if axis_title:
                bits.append(_quote(axis_title, 80))
            if isinstance(axis.get("type"), str) and axis["type"] not in ("-", "linear"):
                bits.append(f"({axis['type']})")
            if detail and isinstance(axis.get("range"), list):
                bits.append(f"range {json.dumps(axis['range'], ensure_ascii=False)}")
            if bits:
                axes.append(f"{prefix}{key} " + " ".join(bits))
    if axes:
        lines.append("axes: " + ", ".join(axes))
    if detail:
        notes = [
            _quote(a["text"], 60)
            for a in layout.get("annotations") or []
            if isinstance(a, Mapping) and isinstance(a.get("text"), str)
        ]
        if notes:
            lines.append("annotations: " + ", ".join(notes))
        for key in ("barmode", "boxmode", "hovermode"):
            if isinstance(layout.get(key), str):
                lines.append(f"{key}: {layout[key]}")
    return "\n".join(lines)


def _plotly_figure(value: Any) -> tuple[list[Mapping[str, Any]], Mapping[str, Any], int] | None:
    if not isinstance(value, Mapping) or not isinstance(value.get("data", []), list):
        return None
    traces = [t for t in value.get("data", []) if isinstance(t, Mapping)]
    layout = value.get("layout") if isinstance(value.get("layout"), Mapping) else {}
    frames = value.get("frames") if isinstance(value.get("frames"), list) else []
    return traces, layout, len(frames)


def _plotly_view(value: Any, artifact_id: str | None, detail: bool = False) -> _View | None:
    figure = _plotly_figure(value)
    if figure is None:
        return None
    traces, layout, frames = figure
    header = f"[plotly figure, {len(traces)} trace{'s' if len(traces) != 1 else ''}"
    if frames:
        header += f", {frames} animation frames"
    view = [_Piece(header + f"{_ref(artifact_id)}]", None)]
    layout_text = _layout_summary(layout, detail)
    if layout_text:
        view.append(_Piece(layout_text, 0.8))
    samples = 10 if detail else 0
    lines = "\n".join(_trace_summary(i, t, samples) for i, t in enumerate(traces))
    if lines:
        view.append(_Piece(lines, 0.7))
    return view


def _plotly_data_view(value: Any) -> _View | None:
    figure = _plotly_figure(value)
    if figure is None:
        return None
    view = []
    for index, trace in enumerate(figure[0]):
        label = _trace_label(index, trace)
        for key in _PLOTLY_ARRAYS:
            decoded = _plotly_array(trace.get(key))
            if decoded is not None:
                values = json.dumps(_nested(*decoded), ensure_ascii=False)
                view.append(_Piece(f"{label} {key} = {values}"))
    return view or [_Piece("(no data arrays)", None)]


# --------------------------------------------------------------------------------------------
# Outputs


def _json_text(value: Any, indent: int | None = None) -> str:
    if isinstance(value, str):
        return value
    separators = None if indent else (",", ":")
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)


def _bundle_view(data: Mapping[str, Any], artifacts: _Artifacts) -> _View:
    """One representation: DataFrame summary > plotly > image > HTML > markdown, LaTeX, JSON >
    plain text > whatever else there is."""
    if DATAFRAME_MIME_TYPE in data:
        html_id = artifacts.find("text/html", data["text/html"]) if "text/html" in data else None
        view = _dataframe_view(data[DATAFRAME_MIME_TYPE], html_id)
        if view is not None:
            return view
    if PLOTLY_MIME_TYPE in data:
        value = data[PLOTLY_MIME_TYPE]
        view = _plotly_view(value, artifacts.find(PLOTLY_MIME_TYPE, value))
        if view is not None:
            return view
    for mime in _IMAGE_MIME_TYPES:
        if mime in data:
            raw = _image_bytes(mime, data[mime])
            return [_Piece(_describe_image(mime, raw, artifacts.find(mime, data[mime])), None)]
    if "text/html" in data:
        return _html_view(_text(data["text/html"]), artifacts.find("text/html", data["text/html"]))
    for mime in _TEXT_MIME_TYPES:
        if mime in data:
            text = _json_text(data[mime]) if is_json_mime(mime) else _text(data[mime])
            return [_Piece(f"[{mime}{_ref(artifacts.find(mime, data[mime]))}]", None), _Piece(text)]
    if "text/plain" in data:
        return [_Piece(_strip_ansi(_text(data["text/plain"])).rstrip("\n"))]
    for mime, value in data.items():
        if mime == DATAFRAME_MIME_TYPE:
            continue
        header = f"[{mime}{_ref(artifacts.find(mime, value))}]"
        if is_json_mime(mime):
            return [_Piece(header, None), _Piece(_json_text(value))]
        if mime.startswith("image/") or mime == "application/pdf":
            found = artifacts.find(mime, value)
            return [_Piece(_describe_image(mime, _image_bytes(mime, value), found), None)]
        return [_Piece(header, None), _Piece(_text(value))]
    return []


def _repeats_error(line: str, ename: str, evalue: str) -> bool:
    """Whether a traceback's last line only says ``ename: evalue`` again (IPython's does; for
    a SyntaxError it leaves out the location that ``evalue`` has)."""
    if line == ename:
        return True
    prefix = f"{ename}: "
    return line.startswith(prefix) and evalue.startswith(line[len(prefix) :])


def _error_view(output: Mapping[str, Any]) -> _View:
    """The traceback (mostly its last frames, where the error is) and then ``ename: evalue``."""
    ename, evalue = _text(output.get("ename")), _text(output.get("evalue"))
    final = f"{ename}: {evalue}" if evalue else ename
    traceback = output.get("traceback") or []
    if isinstance(traceback, str):
        traceback = [traceback]
    entries = [_strip_ansi(e) for e in traceback if isinstance(e, str)]
    lines = "\n".join(entries).rstrip("\n").split("\n")
    if lines and lines[0].strip() and set(lines[0].strip()) == {"-"}:
        lines = lines[1:]
    if lines and _repeats_error(lines[-1].strip(), ename, evalue):
        lines = lines[:-1]
    shown = "\n".join(lines).strip("\n")
    view = [_Piece(shown, 0.25)] if shown else []
    view.append(_Piece(final))
    return view


def _output_view(output: Mapping[str, Any], artifacts: _Artifacts) -> _View:
    kind = output.get("output_type")
    if kind == "stream":
        text = _console(_text(output.get("text"))).rstrip("\n")
        if not text:
            return []
        if output.get("name") == "stderr":
            return [_Piece("[stderr]", None), _Piece(text)]
        return [_Piece(text)]
    if kind == "error":
        return _error_view(output)
    if kind in ("display_data", "execute_result") and isinstance(output.get("data"), Mapping):
        return [p for p in _bundle_view(output["data"], artifacts) if p.text]
    return []


def view_outputs(
    outputs: list[dict[str, Any]], artifacts: Sequence[Artifact] = (), budget: int = 4000
) -> str:
    """The tool result of one cell for the model: each output once, in order, as readable text
    (never base64 or raw HTML), all of it within ``budget`` characters. Small outputs stay whole
    and big ones are trimmed to a fair share; stored rich outputs are named by artifact id so
    the model can ask for a closer look (:func:`view_artifact`)."""
    index = _Artifacts(artifacts)
    views = [v for o in outputs if isinstance(o, Mapping) and (v := _output_view(o, index))]
    if not views:
        return "(no output)"
    return _render_all(views, budget)


# --------------------------------------------------------------------------------------------
# One artifact, closer

_VIEWS: dict[str, tuple[str, ...]] = {
    "dataframe": ("summary",),
    "plotly": ("summary", "data"),
    "html": ("text", "html"),
    "json": ("json",),
    "image": ("info",),
    "svg": ("info", "svg"),
    "binary": ("info",),
    "text": ("text",),
}


def _artifact_kind(mime_type: str) -> str:
    if mime_type == DATAFRAME_MIME_TYPE:
        return "dataframe"
    if mime_type == PLOTLY_MIME_TYPE:
        return "plotly"
    if mime_type == "text/html":
        return "html"
    if is_json_mime(mime_type):
        return "json"
    if mime_type == "image/svg+xml":
        return "svg"
    if mime_type.startswith("image/"):
        return "image"
    if mime_type.startswith("text/") or mime_type in ("application/javascript", "application/xml"):
        return "text"
    return "binary"


def view_artifact(mime_type: str, data: bytes, view: str | None = None, budget: int = 8000) -> str:
    """A closer look at one stored output within ``budget`` characters: HTML's visible text
    (``view="html"``: the markup), a plotly figure's full summary with sample values
    (``view="data"``: the data arrays), pretty JSON, an image's type and size (its pixels cannot
    be shown as text; ``view="svg"`` gives an SVG's source), text as it is.

    Raises ValueError for a view the type does not have, naming the ones it has.
    """
    kind = _artifact_kind(mime_type)
    views = _VIEWS[kind]
    chosen = view or views[0]  # models often send an empty string for an optional argument
    if chosen not in views:
        raise ValueError(f"unknown view {view!r} for {mime_type}; valid views: {', '.join(views)}")
    text = data.decode("utf-8", "replace")
    value: Any = None
    if kind in ("dataframe", "plotly", "json"):
        try:
            value = json.loads(text)
        except ValueError:
            return trim(text, budget)
    if kind == "dataframe":
        pieces = _dataframe_view(value, None)
        return _render(pieces, budget) if pieces else trim(_json_text(value, 2), budget)
    if kind == "plotly":
        pieces = _plotly_data_view(value) if chosen == "data" else _plotly_view(value, None, True)
        return _render(pieces, budget) if pieces else trim(_json_text(value, 2), budget)
    if kind == "json":
        return trim(_json_text(value, 2), budget)
    if kind == "html":
        return trim(text if chosen == "html" else _html_text(text), budget)
    if kind == "svg" and chosen == "svg":
        return trim(text, budget)
    if kind in ("image", "svg"):
        size = _image_size(mime_type, data)
        shown = f" {size}" if size else ""
        return f"[{mime_type}{shown}, {len(data):,} bytes] (an image: not readable as text)"
    if kind == "binary":
        info = f"[{mime_type}, {len(data):,} bytes"
        if mime_type == "application/pdf":
            pages = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
            info += f", {pages} page{'s' if pages != 1 else ''}" if pages else ""
        return info + "]"
    return trim(text, budget)
