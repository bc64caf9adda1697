"""DockerProvisioner: a jupyter_client kernel provisioner that runs each kernel in a container.

Any Jupyter tool starts it through a kernelspec that names it (``kernel_images/``)::

    km = AsyncKernelManager(kernel_name="kernelagent-python3-docker")
    await km.start_kernel(cwd="/path/to/workspace")   # bound at /workspace, the kernel's cwd

It drives the Docker Engine API with the ``docker`` SDK (``DOCKER_HOST`` as Docker clients read
it). Each kernel is one container of the kernel image (``kernel_images/python``) with:

* ``--network none`` (only ``lo``): the server reaches the kernel through ``ipc`` sockets in a
  per-kernel runtime directory bind-mounted at ``/run/kernel``, as the bubblewrap sandbox does;
* a read-only root, ``--cap-drop ALL``, ``no-new-privileges``, a non-root uid (a per-kernel uid
  from ``uid_base`` when the server runs as root, else the server's own), ``--pids-limit``,
  ``--memory`` with no swap, ``--cpus``, rlimits, sized tmpfs for ``/tmp``, ``/dev/shm`` and
  ``$HOME``, the session's workspace bind-mounted read-write at ``/workspace`` and what the
  server installed for it read-only at ``/opt/packages``;
* an environment built from scratch (nothing of the server's crosses);
* tini as pid 1 (``--init``), which reaps the kernel's orphans and forwards an interrupt to the
  kernel's whole process group.

Containers carry ``kernelagent.*`` labels, including their server's owner token
(``engine.py``); a server's first launch removes the containers of servers that were killed.

Where the server itself runs in a container (``compose.yaml``), the workspace and runtime
directories must have the same path on the host as in the server's container: the engine
resolves bind-mount sources on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Dict, Float, Unicode

from kernelagent.sandbox import command
from kernelagent.sandbox.engine import (
    LABEL,
    check,
    client,
    in_thread,
    owner,
    remove_orphans,
    says,
)
from kernelagent.sandbox.limits import human_bytes
from kernelagent.sandbox.options import SandboxError, SandboxOptions

SIGKILL_EXIT = 128 + signal.SIGKILL
SIGXCPU_EXIT = 128 + signal.SIGXCPU


class DockerProvisioner(SandboxOptions, LocalProvisioner):  # type: ignore[misc]
    """Runs the kernel in a locked-down Docker container; see the module docstring."""

    image = Unicode("kernelagent/kernel-python:latest", help="Kernel image").tag(config=True)
    cpus = Float(1.0, help="CPUs the kernel may use (--cpus); 0 = no limit").tag(config=True)
    ro_binds = Dict(Unicode(), help="Extra host directories bound read-only: host → container")
    ro_binds.tag(config=True)
    engine_timeout = Float(60.0, help="Seconds one Docker Engine API request may take").tag(
        config=True
    )

    _container_id: str | None = None
    _host_pid: int | None = None
    _exit_code: int | None = None
    _owns_workspace = False

    @property
    def container_id(self) -> str | None:
        return self._container_id

    @property
    def has_process(self) -> bool:
        return self._container_id is not None

    def engine(self) -> Any:
        """The Docker client (one per process and ``DOCKER_HOST``)."""
        return client(os.environ.get("DOCKER_HOST", ""), self.engine_timeout)

    # ------------------------------------------------------------------ launch

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Called by the kernel manager before each (re)start; returns the launch arguments."""
        root = Path(self.runtime_dir)
        await in_thread(self._check_engine)
        await in_thread(_prepare_root, root)
        await in_thread(remove_orphans, self.engine(), str(root))

        cwd = kwargs.pop("cwd", None)
        self._owns_workspace = cwd is None
        layout = self._layout = self.layout(cwd)
        kernel_dir = layout.kernel_dir
        self._prepare_dirs(layout)
        self._exit_code = self._exit_reason = None

        argv, extra, kwargs = await self._over_ipc(layout, **kwargs)
        extra["TINI_KILL_PROCESS_GROUP"] = "1"  # an interrupt reaches the kernel's children too
        python_bin = Path(argv[0]).parent if argv[0].startswith("/") else Path("/usr/local/bin")
        env = command.inner_env(python_bin, extra)

        inner_info = json.loads(layout.connection_file.read_text())
        inner_info["ip"] = f"{command.INNER_IPC_DIR}/k"
        inner_file = kernel_dir / "inner.json"
        _write_private(inner_file, json.dumps(inner_info), self.host_uid)
        return {"cmd": argv, "env": env, "inner_file": str(inner_file)}

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> dict[str, Any]:
        """Creates and starts the container; returns the connection info (host side)."""
        assert self._layout is not None
        options = self.container_options(self._layout, cmd, kwargs["env"], kwargs["inner_file"])
        try:
            container = await in_thread(self._run, options)
        except Exception as e:
            raise SandboxError(f"the Docker engine did not start the kernel: {says(e)}") from e
        self._container_id = container.id
        self._host_pid = int(container.attrs.get("State", {}).get("Pid") or 0) or None
        return self.connection_info  # type: ignore[no-any-return]

    def container_options(
        self, layout: command.Layout, argv: list[str], env: dict[str, str], inner_file: str
    ) -> dict[str, Any]:
        """``docker run`` options of this kernel, as the SDK's ``containers.create`` takes them."""
        from docker.types import LogConfig, Mount, Ulimit

        limits = self.limits
        uid = self.host_uid
        tmp = f"size={limits.tmp_size}"
        mounts = [
            Mount(command.INNER_WORKSPACE, str(layout.workspace), type="bind"),
            Mount(command.INNER_PACKAGES, str(layout.packages_dir), type="bind", read_only=True),
            Mount(command.INNER_IPC_DIR, str(layout.ipc_dir), type="bind"),
            Mount(command.INNER_CONNECTION_FILE, inner_file, type="bind", read_only=True),
        ]
        for name in ("passwd", "group"):
            mounts.append(
                Mount(f"/etc/{name}", str(layout.kernel_dir / name), type="bind", read_only=True)
            )
        for source, target in self.ro_binds.items():
            mounts.append(Mount(target, source, type="bind", read_only=True))
        ulimits = [Ulimit(name="core", soft=0, hard=0)]
        for name, value in (
            ("data", int(limits.memory * limits.data_fraction) if limits.memory else None),
            ("nofile", limits.open_files),
            ("fsize", limits.file_size),
            ("cpu", limits.cpu_seconds),
        ):
            if value is not None:
                ulimits.append(Ulimit(name=name, soft=value, hard=value))
        options: dict[str, Any] = {
            "image": self.image,
            "command": argv,
            "name": f"kernelagent-{self.kernel_id}",
            "hostname": "sandbox",
            "user": f"{uid}:{uid}",
            "group_add": [],
            "environment": env,
            "working_dir": command.INNER_WORKSPACE,
            "network_mode": "none",
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "init": True,
            "ipc_mode": "private",
            "tmpfs": {
                "/tmp": f"{tmp},mode=1777",
                command.INNER_HOME: f"{tmp},mode=0700,uid={uid},gid={uid}",
            },
            "shm_size": limits.tmp_size,
            "mounts": mounts,
            "ulimits": ulimits,
            "labels": {
                LABEL: self.kernel_id,
                "kernelagent.owner": owner(Path(self.runtime_dir)),
                "kernelagent.runtime": self.runtime_dir,
                "kernelagent.kernel_dir": str(layout.kernel_dir),
            },
            "log_config": LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            "detach": True,
        }
        if limits.memory:
            options["mem_limit"] = limits.memory
            options["memswap_limit"] = limits.memory  # memory + swap = memory: no swap
        if limits.processes:
            options["pids_limit"] = limits.processes
        if self.cpus:
            options["nano_cpus"] = int(self.cpus * 1e9)
        return options

    def _run(self, options: dict[str, Any]) -> Any:
        engine = self.engine()
        with contextlib.suppress(Exception):  # a leftover of this kernel id (a failed restart)
            engine.containers.get(options["name"]).remove(force=True)
        container = engine.containers.create(**options)
        try:
            container.start()
            container.reload()
        except BaseException:
            with contextlib.suppress(Exception):
                container.remove(force=True)
            raise
        return container

    def _check_engine(self) -> None:
        failure = check(os.environ.get("DOCKER_HOST", ""), self.image, self.engine_timeout)
        if failure:
            raise SandboxError(failure)

    def _prepare_dirs(self, layout: command.Layout) -> None:
        super()._prepare_dirs(layout)
        # the image knows no per-kernel uid: its passwd and group name it "sandbox"
        accounts = command.etc_files(self.host_uid)
        for name in ("passwd", "group"):
            path = layout.kernel_dir / name
            path.write_text(accounts[name])
            path.chmod(0o644)

    # ------------------------------------------------------------------ a running kernel

    async def poll(self) -> int | None:
        if self._container_id is None:
            return self._exit_code if self._exit_code is not None else 0
        state = await in_thread(self._state)
        if state is None or state.get("Status") in ("exited", "dead"):
            self._note_exit(state)
            return self._exit_code
        return None

    async def wait(self) -> int | None:
        while (status := await self.poll()) is None:
            await asyncio.sleep(0.1)
        return status

    async def send_signal(self, signum: int) -> None:
        """SIGINT reaches the kernel's process group through tini; others go to the kernel."""
        if self._container_id is None:
            return
        with contextlib.suppress(Exception):  # gone meanwhile
            await in_thread(self.engine().api.kill, self._container_id, int(signum))

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    def _state(self) -> dict[str, Any] | None:
        try:
            return self.engine().api.inspect_container(self._container_id)["State"]  # type: ignore[no-any-return]
        except Exception as e:
            if getattr(e, "status_code", None) == 404:
                return None
            raise

    def kernel_pids(self) -> list[int]:
        """Host pids of the container's processes (tini, the kernel and its children); empty
        when this process cannot see them (the server itself in a container)."""
        import psutil

        if not self._host_pid:
            return []
        try:
            init = psutil.Process(self._host_pid)
            if "ipykernel" not in " ".join(init.cmdline()):
                return []
            return [init.pid, *(p.pid for p in init.children(recursive=True))]
        except psutil.Error:
            return []

    def limit_mechanism(self) -> str:
        """How the limits are enforced for this kernel (for ``doctor``)."""
        return (
            "Docker (cgroup memory without swap, pids, cpus) + rlimits (DATA, NOFILE, FSIZE, CPU)"
        )

    def describe(self) -> list[str]:
        """The engine, the image and the limits in force, read back from the engine (``doctor``)."""
        engine = self.engine()
        version = engine.version()
        image = engine.images.get(self.image)
        host = engine.api.inspect_container(self._container_id)["HostConfig"]
        memory = human_bytes(host["Memory"]) if host.get("Memory") else "none"
        swap = "no swap" if host.get("MemorySwap") == host.get("Memory") else "swap allowed"
        cpus = f"{host['NanoCpus'] / 1e9:g}" if host.get("NanoCpus") else "all"
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        pids = host.get("PidsLimit") or "none"
        dropped = ",".join(host.get("CapDrop") or []) or "none"
        return [
            f"Docker engine {version.get('Version')} at {where} ({version.get('Os')}, "
            f"storage {engine.info().get('Driver')})",
            f"kernel image {self.image}: {human_bytes(image.attrs['Size'])}, "
            f"built {image.attrs['Created'][:19]}",
            f"container limits: memory {memory} ({swap}), pids {pids}, cpus {cpus}, "
            f"network {host.get('NetworkMode')}, read-only root {host.get('ReadonlyRootfs')}, "
            f"capabilities dropped {dropped}",
        ]

    def _note_exit(self, state: dict[str, Any] | None) -> None:
        if self._exit_reason is not None:
            return
        if state is None:
            self._exit_code, self._exit_reason = -signal.SIGKILL, "its container was removed"
            return
        status = int(state.get("ExitCode") or 0)
        self._exit_code = status
        limits = self.limits
        memory = human_bytes(limits.memory) if limits.memory else "none"
        if state.get("OOMKilled"):
            self._exit_reason = f"out of memory (limit {memory})"
        elif status == SIGXCPU_EXIT:
            self._exit_reason = f"CPU time limit exceeded ({limits.cpu_seconds} s)"
        elif status == SIGKILL_EXIT:
            self._exit_reason = "killed by signal SIGKILL"
        elif status > 128:
            try:
                name = signal.Signals(status - 128).name
            except ValueError:
                name = str(status - 128)
            self._exit_reason = f"killed by signal {name}"
        else:
            tail = self.log_tail()
            self._exit_reason = f"exited with status {status}" + (f": {tail}" if tail else "")

    def log_tail(self, lines: int = 5) -> str:
        """The last lines the container wrote to stderr."""
        if self._container_id is None:
            return ""
        try:
            raw = self.engine().api.logs(self._container_id, stdout=False, tail=lines)
        except Exception:  # noqa: BLE001 - a tail is a courtesy
            return ""
        return " / ".join(raw.decode(errors="replace").strip().splitlines()[-lines:])

    async def cleanup(self, restart: bool = False) -> None:
        """Called after the kernel stopped: the container goes; files stay for a restart."""
        await super().cleanup(restart)
        container_id, self._container_id = self._container_id, None
        self._host_pid = None
        if container_id is not None:
            await in_thread(self._remove, container_id)
        self._remove_files(restart)

    def _remove(self, container_id: str) -> None:
        api = self.engine().api
        try:
            state = api.inspect_container(container_id)["State"]
            if state.get("Status") in ("exited", "dead"):
                self._note_exit(state)
            api.remove_container(container_id, force=True)
        except Exception as e:
            if getattr(e, "status_code", None) != 404:
                raise

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info["container_id"] = self._container_id
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self._container_id = provisioner_info.get("container_id")

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return recommended


def _prepare_root(root: Path) -> None:
    if root.is_symlink() or (root.exists() and root.stat().st_uid != os.geteuid()):
        raise SandboxError(
            f"runtime dir {root} is not owned by this user; remove it or pick another"
        )
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(root, 0o711 if os.geteuid() == 0 else 0o700)


def _write_private(path: Path, text: str, uid: int) -> None:
    """A file only the kernel's uid may read (the connection key is in it)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o400)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if os.geteuid() == 0:
        os.chown(path, uid, uid)


__all__ = ["DockerProvisioner"]
