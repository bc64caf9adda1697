"""Kernel iopub messages → nbformat v4 outputs, rich-output artifacts, and output normalisation.

Pure: no I/O, no kernels. Outputs are plain ``dict`` objects shaped as in a ``.ipynb`` (nbformat
v4.5 output schema), the same shapes ``nbformat.v4.output_from_msg`` builds, with every text
mimetype as one ``str`` and every JSON mimetype (``application/json``, ``application/*+json``) as
the parsed value (a ``dict`` for plotly and IPython's ``JSON``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "BINARY_MIME_TYPES",
    "PLOTLY_MIME_TYPE",
    "RICH_MIME_TYPES",
    "TEXT_RULES",
    "ArtifactBlob",
    "OutputCollector",
    "clean_bundle",
    "clean_output",
    "extract_artifacts",
    "is_json_mime",
    "join_text",
    "normalise",
    "truncation_marker",
]

PLOTLY_MIME_TYPE = "application/vnd.plotly.v1+json"

#: Mimetypes stored once as artifacts (under their sha256), in the order they are extracted.
RICH_MIME_TYPES: tuple[str, ...] = (
    "image/png",
    "image/jpeg",
    "image/svg+xml",
    "text/html",
    PLOTLY_MIME_TYPE,
    "application/json",
    "text/markdown",
    "text/latex",
    "application/pdf",
)

#: Mimetypes whose notebook value is base64 text of binary bytes.
BINARY_MIME_TYPES: frozenset[str] = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "application/pdf"}
)

OUTPUT_MSG_TYPES = frozenset({"stream", "display_data", "execute_result", "error"})


def is_json_mime(mime: str) -> bool:
    """``application/json`` and ``application/<anything>+json`` (nbformat stores them unsplit)."""
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def truncation_marker(dropped: int) -> str:
    """The line that replaces stream text beyond the per-cell cap (``dropped`` characters)."""
    return f"[kernelagent: output truncated, {dropped} more characters not kept]\n"


# --------------------------------------------------------------------------------------------
# Output shapes


def join_text(value: Any, ensure_ascii: bool = True) -> str:
    """A text value as one ``str``: nbformat's list of lines joined; anything else stringified."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return "".join(value)
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=ensure_ascii)
    return str(value)


def clean_bundle(data: Any) -> dict[str, Any]:
    """A mimebundle as nbformat stores it: text values as one ``str``, JSON values parsed.

    A JSON mimetype sent as text (old kernels) is parsed when it is valid JSON; other
    values are deep-copied, so the result never aliases the message content.
    """
    if not isinstance(data, Mapping):
        return {}
    bundle: dict[str, Any] = {}
    for mime, value in data.items():
        mime = str(mime)
        if is_json_mime(mime):
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    value = json.loads(value)
            bundle[mime] = copy.deepcopy(value)
        else:
            bundle[mime] = join_text(value)
    return bundle


def _clean_metadata(metadata: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(metadata)) if isinstance(metadata, Mapping) else {}


def clean_output(output: Mapping[str, Any]) -> dict[str, Any]:
    """Any output-like dict (message content plus ``output_type``, or a stored output) as a
    valid nbformat v4 output: known fields only (``transient`` is dropped), strings joined."""
    kind = output.get("output_type")
    if kind == "stream":
        return {
            "output_type": "stream",
            "name": str(output.get("name") or "stdout"),
            "text": join_text(output.get("text", "")),
        }
    if kind in ("display_data", "execute_result"):
        out: dict[str, Any] = {
            "output_type": kind,
            "data": clean_bundle(output.get("data")),
            "metadata": _clean_metadata(output.get("metadata")),
        }
        if kind == "execute_result":
            count = output.get("execution_count")
            out["execution_count"] = count if isinstance(count, int) and count >= 0 else None
        return out
    if kind == "error":
        traceback = output.get("traceback") or []
        if isinstance(traceback, str):
            traceback = traceback.splitlines()
        return {
            "output_type": "error",
            "ename": str(output.get("ename", "")),
            "evalue": str(output.get("evalue", "")),
            "traceback": [str(line) for line in traceback],
        }
    raise ValueError(f"not an nbformat v4 output type: {kind!r}")


def _display_id(content: Mapping[str, Any]) -> str | None:
    transient = content.get("transient")
    if isinstance(transient, Mapping):
        display_id = transient.get("display_id")
        if isinstance(display_id, str) and display_id:
            return display_id
    return None


