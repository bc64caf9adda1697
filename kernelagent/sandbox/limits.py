"""Resource limits for one sandboxed kernel: rlimits always, cgroups where the host allows them.

Two mechanisms, layered:

* **rlimits** (``prlimit`` in the launch chain) apply on every host. ``RLIMIT_DATA`` is set to
  90 % of the memory limit so that most blow-ups end as a ``MemoryError`` the user can read,
  instead of a kill.
* **cgroups** (v1 ``memory`` + ``pids`` hierarchies, or a v2 tree with those controllers) are the
  aggregate backstop for the whole process tree. They need a server running as root (or a
  delegated subtree). Without them, the rlimits are the only limit.

Example::

    limits = Limits(memory=512 * MiB)
    group = Cgroup.create("0123abcd", limits)      # None when the host has no usable cgroups
    argv = ["prlimit", *limits.prlimit_args(), "--", "bwrap", ...]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import time
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "kernelagent"


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one kernel may use. ``None`` disables a limit."""

    memory: int | None = 1 * GiB
    processes: int | None = 128
    open_files: int | None = 256
    file_size: int | None = 1 * GiB
    cpu_seconds: int | None = 3600
    tmp_size: int = 64 * MiB
    data_fraction: float = 0.9  # RLIMIT_DATA as a share of ``memory``

    def prlimit_args(self) -> list[str]:
        """Arguments for util-linux ``prlimit`` (soft = hard, so the kernel cannot raise them)."""
        pairs = {
            "--data": int(self.memory * self.data_fraction) if self.memory else None,
            "--nproc": self.processes,
            "--nofile": self.open_files,
            "--fsize": self.file_size,
            "--cpu": self.cpu_seconds,
            "--core": 0,
        }
        return [f"{flag}={value}:{value}" for flag, value in pairs.items() if value is not None]


def human_bytes(n: int) -> str:
    """``1073741824`` → ``"1 GiB"``, as limits are shown to users."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            value = n / size
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def cgroup_version() -> int | None:
    """1 or 2 when this process may create memory+pids cgroups, else None."""
    if os.geteuid() != 0:
        return None
    v1 = [CGROUP_ROOT / ctrl for ctrl in ("memory", "pids")]
    if all((p / "cgroup.procs").exists() and os.access(p, os.W_OK) for p in v1):
        return 1
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists() and {"memory", "pids"} <= set(controllers.read_text().split()):
        return 2
    return None


class Cgroup:
    """A kernel's cgroups: made before launch, joined by the launch shell, removed at cleanup."""

    def __init__(self, version: int, dirs: dict[str, Path]):
        self.version = version
        self.dirs = dirs  # controller name → directory ("unified" for v2)

    @classmethod
    def create(cls, name: str, limits: Limits) -> Cgroup | None:
        """Make the cgroup for kernel ``name`` with ``limits``; None when the host has none."""
        version = cgroup_version()
        if version == 1:
            dirs = {ctrl: CGROUP_ROOT / ctrl / CGROUP_PARENT / name for ctrl in ("memory", "pids")}
            for d in dirs.values():
                d.mkdir(parents=True, exist_ok=True)
            if limits.memory:
                _write(dirs["memory"] / "memory.limit_in_bytes", limits.memory)
                swap = dirs["memory"] / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    _write(swap, limits.memory)
            if limits.processes:
                _write(dirs["pids"] / "pids.max", limits.processes)
            return cls(1, dirs)
        if version == 2:
            parent = CGROUP_ROOT / CGROUP_PARENT
            with contextlib.suppress(OSError):
                _write(CGROUP_ROOT / "cgroup.subtree_control", "+memory +pids")
            parent.mkdir(exist_ok=True)
            _write(parent / "cgroup.subtree_control", "+memory +pids")
            unified = parent / name
            unified.mkdir(exist_ok=True)
            if limits.memory:
                _write(unified / "memory.max", limits.memory)
                with contextlib.suppress(OSError):
                    _write(unified / "memory.swap.max", 0)
            if limits.processes:
                _write(unified / "pids.max", limits.processes)
            return cls(2, {"unified": unified})
        return None

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files the launch shell writes its pid into."""
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def oom_kills(self) -> int:
        """How many processes the OOM killer took in this cgroup."""
        if self.version == 1:
            text = _read(self.dirs["memory"] / "memory.oom_control")
        else:
            text = _read(self.dirs["unified"] / "memory.events")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def peak_memory(self) -> int | None:
        """The most memory the cgroup used, in bytes (None when the kernel does not say)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        directory = self.dirs["memory" if self.version == 1 else "unified"]
        try:
            return int(_read(directory / name).strip())
        except (OSError, ValueError):
            return None

    def pids(self) -> list[int]:
        pids: set[int] = set()
        for d in self.dirs.values():
            pids.update(int(p) for p in _read(d / "cgroup.procs").split())
        return sorted(pids)

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill whatever is left and remove the cgroup; retried while the kernel reaps its dead."""
        deadline = time.monotonic() + timeout
        while True:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            try:
                for d in self.dirs.values():
                    if d.exists():
                        d.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@functools.cache  # once per process: the leftovers are from processes that died before it
def remove_stale_cgroups(min_age: float = 60.0) -> int:
    """Remove empty kernel cgroups left behind by a server that crashed; returns how many.

    Only cgroups older than ``min_age`` seconds go: a younger empty one may belong to a kernel
    that another server is launching right now.
    """
    removed = 0
    for parent in (CGROUP_ROOT / c / CGROUP_PARENT for c in ("memory", "pids", "")):
        if not parent.is_dir():
            continue
        for child in parent.iterdir():
            if (
                child.is_dir()
                and time.time() - child.stat().st_mtime > min_age
                and not _read(child / "cgroup.procs").split()
            ):
                with contextlib.suppress(OSError):
                    child.rmdir()
                    removed += 1
    return removed


def _write(path: Path, value: object) -> None:
    path.write_text(str(value))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
