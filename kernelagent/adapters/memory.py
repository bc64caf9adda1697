"""How much memory is left: the machine's, or that of the cgroup the server runs in when it is
tighter.

In a container (or any cgroup with a memory limit) the server and its sandboxed kernels are
killed at the cgroup's limit long before the machine runs out; ``psutil`` sees only the machine.
So the share free is the smallest of the machine's and that of each cgroup above this process
with a limit (cgroup v2, or v1's ``memory`` hierarchy). A cgroup's use leaves out its inactive
file cache, which the kernel reclaims before it kills anything (as ``docker stats`` does).

Example::

    memory_free()  # 0.62: 62 % of the tightest limit is free
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil

CGROUPS = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")
UNLIMITED = 1 << 62  # cgroup v1 says "no limit" with a number near 2**63


def memory_free(cgroups: Path = CGROUPS, membership: Path = MEMBERSHIP) -> float:
    """The share of memory available now, under the tightest limit."""
    machine = psutil.virtual_memory()
    share = machine.available / machine.total
    for limit, used in cgroup_limits(cgroups, membership):
        share = min(share, max(0.0, (limit - used) / limit) if limit > 0 else 0.0)
    return share


def cgroup_limits(cgroups: Path, membership: Path) -> Iterator[tuple[int, int]]:
    """(limit, use) in bytes of each cgroup with a memory limit, from this process's up."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one tree
            top, files = cgroups, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # v1: the memory hierarchy
            top = cgroups / "memory"
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        # in a container the path may be the host's, and its own cgroup the top: each level
        # that exists, the top included
        here = top / path.strip("/")
        for directory in (here, *here.parents):
            if directory.is_dir() and (found := _limit(directory, *files)):
                yield found
            if directory == top:
                break


def _limit(directory: Path, limit_file: str, use_file: str, cache: str) -> tuple[int, int] | None:
    try:
        limit = (directory / limit_file).read_text().strip()
        if limit == "max" or int(limit) >= UNLIMITED:
            return None
        used = int((directory / use_file).read_text())
        stat = (directory / "memory.stat").read_text().splitlines()
    except (OSError, ValueError):
        return None
    inactive = next((int(v) for k, _, v in (s.partition(" ") for s in stat) if k == cache), 0)
    return int(limit), max(0, used - inactive)
