"""The Docker engine as the Docker sandbox uses it: one client per engine, blocking calls on
threads of their own, the check that names the fix, and the sweep of orphaned kernel containers.

Each server process holds an owner token under the runtime directory: a file it keeps locked
while it lives. Kernel containers are labelled with their owner's token, so a later process can
tell the containers of a live server (locked) from those of a killed one (free), wherever that
server ran, as long as it shared the runtime directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import gc
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

LABEL = "kernelagent.kernel"  # every kernel container has it (value: the kernel id)
FIX_ENGINE = (
    "start a Docker engine (`make docker` starts one on a machine without) and set DOCKER_HOST "
    "to its socket, or use KERNELAGENT_SANDBOX=bubblewrap"
)


_engine_threads = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="kernelagent-docker")


async def in_thread(fn: Any, *args: Any) -> Any:
    """Run a blocking engine call (the SDK is synchronous) on threads of its own, so that kernels
    starting together never hold up the event loop's default executor (file I/O uses it)."""
    return await asyncio.get_running_loop().run_in_executor(_engine_threads, fn, *args)


_clients: dict[tuple[str, float], Any] = {}


def client(docker_host: str, timeout: float) -> Any:
    """One Docker client per engine: its connection pool is shared by every kernel."""
    import docker

    key = (docker_host, timeout)
    if key not in _clients:
        _clients[key] = docker.DockerClient(
            base_url=docker_host or None, timeout=int(timeout), max_pool_size=32, version="auto"
        )
    return _clients[key]


def forget_client(docker_host: str, timeout: float) -> None:
    client = _clients.pop((docker_host, timeout), None)
    if client is not None:
        client.close()


_found: set[tuple[str, str]] = set()  # (engine, image) pairs seen working: not asked again


def check(docker_host: str, image: str, timeout: float = 10.0) -> str | None:
    """None when the engine answers and has ``image``, else what is wrong and how to fix it."""
    if (docker_host, image) in _found:
        return None
    try:
        import docker
    except ImportError:
        return "the docker Python package is missing: pip install 'docker>=7.1'"
    where = docker_host or "the default socket (/var/run/docker.sock)"
    socket = (docker_host or "unix:///var/run/docker.sock").removeprefix("unix://")
    if "://" not in socket and not os.path.exists(socket):
        return f"cannot reach the Docker engine at {where} (no such socket): {FIX_ENGINE}"
    try:
        engine = client(docker_host, timeout)
        engine.ping()
    except Exception as e:  # noqa: BLE001
        forget_client(docker_host, timeout)
        with warnings.catch_warnings():  # docker-py leaves a failed connect's socket to the GC
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        return f"cannot reach the Docker engine at {where} ({says(e)}): {FIX_ENGINE}"
    try:
        engine.images.get(image)
    except docker.errors.ImageNotFound:
        return (
            f"the kernel image {image} is not on the engine at {where}: build it with "
            f"`make docker`, or `docker build -f kernel_images/python/Dockerfile -t {image} .`, "
            "or set KERNELAGENT_KERNEL_IMAGE"
        )
    except Exception as e:  # noqa: BLE001
        return f"the Docker engine at {where} cannot look up {image}: {says(e)}"
    _found.add((docker_host, image))
    return None


def says(error: BaseException) -> str:
    explanation = getattr(error, "explanation", None)
    return str(explanation or error).strip() or type(error).__name__


# ---------------------------------------------------------------------- owners and orphans

_owner_files: dict[str, tuple[str, int]] = {}  # runtime root → (owner token, locked fd)


def owner(root: Path) -> str:
    """This process's owner token under ``root``: a file it holds locked while it lives."""
    key = str(root)
    if key not in _owner_files or _owner_files[key][1] < 0:
        owners = root / "owners"
        owners.mkdir(mode=0o700, exist_ok=True)
        token = uuid.uuid4().hex
        fd = os.open(owners / token, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _owner_files[key] = (token, fd)
    return _owner_files[key][0]


def owner_alive(root: Path, token: str) -> bool:
    """Whether the process that made ``token`` still holds its lock."""
    if token == owner(root):
        return True
    path = root / "owners" / token
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


_swept: set[tuple[int, str]] = set()


def remove_orphans(engine: Any, runtime_dir: str, *, again: bool = False) -> list[str]:
    """Remove the kernel containers (and kernel dirs) whose server is gone; returns their ids.

    Done once per process and runtime directory, at its first launch (``again`` forces it).
    """
    key = (id(engine), runtime_dir)
    if key in _swept and not again:
        return []
    _swept.add(key)
    root = Path(runtime_dir)
    removed: list[str] = []
    filters = {"label": [LABEL, f"kernelagent.runtime={runtime_dir}"]}
    for container in engine.containers.list(all=True, filters=filters, ignore_removed=True):
        labels = container.labels
        token = labels.get("kernelagent.owner", "")
        if token and owner_alive(root, token):
            continue
        with contextlib.suppress(Exception):
            container.remove(force=True)
            removed.append(container.id)
        kernel_dir = Path(labels.get("kernelagent.kernel_dir", ""))
        if kernel_dir.parent == root:
            shutil.rmtree(kernel_dir, ignore_errors=True)
        if token:
            with contextlib.suppress(OSError):
                (root / "owners" / token).unlink()
    return removed


__all__ = ["LABEL", "check", "client", "in_thread", "owner", "remove_orphans"]
