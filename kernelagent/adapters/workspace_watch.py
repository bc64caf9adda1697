"""Whether a workspace changed since it was last scanned, told by inotify: a cell that wrote
no file costs no walk of its workspace.

One inotify descriptor per process watches every directory a scan walked, added through the
scan's own directory fd (``/proc/self/fd/N``: the directory the scan opened, whatever its path
leads to now). Any event in a workspace's directories counts as a change; a listing is reused
only while its workspace saw none since the scan began. A directory watched for the first time
counts as a change too: it may have changed between its listing and its watch, so the next call
scans again (and finds every watch in place). A full event queue counts as a change everywhere.
inotify does not see writes through a shared memory map, so a listing is also never reused
past ``RESCAN_AFTER`` seconds. Without inotify (or past the watch limit) every call scans.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as f

from kernelagent.adapters import workspace_io
from kernelagent.domain import FileStat

log = logging.getLogger(__name__)

RESCAN_AFTER = 5.0  # seconds a listing may be reused at most
MASK = (
    f.CREATE | f.DELETE | f.MODIFY | f.ATTRIB | f.MOVED_FROM | f.MOVED_TO | f.CLOSE_WRITE
    | f.DELETE_SELF | f.MOVE_SELF | f.ONLYDIR
)  # fmt: skip

Listing = dict[str, FileStat]  # relative path → its size and mtime


class WorkspaceWatch:
    """``listed(name)`` in the event loop (the last listing, if still true); ``scan(name,
    root)`` in a worker thread (a fresh listing, watched from now on)."""

    def __init__(self) -> None:
        self._inotify: INotify | None = None
        try:
            self._inotify = INotify(nonblocking=True)
        except OSError as e:  # no inotify here (or no instance left): always scan
            log.warning("workspace scans cannot be skipped: inotify is unavailable (%s)", e)
        self._lock = threading.Lock()
        self._owner: dict[int, str] = {}  # watch descriptor → workspace
        self._changes: Counter[str] = Counter()  # workspace → changes seen
        self._listings: dict[str, tuple[int, float, Listing]] = {}  # changes at scan, when

    def listed(self, name: str) -> Listing | None:
        """The workspace's last listing when nothing in it changed since; None: scan it."""
        if self._inotify is None:
            return None
        self._drain()
        with self._lock:
            kept = self._listings.get(name)
            if kept is None:
                return None
            changes, when, listing = kept
            if changes != self._changes[name] or time.monotonic() - when > RESCAN_AFTER:
                return None
            return dict(listing)

    def scan(self, name: str, root: Path) -> Listing:
        """List the workspace (``workspace_io.scan``), watching each directory it walks."""
        if self._inotify is None:
            return _stats(workspace_io.scan(root))
        with self._lock:
            self._listings.pop(name, None)
            changes = self._changes[name]
        watches: list[bool] = []  # whether each directory walked is watched

        def watch(dir_fd: int) -> None:
            try:
                wd = self._inotify.add_watch(f"/proc/self/fd/{dir_fd}", MASK)  # type: ignore[union-attr]
            except OSError:  # past the watch limit, or gone: this listing is not kept
                watches.append(False)
                return
            watches.append(True)
            with self._lock:
                if self._owner.get(wd) != name:
                    self._owner[wd] = name
                    self._changes[name] += 1

        listing = _stats(workspace_io.scan(root, on_dir=watch))
        if watches and all(watches):  # the root at least: a missing one is not kept
            with self._lock:
                self._listings[name] = (changes, time.monotonic(), listing)
        return dict(listing)

    def forget(self, name: str) -> None:
        """A workspace removed or replaced by another directory (its watches end with its
        directories); called while nothing scans it (its session's cells are done or held)."""
        with self._lock:
            self._listings.pop(name, None)
            self._changes.pop(name, None)
            # the events its directories still send (their removal's) must not count it again;
            # a later scan watches them afresh
            for wd in [wd for wd, owner in self._owner.items() if owner == name]:
                del self._owner[wd]

    def close(self) -> None:
        if self._inotify is not None:
            with contextlib.suppress(OSError):
                self._inotify.close()
            self._inotify = None

    def _drain(self) -> None:
        """Count the events queued since the last call (the loop's thread only reads)."""
        events = self._inotify.read(timeout=0)  # type: ignore[union-attr]
        if not events:
            return
        with self._lock:
            for event in events:
                if event.mask & f.Q_OVERFLOW:  # some were lost: no listing can be trusted
                    self._listings.clear()
                    continue
                name = self._owner.get(event.wd)
                if name is not None:
                    self._changes[name] += 1
                if event.mask & f.IGNORED:
                    self._owner.pop(event.wd, None)


def _stats(found: dict[str, tuple[int, int]]) -> Listing:
    return {rel: FileStat(size, mtime) for rel, (size, mtime) in found.items()}
