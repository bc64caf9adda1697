"""Cells and their outputs as HTML: the one renderer of the web UI.

Pages render every cell with it, and the live page asks for one cell at a time
(``/sessions/{id}/cells/{cell_id}``) as it changes, so what a reload shows and what streamed in
are the same HTML. Everything here is untrusted input — a model's text, a kernel's outputs — so:

- markdown goes through markdown-it with raw HTML off, then nh3 (a second, independent line);
- code is highlighted by pygments, terminal text (streams, tracebacks) turned into escaped HTML
  with its ANSI colours by ansi2html;
- ``text/html`` never enters the page: it becomes the ``srcdoc`` of an iframe sandboxed with
  ``allow-scripts`` but not ``allow-same-origin`` (an opaque origin without the page's cookies or
  DOM), which also inherits the page's CSP, so only the sizing script served by us runs there;
- SVG is shown as an ``<img>`` with a data: URL (images do not run scripts), never inline;
- plotly figures travel as JSON in a non-executable ``<script type="application/json">`` that
  ``static/outputs.js`` hands to ``Plotly.newPlot``.

Example::

    renderer = Renderer(frame_head='<script src="/static/frame.js" defer></script>')
    view = renderer.cell(cell)          # CellView for templates/cell.html
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import nh3
from ansi2html import Ansi2HTMLConverter
from markdown_it import MarkdownIt
from markupsafe import Markup, escape
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

from kernelagent.domain import Artifact, Cell
from kernelagent.services.outputs import PLOTLY_MIME_TYPE, extract_artifacts

PRIVATE_MIME_PREFIX = "application/vnd.kernelagent."

#: Richest first, as JupyterLab ranks them (plotly > html > images > markdown/latex/json > text).
MIME_ORDER: tuple[str, ...] = (
    PLOTLY_MIME_TYPE,
    "text/html",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/svg+xml",
    "text/markdown",
    "text/latex",
    "application/json",
    "text/plain",
)
BINARY_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})

OUTPUT_CSS = {
    "stream": "stream",
    "error": "error",
    PLOTLY_MIME_TYPE: "plotly",
    "text/html": "html",
    "text/markdown": "markdown",
    "text/latex": "latex",
    "application/json": "json",
    "empty": "empty",
}

#: Text longer than this is folded behind "show all".
FOLD_LINES = 40
FOLD_CHARS = 8000

WHO = {
    "agent": "agent",
    "web": "you",
    "user": "you",
    "gateway": "gateway (JupyterLab)",
    "mcp": "MCP client",
    "assistant": "assistant",
    "system": "system",
}
STATUS_TEXT = {
    "pending": "running…",
    "error": "error",
    "timeout": "timed out",
    "interrupted": "interrupted",
    "died": "kernel died",
}

_PYGMENTS_CLASSES = {c for c in STANDARD_TYPES.values() if c}
_formatter = HtmlFormatter(nowrap=True)


def _fence(code: str, language: str, _attrs: Any) -> str:
    """Fenced code in markdown, highlighted when it names a language pygments knows."""
    if not language:
        return ""  # markdown-it escapes it as plain code
    try:
        lexer = get_lexer_by_name(language)
    except ClassNotFound:
        return ""
    return f'<pre class="hl"><code>{highlight(code, lexer, _formatter)}</code></pre>'


_md = MarkdownIt(
    "commonmark", {"html": False, "linkify": False, "typographer": False, "highlight": _fence}
).enable(["table", "strikethrough"])


@dataclasses.dataclass(frozen=True)
class OutputView:
    index: int
    key: str  # changes when the output does: the live page replaces only changed outputs
    kind: str  # stream | error | the chosen mimetype
    html: Markup
    artifact_url: str | None = None

    @property
    def css(self) -> str:
        if self.kind.startswith("image/"):
            return "image"
        return OUTPUT_CSS.get(self.kind, "text")


@dataclasses.dataclass(frozen=True)
class CellView:
    id: str
    index: int
    cell_type: str
    kind: str  # user | answer | assistant | question | note | markdown | raw | code
    role: str
    who: str
    status: str
    status_text: str
    execution_count: int | None
    duration: str
    body: Markup  # message/note HTML, or the highlighted code
    lines: int
    outputs: tuple[OutputView, ...]
    note: str = ""  # "edited by you", "attempt 2", …
    rejected_code: Markup | None = None


# ------------------------------------------------------------------------------ text renderers


def markdown_html(text: str) -> Markup:
    """Markdown as sanitised HTML: markdown-it without raw HTML, then nh3 on the result."""
    rendered = _md.render(text)
    return Markup(
        nh3.clean(
            rendered,
            link_rel="noopener noreferrer",
            allowed_classes={"span": _PYGMENTS_CLASSES, "pre": {"hl"}},
        )
    )


def code_html(source: str, language: str = "ipython3") -> Markup:
    """Highlighted code (spans with pygments' short classes; ``static/pygments.css``)."""
    try:
        lexer = get_lexer_by_name(language)
    except ClassNotFound:
        lexer = get_lexer_by_name("text")
    return Markup(highlight(source, lexer, _formatter).rstrip("\n"))


def terminal_text(text: str) -> str:
    """Text as a terminal shows it: ``\\r`` rewinds the line, backspace removes a character."""
    if "\r" not in text and "\b" not in text:
        return text
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        screen: list[str] = []
        col = 0
        for ch in line:
            if ch == "\r":
                col = 0
            elif ch == "\b":
                col = max(0, col - 1)
            else:
                if col < len(screen):
                    screen[col] = ch
                else:
                    screen.append(ch)
                col += 1
        lines.append("".join(screen))
    return "\n".join(lines)


def terminal_html(text: str) -> Markup:
    """Escaped terminal text with its ANSI colours as inline styles."""
    converter = Ansi2HTMLConverter(inline=True, line_wrap=False, linkify=False)
    return Markup(converter.convert(terminal_text(text), full=False))


def pick_mime(data: Mapping[str, Any]) -> str | None:
    """The richest mimetype of a bundle that the page can show (private ones never)."""
    for mime in MIME_ORDER:
        if mime in data:
            return mime
    return None


def script_json(value: Any) -> Markup:
    """JSON that cannot end or open anything inside a ``<script type="application/json">``."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    for raw, safe in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, safe)
    return Markup(text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def duration_text(ms: int | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms // 60_000} min {ms % 60_000 // 1000} s"


# ------------------------------------------------------------------------------ cells


class Renderer:
    """Renders cells; ``frame_head`` goes into the ``<head>`` of every HTML output's iframe."""

    def __init__(self, frame_head: str):
        self.frame_head = frame_head

    def cell(
        self,
        cell: Cell,
        outputs: Sequence[Mapping[str, Any]] | None = None,
        artifacts: Iterable[Artifact] = (),
        sign: Callable[[str], str] | None = None,
    ) -> CellView:
        """``outputs`` overrides the recorded ones (a running cell's, from the event log);
        ``artifacts`` of the cell get an "open" link each, via ``sign`` (a signed URL)."""
        meta = cell.metadata or {}
        common: dict[str, Any] = {
            "id": cell.id,
            "index": cell.index,
            "cell_type": cell.cell_type,
            "role": cell.role,
            "who": WHO.get(cell.role, cell.role),
            "status": cell.status,
            "status_text": STATUS_TEXT.get(cell.status, ""),
            "execution_count": cell.execution_count,
            "duration": duration_text(cell.duration_ms),
            "lines": cell.source.count("\n") + 1,
        }
        if cell.cell_type == "markdown":
            kind, body = self._message(cell.role, meta, cell.source)
            rejected = meta.get("proposed_code") if meta.get("rejected") else None
            return CellView(
                **common,
                kind=kind,
                body=body,
                outputs=(),
                rejected_code=code_html(str(rejected)) if rejected else None,
            )
        links = _artifact_links(artifacts, sign) if sign else {}
        shown = cell.outputs if outputs is None else outputs
        return CellView(
            **common,
            kind="code",
            body=code_html(cell.source),
            outputs=tuple(self.output(i, o, links) for i, o in enumerate(shown)),
            note=_code_note(cell, meta),
        )

    @staticmethod
    def _message(role: str, meta: Mapping[str, Any], source: str) -> tuple[str, Markup]:
        if meta.get("raw"):  # an imported raw cell: its text as is
            return "raw", Markup(escape(source))
        if role == "user" and (meta.get("turn_id") or meta.get("answer_to")):
            kind = "answer" if meta.get("answer_to") else "user"
            return kind, Markup(escape(source))  # shown as typed (pre-wrap), not as markdown
        if role == "assistant":
            kind = "question" if meta.get("tool") == "ask_user" else "assistant"
            return kind, markdown_html(source)
        return ("note" if role == "system" else "markdown"), markdown_html(source)

    # -------------------------------------------------------------------------- outputs

    def output(
        self, index: int, output: Mapping[str, Any], links: Mapping[tuple[str, str], str]
    ) -> OutputView:
        key = hashlib.sha1(
            json.dumps(output, sort_keys=True, default=str).encode(), usedforsecurity=False
        ).hexdigest()[:16]
        kind = output.get("output_type")
        if kind == "stream":
            name = "stderr" if output.get("name") == "stderr" else "stdout"
            text = str(output.get("text", ""))
            return OutputView(index, key, "stream", _folded(text, terminal_html(text), name))
        if kind == "error":
            trace = output.get("traceback") or []
            text = "\n".join(str(t) for t in trace)
            text = text or f"{output.get('ename')}: {output.get('evalue')}"
            return OutputView(index, key, "error", _folded(text, terminal_html(text), "error"))
        data = output.get("data")
        data = data if isinstance(data, Mapping) else {}
        shown = {m: v for m, v in data.items() if not str(m).startswith(PRIVATE_MIME_PREFIX)}
        mime = pick_mime(shown)
        if mime is None:  # still an element: the page finds outputs by their position
            if not shown:
                return OutputView(index, key, "empty", Markup(""))
            names = ", ".join(sorted(shown))
            return OutputView(index, key, "unsupported", _plain(f"[an output of type {names}]"))
        value = shown[mime]
        metadata = output.get("metadata")
        meta = metadata.get(mime) if isinstance(metadata, Mapping) else None
        html = self._mime_html(mime, value, meta if isinstance(meta, Mapping) else {})
        url = links.get((mime, _sha256(mime, value))) if links else None
        # the key also says whether the link is there: a page that showed the output before its
        # artifact was stored replaces it once the link exists
        return OutputView(index, key + ("-a" if url else ""), mime, html, url)

    def _mime_html(self, mime: str, value: Any, meta: Mapping[str, Any]) -> Markup:
        if mime == PLOTLY_MIME_TYPE:
            return _plotly(value)
        if mime == "text/html":
            return self._frame(_text(value))
        if mime in BINARY_IMAGES:
            return _image(mime, _text(value).replace("\n", ""), meta)
        if mime == "image/svg+xml":
            encoded = base64.b64encode(_text(value).encode()).decode()
            return _image(mime, encoded, meta)
        if mime == "text/markdown":
            return Markup('<div class="markdown">{}</div>').format(markdown_html(_text(value)))
        if mime == "application/json":
            text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
            return _folded(text, Markup(escape(text)), "json")
        if mime == "text/latex":
            text = _text(value)
            return _folded(text, Markup(escape(text)), "latex")
        text = _text(value)
        return _folded(text, terminal_html(text), "text")

    def _frame(self, html: str) -> Markup:
        document = (
            '<!doctype html><html><head><meta charset="utf-8">'
            f"{self.frame_head}</head><body>{html}</body></html>"
        )
        return Markup(
            '<div class="frame-box"><iframe class="html-frame" sandbox="allow-scripts" '
            'referrerpolicy="no-referrer" title="HTML output" srcdoc="{}"></iframe>'
            '<button type="button" class="show-all" hidden>show all</button></div>'
        ).format(document)


# ------------------------------------------------------------------------------ helpers


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return json.dumps(value, default=str)


def _plain(text: str) -> Markup:
    return Markup('<pre class="out text">{}</pre>').format(text)


def _folded(text: str, html: Markup, css: str) -> Markup:
    pre = Markup('<pre class="out {}">{}</pre>').format(css, html)
    lines = text.count("\n") + 1
    if lines <= FOLD_LINES and len(text) <= FOLD_CHARS:
        return pre
    return Markup(
        '<div class="fold is-folded">{}<button type="button" class="show-all">'
        "show all ({} lines)</button></div>"
    ).format(pre, lines)


def _plotly(figure: Any) -> Markup:
    if isinstance(figure, str):
        try:
            figure = json.loads(figure)
        except ValueError:
            return _plain("[a plotly figure that is not valid JSON]")
    if not isinstance(figure, Mapping):
        return _plain("[a plotly figure that is not an object]")
    layout = figure.get("layout") if isinstance(figure.get("layout"), Mapping) else {}
    height = layout.get("height") if isinstance(layout, Mapping) else None
    height = int(height) if isinstance(height, int | float) and 100 <= height <= 4000 else 450
    return Markup(
        '<div class="plotly-output" style="min-height:{}px">'
        '<script type="application/json" class="plotly-figure">{}</script>'
        '<div class="plotly-target" style="height:{}px"></div></div>'
    ).format(height, script_json(figure), height)


def _image(mime: str, b64: str, meta: Mapping[str, Any]) -> Markup:
    width, height = meta.get("width"), meta.get("height")
    if not (isinstance(width, int) and isinstance(height, int)) and mime == "image/png":
        width, height = _png_size(b64) or (None, None)
    size = (
        Markup(' width="{}" height="{}"').format(width, height)
        if isinstance(width, int) and isinstance(height, int)
        else Markup("")
    )
    return Markup('<img class="out-image" alt="image output" src="data:{};base64,{}"{}>').format(
        mime, b64, size
    )


def _png_size(b64: str) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk, so the page reserves the image's space."""
    try:
        head = base64.b64decode(b64[:44], validate=False)
    except (binascii.Error, ValueError):
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return (width, height) if 0 < width < 100_000 and 0 < height < 100_000 else None


def _sha256(mime: str, value: Any) -> str:
    blobs = extract_artifacts([{"output_type": "display_data", "data": {mime: value}}])
    return blobs[0].sha256 if blobs else ""


def _artifact_links(
    artifacts: Iterable[Artifact], sign: Callable[[str], str]
) -> dict[tuple[str, str], str]:
    return {(a.mime_type, a.sha256): sign(a.id) for a in artifacts}


def _code_note(cell: Cell, meta: Mapping[str, Any]) -> str:
    notes = []
    proposed = meta.get("proposed_code")
    if proposed is not None and proposed != cell.source:
        notes.append("edited by you")
    attempt = meta.get("attempt")
    if isinstance(attempt, int) and attempt > 1:
        notes.append(f"attempt {attempt}")
    return " · ".join(notes)


def pygments_css() -> str:
    """The rules of ``static/pygments.css`` (regenerate it with this after a pygments upgrade)."""
    rules = _formatter.get_style_defs(".hl").splitlines()
    return "\n".join(r for r in rules if r.startswith(".hl "))


__all__ = [
    "CellView",
    "OutputView",
    "Renderer",
    "code_html",
    "markdown_html",
    "pick_mime",
    "script_json",
    "terminal_html",
]