# --------------------------------------------------------------------------------------------
# Collecting the outputs of one execution


class OutputCollector:
    """The outputs of one execution, built from its iopub messages as JupyterLab's output area
    builds them.

    - consecutive ``stream`` messages with the same ``name`` merge into one output (text is
      concatenated as-is; ``\\r`` and backspaces are kept, not interpreted);
    - ``display_data``/``execute_result`` carrying ``transient.display_id`` are remembered, and
      ``update_display_data`` replaces ``data`` and ``metadata`` of *every* earlier output with
      that display id (keeping their ``output_type`` and ``execution_count``); an update for an
      unknown display id changes nothing. ``transient`` is never stored;
    - ``clear_output`` with ``wait=False`` clears at once; with ``wait=True`` the clear happens
      when the next output (stream, display_data, execute_result, error) arrives — an
      ``update_display_data`` does not trigger it, as in JupyterLab;
    - stream text kept is capped at ``stream_limit`` characters in total across all streams:
      the head is kept, the rest dropped and counted in one marker line (see
      :func:`truncation_marker`) at the end of the stream output where the cap was hit; the
      count grows as more stream text arrives. A clear empties the record and so restarts the
      budget.

    :meth:`feed` never mutates a dict it handed out before: changed outputs are new dicts.
    """

    def __init__(self, stream_limit: int = 100_000) -> None:
        if stream_limit < 0:
            raise ValueError("stream_limit must be >= 0")
        self.stream_limit = stream_limit
        self._outputs: list[dict[str, Any]] = []
        self._display_ids: dict[str, list[int]] = {}
        self._clear_pending = False
        self._stream_chars = 0  # stream text kept, markers excluded
        self._truncated_at: int | None = None  # index of the stream output holding the marker
        self._truncated_head = ""  # that output's text before the marker
        self._dropped = 0
        #: positions in :attr:`outputs` of what the last :meth:`feed` returned
        self.last_indices: list[int] = []
        #: whether the last :meth:`feed` cleared the outputs (before adding what it returned)
        self.cleared = False

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """The current outputs (a new list; its dicts are not changed by later feeds)."""
        return list(self._outputs)

    @property
    def dropped_chars(self) -> int:
        """Stream characters not kept because of the cap (since the last clear)."""
        return self._dropped

    def feed(self, msg_type: str, content: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """Apply one iopub message; return the outputs it added or changed, in output order.

        ``None`` means nothing visible happened (an ignored message type, an empty stream, a
        deferred ``clear_output(wait=True)``, an update for an unknown display id). An empty
        list means the outputs were cleared and nothing was added (then :attr:`cleared` is
        true). :attr:`last_indices` gives the positions of the returned outputs.
        """
        self.last_indices = []
        self.cleared = False
        if msg_type == "clear_output":
            if content.get("wait"):
                self._clear_pending = True
                return None
            self._clear()
            return []
        if msg_type == "update_display_data":
            return self._update_display(content)
        if msg_type not in OUTPUT_MSG_TYPES:
            return None
        if msg_type == "stream":
            text = join_text(content.get("text", ""))
            if not text:
                return None
        if self._clear_pending:
            self._clear()
        if msg_type == "stream":
            return self._stream(str(content.get("name") or "stdout"), text)
        output = clean_output({**content, "output_type": msg_type})
        index = len(self._outputs)
        self._outputs.append(output)
        display_id = _display_id(content) if msg_type != "error" else None
        if display_id is not None:
            self._display_ids.setdefault(display_id, []).append(index)
        self.last_indices = [index]
        return [output]

    # -- internals -------------------------------------------------------------------------

    def _clear(self) -> None:
        self._outputs = []
        self._display_ids = {}
        self._clear_pending = False
        self._stream_chars = 0
        self._truncated_at = None
        self._truncated_head = ""
        self._dropped = 0
        self.cleared = True

    def _put_stream(self, name: str, text: str) -> int:
        """Merge ``text`` into the last output if it is a stream of ``name``, else append."""
        if self._outputs:
            last = self._outputs[-1]
            if last["output_type"] == "stream" and last["name"] == name:
                index = len(self._outputs) - 1
                self._outputs[index] = {**last, "text": last["text"] + text}
                return index
        self._outputs.append({"output_type": "stream", "name": name, "text": text})
        return len(self._outputs) - 1

    def _set_marker(self) -> dict[str, Any]:
        assert self._truncated_at is not None
        head = self._truncated_head
        separator = "" if not head or head.endswith("\n") else "\n"
        output = {
            **self._outputs[self._truncated_at],
            "text": head + separator + truncation_marker(self._dropped),
        }
        self._outputs[self._truncated_at] = output
        return output

    def _stream(self, name: str, text: str) -> list[dict[str, Any]]:
        if self._truncated_at is not None:
            self._dropped += len(text)
            output = self._set_marker()
            self.last_indices = [self._truncated_at]
            return [output]
        room = self.stream_limit - self._stream_chars
        if len(text) <= room:
            self._stream_chars += len(text)
            index = self._put_stream(name, text)
            self.last_indices = [index]
            return [self._outputs[index]]
        head = text[:room]
        self._stream_chars += len(head)
        self._dropped = len(text) - len(head)
        index = self._put_stream(name, head)
        self._truncated_at = index
        self._truncated_head = self._outputs[index]["text"]
        output = self._set_marker()
        self.last_indices = [index]
        return [output]

    def _update_display(self, content: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        display_id = _display_id(content)
        indices = self._display_ids.get(display_id) if display_id is not None else None
        if not indices:
            return None
        data = clean_bundle(content.get("data"))
        metadata = _clean_metadata(content.get("metadata"))
        changed = []
        for index in indices:
            output = {
                **self._outputs[index],
                "data": copy.deepcopy(data),
                "metadata": copy.deepcopy(metadata),
            }
            self._outputs[index] = output
            changed.append(output)
        self.last_indices = list(indices)
        return changed


# --------------------------------------------------------------------------------------------
# Artifacts


@dataclasses.dataclass(frozen=True)
class ArtifactBlob:
    """The bytes of one rich output, addressed by their sha256 (equal content, equal digest)."""

    mime_type: str
    data: bytes
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)

    @classmethod
    def of(cls, mime_type: str, data: bytes) -> ArtifactBlob:
        return cls(mime_type, data, hashlib.sha256(data).hexdigest())


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _mime_bytes(mime: str, value: Any) -> bytes | None:
    """The stored bytes of one mimebundle value, or ``None`` when it cannot be decoded."""
    if mime in BINARY_MIME_TYPES:
        try:
            return base64.b64decode(join_text(value))
        except (binascii.Error, ValueError):
            return None
    if is_json_mime(mime):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return value.encode("utf-8")
        return _canonical_json(value)
    return join_text(value).encode("utf-8")


def extract_artifacts(outputs: Iterable[Mapping[str, Any]]) -> list[ArtifactBlob]:
    """One blob per rich mimetype (:data:`RICH_MIME_TYPES`) of each display_data/execute_result.

    Bytes: base64-decoded for image/png, image/jpeg, application/pdf; UTF-8 text for
    image/svg+xml, text/html, text/markdown, text/latex; canonical JSON (``sort_keys``, compact
    separators) in UTF-8 for the JSON types. Blobs repeat neither (mime_type, sha256) pair
    within one call (first occurrence kept); a base64 value that does not decode is skipped.
    """
    blobs: list[ArtifactBlob] = []
    seen: set[tuple[str, str]] = set()
    for output in outputs:
        if output.get("output_type") not in ("display_data", "execute_result"):
            continue
        data = output.get("data")
        if not isinstance(data, Mapping):
            continue
        for mime in RICH_MIME_TYPES:
            if mime not in data:
                continue
            raw = _mime_bytes(mime, data[mime])
            if raw is None:
                continue
            blob = ArtifactBlob.of(mime, raw)
            if (mime, blob.sha256) not in seen:
                seen.add((mime, blob.sha256))
                blobs.append(blob)
    return blobs


# --------------------------------------------------------------------------------------------
# Normalisation for comparing runs

#: ``(pattern, replacement)`` applied in order to every string of a normalised output
#: (stream text, text mimetypes, strings inside JSON values and metadata, error fields).
TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # UUIDs: plotly's random div ids, uuid4() values, kernel/session ids.
    (
        re.compile(
            r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
        ),
        "<uuid>",
    ),
    # Memory addresses in reprs: ``<object at 0x7f3a2c1b5e10>``.
    (re.compile(r"0x[0-9a-fA-F]{6,}"), "0x<address>"),
    # Traceback locations that embed execution counts or kernel process ids.
    # (``Cell In[3], line 1``, IPython 8.0–8.4: ``Input In [3]``; ANSI colours may intervene.)
    (re.compile(r"((?:Cell|Input)(?:\s|\x1b\[[0-9;]*m)+In ?)\[\d+\]"), r"\1[<n>]"),
    (re.compile(r"ipykernel_\d+[/\\]\d+\.py"), "ipykernel_<pid>/<cell>.py"),
    (re.compile(r"<ipython-input-\d+-[0-9a-f]+>"), "<ipython-input>"),
    # Timestamps: ISO date-times and clock times (``datetime.now()``, logging, progress).
    (
        re.compile(
            r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
        ),
        "<datetime>",
    ),
    # tqdm's ``[00:01<00:02, 9.87it/s]``: elapsed, remaining and rate.
    (re.compile(r"\[\d+:\d{2}(?::\d{2})?<(?:\d+:\d{2}(?::\d{2})?|\?)"), "[<elapsed><<remaining>"),
    (re.compile(r"\b\d+(?:\.\d+)?\s?(?:it/s|s/it)"), "<rate>"),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:\.\d+)?\b"), "<time>"),
    # Durations: ``%time``/``%timeit`` and printed timings (``1.2 ms``, ``3s``, ``2 minutes``).
    (
        re.compile(
            r"\b\d+(?:[.,]\d+)?\s?(?:ns|µs|μs|us|ms|s|sec|secs|seconds?|min|mins|minutes?"
            r"|h|hrs?|hours?)\b"
        ),
        "<duration>",
    ),
    # ``%timeit`` picks its loop count from the machine's speed.
    (re.compile(r"\b[\d,]+ loops? each\b"), "<n> loops each"),
)


