"""Snapshots of the user's namespace, taken and brought back inside the kernel.

After each cell, the kernel says whether a capture would find anything (``HINT``, in the
metadata of the cell's ``execute_reply``: not for a cell that binds and mentions no variable);
after one that succeeded and would, the server asks for ``capture``: the variables the cell may
have changed (new or rebound names, and the names its code mentions, since those may have been
mutated in place) are serialised with cloudpickle (pickle protocol 5: arrays and DataFrames go
as their raw buffers), and a variable whose bytes are the same as last time is not sent again.
What changed travels to the server as binary ``comm_msg`` buffers on iopub, parented to the
request (as a file read does). The answer is what changed since the last capture, each entry
naming the cell that set it, with the capture's id and the id of the one before (``base``): the
server folds these changes in order into the namespace at any cell, and a missing link shows.
``stage`` and ``restore`` do the reverse in a new kernel.

An object that cannot be serialised (an open file, a socket, a generator) is recorded as such,
with its cell; so is one skipped for the size or time budget. Nothing here ever runs in the
server: restoring a snapshot unpickles data the kernel wrote, so it happens only in the
session's own sandbox.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import json
import re
import time
import types
import uuid
from typing import Any

from kernelagent.kernelside.files import Verbatim, _kernel

STATE_COMM = "kernelagent.state"  # the comm id of the messages that carry a snapshot's bytes
HINT = "kernelagent.capture"  # in a cell's execute_reply metadata: whether a capture is due
PIECE = 4 * 1024 * 1024  # bytes per comm message
# IPython's own names: outputs, inputs and history (_, __, _i, _ii3, _7, _oh…)
INTERNAL = re.compile(r"_(_{0,2}|i{1,3}|\d+|i\d+|dh|oh|ih|sh)")
BUILTIN_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_ABSENT = object()

_ran_since = False  # whether a cell ran since the last capture
_mentioned: set[str] = set()  # the names the cells run since the last capture mention
_last_ok = False  # whether the last of them succeeded
_due: bool | None = None  # the hint for the reply of the cell that just ran
_known: dict[str, dict[str, Any]] = {}  # name → its entry in the last manifest
_ids: dict[str, int] = {}  # name → id() of its object when last captured
_process = uuid.uuid4().hex[:12]  # names this kernel process's captures
_captures = 0
_last_id: str | None = None  # the last capture's id: the next one's base
_staged: dict[str, bytearray] = {}  # sha256 → bytes received for a restore
_restored: dict[str, Any] = {}  # name → the object the last restore bound


def register(shell: Any) -> None:
    shell.events.register("post_run_cell", _ran)
    kernel = getattr(shell, "kernel", None)
    if kernel is not None and "finish_metadata" not in vars(kernel):
        kernel.finish_metadata = _with_hint(kernel.finish_metadata)


def unregister(shell: Any) -> None:
    with contextlib.suppress(ValueError):
        shell.events.unregister("post_run_cell", _ran)
    kernel = getattr(shell, "kernel", None)
    if kernel is not None:
        vars(kernel).pop("finish_metadata", None)


def _with_hint(finish_metadata: Any) -> Any:
    """ipykernel's hook for an ``execute_reply``'s metadata, also carrying the hint: the
    reply is sent anyway, so the hint costs no message of its own."""

    def finish(parent: Any, metadata: dict[str, Any], reply_content: Any) -> dict[str, Any]:
        global _due
        metadata = finish_metadata(parent, metadata, reply_content)
        if _due is not None:
            metadata[HINT] = _due
            _due = None
        return metadata

    return finish


def _ran(result: Any) -> None:
    """Remember the cells run (not the server's silent requests): a failed one may have
    changed what it mentions too, and the next capture looks at it. Then keep for the reply
    (``HINT``) whether a capture would find anything: a cell that binds, rebinds, removes and
    mentions no variable needs none."""
    global _due, _last_ok, _ran_since
    info = result.info
    if info is None or info.silent:
        return
    _ran_since = True
    _mentioned.update(_names_in(info.raw_cell or "", _transformed(info)))
    _last_ok = bool(result.success)
    _due = None
    with contextlib.suppress(Exception):  # a hint is an optimisation: never fail a cell
        _due = _pending()


def _pending() -> bool:
    """Whether ``capture`` would find a change: its own test, without serialising anything."""
    namespace = _namespace()
    if _known.keys() - namespace.keys():
        return True
    return any(
        name not in _known or _ids.get(name) != id(value) or name in _mentioned
        for name, value in namespace.items()
    )


def capture(cell: int, max_bytes: int, max_seconds: float) -> Verbatim:
    """Snapshot what the cells since the last capture changed; JSON ``{"id", "base",
    "changes": {name: entry}, "removed": [names], "bytes", "ms", "skipped"}`` (or ``null``
    when the last cell failed or nothing ran: the next capture takes its changes too).

    An entry is ``{"sha": …, "size": …}`` (its bytes went to the server if they were new),
    ``{"module": name}``, ``{"unserialisable": why}`` or ``{"skipped": why}``, each with the
    ``cell`` that last set it. ``max_bytes``: what this snapshot may add; ``max_seconds``: how
    long it may take (what is left is skipped, and says so)."""
    global _captures, _last_id, _ran_since
    if not _ran_since or not _last_ok:
        return Verbatim("null")
    mentioned = set(_mentioned)
    _ran_since = False
    _mentioned.clear()
    started = time.perf_counter()
    namespace = _namespace()
    removed = sorted(set(_known) - set(namespace))
    for gone in removed:
        del _known[gone]
        _ids.pop(gone, None)
    changes: dict[str, dict[str, Any]] = {}
    candidates = sorted(
        name
        for name, value in namespace.items()
        if name not in _known or _ids.get(name) != id(value) or name in mentioned
    )
    sent = 0
    skipped = []
    for name in candidates:
        value = namespace[name]
        previous = _known.get(name, {})
        if _ids.get(name) == id(value) and ("unserialisable" in previous or "module" in previous):
            continue  # the same object still: its entry (and the cell that made it) stands
        entry: dict[str, Any]
        if time.perf_counter() - started > max_seconds:
            entry = {"skipped": f"the snapshot took longer than {max_seconds:g} s"}
        elif isinstance(value, types.ModuleType):
            entry = {"module": value.__name__}
        else:
            try:
                data = _dumps(value)
            except Exception as e:  # noqa: BLE001 - anything can fail to pickle, in any way
                entry = {"unserialisable": f"{type(e).__name__}: {e}"[:300]}
            else:
                sha = hashlib.sha256(data).hexdigest()
                if previous.get("sha") == sha:
                    _ids[name] = id(value)
                    continue  # referred to, not changed
                if sent + len(data) > max_bytes:
                    entry = {"skipped": f"{len(data):,} bytes would exceed the size budget"}
                else:
                    _send(sha, data)
                    sent += len(data)
                    entry = {"sha": sha, "size": len(data)}
        entry["cell"] = cell
        if "skipped" in entry:
            skipped.append(name)
        _known[name] = changes[name] = entry
        _ids[name] = id(value)
    _captures += 1
    base, _last_id = _last_id, f"{_process}-{_captures}"
    answer = {
        "id": _last_id,
        "base": base,
        "changes": changes,
        "removed": removed,
        "bytes": sent,
        "ms": round((time.perf_counter() - started) * 1000, 2),
        "skipped": skipped,
    }
    return Verbatim(json.dumps(answer))


def stage(pieces: list[tuple[str, int]]) -> int:
    """Keep the request's buffers as the bytes of ``(sha, offset)`` each (many small
    variables travel in one request, a large one in several); returns how many bytes came."""
    buffers = _kernel().get_parent("shell").get("buffers") or []
    if len(buffers) != len(pieces):
        raise ValueError(f"{len(pieces)} pieces announced, {len(buffers)} arrived")
    count = 0
    for (sha, offset), data in zip(pieces, buffers, strict=True):
        staged = _staged.setdefault(sha, bytearray())
        if offset != len(staged):
            raise ValueError(f"a piece of {sha} arrived out of order")
        staged += data
        count += len(data)
    return count


def restore(manifest_json: str, snapshot_id: str) -> Verbatim:
    """Bind the manifest's variables in the user's namespace, from the staged bytes and by
    import; JSON ``{"restored": [names], "failed": {name: why}}``. What cannot come back here
    (unserialisable, skipped) is the server's to re-run. The next capture's changes are
    relative to ``snapshot_id``, the capture this manifest is the namespace of."""
    import pickle

    global _last_id
    _last_id = snapshot_id
    manifest = json.loads(manifest_json)
    namespace = _kernel().shell.user_ns
    _restored.clear()
    _known.clear()
    _known.update(manifest)  # what is not bound here comes back by its cell, run after
    restored, failed = [], {}
    for name, entry in sorted(manifest.items()):
        try:
            if "module" in entry:
                value = importlib.import_module(entry["module"])
            elif "sha" in entry:
                data = bytes(_staged.pop(entry["sha"]))
                if hashlib.sha256(data).hexdigest() != entry["sha"]:
                    raise ValueError("its bytes did not arrive intact (sha256 differs)")
                value = pickle.loads(data)
            else:
                continue
        except Exception as e:  # noqa: BLE001 - each variable on its own
            failed[name] = f"{type(e).__name__}: {e}"[:300]
            continue
        namespace[name] = value
        _known[name] = entry
        _ids[name] = id(value)
        _restored[name] = value
        restored.append(name)
    _staged.clear()
    return Verbatim(json.dumps({"restored": restored, "failed": failed}))


def rebind() -> int:
    """Bind again what the last restore bound: cells re-run after it to remake what a
    snapshot cannot hold (an open file) may also have set older values of kept variables."""
    global _ran_since
    namespace = _kernel().shell.user_ns
    for name, value in _restored.items():
        namespace[name] = value
        _ids[name] = id(value)
    for name in _known.keys() - _restored.keys():  # remade by their cells just now
        if name in namespace:
            _ids[name] = id(namespace[name])
    _ran_since = False
    _mentioned.clear()
    count = len(_restored)
    _restored.clear()
    return count


def _namespace() -> dict[str, Any]:
    """The user's variables: not IPython's, not what the namespace started with."""
    shell = _kernel().shell
    hidden = shell.user_ns_hidden  # what IPython put there itself (its output history too)
    return {
        name: value
        for name, value in shell.user_ns.items()
        if hidden.get(name, _ABSENT) is not value  # first: the cheapest, and the most common
        and name not in BUILTIN_NAMES
        and not (name[:1] == "_" and INTERNAL.fullmatch(name))
    }


def _names_in(code: str, transformed: str | None = None) -> set[str]:
    """The names a cell's code mentions (after IPython's transformations: magics become
    calls; ``transformed``, if IPython's own is at hand); all of them if it does not parse."""
    try:
        if transformed is None:
            transformed = _kernel().shell.transform_cell(code)
        tree = ast.parse(transformed)
    except Exception:  # noqa: BLE001 - unparsable: every name may have changed
        return set(_namespace())
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def _transformed(info: Any) -> str | None:
    """The cell as IPython transformed it to run it, from its input history (a cell kept in
    history is stored there transformed): transforming it again costs more than the rest of
    this hook. None if the last entry is not this cell."""
    if not info.store_history:
        return None
    try:
        history = _kernel().shell.history_manager
    except RuntimeError:  # not in a kernel
        return None
    raw, parsed = history.input_hist_raw, history.input_hist_parsed
    if not raw or not parsed or raw[-1] != (info.raw_cell or "").rstrip("\n"):
        return None
    return str(parsed[-1])


def _dumps(value: Any) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(value, protocol=5)


def _send(sha: str, data: bytes) -> None:
    kernel = _kernel()
    parent = kernel.get_parent("shell")
    view = memoryview(data)
    for offset in range(0, max(len(data), 1), PIECE):
        kernel.session.send(
            kernel.iopub_socket,
            "comm_msg",
            {"comm_id": STATE_COMM, "data": {"sha": sha, "offset": offset}},
            parent=parent,
            ident=f"comm-{STATE_COMM}".encode(),
            buffers=[view[offset : offset + PIECE]],
        )
