"""The memory a grown pool may count on: the machine's, or its cgroup's when that is tighter."""

from __future__ import annotations

from pathlib import Path

import psutil

from kernelagent.adapters.memory import cgroup_limits, memory_free

GiB = 1 << 30


def write(directory: Path, **files: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("_", ".", 1)).write_text(text)


def machine_share() -> float:
    memory = psutil.virtual_memory()
    return memory.available / memory.total


def test_a_v2_limit_above_the_process_counts_without_its_file_cache(tmp_path):
    membership = tmp_path / "cgroup"
    membership.write_text("0::/kernelagent.slice/server.scope\n")
    root = tmp_path / "fs"
    scope = root / "kernelagent.slice/server.scope"
    write(scope, memory_max="max", memory_current=str(GiB), memory_stat="inactive_file 0\n")
    write(
        root / "kernelagent.slice",
        memory_max=str(4 * GiB),
        memory_current=str(7 * GiB // 2),
        memory_stat=f"anon {3 * GiB}\ninactive_file {GiB // 2}\nactive_file 0\n",
    )
    assert list(cgroup_limits(root, membership)) == [(4 * GiB, 3 * GiB)]
    assert memory_free(root, membership) == min(0.25, machine_share())


def test_a_v1_container_sees_its_own_limit_at_the_top_of_the_hierarchy(tmp_path):
    membership = tmp_path / "cgroup"  # the host's path: not mounted in the container
    membership.write_text("5:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    root = tmp_path / "fs"
    write(
        root / "memory",
        memory_limit_in_bytes=str(2 * GiB),
        memory_usage_in_bytes=str(2 * GiB),
        memory_stat=f"cache {GiB}\ntotal_inactive_file {GiB}\n",
    )
    assert list(cgroup_limits(root, membership)) == [(2 * GiB, GiB)]
    assert memory_free(root, membership) == min(0.5, machine_share())


def test_no_limit_anywhere_is_the_machines_share(tmp_path):
    membership = tmp_path / "cgroup"
    membership.write_text("4:memory:/a\n0::/b\n")
    root = tmp_path / "fs"
    write(root / "memory/a", memory_limit_in_bytes="9223372036854771712", memory_stat="")
    write(root / "memory", memory_limit_in_bytes="9223372036854771712", memory_stat="")
    write(root / "b", memory_max="max", memory_current="5", memory_stat="")
    assert list(cgroup_limits(root, membership)) == []
    assert list(cgroup_limits(root, tmp_path / "absent")) == []
    assert abs(memory_free(root, membership) - machine_share()) < 0.05