def _scrub_text(text: str) -> str:
    for pattern, replacement in TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, Mapping):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _payload_size(mime: str, value: Any) -> int:
    raw = _mime_bytes(mime, value)
    return len(raw) if raw is not None else len(join_text(value))


def normalise(outputs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Outputs reduced to what must match between two runs of the same code.

    Rules (each output is first put in nbformat shape by :func:`clean_output`):

    1. ``execution_count`` is dropped from execute_result; ``transient`` is dropped.
    2. Consecutive stream outputs with the same name are merged (as the collector does), so a
       record split differently still compares equal.
    3. Image and binary payloads (``image/*``, ``application/pdf``) become
       ``{"mime": <type>, "size": <bytes>}``: compared by MIME type and size, not bytes
       (base64 decoded; SVG counts its UTF-8 bytes).
    4. Every other string — stream text, text mimetypes, strings inside JSON values (plotly
       figures) and metadata, error ``ename``/``evalue``/``traceback`` — goes through
       :data:`TEXT_RULES`: UUIDs (plotly's random div ids) → ``<uuid>``, memory addresses →
       ``0x<address>``, ``Cell In[3]`` and ``ipykernel_<pid>/<n>.py`` in tracebacks,
       ISO date-times, clock times, tqdm elapsed/rate, durations (``1.2 ms``, ``3 s``) and
       ``%timeit`` loop counts → placeholders.
    """
    cleaned: list[dict[str, Any]] = []
    for output in outputs:
        out = clean_output(output)
        if (
            out["output_type"] == "stream"
            and cleaned
            and cleaned[-1]["output_type"] == "stream"
            and cleaned[-1]["name"] == out["name"]
        ):
            cleaned[-1]["text"] += out["text"]
        else:
            cleaned.append(out)
    result: list[dict[str, Any]] = []
    for out in cleaned:
        if out["output_type"] == "stream":
            result.append({**out, "text": _scrub_text(out["text"])})
        elif out["output_type"] == "error":
            result.append(_scrub(out))
        else:
            data: dict[str, Any] = {}
            for mime, value in out["data"].items():
                if mime.startswith("image/") or mime in BINARY_MIME_TYPES:
                    data[mime] = {"mime": mime, "size": _payload_size(mime, value)}
                else:
                    data[mime] = _scrub(value)
            result.append(
                {
                    "output_type": out["output_type"],
                    "data": data,
                    "metadata": _scrub(out["metadata"]),
                }
            )
    return result
